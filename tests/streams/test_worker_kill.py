"""A worker killed with SIGKILL in the middle of an attack, then restarted, on a real
Tansu broker: nothing lost, nothing stored twice (as queries see it), and the
detection fires at the same threshold with one decision (streams/checkpoints.py,
streams/requests_consumer.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch.events import RequestEvent, new_id, parse_decision, parse_detection
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings
from worker_harness import Worker, kill, read_topic, send_requests, wait_for, wait_requests_committed

ATTACKER = "203.0.113.9"
BENIGN_IPS = ["198.51.100.30", "198.51.100.31", "198.51.100.32"]


@pytest.fixture
def worker_settings(settings: GatewatchSettings) -> GatewatchSettings:
    return settings.model_copy(update={"worker_web_port": free_port(), "sink_batch_within_s": 0.1,
                                       "commit_interval_s": 0.2})


def _login(ts: datetime, ip: str, outcome: str, user: str) -> RequestEvent:
    return RequestEvent(event_id=new_id(), ts=ts, client_ip=ip, method="POST", host="api.example",
                        path="/login", route="/login", status=200 if outcome == "success" else 401,
                        login=outcome, username_hash=f"h-{user}")


def _attacker_findings(settings: GatewatchSettings) -> tuple[list, list]:
    detections = [parse_detection(v) for k, v in read_topic(settings, settings.topic_detections)
                  if k == f"ip:{ATTACKER}".encode()]
    decisions = [parse_decision(v) for k, v in read_topic(settings, settings.topic_decisions)
                 if k == f"ip:{ATTACKER}".encode()]
    return detections, decisions


def test_sigkill_mid_attack_restart_detects_at_the_threshold_once(worker_settings: GatewatchSettings,
                                                                   tmp_path: Path) -> None:
    s = worker_settings
    threshold = s.credential_stuffing.min_failures
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    attack = [_login(t0 + timedelta(seconds=i), ATTACKER, "failure", f"victim{i}") for i in range(threshold + 4)]
    benign = [_login(t0 + timedelta(seconds=i), BENIGN_IPS[i % 3], "success", f"user{i}") for i in range(9)]
    before = threshold - 3   # failures the first worker handles and commits

    worker = Worker(s, tmp_path)
    worker.start()
    try:
        send_requests(s, attack[:before] + benign[:6])
        wait_requests_committed(worker, before + 6)
        # Two more failures, then SIGKILL at once: they may or may not be handled or committed.
        send_requests(s, attack[before:before + 2])
        kill(worker)
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
    assert _attacker_findings(s) == ([], []), "no detection before the threshold"

    restarted = Worker(s, tmp_path)
    restarted.start()
    try:
        # Windows rebuilt: the replay runs once the request consumer has its partitions, which
        # can be just after the worker reports ready.
        wait_for(lambda: restarted.health()["counters"].get("warmed_requests", 0) >= before or None, 30,
                 "the per-IP windows replayed")
        send_requests(s, attack[before + 2:] + benign[6:])
        detections, decisions = wait_for(lambda: _attacker_findings(s) if _attacker_findings(s)[1] else None,
                                         30, "the decision after the restart")
        everything = {e.event_id for e in attack + benign}
        wait_for(lambda: set(dict(restarted.query("event_id_counts")["rows"])) >= everything or None,
                 30, "every event stored")
        # Queries see every event once (FINAL), though the killed worker's tail came twice.
        stored = restarted.query("requests_by_ids", ids=",".join(sorted(everything)))
        assert len(stored["rows"]) == len(everything)
    finally:
        assert restarted.stop() == 0, restarted.log_tail()

    # One detection, at the threshold's event, and one decision — as without the kill.
    assert len({d.detection_id for d in detections}) == 1
    detection = detections[0]
    assert detection.evidence["failures"] == threshold
    assert detection.ts == attack[threshold - 1].ts
    assert len({d.id for d in decisions}) == 1 and decisions[0].detection_id == detection.detection_id


def test_restart_after_the_decision_does_not_decide_again(worker_settings: GatewatchSettings,
                                                          tmp_path: Path) -> None:
    # No commit before the kill (a long commit interval): the restarted worker handles the
    # whole attack again and its detector fires again, with the same detection id. The
    # policy, seeded from the decisions topic, judges it a duplicate: no second decision.
    s = worker_settings.model_copy(update={"commit_interval_s": 120.0})
    threshold = s.credential_stuffing.min_failures
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    attack = [_login(t0 + timedelta(seconds=i), ATTACKER, "failure", f"victim{i}") for i in range(threshold + 2)]
    worker = Worker(s, tmp_path)
    worker.start()
    try:
        send_requests(s, attack)
        wait_for(lambda: _attacker_findings(s)[1] or None, 30, "the first decision")
        assert worker.health()["counters"].get("commits", 0) == 0
        kill(worker)
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()

    restarted = Worker(s, tmp_path)
    restarted.start()
    try:
        assert restarted.health()["counters"].get("policy_seeded_decisions") == 1
        counters = wait_for(lambda: (c := restarted.health()["counters"]).get("decisions_skipped_duplicate")
                            and c, 30, "the repeated detection judged a duplicate")
        assert counters.get("decisions_emitted", 0) == 0
    finally:
        assert restarted.stop() == 0, restarted.log_tail()
    detections, decisions = _attacker_findings(s)
    assert len({d.detection_id for d in detections}) == 1   # the same detection, sent twice
    assert len(decisions) == 1                              # one decision message
