"""How the embedded broker's reads slow down as a partition fills (Tansu 0.6, ``memory://``).

Starts a fresh Tansu and measures:

1. **one hop** (produce one record and wait for the ack, then read it with a 5 ms fetch
   wait; median and p90 of :data:`HOP_SAMPLES`) on a one-partition topic as it fills with
   one-record batches (what the gateway's ``linger_ms=0`` producer writes when requests
   come one at a time), and on a second topic holding the same number of records in
   100-record batches;
2. **the broker's CPU** (cores, from ``/proc``) while one consumer with the workers'
   20 ms fetch wait reads :data:`FLOW_RATE_PER_S` records a second from a topic that
   already holds :data:`FLOW_BATCHES` one-record batches, spread over each of
   :data:`FLOW_PARTITIONS` partitions.

The finding this bench keeps measurable: a read costs the broker time in proportion to
the batches the partition holds, not to the records (so a long-running embedded stack
slows down; Apache Kafka finds an offset through its index instead). More partitions
split the same batches, so each read scans fewer.

Prints two tables and writes ``bench/results/broker_growth.json``. Not a test (about a
minute on this machine).

    .venv/bin/python bench/broker_growth.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import cpu_s  # noqa: E402
from gatewatch.broker import start_tansu  # noqa: E402
from gatewatch.netutil import free_port, wait_for_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "broker_growth.json"
#: Records in the one-record-batch topic at each hop measurement (cumulative).
FILL_STEPS = (0, 1000, 2000, 4000, 8000)
#: Records per batch on the batched topic.
BATCHED = 100
#: Hops measured at each step.
HOP_SAMPLES = 40
#: One-record batches already in the topic read during the CPU measurement.
FLOW_BATCHES = 12_000
#: Records a second produced during the CPU measurement (the quality harness's attack rate).
FLOW_RATE_PER_S = 150
#: Partition counts of the CPU measurement (the same batches spread over more partitions).
FLOW_PARTITIONS = (4, 16, 32, 64)
#: Seconds of the CPU measurement.
FLOW_S = 5.0
#: Size of one record, bytes (a request event is ~0.7 KB).
RECORD = b"r" * 700


async def _fill(bootstrap: str, topic: str, records: int, per_batch: int, partitions: int = 1) -> None:
    """Append ``records`` records to ``topic`` in batches of ``per_batch`` (round robin over
    ``partitions``); a one-record batch is sent and acknowledged before the next."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0 if per_batch == 1 else 50,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        for start in range(0, records, per_batch):
            partition = (start // per_batch) % partitions
            acks = [await producer.send(topic, RECORD, partition=partition)
                    for _ in range(min(per_batch, records - start))]
            await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def _hops(bootstrap: str, topic: str) -> dict[str, float]:
    """Median and p90 (ms) of :data:`HOP_SAMPLES` produce → read hops at the end of ``topic``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=5, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        marker = await producer.send_and_wait(topic, b"marker")
        consumer.seek(tp, marker.offset + 1)   # the true end (Tansu's "latest" is not, DESIGN.md)
        hops = []
        for _ in range(HOP_SAMPLES):
            t = time.perf_counter()
            await producer.send_and_wait(topic, b"hop")
            while not await consumer.getmany(tp, timeout_ms=1000):
                pass
            hops.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()
        await consumer.stop()
    hops.sort()
    return {"hop_ms_median": round(statistics.median(hops), 2), "hop_ms_p90": round(hops[int(0.9 * (len(hops) - 1))], 2)}


async def _flow_cores(bootstrap: str, broker_pid: int, topic: str, partitions: int) -> dict[str, float]:
    """Broker cores while one producer writes :data:`FLOW_RATE_PER_S` one-record batches a
    second to ``topic`` (round robin over its partitions) for :data:`FLOW_S` seconds and
    one consumer (20 ms fetch wait) follows them; with the consumer's hop (ms)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=20, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    for tp in parts:   # start at each partition's last record (Tansu's end offset quirk, DESIGN.md)
        last = await producer.send_and_wait(topic, b"marker", partition=tp.partition)
        consumer.seek(tp, last.offset + 1)
    hops: list[float] = []
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                hops.extend((now - float(r.value)) * 1000 for r in records)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)
    cpu0, t0 = cpu_s(broker_pid), time.monotonic()
    sent = 0
    while time.monotonic() - t0 < FLOW_S:
        await producer.send(topic, repr(time.time()).encode(), partition=sent % partitions)
        sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / FLOW_RATE_PER_S - time.monotonic()))
    cores = (cpu_s(broker_pid) - cpu0) / (time.monotonic() - t0)
    await asyncio.sleep(0.5)
    done.set()
    await reader
    await producer.stop()
    await consumer.stop()
    return {"broker_cores": round(cores, 3), "hop_ms_median": round(statistics.median(hops), 2) if hops else None}


async def measure(bootstrap: str, broker_pid: int) -> dict[str, list[dict]]:
    """Both measurements (module docstring) against the broker at ``bootstrap``."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic("growth.single", 1, 1), NewTopic("growth.batched", 1, 1)]
                        + [NewTopic(f"growth.p{n}", n, 1) for n in FLOW_PARTITIONS])
    admin.close()
    hops, filled = [], 0
    for records in FILL_STEPS:
        await _fill(bootstrap, "growth.single", records - filled, 1)
        await _fill(bootstrap, "growth.batched", records - filled, BATCHED)
        filled = records
        hops.append({"records": records, "one_record_batches": await _hops(bootstrap, "growth.single"),
                     f"batches_of_{BATCHED}": await _hops(bootstrap, "growth.batched")})
    flows = []
    for partitions in FLOW_PARTITIONS:
        topic = f"growth.p{partitions}"
        await _fill(bootstrap, topic, FLOW_BATCHES, 1, partitions)
        flows.append({"partitions": partitions, "batches": FLOW_BATCHES,
                      **await _flow_cores(bootstrap, broker_pid, topic, partitions)})
    return {"hops": hops, "flows": flows}


def main(argv: list[str] | None = None) -> None:
    """Command line: ``bench/broker_growth.py [--results FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    port = free_port()
    broker = start_tansu("127.0.0.1", port)
    try:
        wait_for_port("127.0.0.1", port)
        figures = asyncio.run(measure(f"127.0.0.1:{port}", broker.pid))
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    console = Console()
    t = Table(title="one hop (produce → read, 5 ms fetch wait), ms median / p90, as a one-partition topic fills")
    for col in ("records in the partition", "one-record batches", f"{BATCHED}-record batches"):
        t.add_column(col, justify="right")
    for row in figures["hops"]:
        one, many = row["one_record_batches"], row[f"batches_of_{BATCHED}"]
        t.add_row(f"{row['records']:,}", f"{one['hop_ms_median']} / {one['hop_ms_p90']}",
                  f"{many['hop_ms_median']} / {many['hop_ms_p90']}")
    console.print(t)
    t = Table(title=f"broker CPU: one consumer (20 ms fetch wait) following {FLOW_RATE_PER_S} records/s "
                    f"on a topic holding {FLOW_BATCHES:,} one-record batches")
    for col in ("partitions", "broker cores", "hop ms median"):
        t.add_column(col, justify="right")
    for row in figures["flows"]:
        t.add_row(str(row["partitions"]), str(row["broker_cores"]), str(row["hop_ms_median"]))
    console.print(t)
    results = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
               "broker": "tansu 0.6.0 memory://", **figures}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    console.print(f"results: {args.results}")


if __name__ == "__main__":
    main()
