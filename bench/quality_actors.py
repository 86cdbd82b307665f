"""Labelled traffic of the quality harness: actors and their request scripts, from a seed.

Pure: :func:`build_scenario` turns a seed, a duration and an address picker
into a :class:`Scenario` — every actor with its label (attack or benign), the
detectors that may rightly fire on it, its identities (``scope:value`` keys
as detections and decisions name them) and its scripts of requests. Nothing
is sent here; ``bench/quality_client.py`` plays the scripts through the
gateway.

Benign actors (none may be blocked):

* ``user``: 20 people, each from its own address (anywhere), API key and
  session: a login (a typo first 30 % of the time), then reads of their own
  profile, orders and documents, now and then a stale link to one of two
  orders that no longer exist (404), every 0.4–1.2 s; one more login between
  40 % and 90 % of the run (an expired session), when attacked usernames may
  be under a challenge (people solve it).
* ``nat-office``: 300 people behind one corporate address (Germany) sharing
  the office app's API key; each comes once, logs in (12 % typo first), reads
  3–8 of its own things at 1–3 s intervals, leaves — a normal login success
  ratio from one busy IP.
* ``mobile``: one person whose address changes every 25 s between four
  networks of one German mobile carrier (AS6805).
* ``vpn``: one person at home in France (AS3215) who turns a VPN on halfway
  through: the rest comes from a US exit of a VPN host (M247, AS9009).
* ``batch``: a nightly batch job on a cloud address (AWS, US) walking its 60
  orders again and again, five requests a second.
* ``bulk-sync``: a client reading its 400 orders (consecutive ids, all 200)
  at 40 requests/s, four at a time — volume without refusals.
* ``geo-victim``: two users (Great Britain, Australia) like ``user``, whose key
  and password the ``impossible-travel`` attackers use.

Attack actors:

* ``stuffing-fast``: five runs from five addresses, 2 s each at 150 requests/s
  (16 in flight, as attack tools run), POST /login with leaked pairs (40 %
  real usernames of this API, wrong passwords).
* ``stuffing-slow``: two runs from one address each, 1 and 0.5 attempts/s.
* ``stuffing-distributed``: 200 addresses anywhere, 3 attempts each spread
  over half the run, 70 target usernames each tried from several addresses.
* ``bola-sequential-fast`` (3 runs, 150/s) and ``bola-sequential-slow`` (2/s):
  a logged-in user walking ``/orders/{id}`` upwards through other users' orders.
* ``bola-uuid-fast`` (2 runs, 150/s) and ``bola-uuid-slow`` (2/s):
  ``/documents/{uuid}`` with a list of 30 % real (leaked) document ids of other
  users and 70 % guesses; the route has the sample API's deliberate ownership
  flaw, so real ids come back (foreign objects returned).
* ``impossible-travel``: two runs using a victim's key and password from a
  far country (Brazil, Vietnam) minutes after the victim's own requests.
* ``latency``: the upstream answers ``GET /users/{id}`` 150 ms slower from
  42 % to 75 % of the run (no requests of its own).

The times of each script are fractions of ``duration_s`` (160 s by default).
Sample-API users: ``user1..user400``; see :data:`USERS` and the ``*_USER``
constants.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.quality_addresses import Address
from detectors.bola import NAME as BOLA
from detectors.credential_stuffing import GLOBAL_VALUE, NAME as CREDENTIAL_STUFFING
from detectors.geo import DETECTOR as GEO
from detectors.latency import NAME as LATENCY
from gatewatch.sample_api import SampleData, password_for
from inline.login import username_hash

#: Sample-API users (``--users``).
USERS = 400
REGULAR_USERS = range(1, 21)
MOBILE_USER, VPN_USER, BATCH_USER, BULK_USER = 21, 22, 23, 24
BOLA_USERS = range(31, 38)
VICTIM_USERS = (41, 42)
NAT_USERS = range(101, 401)
EXTRA_ORDERS = {f"user{BATCH_USER}": 60, f"user{BULK_USER}": 400}
#: The route whose upstream latency the ``latency`` actor raises, and by how much (ms).
LATENCY_ROUTE = "/users/{id}"
LATENCY_SERIES = f"GET {LATENCY_ROUTE}"
LATENCY_EXTRA_MS = 150.0
#: Attack-tool speed (requests/s from one source) and requests in flight.
FAST_RATE_PER_S = 150.0
FAST_BURST_S = 2.0
FAST_IN_FLIGHT = 16
DISTRIBUTED_IPS = 200
DISTRIBUTED_ATTEMPTS_PER_IP = 3
DISTRIBUTED_TARGETS = 70

Picker = Callable[[str | None, int | None], Address]


@dataclass(frozen=True)
class Step:
    """One request. ``delay_s``: in an open-loop script the offset from the script's
    start, in a closed-loop one the wait after the previous answer (s). ``login``:
    a login whose token (on 200) later ``session`` steps send as ``Bearer``."""

    delay_s: float
    ip: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    login: bool = False
    session: bool = False


@dataclass(frozen=True)
class Script:
    """Steps played in order from ``start_s`` (s into the traffic) with one session.

    ``user_id``: the sample-API user whose objects are the script's own (an
    answer naming another owner is a foreign object). ``api_key_id``: the key sent
    as ``X-API-Key`` (None: none). ``open_loop``: steps start on schedule whatever
    the answers, at most ``max_in_flight`` at once (a login is awaited), as attack
    tools run; otherwise each step waits for the previous answer (people, jobs).
    """

    start_s: float
    steps: tuple[Step, ...]
    user_id: int | None = None
    api_key_id: str | None = None
    open_loop: bool = False
    max_in_flight: int = 1


@dataclass(frozen=True)
class Actor:
    """A labelled source of traffic.

    ``detectors``: the detectors that rightly fire on it (attacks); ``keys``: its
    identities as ``scope:value`` (``ip:…``, ``prefix:…/24``, ``principal:…``,
    ``username:<hash>``, ``asn:…``, ``route:GET /…``, ``global:login_failures``);
    ``rate_per_s``: planned requests/s of an open-loop attack; ``latency``:
    ``(at_s, ms)`` changes of the upstream latency of :data:`LATENCY_ROUTE`;
    ``response``: what the default decision policy promises for this attack —
    ``ban`` (403), ``throttle`` (429 beyond a tight limit), ``challenge`` or ``alert``
    (no decision). ``solves_challenges``: whether its client solves a gateway challenge
    (None: people do, attack tools do not).
    """

    name: str
    kind: str
    attack: bool
    scripts: tuple[Script, ...] = ()
    detectors: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    rate_per_s: float | None = None
    latency: tuple[tuple[float, float], ...] = ()
    response: str | None = None
    solves_challenges: bool | None = None

    @property
    def solves(self) -> bool:
        """True if its client solves challenges (see ``solves_challenges``)."""
        return not self.attack if self.solves_challenges is None else self.solves_challenges

    @property
    def start_s(self) -> float:
        """When its first request (or latency change) is planned, s into the traffic."""
        starts = [s.start_s for s in self.scripts] + [at for at, _ in self.latency]
        return min(starts)


@dataclass(frozen=True)
class Scenario:
    """Every actor of one run, and what the sample API and the keys file must hold."""

    seed: int
    duration_s: float
    actors: tuple[Actor, ...]
    api_keys: tuple[tuple[str, str], ...]  # (key id, owner)
    users: int = USERS
    extra_orders: dict[str, int] = field(default_factory=lambda: dict(EXTRA_ORDERS))

    def sample_api_args(self) -> list[str]:
        """Command-line options of the sample API for this scenario (see gatewatch/sample_api.py)."""
        args = ["--users", str(self.users), "--seed", str(self.seed), "--unchecked", "documents", "--control"]
        for user, count in self.extra_orders.items():
            args += ["--extra-orders", f"{user}={count}"]
        return args

    def actor(self, name: str) -> Actor:
        """The actor called ``name``; ``KeyError`` if none."""
        for actor in self.actors:
            if actor.name == name:
                return actor
        raise KeyError(name)


def prefix_of(ip: str) -> str:
    """The /24 of an IPv4 address as the ``prefix`` decisions name it: ``192.0.2.0/24``."""
    return ".".join(ip.split(".")[:3]) + ".0/24"


def _login(ip: str, user: str, password: str, delay_s: float = 0.0) -> Step:
    return Step(delay_s, ip, "POST", "/login", {"username": user, "password": password}, login=True)


def _get(ip: str, path: str, delay_s: float = 0.0) -> Step:
    return Step(delay_s, ip, "GET", path, session=True)


class _Builder:
    """Holds the seed's random source, the generated sample data and the address picker."""

    def __init__(self, seed: int, duration_s: float, pick: Picker, username_key: str) -> None:
        self.rng = random.Random(seed)
        self.d = duration_s
        self.pick = pick
        self.username_key = username_key
        self.data = SampleData.generate(USERS, seed, EXTRA_ORDERS)
        self.api_keys: list[tuple[str, str]] = []

    def key(self, key_id: str, owner: str) -> str:
        if (key_id, owner) not in self.api_keys:
            self.api_keys.append((key_id, owner))
        return key_id

    def uname(self, username: str) -> str:
        return "username:" + username_hash(self.username_key, username)

    def identity(self, ips: Iterable[str], principal: str | None = None,
                 usernames: Iterable[str] = ()) -> frozenset[str]:
        ips = list(ips)
        keys = {f"ip:{ip}" for ip in ips} | {f"prefix:{prefix_of(ip)}" for ip in ips}
        keys |= {self.uname(u) for u in usernames}
        if principal:
            keys.add(f"principal:{principal}")
        return frozenset(keys)

    # -- benign ------------------------------------------------------------------------

    def log_in(self, uid: int, ip: str, typo: float, delay_s: float) -> list[Step]:
        """A login after ``delay_s``, preceded with probability ``typo`` by a wrong password."""
        user = f"user{uid}"
        steps = []
        if self.rng.random() < typo:
            steps.append(Step(delay_s, ip, "POST", "/login", {"username": user, "password": "typo"}))
            delay_s = 2.0
        return steps + [_login(ip, user, password_for(user), delay_s)]

    def browse(self, uid: int, ip_at: Callable[[float], str], start_s: float, until_s: float,
               think: tuple[float, float], typo: float, reads: int | None = None,
               relogin_at: float | None = None) -> tuple[Step, ...]:
        """A person: log in (a typo first with probability ``typo``), list their orders, then
        read their own things every ``think`` s until ``until_s`` (or ``reads`` reads); log in
        again once past ``relogin_at`` (a session that expired)."""
        rng = self.rng
        orders, docs = self.data.orders_of(uid), self.data.documents_of(uid)
        stale = [rng.randint(90_000, 99_999) for _ in range(2)]
        t = start_s
        steps = self.log_in(uid, ip_at(t), typo, 0.0)
        steps.append(_get(ip_at(t), f"/users/{uid}/orders", 0.3))
        n = 0
        while t < until_s and (reads is None or n < reads):
            if relogin_at is not None and t >= relogin_at:
                steps += self.log_in(uid, ip_at(t), typo, 0.5)
                relogin_at = None
            wait = rng.uniform(*think)
            t += wait
            n += 1
            roll = rng.random()
            if roll < 0.45:
                path = f"/users/{uid}"
            elif roll < 0.85:
                path = f"/orders/{rng.choice(orders)}"
            elif roll < 0.95:
                path = f"/documents/{rng.choice(docs)}"
            elif roll < 0.97:
                path = f"/users/{uid}/orders"
            else:
                path = f"/orders/{rng.choice(stale)}"
            steps.append(_get(ip_at(t), path, wait))
        return tuple(steps)

    def person(self, name: str, kind: str, uid: int, ips: list[str],
               ip_at: Callable[[float], str] | None = None) -> Actor:
        """A person with their own key, from ``ips[0]`` (or ``ip_at(t)``) for the whole run."""
        key_id = self.key(f"key_user{uid}", f"user{uid}")
        steps = self.browse(uid, ip_at or (lambda _t: ips[0]), 0.0, self.d, (0.4, 1.2), 0.3,
                            relogin_at=self.rng.uniform(0.4, 0.9) * self.d)
        return Actor(name, kind, False, (Script(0.0, steps, uid, key_id),),
                     keys=self.identity(ips, key_id, [f"user{uid}"]))

    def nat_office(self) -> Actor:
        office = self.pick("DE", None)
        key_id = self.key("key_office", "office")
        scripts = []
        for uid in NAT_USERS:
            start = self.rng.uniform(0.0, self.d - 20.0)
            steps = self.browse(uid, lambda _t: office.ip, start, self.d, (1.0, 3.0), 0.12,
                                reads=self.rng.randint(3, 8))
            scripts.append(Script(start, steps, uid, key_id))
        return Actor("nat-office", "nat-office", False, tuple(scripts),
                     keys=self.identity([office.ip], key_id, [f"user{u}" for u in NAT_USERS]))

    def mobile(self) -> Actor:
        cells = [self.pick("DE", 6805).ip for _ in range(4)]
        return self.person("mobile", "mobile", MOBILE_USER, cells,
                           ip_at=lambda t: cells[int(t // 25.0) % len(cells)])

    def vpn(self) -> Actor:
        home, exit_ = self.pick("FR", 3215), self.pick("US", 9009)
        switch = 0.5 * self.d
        return self.person("vpn", "vpn", VPN_USER, [home.ip, exit_.ip],
                           ip_at=lambda t: home.ip if t < switch else exit_.ip)

    def batch(self) -> Actor:
        ip = self.pick("US", 16509).ip
        key_id = self.key(f"key_user{BATCH_USER}", f"user{BATCH_USER}")
        uid, user = BATCH_USER, f"user{BATCH_USER}"
        own = self.data.orders_of(uid)
        start = 0.12 * self.d
        steps = [_login(ip, user, password_for(user)), _get(ip, f"/users/{uid}/orders", 0.2)]
        n = int((0.95 - 0.12) * self.d / 0.2)
        steps += [_get(ip, f"/orders/{own[i % len(own)]}", 0.2) if i % 20 else _get(ip, f"/users/{uid}", 0.2)
                  for i in range(1, n)]
        return Actor("batch", "batch", False, (Script(start, tuple(steps), uid, key_id),),
                     keys=self.identity([ip], key_id, [user]))

    def bulk_sync(self) -> Actor:
        ip = self.pick("NL", None).ip
        uid, user = BULK_USER, f"user{BULK_USER}"
        key_id = self.key(f"key_user{uid}", user)
        own = self.data.orders_of(uid)
        rate = 40.0
        steps = [_login(ip, user, password_for(user)), _get(ip, f"/users/{uid}/orders", 0.05)]
        steps += [_get(ip, f"/orders/{oid}", 0.1 + i / rate) for i, oid in enumerate(own)]
        return Actor("bulk-sync", "bulk-sync", False,
                     (Script(0.25 * self.d, tuple(steps), uid, key_id, open_loop=True, max_in_flight=4),),
                     keys=self.identity([ip], key_id, [user]), rate_per_s=rate)

    # -- attacks -----------------------------------------------------------------------

    def leaked_pairs(self, n: int) -> list[tuple[str, str]]:
        """``n`` (username, password) pairs as from a breach list: 40 % real usernames of
        this API with wrong passwords, the rest addresses that do not exist here."""
        rng = self.rng
        return [(f"user{rng.randint(1, USERS)}" if rng.random() < 0.4
                 else f"person{rng.randint(1, 10**6)}@mail.test", f"Summer{rng.randint(2000, 2026)}!{i}")
                for i in range(n)]

    def stuffing(self, name: str, kind: str, at: float, rate: float, seconds: float,
                 in_flight: int) -> Actor:
        ip = self.pick(None, None).ip
        pairs = self.leaked_pairs(int(rate * seconds))
        steps = tuple(Step(i / rate, ip, "POST", "/login", {"username": u, "password": p})
                      for i, (u, p) in enumerate(pairs))
        keys = self.identity([ip], None, [u for u, _ in pairs]) | {f"global:{GLOBAL_VALUE}"}
        return Actor(name, kind, True, (Script(at * self.d, steps, open_loop=True, max_in_flight=in_flight),),
                     frozenset({CREDENTIAL_STUFFING}), keys, rate, response="ban")

    def distributed(self, at: float, until: float) -> Actor:
        rng = self.rng
        addrs = [self.pick(None, None) for _ in range(DISTRIBUTED_IPS)]
        targets = [u for u, _ in self.leaked_pairs(DISTRIBUTED_TARGETS)]
        span = (until - at) * self.d
        attempts = sorted((rng.uniform(0, span), a.ip) for a in addrs for _ in range(DISTRIBUTED_ATTEMPTS_PER_IP))
        steps = tuple(Step(t, ip, "POST", "/login",
                           {"username": targets[i % len(targets)], "password": f"Winter{rng.randint(1, 99)}!"})
                      for i, (t, ip) in enumerate(attempts))
        keys = (self.identity([a.ip for a in addrs], None, targets) | {f"asn:{a.asn}" for a in addrs}
                | {f"global:{GLOBAL_VALUE}"})
        return Actor("stuffing-distributed", "stuffing-distributed", True,
                     (Script(at * self.d, steps, open_loop=True, max_in_flight=FAST_IN_FLIGHT),),
                     frozenset({CREDENTIAL_STUFFING}), keys, len(steps) / span, response="challenge")

    def bola(self, name: str, kind: str, uid: int, at: float, rate: float, seconds: float,
             paths: list[str], in_flight: int) -> Actor:
        ip = self.pick(None, None).ip
        user = f"user{uid}"
        key_id = self.key(f"key_user{uid}", user)
        steps = [_login(ip, user, password_for(user))]
        steps += [_get(ip, path, 0.05 + i / rate) for i, path in enumerate(paths[:int(rate * seconds)])]
        return Actor(name, kind, True,
                     (Script(at * self.d, tuple(steps), uid, key_id, open_loop=True, max_in_flight=in_flight),),
                     frozenset({BOLA}), self.identity([ip], key_id), rate, response="ban",
                     # It logs in to its own account as a person does (its account may be one the
                     # distributed attack targets): that login solves a challenge like anyone's.
                     solves_challenges=True)

    def sequential_ids(self, n: int) -> list[str]:
        first = self.rng.randint(1000, 1000 + 3 * USERS - n - 1)
        return [f"/orders/{first + i}" for i in range(n)]

    def uuid_ids(self, uid: int, n: int) -> list[str]:
        """30 % real documents of other users (a leak), 70 % random UUIDs, shuffled."""
        foreign = [d for d, owner in self.data.documents.items() if owner != uid]
        real = self.rng.sample(foreign, int(0.3 * n))
        guesses = [str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) for _ in range(n - len(real))]
        ids = real + guesses
        self.rng.shuffle(ids)
        return [f"/documents/{d}" for d in ids]

    def thief(self, name: str, victim: int, country: str, at: float, seconds: float) -> Actor:
        ip = self.pick(country, None).ip
        user = f"user{victim}"
        key_id = f"key_user{victim}"
        orders, docs = self.data.orders_of(victim), self.data.documents_of(victim)
        steps = [_login(ip, user, password_for(user))]
        steps += [_get(ip, self.rng.choice([f"/users/{victim}", f"/orders/{self.rng.choice(orders)}",
                                            f"/documents/{self.rng.choice(docs)}"]), 1.0)
                  for _ in range(int(seconds))]
        return Actor(name, "impossible-travel", True, (Script(at * self.d, tuple(steps), victim, key_id),),
                     frozenset({GEO}), frozenset({f"principal:{key_id}", f"ip:{ip}"}), response="alert")


def build_scenario(seed: int, duration_s: float, pick: Picker, username_key: str) -> Scenario:
    """Every actor of a run of ``duration_s`` seconds (at least 60) from ``seed``.

    ``pick(country, asn)`` returns a fresh located :class:`Address` (see
    :class:`bench.quality_addresses.AddressBook`); ``username_key`` is the
    gateway's ``settings.username_hash_key`` (the ``username`` identities are
    keyed hashes, as the gateway writes them). Same arguments, same scenario.
    Raises ``ValueError`` for a duration under 60 s.
    """
    if duration_s < 60:
        raise ValueError("duration_s must be at least 60 s")
    b = _Builder(seed, duration_s, pick, username_key)
    actors = [b.person(f"user-{n}", "user", n, [b.pick(None, None).ip]) for n in REGULAR_USERS]
    victims = [b.person(f"geo-victim-{n}", "geo-victim", uid, [b.pick(country, None).ip])
               for n, (uid, country) in enumerate(zip(VICTIM_USERS, ("GB", "AU")), 1)]
    actors += victims + [b.nat_office(), b.mobile(), b.vpn(), b.batch(), b.bulk_sync()]
    fast = dict(rate=FAST_RATE_PER_S, seconds=FAST_BURST_S, in_flight=FAST_IN_FLIGHT)
    for n, at in enumerate((0.10, 0.28, 0.46, 0.64, 0.82), 1):
        actors.append(b.stuffing(f"stuffing-fast-{n}", "stuffing-fast", at, **fast))
    actors.append(b.stuffing("stuffing-slow-1", "stuffing-slow", 0.15, 1.0, 30.0, 1))
    actors.append(b.stuffing("stuffing-slow-2", "stuffing-slow", 0.55, 0.5, 40.0, 1))
    actors.append(b.distributed(0.40, 0.90))
    n_fast = int(FAST_RATE_PER_S * FAST_BURST_S)
    bola_users = iter(BOLA_USERS)
    for n, at in enumerate((0.20, 0.50, 0.78), 1):
        actors.append(b.bola(f"bola-sequential-fast-{n}", "bola-sequential-fast", next(bola_users), at,
                             paths=b.sequential_ids(n_fast), **fast))
    actors.append(b.bola("bola-sequential-slow", "bola-sequential-slow", next(bola_users), 0.30, 2.0, 30.0,
                         b.sequential_ids(60), 1))
    for n, at in enumerate((0.35, 0.70), 1):
        uid = next(bola_users)
        actors.append(b.bola(f"bola-uuid-fast-{n}", "bola-uuid-fast", uid, at, paths=b.uuid_ids(uid, n_fast),
                             **fast))
    uid = next(bola_users)
    actors.append(b.bola("bola-uuid-slow", "bola-uuid-slow", uid, 0.60, 2.0, 30.0, b.uuid_ids(uid, 60), 1))
    actors.append(b.thief("impossible-travel-1", VICTIM_USERS[0], "BR", 0.30, 20.0))
    actors.append(b.thief("impossible-travel-2", VICTIM_USERS[1], "VN", 0.65, 20.0))
    actors.append(Actor("latency", "latency", True, detectors=frozenset({LATENCY}),
                        keys=frozenset({f"route:{LATENCY_SERIES}"}), response="alert",
                        latency=((0.42 * duration_s, LATENCY_EXTRA_MS), (0.75 * duration_s, 0.0))))
    return Scenario(seed, duration_s, tuple(actors), tuple(b.api_keys))
