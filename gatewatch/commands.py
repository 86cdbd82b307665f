"""Command lines of the gateway and worker processes, shared by the launcher and the tests.

``gatewatch`` imports nothing from ``inline`` or ``streams``: it only locates
their entry points and starts them as processes, passing settings through
``GATEWATCH_*`` environment variables (see :meth:`GatewatchSettings.to_env`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from gatewatch.settings import GatewatchSettings


def gateway_script() -> Path:
    """Path of the mitmproxy script that loads the gatewatch addons (``inline/gateway.py``)."""
    spec = importlib.util.find_spec("inline.gateway")
    if spec is None or spec.origin is None:
        raise RuntimeError("inline.gateway not found: is gatewatch installed?")
    return Path(spec.origin)


def gateway_command(settings: GatewatchSettings) -> list[str]:
    """mitmdump in reverse-proxy mode in front of ``settings.upstream``, listening on
    ``settings.listen_host:listen_port``, with the gatewatch addons loaded.

    mitmproxy 11.0.2 is pinned: the last release that runs on Python 3.11.
    """
    mitmdump = Path(sys.executable).parent / "mitmdump"
    return [
        str(mitmdump),
        "--mode", f"reverse:{settings.upstream}@{settings.listen_host}:{settings.listen_port}",
        "-s", str(gateway_script()),
        "--set", "connection_strategy=lazy",
        "--quiet",
    ]


def serve_command(settings: GatewatchSettings, reuse_port: bool = False) -> list[str]:
    """The gateway on its minimal mitmproxy master (``python -m inline.serve``): only the
    addons a reverse proxy needs, optionally sharing its port with others (``SO_REUSEPORT``)."""
    argv = [sys.executable, "-m", "inline.serve", "--upstream", settings.upstream,
            "--listen-host", settings.listen_host, "--listen-port", str(settings.listen_port)]
    if settings.tls_cert:
        argv += ["--certs", f"*={Path(settings.tls_cert).resolve()}"]
    return argv + (["--reuse-port"] if reuse_port else [])


def worker_command(log_level: str = "info") -> list[str]:
    """The Faust worker (``streams``), which owns the ClickHouse store.

    Faust's CLI log levels are ``crit|error|warn|info|debug``.
    """
    return [sys.executable, "-m", "streams", "worker", "-l", log_level]
