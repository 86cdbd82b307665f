"""The latency detector's regression and recovery map to one Alertmanager alert, which
the recovery resolves (the contract between detectors/latency.py and streams/alertmanager.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from streams.alertmanager import detection_alert

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detectors"))
from detector_cases import load_case, run_detector  # noqa: E402


def test_a_recovery_resolves_its_regression_alert() -> None:
    case = load_case("latency_regression_and_recovery")
    regression, recovery = (d for _, d in run_detector(case.new_detector(), case.events))
    assert (regression.evidence["kind"], recovery.evidence["kind"]) == ("regression", "recovery")
    raised, resolved = detection_alert(regression, 600), detection_alert(recovery, 600)
    assert raised["labels"] == resolved["labels"]  # the same alert for Alertmanager
    assert resolved["endsAt"] == resolved["startsAt"] < raised["endsAt"]
