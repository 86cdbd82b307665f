"""On-disk spool (gatewatch/spool.py): the gateway's event spool and the worker's store spool."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewatch.spool import FRAME_OVERHEAD, Spool, SpoolLocked, encode


def records(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"10.0.0.{i % 7}".encode(), f'{{"n": {i}}}'.encode()) for i in range(start, start + n)]


def drain(spool: Spool, batch: int = 7) -> list[tuple[bytes, bytes]]:
    out = []
    while True:
        got, pos = spool.read(batch)
        if not got:
            return out
        out.extend(got)
        spool.commit(pos)


def test_append_read_commit_in_order_across_segments(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    assert spool.append(records(50)) == 50
    assert len(list(tmp_path.glob("seg-*"))) > 5
    first, pos = spool.read(10)
    assert first == records(10)
    again, _ = spool.read(10)      # not committed: read again from the cursor
    assert again == first
    spool.commit(pos)
    spool.append(records(5, start=50))    # appends while replaying keep the order
    assert drain(spool) == records(45, start=10)
    assert spool.empty and spool.pending_bytes == 0
    assert list(tmp_path.glob("seg-*")) == []    # consumed segments deleted
    spool.close()


def test_reopen_resumes_at_the_cursor(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=300)
    spool.append(records(30))
    got, pos = spool.read(12)
    spool.commit(pos)
    spool.close()
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=300)   # a gateway restart
    spool.append(records(3, start=30))
    assert drain(spool) == records(21, start=12)
    spool.close()


def test_cap_refuses_and_reports_what_was_written(tmp_path):
    frame = len(encode(b"10.0.0.1", b'{"n": 1}'))
    spool = Spool(tmp_path, max_bytes=frame * 5, segment_bytes=1 << 20)
    assert spool.append(records(8)) == 5
    assert spool.full() and spool.append(records(1)) == 0
    got, pos = spool.read(2)
    spool.commit(pos)
    assert spool.append(records(3)) == 2          # room for two again
    spool.close()


def test_torn_tail_is_cut_on_open(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records(4))
    spool.close()
    seg = next(tmp_path.glob("seg-*"))
    seg.write_bytes(seg.read_bytes() + encode(b"k", b"half a record")[:-3])   # crash mid-write
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.corrupt == 1
    spool.append(records(1, start=4))
    assert drain(spool) == records(5)
    spool.close()


def test_one_owner_per_directory(tmp_path):
    spool = Spool(tmp_path, max_bytes=1000)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path, max_bytes=1000)
    spool.close()
    Spool(tmp_path, max_bytes=1000).close()


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.one_of(st.tuples(st.just("append"), st.integers(0, 20)),
                              st.tuples(st.just("read"), st.integers(1, 15)),
                              st.tuples(st.just("reopen"), st.just(0))), max_size=25),
       segment=st.integers(FRAME_OVERHEAD + 20, 400))
def test_spool_is_a_fifo_that_survives_reopen(tmp_path_factory, ops, segment):
    """Property: whatever the interleaving of appends, reads+commits and reopenings,
    records come out exactly once, in the order they went in."""
    directory = tmp_path_factory.mktemp("spool")
    spool = Spool(directory, max_bytes=1 << 20, segment_bytes=segment)
    appended: list[tuple[bytes, bytes]] = []
    out: list[tuple[bytes, bytes]] = []
    for op, n in ops:
        if op == "append":
            batch = records(n, start=len(appended))
            assert spool.append(batch) == n
            appended.extend(batch)
        elif op == "read":
            got, pos = spool.read(n)
            out.extend(got)
            spool.commit(pos)
        else:
            spool.close()
            spool = Spool(directory, max_bytes=1 << 20, segment_bytes=segment)
    out.extend(drain(spool))
    spool.close()
    assert out == appended
