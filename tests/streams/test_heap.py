"""The worker's garbage-collector settings (streams/heap.py), in a fresh interpreter:
freezing changes the process for good, so not in the test process."""

from __future__ import annotations

import json
import subprocess
import sys

from streams.heap import GEN0_THRESHOLD

SCRIPT = """
import gc, json
import streams.app  # what a worker has imported by the time it has started
from streams.heap import tune_collector
before = gc.get_threshold()
frozen = tune_collector()
young = [[i] for i in range(1000)]   # made after the freeze: still collected
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen,
                  "count": gc.get_freeze_count(),
                  "young_tracked": all(gc.is_tracked(x) for x in young),
                  "young_in_gen0": len(gc.get_objects(0)) >= 1000}))
"""


def test_start_up_heap_frozen_and_youngest_generation_larger(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["before"][0] == 700  # CPython's default, replaced
    assert result["after"] == [GEN0_THRESHOLD, *result["before"][1:]]
    # Importing the app alone (Faust, aiokafka, pydantic, chDB client) leaves ~100k+ objects.
    assert result["frozen"] == result["count"] > 50_000
    assert result["young_tracked"] and result["young_in_gen0"]
