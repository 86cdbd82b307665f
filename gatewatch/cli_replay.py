"""``gatewatch replay --since 24h [--until now] [--set credential_stuffing.min_failures=20]``:
re-run the detectors over stored requests, in shadow, and compare with the live decisions.

Reads the store like ``explain`` (through the running worker, or the chDB
directory when stopped). Nothing is published: the gateway never sees a
replayed decision. ``--set`` changes a setting for the replay only (dotted path,
JSON or text value), so a threshold can be tried on last week's traffic.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from gatewatch.cli_decisions import parse_duration
from gatewatch.events import MalformedRecord, parse_request_event
from gatewatch.settings import GatewatchSettings
from gatewatch.stack_info import stack_settings
from gatewatch.store_reader import StoreReader, StoreUnavailable

console = Console()


def parse_when(text: str, now: datetime) -> datetime:
    """``"now"``, a duration ago (``"24h"``, ``"90m"``) or an ISO 8601 time → aware UTC datetime.
    Raises ``ValueError``."""
    text = text.strip()
    if text == "now":
        return now
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def with_overrides(settings: GatewatchSettings, assignments: list[str]) -> GatewatchSettings:
    """``settings`` with ``path.to.field=value`` assignments applied (value as JSON, else text).
    Raises ``ValueError`` for a malformed assignment or an unknown/invalid field."""
    data = settings.model_dump(mode="json")
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"--set {assignment!r}: expected path=value")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = data
        *parents, leaf = path.strip().split(".")
        for name in parents:
            if not isinstance(node.get(name), dict):
                raise ValueError(f"--set {assignment!r}: {name!r} is not a settings section")
            node = node[name]
        if leaf not in node:
            raise ValueError(f"--set {assignment!r}: no setting {path!r}")
        node[leaf] = value
    return GatewatchSettings.model_validate(data)


def _decision_table(title: str, rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=f"{title} ({len(rows)})")
    for col in ("detector", "scope", "value", "action", "when", "note"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def replay_command(
    since: str = typer.Option("24h", help="Start: a duration ago (24h, 90m) or an ISO time."),
    until: str = typer.Option("now", help="End: 'now', a duration ago, or an ISO time."),
    set_: list[str] = typer.Option([], "--set", help="Setting for the replay, e.g. credential_stuffing.min_failures=20."),
    geo: bool = typer.Option(True, help="Replay geo anomalies (needs `gatewatch geo install`)."),
    stack: Optional[Path] = typer.Option(None, help="Run directory of the stack (default: current)."),
) -> None:
    """Re-run the detectors over stored requests (shadow) and compare with the live decisions."""
    from streams.replay import compare, replay  # the detectors, imported only for this command

    now = datetime.now(timezone.utc)
    try:
        start, end = parse_when(since, now), parse_when(until, now)
        settings = with_overrides(stack_settings(stack), set_)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    reader = StoreReader(settings)
    try:
        rows = reader.query("requests_between", since=start.isoformat(), until=end.isoformat())
        live = reader.query("decisions_between", since=start.isoformat(), until=end.isoformat())
    except StoreUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    events, malformed = [], 0
    for row in rows:
        try:
            events.append(parse_request_event(row))
        except MalformedRecord:
            malformed += 1
    locate = _locator(settings) if geo else None
    result = replay(events, settings, locate)
    found = compare(result.decisions, live)

    def fmt(d) -> tuple[str, ...]:
        return (d.detector, d.scope, d.value, d.action, d.created_at.isoformat(timespec="seconds"))

    console.print(f"replayed {result.events} requests from {start.isoformat(timespec='seconds')} to "
                  f"{end.isoformat(timespec='seconds')}: {len(result.results)} detections, "
                  f"{len(result.decisions)} decisions (live: {len(live)})"
                  + (f"; {malformed} malformed rows skipped" if malformed else ""))
    console.print(_decision_table("decided by both", [fmt(d) + ("same",) for d, _ in found.both]))
    console.print(_decision_table("only the replay would decide", [fmt(d) + ("new",) for d in found.only_replay]))
    console.print(_decision_table("only decided live", [
        (r["detector"], r["scope"], r["value"], r["action"], str(r["created_at"])[:19], "not reproduced")
        for r in found.only_live]))


def _locator(settings: GatewatchSettings):
    from detectors.geo import GeoPoint
    from gatewatch.geoip import GeoDataError, GeoIp

    try:
        db = GeoIp(settings.geo.dir, settings.geo.city_mmdb, with_asn=False)
    except GeoDataError as exc:
        console.print(f"[yellow]geo anomalies not replayed: {exc}[/]")
        return None

    def locate(ip: str):
        info = db.lookup(ip)
        return None if info is None or info.lat is None else GeoPoint(info.lat, info.lon, info.country)
    return locate
