"""Find known secrets, in their usual encodings, in everything a pipeline run wrote.

A secret is looked for as it was sent and as it may have been re-encoded on
its way: URL-encoded (``%XX``, and ``+`` for spaces), JSON-escaped, base64
(standard and URL-safe, at each of the three byte alignments it can have
inside a longer base64 text), and its first :data:`PREFIX_CHARS` characters
(a secret cut short by a field limit is still a leak). Credentials sent as
``user:pass`` (HTTP Basic) are secrets of their own.

Sinks: Kafka topics (keys, values and headers of every record, read to the
high-watermark returned with fetched records — Tansu answers "latest
offset" wrongly), ClickHouse tables (every column of every row, as TSV),
files (logs, spools, anything under a directory), and any text (alerts).

Not a conftest: test modules import it directly.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

from kafka import KafkaConsumer, TopicPartition

#: A secret's first characters that are searched for on their own (only for secrets
#: at least :data:`PREFIX_MIN_CHARS` long, so that the prefix is itself unguessable).
PREFIX_CHARS = 16
PREFIX_MIN_CHARS = 24


def _b64_forms(data: bytes) -> set[bytes]:
    """Base64 texts that appear inside any base64 encoding of a text containing ``data``:
    one per alignment (0, 1, 2 bytes before it), without the characters that depend on
    the neighbouring bytes; standard and URL-safe alphabets, padding removed."""
    forms = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data)
        # Skip the characters that mix in the bytes before, keep only complete 3-byte groups.
        body = encoded[(4 * shift + 2) // 3:4 * ((shift + len(data)) // 3)]
        if len(body) >= 12:
            forms.add(body)
            forms.add(body.replace(b"+", b"-").replace(b"/", b"_"))
    return forms


@dataclass(frozen=True)
class Needle:
    """One searched byte string: the ``secret`` it stands for and its ``form`` (encoding)."""

    secret: str
    form: str
    data: bytes


def needles(secret: str) -> list[Needle]:
    """Every searched form of ``secret`` (see the module docstring)."""
    raw = secret.encode()
    forms = {
        "raw": raw,
        "url": quote(secret, safe="").encode(),
        "url-plus": quote_plus(secret).encode(),
        "json": json.dumps(secret)[1:-1].encode(),
    }
    if len(secret) >= PREFIX_MIN_CHARS:
        forms["prefix"] = raw[:PREFIX_CHARS]
    out = [Needle(secret, name, data) for name, data in forms.items()]
    out += [Needle(secret, "base64", b) for b in sorted(_b64_forms(raw))]
    return out


@dataclass(frozen=True)
class Finding:
    """A secret found in a sink: ``where`` (topic/partition/offset, table, file), the form."""

    where: str
    secret: str
    form: str

    def __str__(self) -> str:
        return f"{self.where}: {self.secret!r} ({self.form})"


class Scanner:
    """Searches byte strings for the needles of ``secrets``; counts what it has scanned."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.needles = [n for s in sorted(set(secrets)) for n in needles(s)]
        self.scanned: dict[str, int] = {}

    def scan(self, sink: str, where: str, data: bytes) -> list[Finding]:
        """Findings in ``data`` (one per secret and form), counting one item of ``sink``."""
        self.scanned[sink] = self.scanned.get(sink, 0) + 1
        return [Finding(where, n.secret, n.form) for n in self.needles if n.data in data]

    def files(self, root: Path, skip: Iterable[Path] = ()) -> list[Finding]:
        """Findings in every file under ``root`` (sink ``files``), except those under ``skip``."""
        skipped = [p.resolve() for p in skip]
        found: list[Finding] = []
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.is_symlink() or any(path.resolve().is_relative_to(s) for s in skipped):
                continue
            found += self.scan("files", str(path.relative_to(root)), path.read_bytes())
        return found

    def topics(self, bootstrap_servers: str, timeout_s: float = 60.0) -> list[Finding]:
        """Findings in every record of every topic on the broker (sink ``records``)."""
        found: list[Finding] = []
        for topic, records in read_every_topic(bootstrap_servers, timeout_s):
            self.scanned["topics"] = self.scanned.get("topics", 0) + 1
            for partition, offset, key, value, headers in records:
                blob = b"\0".join([key or b"", value or b""] + [k.encode() + b"=" + (v or b"") for k, v in headers])
                found += self.scan("records", f"topic {topic}[{partition}]@{offset}", blob)
        return found

    def tables(self, client) -> list[Finding]:
        """Findings in every row of every table of the store (sink ``tables``; one item per
        table, its whole content as TSV). ``client``: a clickhouse-connect client."""
        found: list[Finding] = []
        rows = client.query("SELECT database, name FROM system.tables WHERE database NOT IN "
                            "('system', 'INFORMATION_SCHEMA', 'information_schema') "
                            "AND engine NOT IN ('View', 'MaterializedView')").result_rows
        for database, name in rows:
            data = client.raw_query(f"SELECT * FROM `{database}`.`{name}` FORMAT TabSeparated")
            found += self.scan("tables", f"table {database}.{name}", bytes(data))
        return found


Record = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]


def read_every_topic(bootstrap_servers: str, timeout_s: float) -> Iterator[tuple[str, list[Record]]]:
    """``(topic, records)`` for every topic on the broker, each read from offset 0 to the
    high-watermark of every partition (no group). Raises ``AssertionError`` if a
    partition's end is not reached within ``timeout_s``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=20)
    try:
        for topic in sorted(consumer.topics()):
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            records: list[Record] = []
            deadline = time.monotonic() + timeout_s
            while True:
                for tp, batch in consumer.poll(timeout_ms=200).items():
                    records += [(tp.partition, r.offset, r.key, r.value, list(r.headers or [])) for r in batch]
                ends = {tp: consumer.highwater(tp) for tp in tps}
                if all(end is not None and consumer.position(tp) >= end for tp, end in ends.items()):
                    break
                assert time.monotonic() < deadline, f"{topic}: high-watermark not reached: {ends}"
            yield topic, records
    finally:
        consumer.close()
