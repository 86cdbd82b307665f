"""``gatewatch train`` over a real chDB store seeded with a day of principals' requests
(a stopped stack: the command opens the store directory itself).

The model it writes is loaded back with skops and checked: same features and
window, its training range, a fixed seed giving the same model twice, and
scores that put a scraping window above the threshold and another day of the
same principals below it. Too little history is refused with exit code 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sklearn

from detectors.behaviour_features import FEATURES, WINDOW_S, windows_of
from detectors.behaviour_model import BehaviourModel
from gatewatch.cli_train import ReadStats, stored_events
from gatewatch.model_file import load_model_file
from gatewatch.settings import load_settings
from gatewatch.store_reader import StoreReader
from storage.client import get_client
from storage.migrations import migrate
from storage.writer import write_requests
from tests.detectors.behaviour_history import SCRAPER, benign_history, scraper
from tests.gatewatch.stack_files import stopped_run_dir

GATEWATCH = str(Path(sys.executable).parent / "gatewatch")
NOW = datetime.now(timezone.utc)
#: A day of history ending at least an hour ago, on a window boundary.
START = datetime.fromtimestamp((NOW.timestamp() // WINDOW_S) * WINDOW_S, tz=timezone.utc) - timedelta(hours=25)
HISTORY = benign_history(seed=7, hours=24, start=START)


@pytest.fixture(scope="module")
def history_stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped stack's run directory whose store holds :data:`HISTORY` plus gateway answers
    and anonymous calls (which training must leave out)."""
    root = tmp_path_factory.mktemp("train")
    client = get_client(load_settings(chdb_path=root / "chdb"))
    try:
        migrate(client)
        noise = [e.model_copy(update={"event_id": f"gw-{i}", "answered_by": "rate_limit", "status": 429})
                 for i, e in enumerate(HISTORY[:500])]
        noise += [e.model_copy(update={"event_id": f"anon-{i}", "principal": "", "auth": "public"})
                  for i, e in enumerate(HISTORY[:500])]
        assert write_requests(client, HISTORY + noise).inserted == len(HISTORY) + len(noise)
    finally:
        client.close()
    return stopped_run_dir(root / "run", root / "chdb")


def train(stack: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWATCH_")} | {"COLUMNS": "250"}
    return subprocess.run([GATEWATCH, "train", "--stack", str(stack), *args], env=env, capture_output=True,
                          text=True, timeout=180)


def test_train_writes_a_model_that_separates_a_scraper(history_stack: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "a.skops", tmp_path / "b.skops"]
    for out in outs:
        done = train(history_stack, "--since", "26h", "--out", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
    text = " ".join(done.stdout.split())
    expected_windows = [w for w in windows_of(HISTORY) if w.requests >= 5]
    assert f"trained on {len(expected_windows)} windows of 12 principals ({len(HISTORY)} requests" in text
    assert "training windows would be flagged" in text and "malformed" not in text

    first, second = (BehaviourModel.from_document(load_model_file(p)) for p in outs)
    assert first.feature_names == FEATURES and first.window_s == WINDOW_S and first.seed == 0
    assert first.training["windows"] == len(expected_windows) and first.training["principals"] == 12
    # ``until`` is the end of the last whole window before the command ran ("now"): not
    # before this module's NOW (taken at collection, possibly minutes earlier in a full
    # run) less a window, and not after this check.
    assert first.training["since"] <= START.timestamp()
    assert NOW.timestamp() - WINDOW_S < first.training["until"] <= datetime.now(timezone.utc).timestamp()
    assert first.sklearn_version == sklearn.__version__

    day2 = START + timedelta(days=1)
    another_day = list(windows_of(benign_history(seed=7, hours=2, start=day2, traffic_seed=11)))
    attack = list(windows_of(scraper(day2)))
    assert [s.score for s in first.score(another_day + attack)] == \
        [s.score for s in second.score(another_day + attack)], "same history and seed, same model"
    threshold = load_settings().behaviour.threshold
    [scraped] = first.score(attack)
    assert scraped.window.principal == SCRAPER and scraped.score >= threshold
    assert "distinct_object_ids" in scraped.drivers and "error_share" in scraped.drivers
    assert all(s.score < threshold for s in first.score(another_day))


def test_too_little_history_is_refused(history_stack: Path, tmp_path: Path) -> None:
    done = train(history_stack, "--since", "40m", "--out", str(tmp_path / "m.skops"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "too little history" in done.stdout and "need at least 100 windows" in " ".join(done.stdout.split())
    assert not (tmp_path / "m.skops").exists()
    done = train(history_stack, "--since", "1m", "--out", str(tmp_path / "m.skops"))
    assert done.returncode == 2 and "no whole 300 s window" in done.stdout


def test_stored_events_pages_in_halves_without_loss(history_stack: Path) -> None:
    """A page that hits the row limit is read again in halves: every principal's upstream
    answer once, in event-time order, and nothing else."""
    info = json.loads((history_stack / "stack.json").read_text())
    reader = StoreReader(load_settings(chdb_path=Path(info["chdb_path"]), worker_web_port=info["worker_web_port"]))
    stats = ReadStats()
    try:
        got = list(stored_events(reader, START.timestamp(), START.timestamp() + 3 * 3600, stats, page_rows=700))
    finally:
        if reader._client is not None:
            reader._client.close()
    want = [e for e in HISTORY if e.ts < START + timedelta(hours=3)]
    assert [e.event_id for e in got] == [e.event_id for e in sorted(want, key=lambda e: (e.ts, e.event_id))]
    assert stats.rows == len(want) and stats.malformed == 0 and reader.via == "direct"
