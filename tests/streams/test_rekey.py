"""Re-keying helpers, in process: which events go where (and to which partition),
packing under the size limit with each event's origin, unpacking what was packed,
malformed messages; and the filter that drops re-sent events by their origin."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from aiokafka.partitioner import DefaultPartitioner

from gatewatch.events import MalformedRecord, PrincipalRequest, RequestEvent
from streams.rekey import (Rekeyed, SeriesSamples, pack_event_progress, pack_events, pack_rows, pack_samples,
                           partition_for, principal_row, sort_event, unpack_events, unpack_principal, unpack_samples)
from streams.resends import ResendFilter

T0 = datetime(2025, 3, 1, 12, tzinfo=timezone.utc)


def _event(i: int, **kw) -> RequestEvent:
    fields = dict(event_id=f"e{i}", ts=T0 + timedelta(seconds=i), client_ip="198.51.100.7", method="GET",
                  host="api", path=f"/orders/{i}", route="/orders/{id}", status=200, latency_ms=12.5,
                  principal="key-1")
    return RequestEvent(**(fields | kw))


def _sorted(*events: RequestEvent, partitions: int = 4) -> Rekeyed:
    out = Rekeyed(partitions, partitions)
    for event in events:
        sort_event(out, event, event.to_json())
    return out


def test_partitions_are_kafkas_default_partitioner() -> None:
    for key in (b"principal:key-1", b"ip:198.51.100.7", b"GET /orders/{id}", b""):
        assert partition_for(key, 4) == DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3])


def test_events_go_where_their_detectors_need_them() -> None:
    anon = _event(2, principal="")
    login = _event(3, path="/login", route="/login", method="POST", login="failure", username_hash="u")
    gateway = _event(4, answered_by="decision", status=403, latency_ms=0.0)
    out = _sorted(_event(1), anon, login, gateway)
    expected: dict[int, list[list]] = {}
    # every request of a principal (geo, behaviour), login included; an anonymous caller's
    # object requests stay on the request topic, where BOLA judges them (streams/detect_bola.py)
    for key, event in ((b"principal:key-1", _event(1)), (b"principal:key-1", login)):
        expected.setdefault(partition_for(key, 4), []).append(principal_row(event))
    assert out.by_principal == expected
    assert out.logins == [login.to_json()]
    orders, logins = partition_for(b"GET /orders/{id}", 4), partition_for(b"POST /login", 4)
    assert out.by_route[orders]["GET /orders/{id}"] == SeriesSamples([_event(1).ts.timestamp(), anon.ts.timestamp()],
                                                                      [12.5, 12.5], ["e1", "e2"])
    assert out.by_route[logins]["POST /login"] == SeriesSamples([login.ts.timestamp()], [12.5], ["e3"])
    # gateway answers reach no detector; NaN latencies are not samples
    assert not _sorted(gateway).by_route and not _sorted(_event(5, latency_ms=float("nan"))).by_route


def test_many_principals_make_one_message_per_partition() -> None:
    events = [_event(i, principal=f"key-{i}") for i in range(400)]
    out = _sorted(*events, partitions=4)
    assert len(out.by_principal) == 4 and sum(len(v) for v in out.by_principal.values()) == 400
    for partition, rows in out.by_principal.items():
        for event in unpack_principal(next(pack_rows(rows, {}))).items:
            assert partition_for(f"principal:{event.principal}".encode(), 4) == partition


def test_principal_rows_round_trip_to_the_projection_under_the_size_limit() -> None:
    events = [_event(i, ts=T0 + timedelta(seconds=i, microseconds=123_457), country="FR" if i % 2 else None,
                     asn=3215 if i % 3 else None) for i in range(50)]
    rows = [principal_row(e) for e in events]
    origins = [p for i in range(50) for p in (1, 200 + i)]
    progress = {1: events[-1].ts.timestamp()}
    by_count = list(pack_rows(rows, progress, origins, per_message=20))
    by_bytes = list(pack_rows(rows, progress, origins, max_bytes=2000))
    assert len(by_count) == 3 and len(by_bytes) > 3 and all(len(m) <= 2000 for m in by_bytes)
    for messages in (by_count, by_bytes):
        batches = [unpack_principal(m) for m in messages]
        items = [r for b in batches for r in b.items]
        # the projection carries exactly the event's values, microseconds included
        assert items == [PrincipalRequest.of(e) for e in events]
        assert all(r.ts.tzinfo is timezone.utc for r in items)
        assert [o for b in batches for o in b.origins or []] == [(1, 200 + i) for i in range(50)]
        assert [t for b in batches for t in b.times] == [e.ts.timestamp() for e in events]
        assert all(b.progress == progress and b.malformed == 0 for b in batches)
    assert len(list(pack_rows([["x" * 5000] + rows[0][1:]], {}, max_bytes=100))) == 1  # too big: sent alone
    [only] = pack_rows([], progress)
    assert (unpack_principal(only).items, unpack_principal(only).progress) == ([], progress)
    with pytest.raises(ValueError):
        list(pack_rows(rows[:1], {}, origins=[1]))


def test_the_older_events_shape_is_still_read_by_principal() -> None:
    # A worker not yet upgraded sends whole events; its messages are read as before.
    events = [_event(i) for i in range(3)]
    batch = unpack_principal(next(pack_events([e.to_json() for e in events], {0: 1.0}, origins=[0, 1, 0, 2, 0, 3])))
    assert batch.items == events and batch.origins == [(0, 1), (0, 2), (0, 3)] and batch.progress == {0: 1.0}


def test_packed_events_round_trip_under_the_size_limit() -> None:
    events = [_event(i) for i in range(50)]
    raws = [e.to_json() for e in events]
    progress = {1: events[-1].ts.timestamp()}
    messages = list(pack_events(raws, progress, max_bytes=2000))
    assert len(messages) > 1 and all(len(m) <= 2000 for m in messages)
    batches = [unpack_events(m) for m in messages]
    assert [e for b in batches for e in b.items] == events
    assert all(b.progress == progress and b.malformed == 0 and b.origins is None for b in batches)
    assert list(pack_events([b'{"x":' + b"1" * 5000 + b"}"], {}, max_bytes=100))  # too big: sent alone
    assert list(pack_events([], progress)) == []
    only = unpack_events(pack_event_progress(progress))
    assert (only.items, only.progress, only.newest_s) == ([], progress, None)


def test_origins_travel_with_events_and_samples() -> None:
    events = [_event(i, principal=f"key-{i % 3}") for i in range(60)]
    out = Rekeyed(4, 4)
    for offset, event in enumerate(events):
        sort_event(out, event, event.to_json(), (2, 100 + offset))
    seen = []
    for partition, rows in out.by_principal.items():
        for message in pack_rows(rows, {}, max_bytes=1500, origins=out.principal_origins[partition]):
            assert len(message) <= 1500
            batch = unpack_principal(message)
            assert batch.times == [e.ts.timestamp() for e in batch.items]
            seen += [(origin, e.event_id) for origin, e in zip(batch.origins or [], batch.items)]
    assert sorted(seen) == [((2, 100 + i), f"e{i}") for i in range(60)]
    with pytest.raises(ValueError):
        list(pack_events([events[0].to_json()], {}, origins=[2]))
    [message] = pack_samples(next(iter(out.by_route.values())), {})
    batch = unpack_samples(message)
    assert batch.origins == [(2, 100 + i) for i in range(60)]
    assert [s[3] for s in batch.items] == [f"e{i}" for i in range(60)] and batch.newest_s == events[-1].ts.timestamp()
    # A malformed event leaves its origin out with it.
    mixed = unpack_events(b'{"events": [7, ' + events[1].to_json() + b'], "src": [2, 5, 2, 6]}')
    assert mixed.origins == [(2, 6)] and mixed.malformed == 1


def test_resent_events_are_dropped_by_origin_and_a_new_log_is_not() -> None:
    f = ResendFilter()
    t = T0.timestamp()
    assert f.fresh(0, ["a", "b", "c"], [(1, 10), (2, 4), (1, 11)], [t, t, t + 1]) == ["a", "b", "c"]
    # The tail from request partition 1 comes again after a crash, with one new event.
    assert f.fresh(0, ["b2", "c", "d"], [(2, 4), (1, 11), (1, 12)], [t, t + 1, t + 2]) == ["d"]
    # Within one message, origins need not be in order (samples are grouped by route).
    assert f.fresh(0, ["f", "e"], [(1, 14), (1, 13)], [t + 3, t + 3]) == ["f", "e"]
    # Another re-keyed partition has its own marks; messages without origins pass.
    assert f.fresh(3, ["c"], [(1, 11)], [t + 1]) == ["c"] and f.fresh(0, ["x"], None, [t]) == ["x"]
    # Offsets starting over with newer events: a new log (the broker lost its data).
    assert f.fresh(0, ["n0"], [(1, 0)], [t + 60]) == ["n0"]
    assert f.fresh(0, ["n1", "old"], [(1, 1), (1, 0)], [t + 61, t + 60]) == ["n1"]
    f.forget(0)
    assert f.fresh(0, ["c"], [(1, 11)], [t + 1]) == ["c"]


def test_packed_samples_round_trip() -> None:
    a, b = SeriesSamples(), SeriesSamples()
    for i in range(7):
        a.add(T0.timestamp() + i + 0.123456, float(i), f"a{i}")
    for i in range(3):
        b.add(T0.timestamp() + i, i + 0.25, f"b{i}")
    progress = {0: T0.timestamp() + 9, 3: T0.timestamp()}
    messages = list(pack_samples({"GET /a": a, "GET /b": b}, progress, per_message=4))
    assert len(messages) == 3
    unpacked = [unpack_samples(m) for m in messages]
    assert all(u.progress == progress for u in unpacked)
    assert all(len(u.items) <= 4 and u.origins is None for u in unpacked)
    assert [s for u in unpacked for s in u.items] == \
        [("GET /a", T0.timestamp() + i + 0.123456, float(i), f"a{i}") for i in range(7)] + \
        [("GET /b", T0.timestamp() + i, i + 0.25, f"b{i}") for i in range(3)]
    assert [t for u in unpacked for t in u.times] == [s[1] for u in unpacked for s in u.items]
    # The older row shape is still read.
    rows = unpack_samples(b'{"progress": {"1": 5.5}, "samples": {"GET /a": [[1.5, 2, "e1", 1, 9], [2.5, 3.5, "e2", 1, 10]]}}')
    assert rows.items == [("GET /a", 1.5, 2.0, "e1"), ("GET /a", 2.5, 3.5, "e2")]
    assert rows.origins == [(1, 9), (1, 10)] and rows.progress == {1: 5.5} and rows.times == [1.5, 2.5]
    [only] = pack_samples({}, progress)
    assert unpack_samples(only).items == [] and unpack_samples(only).progress == progress


def test_malformed_items_are_counted_and_messages_refused() -> None:
    good = _event(1).to_json()
    batch = unpack_events(b'{"events": [' + good + b',{"event_id": 1}, 7]}')
    assert [e.event_id for e in batch.items] == ["e1"] and batch.malformed == 2 and batch.progress == {}
    for raw in (b"not json", b'{"a": 1}', b"\xff", b"[]", b'{"events": {}}', b'{"events": [], "progress": 3}',
                b'{"events": [], "src": [1]}', b'{"events": [7], "src": [1, "2"]}'):
        with pytest.raises(MalformedRecord):
            unpack_events(raw)
    row = principal_row(_event(1))
    bad_rows = [row[:-1], row + [1], [None] + row[1:], row[:1] + ["t"] + row[2:], row[:1] + [float("inf")] + row[2:],
                row[:1] + [1e20] + row[2:], row[:7] + ["200"] + row[8:], row[:7] + [True] + row[8:],
                row[:9] + [7] + row[10:], row[:10] + ["AS1"], 7, {"event_id": "e"}]
    message = pack_rows([row] + bad_rows + [row], {}, origins=[p for i in range(len(bad_rows) + 2) for p in (0, i)])
    batch = unpack_principal(next(message))
    assert [r.event_id for r in batch.items] == ["e1", "e1"] and batch.malformed == len(bad_rows)
    assert batch.origins == [(0, 0), (0, len(bad_rows) + 1)]
    for raw in (b"not json", b'{"a": 1}', b"\xff", b"[]", b'{"rows": {}}', b'{"rows": [], "progress": 3}',
                b'{"rows": [], "src": [1]}'):
        with pytest.raises(MalformedRecord):
            unpack_principal(raw)
    for raw in (b"[]", b'{"samples": []}', b'{"samples": {"x": [[1, 2]]}}', b'{"samples": {"x": [["t", 1, "e"]]}}',
                b'{"samples": {}, "progress": []}', b'{"samples": {"x": [[1, 2, "e", 3]]}}',
                b'{"columns": []}', b'{"columns": {"x": {"t": [1], "ms": [2]}}}',
                b'{"columns": {"x": {"t": [1, 2], "ms": [2], "id": ["e"]}}}',
                b'{"columns": {"x": {"t": ["1"], "ms": [2], "id": ["e"]}}}',
                b'{"columns": {"x": {"t": [1], "ms": [NaN], "id": ["e"]}}}',
                b'{"columns": {"x": {"t": [1], "ms": [2], "id": [3]}}}',
                b'{"columns": {"x": {"t": [1], "ms": [2], "id": ["e"], "src": [1]}}}',
                b'{"columns": {"x": {"t": [1], "ms": [2], "id": ["e"], "src": [1, "2"]}}}'):
        with pytest.raises(MalformedRecord):
            unpack_samples(raw)


def test_a_valid_message_and_one_with_a_bad_item_unpack_the_same_events() -> None:
    # Valid messages are validated in one pass over their JSON; one bad item sends the message
    # item by item: the events that are valid come out the same either way.
    events = [_event(i, ts=T0 + timedelta(seconds=i, microseconds=7)) for i in range(5)]
    events.append(_event(5).model_copy(update={"ts": datetime(2025, 3, 1, 14, tzinfo=timezone(timedelta(hours=2)))}))
    raws = [e.to_json() for e in events]
    origins = [p for i in range(len(raws)) for p in (i % 2, 100 + i)]
    progress = {0: 1740830400.25, 3: 1740830401.5}
    [whole] = pack_events(raws, progress, origins=origins)
    [with_bad] = pack_events(raws + [b'{"event_id": 1}'], progress, origins=origins + [1, 999])
    a, b = unpack_events(whole), unpack_events(with_bad)
    assert (a.malformed, b.malformed) == (0, 1)
    assert a.items == b.items == events
    assert a.times == b.times == [e.ts.timestamp() for e in events]
    assert a.origins == b.origins == [(i % 2, 100 + i) for i in range(len(raws))]
    assert a.progress == b.progress == progress
    assert all(e.ts.tzinfo is timezone.utc for e in a.items[:5]) and a.items[5].ts.utcoffset() == timedelta(hours=2)
