"""``gatewatch train [--since 7d] [--until now] [--out PATH]``: fit the behaviour model on stored requests.

Reads the upstream answers to principals (named query
``principal_requests_between``) through the running worker or the chDB
directory of a stopped stack (:class:`gatewatch.store_reader.StoreReader`),
hour by hour; computes the 300 s window features with the detector's own
code (:func:`detectors.behaviour_features.windows_of`); fits the Isolation
Forest with a fixed seed (:func:`detectors.behaviour_model.fit_model`); and
writes the model file with skops (:mod:`gatewatch.model_file`) to ``--out``
or ``settings.behaviour.model_path``, which the worker loads at start-up.

The range is cut to whole windows. It refuses (exit 1) when the store holds
too little history: fewer than ``--min-windows`` windows of at least 5
requests, or fewer than 3 principals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from gatewatch.cli_replay import parse_when
from gatewatch.events import MalformedRecord, RequestEvent, parse_request_event
from gatewatch.stack_info import stack_settings
from gatewatch.store_reader import StoreReader, StoreUnavailable

console = Console()
#: Requests read per query at most; a page that hits it is read again in halves.
PAGE_ROWS = 200_000
#: Length of the first page tried, s.
PAGE_S = 3600.0


class ReadStats:
    """Rows read and rows skipped as malformed."""

    def __init__(self) -> None:
        self.rows = 0
        self.malformed = 0


def stored_events(reader: StoreReader, start: float, end: float, stats: ReadStats,
                  page_s: float = PAGE_S, page_rows: int = PAGE_ROWS) -> Iterator[RequestEvent]:
    """Upstream answers to principals with ``start <= ts < end`` (epoch s), in event-time order,
    read page by page (a page holding ``page_rows`` rows is read again in halves). Malformed
    rows are counted in ``stats`` and skipped. Raises :class:`StoreUnavailable`."""
    t = start
    while t < end:
        u = min(t + page_s, end)
        rows = reader.query("principal_requests_between", since=_iso(t), until=_iso(u), limit=page_rows)
        if len(rows) >= page_rows and u - t > 1.0:
            page_s = (u - t) / 2
            continue
        for row in rows:
            stats.rows += 1
            try:
                yield parse_request_event(row)
            except MalformedRecord:
                stats.malformed += 1
        t = u


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat()


def train_command(
    since: str = typer.Option("7d", help="Start of the history: a duration ago (7d, 24h) or an ISO time."),
    until: str = typer.Option("now", help="End of the history: 'now', a duration ago, or an ISO time."),
    out: Optional[Path] = typer.Option(None, help="Model file (default: settings behaviour.model_path)."),
    seed: int = typer.Option(0, help="Random seed of the forest (same history + seed = same model)."),
    trees: int = typer.Option(100, min=10, help="Trees in the forest (Liu et al. 2008 use 100)."),
    min_windows: int = typer.Option(100, min=10, help="Fewest 5-minute windows to train on."),
    stack: Optional[Path] = typer.Option(None, help="Run directory of the stack (default: current)."),
) -> None:
    """Fit the behaviour model (Isolation Forest over per-principal 5-minute windows) on stored requests."""
    from detectors.behaviour_features import WINDOW_S, windows_of  # imported only for this command
    from detectors.behaviour_model import TooLittleHistory, fit_model
    from gatewatch.model_file import save_model_file

    now = datetime.now(timezone.utc)
    try:
        start, end = parse_when(since, now).timestamp(), parse_when(until, now).timestamp()
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    start, end = math.ceil(start / WINDOW_S) * WINDOW_S, math.floor(end / WINDOW_S) * WINDOW_S
    if end - start < WINDOW_S:
        console.print(f"[red]the range holds no whole {WINDOW_S:g} s window: widen --since/--until[/]")
        raise typer.Exit(2)
    settings = stack_settings(stack)
    stats = ReadStats()
    try:
        model = fit_model(windows_of(stored_events(StoreReader(settings), start, end, stats)),
                          since=start, until=end, trained_at=now.isoformat(timespec="seconds"),
                          seed=seed, n_estimators=trees, min_windows=min_windows,
                          threshold=settings.behaviour.threshold)
    except StoreUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    except TooLittleHistory as exc:
        console.print(f"[red]too little history to train on[/] from {_iso(start)} to {_iso(end)} "
                      f"({stats.rows} requests of principals): {exc}. Let traffic accumulate or widen --since.")
        raise typer.Exit(1) from None
    path = save_model_file(model.to_document(), out or settings.behaviour.model_path)
    training = model.training
    console.print(f"trained on {training['windows']} windows of {training['principals']} principals "
                  f"({stats.rows} requests from {_iso(start)} to {_iso(end)}"
                  + (f"; {stats.malformed} malformed rows skipped" if stats.malformed else "") + ")")
    console.print(f"training scores: {training['score_quantiles']}; at threshold "
                  f"{settings.behaviour.threshold:g}, {training['flagged']['windows']} training windows "
                  f"would be flagged")
    console.print(f"model written to {path} (scikit-learn {model.sklearn_version}, seed {seed}); "
                  f"workers load it at start-up")
