"""``python -m gatewatch.healthcheck gateway|worker``: the container healthchecks of the
production stack (docker-compose.yml), from the same ``GATEWATCH_*`` settings the process reads.

* ``gateway``: the listening port accepts a TCP connection and the admin port answers
  ``GET /metrics`` with 200 (the addons are running).
* ``worker``: ``GET /gatewatch/health/`` on the worker's web port answers ``"ready": true``
  (store open, partitions assigned).

Both send ``Authorization: Bearer <admin_token>`` when a token is set
(:mod:`gatewatch.admin_auth`). A wildcard listening address (``0.0.0.0``, ``::``) is
checked on loopback. Exit status 0 when healthy, 1 otherwise (the reason on stderr).
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from gatewatch.settings import GatewatchSettings, load_settings

#: Seconds each probe may take (Docker's healthcheck timeout is the outer bound).
TIMEOUT_S = 3.0


class Unhealthy(RuntimeError):
    """A probe failed; the message says which and why."""


def local_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from inside its container."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host.strip("[]")


def _get(settings: GatewatchSettings, url: str) -> bytes:
    request = urllib.request.Request(url)
    if settings.admin_token:
        request.add_header("Authorization", f"Bearer {settings.admin_token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Unhealthy(f"GET {url}: {exc}") from None


def check_gateway(settings: GatewatchSettings) -> str:
    """Probe a gateway; return a one-line summary or raise :class:`Unhealthy`."""
    host, port = local_host(settings.listen_host), settings.listen_port
    try:
        socket.create_connection((host, port), timeout=TIMEOUT_S).close()
    except OSError as exc:
        raise Unhealthy(f"gateway port {host}:{port}: {exc}") from None
    if not settings.admin_port:
        return f"gateway {host}:{port} accepts connections (metrics off)"
    url = f"http://{local_host(settings.admin_host)}:{settings.admin_port}/metrics"
    _get(settings, url)
    return f"gateway {host}:{port} accepts connections; {url} answers"


def check_worker(settings: GatewatchSettings) -> str:
    """Probe a worker; return a one-line summary or raise :class:`Unhealthy`."""
    url = f"http://{local_host(settings.worker_web_host)}:{settings.worker_web_port}/gatewatch/health/"
    try:
        health = json.loads(_get(settings, url))
    except ValueError:
        raise Unhealthy(f"GET {url}: not JSON") from None
    if not health.get("ready"):
        raise Unhealthy(f"worker not ready: store_open={health.get('store_open')}, "
                        f"assigned_partitions={health.get('assigned_partitions')}")
    return f"worker ready ({health.get('assigned_partitions')} partitions)"


CHECKS = {"gateway": check_gateway, "worker": check_worker}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check named by the first argument; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in CHECKS:
        print(f"usage: python -m gatewatch.healthcheck {'|'.join(CHECKS)}", file=sys.stderr)
        return 2
    try:
        print(CHECKS[args[0]](load_settings()))
    except Unhealthy as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
