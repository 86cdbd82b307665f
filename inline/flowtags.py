"""Per-flow tags the policy addons leave for each other and for the metrics addon.

They live in ``flow.metadata`` under their own keys, beside (not inside)
:class:`inline.flowstate.FlowFacts`, which another part of the gateway owns;
they could become ``FlowFacts`` fields later without changing the readers
(every read goes through the functions here).

- ``gatewatch.allow_listed`` (bool): the client address is on the allow-list,
  so decisions and rate limits do not apply (set by :mod:`inline.lists`).
- ``gatewatch.blocked_scope`` (str): why the gateway refused the request:
  403 — ``deny_list`` or the ban decision's scope (``ip``, ``prefix``,
  ``principal``, ``username``, ``asn``, ``country``); 429 — the rate-limit
  scope (``ip``, ``principal``) or ``throttle`` (a throttle decision). Read
  by :mod:`inline.metrics`.
"""

from __future__ import annotations

from mitmproxy import http

ALLOW_LISTED = "gatewatch.allow_listed"
BLOCKED_SCOPE = "gatewatch.blocked_scope"


def allow_listed(flow: http.HTTPFlow) -> bool:
    """True if the client of ``flow`` is on the allow-list."""
    return bool(flow.metadata.get(ALLOW_LISTED))


def mark_allow_listed(flow: http.HTTPFlow) -> None:
    """Record that the client of ``flow`` is on the allow-list."""
    flow.metadata[ALLOW_LISTED] = True


def blocked_scope(flow: http.HTTPFlow) -> str | None:
    """The scope that made the gateway refuse ``flow`` (see module docstring), or None."""
    return flow.metadata.get(BLOCKED_SCOPE)


def mark_blocked(flow: http.HTTPFlow, scope: str) -> None:
    """Record that ``flow`` was refused because of ``scope``."""
    flow.metadata[BLOCKED_SCOPE] = scope
