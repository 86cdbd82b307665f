"""Per-flow facts the gateway addons share, and the JSON answers they send.

Every addon writes what it learns about a request into one
:class:`FlowFacts` stored at ``flow.metadata["gatewatch"]``; the event
shipper reads it in ``response()``/``error()`` to build the
:class:`gatewatch.events.RequestEvent`. Nothing secret goes in here: no raw
API key, no password, no raw username.

Gateway answers: :func:`problem_answer` sends an RFC 9457 problem document
(``application/problem+json``); :func:`json_answer` a plain JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
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
    request itself. ``tier`` is the API key's tier (:attr:`gatewatch.keys.ApiKey.tier`)
    once authentication identified a key, ``""`` otherwise (bearer tokens, no
    credential); rate-limit policies choose their limit by it.
    """

    event_id: str
    client_ip: str
    path: str = ""
    route: str = ""
    bad_path: str | None = None
    principal: str = ""
    tier: str = ""
    auth: AuthResult = "public"
    auth_detail: str | None = None
    answered_by: AnsweredBy = "upstream"
    decision_id: str | None = None
    login: LoginOutcome | None = None
    username_hash: str | None = None
    is_login: bool = False
    shipped: bool = False
    asn: int | None = None
    country: str | None = None


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


#: Media type of RFC 9457 problem details in JSON (RFC 9457 §3).
PROBLEM_JSON = "application/problem+json"

#: Members defined by RFC 9457 §3.1; extensions must not reuse them.
_PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})


def problem_body(status: int, detail: str, error: str, extensions: Mapping[str, Any] | None = None,
                 type_: str = "about:blank", title: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem details object (§3.1) as a dict.

    Members: ``type`` (default ``about:blank``, §4.2.1), ``title`` (default:
    the status's reason phrase, as §4.2.1 asks for ``about:blank``),
    ``status``, ``detail`` (this occurrence, for people), then the extension
    members (§3.2): ``error`` — the gateway's short machine code
    (``unauthorized``, ``blocked``, ``rate_limited``, ``bad_request``, …),
    kept from the gateway's earlier JSON answers so that clients keep
    working — and ``extensions`` (e.g. ``decision_id``, ``expires_at``).

    Raises ``ValueError`` if an extension reuses a member of §3.1.
    """
    clash = _PROBLEM_MEMBERS.intersection(extensions or {})
    if clash:
        raise ValueError(f"problem extensions must not redefine {sorted(clash)}")
    body: dict[str, Any] = {"type": type_, "title": title or HTTPStatus(status).phrase,
                            "status": status, "detail": detail, "error": error}
    body.update(extensions or {})
    return body


def problem_answer(flow: http.HTTPFlow, status: int, detail: str, error: str, answered_by: AnsweredBy,
                   extensions: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str | Sequence[str]] | None = None,
                   type_: str = "about:blank", title: str | None = None) -> None:
    """Answer ``flow`` from the gateway with an RFC 9457 problem document.

    The body is :func:`problem_body` (``Content-Type:
    application/problem+json``, ``Cache-Control: no-store``). A header value
    given as a sequence becomes one field line per item (e.g. several
    ``WWW-Authenticate`` challenges). Like :func:`json_answer`, it sets
    ``flow.response`` (later addons skip the flow; the upstream is not
    contacted) and records ``answered_by`` in the facts.

    Example: ``problem_answer(flow, 429, "too many requests from this
    address", "rate_limited", "rate_limit", {"scope": "ip"}, {"Retry-After": "3"})``.
    """
    body = problem_body(status, detail, error, extensions, type_, title)
    response = http.Response.make(status, json.dumps(body, separators=(",", ":")),
                                   {"Content-Type": PROBLEM_JSON, "Cache-Control": "no-store"})
    for name, value in (headers or {}).items():
        response.headers.set_all(name, [value] if isinstance(value, str) else list(value))
    flow.response = response
    facts = get_facts(flow)
    if facts is not None:
        facts.answered_by = answered_by


def answered(flow: http.HTTPFlow) -> bool:
    """True if another addon (or mitmproxy) already answered or ended ``flow``."""
    return flow.response is not None or flow.error is not None or not flow.live
