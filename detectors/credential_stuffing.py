"""Per-IP credential-stuffing detector: many failed logins for many usernames from one IP.

Shape (all within a sliding window of ``window_s`` seconds, per source IP):

* at least ``min_failures`` failed logins, **and**
* at least ``min_usernames`` distinct usernames among those failures
  (keyed username hashes; the raw username never reaches the pipeline).

Sources of this shape:

* OWASP Credential Stuffing Prevention Cheat Sheet, "IP block-listing": less
  sophisticated attacks use few IP addresses, which can be block-listed after a
  number of failed logins; track those failures separately from per-user
  failures; keep the block temporary.
  https://cheatsheetseries.owasp.org/cheatsheets/Credential_Stuffing_Prevention_Cheat_Sheet.html
* CrowdSec hub scenarios ``crowdsecurity/http-generic-bf`` (leaky bucket of
  ``auth_fail`` events grouped by source IP) and ``crowdsecurity/ssh-bf_user-enum``
  (the same with ``distinct: target_user``), both with ``blackhole: 1m`` so
  that an IP does not fire again right after firing.
  https://github.com/crowdsecurity/hub/tree/master/scenarios/crowdsecurity

Here the window is a true sliding window over event time instead of a leaky
bucket, both conditions must hold (failures alone look like one user's
forgotten password; distinct usernames alone look like a shared NAT), and the
"blackhole" lasts the ban TTL: once an IP fires it is ignored until the ban
would have expired, so a banned IP yields no duplicate detections.

What counts: events with ``login`` set that the upstream API answered
(``answered_by == "upstream"``). Gateway answers (a decision's 403, a rate
limit's 429) are not login attempts. A failure without ``username_hash``
counts as a failure but adds no username.

What it will not catch (future work):

* distributed, low-and-slow stuffing: many IPs (botnets, residential proxies)
  each staying under the thresholds — needs aggregation by prefix/ASN or over
  usernames, not per IP;
* password spraying slower than ``min_failures`` per ``window_s``;
* NAT nuances: many real users behind one address (office, carrier-grade NAT)
  who together make ``min_failures`` failures over ``min_usernames`` accounts
  in a window *do* fire, however many successes they also have (``successes``
  is in the evidence so a person can judge; allow-lists win over decisions).
  Fewer failures than that never fire, whatever the number of users.

State is bounded: an IP with no login event in the last ``window_s`` seconds
is evicted, and a quiet (already fired) IP is forgotten when its quiet period
ends. State lives in the object (picklable) and is lost when the worker
restarts; the first window after a restart starts empty.

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> from gatewatch.events import RequestEvent
    >>> det = CredentialStuffingDetector(window_s=60, min_failures=3, min_usernames=2)
    >>> t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    >>> def login(i, user):
    ...     return RequestEvent(event_id=f"e{i}", ts=t0 + timedelta(seconds=i),
    ...         client_ip="203.0.113.7", method="POST", host="api", path="/login",
    ...         route="/login", status=401, login="failure", username_hash=user)
    >>> [len(det.process(login(i, u), now=t0 + timedelta(seconds=i)))
    ...  for i, u in enumerate(["a", "b", "c", "d"])]
    [0, 0, 1, 0]
"""

from __future__ import annotations

import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from gatewatch.events import Detection, RequestEvent
from gatewatch.settings import CredentialStuffingSettings

NAME = "credential_stuffing"
MAX_SAMPLE_EVENT_IDS = 10

# Namespace for deterministic ids: replaying the same events gives the same
# detection_id, so a redelivered detection deduplicates in storage.
_ID_NAMESPACE = uuid.UUID("6f1d3c52-3a5e-4f55-9a53-8c1f6b1e2d01")


@dataclass(slots=True)
class _Attempt:
    ts: datetime
    failed: bool
    username_hash: str | None
    event_id: str


class _IpWindow:
    """Login attempts of one IP inside the window, with running counts."""

    __slots__ = ("attempts", "failures", "successes", "usernames")

    def __init__(self) -> None:
        self.attempts: deque[_Attempt] = deque()
        self.failures = 0
        self.successes = 0
        self.usernames: Counter[str] = Counter()  # failed-login username hash -> count

    def add(self, attempt: _Attempt) -> None:
        self.attempts.append(attempt)
        if attempt.failed:
            self.failures += 1
            if attempt.username_hash:
                self.usernames[attempt.username_hash] += 1
        else:
            self.successes += 1

    def expire(self, horizon: datetime) -> None:
        """Drop attempts at or before ``horizon`` (window is ``(horizon, now]``)."""
        while self.attempts and self.attempts[0].ts <= horizon:
            old = self.attempts.popleft()
            if old.failed:
                self.failures -= 1
                if old.username_hash:
                    self.usernames[old.username_hash] -= 1
                    if self.usernames[old.username_hash] <= 0:
                        del self.usernames[old.username_hash]
            else:
                self.successes -= 1


class CredentialStuffingDetector:
    """Sliding-window credential-stuffing detector keyed by source IP (see module docstring).

    Parameters (names as in :class:`gatewatch.settings.CredentialStuffingSettings`):

    * ``window_s`` — window length in seconds (> 0);
    * ``min_failures`` — failed logins in the window needed to fire (>= 1);
    * ``min_usernames`` — distinct usernames among those failures needed to fire (>= 1);
    * ``ban_ttl_s`` — after firing, the IP is ignored for this many seconds (>= 0).

    Raises ``ValueError`` on out-of-range parameters.
    """

    def __init__(self, window_s: float = 60.0, min_failures: int = 10,
                 min_usernames: int = 5, ban_ttl_s: float = 600.0) -> None:
        if window_s <= 0 or min_failures < 1 or min_usernames < 1 or ban_ttl_s < 0:
            raise ValueError("need window_s > 0, min_failures >= 1, min_usernames >= 1, ban_ttl_s >= 0")
        self.window_s = float(window_s)
        self.min_failures = int(min_failures)
        self.min_usernames = int(min_usernames)
        self.ban_ttl_s = float(ban_ttl_s)
        # Both maps are kept in order of last update so that eviction pops from the front.
        self._windows: OrderedDict[str, _IpWindow] = OrderedDict()
        self._last_seen: dict[str, datetime] = {}
        self._quiet_until: OrderedDict[str, datetime] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: CredentialStuffingSettings) -> CredentialStuffingDetector:
        """Build from the ``credential_stuffing`` section of the settings."""
        return cls(window_s=settings.window_s, min_failures=settings.min_failures,
                   min_usernames=settings.min_usernames, ban_ttl_s=settings.ban_ttl_s)

    @property
    def tracked_ips(self) -> int:
        """IPs with login attempts inside the window (the size of the state)."""
        return len(self._windows)

    @property
    def quiet_ips(self) -> int:
        """IPs that fired and are ignored until their quiet period ends."""
        return len(self._quiet_until)

    def process(self, event: RequestEvent, now: datetime) -> list[Detection]:
        """Learn from one event and return the detections it completes (0 or 1).

        ``now`` is the current event time (timezone-aware); the worker passes the
        event's own ``ts``. Events that are not upstream-answered login attempts only
        advance eviction.
        """
        self._evict(now)
        if event.login is None or event.answered_by != "upstream":
            return []
        ip = event.client_ip
        if ip in self._quiet_until:
            return []
        window = self._windows.get(ip)
        if window is None:
            window = self._windows[ip] = _IpWindow()
        self._windows.move_to_end(ip)
        self._last_seen[ip] = max(self._last_seen.get(ip, event.ts), event.ts)
        window.add(_Attempt(event.ts, event.login == "failure", event.username_hash, event.event_id))
        window.expire(now - timedelta(seconds=self.window_s))
        if window.failures >= self.min_failures and len(window.usernames) >= self.min_usernames:
            detection = self._detection(ip, window, event, now)
            del self._windows[ip]
            del self._last_seen[ip]
            self._quiet_until[ip] = now + timedelta(seconds=self.ban_ttl_s)
            return [detection]
        return []

    def _evict(self, now: datetime) -> None:
        horizon = now - timedelta(seconds=self.window_s)
        while self._windows:
            ip = next(iter(self._windows))
            if self._last_seen[ip] > horizon:
                break
            del self._windows[ip]
            del self._last_seen[ip]
        while self._quiet_until:
            ip, until = next(iter(self._quiet_until.items()))
            if until > now:
                break
            del self._quiet_until[ip]

    def _detection(self, ip: str, window: _IpWindow, trigger: RequestEvent, now: datetime) -> Detection:
        failed = [a for a in window.attempts if a.failed]
        samples = [a.event_id for a in failed[-MAX_SAMPLE_EVENT_IDS:]]
        distinct = len(window.usernames)
        evidence = {
            "window_s": self.window_s,
            "failures": window.failures,
            "distinct_usernames": distinct,
            "successes": window.successes,
            "thresholds": {"min_failures": self.min_failures, "min_usernames": self.min_usernames},
            "first_ts": window.attempts[0].ts.isoformat(),
            "last_ts": window.attempts[-1].ts.isoformat(),
            "sample_event_ids": samples,
        }
        score = min(window.failures / self.min_failures, distinct / self.min_usernames)
        return Detection(
            detection_id=uuid.uuid5(_ID_NAMESPACE, f"{NAME}|{ip}|{trigger.event_id}").hex,
            ts=now,
            detector=NAME,
            scope="ip",
            value=ip,
            severity="high",
            score=round(score, 3),
            summary=(f"{window.failures} failed logins for {distinct} usernames from {ip} "
                     f"within {self.window_s:g} s ({window.successes} successes)"),
            evidence=evidence,
            sample_event_ids=samples,
        )
