"""``gatewatch allowlist list|add|delete``: allow entries through the decisions topic.

An allow entry is a signed message on ``gatewatch.decisions`` with action
``allow``, keyed ``allow:scope:value`` (so a ban for the same value stays
where it is). Every gateway follows the topic and lets a matching request
through like the static allow-list (``settings.allow_list``): no decision
blocks or throttles it and no rate limit applies; authentication still does.
Every worker follows it too and issues no decision against a covered value
(the detection is still stored, ``evidence["policy"] = "allow_listed"``).

Scopes: ``ip``, ``prefix`` (a CIDR; a bare address means its /24 or /64),
``principal`` (API-key id or token subject; matches authenticated requests
only), ``asn`` and ``country`` (need the gateway's geo lookup). Not
``username``: the gateway learns it after rate limiting.

TTL: :data:`DEFAULT_TTL` (365 days) unless ``--ttl`` says otherwise, at most
:data:`MAX_TTL_S`. An allow-list entry is meant to last like the static
allow-list, yet a forgotten one should lapse on its own, and a year keeps
well inside the store's DateTime64 range; add the entry again to renew it.
Entries are signed like decisions: after the decision signing key rotates
and the old key is dropped from ``decision_verify_keys``, entries signed with
it are ignored, so add them again with the new key first.

``delete`` publishes a deletion record (stored, so the dashboards see it) and
a tombstone for the entry's key, as ``gatewatch decisions delete`` does.
"""

from __future__ import annotations

from typing import Optional

import typer

from gatewatch import decision_feed
from gatewatch.cli_decisions import console, delete_entry, list_entries, parse_duration
from gatewatch.stack_info import stack_settings as load_settings

app = typer.Typer(help="List, add and delete allow entries (never blocked nor rate limited) on the decisions "
                       "topic.", no_args_is_help=True)

#: Lifetime of an entry added without --ttl.
DEFAULT_TTL = "365d"
#: Longest lifetime accepted (10 years), seconds.
MAX_TTL_S = 3650 * 86_400.0


@app.command("list")
def list_allow_entries(
    scope: Optional[str] = typer.Option(None, help="Only this scope (ip, prefix, principal, asn, country)."),
    value: Optional[str] = typer.Option(None, help="Only this value (canonical: 10.0.0.0/8, 64500, NZ)."),
) -> None:
    """Active allow entries, newest first."""
    list_entries(scope, value, allow=True)


@app.command("add")
def add(
    scope: str = typer.Option(..., help="ip, prefix, principal, asn or country."),
    value: str = typer.Option(..., help="The address, CIDR, key id, ASN or country code."),
    reason: str = typer.Option(..., help="Why (shown by `gatewatch explain`)."),
    ttl: str = typer.Option(DEFAULT_TTL, help="How long: 90s, 15m, 4h, 30d (at most 3650d)."),
) -> None:
    """Publish an allow entry; every gateway honours it within a second."""
    settings = load_settings()
    try:
        ttl_s = parse_duration(ttl)
        if ttl_s > MAX_TTL_S:
            raise ValueError(f"ttl {ttl} is longer than 3650d")
        entry = decision_feed.allow_entry(scope, value, ttl_s, reason, settings.decision_prefix_v4,
                                          settings.decision_prefix_v6)
    except ValueError as exc:
        console.print(f"[red]invalid allow entry:[/] {exc}")
        raise typer.Exit(2) from None
    decision_feed.publish(settings, entry)
    console.print(f"added {entry.id}: {entry.key()} until {entry.expires_at.isoformat(timespec='seconds')}")


@app.command("delete")
def delete(
    scope: Optional[str] = typer.Option(None), value: Optional[str] = typer.Option(None),
    entry_id: Optional[str] = typer.Option(None, "--id", help="Delete the allow entry with this id."),
) -> None:
    """Remove an allow entry (by --scope/--value or by --id): a deletion record, then a tombstone."""
    delete_entry(scope, value, entry_id, allow=True)
