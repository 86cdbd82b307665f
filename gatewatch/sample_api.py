"""A small upstream API for the demo and the tests: login, users, orders and documents with ownership.

Endpoints (JSON in and out):

- ``GET /health`` → 200.
- ``POST /login`` ``{"username", "password"}`` → 200 ``{"token", "user_id"}``;
  401 on wrong credentials; 400 on a malformed body.
- ``GET /users/{id}``, ``GET /orders/{id}`` (numeric ids) and ``GET /documents/{id}``
  (UUID ids) with ``Authorization: Bearer <token>`` → 200 for the caller's own
  object (orders and documents name their ``owner``); 401 without a valid
  session; 403 for someone else's object; 404 for an object that does not exist.
- ``GET /users/{id}/orders`` and ``GET /users/{id}/documents`` → the ids of the
  caller's own orders / documents (same rules).

The data is generated from a seed: users ``user1..userN`` with password
``pw-userN``, each owning a few orders and documents. Sessions are opaque
random tokens kept in memory. Run it with ``python -m gatewatch.sample_api --port 8000``.

Knobs for the quality harness (``bench/quality.py``), all off by default:

- ``--extra-orders user24=400``: that user also owns 400 orders with
  consecutive ids (a bulk-sync client with hundreds of objects);
- ``--unchecked documents``: ``GET /documents/{id}`` skips the ownership check
  and returns other users' documents — a deliberate BOLA flaw (OWASP API1:2023),
  so that "foreign objects returned" can be counted;
- ``--control``: ``PUT /_control/latency`` ``{"route": "/users/{id}", "ms": 120}``
  adds that many ms (0 removes it) to every answer of the route template — an
  injected latency regression. Meant to be called directly, not through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

DEFAULT_USERS = 50
ORDERS_PER_USER = 3
DOCUMENTS_PER_USER = 2
#: First id of the ``extra_orders`` blocks (far above the regular ids 1000..).
EXTRA_ORDERS_BASE = 500_000
#: Routes whose ownership check ``unchecked`` can switch off.
CHECKABLE_ROUTES = ("documents",)


def password_for(username: str) -> str:
    """The sample password of a sample user (``user7`` → ``pw-user7``)."""
    return f"pw-{username}"


@dataclass
class SampleData:
    """Users ``{username: user_id}``, orders ``{order_id: owner_user_id}`` and documents
    ``{uuid_text: owner_user_id}``."""

    users: dict[str, int] = field(default_factory=dict)
    orders: dict[int, int] = field(default_factory=dict)
    documents: dict[str, int] = field(default_factory=dict)

    @classmethod
    def generate(cls, n_users: int = DEFAULT_USERS, seed: int = 7,
                 extra_orders: Mapping[str, int] | None = None) -> "SampleData":
        """``n_users`` users with ids 1..n, ORDERS_PER_USER orders each (ids from 1000,
        shuffled by ``seed``) and DOCUMENTS_PER_USER documents each (random UUIDs from
        ``seed``). ``extra_orders`` maps a username to a number of further orders it owns,
        with consecutive ids from EXTRA_ORDERS_BASE, one block per user in the mapping's
        order. Raises ``ValueError`` for an unknown username or a negative count."""
        rng = random.Random(seed)
        data = cls(users={f"user{i}": i for i in range(1, n_users + 1)})
        order_ids = list(range(1000, 1000 + n_users * ORDERS_PER_USER))
        rng.shuffle(order_ids)
        for n, order_id in enumerate(order_ids):
            data.orders[order_id] = n // ORDERS_PER_USER + 1
        for user_id in range(1, n_users + 1):
            for _ in range(DOCUMENTS_PER_USER):
                data.documents[str(uuid.UUID(int=rng.getrandbits(128), version=4))] = user_id
        next_id = EXTRA_ORDERS_BASE
        for username, count in (extra_orders or {}).items():
            if username not in data.users or count < 0:
                raise ValueError(f"extra orders: unknown user {username!r} or negative count {count}")
            for order_id in range(next_id, next_id + count):
                data.orders[order_id] = data.users[username]
            next_id += count
        return data

    def orders_of(self, user_id: int) -> list[int]:
        """Order ids owned by ``user_id``, ascending."""
        return sorted(o for o, owner in self.orders.items() if owner == user_id)

    def documents_of(self, user_id: int) -> list[str]:
        """Document ids (UUID text) owned by ``user_id``, sorted."""
        return sorted(d for d, owner in self.documents.items() if owner == user_id)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def latency_middleware(delays_ms: Mapping[str, float]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """aiohttp middleware that sleeps ``delays_ms[route template]`` ms before answering
    (read at each request, so the mapping can change while the server runs)."""
    @web.middleware
    async def delay(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        ms = delays_ms.get(resource.canonical, 0.0) if resource is not None else 0.0
        if ms > 0:
            await asyncio.sleep(ms / 1000.0)
        return await handler(request)
    return delay


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _fields(request: web.Request, *names: str) -> list[str] | None:
    """The members ``names`` of the request's JSON object body as text, or None when the
    body is not JSON or lacks one (the caller answers 400)."""
    try:
        body = json.loads(await request.read())
        return [str(body[name]) for name in names]
    except (ValueError, KeyError, TypeError):
        return None


def make_app(data: SampleData | None = None, unchecked: Iterable[str] = (),
             control: bool = False) -> web.Application:
    """Build the aiohttp application over ``data`` (generated with defaults if None).

    ``unchecked``: names from CHECKABLE_ROUTES served without the ownership check
    (a deliberate BOLA flaw). ``control``: serve ``PUT /_control/latency`` (see the
    module docstring). Raises ``ValueError`` for an unknown name in ``unchecked``.
    """
    data = data or SampleData.generate()
    unchecked = frozenset(unchecked)
    if not unchecked <= set(CHECKABLE_ROUTES):
        raise ValueError(f"unchecked: unknown routes {sorted(unchecked - set(CHECKABLE_ROUTES))}; "
                         f"known: {CHECKABLE_ROUTES}")
    sessions: dict[str, int] = {}
    delays_ms: dict[str, float] = {}
    routes = web.RouteTableDef()

    def caller(request: web.Request) -> int | None:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return sessions.get(token.strip())

    @routes.get("/health")
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @routes.post("/login")
    async def login(request: web.Request) -> web.Response:
        fields = await _fields(request, "username", "password")
        if fields is None:
            return _error(400, "body must be JSON with username and password")
        username, password = fields
        user_id = data.users.get(username)
        # Bytes: compare_digest refuses str with non-ASCII characters (TypeError, a 500).
        if user_id is None or not secrets.compare_digest(password.encode(), password_for(username).encode()):
            return _error(401, "invalid credentials")
        token = secrets.token_urlsafe(24)
        sessions[token] = user_id
        return web.json_response({"token": token, "user_id": user_id})

    def owned(request: web.Request, exists: bool, owner: int | None) -> web.Response | None:
        who = caller(request)
        if who is None:
            return _error(401, "login required")
        if not exists:
            return _error(404, "not found")
        if owner != who:
            return _error(403, "forbidden")
        return None

    def object_id(request: web.Request) -> int | None:
        try:
            return int(request.match_info["id"])
        except ValueError:
            return None

    def own_user(request: web.Request) -> tuple[int | None, web.Response | None]:
        uid = object_id(request)
        return uid, owned(request, uid in data.users.values(), uid)

    @routes.get("/users/{id}")
    async def get_user(request: web.Request) -> web.Response:
        uid, denied = own_user(request)
        return denied or web.json_response(
            {"id": uid, "username": f"user{uid}", "orders": len(data.orders_of(uid))})

    @routes.get("/users/{id}/orders")
    async def list_orders(request: web.Request) -> web.Response:
        uid, denied = own_user(request)
        return denied or web.json_response({"orders": data.orders_of(uid)})

    @routes.get("/orders/{id}")
    async def get_order(request: web.Request) -> web.Response:
        oid = object_id(request)
        denied = owned(request, oid in data.orders, data.orders.get(oid))
        if denied:
            return denied
        return web.json_response({"id": oid, "owner": data.orders[oid], "total_cents": 1000 + oid % 97})

    @routes.get("/users/{id}/documents")
    async def list_documents(request: web.Request) -> web.Response:
        uid, denied = own_user(request)
        return denied or web.json_response({"documents": data.documents_of(uid)})

    @routes.get("/documents/{id}")
    async def get_document(request: web.Request) -> web.Response:
        did = request.match_info["id"].lower()
        owner = data.documents.get(did)
        if "documents" in unchecked and owner is not None and caller(request) is not None:
            denied = None  # the flaw: any session reads any existing document
        else:
            denied = owned(request, owner is not None, owner)
        return denied or web.json_response({"id": did, "owner": owner, "title": f"document {did[:8]}"})

    if control:
        @routes.put("/_control/latency")
        async def set_latency(request: web.Request) -> web.Response:
            fields = await _fields(request, "route", "ms")
            if fields is None:
                return _error(400, "body must be JSON with route (a template) and ms (a number)")
            route, ms_text = fields
            try:
                ms = float(ms_text)
            except ValueError:
                return _error(400, "ms must be a number")
            if not 0 <= ms <= 60_000:  # also refuses NaN and infinity
                return _error(400, "ms must be within 0..60000")
            if ms == 0:
                delays_ms.pop(route, None)
            else:
                delays_ms[route] = ms
            return web.json_response({"latency_ms": delays_ms})

    app = web.Application(middlewares=[latency_middleware(delays_ms)])
    app.add_routes(routes)
    return app


def _user_count(text: str) -> tuple[str, int]:
    name, sep, count = text.partition("=")
    if not sep or not name or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected USER=COUNT, got {text!r}")
    return name, int(count)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m gatewatch.sample_api [--host H] [--port P] [--users N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated data")
    parser.add_argument("--extra-orders", type=_user_count, action="append", default=[],
                        metavar="USER=COUNT", help="USER also owns COUNT orders with consecutive ids")
    parser.add_argument("--unchecked", action="append", default=[], choices=CHECKABLE_ROUTES,
                        help="serve this route without the ownership check (a deliberate BOLA flaw)")
    parser.add_argument("--control", action="store_true", help="serve PUT /_control/latency")
    args = parser.parse_args(argv)
    data = SampleData.generate(args.users, args.seed, dict(args.extra_orders))
    web.run_app(make_app(data, args.unchecked, args.control), host=args.host, port=args.port,
                access_log=None, print=lambda *_: None)


if __name__ == "__main__":
    main()
