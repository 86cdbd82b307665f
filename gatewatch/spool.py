"""On-disk spool: append-only segment files of (key, value) records with a size cap and a read cursor.

Where the gateway's request events wait while the broker is away (and across
a gateway restart), and where the worker's store keeps batches ClickHouse
refused until it takes them again (``streams/store_spool.py``), in the spirit
of Fluent Bit's filesystem buffering and Vector's disk buffers. Layout of the spool directory::

    seg-0000000000000001.spool   oldest segment (being replayed)
    seg-0000000000000002.spool   …
    seg-0000000000000007.spool   tail segment (being appended to)
    cursor                       "SEGMENT OFFSET": replay position, written atomically
    lock                         flock()ed by the owning process

A segment is a sequence of frames; one frame per record::

    u32 big-endian  payload length
    u32 big-endian  CRC-32 of the payload (zlib.crc32)
    payload         u16 big-endian key length, key bytes, value bytes

Records are read back in the order they were appended. :meth:`Spool.read`
returns a batch and the position after it; :meth:`Spool.commit` moves the
cursor there (after the batch was delivered) and deletes fully consumed
segments. A crash between delivery and commit re-delivers that batch
(at-least-once). On open, the tail segment is checked frame by frame and cut
at the first torn or corrupt frame (a crash mid-write); a corrupt frame in
an older segment ends that segment (counted in :attr:`Spool.corrupt`).

Size cap: :meth:`append` refuses records once the bytes waiting on disk
would exceed ``max_bytes``; the caller counts them as dropped. Writes go
through a buffered file and are flushed to the OS after each
:meth:`append` call (no fsync: a process crash loses nothing, a power loss
may lose the last writes). All methods are synchronous and meant to be
called in batches from one background task, never from a request hook.
Only one process may own a directory (``flock`` on ``lock``); a second
gets :class:`SpoolLocked`.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_HEADER = struct.Struct(">II")
_KEYLEN = struct.Struct(">H")
FRAME_OVERHEAD = _HEADER.size + _KEYLEN.size
#: Largest payload accepted (a corrupt length field must not make us allocate gigabytes).
MAX_RECORD = 16 * 1024 * 1024
_PREFIX, _SUFFIX = "seg-", ".spool"


class SpoolLocked(RuntimeError):
    """Another process owns the spool directory."""


@dataclass(frozen=True, order=True)
class Position:
    """A place in the spool: segment number and byte offset in it."""

    segment: int
    offset: int


def _name(seq: int) -> str:
    return f"{_PREFIX}{seq:016d}{_SUFFIX}"


def encode(key: bytes, value: bytes) -> bytes:
    """One frame for ``key``/``value``. Raises ``ValueError`` if the key is over 65535 bytes
    or the record over :data:`MAX_RECORD`."""
    if len(key) > 0xFFFF:
        raise ValueError("spool key too long")
    payload = _KEYLEN.pack(len(key)) + key + value
    if len(payload) > MAX_RECORD:
        raise ValueError("spool record too large")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _read_frame(f) -> tuple[bytes, bytes] | None:
    """The next record of open file ``f``, or None at the end or at a torn/corrupt frame
    (the file position is then undefined)."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    length, crc = _HEADER.unpack(header)
    if length < _KEYLEN.size or length > MAX_RECORD:
        return None
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    (key_len,) = _KEYLEN.unpack_from(payload)
    if _KEYLEN.size + key_len > length:
        return None
    return payload[2:2 + key_len], payload[2 + key_len:]


class Spool:
    """An append-only spool in ``directory`` (created if missing).

    ``max_bytes``: most bytes waiting (appended, not yet committed) on disk;
    ``segment_bytes``: a new segment starts once the tail reaches this size.
    Raises :class:`SpoolLocked` if another process owns the directory and
    ``OSError`` if it cannot be created.
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 4 * 1024 * 1024) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("spool sizes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.corrupt = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.directory / "lock", "a+b")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolLocked(f"spool {self.directory} is owned by another process") from None
        self._sizes: dict[int, int] = {}      # segment -> size in bytes
        for path in self.directory.glob(f"{_PREFIX}*{_SUFFIX}"):
            try:
                self._sizes[int(path.name[len(_PREFIX):-len(_SUFFIX)])] = path.stat().st_size
            except ValueError:
                continue
        self._cursor = self._load_cursor()
        for seq in [s for s in self._sizes if s < self._cursor.segment]:
            self._delete(seq)
        if self._sizes:
            self._repair_tail()
        self._tail_seq = max(self._sizes, default=max(self._cursor.segment, 1))
        self._writer = None
        self._reader = None
        self._reader_seq = -1

    # --- state ---------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes appended and not yet committed (frame overhead included)."""
        total = sum(size for seq, size in self._sizes.items() if seq >= self._cursor.segment)
        if self._cursor.segment in self._sizes:
            total -= self._cursor.offset
        return max(0, total)

    @property
    def empty(self) -> bool:
        """True when every appended record has been committed."""
        return self.pending_bytes == 0

    def full(self, incoming: int = 1) -> bool:
        """True if ``incoming`` more bytes would exceed the cap."""
        return self.pending_bytes + incoming > self.max_bytes

    # --- writing -------------------------------------------------------------------------

    def append(self, records: Iterable[tuple[bytes, bytes]]) -> int:
        """Append ``(key, value)`` records in order; returns how many were written.
        Writing stops at the first record that would exceed the cap (the rest are not
        written: the caller counts them). Raises ``OSError`` on a write error."""
        written = 0
        pending = self.pending_bytes
        try:
            for key, value in records:
                frame = encode(key, value)
                if pending + len(frame) > self.max_bytes:
                    break
                writer = self._tail_writer(len(frame))
                writer.write(frame)
                self._sizes[self._tail_seq] += len(frame)
                pending += len(frame)
                written += 1
        finally:
            if self._writer is not None:
                self._writer.flush()
        return written

    def _tail_writer(self, frame_len: int):
        size = self._sizes.get(self._tail_seq)
        if size is not None and size > 0 and size + frame_len > self.segment_bytes:
            self._close_writer()
            self._tail_seq += 1
            size = None
        if size is None:
            self._sizes[self._tail_seq] = 0
        if self._writer is None:
            self._writer = open(self.directory / _name(self._tail_seq), "ab")
        return self._writer

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # --- reading -------------------------------------------------------------------------

    def read(self, max_records: int) -> tuple[list[tuple[bytes, bytes]], Position]:
        """Up to ``max_records`` records from the cursor on, and the position after them.
        Reading does not move the cursor: :meth:`commit` does."""
        records: list[tuple[bytes, bytes]] = []
        pos = self._cursor
        while len(records) < max_records:
            if pos.segment not in self._sizes:
                later = [s for s in self._sizes if s > pos.segment]
                if not later:
                    break
                pos = Position(min(later), 0)
                continue
            size = self._sizes[pos.segment]
            if pos.offset >= size:
                later = [s for s in self._sizes if s > pos.segment]
                if not later:
                    break
                pos = Position(min(later), 0)
                continue
            reader = self._reader_at(pos)
            record = _read_frame(reader)
            if record is None:   # corrupt frame in a closed segment: skip the rest of it
                self.corrupt += 1
                pos = Position(pos.segment, size)
                continue
            records.append(record)
            pos = Position(pos.segment, reader.tell())
        return records, pos

    def _reader_at(self, pos: Position):
        if self._reader is None or self._reader_seq != pos.segment:
            if self._reader is not None:
                self._reader.close()
            self._reader = open(self.directory / _name(pos.segment), "rb")
            self._reader_seq = pos.segment
        if self._reader.tell() != pos.offset:
            self._reader.seek(pos.offset)
        return self._reader

    def commit(self, pos: Position) -> None:
        """Move the cursor to ``pos`` (records before it were delivered) and delete consumed
        segments; when everything is consumed, start over with a fresh tail segment."""
        self._cursor = pos
        for seq in [s for s in self._sizes if s < pos.segment]:
            self._delete(seq)
        if self.empty and self._sizes:
            self._close_writer()
            for seq in list(self._sizes):
                self._delete(seq)
            self._tail_seq = pos.segment + 1
            self._cursor = Position(self._tail_seq, 0)
        self._save_cursor()

    def close(self) -> None:
        """Close files and release the directory lock."""
        self._close_writer()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._lock.close()

    # --- files ---------------------------------------------------------------------------

    def _delete(self, seq: int) -> None:
        if seq == self._reader_seq and self._reader is not None:
            self._reader.close()
            self._reader, self._reader_seq = None, -1
        self._sizes.pop(seq, None)
        try:
            os.unlink(self.directory / _name(seq))
        except FileNotFoundError:
            pass

    def _load_cursor(self) -> Position:
        try:
            seg, off = (self.directory / "cursor").read_text().split()
            return Position(int(seg), int(off))
        except (OSError, ValueError):
            return Position(min(self._sizes, default=1), 0)

    def _save_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        tmp.write_text(f"{self._cursor.segment} {self._cursor.offset}\n")
        os.replace(tmp, self.directory / "cursor")

    def _repair_tail(self) -> None:
        """Cut the tail segment after its last whole, valid frame (a crash mid-write)."""
        tail = max(self._sizes)
        path = self.directory / _name(tail)
        good = 0
        with open(path, "rb") as f:
            while _read_frame(f) is not None:
                good = f.tell()
        if good < self._sizes[tail]:
            self.corrupt += 1
            with open(path, "r+b") as f:
                f.truncate(good)
            self._sizes[tail] = good
