"""Where a running local stack listens, so that other commands can find it.

``gatewatch up`` and ``gatewatch demo`` pick free loopback ports; once the
stack is ready the launcher writes ``<run_dir>/stack.json`` (broker address,
worker read API, gateway URL, metrics URLs, chDB path) and points
``.gatewatch/current`` at the run directory. ``gatewatch explain`` and
``gatewatch decisions`` read it (``--stack DIR``, or the current run by
default), so they work from another terminal with no flags.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gatewatch.settings import GatewatchSettings, load_settings

STACK_FILE = "stack.json"
#: The most recent run directory of this working directory.
CURRENT = Path(".gatewatch") / "current"


def write_stack_info(run_dir: Path, settings: GatewatchSettings, metrics_urls: list[str]) -> Path:
    """Write ``run_dir/stack.json`` and point :data:`CURRENT` at ``run_dir``; return the file."""
    info = {
        "bootstrap_servers": settings.bootstrap_servers,
        "worker_web_host": settings.worker_web_host,
        "worker_web_port": settings.worker_web_port,
        "gateway_url": f"http://{settings.listen_host}:{settings.listen_port}",
        "chdb_path": str(settings.chdb_path),
        "metrics_urls": metrics_urls,
        "pid": os.getpid(),
    }
    path = run_dir / STACK_FILE
    path.write_text(json.dumps(info, indent=2))
    try:
        CURRENT.parent.mkdir(parents=True, exist_ok=True)
        if CURRENT.is_symlink() or CURRENT.exists():
            CURRENT.unlink()
        CURRENT.symlink_to(run_dir.resolve())
    except OSError:
        pass  # a read-only working directory: --stack still works
    return path


def read_stack_info(stack: Path | None = None) -> dict[str, Any] | None:
    """The stack file of ``stack`` (a run directory or the file itself), or of the current
    run when ``stack`` is None; None when there is none."""
    path = Path(stack) if stack else CURRENT
    if path.is_dir():
        path = path / STACK_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stack_settings(stack: Path | None = None) -> GatewatchSettings:
    """Settings for talking to a running stack: the environment's, with the broker,
    worker and store of the stack file on top — the named ``stack``, or the current
    run unless ``GATEWATCH_BOOTSTRAP_SERVERS`` is set (then the environment wins)."""
    if stack is None and "GATEWATCH_BOOTSTRAP_SERVERS" in os.environ:
        return load_settings()
    info = read_stack_info(stack)
    if info is None:
        return load_settings()
    return load_settings(bootstrap_servers=info["bootstrap_servers"], worker_web_host=info["worker_web_host"],
                         worker_web_port=info["worker_web_port"], chdb_path=Path(info["chdb_path"]))
