"""``gatewatch replay`` over a stopped stack's store: the detectors re-run in shadow with
the events' own clock, compared with the live decisions; ``--set`` tunes a threshold."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gatewatch.cli_replay import parse_when, with_overrides
from gatewatch.settings import load_settings

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def test_parse_when() -> None:
    assert parse_when("now", NOW) == NOW
    assert parse_when("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_when("2026-10-31T08:00:00", NOW) == datetime(2026, 10, 31, 8, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        parse_when("yesterday", NOW)


def test_with_overrides() -> None:
    s = with_overrides(load_settings(), ["credential_stuffing.min_failures=20", "bola.shadow=true"])
    assert s.credential_stuffing.min_failures == 20 and s.bola.shadow is True
    for bad in ["credential_stuffing.nope=1", "nothing", "listen_port.x=1", "credential_stuffing.min_failures=x"]:
        with pytest.raises(ValueError):
            with_overrides(load_settings(), [bad])


def run_replay(stack: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")} | {"COLUMNS": "200"}
    out = subprocess.run([GATEWATCH, "replay", "--since", "1h", "--stack", str(stack), "--no-geo", *args],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_replay_reproduces_the_live_ban(stopped_stack: Path) -> None:
    text = run_replay(stopped_stack)
    assert "replayed 10 requests" in text and "1 decisions (live: 1)" in text
    assert "decided by both (1)" in text and "203.0.113.66" in text
    assert "only the replay would decide (0)" in text and "only decided live (0)" in text


def test_a_stricter_threshold_would_not_have_banned(stopped_stack: Path) -> None:
    text = run_replay(stopped_stack, "--set", "credential_stuffing.min_failures=11")
    assert "0 decisions (live: 1)" in text and "only decided live (1)" in text and "not reproduced" in text
