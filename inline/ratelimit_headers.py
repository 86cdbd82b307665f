"""The IETF RateLimit header fields of the gateway's answers.

Source: draft-ietf-httpapi-ratelimit-headers-11 (R. Polli, A. Martinez,
D. Miller, May 2026; an Internet-Draft, not yet an RFC), which defines two
response fields, both Structured Field Lists (RFC 9651):

``RateLimit-Policy`` (§3) — the quota policies that apply, one Item per policy:
    a String naming the policy, ``q`` = the quota (Integer, quota units; the
    default unit is requests), ``w`` = the time window (Integer seconds).
``RateLimit`` (§4) — the service limit now, one Item per policy:
    the policy's name, ``r`` = the available quota (Integer), ``t`` = the
    effective window (Integer seconds).

How GCRA (:mod:`inline.gcra`) maps onto them here::

    RateLimit-Policy: "ip";q=100;w=2, "principal";q=200;w=2
    RateLimit: "ip";r=97;t=1, "principal";r=199;t=1

- ``q`` = the burst: the most requests a client can make at once;
- ``w`` = ``ceil(burst / rate)``: the seconds in which an exhausted quota
  comes back whole (so ``q / w`` is the sustained rate, rounded down where
  ``burst / rate`` is not a whole number: the advertised policy is never
  looser than the enforced one);
- ``r`` = requests allowed right now (``floor``);
- ``t`` = seconds until the quota is whole again (``ceil``). The draft
  (§4.1.2) lets the server define this window and tells clients not to
  assume the whole quota is back after it.

On a 429 ``RateLimit`` lists only the policies that refused the request,
each with ``r=0`` and ``t`` = the seconds until it would allow a request;
``Retry-After`` (RFC 9110 §10.2.3) is the largest of those, so it never
points earlier than the end of an effective window (§6: SHOULD NOT).
``RateLimit-Policy`` lists every policy that applied. No partition key
(``pk``) is sent: the keys are client addresses and principals (§6.1:
avoid sensitive information). Policy names are restricted to
``a-z 0-9 _ . -`` (:data:`inline.ratelimit_policy.NAME`), so they need no
escaping as sf-strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from inline.gcra import LimitState, RateSpec, Verdict, retry_after_header
from inline.ratelimit_policy import Hit

POLICY_FIELD = "RateLimit-Policy"
LIMIT_FIELD = "RateLimit"


def policy_item(name: str, spec: RateSpec) -> str:
    """One Quota Policy Item: ``"name";q=BURST;w=ceil(BURST/RATE)`` (w at least 1)."""
    window = max(1, math.ceil(spec.window_s - 1e-9))
    return f'"{name}";q={spec.burst};w={window}'


def limit_item(name: str, state: LimitState) -> str:
    """One Service Limit Item: ``"name";r=REMAINING;t=SECONDS`` (see the module docstring)."""
    seconds = state.retry_after_s if state.refused else state.reset_s
    return f'"{name}";r={state.remaining if not state.refused else 0};t={max(0, math.ceil(seconds - 1e-9))}'


def ratelimit_fields(hits: Sequence[Hit], verdict: Verdict) -> dict[str, str]:
    """The ``RateLimit-Policy`` and ``RateLimit`` values for a request counted against
    ``hits`` with outcome ``verdict`` (states in the order of ``hits``); on a
    refusal also ``Retry-After``."""
    fields = {POLICY_FIELD: ", ".join(policy_item(h.policy.name, h.spec) for h in hits)}
    if verdict.allowed:
        fields[LIMIT_FIELD] = ", ".join(limit_item(h.policy.name, s) for h, s in zip(hits, verdict.states))
    else:
        fields[LIMIT_FIELD] = ", ".join(limit_item(h.policy.name, s)
                                        for h, s in zip(hits, verdict.states) if s.refused)
        fields["Retry-After"] = retry_after_header(verdict.retry_after_s)
    return fields
