"""A small OAuth 2.0 authorization server for the tests, run as a real process.

    python tests/inline/authserver.py --port 9000 --jwks-file keys.json \\
        --issuer http://127.0.0.1:9000 --client gateway:s3cret --client app:app-secret

Endpoints (aiohttp):

``GET /jwks``
    The JWK Set (RFC 7517 §5): the file ``--jwks-file`` as it is *now* (read on
    every request, so a test rotates keys by rewriting the file).
``POST /token``
    Client credentials grant (RFC 6749 §4.4), client authenticated by HTTP
    Basic (§2.3.1) or ``client_id``/``client_secret`` form fields; issues an
    opaque random access token (§5.1). Test-only extra form fields shape the
    token: ``sub``, ``username``, ``scope``, ``aud``, ``expires_in`` (may be
    negative: already expired), ``nbf_in`` (seconds until it becomes valid).
``POST /introspect``
    Token introspection (RFC 7662 §2): requires client authentication (401
    otherwise); ``{"active": false}`` for unknown, revoked, expired or
    not-yet-valid tokens, else ``active: true`` with ``sub``, ``username``,
    ``client_id``, ``scope``, ``aud``, ``iss``, ``exp``, ``iat``, ``nbf``,
    ``token_type``.
``POST /revoke``
    Token revocation (RFC 7009 §2): 200 whether the token was known or not.
``GET /admin/stats`` / ``POST /admin/reset``
    Request counters per endpoint (``jwks``, ``introspect``, ``token``), and
    their reset (which also clears faults).
``POST /admin/faults``
    JSON ``{"jwks_status": 500, "introspect_status": 503, "introspect_delay_ms": 0}``:
    make an endpoint fail or stall, to test outages.

Tokens live in memory; nothing here is meant for production.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import secrets
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote_plus

from aiohttp import web


def client_of(request: web.Request, form, clients: dict[str, str]) -> str | None:
    """The authenticated client id of ``request``, or None.

    HTTP Basic per RFC 6749 §2.3.1 (id and secret form-urlencoded, then
    base64), or ``client_id``/``client_secret`` in the form body.
    """
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            pair = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        client_id, sep, secret = pair.partition(":")
        client_id, secret = unquote_plus(client_id), unquote_plus(secret)
    else:
        client_id, secret, sep = form.get("client_id", ""), form.get("client_secret", ""), ":"
    if sep and client_id in clients and secrets.compare_digest(clients[client_id], secret):
        return client_id
    return None


def make_app(jwks_file: Path, issuer: str, clients: dict[str, str]) -> web.Application:
    tokens: dict[str, dict] = {}
    stats: Counter[str] = Counter()
    faults: dict[str, int] = {}

    def unauthorized() -> web.Response:
        return web.json_response({"error": "invalid_client"}, status=401,
                                 headers={"WWW-Authenticate": 'Basic realm="authserver"'})

    async def jwks(request: web.Request) -> web.Response:
        stats["jwks"] += 1
        if faults.get("jwks_status"):
            return web.json_response({"error": "fault"}, status=faults["jwks_status"])
        return web.Response(body=jwks_file.read_bytes(), content_type="application/json")

    async def token(request: web.Request) -> web.Response:
        stats["token"] += 1
        form = await request.post()
        client_id = client_of(request, form, clients)
        if client_id is None:
            return unauthorized()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        now = int(time.time())
        expires_in = int(form.get("expires_in", "3600"))
        value = secrets.token_urlsafe(32)
        record = {"client_id": client_id, "scope": form.get("scope", ""), "iss": issuer,
                  "iat": now, "exp": now + expires_in, "token_type": "Bearer"}
        for name in ("sub", "username"):
            if form.get(name):
                record[name] = form[name]
        if form.get("aud"):
            record["aud"] = form.getall("aud") if len(form.getall("aud")) > 1 else form["aud"]
        if form.get("nbf_in"):
            record["nbf"] = now + int(form["nbf_in"])
        tokens[value] = record
        return web.json_response({"access_token": value, "token_type": "Bearer", "expires_in": expires_in},
                                 headers={"Cache-Control": "no-store"})

    async def introspect(request: web.Request) -> web.Response:
        stats["introspect"] += 1
        if faults.get("introspect_delay_ms"):
            await asyncio.sleep(faults["introspect_delay_ms"] / 1000)
        if faults.get("introspect_status"):
            return web.json_response({"error": "fault"}, status=faults["introspect_status"])
        form = await request.post()
        if client_of(request, form, clients) is None:
            return unauthorized()
        value = form.get("token")
        if not value:
            return web.json_response({"error": "invalid_request"}, status=400)
        record = tokens.get(value)
        now = time.time()
        if record is None or now >= record["exp"] or record.get("nbf", 0) > now:
            return web.json_response({"active": False})
        return web.json_response({"active": True, **record})

    async def revoke(request: web.Request) -> web.Response:
        form = await request.post()
        if client_of(request, form, clients) is None:
            return unauthorized()
        tokens.pop(form.get("token", ""), None)
        return web.Response(status=200)

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(dict(stats))

    async def reset(request: web.Request) -> web.Response:
        stats.clear()
        faults.clear()
        return web.json_response({})

    async def set_faults(request: web.Request) -> web.Response:
        faults.update({k: int(v) for k, v in (await request.json()).items()})
        return web.json_response(faults)

    app = web.Application()
    app.add_routes([web.get("/jwks", jwks), web.post("/token", token), web.post("/introspect", introspect),
                    web.post("/revoke", revoke), web.get("/admin/stats", get_stats),
                    web.post("/admin/reset", reset), web.post("/admin/faults", set_faults)])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks-file", type=Path, required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--client", action="append", default=[], help="CLIENT_ID:SECRET (repeatable)")
    args = parser.parse_args()
    clients = dict(c.split(":", 1) for c in args.client)
    web.run_app(make_app(args.jwks_file, args.issuer, clients), host=args.host, port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
