"""Credential stuffing, the owner rule: failures from an address that logged in to the same
account are the owner's typos, left out of both ``username`` rules; attackers' are not."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from detectors.credential_stuffing import CredentialStuffingDetector
from gatewatch.events import Detection, RequestEvent

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
OWNER = "owner-hash"
HOME, VPN_EXIT = "90.12.34.56", "181.214.60.157"  # a French home line, then a US exit of a VPN host
ATTACKERS = [f"198.18.{i}.7" for i in range(3)]


class Stream:
    """Logins in event time through one detector, with a failed-login spike made on demand by
    other usernames' failures (one each, from addresses of their own: no other rule fires)."""

    def __init__(self, **params) -> None:
        self.det = CredentialStuffingDetector(**params)
        self.found: list[Detection] = []
        self.n = 0

    def login(self, s: float, ip: str, ok: bool, user: str = OWNER) -> None:
        ts = T0 + timedelta(seconds=s)
        self.n += 1
        event = RequestEvent(event_id=f"e{self.n}", ts=ts, client_ip=ip, method="POST", host="api",
                             path="/login", route="/login", status=200 if ok else 401,
                             login="success" if ok else "failure", username_hash=user)
        self.found += self.det.process(event, now=ts)

    def spike(self, start_s: float, minutes: int, per_minute: int = 40) -> None:
        for m in range(minutes):
            for k in range(per_minute):
                self.login(start_s + 60 * m + k * 60 / per_minute, f"10.{m}.{k}.1", False, f"noise-{m}-{k}")

    def on_owner(self) -> list[Detection]:
        return [d for d in self.found if d.scope == "username" and d.value == OWNER]


def vpn_user(stream: Stream, typo_at_home_s: float, vpn_s: float) -> None:
    """The quality harness's VPN user: a typo then a login at home; later, on the VPN, again."""
    stream.login(typo_at_home_s, HOME, False)
    stream.login(typo_at_home_s + 2, HOME, True)
    stream.login(vpn_s, VPN_EXIT, False)
    stream.login(vpn_s + 2, VPN_EXIT, True)


def test_owner_typos_on_two_networks_during_a_spike_are_not_flagged() -> None:
    stream = Stream()
    stream.spike(0, 5)
    vpn_user(stream, 20, 150)
    assert stream.det.spike_active and any(d.scope == "global" for d in stream.found)
    assert stream.on_owner() == []


def test_the_same_failures_without_the_owners_logins_are_flagged() -> None:
    """What the owner rule leaves out: the same two failures, no success, fire as before."""
    stream = Stream()
    stream.spike(0, 5)
    stream.login(20, HOME, False)
    stream.login(150, VPN_EXIT, False)
    [hit] = stream.on_owner()
    assert hit.evidence["rule"] == "username_during_spike" and hit.evidence["distinct_ips"] == 2
    assert hit.evidence["failures_from_recognized_sources"] == 0


def test_a_success_before_the_failure_recognizes_the_address() -> None:
    stream = Stream()
    stream.spike(0, 5)
    stream.login(20, HOME, True)  # logged in earlier, from home
    stream.login(100, HOME, False)  # later mistypes at home
    stream.login(150, VPN_EXIT, False)  # and on the VPN, where the login has not succeeded yet
    assert stream.on_owner() == []


def test_a_distributed_attack_on_an_owners_account_is_still_flagged() -> None:
    stream = Stream()
    stream.spike(0, 5)
    vpn_user(stream, 20, 100)
    stream.login(150, ATTACKERS[0], False)
    assert stream.on_owner() == [], "one attacker address is not yet two"
    stream.login(160, ATTACKERS[1], False)
    [hit] = stream.on_owner()
    assert hit.evidence["rule"] == "username_during_spike"
    assert hit.evidence["distinct_ips"] == 2 and hit.evidence["failures_from_recognized_sources"] == 2
    assert hit.evidence["failures"] == 4 and hit.score == 1.0  # 2 counted of 4, min_failures 2
    assert hit.summary.startswith("2 failed logins for one username from 2 IPs")


def test_an_attacker_who_shares_no_address_with_the_owner_is_flagged_outside_a_spike() -> None:
    """The ``username`` rule (10 failures from 3 IPs): the owner's forgotten password (4
    failures, then a success) does not count, and does not shield the attackers' 10."""
    stream = Stream()
    for k in range(4):
        stream.login(10 + k, HOME, False)
    stream.login(20, HOME, True)
    for k in range(9):
        stream.login(30 + k, ATTACKERS[k % 3], False)
    assert not stream.det.spike_active and stream.on_owner() == [], "9 counted failures, 13 in all"
    stream.login(40, ATTACKERS[0], False)
    [hit] = stream.on_owner()
    assert hit.evidence["rule"] == "username" and hit.evidence["distinct_ips"] == 3
    assert hit.evidence["failures_from_recognized_sources"] == 4


def test_a_success_while_the_account_is_throttled_still_recognizes_its_address() -> None:
    stream = Stream(ban_ttl_s=60, aggregate_window_s=600)
    stream.spike(0, 5)
    stream.login(10, ATTACKERS[0], False)
    stream.login(11, ATTACKERS[1], False)
    assert len(stream.on_owner()) == 1  # quiet (throttled) for 60 s from here
    stream.login(30, HOME, True)  # the owner logs in meanwhile (the gateway lets it through)
    stream.login(100, HOME, False)  # after the quiet period: the owner's typo
    stream.login(110, ATTACKERS[2], False)  # and one attacker address: one counted failure
    assert len(stream.on_owner()) == 1
