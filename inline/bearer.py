"""Bearer tokens (RFC 6750): reading the ``Authorization`` header, the verdict
of a token verifier, the ``WWW-Authenticate`` challenge, and the small pieces
the two verifiers share (a size-capped HTTP read, a throttled warning).

The gateway accepts a bearer token only in the ``Authorization`` request
header (RFC 6750 §2.1). Tokens in a form body (§2.2) or in the query string
(§2.3) are not read: the query string ends up in logs and request events.

Verifiers (:mod:`inline.jwt_auth`, :mod:`inline.introspection`) return a
:class:`BearerVerdict`; nothing here or there keeps, logs or returns the
token itself.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import httpx

#: The RFC 6750 §2.1 ``b64token`` grammar:
#: ``1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="``.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*", re.ASCII)

#: Longest token accepted, in characters (bytes: the grammar is ASCII). Signed
#: JWTs are typically 0.5–2 KB; 8 KiB is also nginx's default header buffer.
MAX_TOKEN_BYTES = 8192

#: Characters allowed in an ``error_description`` (RFC 6750 §3:
#: %x20-21 / %x23-5B / %x5D-7E, i.e. printable ASCII without ``"`` and ``\\``).
_DESCRIPTION_OK = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}

#: RFC 6750 §3.1 error codes the gateway sends.
BearerError = Literal["invalid_request", "invalid_token"]


@dataclass(frozen=True)
class BearerCredential:
    """What the ``Authorization`` header holds, for the bearer scheme.

    ``present`` is True when the request uses the bearer scheme at all.
    Then either ``token`` is the token text, or ``error``/``detail`` say why
    the header is refused (``invalid_request`` for a malformed or repeated
    header, ``invalid_token`` for a token over :data:`MAX_TOKEN_BYTES`).
    """

    present: bool = False
    token: str | None = None
    error: BearerError | None = None
    detail: str = ""


NO_BEARER = BearerCredential()


def parse_authorization(values: Sequence[str], max_bytes: int = MAX_TOKEN_BYTES) -> BearerCredential:
    """Read a bearer token from every value of the ``Authorization`` header.

    ``values`` are the header's values as mitmproxy gives them
    (``headers.get_all("authorization")``; text, non-UTF-8 bytes as
    surrogates). Rules:

    - no value, or only values of other schemes (``Basic …``): not a bearer
      request (:data:`NO_BEARER`); such headers belong to the upstream;
    - the scheme is matched case-insensitively (RFC 9110 §11.1), followed by
      one or more spaces and a ``b64token`` (RFC 6750 §2.1), surrounding
      whitespace ignored;
    - more than one ``Authorization`` value when one is bearer: refused
      (``invalid_request``; the field is a singleton, RFC 9110 §11.6.2);
    - a value that does not fit the grammar: ``invalid_request``;
    - a token longer than ``max_bytes``: ``invalid_token``.

    Never raises; never puts the token into ``detail``.
    """
    bearer = [v for v in values if _scheme(v) == "bearer"]
    if not bearer:
        return NO_BEARER
    if len(values) > 1:
        return BearerCredential(True, error="invalid_request", detail="more than one Authorization header")
    parts = bearer[0].split(None, 1)
    token = parts[1].strip() if len(parts) > 1 else ""
    if not token:
        return BearerCredential(True, error="invalid_request", detail="empty bearer token")
    if len(token) > max_bytes:
        return BearerCredential(True, error="invalid_token", detail="bearer token too large")
    if _B64TOKEN.fullmatch(token) is None:
        return BearerCredential(True, error="invalid_request", detail="malformed bearer token")
    return BearerCredential(True, token=token)


def _scheme(value: str) -> str:
    parts = value.split(None, 1)
    return parts[0].lower() if parts else ""


@dataclass(frozen=True)
class BearerVerdict:
    """Outcome of verifying one bearer token.

    ``status``: ``ok`` (``principal`` is the token's subject), ``invalid``
    (answer 401 with ``error``/``detail``), ``unavailable`` (the verifier
    cannot decide now, e.g. no key set could be fetched or the introspection
    endpoint is down: answer 503). ``expires_at`` is the token's ``exp``
    (Unix seconds) when known; caches use it as an upper bound.
    """

    status: Literal["ok", "invalid", "unavailable"]
    principal: str = ""
    error: BearerError | None = None
    detail: str = ""
    expires_at: float | None = None


def accepted(principal: str, expires_at: float | None = None) -> BearerVerdict:
    """An ``ok`` verdict for ``principal``."""
    return BearerVerdict("ok", principal=principal, expires_at=expires_at)


def rejected(detail: str, error: BearerError = "invalid_token") -> BearerVerdict:
    """An ``invalid`` verdict (RFC 6750 §3.1 ``error`` code, human ``detail``)."""
    return BearerVerdict("invalid", error=error, detail=detail)


def unavailable(detail: str) -> BearerVerdict:
    """An ``unavailable`` verdict: the token could not be checked now."""
    return BearerVerdict("unavailable", detail=detail)


#: Longest principal (subject) accepted, characters.
MAX_PRINCIPAL = 256


def usable_principal(value: object) -> str | None:
    """``value`` if it can be a principal — a non-empty string of at most
    :data:`MAX_PRINCIPAL` printable characters — else None. The principal
    goes into events, decision keys and rate-limit keys."""
    if isinstance(value, str) and 0 < len(value) <= MAX_PRINCIPAL and value.isprintable():
        return value
    return None


def bearer_challenge(realm: str, error: str | None = None, description: str = "") -> str:
    """A ``WWW-Authenticate`` challenge for the bearer scheme (RFC 6750 §3).

    ``Bearer realm="gatewatch"`` for a request without credentials (§3.1: no
    error code then), ``Bearer realm="gatewatch", error="invalid_token",
    error_description="the token has expired"`` for a refused token.
    Characters not allowed in the quoted values are dropped.
    """
    parts = [f'realm="{_quotable(realm)}"']
    if error:
        parts.append(f'error="{_quotable(error)}"')
        if description:
            parts.append(f'error_description="{_quotable(description)}"')
    return "Bearer " + ", ".join(parts)


def _quotable(text: str) -> str:
    return "".join(c for c in text if c in _DESCRIPTION_OK)


def principal_claim_value(claims: dict, names: Sequence[str]) -> str | None:
    """The first usable principal among ``claims[name]`` for ``names`` in order."""
    for name in names:
        principal = usable_principal(claims.get(name))
        if principal is not None:
            return principal
    return None


class ResponseTooLarge(Exception):
    """An HTTP response body exceeded the size cap."""


async def read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    """The body of a streamed httpx ``response``, at most ``max_bytes`` bytes
    after content decoding (so a compressed bomb stops at the cap too).

    Raises :class:`ResponseTooLarge` beyond that (a hostile or broken key
    server must not make the gateway buffer without bound).
    """
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise ResponseTooLarge(f"response body over {max_bytes} bytes")
    return bytes(body)


class ThrottledWarning:
    """Logs a warning at most once per ``every_s`` seconds, counting the ones
    it held back (so an outage of a key server cannot flood the log)."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last = float("-inf")
        self._held = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._held += 1
            return
        held, self._held, self._last = self._held, 0, now
        if held:
            self.logger.warning(msg + " (%d similar warnings held back)", *args, held)
        else:
            self.logger.warning(msg, *args)
