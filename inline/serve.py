"""Run the gateway on a minimal mitmproxy master: only the addons a reverse proxy needs.

``mitmdump`` loads ~31 built-in addons (playback, map-local, cut, export,
…) and mitmproxy dispatches every hook of every flow to each of them; on
this machine that dispatching was measured at ~30% of per-request CPU, and
a master with only the needed addons served ~50% more requests per second
(DESIGN.md). :class:`GatewayMaster` keeps:

- ``Core``, ``Proxyserver``, ``NextLayer``, ``TlsConfig`` — accepting
  connections, choosing protocol layers, TLS termination with ``--certs``;
- ``ErrorCheck`` — exit when an error is logged during start-up (as mitmdump);
- ``TermLog`` — log lines on stderr;

then the gatewatch addons of :mod:`inline.gateway`, in their order, behind
one :class:`inline.chain.Chain` (one hook dispatch instead of a dozen). Nothing
else runs, so mitmdump features such as ``--set block_global`` or scripts do
not exist here (``mitmdump -s inline/gateway.py`` remains the full-featured way).

Several processes can serve one port: ``--reuse-port`` binds the listening
socket with ``SO_REUSEPORT``, and the Linux kernel spreads new connections
over the processes (socket(7)). mitmproxy has no such option, so
:func:`_listen_reuse_port` replaces the TCP listen of reverse-mode servers —
one small override, used only when asked for.

Usage::

    python -m inline.serve --upstream http://127.0.0.1:8000 --listen-port 8080 [--reuse-port]
        [--certs '*=cert.pem'] [--set gatewatch_ip_rate_limit=100:200 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from mitmproxy import exceptions, master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, termlog, tlsconfig
from mitmproxy.proxy import mode_servers
from mitmproxy.proxy import server as proxy_server

from gatewatch.settings import load_settings
from inline.chain import Chain


class GatewayMaster(master.Master):
    """A mitmproxy master with the reverse-proxy essentials and the gatewatch addons only."""

    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts)
        from inline.gateway import addons as gateway_addons

        self.gateway_addons = list(gateway_addons)
        self.addons.add(termlog.TermLog(), core.Core(), proxyserver.Proxyserver(),
                        next_layer.NextLayer(), tlsconfig.TlsConfig(), errorcheck.ErrorCheck())
        # One addon for all of gatewatch's: mitmproxy dispatches each hook to each addon.
        self.addons.add(Chain(self.gateway_addons))

    def configure_gateway(self) -> None:
        """Run the gatewatch addons' ``configure`` over every option, as mitmproxy's
        script loader does for ``-s`` scripts. Raises ``OptionsError`` on a bad value."""
        every = set(self.options.keys())
        for addon in self.gateway_addons:
            configure = getattr(addon, "configure", None)
            if configure is not None:
                configure(every)


async def _listen_reuse_port(self: mode_servers.AsyncioServerInstance, host: str, port: int) -> list:
    # Replaces AsyncioServerInstance.listen for TCP modes when --reuse-port is given.
    return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; defaults come from the ``GATEWATCH_*`` settings."""
    s = load_settings()
    parser = argparse.ArgumentParser(prog="python -m inline.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default=s.upstream, help="URL of the protected API.")
    parser.add_argument("--listen-host", default=s.listen_host)
    parser.add_argument("--listen-port", type=int, default=s.listen_port)
    parser.add_argument("--reuse-port", action="store_true",
                        help="Bind with SO_REUSEPORT so several processes share the port.")
    parser.add_argument("--certs", action="append", default=[],
                        help="TLS certificate for clients, mitmproxy's '[domain=]path' form (repeatable).")
    parser.add_argument("--idle-timeout", type=float, default=s.idle_timeout_s,
                        help="Close connections idle this many seconds (also upstreams that hang).")
    parser.add_argument("--verbose", action="store_true", help="Log every client connection.")
    parser.add_argument("--set", dest="setoptions", action="append", default=[], metavar="option=value",
                        help="Set any option, e.g. gatewatch_ip_rate_limit=100:200.")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    """Start the master with ``args`` and run until SIGINT/SIGTERM; return an exit code."""
    logging.getLogger().setLevel(logging.INFO)
    if args.reuse_port:
        mode_servers.AsyncioServerInstance.listen = _listen_reuse_port  # type: ignore[method-assign]
    # mitmproxy has no option for it: its connection watchdog reads this module constant
    # (600 s) when a connection starts. With no traffic either way for that long the
    # connection is closed, which is also what ends a request to an upstream that hangs.
    proxy_server.TCP_TIMEOUT = args.idle_timeout
    opts = options.Options()
    gateway = GatewayMaster(opts)
    # Reverse mode detects a TLS ClientHello and terminates TLS with --certs (HTTP/2 via ALPN).
    mode = f"reverse:{args.upstream}@{args.listen_host}:{args.listen_port}"
    try:
        # Per-connection lines are info-level: off by default, they cost CPU per request.
        opts.update(mode=[mode], connection_strategy="lazy", certs=args.certs,
                    termlog_verbosity="info" if args.verbose else "warn")
        opts.set(*args.setoptions)
        gateway.configure_gateway()
    except exceptions.OptionsError as exc:
        print(f"inline.serve: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, gateway.shutdown)
    await gateway.run()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m inline.serve``."""
    sys.exit(asyncio.run(serve(parse_args(argv))))


if __name__ == "__main__":
    main()
