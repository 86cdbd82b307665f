"""The broker's own latency while a benchmark runs: a producer and a consumer on topics of
their own, in a process of their own.

Every :data:`INTERVAL_S` the probe sends one message (aiokafka, ``linger_ms=0``) and
records how long the broker took to acknowledge it (``ack_ms``) and how long until its
consumer (``fetch_max_wait_ms`` = :data:`FETCH_WAIT_MS`, no group, assigned partition)
read it (``hop_ms``): one broker hop, the unit the decision loop is made of, measured
apart from gatewatch's code. One JSON line per message goes to the output file;
:func:`summarize` turns the lines into per-interval medians and p90s.

The probe moves to a new topic every :data:`TOPIC_EVERY_S` seconds. Tansu 0.6's ``memory://`` engine reads a partition in time that grows with the
batches the partition holds (``bench/broker_growth.py``: ~1 ms a hop per 1,000
one-record batches); a probe on one topic for the whole run (~3,000 batches) would
measure its own topic's growth, not the broker's load.

Run: ``python -m bench.broker_probe BOOTSTRAP OUT.jsonl SECONDS`` (``bench/quality.py``
starts it for the traffic's length). The probe adds ~20 produce and ≤ 200 fetch
requests a second to the broker.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

#: The probe's topics (one partition each): this prefix and a number.
TOPIC = "gatewatch.bench.probe"
#: Seconds on one topic before the probe moves to the next.
TOPIC_EVERY_S = 10.0
#: Seconds between two probe messages.
INTERVAL_S = 0.05
#: The consumer's longest fetch wait, ms (as the quality harness's followers).
FETCH_WAIT_MS = 5


async def probe(bootstrap: str, out: Path, duration_s: float) -> None:
    """Send and read probe messages for ``duration_s`` seconds; one JSON line per message
    read, ``{"t": epoch s sent, "ack_ms": ..., "hop_ms": ...}``, appended to ``out``."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=FETCH_WAIT_MS,
                                enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    sent: dict[bytes, tuple[float, float]] = {}   # value -> (sent at epoch s, ack ms)
    read_at: dict[bytes, float] = {}               # value -> read at epoch s

    async def read() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                now = time.time()
                for rec in records:
                    read_at[rec.value] = now

    def write(f: Any) -> None:
        for value in [v for v in sent if v in read_at]:
            t, ack_ms = sent.pop(value)
            f.write(json.dumps({"t": t, "ack_ms": ack_ms, "hop_ms": (read_at.pop(value) - t) * 1000}) + "\n")
        f.flush()

    reader = asyncio.create_task(read())
    topic, number = "", 0
    try:
        with out.open("a") as f:
            start = time.monotonic()
            while time.monotonic() - start < duration_s:
                if not topic or time.monotonic() - start >= number * TOPIC_EVERY_S:
                    await asyncio.sleep(0.5)   # the last ones of the topic before
                    write(f)
                    topic = f"{TOPIC}.{number}"
                    await asyncio.to_thread(_create_topic, admin, topic)
                    tp = TopicPartition(topic, 0)
                    consumer.assign([tp])
                    consumer.seek(tp, 0)   # never "latest" on Tansu (DESIGN.md)
                    number += 1
                value = repr(time.time()).encode()
                t = time.time()
                await producer.send_and_wait(topic, value)
                sent[value] = (t, (time.time() - t) * 1000)
                write(f)
                await asyncio.sleep(INTERVAL_S)
            await asyncio.sleep(0.5)   # the last ones
            write(f)
    finally:
        reader.cancel()
        await producer.stop()
        await consumer.stop()
        admin.close()


def _create_topic(admin: KafkaAdminClient, topic: str) -> None:
    """Create ``topic`` with one partition (if it is not there yet)."""
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    except TopicAlreadyExistsError:
        pass


def summarize(lines: list[dict[str, float]], bucket_s: float = 10.0) -> list[dict[str, Any]]:
    """Per ``bucket_s`` seconds from the first message: ``{"from_s", "n", "hop_ms_median",
    "hop_ms_p90", "hop_ms_max", "ack_ms_median", "ack_ms_p90"}`` (ms rounded to 0.1)."""
    if not lines:
        return []
    t0 = min(r["t"] for r in lines)
    buckets: dict[int, list[dict[str, float]]] = {}
    for r in lines:
        buckets.setdefault(int((r["t"] - t0) // bucket_s), []).append(r)

    def p90(values: list[float]) -> float:
        return sorted(values)[int(0.9 * (len(values) - 1))]

    out = []
    for index, rows in sorted(buckets.items()):
        hops, acks = [r["hop_ms"] for r in rows], [r["ack_ms"] for r in rows]
        out.append({"from_s": index * bucket_s, "n": len(rows),
                    "hop_ms_median": round(statistics.median(hops), 1), "hop_ms_p90": round(p90(hops), 1),
                    "hop_ms_max": round(max(hops), 1), "ack_ms_median": round(statistics.median(acks), 1),
                    "ack_ms_p90": round(p90(acks), 1)})
    return out


def read_lines(path: Path) -> list[dict[str, float]]:
    """The probe's JSON lines (a cut last line is skipped)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


if __name__ == "__main__":
    asyncio.run(probe(sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])))
