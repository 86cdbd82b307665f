"""Credential stuffing: failed logins per IP, per prefix, per ASN, per username and overall.

Rules (all over event time; counts of upstream-answered login attempts):

``ip`` — per source IP, within ``window_s`` (60 s): at least ``min_failures`` (10)
failed logins over at least ``min_usernames`` (5) distinct usernames, **and** a
failure share (failures / attempts) of at least ``min_failure_share`` (0.5).

``prefix`` — per IPv4 /``prefix_v4`` (24) or IPv6 /``prefix_v6`` (64), within
``aggregate_window_s`` (600 s): at least ``prefix_min_failures`` (20) failures
from at least ``prefix_min_ips`` (5) distinct IPs, over ``prefix_min_usernames``
(10) usernames, failure share >= ``min_failure_share``. IPs that fired the ``ip``
rule themselves are left out of the failure and IP counts (they are handled).

``asn`` — per autonomous system, when the event carries ``asn``: the same with
``asn_min_failures`` (50), ``asn_min_ips`` (10), ``asn_min_usernames`` (25).

``username`` — per username hash, within ``aggregate_window_s``: at least
``username_min_failures`` (10) failures from at least ``username_min_ips`` (3)
distinct IPs — one account attacked from several places. Failures from an
address that logged in to the same account successfully within that window
(before or after them) are left out, of the failures and of the IPs: see the
owner rule below.

``global`` — the low-and-slow attack (hundreds of IPs, a few attempts each):
failed logins per ``spike_bucket_s`` (60 s) bucket against an EWMA baseline of
past buckets (λ = ``spike_ewma_lambda``, 0.1). A spike starts when the current
bucket reaches ``max(spike_min_failures, spike_factor × baseline)`` (30,
3×) and ends when a bucket closes below it; spike buckets do not feed the
baseline. One ``global`` detection marks the start. While a spike lasts, the
``username`` rule drops to ``spike_username_min_failures`` (2) failures from
``spike_username_min_ips`` (2) IPs: the accounts under attack get a
``username``-scope decision (value = the username hash; by default a proof-of-work
``challenge`` on their logins, see ``inline/challenge.py``, or a throttle) instead
of bans of hundreds of mostly innocent (residential proxy) addresses.

The owner rule: a failure from an address from which the same username logged
in successfully is the owner mistyping, not an attacker — a success needs the
password. A person who mistypes at home, logs in, then turns on a VPN (or
changes networks) and mistypes again makes 2 failures from 2 addresses, which
is all ``username_during_spike`` asks while someone else's attack makes the
spike. So both ``username`` rules count only failures from addresses that did
not log in to that account within the username's window (``aggregate_window_s``
up to its newest attempt; a success that arrives later clears the earlier
failures of its address for the next judgement, it does not withdraw a
detection already made). The OWASP Credential Stuffing Prevention Cheat Sheet
(its "IP blacklists" defence, in the revisions of the OWASP CheatSheetSeries
repository that had one) removes most false positives the same way: compare a
suspected address with the last addresses the account logged in from; OWASP's
"Slow Down Online Guessing Attacks with Device Cookies" trusts, for an account,
a client that has logged in to it; and the gateway spares such addresses from
``username`` throttles and challenges (``inline/recognized_sources.py``). The evidence counts
the failures left out (``failures_from_recognized_sources``); ``distinct_ips``
counts only the others.

The NAT rule: a busy corporate NAT (hundreds of real users behind one address)
makes many failures over many usernames — typos, forgotten passwords — but
most of its logins succeed, while a stuffing list succeeds on a fraction of a
percent of its attempts (Shape Security, "What Your Login Success Rate Says
About Your Credential Stuffing Threat": the login success ratio is the signal
that separates them). So no ``ip``/``prefix``/``asn`` rule fires unless at
least half of the key's attempts in the window failed (``min_failure_share``).
An attacker *behind* such a NAT is diluted by it; the ``username`` rules still
see the accounts it attacks.

Sources:

* OWASP Credential Stuffing Prevention Cheat Sheet, "IP Mitigation and
  Intelligence": do not rely on a single volume limit; consider short and long
  periods and "one IP address, likely in concert with many other IP addresses"
  sending low volumes; track these failures apart from per-user failures; keep
  blocks temporary (the ``ip`` rule; ``aggregate_window_s``; the TTLs).
  https://cheatsheetseries.owasp.org/cheatsheets/Credential_Stuffing_Prevention_Cheat_Sheet.html
* CrowdSec hub ``crowdsecurity/http-generic-bf`` (capacity 5, leak 10 s per IP),
  ``crowdsecurity/ssh-slow-bf`` and ``…_user-enum`` (capacity 10, leak 60 s,
  ``distinct: target_user`` — a ~10 minute window, our ``aggregate_window_s``),
  all with a ``blackhole`` so a source does not fire twice in a row.
  https://github.com/crowdsecurity/hub/tree/master/scenarios/crowdsecurity
* Auth0 Brute-Force Protection: ``max_attempts`` 10 failures per account,
  ``count_per_identifier`` mode counting them over every IP (our ``username``
  rule); Auth0 Suspicious IP Throttling answers 429 — throttles — rather than
  banning. https://auth0.com/docs/secure/attack-protection/brute-force-protection ,
  https://auth0.com/docs/secure/attack-protection/suspicious-ip-throttling
* EWMA baseline: S. W. Roberts, "Control chart tests based on geometric moving
  averages", Technometrics 1(3), 1959; NIST/SEMATECH e-Handbook §6.3.2.4.

What counts: events with ``login`` set that the upstream answered
(``answered_by == "upstream"``); gateway answers (403 of a decision, 429) are
not attempts. A failure without ``username_hash`` counts as a failure with no
username. After firing, a (rule, key) pair stays quiet for ``ban_ttl_s``.

What it will not catch:

* an attacker spreading over more addresses than the spike needs to show:
  fewer than ``spike_min_failures`` failures a minute overall, each username
  tried once — nothing repeats, nothing stands out;
* an attacker mixing in as many successful logins (own accounts) as failures;
* stuffing behind a busy NAT by IP (see above) — only by username; and by
  username not from an address the account's owner logged in from (a shared
  NAT or VPN exit): the owner rule leaves those failures out;
* the success that matters: one correct password among the failures is a
  success like any other (pair with MFA / breached-password checks).

State: windows evicted when idle, quiet periods forgotten when over; all in
the object (picklable), lost on restart unless the caller keeps it. Arrival
order does not matter (windows stay sorted by time, :mod:`detectors.windows`)
as long as ``now`` is a low watermark (see :meth:`CredentialStuffingDetector.process`);
after firing, a key stays quiet for ``ban_ttl_s`` from its trigger's time.

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> from gatewatch.events import RequestEvent
    >>> det = CredentialStuffingDetector(window_s=60, min_failures=3, min_usernames=2)
    >>> t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    >>> def login(i, user):
    ...     return RequestEvent(event_id=f"e{i}", ts=t0 + timedelta(seconds=i),
    ...         client_ip="203.0.113.7", method="POST", host="api", path="/login",
    ...         route="/login", status=401, login="failure", username_hash=user)
    >>> [[d.scope for d in det.process(login(i, u), now=t0 + timedelta(seconds=i))]
    ...  for i, u in enumerate(["a", "b", "c", "d"])]
    [[], [], ['ip'], []]
"""

from __future__ import annotations

import functools
import ipaddress
import math
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from detectors.windows import Attempt, CountWindow, KeyedWindows, QuietPeriods
from gatewatch.events import Detection, RequestEvent, Severity
from gatewatch.settings import CredentialStuffingSettings

NAME = "credential_stuffing"
MAX_SAMPLE_EVENT_IDS = 10
#: Every rule family; ``rules=`` selects which of them emit detections.
RULES = ("ip", "prefix", "asn", "username", "global")
#: Value of the ``global`` detection.
GLOBAL_VALUE = "login_failures"
#: Addresses whose network :func:`network_of` remembers.
NETWORK_CACHE = 65_536

# Namespace for deterministic ids: replaying the same events gives the same
# detection_id, so a redelivered detection deduplicates in storage.
_ID_NAMESPACE = uuid.UUID("6f1d3c52-3a5e-4f55-9a53-8c1f6b1e2d01")


@functools.lru_cache(maxsize=NETWORK_CACHE)
def network_of(ip: str, v4_len: int = 24, v6_len: int = 64) -> str | None:
    """The ``/v4_len`` (IPv4) or ``/v6_len`` (IPv6) network holding ``ip`` as text, or None.
    Remembered for the last :data:`NETWORK_CACHE` arguments (computing it with
    ``ipaddress`` takes ~20 µs, and an attacking address tries many times).

    >>> network_of("203.0.113.7"), network_of("2001:db8:1:2::9"), network_of("nope")
    ('203.0.113.0/24', '2001:db8:1:2::/64', None)
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    length = v4_len if addr.version == 4 else v6_len
    return str(ipaddress.ip_network((addr, length), strict=False))


class _Spike:
    """Failed logins per bucket against an EWMA baseline (see module docstring)."""

    __slots__ = ("open", "closed_before", "baseline", "active", "buckets_seen")

    def __init__(self) -> None:
        self.open: dict[int, int] = {}  # bucket index -> failures
        self.closed_before: int | None = None  # buckets below this index are closed
        self.baseline = 0.0
        self.active = False
        self.buckets_seen = 0


class CredentialStuffingDetector:
    """Credential-stuffing detector (see the module docstring for rules, defaults, sources).

    Parameters are those of :class:`gatewatch.settings.CredentialStuffingSettings`
    (seconds for ``*_s``, counts for ``min_*``, shares in 0..1), plus ``rules``:
    the rule families that emit detections (default all of :data:`RULES`). Every
    instance tracks the per-IP windows (the aggregate rules leave out IPs that
    fired); the aggregate windows are only kept for enabled rules.

    Raises ``ValueError`` on out-of-range parameters or an unknown rule.
    """

    def __init__(self, window_s: float = 60.0, min_failures: int = 10, min_usernames: int = 5,
                 ban_ttl_s: float = 600.0, *, rules: Iterable[str] = RULES,
                 **params: Any) -> None:
        cfg = CredentialStuffingSettings(window_s=window_s, min_failures=min_failures,
                                         min_usernames=min_usernames, ban_ttl_s=ban_ttl_s, **params)
        if cfg.window_s <= 0 or cfg.aggregate_window_s <= 0 or cfg.spike_bucket_s <= 0:
            raise ValueError("windows must be > 0 s")
        if min(cfg.min_failures, cfg.min_usernames, cfg.prefix_min_failures, cfg.prefix_min_ips,
               cfg.asn_min_failures, cfg.asn_min_ips, cfg.username_min_failures,
               cfg.username_min_ips, cfg.spike_min_failures, cfg.spike_username_min_failures,
               cfg.spike_username_min_ips) < 1:
            raise ValueError("every min_* count must be >= 1")
        if not 0.0 <= cfg.min_failure_share <= 1.0 or not 0.0 < cfg.spike_ewma_lambda <= 1.0:
            raise ValueError("min_failure_share must be in [0, 1] and spike_ewma_lambda in (0, 1]")
        self.rules = frozenset(rules)
        if not self.rules <= set(RULES):
            raise ValueError(f"unknown rules {sorted(self.rules - set(RULES))}; known: {RULES}")
        self.cfg = cfg
        self.window_s = cfg.window_s
        self.min_failures = cfg.min_failures
        self.min_usernames = cfg.min_usernames
        self.ban_ttl_s = cfg.ban_ttl_s
        self._quiet_delta = timedelta(seconds=cfg.ban_ttl_s)
        self._ips = KeyedWindows(cfg.window_s)
        self._prefixes = KeyedWindows(cfg.aggregate_window_s)
        self._asns = KeyedWindows(cfg.aggregate_window_s)
        self._usernames = KeyedWindows(cfg.aggregate_window_s)
        self._quiet = QuietPeriods()  # "scope:value" keys
        self._spike = _Spike()

    @classmethod
    def from_settings(cls, settings: CredentialStuffingSettings,
                      rules: Iterable[str] = RULES) -> CredentialStuffingDetector:
        """Build from the ``credential_stuffing`` section of the settings."""
        params = settings.model_dump(exclude={"window_s", "min_failures", "min_usernames", "ban_ttl_s"})
        return cls(settings.window_s, settings.min_failures, settings.min_usernames,
                   settings.ban_ttl_s, rules=rules, **params)

    @property
    def tracked_ips(self) -> int:
        """IPs with login attempts inside the window (the size of the per-IP state)."""
        return len(self._ips)

    @property
    def quiet_ips(self) -> int:
        """IPs that fired and are ignored until their quiet period ends."""
        return sum(1 for key in self._quiet if key.startswith("ip:"))

    @property
    def state_size(self) -> int:
        """Keys held in every window and quiet list together."""
        return (len(self._ips) + len(self._prefixes) + len(self._asns) + len(self._usernames)
                + len(self._quiet))

    @property
    def spike_active(self) -> bool:
        """True while a global failed-login spike lasts."""
        return self._spike.active

    def process(self, event: RequestEvent, now: datetime) -> list[Detection]:
        """Learn from one event and return the detections it completes.

        Windows and quiet periods are judged at the event's own ``ts``; ``now``
        (timezone-aware) only lets the detector forget what ended before it: keys
        idle since ``now - window``, quiet periods over by ``now``, and failed-login
        buckets ending by ``now``. On one in-order stream pass ``event.ts``; on a
        stream merged from several sources pass a low watermark — a time every
        source has passed — so that a lagging source finds its state. Events that
        are not upstream-answered login attempts only advance eviction.
        """
        self._evict(now)
        if event.login is None or event.answered_by != "upstream":
            if "global" in self.rules or "username" in self.rules:
                self._close_buckets(now)
            return []
        failed = event.login == "failure"
        ip = event.client_ip
        attempt = Attempt(event.ts, failed, event.username_hash, ip, event.event_id)
        out: list[Detection] = []
        if not self._quiet.active("ip:" + ip, event.ts):
            window = self._ips.add(ip, attempt)
            if (window.failures >= self.min_failures and len(window.usernames) >= self.min_usernames
                    and window.failure_share >= self.cfg.min_failure_share):
                self._fire(out, "ip", ip, "ip", window, event, distinct_ips=None)
                self._ips.drop(ip)
        if self.rules == {"ip"}:
            return out
        if "global" in self.rules or "username" in self.rules:
            self._count_spike(event, failed, now, out)
        if "prefix" in self.rules:
            prefix = network_of(ip, self.cfg.prefix_v4, self.cfg.prefix_v6)
            if prefix is not None:
                self._aggregate(out, "prefix", prefix, self._prefixes, attempt, event,
                                self.cfg.prefix_min_failures, self.cfg.prefix_min_ips,
                                self.cfg.prefix_min_usernames)
        if "asn" in self.rules and event.asn is not None:
            self._aggregate(out, "asn", str(event.asn), self._asns, attempt, event,
                            self.cfg.asn_min_failures, self.cfg.asn_min_ips, self.cfg.asn_min_usernames)
        if "username" in self.rules and event.username_hash:
            self._username(out, event.username_hash, attempt, event)
        return out

    # -- rules -------------------------------------------------------------------------

    def _aggregate(self, out: list[Detection], scope: str, key: str, windows: KeyedWindows,
                   attempt: Attempt, event: RequestEvent, min_failures: int,
                   min_ips: int, min_usernames: int) -> None:
        if self._quiet.active(f"{scope}:{key}", event.ts):
            return
        window = windows.add(key, attempt)
        if window.failures < min_failures or len(window.usernames) < min_usernames:
            return
        # Leave out IPs that fired the ip rule on their own: they are handled already.
        fired = [(ip, n) for ip, n in window.sources.items() if self._quiet.active("ip:" + ip, event.ts)]
        failures = window.failures - sum(n for _, n in fired)
        ips = len(window.sources) - len(fired)
        share = failures / (failures + window.successes) if failures else 0.0
        if failures >= min_failures and ips >= min_ips and share >= self.cfg.min_failure_share:
            self._fire(out, scope, key, scope, window, event, distinct_ips=ips,
                       extra={"failures_from_fired_ips": window.failures - failures,
                              "thresholds": {"min_failures": min_failures, "min_ips": min_ips,
                                             "min_usernames": min_usernames,
                                             "min_failure_share": self.cfg.min_failure_share}})
            windows.drop(key)

    def _username(self, out: list[Detection], user: str, attempt: Attempt, event: RequestEvent) -> None:
        if not attempt.failed:
            # A success recognizes its address for this account (the owner rule), also while
            # the account is quiet: it is kept in the window, it never fires.
            self._usernames.add(user, attempt)
            return
        if self._quiet.active("username:" + user, event.ts):
            return
        window = self._usernames.add(user, attempt)
        during_spike = self._spike.active
        if during_spike:
            min_failures, min_ips = self.cfg.spike_username_min_failures, self.cfg.spike_username_min_ips
        else:
            min_failures, min_ips = self.cfg.username_min_failures, self.cfg.username_min_ips
        if window.failures < min_failures or len(window.sources) < min_ips:
            return
        # The owner rule: leave out failures from addresses that logged in to this account.
        if window.successes:
            owner = {a.source for a in window.attempts if not a.failed}
            from_owner = sum(n for ip, n in window.sources.items() if ip in owner)
            ips = sum(1 for ip in window.sources if ip not in owner)
        else:
            from_owner, ips = 0, len(window.sources)
        if window.failures - from_owner >= min_failures and ips >= min_ips:
            rule = "username_during_spike" if during_spike else "username"
            extra: dict[str, Any] = {"thresholds": {"min_failures": min_failures, "min_ips": min_ips},
                                     "failures_from_recognized_sources": from_owner}
            if during_spike:
                extra["spike"] = self._spike_evidence(event)
            self._fire(out, "username", user, rule, window, event, distinct_ips=ips, extra=extra)
            self._usernames.drop(user)

    def _count_spike(self, event: RequestEvent, failed: bool, now: datetime,
                     out: list[Detection]) -> None:
        spike = self._spike
        bucket = self._bucket(event.ts)
        if failed and (spike.closed_before is None or bucket >= spike.closed_before):
            count = spike.open[bucket] = spike.open.get(bucket, 0) + 1
            if not spike.active and count >= self._spike_threshold():
                spike.active = True
                if "global" in self.rules:
                    out.append(self._global_detection(event, count))
        self._close_buckets(now)

    def _bucket(self, ts: datetime) -> int:
        return math.floor(ts.timestamp() / self.cfg.spike_bucket_s)

    def _spike_threshold(self) -> float:
        return max(self.cfg.spike_min_failures, self.cfg.spike_factor * self._spike.baseline)

    def _close_buckets(self, now: datetime) -> None:
        """Close the buckets that end by ``now``: a bucket below the threshold ends a spike
        and teaches the baseline (empty buckets count 0); a spike bucket does not."""
        spike = self._spike
        limit = self._bucket(now)  # buckets below this have ended
        if spike.closed_before is None:
            if not spike.open:
                return
            spike.closed_before = min(spike.open)
        lam = self.cfg.spike_ewma_lambda
        while spike.closed_before < limit:
            ready = [b for b in spike.open if b < limit]
            nxt = min(ready) if ready else limit
            gap = nxt - spike.closed_before  # empty buckets before the next counted one
            if gap > 0:
                spike.baseline *= (1 - lam) ** gap
                spike.buckets_seen += gap
                spike.active = False
                spike.closed_before = nxt
            if nxt == limit:
                break
            count = spike.open.pop(nxt)
            if count < self._spike_threshold():
                spike.active = False
                spike.baseline = lam * count + (1 - lam) * spike.baseline
                spike.buckets_seen += 1
            spike.closed_before = nxt + 1
        if any(n >= self._spike_threshold() for n in spike.open.values()):
            spike.active = True

    def _spike_evidence(self, trigger: RequestEvent) -> dict[str, Any]:
        spike = self._spike
        return {"bucket_s": self.cfg.spike_bucket_s,
                "bucket_failures": spike.open.get(self._bucket(trigger.ts), 0),
                "baseline_per_bucket": round(spike.baseline, 3),
                "threshold": round(self._spike_threshold(), 3), "baseline_buckets": spike.buckets_seen}

    # -- detections --------------------------------------------------------------------

    def _fire(self, out: list[Detection], scope: str, value: str, rule: str, window: CountWindow,
              trigger: RequestEvent, distinct_ips: int | None,
              extra: dict[str, Any] | None = None) -> None:
        self._quiet.start(f"{scope}:{value}", trigger.ts + self._quiet_delta)
        if scope not in self.rules:
            return
        samples = window.failed_event_ids(MAX_SAMPLE_EVENT_IDS)
        distinct = len(window.usernames)
        window_s = self.window_s if scope == "ip" else self.cfg.aggregate_window_s
        evidence: dict[str, Any] = {
            "rule": rule,
            "window_s": window_s,
            "failures": window.failures,
            "distinct_usernames": distinct,
            "successes": window.successes,
            "failure_share": round(window.failure_share, 4),
            "thresholds": {"min_failures": self.min_failures, "min_usernames": self.min_usernames,
                           "min_failure_share": self.cfg.min_failure_share},
            "first_ts": window.attempts[0].ts.isoformat(),
            "last_ts": window.attempts[-1].ts.isoformat(),
            "sample_event_ids": samples,
        }
        if distinct_ips is not None:
            evidence["distinct_ips"] = distinct_ips
        evidence.update(extra or {})
        if scope == "ip":
            score = min(window.failures / self.min_failures, distinct / self.min_usernames)
            summary = (f"{window.failures} failed logins for {distinct} usernames from {value} "
                       f"within {window_s:g} s ({window.successes} successes)")
        elif scope == "username":
            counted = window.failures - evidence.get("failures_from_recognized_sources", 0)
            score = counted / evidence["thresholds"]["min_failures"]
            summary = (f"{counted} failed logins for one username from {distinct_ips} IPs "
                       f"within {window_s:g} s" + (" during a failed-login spike"
                                                   if rule == "username_during_spike" else ""))
        else:
            score = window.failures / evidence["thresholds"]["min_failures"]
            summary = (f"{window.failures} failed logins for {distinct} usernames from {distinct_ips} "
                       f"IPs in {scope} {value} within {window_s:g} s ({window.successes} successes)")
        severity: Severity = "high" if scope in ("ip", "prefix") else "medium"
        out.append(Detection(
            detection_id=uuid.uuid5(_ID_NAMESPACE, f"{NAME}|{scope}|{value}|{trigger.event_id}").hex,
            ts=trigger.ts, detector=NAME, scope=scope, value=value,  # type: ignore[arg-type]
            severity=severity, score=round(score, 3), summary=summary, evidence=evidence,
            sample_event_ids=samples))

    def _global_detection(self, trigger: RequestEvent, count: int) -> Detection:
        evidence = {"rule": "global_spike", **self._spike_evidence(trigger),
                    "sample_event_ids": [trigger.event_id]}
        spike = self._spike
        return Detection(
            detection_id=uuid.uuid5(_ID_NAMESPACE, f"{NAME}|global|{trigger.event_id}").hex,
            ts=trigger.ts, detector=NAME, scope="global", value=GLOBAL_VALUE, severity="medium",
            score=round(count / max(self._spike_threshold(), 1.0), 3),
            summary=(f"failed-login spike: {count} failures in one {self.cfg.spike_bucket_s:g} s "
                     f"bucket, baseline {spike.baseline:.1f}"),
            evidence=evidence, sample_event_ids=[trigger.event_id])

    def _evict(self, now: datetime) -> None:
        self._ips.evict(now)
        self._prefixes.evict(now)
        self._asns.evict(now)
        self._usernames.evict(now)
        self._quiet.expire(now)
