"""``gatewatch allowlist`` against a real Tansu broker and a real gateway process, and
``gatewatch explain`` on a stopped stack whose store holds an allow entry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from kafka import KafkaProducer

from gatewatch.decision_feed import allow_entry, read_decisions
from gatewatch.events import Detection
from gatewatch.settings import GatewatchSettings, load_settings
from storage.client import get_client
from storage.writer import write_decisions, write_detections
from test_cli_decisions import running_gateway, status_from, wait_status

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")


def cli(settings: GatewatchSettings, noun: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GATEWATCH, noun, *args], env=os.environ | settings.to_env() | {"COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60)


def added_id(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stdout + out.stderr
    return re.search(r"added ([0-9a-f]{32}):", out.stdout).group(1)


def test_allowlist_add_list_delete_through_the_gateway(settings: GatewatchSettings, sample_api: str,
                                                       tmp_path: Path) -> None:
    with running_gateway(settings, sample_api, tmp_path) as (s, url):
        ban_id = added_id(cli(s, "decisions", "add", "--scope", "ip", "--value", "127.0.0.71", "--reason", "abuse"))
        assert wait_status("127.0.0.71", url, 403).status_code == 403

        # An unsigned allow entry on the topic is ignored by the gateway and by `list`.
        forged = allow_entry("ip", "127.0.0.71", 600, "forged")
        producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers)
        producer.send(s.topic_decisions, key=forged.key().encode(), value=forged.to_json()).get(10)
        producer.close()

        added = cli(s, "allowlist", "add", "--scope", "ip", "--value", "127.0.0.71", "--reason", "partner monitor")
        entry_id = added_id(added)
        assert "allow:ip:127.0.0.71 until" in added.stdout
        assert wait_status("127.0.0.71", url, 200).status_code == 200     # the allow entry wins
        assert status_from("127.0.0.72", url).status_code == 200

        net = cli(s, "allowlist", "add", "--scope", "prefix", "--value", "127.0.1.9/24", "--reason", "office",
                  "--ttl", "30d")
        net_id = added_id(net)
        assert "allow:prefix:127.0.1.0/24" in net.stdout                  # stored canonical

        listed = cli(s, "allowlist", "list")
        assert "2 active allow entries" in listed.stdout
        assert entry_id in listed.stdout and net_id in listed.stdout and "partner monitor" in listed.stdout
        assert ban_id not in listed.stdout
        assert "1 unsigned and 0 badly signed" in listed.stdout
        decisions = cli(s, "decisions", "list")
        assert ban_id in decisions.stdout and entry_id not in decisions.stdout   # both kept, listed apart
        log = read_decisions(s)
        assert [d.id for d in log.active()] == [ban_id]
        entry = log.by_id(entry_id, allow=True)
        assert entry is not None and 364 * 86400 < entry.ttl_s <= 365 * 86400   # default TTL
        assert log.by_id(entry_id) is None

        # Each noun deletes its own kind only.
        wrong = cli(s, "decisions", "delete", "--id", entry_id)
        assert wrong.returncode == 1 and f"no decision with id {entry_id}" in wrong.stdout
        deleted = cli(s, "allowlist", "delete", "--scope", "ip", "--value", "127.0.0.71")
        assert deleted.returncode == 0 and f"deleted allow:ip:127.0.0.71 (lifted {entry_id})" in deleted.stdout
        assert wait_status("127.0.0.71", url, 403).status_code == 403     # the ban applies again
        by_id = cli(s, "allowlist", "delete", "--id", net_id)
        assert by_id.returncode == 0 and "deleted allow:prefix:127.0.1.0/24" in by_id.stdout
        log = read_decisions(s)
        assert log.active(allow=True) == [] and [d.id for d in log.active()] == [ban_id]
        assert "0 active allow entries" in cli(s, "allowlist", "list").stdout


def test_invalid_allow_entries_are_refused(settings: GatewatchSettings) -> None:
    for args, message in ((("--scope", "username", "--value", "ab"), "scope must be one of"),
                          (("--scope", "ip", "--value", "not-an-ip"), "bad ip value"),
                          (("--scope", "country", "--value", "NZ", "--ttl", "4000d"), "longer than 3650d"),
                          (("--scope", "ip", "--value", "192.0.2.1", "--ttl", "soon"), "not a duration")):
        out = cli(settings, "allowlist", "add", *args, "--reason", "r")
        assert out.returncode == 2 and "invalid allow entry" in out.stdout and message in out.stdout, out.stdout
    action = cli(settings, "decisions", "add", "--scope", "ip", "--value", "192.0.2.1", "--reason", "r",
                 "--action", "allow")
    assert action.returncode == 2 and "gatewatch allowlist add" in action.stdout
    assert read_decisions(settings).messages == 0                          # nothing published


def test_explain_shows_allow_entries_and_allow_listed_detections(stopped_stack: Path) -> None:
    """The stopped stack's store (tests/gatewatch/conftest.py) holds a ban of 203.0.113.66;
    add an allow entry for it and a detection the policy let go."""
    chdb = json.loads((stopped_stack / "stack.json").read_text())["chdb_path"]
    client = get_client(load_settings(chdb_path=Path(chdb)))
    entry = allow_entry("ip", "203.0.113.66", 3600, "partner scanner")
    write_decisions(client, [entry])
    write_detections(client, [Detection(detection_id="det-2", ts=entry.created_at + timedelta(seconds=5),
                                        detector="credential_stuffing", scope="ip", value="203.0.113.66",
                                        summary="12 failed logins",
                                        evidence={"policy": "allow_listed", "allow_entry": entry.id})])
    client.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")} | {"COLUMNS": "200"}
    out = subprocess.run([GATEWATCH, "explain", "203.0.113.66", "--stack", str(stopped_stack)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"allow entry {entry.id}" in out.stdout and "allow ip 203.0.113.66" in out.stdout
    assert "allow-listed: no decision blocks or throttles it" in out.stdout
    assert "decision dec-1" in out.stdout and "ban ip 203.0.113.66" in out.stdout   # the ban is still shown
    assert f"no decision: the value is allow-listed (allow entry {entry.id})" in out.stdout
