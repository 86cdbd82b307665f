"""``gatewatch explain`` on a stopped stack: it reads the chDB store directly (no worker
runs, the broker is gone) and answers why an address was blocked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gatewatch.cli_explain import thresholds_crossed

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")


def test_thresholds_crossed_reads_evidence() -> None:
    evidence = {"failures": 12, "distinct_usernames": 7, "thresholds": {"min_failures": 10, "min_usernames": 5,
                                                                        "min_unseen": 3}}
    assert thresholds_crossed(evidence) == ["failures 12 ≥ 10", "usernames 7 ≥ 5"]


@pytest.mark.parametrize("target", ["203.0.113.66", "dec-1", "det-1"])
def test_explain_reads_the_store_directly(stopped_stack: Path, target: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")} | {"COLUMNS": "200"}
    out = subprocess.run([GATEWATCH, "explain", target, "--stack", str(stopped_stack)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "decision dec-1" in text and "ban ip 203.0.113.66" in text
    assert "threshold crossed: failures 10 ≥ 10" in text and "usernames 10 ≥ 5" in text
    assert "sample requests (10 of 10 stored)" in text and text.count("/login") >= 10
    assert "store read directly" in text


def test_explain_unknown_target(stopped_stack: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")}
    out = subprocess.run([GATEWATCH, "explain", "198.51.100.1", "--stack", str(stopped_stack)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "nothing known" in out.stdout
