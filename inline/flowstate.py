"""Per-flow facts the gateway addons share, and the JSON answers they send.

Every addon writes what it learns about a request into one
:class:`FlowFacts` stored at ``flow.metadata["gatewatch"]``; the event
shipper reads it in ``response()``/``error()`` to build the
:class:`gatewatch.events.RequestEvent`. Nothing secret goes in here: no raw
API key, no password, no raw username.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from gatewatch.events import AnsweredBy, AuthResult, LoginOutcome

#: Key of the facts in ``flow.metadata``.
METADATA_KEY = "gatewatch"


@dataclass(slots=True)
class FlowFacts:
    """What the gateway learned about one request (mutable, one per flow).

    ``path`` is the normalized path used for matching (no query string),
    ``route`` its template (``/users/{id}``); both are ``""`` when the path
    could not be parsed (``bad_path`` then says why). ``auth_detail`` is None
    until authentication has run, then the reason of a refusal (``""`` if
    none). ``answered_by`` stays ``"upstream"`` unless an addon answered the
    request itself.
    """

    event_id: str
    client_ip: str
    path: str = ""
    route: str = ""
    bad_path: str | None = None
    principal: str = ""
    auth: AuthResult = "public"
    auth_detail: str | None = None
    answered_by: AnsweredBy = "upstream"
    decision_id: str | None = None
    login: LoginOutcome | None = None
    username_hash: str | None = None
    is_login: bool = False
    shipped: bool = False


def get_facts(flow: http.HTTPFlow) -> FlowFacts | None:
    """The facts of ``flow``, or None if the routes addon has not seen it yet."""
    return flow.metadata.get(METADATA_KEY)


def json_answer(flow: http.HTTPFlow, status: int, body: dict[str, Any],
                answered_by: AnsweredBy, headers: dict[str, str] | None = None) -> None:
    """Answer ``flow`` from the gateway: ``status`` with ``body`` as a JSON object.

    Sets ``flow.response`` (so later addons skip the flow and mitmproxy does
    not contact the upstream) and records ``answered_by`` in the facts.
    """
    all_headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    all_headers.update(headers or {})
    flow.response = http.Response.make(status, json.dumps(body, separators=(",", ":")), all_headers)
    facts = get_facts(flow)
    if facts is not None:
        facts.answered_by = answered_by


def answered(flow: http.HTTPFlow) -> bool:
    """True if another addon (or mitmproxy) already answered or ended ``flow``."""
    return flow.response is not None or flow.error is not None or not flow.live
