"""``gatewatch decisions`` against a real broker and a real gateway process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer

from gatewatch.cli_decisions import parse_duration
from gatewatch.commands import serve_command
from gatewatch.decision_feed import manual_decision, read_decisions
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings
from gatewatch.signing import DecisionSigner

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")


def cli(settings: GatewatchSettings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GATEWATCH, "decisions", *args], env=os.environ | settings.to_env() | {"COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60)


def status_from(ip: str, url: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=ip)) as client:
        return client.get(url)


def wait_status(ip: str, url: str, want: int, timeout_s: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        resp = status_from(ip, url)
        if resp.status_code == want or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


@contextmanager
def running_gateway(settings: GatewatchSettings, sample_api: str,
                    tmp_path: Path) -> Iterator[tuple[GatewatchSettings, str]]:
    """A real gateway process in front of ``sample_api``; yields its settings and /health URL."""
    add_key(tmp_path / "keys.toml", "key_x", owner="x")
    s = settings.model_copy(update={"upstream": sample_api, "listen_port": free_port(),
                                    "keys_file": tmp_path / "keys.toml"})
    gateway = subprocess.Popen(serve_command(s), env=os.environ | s.to_env())
    try:
        wait_for_port(s.listen_host, s.listen_port, timeout_s=20)
        yield s, f"http://{s.listen_host}:{s.listen_port}/health"
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=20)


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("15m", 900), ("4h", 14400), ("7d", 604800),
                                          ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10w", "-5m", "1h30m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_add_list_delete_enforced_by_the_gateway(settings: GatewatchSettings, sample_api: str,
                                                  tmp_path: Path) -> None:
    with running_gateway(settings, sample_api, tmp_path) as (s, url):
        assert status_from("127.0.0.77", url).status_code == 200

        # A malformed message on the topic is skipped by the gateway and by `list`; so are
        # a forged (unsigned) ban and one signed with another key, counted apart.
        producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers)
        signer = DecisionSigner.from_settings(s)
        producer.send(s.topic_decisions, key=b"ip:1.2.3.4", value=b"{not json",
                      headers=signer.headers(b"ip:1.2.3.4", b"{not json")).get(10)
        forged = manual_decision("ip", "127.0.0.79", 600, "forged")
        key, value = forged.key().encode(), forged.to_json()
        producer.send(s.topic_decisions, key=key, value=value).get(10)
        producer.send(s.topic_decisions, key=key, value=value,
                      headers=DecisionSigner("dev", b"guessed").headers(key, value)).get(10)
        producer.close()

        added = cli(s, "add", "--scope", "ip", "--value", "127.0.0.77", "--ttl", "10m", "--reason", "manual test")
        assert added.returncode == 0, added.stdout + added.stderr
        blocked = wait_status("127.0.0.77", url, 403)
        assert blocked.status_code == 403
        decision = read_decisions(s).active()[0]
        assert blocked.json()["decision_id"] == decision.id and decision.origin == "cli"
        assert status_from("127.0.0.78", url).status_code == 200  # another client is untouched
        assert status_from("127.0.0.79", url).status_code == 200  # the forged bans came first: ignored
        log = read_decisions(s)
        assert (log.malformed, log.unsigned, log.bad_signature) == (1, 1, 1)
        assert [d.id for d in log.active()] == [decision.id]

        listed = cli(s, "list")
        assert decision.id in listed.stdout and "manual test" in listed.stdout
        assert "1 malformed" in listed.stdout
        assert "1 unsigned and 1 badly signed" in listed.stdout

        deleted = cli(s, "delete", "--id", decision.id)
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        assert wait_status("127.0.0.77", url, 200).status_code == 200
        assert read_decisions(s).active() == []


def test_invalid_decision_is_refused(settings: GatewatchSettings) -> None:
    bad = cli(settings, "add", "--scope", "galaxy", "--value", "x", "--reason", "r")
    assert bad.returncode == 2 and "invalid decision" in bad.stdout
    assert read_decisions(settings).messages == 0
