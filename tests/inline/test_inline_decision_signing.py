"""Authenticated decisions (gatewatch/signing.py) in a real gateway process: a real
``python -m inline.serve`` (:func:`gatewatch.commands.serve_command`) in front of the
sample API, a real Tansu broker, real HTTP clients bound to 127.0.0.x, and the
gateway's own Prometheus admin port.

Write access to the decisions topic alone must not block anyone: an unsigned ban,
a ban signed with a guessed key and forged tombstones are counted
(``gatewatch_decisions_rejected_total{reason}``) and ignored; the same messages
signed with the configured key are enforced.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from kafka import KafkaProducer

from gatewatch import decision_feed
from gatewatch.commands import serve_command
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings
from gatewatch.signing import DecisionSigner

POLL_S = 10.0   # upper bound of every "wait until" loop; tests never assert on timing
GUESSED = DecisionSigner("dev", b"a-guessed-key")   # the right key id, the wrong secret


@contextmanager
def gateway(settings: GatewatchSettings, sample_api: str, **overrides) -> Iterator[GatewatchSettings]:
    s = settings.model_copy(update={"upstream": sample_api, "listen_port": free_port(),
                                    "admin_port": free_port(), **overrides})
    add_key(s.keys_file, "key_x", owner="x")   # the gateway needs a keys file; /health is public
    proc = subprocess.Popen(serve_command(s), env=os.environ | s.to_env())
    try:
        try:
            wait_for_port(s.listen_host, s.listen_port, timeout_s=20)
        except TimeoutError:
            raise AssertionError(f"the gateway did not start (rc={proc.poll()})") from None
        wait_for_port(s.admin_host, s.admin_port, timeout_s=20)
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0


def produce(s: GatewatchSettings, key: bytes, value: bytes | None,
            headers: list[tuple[str, bytes]] | None = None) -> None:
    """One raw message on the decisions topic, as anyone with write access could send it."""
    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers)
    try:
        producer.send(s.topic_decisions, key=key, value=value, headers=headers or []).get(10)
    finally:
        producer.close()


def status(s: GatewatchSettings, ip: str) -> int:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=5) as client:
        return client.get(f"http://{s.listen_host}:{s.listen_port}/health").status_code


def metrics(s: GatewatchSettings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{s.admin_host}:{s.admin_port}/metrics", timeout=5).text
    return {(m.name, tuple(sorted(m.labels.items()))): m.value
            for family in text_string_to_metric_families(text) for m in family.samples}


def rejected(s: GatewatchSettings) -> dict[str, float]:
    """``gatewatch_decisions_rejected_total`` by reason."""
    return {dict(labels)["reason"]: value for (name, labels), value in metrics(s).items()
            if name == "gatewatch_decisions_rejected_total"}


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + POLL_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def delivered(s: GatewatchSettings) -> float:
    """Decision messages whose delivery delay the gateway measured (histogram count)."""
    return metrics(s)[("gatewatch_decision_delivery_seconds_count", ())]


def test_forged_decisions_and_tombstones_are_counted_and_ignored(settings: GatewatchSettings,
                                                                  sample_api: str) -> None:
    """Forged messages are counted and ignored; only applied ones have their delivery delay
    (publication -> applied) measured."""
    victim = "127.0.0.51"
    with gateway(settings, sample_api) as s:
        assert status(s, victim) == 200
        assert delivered(s) == 0
        ban = decision_feed.manual_decision("ip", victim, 600, "forged")
        key, value = ban.key().encode(), ban.to_json()

        produce(s, key, value)                                   # unsigned
        produce(s, key, value, GUESSED.headers(key, value))      # signed with a guessed key
        wait_until(lambda: rejected(s).get("unsigned", 0) + rejected(s).get("bad_signature", 0) == 2,
                   "two rejected decision messages")
        assert rejected(s) == {"unsigned": 1, "bad_signature": 1, "malformed": 0}
        assert status(s, victim) == 200                          # not blocked
        assert metrics(s)[("gatewatch_decisions_active", ())] == 0
        assert delivered(s) == 0

        decision_feed.publish(s, ban)                            # the same ban, properly signed
        wait_until(lambda: status(s, victim) == 403, "the signed ban to block")
        assert metrics(s)[("gatewatch_decisions_active", ())] == 1
        assert delivered(s) == 1
        found = metrics(s)
        assert found[("gatewatch_decision_delivery_seconds_bucket", (("le", "+Inf"),))] == 1
        assert 0 <= found[("gatewatch_decision_delivery_seconds_sum", ())] < 30

        produce(s, key, None)                                    # a forged unsigned tombstone
        produce(s, key, None, GUESSED.headers(key, None))        # and one signed with a guessed key
        wait_until(lambda: sum(rejected(s).values()) == 4, "the forged tombstones to be rejected")
        assert rejected(s) == {"unsigned": 2, "bad_signature": 2, "malformed": 0}
        assert status(s, victim) == 403                          # still blocked
        assert delivered(s) == 1

        decision_feed.delete(s, "ip", victim)                    # a signed tombstone lifts it
        wait_until(lambda: status(s, victim) == 200, "the signed tombstone to lift the ban")
        assert metrics(s)[("gatewatch_decisions_active", ())] == 0
        assert sum(rejected(s).values()) == 4
        assert delivered(s) == 3   # the ban, then the lift's deletion record and tombstone


def test_migration_mode_accepts_unsigned_but_not_bad_signatures(settings: GatewatchSettings,
                                                                sample_api: str) -> None:
    legacy, forged = "127.0.0.52", "127.0.0.53"
    with gateway(settings, sample_api, decision_signing_required=False) as s:
        for ip, headers in ((forged, GUESSED.headers), (legacy, None)):
            ban = decision_feed.manual_decision("ip", ip, 600, "test")
            key, value = ban.key().encode(), ban.to_json()
            produce(s, key, value, headers(key, value) if headers else None)
        wait_until(lambda: status(s, legacy) == 403, "the unsigned ban to block")   # produced last
        assert status(s, forged) == 200
        assert rejected(s) == {"unsigned": 0, "bad_signature": 1, "malformed": 0}
