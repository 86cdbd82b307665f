"""Raw-socket HTTP/1 for the gateway's hostile-framing tests, and a gateway in front of a
recording upstream (both masters: ``python -m inline.serve`` and ``mitmdump -s inline/gateway.py``).

Not a conftest: test modules import it directly.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from kafka import KafkaConsumer, TopicPartition

from gatewatch.broker import create_topics, start_tansu
from gatewatch.commands import gateway_command, serve_command
from gatewatch.events import RequestEvent, parse_request_event
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings, load_settings
from inline_testkit import gateway_env, listening_process
from recording_upstream import Recording, recording_upstream

MASTERS = ("serve", "mitmdump")


def exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send ``data`` on a new connection to 127.0.0.1:``port`` and return every byte
    answered until the gateway closes (or ``timeout_s`` of silence). A send cut short
    by the gateway closing first (it refused the request early) is not an error."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        out = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except OSError:   # reset after the answer: keep what arrived
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)


def statuses(response: bytes) -> list[int]:
    """Status codes of every HTTP/1 response in ``response`` (several when pipelined)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3})", response)]


@contextmanager
def gateway_with_broker(tmp: Path, master: str, **overrides) -> Iterator[tuple[GatewatchSettings, Recording]]:
    """A Tansu broker, a recording upstream and one gateway process (``master``: ``serve`` or
    ``mitmdump``) with metrics on a free admin port; yields ``(settings, recording)``."""
    bport = free_port()
    broker = start_tansu("127.0.0.1", bport, tmp / "tansu.log")
    try:
        wait_for_port("127.0.0.1", bport, timeout_s=10)
        (tmp / "keys.toml").touch()
        with recording_upstream() as (url, rec):
            s = load_settings(bootstrap_servers=f"127.0.0.1:{bport}", upstream=url, listen_port=free_port(),
                              admin_port=free_port(), keys_file=tmp / "keys.toml", spool_dir=tmp / "spool",
                              chdb_path=tmp / "chdb", public_routes=["/*"], **overrides)
            create_topics(s)
            cmd = serve_command(s) if master == "serve" else gateway_command(s)
            with listening_process(cmd, tmp / f"gateway-{master}.log", s.listen_port, master, gateway_env(s)):
                wait_for_port(s.admin_host, s.admin_port, timeout_s=20)
                yield s, rec
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def still_serves(s: GatewatchSettings, rec: Recording, path: str) -> None:
    """A well-formed request on a new connection gets the upstream's 200, and the upstream saw it."""
    answer = exchange(s.listen_port, f"GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n".encode())
    assert statuses(answer) == [200], answer[:200]
    assert f"GET {path} HTTP/1.1" in rec.lines()


def metric(s: GatewatchSettings, name: str, labels: str = "") -> float:
    """The value of one sample of the gateway's ``/metrics`` (0 when absent)."""
    text = httpx.get(f"http://{s.admin_host}:{s.admin_port}/metrics", timeout=5).text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def events_by_path(s: GatewatchSettings, paths: set[str], timeout_s: float = 10.0) -> dict[str, list[RequestEvent]]:
    """Request events on the topic whose path is in ``paths``, read from the beginning
    (no group, never "latest": Tansu quirk) until each path has one or ``timeout_s`` passes."""
    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False,
                             fetch_max_wait_ms=20)
    found: dict[str, list[RequestEvent]] = {p: [] for p in paths}
    try:
        tps = [TopicPartition(s.topic_requests, p) for p in sorted(consumer.partitions_for_topic(s.topic_requests))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(found.values()):
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    event = parse_request_event(r.value)
                    if event.path in found:
                        found[event.path].append(event)
    finally:
        consumer.close()
    return found
