"""Re-keying helpers, in process: which events go where, packing under the size
limit, unpacking what was packed, malformed messages."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from gatewatch.events import MalformedRecord, RequestEvent
from streams.rekey import (Rekeyed, pack_event_progress, pack_events, pack_progress, pack_samples, sort_event,
                           unpack_events, unpack_samples)

T0 = datetime(2025, 3, 1, 12, tzinfo=timezone.utc)


def _event(i: int, **kw) -> RequestEvent:
    fields = dict(event_id=f"e{i}", ts=T0 + timedelta(seconds=i), client_ip="198.51.100.7", method="GET",
                  host="api", path=f"/orders/{i}", route="/orders/{id}", status=200, latency_ms=12.5,
                  principal="key-1")
    return RequestEvent(**(fields | kw))


def _sorted(*events: RequestEvent) -> Rekeyed:
    out = Rekeyed()
    for event in events:
        sort_event(out, event, event.to_json())
    return out


def test_events_go_where_their_detectors_need_them() -> None:
    anon = _event(2, principal="")
    login = _event(3, path="/login", route="/login", method="POST", login="failure", username_hash="u")
    gateway = _event(4, answered_by="decision", status=403, latency_ms=0.0)
    out = _sorted(_event(1), anon, login, gateway)
    assert sorted(out.by_principal) == [b"ip:198.51.100.7", b"principal:key-1"]
    assert out.logins == [login.to_json()]
    assert sorted(out.by_route) == [b"GET /orders/{id}", b"POST /login"]
    assert out.by_route[b"GET /orders/{id}"] == [[_event(1).ts.timestamp(), 12.5, "e1"],
                                                 [anon.ts.timestamp(), 12.5, "e2"]]
    # gateway answers reach no detector; NaN latencies are not samples
    assert not _sorted(gateway).by_route and not _sorted(_event(5, latency_ms=float("nan"))).by_route


def test_packed_events_round_trip_under_the_size_limit() -> None:
    events = [_event(i) for i in range(50)]
    raws = [e.to_json() for e in events]
    progress = {1: events[-1].ts.timestamp()}
    messages = list(pack_events(raws, progress, max_bytes=2000))
    assert len(messages) > 1 and all(len(m) <= 2000 for m in messages)
    batches = [unpack_events(m) for m in messages]
    assert [e for b in batches for e in b.events] == events
    assert all(b.progress == progress and b.malformed == 0 for b in batches)
    assert list(pack_events([b'{"x":' + b"1" * 5000 + b"}"], {}, max_bytes=100))  # too big: sent alone
    assert list(pack_events([], progress)) == []
    only = unpack_events(pack_event_progress(progress))
    assert (only.events, only.progress) == ([], progress)


def test_packed_samples_round_trip() -> None:
    samples = [[T0.timestamp() + i, float(i), f"e{i}"] for i in range(10)]
    progress = {0: T0.timestamp() + 9, 3: T0.timestamp()}
    messages = list(pack_samples(b"GET /x", samples, progress, per_message=4))
    assert len(messages) == 3
    got = [s for m in messages for s in unpack_samples(m).samples]
    assert got == [(T0 + timedelta(seconds=i), float(i), f"e{i}") for i in range(10)]
    assert {unpack_samples(m).series for m in messages} == {"GET /x"}
    assert all(unpack_samples(m).progress == progress for m in messages)
    only = unpack_samples(pack_progress(progress))
    assert (only.series, only.samples, only.progress) == (None, [], progress)


def test_malformed_items_are_counted_and_messages_refused() -> None:
    good = _event(1).to_json()
    batch = unpack_events(b'{"events": [' + good + b',{"event_id": 1}, 7]}')
    assert [e.event_id for e in batch.events] == ["e1"] and batch.malformed == 2 and batch.progress == {}
    for raw in (b"not json", b'{"a": 1}', b"\xff", b"[]", b'{"events": {}}', b'{"events": [], "progress": 3}'):
        with pytest.raises(MalformedRecord):
            unpack_events(raw)
    for raw in (b"[]", b'{"series": 1, "samples": []}', b'{"series": "x", "samples": [[1, 2]]}',
                b'{"series": null, "samples": [[1, 2, "e"]]}', b'{"series": "x", "samples": [], "progress": []}',
                json.dumps({"series": "x", "samples": [["t", 1, "e"]]}).encode()):
        with pytest.raises(MalformedRecord):
            unpack_samples(raw)
