"""Synthetic traffic against the sample API through the gateway: benign users and a
credential-stuffing attacker, each from its own loopback address.

Linux routes all of 127.0.0.0/8 to the loopback interface, so a client bound
to ``127.0.0.23`` reaches the gateway with that source address: distinct
client IPs over real sockets, without trusting any forwarding header.

Every request is recorded as an :class:`Outcome` (who, status, whether the
gateway blocked it by a decision, the gateway's ``X-Request-Id``), which the
demo shows live and the end-to-end test checks against ClickHouse.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from gatewatch.sample_api import password_for

ATTACKER_IP = "127.0.0.66"
BENIGN_IP_BASE = 10  # benign user n sends from 127.0.0.(10 + n)


@dataclass(frozen=True)
class Outcome:
    """One answered request. ``t`` is seconds since the traffic started (monotonic)."""

    actor: str  # "benign" | "attacker"
    ip: str
    t: float
    status: int
    blocked: bool  # the gateway answered 403 because of a decision
    request_id: str | None


@dataclass
class TrafficLog:
    """All outcomes so far, with the counters the live view shows."""

    started: float = field(default_factory=time.monotonic)
    outcomes: list[Outcome] = field(default_factory=list)
    errors: int = 0

    def record(self, actor: str, ip: str, resp: httpx.Response) -> Outcome:
        """Append the outcome of ``resp`` and return it."""
        blocked = False
        if resp.status_code == 403:
            try:
                blocked = resp.json().get("error") == "blocked"
            except ValueError:
                blocked = False
        outcome = Outcome(actor, ip, time.monotonic() - self.started, resp.status_code, blocked,
                          resp.headers.get("x-request-id"))
        self.outcomes.append(outcome)
        return outcome

    def counts(self, actor: str | None = None) -> Counter[str]:
        """Counter of ``"total"``, status codes as text and ``"blocked"`` for ``actor`` (or everyone)."""
        c: Counter[str] = Counter()
        for o in self.outcomes:
            if actor is None or o.actor == actor:
                c["total"] += 1
                c[str(o.status)] += 1
                c["blocked"] += o.blocked
        return c

    def first_block_s(self, actor: str = "attacker") -> float | None:
        """Seconds from ``actor``'s first request to its first blocked one (client clock)."""
        mine = [o for o in self.outcomes if o.actor == actor]
        first_block = next((o for o in mine if o.blocked), None)
        return None if not mine or first_block is None else first_block.t - mine[0].t


def client_for(ip: str, base_url: str, api_key: str | None = None) -> httpx.AsyncClient:
    """An async HTTP client whose connections leave from ``ip`` (a loopback address)."""
    headers = {"X-API-Key": api_key} if api_key else {}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10.0,
                             transport=httpx.AsyncHTTPTransport(local_address=ip))


async def benign_user(log: TrafficLog, base_url: str, user_no: int, api_key: str,
                      until_s: float, seed: int, api_key_header: str = "X-API-Key") -> None:
    """A well-behaved user: logs in (sometimes after one typo), then reads its own
    profile and orders, and now and then an order that does not exist (404),
    about 3–5 requests per second, until ``until_s`` seconds into the traffic."""
    rng = random.Random(seed * 1000 + user_no)
    ip = f"127.0.0.{BENIGN_IP_BASE + user_no}"
    username = f"user{user_no}"
    async with client_for(ip, base_url) as client:
        client.headers[api_key_header] = api_key

        async def call(method: str, path: str, **kw: object) -> httpx.Response | None:
            try:
                resp = await client.request(method, path, **kw)
            except httpx.HTTPError:
                log.errors += 1
                return None
            log.record("benign", ip, resp)
            return resp

        if rng.random() < 0.3:
            await call("POST", "/login", json={"username": username, "password": "typo"})
        resp = await call("POST", "/login", json={"username": username, "password": password_for(username)})
        if resp is None or resp.status_code != 200:
            return
        login = resp.json()
        client.headers["Authorization"] = f"Bearer {login['token']}"
        uid = login["user_id"]
        resp = await call("GET", f"/users/{uid}/orders")
        orders = resp.json()["orders"] if resp is not None and resp.status_code == 200 else []
        while time.monotonic() - log.started < until_s:
            roll = rng.random()
            if roll < 0.4:
                await call("GET", f"/users/{uid}")
            elif roll < 0.95 and orders:
                await call("GET", f"/orders/{rng.choice(orders)}")
            else:
                await call("GET", f"/orders/{rng.randint(90_000, 99_999)}")
            await asyncio.sleep(rng.uniform(0.15, 0.35))


def leaked_credentials(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (username, password) pairs as from a breach list: real usernames with
    wrong passwords and usernames that do not exist here."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        user = f"user{rng.randint(1, 50)}" if rng.random() < 0.6 else f"person{rng.randint(1, 10**6)}@mail.test"
        pairs.append((user, f"Summer{rng.randint(2000, 2026)}!{i}"))
    return pairs


async def credential_stuffer(log: TrafficLog, base_url: str, start_s: float, until_s: float,
                             rate_per_s: float, seed: int) -> None:
    """A credential-stuffing attacker from ATTACKER_IP: POST /login with leaked pairs at
    ``rate_per_s`` from ``start_s`` to ``until_s`` seconds into the traffic. It keeps
    trying after being blocked, as real tools do."""
    await asyncio.sleep(max(0.0, start_s - (time.monotonic() - log.started)))
    pairs = leaked_credentials(100_000, seed)
    async with client_for(ATTACKER_IP, base_url) as client:
        for username, password in pairs:
            if time.monotonic() - log.started >= until_s:
                return
            try:
                resp = await client.post("/login", json={"username": username, "password": password})
                log.record("attacker", ATTACKER_IP, resp)
            except httpx.HTTPError:
                log.errors += 1
            await asyncio.sleep(1.0 / rate_per_s)


async def run_scenario(log: TrafficLog, base_url: str, api_keys: list[str], duration_s: float,
                       attack_start_s: float, attack_rate_per_s: float = 25.0, seed: int = 42) -> None:
    """Run ``len(api_keys)`` benign users (user n uses ``api_keys[n-1]``) for ``duration_s``
    seconds and the attacker from ``attack_start_s`` to the end."""
    log.started = time.monotonic()
    tasks = [benign_user(log, base_url, n, key, duration_s, seed) for n, key in enumerate(api_keys, 1)]
    tasks.append(credential_stuffer(log, base_url, attack_start_s, duration_s, attack_rate_per_s, seed))
    await asyncio.gather(*tasks)
