"""A small upstream API for the demo and the tests: login, users and orders with ownership.

Endpoints (JSON in and out):

- ``GET /health`` → 200.
- ``POST /login`` ``{"username", "password"}`` → 200 ``{"token", "user_id"}``;
  401 on wrong credentials; 400 on a malformed body.
- ``GET /users/{id}`` and ``GET /orders/{id}`` with ``Authorization: Bearer <token>``
  → 200 for the caller's own object; 401 without a valid session; 403 for
  someone else's object; 404 for an object that does not exist.
- ``GET /users/{id}/orders`` → the ids of the caller's own orders (same rules).

The data is generated from a seed: users ``user1..userN`` with password
``pw-userN``, each owning a few orders. Sessions are opaque random tokens
kept in memory. Run it with ``python -m gatewatch.sample_api --port 8000``.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
from dataclasses import dataclass, field

from aiohttp import web

DEFAULT_USERS = 50
ORDERS_PER_USER = 3


def password_for(username: str) -> str:
    """The sample password of a sample user (``user7`` → ``pw-user7``)."""
    return f"pw-{username}"


@dataclass
class SampleData:
    """Users ``{username: user_id}`` and orders ``{order_id: owner_user_id}``."""

    users: dict[str, int] = field(default_factory=dict)
    orders: dict[int, int] = field(default_factory=dict)

    @classmethod
    def generate(cls, n_users: int = DEFAULT_USERS, seed: int = 7) -> "SampleData":
        """``n_users`` users with ids 1..n and ORDERS_PER_USER orders each, ids shuffled by ``seed``."""
        rng = random.Random(seed)
        data = cls(users={f"user{i}": i for i in range(1, n_users + 1)})
        order_ids = list(range(1000, 1000 + n_users * ORDERS_PER_USER))
        rng.shuffle(order_ids)
        for n, order_id in enumerate(order_ids):
            data.orders[order_id] = n // ORDERS_PER_USER + 1
        return data

    def orders_of(self, user_id: int) -> list[int]:
        """Order ids owned by ``user_id``, ascending."""
        return sorted(o for o, owner in self.orders.items() if owner == user_id)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def make_app(data: SampleData | None = None) -> web.Application:
    """Build the aiohttp application over ``data`` (generated with defaults if None)."""
    data = data or SampleData.generate()
    sessions: dict[str, int] = {}
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
        try:
            body = json.loads(await request.read())
            username, password = str(body["username"]), str(body["password"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "body must be JSON with username and password")
        user_id = data.users.get(username)
        if user_id is None or not secrets.compare_digest(password, password_for(username)):
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

    app = web.Application()
    app.add_routes(routes)
    return app


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m gatewatch.sample_api [--host H] [--port P] [--users N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    args = parser.parse_args(argv)
    web.run_app(make_app(SampleData.generate(args.users)), host=args.host, port=args.port,
                access_log=None, print=lambda *_: None)


if __name__ == "__main__":
    main()
