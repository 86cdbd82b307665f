"""The sink when ClickHouse fails, on the real engine (chDB): a detached ``requests``
table makes every insert fail as a lost table would. Batches go to the store spool
(on disk, surviving a restart), other tables keep taking writes, and once the
table is back the spool is written out: every record stored once, none lost."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from gatewatch.events import Decision, RequestEvent, new_id, parse_request_event
from storage.writer import WriteResult, write_decisions, write_requests
from streams import counters, sink
from streams.store_spool import StoreSpool

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _events(n: int) -> list[RequestEvent]:
    return [RequestEvent(event_id=new_id(), ts=T0 + timedelta(milliseconds=i), client_ip="198.51.100.7",
                         method="GET", host="api.example", path=f"/orders/{i}", route="/orders/{id}",
                         status=200) for i in range(n)]


def _stored(client: Client) -> tuple[int, int]:
    """(rows as queries see them, distinct event ids)."""
    return tuple(client.query("SELECT count(), uniqExact(event_id) FROM requests FINAL").result_rows[0])


@pytest.fixture
def spool_dir(tmp_path: Path):
    yield tmp_path / "store-spool"
    sink._spool = None   # the module's spool is opened from settings on first use


def test_failed_inserts_are_spooled_and_written_back_once(store: Client, spool_dir: Path) -> None:
    async def write_req(events: Sequence[RequestEvent]) -> WriteResult:
        return write_requests(store, events)

    async def write_dec(decisions: Sequence[Decision]) -> WriteResult:
        return write_decisions(store, decisions)

    async def scenario() -> None:
        sink._spool = StoreSpool(spool_dir, max_bytes=10 * 1024 * 1024)
        before = counters.snapshot()
        events = _events(200)
        raws = [e.to_json() for e in events]
        store.command("DETACH TABLE requests")
        for i in range(0, 200, 50):   # four batches while the table is gone: none raises, none lost
            await sink.write_or_spool("requests", events[i:i + 50], raws[i:i + 50], write_req)
        after = counters.snapshot()
        assert after.get("spooled_requests", 0) - before.get("spooled_requests", 0) == 200
        assert after.get("store_errors", 0) - before.get("store_errors", 0) == 4
        # The worker's other writes go on meanwhile.
        decision = Decision(scope="ip", value="198.51.100.7", created_at=T0, expires_at=T0 + timedelta(hours=1))
        await sink.write_or_spool("decisions", [decision], [decision.to_json()], write_dec)
        assert store.query("SELECT count() FROM decisions FINAL").result_rows[0][0] == 1

        # A restart in between: the spool is still there.
        sink._spool.close()
        sink._spool = StoreSpool(spool_dir, max_bytes=10 * 1024 * 1024)
        assert sink._spool.pending_bytes > 0

        # The drain keeps failing (backs off) until the table is back, then writes everything.
        drain = asyncio.create_task(sink._spool.drain({"requests": lambda values: sink._write_raw(
            "requests", parse_request_event, write_req, values)}))
        await asyncio.sleep(1.2)
        assert counters.snapshot().get("store_spool_errors", 0) > before.get("store_spool_errors", 0)
        store.command("ATTACH TABLE requests")
        for _ in range(100):
            if sink._spool.pending_bytes == 0:
                break
            await asyncio.sleep(0.1)
        drain.cancel()
        assert sink._spool.pending_bytes == 0
        assert _stored(store) == (200, 200)
        assert {r[0] for r in store.query("SELECT event_id FROM requests FINAL").result_rows} == \
            {e.event_id for e in events}

    asyncio.run(scenario())


def test_full_spool_never_drops_it_waits_for_the_store(store: Client, spool_dir: Path) -> None:
    async def write_req(events: Sequence[RequestEvent]) -> WriteResult:
        return write_requests(store, events)

    async def scenario() -> None:
        sink._spool = StoreSpool(spool_dir, max_bytes=2048)   # room for a few events only
        events = _events(40)
        store.command("DETACH TABLE requests")
        pending = asyncio.create_task(sink.write_or_spool("requests", events, [e.to_json() for e in events],
                                                          write_req))
        await asyncio.sleep(1.5)
        assert not pending.done()          # neither stored nor spooled: it holds on (no ack upstream)
        assert sink._spool.pending_bytes == 0   # all or nothing: no partial batch on disk
        store.command("ATTACH TABLE requests")
        await asyncio.wait_for(pending, 15)
        assert _stored(store) == (40, 40)

    asyncio.run(scenario())
