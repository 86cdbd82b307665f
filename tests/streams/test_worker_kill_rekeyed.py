"""A worker killed with SIGKILL half-way through an attack that a per-principal or
re-keyed detector judges, then restarted, on a real Tansu broker: a BOLA enumeration
(on the request topic, keyed by principal) and failed logins for one username from
several IPs (the logins topic). The detection fires at the same request as without
the kill — the pure detector run over the same events says which — with one
detection id and one decision (streams/requests_consumer.py, streams/rekeyed_consumer.py,
streams/checkpoints.py).

The stuffing IPs share one request partition: the logins of several partitions
reach the logins topic interleaved batch by batch (in a run without a kill too),
so only then is "the same login" one login.

The last test kills the worker after it re-keyed the failed logins but committed
nothing: the restarted worker re-keys them a second time, and they must not count
twice (streams/resends.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from detectors.bola import BolaDetector
from detectors.credential_stuffing import CredentialStuffingDetector
from gatewatch.events import Detection, RequestEvent, new_id, parse_decision, parse_detection
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from streams.rekey import partition_for, unpack_events
from worker_harness import Worker, kill, read_topic, send_requests, wait_for, wait_requests_committed

ENUMERATOR, ENUMERATOR_IP = "key-enum", "203.0.113.70"
VICTIM = "h-victim"
#: Four client IPs of one request partition (of 4, the tests' settings).
STUFFERS = [ip for ip in (f"198.51.100.{i}" for i in range(1, 255))
            if partition_for(ip.encode(), 4) == partition_for(b"198.51.100.1", 4)][:4]
AGGREGATE_RULES = ("prefix", "asn", "username", "global")


@pytest.fixture
def worker_settings(settings: GatewatchSettings) -> GatewatchSettings:
    return settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.1,
                                       "commit_interval_s": 0.2})


def _enumeration(t0: datetime, n: int) -> list[RequestEvent]:
    """A principal asking for ``n`` foreign order ids in a row, one a second, all refused."""
    return [RequestEvent(event_id=new_id(), ts=t0 + timedelta(seconds=i), client_ip=ENUMERATOR_IP,
                         method="GET", host="api.example", path=f"/orders/{100 + i}", route="/orders/{id}",
                         status=403, principal=ENUMERATOR, auth="ok") for i in range(n)]


def _stuffing(t0: datetime, n: int) -> list[RequestEvent]:
    """``n`` failed logins for one username, one a second, from four IPs in turn (one
    username per IP, so no per-IP rule fires)."""
    return [RequestEvent(event_id=new_id(), ts=t0 + timedelta(seconds=i), client_ip=STUFFERS[i % len(STUFFERS)],
                         method="POST", host="api.example", path="/login", route="/login", status=401,
                         login="failure", username_hash=VICTIM) for i in range(n)]


def _without_a_kill(detector: BolaDetector | CredentialStuffingDetector, events: list[RequestEvent]) -> Detection:
    """The one detection the pure detector makes over ``events`` in order."""
    [found] = [d for e in events for d in detector.process(e, now=e.ts)]
    return found


def _findings(settings: GatewatchSettings, key: str) -> tuple[list[Detection], list]:
    detections = [parse_detection(v) for k, v in read_topic(settings, settings.topic_detections)
                  if k == key.encode()]
    decisions = [parse_decision(v) for k, v in read_topic(settings, settings.topic_decisions)
                 if k == key.encode()]
    return detections, decisions


def _wait_rekeyed_committed(worker: Worker, kind: str, topic: str) -> None:
    """Return once the worker's ``kind`` consumer has committed every message on ``topic`` now."""
    n = len(read_topic(worker.settings, topic))
    wait_for(lambda: worker.health()["rekeyed"][kind]["committed"] >= n or None, 30,
             f"{n} {kind} messages committed")


def _kill_mid_attack(s: GatewatchSettings, tmp_path: Path, attack: list[RequestEvent], before: int,
                     kind: str, topic: str | None, key: str) -> tuple[list[Detection], list, dict]:
    """Send ``attack[:before]`` and wait until the request consumer and the ``kind`` consumer
    of re-keyed ``topic`` (none for ``kind`` "requests") committed it; send two more and
    SIGKILL at once (they may or may not be handled, re-keyed or committed); restart and
    send the rest. Returns the findings for ``key`` and the restarted worker's counters."""
    worker = Worker(s, tmp_path)
    worker.start()
    try:
        send_requests(s, attack[:before])
        wait_requests_committed(worker, before)
        if topic is not None:
            _wait_rekeyed_committed(worker, kind, topic)
        send_requests(s, attack[before:before + 2])
        kill(worker)
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()
    assert _findings(s, key) == ([], []), "no detection before the threshold"

    restarted = Worker(s, tmp_path)
    restarted.start()
    try:
        # The partitions were replayed into the detectors (their windows rebuilt).
        wait_for(lambda: restarted.health()["counters"].get(f"warmed_{kind}", 0) or None, 30,
                 f"the {kind} replay")
        send_requests(s, attack[before + 2:])
        detections, decisions = wait_for(lambda: (f := _findings(s, key))[1] and f, 30,
                                         "the decision after the restart")
        counters = restarted.health()["counters"]
    finally:
        assert restarted.stop() == 0, restarted.log_tail()
    return detections, decisions, counters


def _assert_once_as_without_a_kill(expected: Detection, detections: list[Detection], decisions: list) -> None:
    assert {d.detection_id for d in detections} == {expected.detection_id}
    [found] = detections
    assert found.ts == expected.ts
    assert {k: v for k, v in found.evidence.items() if k != "policy"} == expected.evidence
    [decision] = decisions
    assert decision.detection_id == expected.detection_id


def test_bola_enumeration_across_a_kill_fires_at_the_same_request(worker_settings: GatewatchSettings,
                                                                   tmp_path: Path) -> None:
    s = worker_settings
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    attack = _enumeration(t0, s.bola.min_distinct_ids + 5)
    expected = _without_a_kill(BolaDetector.from_settings(s.bola), attack)
    assert expected.ts == attack[s.bola.min_distinct_ids - 1].ts
    # 12 of the 20 ids before the kill: without the replay, the restarted worker would need
    # 20 more and fire at none of the 25.
    detections, decisions, counters = _kill_mid_attack(
        s, tmp_path, attack, 12, "requests", None, f"principal:{ENUMERATOR}")
    _assert_once_as_without_a_kill(expected, detections, decisions)
    assert decisions[0].action == "ban" and counters.get("decisions_emitted") == 1
    assert "detector_errors" not in counters


def test_username_failures_from_several_ips_across_a_kill_fire_at_the_same_login(
        worker_settings: GatewatchSettings, tmp_path: Path) -> None:
    s = worker_settings
    cs = s.credential_stuffing
    assert s.requests_partitions == 4 and len(STUFFERS) == 4
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    attack = _stuffing(t0, cs.username_min_failures + 4)
    expected = _without_a_kill(CredentialStuffingDetector.from_settings(cs, rules=AGGREGATE_RULES), attack)
    assert expected.evidence["rule"] == "username" and expected.ts == attack[cs.username_min_failures - 1].ts
    detections, decisions, counters = _kill_mid_attack(
        s, tmp_path, attack, 6, "logins", s.topic_logins, f"username:{VICTIM}")
    _assert_once_as_without_a_kill(expected, detections, decisions)
    assert decisions[0].action == "challenge" and counters.get("decisions_emitted") == 1
    assert "detector_errors" not in counters


def test_logins_re_keyed_twice_around_a_kill_count_once(worker_settings: GatewatchSettings,
                                                         tmp_path: Path) -> None:
    # Nothing committed before the kill (a long commit interval): the restarted worker reads
    # the request topic from its start and re-keys the first logins a second time, after the
    # copies the killed worker sent. Counted twice, they would cross the threshold early.
    s = worker_settings.model_copy(update={"commit_interval_s": 120.0})
    cs = s.credential_stuffing
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    attack = _stuffing(t0, cs.username_min_failures + 4)
    expected = _without_a_kill(CredentialStuffingDetector.from_settings(cs, rules=AGGREGATE_RULES), attack)
    before = cs.username_min_failures - 2
    key = f"username:{VICTIM}"

    def rekeyed_logins() -> int:
        return sum(len(unpack_events(v).items) for _, v in read_topic(s, s.topic_logins))

    worker = Worker(s, tmp_path)
    worker.start()
    try:
        send_requests(s, attack[:before])
        wait_for(lambda: rekeyed_logins() == before and worker.health()["counters"].get("events_logins") == before,
                 30, "the logins re-keyed and read")
        assert worker.health()["counters"].get("commits", 0) == 0
        kill(worker)
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()

    restarted = Worker(s, tmp_path)
    restarted.start()
    try:
        resent = wait_for(lambda: restarted.health()["counters"].get("resent_logins"), 30, "the re-sent logins")
        assert resent == before and rekeyed_logins() == 2 * before
        send_requests(s, attack[before:])
        detections, decisions = wait_for(lambda: (f := _findings(s, key))[1] and f, 30, "the decision")
    finally:
        assert restarted.stop() == 0, restarted.log_tail()
    _assert_once_as_without_a_kill(expected, detections, decisions)
