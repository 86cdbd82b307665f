"""Login outcomes: who tried to log in (as a keyed hash) and whether it worked.

For requests to a configured login route (method + path), the addon reads
the username from the JSON or form-urlencoded body and keeps only its keyed
hash, HMAC-SHA256 (RFC 2104) with ``username_hash_key`` over the trimmed,
lower-cased username, as hex. The outcome is read from the upstream's
response: failure if the status is a failure status or the body matches
``failure_body_regex``; else success if the status is a success status;
else none (e.g. 400 or 5xx). The password and the raw username are never
stored, logged or shipped.

The hash is keyed so that someone reading the event stream cannot confirm
a guessed username by hashing it; it still links attempts on the same
username, which is what credential-stuffing detection needs.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256
from urllib.parse import parse_qs

from pydantic import TypeAdapter, ValidationError

from mitmproxy import ctx, exceptions, http

from gatewatch.events import LoginOutcome
from gatewatch.settings import LoginRoute, load_settings
from inline.flowstate import answered, get_facts
from inline.routes import BadPath, normalize_path

#: Bodies larger than this are not parsed for a username, responses not
#: searched beyond it (bytes).
MAX_BODY = 64 * 1024

_ROUTES = TypeAdapter(list[LoginRoute])


@dataclass(frozen=True)
class LoginSpec:
    """A parsed login route: ``method`` (upper case), normalized ``path``,
    body ``username_field``, status sets and the compiled failure regex."""

    method: str
    path: str
    username_field: str
    success_status: frozenset[int]
    failure_status: frozenset[int]
    failure_body: re.Pattern[str] | None


def parse_login_routes(text: str) -> tuple[LoginSpec, ...]:
    """Parse login routes from JSON text: a list of objects with the fields of
    :class:`gatewatch.settings.LoginRoute` (as in ``GATEWATCH_LOGIN_ROUTES``).

    Raises ``ValueError`` on bad JSON, a missing or invalid field, a path that
    is not absolute, or a failure regex that does not compile.
    """
    try:
        routes = _ROUTES.validate_json(text or "[]")
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"invalid login routes: {first['loc']} {first['msg']}") from None
    specs = []
    for route in routes:
        try:
            path = normalize_path(route.path)
        except BadPath as exc:
            raise ValueError(f"login route {route.path!r}: {exc}") from None
        try:
            failure = re.compile(route.failure_body_regex) if route.failure_body_regex else None
        except re.error as exc:
            raise ValueError(f"login route {route.path!r}: bad failure_body_regex: {exc}") from None
        specs.append(LoginSpec(route.method.upper(), path, route.username_field,
                               frozenset(route.success_status), frozenset(route.failure_status),
                               failure))
    return tuple(specs)


def match_login(specs: Iterable[LoginSpec], method: str, path: str) -> LoginSpec | None:
    """The login route for ``method`` and normalized ``path``, or None."""
    method = method.upper()
    for spec in specs:
        if spec.method == method and spec.path == path:
            return spec
    return None


def extract_username(body: bytes, content_type: str, field: str) -> str | None:
    """The username in a login request body, or None if there is none.

    Reads a JSON object (``application/json`` or ``*+json``) or a
    form-urlencoded body (``application/x-www-form-urlencoded``); with another
    or no content type, a body starting with ``{`` is read as JSON, anything
    else as a form. Only a non-empty string value counts. Bodies over
    :data:`MAX_BODY` bytes, bad JSON and bad UTF-8 give None (the upstream
    decides what to answer to them).
    """
    if not body or len(body) > MAX_BODY:
        return None
    ctype = content_type.split(";", 1)[0].strip().lower()
    as_json = ctype == "application/json" or ctype.endswith("+json") or (
        ctype != "application/x-www-form-urlencoded" and body.lstrip()[:1] == b"{")
    try:
        if as_json:
            doc = json.loads(body)
            value = doc.get(field) if isinstance(doc, dict) else None
        else:
            values = parse_qs(body.decode("utf-8"), keep_blank_values=True,
                              strict_parsing=False, max_num_fields=1000)
            value = values.get(field, [None])[0]
    except (ValueError, RecursionError):
        return None
    if isinstance(value, str) and value.strip():
        return value
    return None


def username_hash(key: str, username: str) -> str:
    """HMAC-SHA256 (RFC 2104) of ``username.strip().lower()`` (UTF-8) under ``key``, as 64 hex."""
    return hmac.new(key.encode(), username.strip().lower().encode(), sha256).hexdigest()


def login_outcome(spec: LoginSpec, status: int, body: str | None) -> LoginOutcome | None:
    """Outcome of a login from the upstream's response ``status`` and ``body`` text.

    Failure if ``status`` is a failure status or the failure regex matches the
    first :data:`MAX_BODY` characters of ``body``; else success if ``status``
    is a success status; else None.
    """
    if status in spec.failure_status:
        return "failure"
    if spec.failure_body is not None and body and spec.failure_body.search(body[:MAX_BODY]):
        return "failure"
    if status in spec.success_status:
        return "success"
    return None


@dataclass(frozen=True)
class _LoginConfig:
    routes: tuple[LoginSpec, ...]
    hash_key: str


class Login:
    """Addon: on login routes, records the username hash (request) and the
    outcome (response) in the flow facts.

    Options: ``gatewatch_login_routes`` (JSON list of login routes) and
    ``gatewatch_username_hash_key`` (HMAC key; must not be empty).
    """

    def __init__(self) -> None:
        self.config = _LoginConfig((), "")

    def load(self, loader) -> None:
        s = load_settings()
        loader.add_option("gatewatch_login_routes", str,
                          json.dumps([r.model_dump() for r in s.login_routes]),
                          "Login routes as a JSON list of {method, path, username_field, "
                          "success_status, failure_status, failure_body_regex}.")
        loader.add_option("gatewatch_username_hash_key", str, s.username_hash_key,
                          "Secret key of the HMAC-SHA256 username hash in request events.")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"gatewatch_login_routes", "gatewatch_username_hash_key"}:
            return
        try:
            routes = parse_login_routes(ctx.options.gatewatch_login_routes)
        except ValueError as exc:
            raise exceptions.OptionsError(f"gatewatch_login_routes: {exc}") from exc
        key = ctx.options.gatewatch_username_hash_key
        if not key:
            raise exceptions.OptionsError("gatewatch_username_hash_key must not be empty")
        self.config = _LoginConfig(routes, key)

    def request(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if facts is None or answered(flow) or not self.config.routes or facts.bad_path:
            return
        spec = match_login(self.config.routes, flow.request.method, facts.path)
        if spec is None:
            return
        facts.is_login = True
        # raw_content: a compressed request body is not inflated (no decompression
        # bombs); such a body simply yields no username.
        username = extract_username(flow.request.raw_content or b"",
                                    flow.request.headers.get("content-type", ""), spec.username_field)
        if username is not None:
            facts.username_hash = username_hash(self.config.hash_key, username)

    def response(self, flow: http.HTTPFlow) -> None:
        facts = get_facts(flow)
        if facts is None or not facts.is_login or facts.answered_by != "upstream" or flow.response is None:
            return
        spec = match_login(self.config.routes, flow.request.method, facts.path)
        if spec is None:
            return
        body = flow.response.get_text(strict=False) if spec.failure_body is not None else None
        facts.login = login_outcome(spec, flow.response.status_code, body)
