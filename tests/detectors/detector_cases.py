"""Loading the data-driven detector cases in ``tests/detectors/cases/<case>/``.

A case is a folder with ``events.jsonl`` (one RequestEvent JSON per line, in
arrival order) and ``expected.json``::

    {"description": "...",
     "settings": {"ban_ttl_s": 100.0},          # optional CredentialStuffingSettings overrides
     "detections": [{"scope": "ip", "value": "203.0.113.7",
                     "trigger_event_id": "atk-10",  # the event whose processing fired
                     "evidence": {"failures": 10}}]}  # a subset of the detection's evidence

Adding a case needs no code: add a folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectors.credential_stuffing import CredentialStuffingDetector
from gatewatch.events import Detection, RequestEvent, parse_request_event
from gatewatch.settings import CredentialStuffingSettings

CASES_DIR = Path(__file__).parent / "cases"


@dataclass
class Case:
    name: str
    events: list[RequestEvent]
    expected: dict[str, Any]
    settings: CredentialStuffingSettings = field(default_factory=CredentialStuffingSettings)

    @property
    def fires(self) -> bool:
        return bool(self.expected["detections"])


def case_names() -> list[str]:
    return sorted(p.name for p in CASES_DIR.iterdir() if (p / "expected.json").exists())


def load_case(name: str) -> Case:
    folder = CASES_DIR / name
    events = [parse_request_event(line) for line in (folder / "events.jsonl").read_text().splitlines()
              if line.strip()]
    expected = json.loads((folder / "expected.json").read_text())
    settings = CredentialStuffingSettings(**expected.get("settings", {}))
    return Case(name, events, expected, settings)


def run_detector(detector: CredentialStuffingDetector,
                 events: list[RequestEvent]) -> list[tuple[str, Detection]]:
    """Feed ``events`` with ``now`` = each event's ts; return ``(trigger_event_id, detection)`` pairs."""
    out: list[tuple[str, Detection]] = []
    for event in events:
        for detection in detector.process(event, now=event.ts):
            out.append((event.event_id, detection))
    return out
