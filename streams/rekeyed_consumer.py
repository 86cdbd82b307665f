"""Consumers of the re-keyed topics (by principal, logins, by route): their detectors'
windows survive a restart exactly, as the per-IP windows of the request topic do.

Each re-keyed topic is read with the machinery of
:mod:`streams.checkpointed_consumer` in its own group (``<app id>-<kind>``):
explicit positions, offsets committed only after the detections and decisions
of what was read are delivered, replay points on the checkpoint topic. On
assignment, the messages between a partition's replay point and its committed
offset are fed to the partition's detectors warm (:mod:`streams.merged`, the
same path as live messages, nothing emitted); the decision policy is seeded
from the decisions topic, so a detection repeated after a restart decides
nothing twice. Events the request consumer re-keyed twice around a crash are
dropped by their origin (:mod:`streams.resends`).

The replay span of a topic (``replay_s``) is the longest window plus quiet
period of its detectors; each detector module says what that rebuilds exactly
and what it does not (``REPLAY_S`` in :mod:`streams.detect_geo`, :mod:`streams.detect_behaviour`,
:mod:`streams.detect_logins`, :mod:`streams.detect_latency`). Everything that
depends on the low watermark (state eviction, behaviour and latency windows
closed, the failed-login spike's buckets) is exact for events that are not
late: a watermark is a processing-time judgement (idle sources) and a replay
runs at its own pace.

"Exact" means: the same state as without the restart *for the same order of
arrival*. A re-keyed partition receives the events of several request
partitions interleaved batch by batch, so when a key's events come from
several request partitions, which of them crosses a threshold depends on that
interleaving — after a restart as in any run; with one source, the order is
the order sent.

These topics carry few, large messages (a re-keyed batch each), so Faust's
per-message cost does not matter here; what this module brings is the
ownership of offsets that exact state needs, which Faust's agents do not give
(they commit on their own and lose their windows on a SIGKILL).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.structs import ConsumerRecord

from streams.app import app
from streams.checkpointed_consumer import CheckpointedConsumer
from streams.decide import publish
from streams.merged import MergedInput, Stage
from streams.rekey import Batch
from streams.topics import parse_or_count

#: Re-keyed messages per batch: a message holds up to ~1000 events, a replay runs at
#: ~60k events/s (BOLA, measured in process), and a batch holds the event loop — the
#: group heartbeats too (session timeout 6 s) — for its whole length.
MAX_MESSAGES = 20


class RekeyedConsumer(CheckpointedConsumer):
    """Reads re-keyed ``topic`` (messages unpacked by ``unpack``:
    :func:`streams.rekey.unpack_principal`, :func:`streams.rekey.unpack_events` or
    :func:`streams.rekey.unpack_samples`) and runs the detectors that ``stages`` builds
    for each partition; replays ``replay_s`` seconds of event time on assignment.
    Malformed messages are counted as ``malformed_<kind>`` and skipped."""

    def __init__(self, kind: str, topic: str, unpack: Callable[[bytes], Batch],
                 stages: Callable[[], list[Stage]], replay_s: float,
                 on_new_partitions: Callable[[], Awaitable[Any]] | None = None) -> None:
        super().__init__(f"{app.conf.id}-{kind}", topic, kind, replay_s, MAX_MESSAGES)
        self.unpack = unpack
        self.on_new_partitions = on_new_partitions
        self.merged = MergedInput(kind, stages)
        self._handled: dict[int, int] = {}

    def _parse(self, partition: int, records: list[ConsumerRecord]
               ) -> list[tuple[int, float | None, tuple[int, Batch]]]:
        out = []
        for rec in records:
            batch = parse_or_count(self.unpack, rec.value, f"malformed_{self.kind}")
            if batch is not None:
                out.append((rec.offset, batch.newest_s, (partition, batch)))
        return out

    def _warm(self, items: list[tuple[int, Batch]]) -> None:
        self.merged.run(items, live=False)

    async def _live(self, items: list[tuple[int, Batch]], ends: dict[int, int]) -> None:
        if items:
            await publish(self.merged.run(items))
        self._handled.update(ends)

    def _committable(self) -> dict[int, int]:
        return self._handled

    async def _before_new_partitions(self, new: list[int]) -> None:
        if self.on_new_partitions is not None:
            await self.on_new_partitions()

    def _forget(self, partition: int) -> None:
        self.merged.forget(partition)

    def _new_log(self, partition: int) -> None:
        self.merged.resends.forget(partition)
        self._handled.pop(partition, None)

    def _revoked(self, partition: int) -> None:
        self._handled.pop(partition, None)

    def _replay_low_s(self, partition: int) -> float | None:
        return self.merged.watermark(partition)

    def describe(self) -> dict[str, Any]:
        """``{"partitions": [...], "committed": n}`` for the health document."""
        return {"partitions": sorted(self.assigned), "committed": self.committed_total()}
