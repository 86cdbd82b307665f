"""Rate-limit policies: which limits a request is counted against.

A policy (:class:`gatewatch.settings.RateLimitPolicy`) names a route pattern,
optional methods, what is counted (``ip``: the client address; ``principal``:
the API key id or token subject) and a limit, possibly one per API-key tier.
Every policy that matches a request applies to it; the request passes only
if all of them allow it (:func:`inline.gcra.check_all`).

The gateway's policies, in this order (the first refusing one names the
429's ``scope``):

1. ``ip`` — ``gatewatch_ip_rate_limit`` on every route, per client IP
   (also slows key guessing: it counts requests before authentication
   refuses them);
2. ``principal`` — ``gatewatch_principal_rate_limit`` on every route, per
   principal, with ``gatewatch_principal_rate_limit_tiers`` per API-key tier;
3. the policies of ``gatewatch_rate_limit_policies`` (JSON list), e.g.
   ``[{"name": "login", "route": "/login", "methods": ["POST"], "key": "ip",
   "limit": "0.2:5"}]``.

Route patterns are matched against the route template of the normalized
path (:func:`inline.routes.route_template`), so ``/users/1/../2`` cannot dodge
``/users/{id}``: ``*`` matches every route, ``/admin/*`` every template
starting with ``/admin/``, anything else one template exactly.

A tier's limit: ``tiers[tier]`` if the tier is listed (``None`` there means
"not limited by this policy"), else the policy's ``limit``, else
``tiers["default"]``. Requests without an API key have tier ``""``.

Everything here is parsed once at configuration time and is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from gatewatch.settings import RateLimitPolicy
from inline.gcra import RateSpec, parse_rate_limit

#: Policy names: they go into structured header fields, 429 bodies and Redis keys.
NAME = re.compile(r"[a-z0-9_.-]{1,32}")
#: HTTP method tokens (RFC 9110 §9.1), upper-cased.
_METHOD = re.compile(r"[A-Z]{1,20}")

_POLICY_LIST = TypeAdapter(list[RateLimitPolicy])


@dataclass(frozen=True)
class Policy:
    """A parsed policy. ``default``: the limit of unlisted tiers (None: unlimited);
    ``tiers``: limits per tier; ``methods``: empty = every method."""

    name: str
    key: Literal["ip", "principal"]
    route: str = "*"
    methods: frozenset[str] = frozenset()
    default: RateSpec | None = None
    tiers: Mapping[str, RateSpec | None] = field(default_factory=dict)
    per_route: bool = False

    def matches(self, method: str, route: str) -> bool:
        """True if this policy applies to a request of ``method`` on route template ``route``."""
        if self.methods and method.upper() not in self.methods:
            return False
        if self.route == "*":
            return True
        if self.route.endswith("*"):
            return route.startswith(self.route[:-1])
        return route == self.route

    def spec_for(self, tier: str) -> RateSpec | None:
        """The limit for a request of API-key ``tier`` (None: not limited)."""
        if tier in self.tiers:
            return self.tiers[tier]
        return self.default


@dataclass(frozen=True, slots=True)
class Hit:
    """One limit a request is counted against: its ``policy``, the ``spec`` for
    the request's tier and the ``counter`` (state key, unique per policy,
    route when ``per_route``, and IP or principal)."""

    policy: Policy
    spec: RateSpec
    counter: str


def _spec(value) -> RateSpec | None:
    return None if value is None else RateSpec(float(value.rate_per_s), int(value.burst))


def policy_from_setting(p: RateLimitPolicy) -> Policy:
    """A :class:`Policy` from its settings form. Raises ``ValueError`` for a bad
    name, route pattern or method, or a policy without any limit."""
    if not NAME.fullmatch(p.name):
        raise ValueError(f"policy name {p.name!r} must be 1-32 of a-z 0-9 _ . -")
    route = p.route.strip()
    if route != "*" and not route.startswith("/"):
        raise ValueError(f"policy {p.name}: route {p.route!r} must be '*' or start with '/'")
    if "*" in route[:-1]:
        raise ValueError(f"policy {p.name}: '*' may only end a route pattern")
    methods = frozenset(m.strip().upper() for m in p.methods)
    bad = [m for m in methods if not _METHOD.fullmatch(m)]
    if bad:
        raise ValueError(f"policy {p.name}: bad methods {bad}")
    if p.limit is None and not p.tiers:
        raise ValueError(f"policy {p.name}: needs a limit or tiers")
    tiers = {tier: _spec(limit) for tier, limit in p.tiers.items()}
    default = _spec(p.limit) if p.limit is not None else tiers.get("default")
    return Policy(p.name, p.key, route, methods, default, tiers, p.per_route)


def parse_tiers(items: Sequence[str]) -> dict[str, RateSpec | None]:
    """Parse ``["gold=1000:2000", "internal=off"]`` into ``{tier: limit}``.
    Raises ``ValueError`` for an item that is not ``TIER=RATE:BURST|off``."""
    tiers: dict[str, RateSpec | None] = {}
    for item in items:
        tier, sep, limit = item.partition("=")
        if not sep or not tier.strip():
            raise ValueError(f"tier limit {item!r} is not 'TIER=RATE:BURST' or 'TIER=off'")
        tiers[tier.strip()] = parse_rate_limit(limit)
    return tiers


def parse_policies(ip_limit: str, principal_limit: str, principal_tiers: Sequence[str] = (),
                   policies_json: str = "[]") -> tuple[Policy, ...]:
    """The gateway's policies from its options (see the module docstring).

    ``ip_limit``/``principal_limit``: ``"RATE:BURST"`` or ``"off"``;
    ``principal_tiers``: ``TIER=RATE:BURST|off`` items; ``policies_json``: a
    JSON list of :class:`gatewatch.settings.RateLimitPolicy` objects (limits
    as ``"RATE:BURST"`` text or ``{"rate_per_s", "burst"}``). Raises
    ``ValueError`` naming the problem (bad limit, bad JSON, duplicate name).
    """
    policies: list[Policy] = []
    ip = parse_rate_limit(ip_limit)
    if ip is not None:
        policies.append(Policy("ip", "ip", default=ip))
    principal, tiers = parse_rate_limit(principal_limit), parse_tiers(principal_tiers)
    if principal is not None or any(v is not None for v in tiers.values()):
        policies.append(Policy("principal", "principal", default=principal, tiers=tiers))
    try:
        settings = _POLICY_LIST.validate_json(policies_json or "[]")
    except ValidationError as exc:
        raise ValueError(f"rate-limit policies: {exc.errors(include_url=False)}") from None
    names = {p.name for p in policies} | {"ip", "principal"}
    for setting in settings:
        policy = policy_from_setting(setting)
        if policy.name in names:
            raise ValueError(f"policy name {policy.name!r} is used twice (ip and principal are reserved)")
        names.add(policy.name)
        policies.append(policy)
    return tuple(policies)


def match_hits(policies: Sequence[Policy], method: str, route: str, client_ip: str,
               principal: str, tier: str) -> list[Hit]:
    """The limits a request is counted against, in policy order.

    A policy is skipped when it does not match ``method``/``route``, when its
    key is missing (no principal, no client IP), or when the request's
    ``tier`` is unlimited under it.
    """
    hits: list[Hit] = []
    for policy in policies:
        value = client_ip if policy.key == "ip" else principal
        if not value or not policy.matches(method, route):
            continue
        spec = policy.spec_for(tier)
        if spec is None:
            continue
        # The route is length-prefixed so that no route/value pair can collide with another.
        scope = f"{len(route)}:{route}|" if policy.per_route else ""
        hits.append(Hit(policy, spec, f"{policy.name}|{scope}{value}"))
    return hits
