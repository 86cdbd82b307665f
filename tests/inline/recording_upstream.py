"""A real socket upstream that records every byte and every request line it receives.

Used by the request-smuggling and size-limit tests: it parses HTTP/1.1 the
naive way many back ends do — framing by ``Content-Length`` only, ignoring
``Transfer-Encoding`` — so any body bytes a gateway forwarded ambiguously show
up as extra "request lines" here (the classic CL.TE desynchronisation,
Linhart et al., "HTTP Request Smuggling", Watchfire 2005). It also keeps the
raw bytes of each connection, so a test can assert that a smuggled request's
marker never reached the upstream at all. It answers ``ok``, or N bytes to
``GET /bytes/N``.

Not a conftest: test modules import it directly.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Longest request head (bytes) the upstream reads before giving up on a connection.
MAX_HEAD = 1 << 20
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Recording:
    """What the upstream saw: request lines in arrival order and the raw bytes of each connection."""

    request_lines: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def all_bytes(self) -> bytes:
        """Every byte received, all connections concatenated."""
        with self.lock:
            return b"".join(bytes(r) for r in self.raw)

    def lines(self) -> list[str]:
        """A copy of the request lines seen so far."""
        with self.lock:
            return list(self.request_lines)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return max(0, int(value.strip()))
            except ValueError:
                return 0
    return 0


def _answer(request_line: str) -> bytes:
    """``ok``, or N bytes for ``GET /bytes/N`` (a response of a chosen size)."""
    parts = request_line.split()
    if len(parts) > 1 and parts[1].startswith("/bytes/") and parts[1][7:].isdigit():
        body = b"r" * int(parts[1][7:])
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    return ANSWER


def _serve_connection(conn: socket.socket, rec: Recording) -> None:
    raw = bytearray()
    with rec.lock:
        rec.raw.append(raw)
    buf = b""
    with conn:
        conn.settimeout(10)
        while True:
            while b"\r\n\r\n" not in buf:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data or len(buf) > MAX_HEAD:
                    return
                with rec.lock:
                    raw.extend(data)
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = _content_length(head)
            while len(buf) < length:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with rec.lock:
                    raw.extend(data)
                buf += data
            body, buf = buf[:length], buf[length:]
            with rec.lock:
                rec.request_lines.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
                rec.bodies.append(body)
            try:
                conn.sendall(_answer(rec.request_lines[-1]))
            except OSError:
                return


@contextmanager
def recording_upstream() -> Iterator[tuple[str, Recording]]:
    """Listen on a free loopback port; yield ``(base URL, recording)``; stop afterwards."""
    rec = Recording()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=_serve_connection, args=(conn, rec), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", rec
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
