"""Bearer-token protection of the admin endpoints: the gateway's metrics and the worker's read API.

Both bind to loopback by default (``admin_host``, ``worker_web_host``). Bound
to any other address they are reachable from the network, so the process
refuses to start unless ``admin_token`` is set (:func:`require_token_if_exposed`),
and every request must then carry ``Authorization: Bearer <admin_token>``
(RFC 6750 §2.1); others get 401 with ``WWW-Authenticate: Bearer`` (RFC 6750 §3).
Once a token is set it is required on loopback too. Prometheus sends it with
``authorization: {type: Bearer, credentials: ...}`` in a scrape config; the
CLI sends it from the same setting (``GATEWATCH_ADMIN_TOKEN``).

Tokens are compared in constant time (``hmac.compare_digest``) and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress

#: Shortest accepted token (characters): 128 bits as hex, e.g. ``secrets.token_hex(16)``.
MIN_TOKEN_CHARS = 32
#: Realm named in ``WWW-Authenticate`` challenges.
REALM = "gatewatch-admin"


class AdminTokenRequired(ValueError):
    """An admin endpoint would listen on a non-loopback address without a token (or with
    one shorter than :data:`MIN_TOKEN_CHARS`)."""


def is_loopback(host: str) -> bool:
    """True if ``host`` is a loopback address (127.0.0.0/8, ``::1``) or ``localhost``.
    Any other name or address, ``0.0.0.0`` and ``""`` (every interface) included, is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def require_token_if_exposed(host: str, token: str | None, what: str) -> None:
    """Check the start-up rule for the admin endpoint ``what`` listening on ``host``.

    Raises :class:`AdminTokenRequired` if ``host`` is not loopback and
    ``token`` is empty, or if a token is given that is shorter than
    :data:`MIN_TOKEN_CHARS`.
    """
    if token and len(token) < MIN_TOKEN_CHARS:
        raise AdminTokenRequired(f"admin_token is too short for the {what}: at least {MIN_TOKEN_CHARS} "
                                 "characters (e.g. python -c 'import secrets; print(secrets.token_hex(16))')")
    if not token and not is_loopback(host):
        raise AdminTokenRequired(f"the {what} would listen on {host!r}, not a loopback address, without a "
                                 "token: set admin_token (GATEWATCH_ADMIN_TOKEN) or bind it to 127.0.0.1")


def authorized(authorization: str | None, token: str | None) -> bool:
    """True if the ``Authorization`` header value carries ``token`` as a bearer token,
    or if no token is configured (loopback-only endpoint). Constant-time comparison."""
    if not token:
        return True
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def challenge() -> dict[str, str]:
    """Headers of a 401 answer (RFC 6750 §3)."""
    return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}


def auth_headers(token: str | None) -> dict[str, str]:
    """Request headers a client sends to an admin endpoint: the bearer token if set."""
    return {"Authorization": f"Bearer {token}"} if token else {}
