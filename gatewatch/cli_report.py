"""``gatewatch report --since 24h [--until now] [--out report.html] [--stack DIR]``:
one self-contained HTML file with plots of what happened in a time window.

Reads the store like ``explain`` and ``replay`` (through the running worker,
or the chDB directory when the stack is stopped); see :mod:`gatewatch.report`
for what the page shows.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from gatewatch.cli_decisions import parse_duration
from gatewatch.cli_replay import parse_when
from gatewatch.stack_info import stack_settings
from gatewatch.store_reader import StoreReader, StoreUnavailable

console = Console()


def report_command(
    since: str = typer.Option("24h", help="Start: a duration ago (24h, 7d) or an ISO time."),
    until: str = typer.Option("now", help="End: 'now', a duration ago, or an ISO time."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="The HTML file to write."),
    stack: Optional[Path] = typer.Option(None, help="Run directory of the stack (default: current)."),
    top: int = typer.Option(10, min=1, max=100, help="Rows per top-offenders table."),
    step: Optional[str] = typer.Option(None, help="Bucket width of the plots, e.g. 5m or 1h "
                                                  "(default: at most 150 buckets)."),
) -> None:
    """Write a self-contained HTML report: traffic, blocks, detections, top offenders, a map, decisions."""
    from gatewatch.report import gather, write_report  # matplotlib only for this command

    now = datetime.now(timezone.utc)
    try:
        start, end = parse_when(since, now), parse_when(until, now)
        step_s = int(parse_duration(step)) if step else None
        if not start < end:
            raise ValueError(f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})")
        if step_s is not None and not 1 <= step_s <= 7 * 86_400:
            raise ValueError("--step must be between 1s and 7d")
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    reader = StoreReader(stack_settings(stack))
    try:
        data = gather(reader, start, end, top=top, step_s=step_s)
    except StoreUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    path = write_report(data, out, stack=stack)
    t = data.totals
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB): {t.get('requests', 0):,} requests, "
                  f"{t.get('blocked', 0):,} blocked, {t.get('detections', 0):,} detections, "
                  f"{t.get('decisions', 0):,} decisions from {start.isoformat(timespec='seconds')} "
                  f"to {end.isoformat(timespec='seconds')} (store read {data.source})", soft_wrap=True)
