"""Oversized request heads and bodies against real gateway processes, over raw sockets.

Each oversized request gets its 4xx (431, 414 or 413) and a closed connection,
never a 5xx; the upstream (a real socket server recording every byte) never
receives it; the gateway keeps serving; a 413 is shipped as a request event
with status 413 and refused heads are counted in
``gatewatch_requests_rejected_total``. A response above the body limit
becomes a 502 (the limit bounds what the gateway buffers both ways). Both
masters are tested:
``python -m inline.serve`` and ``mitmdump -s inline/gateway.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inline.size_limits import HeadLimits, error_response, head_verdict
from raw_http import MASTERS, events_by_path, exchange, gateway_with_broker, metric, statuses, still_serves

MAX_BODY = 64 * 1024
MAX_HEAD = 32 * 1024     # the defaults of settings.max_header_bytes / max_header_fields
MAX_FIELDS = 100
HOST = b"Host: api.test\r\n"


@pytest.mark.parametrize(("data", "verdict"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", None),                                  # head not complete yet
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + b"x" * 100, None),                 # the body does not count
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 100 + b"\r\n\r\n", (431, "header_too_large")),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 100, (431, "header_too_large")),         # incomplete, already too long
    (b"GET /" + b"a" * 100, (414, "request_line_too_long")),
    (b"GET / HTTP/1.1\n" + b"X: 1\n" * 5 + b"\n", (431, "too_many_headers")),  # bare LF line ends
    (b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 4 + b"\r\n", None),
    (b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 5, (431, "too_many_headers")),
])
def test_head_verdict(data: bytes, verdict: tuple[int, str] | None) -> None:
    assert head_verdict(data, HeadLimits(max_bytes=64, max_fields=4)) == verdict


def test_head_verdict_limits_off() -> None:
    assert head_verdict(b"GET /" + b"a" * 10_000 + b"X: 1\r\n" * 500, HeadLimits(0, 0)) is None


def test_error_response_is_complete_http() -> None:
    raw = error_response(431)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Connection: close" in head and f"Content-Length: {len(body)}".encode() in head


@pytest.fixture(scope="module", params=MASTERS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    with gateway_with_broker(tmp_path_factory.mktemp(f"size-{request.param}"), request.param,
                             max_body_bytes=MAX_BODY) as (s, rec):
        yield s, rec


OVERSIZED_HEADS = {
    # a header block above the limit made of ordinary headers
    "block": (b"GET /size/block HTTP/1.1\r\n" + HOST
              + b"".join(b"X-Pad-%02d: %s\r\n" % (i, b"p" * 600) for i in range(60)) + b"\r\n", 431,
              "header_too_large"),
    # one huge header
    "single": (b"GET /size/single HTTP/1.1\r\n" + HOST + b"X-Huge: " + b"h" * (MAX_HEAD + 10) + b"\r\n\r\n", 431,
               "header_too_large"),
    # many small headers, well under the byte limit
    "many": (b"GET /size/many HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_FIELDS + 5))
             + b"\r\n", 431, "too_many_headers"),
    # a request line longer than the whole head may be
    "line": (b"GET /size/line/" + b"l" * (MAX_HEAD + 10) + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414,
             "request_line_too_long"),
    # a head that never ends: the gateway stops buffering at the limit
    "endless": (b"GET /size/endless HTTP/1.1\r\n" + HOST + b"X-Endless: " + b"e" * (2 * MAX_HEAD), 431,
                "header_too_large"),
}


@pytest.mark.parametrize("case", sorted(OVERSIZED_HEADS))
def test_oversized_head_refused_before_the_upstream(gateway, case: str) -> None:
    s, rec = gateway
    data, status, reason = OVERSIZED_HEADS[case]
    before = metric(s, "gatewatch_requests_rejected_total", f'{{reason="{reason}"}}')
    answer = exchange(s.listen_port, data)
    assert statuses(answer) == [status], answer[:200]
    assert f"/size/{case}".encode() not in rec.all_bytes(), "the oversized request reached the upstream"
    still_serves(s, rec, f"/after/{case}")
    assert metric(s, "gatewatch_requests_rejected_total", f'{{reason="{reason}"}}') == before + 1


def test_head_at_the_limits_passes(gateway) -> None:
    s, rec = gateway
    line = b"GET /size/fits HTTP/1.1\r\n" + HOST + b"Connection: close\r\n"     # 2 fields
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_FIELDS - 3))          # + 97
    room = MAX_HEAD - len(line) - len(fields) - len(b"\r\n")
    pad = b"X-Pad: " + b"p" * (room - len(b"X-Pad: \r\n")) + b"\r\n"               # + 1 = 100 fields
    data = line + fields + pad + b"\r\n"
    assert len(data) == MAX_HEAD and data.count(b"\r\n") - 2 == MAX_FIELDS
    assert statuses(exchange(s.listen_port, data)) == [200]
    assert "GET /size/fits HTTP/1.1" in rec.lines()


BODIES = {
    # announced by Content-Length: refused before the body is read
    "/size/body-cl": b"POST /size/body-cl HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
                     + b"B" * (MAX_BODY + 1),
    # a Content-Length far above the limit, with little data behind it
    "/size/body-huge-cl": b"POST /size/body-huge-cl HTTP/1.1\r\n" + HOST + b"Content-Length: 100000000000\r\n\r\n"
                          + b"B" * 1000,
    # chunked: refused once the chunks received pass the limit
    "/size/body-chunked": b"POST /size/body-chunked HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
                          + (b"4000\r\n" + b"B" * 0x4000 + b"\r\n") * (MAX_BODY // 0x4000 + 1) + b"0\r\n\r\n",
}


@pytest.mark.parametrize("path", sorted(BODIES))
def test_body_above_the_limit_gets_413_and_an_event(gateway, path: str) -> None:
    s, rec = gateway
    answer = exchange(s.listen_port, BODIES[path])
    assert statuses(answer) == [413], answer[:200]
    assert path.encode() not in rec.all_bytes(), "the oversized request reached the upstream"
    still_serves(s, rec, f"/after{path}")
    events = events_by_path(s, {path})[path]
    assert [(e.status, e.answered_by) for e in events] == [(413, "bad_request")]


def test_body_at_the_limit_passes(gateway) -> None:
    s, rec = gateway
    data = (b"POST /size/body-fits HTTP/1.1\r\n" + HOST + b"Connection: close\r\nContent-Length: %d\r\n\r\n"
            % MAX_BODY + b"b" * MAX_BODY)
    assert statuses(exchange(s.listen_port, data)) == [200]
    index = rec.lines().index("POST /size/body-fits HTTP/1.1")
    assert len(rec.bodies[index]) == MAX_BODY


def test_response_above_the_limit_is_a_502(gateway) -> None:
    """The body limit bounds what the gateway buffers both ways: a larger upstream answer
    becomes a 502 (shipped as such), one within the limit passes."""
    s, rec = gateway
    big, fits = f"/bytes/{MAX_BODY + 1}", f"/bytes/{MAX_BODY}"
    for path, status in ((big, 502), (fits, 200)):
        answer = exchange(s.listen_port, f"GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
                          .encode())
        assert statuses(answer) == [status], answer[:200]
    assert [(e.status, e.answered_by) for e in events_by_path(s, {big})[big]] == [(502, "error")]
    still_serves(s, rec, "/after/bytes")


def test_limits_are_options(tmp_path: Path) -> None:
    """A negative limit is refused at start-up with a clear error (the gateway does not run)."""
    import subprocess

    from gatewatch.commands import serve_command
    from gatewatch.settings import load_settings
    from inline_testkit import gateway_env

    (tmp_path / "keys.toml").touch()
    s = load_settings(keys_file=tmp_path / "keys.toml", spool_dir=tmp_path / "spool", admin_port=0)
    done = subprocess.run(serve_command(s) + ["--set", "gatewatch_max_header_fields=-1"], env=gateway_env(s),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "gatewatch_max_header_fields must be >= 0" in done.stderr
