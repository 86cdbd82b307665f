"""The worker's web server behind the admin token (:mod:`gatewatch.admin_auth`).

Faust's web server serves gatewatch's read API (:mod:`streams.web`) and its own
views (``/router/``, ``/table/…``, ``/stats/``, ``/graph/``), which show table
contents. :func:`token_middleware` guards all of them: an aiohttp middleware
given to Faust through ``web_application_options``, so it runs before any
route, Faust's included. :func:`check_exposure` is the start-up rule: a
worker whose web server would listen off loopback without a token exits with
a clear message instead of starting.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from gatewatch import admin_auth
from gatewatch.settings import GatewatchSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_middleware(token: str | None) -> Callable:
    """An aiohttp middleware answering 401 (JSON ``{"error": ...}``, ``WWW-Authenticate:
    Bearer``) to requests without ``Authorization: Bearer <token>``; lets every request
    through when ``token`` is empty."""
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not admin_auth.authorized(request.headers.get("Authorization"), token):
            return web.Response(status=401, content_type="application/json",
                                text=json.dumps({"error": "bearer token required"}),
                                headers=admin_auth.challenge())
        return await handler(request)
    return require_token


def check_exposure(settings: GatewatchSettings) -> None:
    """Exit the process (``SystemExit`` with the reason) if the worker's web server would
    listen on a non-loopback ``worker_web_host`` without ``admin_token``."""
    try:
        admin_auth.require_token_if_exposed(settings.worker_web_host, settings.admin_token,
                                            "worker read API (worker_web_host)")
    except admin_auth.AdminTokenRequired as exc:
        raise SystemExit(f"gatewatch worker: {exc}") from None
