"""Size limits of what clients send: the request head (HTTP/1) and message bodies.

mitmproxy 11.0.2 reads an HTTP/1 request head until the blank line with no
bound at all (``Http1Server.read_headers``: "FIXME: protect against header
size DoS"), so one client could make the gateway buffer any number of header
bytes and then forward them upstream. This addon bounds the head:

- more than ``gatewatch_max_header_bytes`` bytes before the blank line that
  ends the head → ``431 Request Header Fields Too Large`` (RFC 6585 §5), or
  ``414 URI Too Long`` (RFC 9110 §15.5.15) when the request line alone is
  that long;
- more than ``gatewatch_max_header_fields`` header lines → 431.

The answer is written and the connection closed before the head is parsed:
no flow exists, no hook runs, nothing reaches the upstream, and the refusal
is counted in :data:`rejected` (metrics: ``gatewatch_requests_rejected_total``),
not shipped as a request event (there is no request to describe). mitmproxy
has no hook or option for this, so :func:`install` wraps
``Http1Server.read_headers`` once per process — the one override of
mitmproxy internals here, checked against 11.0.2 (the pinned release).

Bodies use mitmproxy's own ``body_size_limit`` option, which this addon sets
from ``gatewatch_max_body_bytes``: a request whose ``Content-Length`` (or
chunked body so far) exceeds it is answered 413 before it is forwarded, and
the flow's ``error`` hook ships a request event with status 413
(:func:`inline.events_shipper.error_status`). The option bounds response
bodies too (the gateway buffers both in memory): a larger upstream response
becomes a 502.

Defaults (``GATEWATCH_MAX_HEADER_BYTES`` etc., :mod:`gatewatch.settings`):
32 KiB of head — nginx's ``large_client_header_buffers 4 8k`` — 100 header
fields — Apache's ``LimitRequestFields`` — and 10 MiB of body — AWS API
Gateway's payload quota (nginx's ``client_max_body_size`` default is 1 MiB).
HTTP/2 heads are not bounded by this addon: the h2 connection's HPACK decoder
refuses a header list above 64 KiB decompressed (``hpack`` 4,
``DEFAULT_MAX_HEADER_LIST_SIZE``), and body limits apply as for HTTP/1.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, exceptions
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1

from gatewatch.settings import load_settings

logger = logging.getLogger(__name__)

#: End of an HTTP/1 head: a blank line (mitmproxy also accepts bare LF line ends).
_HEAD_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class HeadLimits:
    """Bounds of one HTTP/1 request head: ``max_bytes`` from the request line to the blank
    line (inclusive of line ends), ``max_fields`` header lines; 0 turns a bound off."""

    max_bytes: int
    max_fields: int


def head_verdict(buf: bytes, limits: HeadLimits) -> tuple[int, str] | None:
    """Judge the bytes received so far on a connection whose request head is not parsed yet.

    Returns None while the head (complete or not) is within ``limits``, else
    ``(status, reason)``: ``(414, "request_line_too_long")`` when the request
    line alone exceeds ``max_bytes``, ``(431, "header_too_large")`` when the
    head does, ``(431, "too_many_headers")`` when it has more than
    ``max_fields`` header lines. Bytes after the head (the body) are ignored.
    """
    end = _HEAD_END.search(buf)
    head = buf[:end.end()] if end else buf
    if limits.max_bytes and len(head) > limits.max_bytes:
        if b"\n" not in head[:limits.max_bytes + 1]:
            return 414, "request_line_too_long"
        return 431, "header_too_large"
    if limits.max_fields and head.count(b"\n") - (2 if end else 1) > limits.max_fields:
        return 431, "too_many_headers"
    return None


#: Heads refused since the process started, by reason (see :func:`head_verdict`).
rejected: Counter[str] = Counter()

_limits = HeadLimits(0, 0)
_installed = False

_MESSAGES = {414: "URI Too Long", 431: "Request Header Fields Too Large"}


def error_response(status: int) -> bytes:
    """The whole HTTP/1.1 answer (status line with its reason phrase, ``Connection: close``,
    short text body) for a refused head; mitmproxy's own error page lacks 431's phrase."""
    body = f"{status} {_MESSAGES[status]}\n".encode()
    return (f"HTTP/1.1 {status} {_MESSAGES[status]}\r\nConnection: close\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def install(limits: HeadLimits) -> None:
    """Bound every HTTP/1 request head read from now on in this process by ``limits``
    (wraps ``Http1Server.read_headers`` on the first call; later calls change the limits)."""
    global _limits, _installed
    _limits = limits
    if _installed:
        return
    _installed = True
    original = _http1.Http1Server.read_headers

    def read_headers(self: _http1.Http1Server, event: events.ConnectionEvent) -> Generator:
        if isinstance(event, events.DataReceived) and (_limits.max_bytes or _limits.max_fields):
            verdict = head_verdict(bytes(self.buf), _limits)
            if verdict is not None:
                status, reason = verdict
                rejected[reason] += 1
                self.state = self.done
                yield commands.SendData(self.conn, error_response(status))
                yield commands.CloseConnection(self.conn)
                return
        yield from original(self, event)

    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]


class SizeLimits:
    """Addon: bounds request heads (:func:`install`) and message bodies (mitmproxy's
    ``body_size_limit``). Options ``gatewatch_max_header_bytes``,
    ``gatewatch_max_header_fields``, ``gatewatch_max_body_bytes`` (bytes or count;
    0 turns a limit off). Raises ``OptionsError`` for a negative value."""

    def load(self, loader: Any) -> None:
        s = load_settings()
        loader.add_option("gatewatch_max_header_bytes", int, s.max_header_bytes,
                          "Longest HTTP/1 request head (request line and header fields), bytes; "
                          "longer: 431 (414 for the request line alone). 0: no limit.")
        loader.add_option("gatewatch_max_header_fields", int, s.max_header_fields,
                          "Most header fields in an HTTP/1 request; more: 431. 0: no limit.")
        loader.add_option("gatewatch_max_body_bytes", int, s.max_body_bytes,
                          "Largest request or response body, bytes (sets body_size_limit): a larger "
                          "request gets 413, a larger response 502. 0: no limit.")

    def configure(self, updated: set[str]) -> None:
        names = ("gatewatch_max_header_bytes", "gatewatch_max_header_fields", "gatewatch_max_body_bytes")
        if not updated.intersection(names):
            return
        o = ctx.options
        for name in names:
            if getattr(o, name) < 0:
                raise exceptions.OptionsError(f"{name} must be >= 0")
        install(HeadLimits(o.gatewatch_max_header_bytes, o.gatewatch_max_header_fields))
        if "gatewatch_max_body_bytes" in updated:
            body = o.gatewatch_max_body_bytes
            o.update(body_size_limit=str(body) if body else None)
