"""Recognized sources of an account: the client addresses that logged in to it
successfully, so a throttle on the account spares its owner.

A ``username`` throttle (:mod:`inline.enforcement`) counts the login attempts on an
account from every source together, because a distributed attack spreads over
hundreds of addresses. The owner of the account would share that budget with the
attackers; OWASP's answer is to lock out *untrusted* clients only and let a client
that has already logged in to the account keep trying on its own budget ("Slow Down
Online Guessing Attacks with Device Cookies",
https://owasp.org/www-community/Slow_Down_Online_Guessing_Attacks_with_Device_Cookies).
API clients seldom keep cookies, so here the device is the client address: an
address from which the account logged in successfully within ``ttl_s`` is
recognized for that account.

What it does not do: an attacker behind the same address as the owner (a shared
NAT) is recognized too; the memory is per gateway process (a client balanced to
another gateway starts unrecognized there) and lost on restart; it holds at most
``max_entries`` pairs, the least recently confirmed forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict

#: Pairs remembered per gateway process (~150 bytes each).
DEFAULT_MAX_ENTRIES = 100_000
#: How long a successful login keeps an address recognized, seconds (30 days: the
#: lifetime OWASP's example gives a device cookie is unbounded; a month bounds stale
#: addresses of mobile and home connections).
DEFAULT_TTL_S = 30 * 86_400.0


class RecognizedSources:
    """``(username_hash, client_ip)`` pairs with the time (s, any monotonic-enough clock)
    of their last successful login; an LRU bounded by ``max_entries`` (≥ 1), entries
    older than ``ttl_s`` (> 0) not recognized. Raises ``ValueError`` on bad bounds."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, ttl_s: float = DEFAULT_TTL_S) -> None:
        if max_entries < 1 or not ttl_s > 0:
            raise ValueError("max_entries must be >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, username_hash: str, client_ip: str, now: float) -> None:
        """Record a successful login to ``username_hash`` from ``client_ip`` at ``now``."""
        key = (username_hash, client_ip)
        self._seen[key] = now
        self._seen.move_to_end(key)
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def recognized(self, username_hash: str, client_ip: str, now: float) -> bool:
        """True if ``client_ip`` logged in to ``username_hash`` successfully within ``ttl_s``
        before ``now`` (an expired pair is forgotten)."""
        key = (username_hash, client_ip)
        seen = self._seen.get(key)
        if seen is None:
            return False
        if now - seen > self.ttl_s:
            del self._seen[key]
            return False
        return True
