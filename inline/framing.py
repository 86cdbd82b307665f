"""Forward request bodies with ``Content-Length`` framing only.

The gateway buffers each request body whole (HTTP/1 chunked bodies are
de-chunked as they arrive; bodies above ``body_size_limit`` never get this
far, see :mod:`inline.size_limits`). mitmproxy would forward a chunked request
chunked again, keeping ``Transfer-Encoding: chunked``; an upstream that frames
requests by ``Content-Length`` only (HTTP/1.0 servers, some embedded stacks)
would then read the chunk lines as the start of another request — the CL.TE
desynchronisation behind request smuggling (RFC 9112 §11.2). Like nginx with
request buffering (``proxy_request_buffering on``), :class:`Framing` sends the
buffered body with a ``Content-Length`` instead, so both kinds of upstream
agree on where the request ends.

Requests mitmproxy refused as ambiguous (both ``Content-Length`` and
``Transfer-Encoding``, several of either, an unknown coding: 400 with
``validate_inbound_headers``, on by default) never reach this addon. Other
codings (``gzip, chunked``) are left as they are: the body is still
gzip-coded, and only the upstream may undo that.
"""

from __future__ import annotations

from mitmproxy import http

from inline.flowstate import answered


def unchunk(request: http.Request) -> bool:
    """Replace ``Transfer-Encoding: chunked`` on a buffered ``request`` by a
    ``Content-Length`` of its body (bytes). Returns True if the framing changed;
    a streamed request or another coding is left alone (False)."""
    coding = request.headers.get("transfer-encoding")
    if coding is None or coding.strip().lower() != "chunked" or request.stream:
        return False
    del request.headers["transfer-encoding"]
    request.headers["content-length"] = str(len(request.raw_content or b""))
    return True


class Framing:
    """Addon: forward de-chunked request bodies with ``Content-Length`` (see the module docstring)."""

    def request(self, flow: http.HTTPFlow) -> None:
        if not answered(flow):
            unchunk(flow.request)
