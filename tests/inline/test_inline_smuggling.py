"""Request smuggling attempts against real gateway processes, over raw sockets.

Every payload carries a second request (``GET /smuggled``) hidden by ambiguous
framing — conflicting ``Content-Length`` / ``Transfer-Encoding``, duplicate
``Content-Length``, unknown or obfuscated codings, bad chunk sizes — in the
CL.TE and TE.CL shapes (Linhart et al., "HTTP Request Smuggling", 2005;
RFC 9112 §6.3 and §11.2). Each is answered 400 or its connection is closed;
the upstream, a real socket server that frames by ``Content-Length`` only and
records every byte, never receives the smuggled bytes; the gateway keeps
serving. mitmproxy's ``validate_inbound_headers`` (on by default) refuses the
ambiguous heads; a bad chunk size ends the connection without an answer
(mitmproxy 11.0.2 closes it before it can write a 400).

A legitimate chunked request followed by a pipelined one is forwarded with
``Content-Length`` framing (:mod:`inline.framing`), so even a
``Content-Length``-only upstream sees exactly two requests.
"""

from __future__ import annotations

import pytest
from mitmproxy import http

from inline.framing import unchunk
from raw_http import MASTERS, events_by_path, exchange, gateway_with_broker, statuses, still_serves

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n"
TE_CL_CHUNK = b"POST /smuggled HTTP/1.1\r\nHost: api.test\r\nContent-Length: 15\r\n\r\nx=1"


def attack(path: str, headers: bytes, body: bytes) -> bytes:
    return b"POST " + path.encode() + b" HTTP/1.1\r\nHost: api.test\r\n" + headers + b"\r\n" + body


ATTACKS = {
    # CL.TE: a front end honouring Content-Length forwards the smuggled request as body
    "/cl-te": attack("/cl-te", b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (5 + len(SMUGGLED)),
                     b"0\r\n\r\n" + SMUGGLED),
    # TE.CL: the chunk holds the smuggled request for a back end honouring Content-Length
    "/te-cl": attack("/te-cl", b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                     b"%x\r\n" % len(TE_CL_CHUNK) + TE_CL_CHUNK + b"\r\n0\r\n\r\n"),
    "/te-first": attack("/te-first", b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                        b"0\r\n\r\n" + SMUGGLED),
    "/cl-dup": attack("/cl-dup", b"Content-Length: 5\r\nContent-Length: %d\r\n" % (5 + len(SMUGGLED)),
                      b"hello" + SMUGGLED),
    "/cl-list": attack("/cl-list", b"Content-Length: 5, %d\r\n" % (5 + len(SMUGGLED)), b"hello" + SMUGGLED),
    "/cl-plus": attack("/cl-plus", b"Content-Length: +5\r\n", b"hello" + SMUGGLED),
    "/cl-negative": attack("/cl-negative", b"Content-Length: -1\r\n", b"hello" + SMUGGLED),
    "/te-chunked-identity": attack("/te-chunked-identity", b"Transfer-Encoding: chunked, identity\r\n",
                                   b"0\r\n\r\n" + SMUGGLED),
    "/te-identity": attack("/te-identity", b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
                           b"hello" + SMUGGLED),
    "/te-twice": attack("/te-twice", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                        b"0\r\n\r\n" + SMUGGLED),
    "/te-space-before-colon": attack("/te-space-before-colon",
                                     b"Content-Length: %d\r\nTransfer-Encoding : chunked\r\n" % (5 + len(SMUGGLED)),
                                     b"0\r\n\r\n" + SMUGGLED),
    "/te-xchunked": attack("/te-xchunked", b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "/te-obs-fold": attack("/te-obs-fold", b"Content-Length: %d\r\nTransfer-Encoding:\r\n chunked\r\n"
                           % (5 + len(SMUGGLED)), b"0\r\n\r\n" + SMUGGLED),
    "/te-http10": b"POST /te-http10 HTTP/1.0\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "/chunk-bad-size": attack("/chunk-bad-size", b"Transfer-Encoding: chunked\r\n",
                              b"zz\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "/chunk-negative": attack("/chunk-negative", b"Transfer-Encoding: chunked\r\n",
                              b"-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "/chunk-size-overflow": attack("/chunk-size-overflow", b"Transfer-Encoding: chunked\r\n",
                                   b"fffffffffffffffffffff1\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "/chunk-short": attack("/chunk-short", b"Transfer-Encoding: chunked\r\n",
                           b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
}


@pytest.fixture(scope="module", params=MASTERS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    with gateway_with_broker(tmp_path_factory.mktemp(f"smuggling-{request.param}"), request.param) as (s, rec):
        yield s, rec


@pytest.mark.parametrize("path", sorted(ATTACKS))
def test_smuggling_attempt_refused(gateway, path: str) -> None:
    s, rec = gateway
    answer = exchange(s.listen_port, ATTACKS[path])
    # 400 and a closed connection, or a connection closed without an answer: nothing else.
    assert statuses(answer) in ([400], []), answer[:300]
    assert b"/smuggled" not in rec.all_bytes(), f"smuggled bytes reached the upstream: {rec.lines()}"
    assert path not in {line.split()[1] for line in rec.lines() if " " in line}
    still_serves(s, rec, f"/after{path}")


def test_refusals_are_events_and_the_smuggled_request_is_not(gateway) -> None:
    """A refused request that got as far as its head is shipped as a 400 event; the hidden
    request never becomes an event of its own."""
    s, _ = gateway
    sent = {f"/events{path}": ATTACKS[path].replace(b"POST " + path.encode(), b"POST /events" + path.encode(), 1)
            for path in ("/cl-te", "/te-cl", "/cl-dup")}
    for data in sent.values():
        assert statuses(exchange(s.listen_port, data)) == [400]
    events = events_by_path(s, {*sent, "/smuggled"}, timeout_s=5.0)
    assert {p: [(e.status, e.answered_by) for e in ev] for p, ev in events.items()} == {
        **{p: [(400, "bad_request")] for p in sent}, "/smuggled": []}


def test_chunked_request_then_pipelined_request_reach_upstream_as_two(gateway) -> None:
    s, rec = gateway
    data = (attack("/chunked-ok", b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            + b"GET /pipelined HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
    assert statuses(exchange(s.listen_port, data)) == [200, 200]
    lines = rec.lines()
    first = lines.index("POST /chunked-ok HTTP/1.1")
    assert lines[first + 1] == "GET /pipelined HTTP/1.1"
    assert rec.bodies[first] == b"hello world"


def test_unchunk_sets_content_length() -> None:
    req = http.Request.make("POST", "http://api.test/x", b"hello", {"Transfer-Encoding": "Chunked"})
    assert unchunk(req)
    assert "transfer-encoding" not in req.headers and req.headers["content-length"] == "5"


@pytest.mark.parametrize("headers", [{}, {"Content-Length": "5"}, {"Transfer-Encoding": "gzip, chunked"}])
def test_unchunk_leaves_other_framing(headers: dict[str, str]) -> None:
    req = http.Request.make("POST", "http://api.test/x", b"hello", headers)
    before = list(req.headers.fields)
    assert not unchunk(req)
    assert list(req.headers.fields) == before
