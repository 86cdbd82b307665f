"""``gatewatch decisions list|add|delete``: manual decisions through the decisions topic.

A decision added here is enforced by every gateway exactly like a detector's
(the gateway follows the topic); ``delete`` publishes a deletion record (a
decision with no lifetime, stored like any decision, so the dashboards and
``gatewatch explain`` see the deletion) and a tombstone. Allow entries are
not decisions: ``gatewatch allowlist`` (:mod:`gatewatch.cli_allowlist`) lists,
adds and deletes them with the listing and deletion helpers of this module.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from gatewatch import decision_feed
from gatewatch.stack_info import stack_settings as load_settings

app = typer.Typer(help="List, add and delete decisions (bans, throttles) on the decisions topic.",
                  no_args_is_help=True)
console = Console()

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"4h"``, ``"7d"`` → seconds. Raises ``ValueError``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 4h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _remaining(expires_at: datetime) -> str:
    left = (expires_at - datetime.now(timezone.utc)).total_seconds()
    return f"{left / 3600:.1f}h" if left >= 3600 else f"{left / 60:.1f}m" if left >= 60 else f"{left:.0f}s"


@app.command("list")
def list_decisions(
    scope: Optional[str] = typer.Option(None, help="Only this scope (ip, prefix, principal, ...)."),
    value: Optional[str] = typer.Option(None, help="Only this value."),
) -> None:
    """Active decisions, newest first."""
    list_entries(scope, value, allow=False)


def list_entries(scope: str | None, value: str | None, allow: bool) -> None:
    """Print the active decisions (``allow``: allow entries) of the topic, newest first, with
    the number of messages skipped; exit 1 when the broker does not answer."""
    settings = load_settings()
    try:
        log = decision_feed.read_decisions(settings)
    except TimeoutError as exc:
        console.print(f"[red]{exc}[/] (is the broker at {settings.bootstrap_servers} up?)")
        raise typer.Exit(1) from None
    rows = [d for d in log.active(allow=allow)
            if (scope is None or d.scope == scope) and (value is None or d.value == value)]
    table = Table(title=f"{len(rows)} active {'allow entries' if allow else 'decision(s)'}")
    columns = ("id", "scope", "value", "created", "expires in", "reason") if allow else \
        ("id", "scope", "value", "action", "detector", "expires in", "reason")
    for col in columns:
        table.add_column(col)
    for d in rows:
        if allow:
            table.add_row(d.id, d.scope, d.value, d.created_at.isoformat(timespec="seconds"),
                          _remaining(d.expires_at), d.reason)
        else:
            table.add_row(d.id, d.scope, d.value, d.action, d.detector, _remaining(d.expires_at), d.reason)
    console.print(table)
    if log.malformed:
        console.print(f"[yellow]{log.malformed} malformed message(s) on the topic were skipped[/]")
    if log.unsigned or log.bad_signature:
        console.print(f"[yellow]{log.unsigned} unsigned and {log.bad_signature} badly signed decision "
                      f"message(s) on the topic were ignored[/]")


@app.command("add")
def add(
    scope: str = typer.Option(..., help="ip, prefix, principal, username, asn or country."),
    value: str = typer.Option(..., help="The address, CIDR, key id, username hash, ASN or country code."),
    ttl: str = typer.Option("1h", help="How long: 90s, 15m, 4h, 7d."),
    reason: str = typer.Option(..., help="Why (shown by `gatewatch explain`)."),
    action: str = typer.Option("ban", help="ban (403), throttle (tighter rate limit) or challenge (proof of work)."),
) -> None:
    """Publish a manual decision; every gateway enforces it within a second."""
    try:
        decision = decision_feed.manual_decision(scope, value, parse_duration(ttl), reason, action)
    except ValueError as exc:
        console.print(f"[red]invalid decision:[/] {exc}")
        raise typer.Exit(2) from None
    decision_feed.publish(load_settings(), decision)
    console.print(f"added {decision.id}: {decision.action} {decision.key()} until "
                  f"{decision.expires_at.isoformat(timespec='seconds')}")


@app.command("delete")
def delete(
    scope: Optional[str] = typer.Option(None), value: Optional[str] = typer.Option(None),
    decision_id: Optional[str] = typer.Option(None, "--id", help="Delete the decision with this id."),
) -> None:
    """Lift a decision (by --scope/--value or by --id): a deletion record, then a tombstone."""
    delete_entry(scope, value, decision_id, allow=False)


def delete_entry(scope: str | None, value: str | None, entry_id: str | None, allow: bool) -> None:
    """Lift the decision (``allow``: allow entry) given by ``scope``/``value`` or by
    ``entry_id``: its deletion record, then a tombstone. Exits 1 when the id is unknown
    or the broker does not answer, 2 for missing or invalid arguments."""
    settings = load_settings()
    kind = "allow entry" if allow else "decision"
    found = None
    try:
        if entry_id:
            found = decision_feed.read_decisions(settings).by_id(entry_id, allow=allow)
            if found is None:
                console.print(f"[red]no {kind} with id {entry_id}[/]")
                raise typer.Exit(1)
            scope, value = found.scope, found.value
        if not scope or not value:
            console.print("[red]give --scope and --value, or --id[/]")
            raise typer.Exit(2)
        if allow:
            value = decision_feed.canonical_allow_value(scope, value, settings.decision_prefix_v4,
                                                        settings.decision_prefix_v6)
        record = decision_feed.delete(settings, scope, value, current=found, allow=allow)
    except TimeoutError as exc:
        console.print(f"[red]{exc}[/] (is the broker at {settings.bootstrap_servers} up?)")
        raise typer.Exit(1) from None
    except ValueError as exc:
        console.print(f"[red]invalid {kind}:[/] {exc}")
        raise typer.Exit(2) from None
    lifted = record.evidence.get("lifts")
    console.print(f"deleted {record.key()}" + (f" (lifted {lifted})" if lifted else f" (no {kind} was active)"))
