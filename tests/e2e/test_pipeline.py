"""End to end on real processes: sample API, Tansu broker, Faust worker with chDB, mitmdump gateway.

Drives benign users and a credential-stuffing attacker through the gateway
(distinct loopback source addresses) and checks the product's promises:
the attacker is blocked shortly after crossing the detector's threshold,
benign users never are, and every answered request is stored exactly once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gatewatch.demo import make_keys
from gatewatch.launcher import Stack
from gatewatch.settings import load_settings
from gatewatch.traffic import ATTACKER_IP, TrafficLog, run_scenario
from gatewatch.worker_api import WorkerApi

USERS = 6
ATTACK_RATE_PER_S = 25.0
# "Shortly after the threshold": the detection loop is measured in ms (DESIGN.md);
# 25 extra attempts is one second of attack at ATTACK_RATE_PER_S — a bound on
# count, not a timing assertion (timings belong to bench/).
SLACK_ATTEMPTS = int(ATTACK_RATE_PER_S)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    run_dir: Path = tmp_path_factory.mktemp("e2e")
    keys = make_keys(run_dir / "keys.toml", USERS)
    settings = load_settings(keys_file=run_dir / "keys.toml", listen_port=0)
    stack = Stack(settings, run_dir, sample_api=True)
    stack.start()
    try:
        log = TrafficLog()
        asyncio.run(run_scenario(log, stack.gateway_url, keys, duration_s=15.0, attack_start_s=3.0,
                                 attack_rate_per_s=ATTACK_RATE_PER_S))
        api = WorkerApi(stack.worker_url)
        api.wait_for_requests(len(log.outcomes), timeout_s=30.0)
        counts = {r["event_id"]: int(r["count"]) for r in api.query("event_id_counts")}
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")} | {"COLUMNS": "200"}
        explained = subprocess.run([str(Path(sys.executable).parent / "gatewatch"), "explain", ATTACKER_IP,
                                    "--stack", str(run_dir)], env=env, capture_output=True, text=True,
                                   timeout=60)
        yield stack.settings, log, counts, explained
    finally:
        stack.stop()


@pytest.mark.e2e
def test_attacker_blocked_shortly_after_threshold(run) -> None:
    settings, log, _, _ = run
    attacker = [o for o in log.outcomes if o.actor == "attacker"]
    first_block = next(i for i, o in enumerate(attacker) if o.blocked)
    failures_before = sum(1 for o in attacker[:first_block] if o.status == 401)
    threshold = settings.credential_stuffing.min_failures
    assert threshold <= failures_before <= threshold + SLACK_ATTEMPTS
    assert all(o.blocked for o in attacker[first_block:]), "the ban must hold until its TTL"


@pytest.mark.e2e
def test_benign_users_never_blocked(run) -> None:
    _, log, _, _ = run
    benign = [o for o in log.outcomes if o.actor == "benign"]
    assert len(benign) > 50
    assert not [o for o in benign if o.blocked or o.status == 429]
    assert {o.status for o in benign} <= {200, 401, 404}


@pytest.mark.e2e
def test_every_answered_request_stored_exactly_once(run) -> None:
    _, log, counts, _ = run
    answered = [o.request_id for o in log.outcomes]
    assert None not in answered, "every gateway answer carries X-Request-Id"
    assert len(set(answered)) == len(answered)
    assert set(counts) == set(answered)
    assert {n for n in counts.values()} == {1}


@pytest.mark.e2e
def test_explain_answers_why_through_the_running_worker(run) -> None:
    _, log, _, explained = run
    assert explained.returncode == 0, explained.stdout + explained.stderr
    blocked = next(o for o in log.outcomes if o.actor == "attacker" and o.blocked)
    assert blocked.request_id  # the 403 carried the decision id in its body; explain names the ban
    text = explained.stdout
    assert f"ban ip {ATTACKER_IP}" in text and "credential_stuffing" in text
    assert "threshold crossed: failures" in text and "sample requests (10 of 10 stored)" in text
    assert "store read through the worker" in text
