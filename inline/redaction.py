"""What the gateway keeps out of request events: secrets in the request target.

Headers never reach an event (only the principal's id, the auth outcome and a
keyed username hash do, see :mod:`inline.flowstate`), nor do bodies. The
request target can carry secrets, so :func:`redact_target` rewrites it before
it is recorded:

- values of query parameters named like credentials (:data:`SECRET_PARAMS`,
  any case, also percent-encoded names) become ``REDACTED``;
- credential-shaped text anywhere in the target — a JWT / JWS / JWE in compact
  form (RFC 7519 §3, RFC 7515 §7.1, RFC 7516 §7.1: base64url parts joined by
  dots, the first one a JSON object, so starting ``eyJ``) or a gatewatch API key
  (``gw_`` + 43 characters, :func:`gatewatch.keys.generate_key`) — becomes
  ``REDACTED`` too: magic links such as ``/verify/<jwt>`` and keys pasted into
  paths or unknown parameters.

Other identifiers (numbers, UUIDs, slugs) stay: the detectors need them (BOLA
compares object ids, :mod:`detectors.bola`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from gatewatch.keys import KEY_PREFIX

REDACTED = "REDACTED"

#: Query parameters whose values never reach an event (RFC 6750 §2.3 ``access_token``,
#: and the usual names of keys, passwords and secrets), compared case-insensitively.
SECRET_PARAMS = frozenset({"access_token", "id_token", "refresh_token", "token", "api_key", "apikey",
                           "key", "password", "passwd", "pwd", "secret", "client_secret", "code"})

#: Compact JWS (3 parts) or JWE (5 parts) whose header is base64url JSON ("{" → "eyJ").
_JOSE = r"eyJ[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*){2,4}"
#: A gatewatch API key (at least 20 characters after the prefix, to spare ordinary words).
_API_KEY = re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{20,}"
_CREDENTIAL = re.compile(f"{_JOSE}|{_API_KEY}")


def redact_query(path: str) -> str:
    """``path`` with the values of :data:`SECRET_PARAMS` query parameters replaced by
    ``REDACTED`` (names, order and other parameters kept; no decoding of the rest)."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        if eq and unquote_plus(name).strip().lower() in SECRET_PARAMS:
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{base}?{'&'.join(parts)}"


def redact_credentials(text: str) -> str:
    """``text`` with every JWT-shaped token and gatewatch API key replaced by ``REDACTED``."""
    return _CREDENTIAL.sub(REDACTED, text)


def redact_target(path: str) -> str:
    """The request target ``path`` (path and query) as events record it: secret query
    values and credential-shaped text replaced by ``REDACTED`` (see the module docstring)."""
    return redact_credentials(redact_query(path))
