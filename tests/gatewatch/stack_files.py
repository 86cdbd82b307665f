"""The run directory of a stopped stack, for the CLI tests: a ``stack.json`` naming a chDB
directory and broker/worker ports that answer nothing, so commands open the store themselves."""

from __future__ import annotations

import json
from pathlib import Path

from gatewatch.netutil import free_port


def stopped_run_dir(run_dir: Path, chdb_path: Path) -> Path:
    """Create ``run_dir`` with the stack file of a stack that is gone; return ``run_dir``."""
    run_dir.mkdir()
    (run_dir / "stack.json").write_text(json.dumps({
        "bootstrap_servers": f"127.0.0.1:{free_port()}", "worker_web_host": "127.0.0.1",
        "worker_web_port": free_port(), "gateway_url": "", "chdb_path": str(chdb_path),
        "metrics_urls": []}))
    return run_dir
