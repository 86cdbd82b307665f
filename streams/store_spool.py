"""The store's spool: batches ClickHouse refused wait on disk and are written again later.

When an insert fails (engine down, disk full, a server that does not answer),
the sink does not drop the batch and does not stall the consumer: it appends
the batch's raw records to this spool (:class:`gatewatch.spool.Spool`, one
record per row, keyed by kind: ``requests``, ``detections``, ``decisions``)
and lets the consumer commit. A background task (:meth:`StoreSpool.drain`)
tries the oldest records again with capped exponential back-off and moves
the spool's cursor only after ClickHouse took them, so a crash in between
writes them twice — which the ReplacingMergeTree tables hide (queries use
FINAL). Records come back out in the order they went in.

The spool survives a process crash (segments are flushed to the OS after
each append; no fsync, so a power loss may lose the last writes). When the
spool is full or cannot be written, :meth:`StoreSpool.put` raises
:class:`SpoolUnavailable` and the caller keeps the batch (and its offsets
uncommitted): data is never dropped; the consumer then slows down to the
store's pace (fail-closed for storage).

Figures: ``spooled_<kind>`` (records put), ``despooled_<kind>`` (written
from the spool), ``store_spool_errors`` (failed retries), and the bytes
waiting (:attr:`StoreSpool.pending_bytes`), in the worker's health counters.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gatewatch.spool import Spool
from streams import counters

log = logging.getLogger(__name__)

#: Records read back per retry.
DRAIN_BATCH = 5000
#: Back-off between retries while the store fails (s): first, cap.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
#: How often an idle drain task looks at the spool (s).
IDLE_POLL_S = 0.5

#: ``kind -> write(raw values)``: parses and inserts one kind's records; raises on engine errors.
Writers = Mapping[str, Callable[[Sequence[bytes]], Awaitable[Any]]]


class SpoolUnavailable(RuntimeError):
    """The spool is full or cannot be written: the caller must keep the batch."""


class StoreSpool:
    """Batches waiting for the store, on disk (see the module docstring).

    ``directory``: the spool's directory (created; one process owns it, a second
    gets :class:`gatewatch.spool.SpoolLocked`); ``max_bytes``: its size cap.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.spool = Spool(directory, max_bytes)

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting on disk."""
        return self.spool.pending_bytes

    def put(self, kind: str, values: Sequence[bytes]) -> None:
        """Append ``values`` (raw records of ``kind``) in order, all or nothing.

        Raises :class:`SpoolUnavailable` when the spool cannot hold them all or
        the disk write fails."""
        if not values:
            return
        need = sum(len(v) for v in values) + len(values) * (len(kind) + 16)
        if self.spool.full(need):
            raise SpoolUnavailable(f"store spool full ({self.spool.pending_bytes} bytes waiting)")
        key = kind.encode()
        try:
            written = self.spool.append((key, value) for value in values)
        except (OSError, ValueError) as exc:
            raise SpoolUnavailable(f"store spool write failed: {exc}") from exc
        if written != len(values):   # cannot happen after the size check; never lose silently
            raise SpoolUnavailable(f"store spool took {written} of {len(values)} records")
        counters.incr(f"spooled_{kind}", len(values))

    async def drain(self, writers: Writers) -> None:
        """Forever: write the spool's records back through ``writers`` (by kind), oldest
        first, moving the cursor after each batch ClickHouse took; back off while it fails."""
        delay = RETRY_MIN_S
        while True:
            records, pos = self.spool.read(DRAIN_BATCH)
            if not records:
                self.spool.commit(pos)
                await asyncio.sleep(IDLE_POLL_S)
                continue
            by_kind: dict[str, list[bytes]] = defaultdict(list)
            for key, value in records:
                by_kind[key.decode(errors="replace")].append(value)
            try:
                for kind, values in by_kind.items():
                    write = writers.get(kind)
                    if write is None:
                        log.error("store spool holds %d records of unknown kind %r; skipped",
                                  len(values), kind)
                        counters.incr("store_spool_unknown", len(values))
                        continue
                    await write(values)
                    counters.incr(f"despooled_{kind}", len(values))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store still fails: keep the records, wait, retry
                counters.incr("store_spool_errors")
                log.warning("store still failing (%s: %s); %d bytes wait in the spool; retry in %.1f s",
                            type(exc).__name__, exc, self.spool.pending_bytes, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self.spool.commit(pos)
            delay = RETRY_MIN_S

    def close(self) -> None:
        """Close the spool's files (records not yet written stay for the next start)."""
        self.spool.close()
