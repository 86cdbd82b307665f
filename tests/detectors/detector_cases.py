"""The detectors under test and their data-driven cases in ``tests/detectors/cases/<case>/``.

A case is a folder with ``events.jsonl`` (one RequestEvent JSON per line, in
arrival order) and ``expected.json``::

    {"description": "...",
     "detector": "bola",                      # a key of DETECTORS (default credential_stuffing)
     "settings": {"ban_ttl_s": 100.0},        # optional overrides of that detector's settings
     "rules": ["ip"],                         # optional, credential stuffing: rules that emit
     "detections": [                          # optional: exactly these detections, in order
         {"scope": "ip", "value": "203.0.113.7",
          "trigger_event_id": "atk-10",       # optional: the event whose processing fired
          "evidence": {"failures": 10}}],     # optional: a subset of the detection's evidence
     "must_detect": [{"scope": "username", "value": "ab12..."}],   # optional, any order
     "must_not_detect": [{"scope": "ip"}, {"scope": "username", "value": "cd34..."}],
     "decisions": [{"scope": "principal", "value": "key-7", "action": "ban"}]}  # optional,
                                              # exactly these decisions after the policy (any order)

A case *fires* when it lists detections or ``must_detect``. Adding a case needs
no code: add a folder (``make_cases.py`` generates most of them from a seed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from behaviour_history import trained_model
from detectors.behaviour import BehaviourDetector
from detectors.bola import BolaDetector
from detectors.credential_stuffing import CredentialStuffingDetector
from detectors.decision_policy import DecisionPolicy, PolicyResult
from detectors.latency import LatencyRegressionDetector
from gatewatch.events import Detection, RequestEvent, parse_request_event
from gatewatch.settings import BehaviourSettings, BolaSettings, CredentialStuffingSettings, LatencySettings

CASES_DIR = Path(__file__).parent / "cases"


@dataclass(frozen=True)
class DetectorSpec:
    """How to build one detector from its settings model."""

    settings_model: type[BaseModel]
    build: Callable[[Any, dict[str, Any]], Any]  # (settings, case options) -> detector


DETECTORS: dict[str, DetectorSpec] = {
    "credential_stuffing": DetectorSpec(
        CredentialStuffingSettings,
        lambda s, opts: CredentialStuffingDetector.from_settings(
            s, rules=opts.get("rules", ("ip", "prefix", "asn", "username", "global")))),
    "bola": DetectorSpec(BolaSettings, lambda s, opts: BolaDetector.from_settings(s)),
    "latency_regression": DetectorSpec(LatencySettings,
                                       lambda s, opts: LatencyRegressionDetector.from_settings(s)),
    # The model is loaded by the caller: here the one trained on behaviour_history's training day.
    "behaviour": DetectorSpec(BehaviourSettings,
                              lambda s, opts: BehaviourDetector.from_settings(trained_model(), s)),
}


@dataclass
class Case:
    name: str
    detector: str
    events: list[RequestEvent]
    expected: dict[str, Any]
    settings: Any

    @property
    def fires(self) -> bool:
        return bool(self.expected.get("detections") or self.expected.get("must_detect"))

    def new_detector(self) -> Any:
        return DETECTORS[self.detector].build(self.settings, self.expected)

    def new_policy(self) -> DecisionPolicy:
        return DecisionPolicy({self.detector: self.settings})


def case_names() -> list[str]:
    return sorted(p.name for p in CASES_DIR.iterdir() if (p / "expected.json").exists())


def load_case(name: str) -> Case:
    folder = CASES_DIR / name
    events = [parse_request_event(line) for line in (folder / "events.jsonl").read_text().splitlines()
              if line.strip()]
    expected = json.loads((folder / "expected.json").read_text())
    detector = expected.get("detector", "credential_stuffing")
    settings = DETECTORS[detector].settings_model(**expected.get("settings", {}))
    return Case(name, detector, events, expected, settings)


def run_detector(detector: Any, events: list[RequestEvent]) -> list[tuple[str, Detection]]:
    """Feed ``events`` with ``now`` = each event's ts; return ``(trigger_event_id, detection)`` pairs."""
    out: list[tuple[str, Detection]] = []
    for event in events:
        for detection in detector.process(event, now=event.ts):
            out.append((event.event_id, detection))
    return out


def run_policy(policy: DecisionPolicy, results: list[tuple[str, Detection]]) -> list[PolicyResult]:
    return [policy.decide(detection) for _, detection in results]


def is_subset(want: Any, got: Any) -> bool:
    """``want`` is contained in ``got``: dicts key by key, lists item by item (same length),
    recursively; other values equal."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and is_subset(v, got[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(map(is_subset, want, got))
    return want == got


def matches(spec: dict[str, Any], detection: Detection) -> bool:
    """A ``must_detect`` / ``must_not_detect`` entry matches ``detection``."""
    return detection.scope == spec["scope"] and ("value" not in spec or detection.value == spec["value"])
