"""The persistent sending queue (``storage: file``): a segmented log with a checksum per record.

Layout of a queue directory::

    LOCK                  held (flock) by the process using the queue
    ACK                   position of the first record not yet acknowledged: segment, offset, crc32
    0000000001.seg ...    segments; each record is ``<u32 length><u32 crc32(data)>`` then the data

Records are appended to the newest segment by one thread (every disk operation of a queue runs on
its own single-thread executor, off the event loop). ``put`` returns once the records are written
and, per ``fsync``, on stable storage: ``batch`` one ``fdatasync`` per call (one accepted message),
``always`` one per record, ``never`` none (the page cache survives a crash of the process, not of
the machine). Consumers read records back in order; acknowledged records advance ``ACK`` over the
contiguous acknowledged prefix, and a segment wholly behind it is deleted.

On open, the segments behind ``ACK`` are deleted and the others scanned: a record whose length runs
past the end of its file (a torn write) or whose checksum does not match ends the valid part of that
segment; it is counted in :attr:`DiskQueue.corrupt` and skipped, and the records of the following
segments are delivered. New records always go to a new segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

_HEADER = struct.Struct("<II")
_ACK = struct.Struct("<QQI")
_SUFFIX = ".seg"
_MAX_RECORD = 256 * 1024 * 1024
"""A length above this is taken for corruption, not a record."""


class StorageError(Exception):
    """The persistent queue could not write or read (disk full, I/O error, directory gone)."""


class DiskQueue:
    """Records on disk until acknowledged. ``size`` (records) and ``bytes`` are read on the event loop."""

    persistent = True
    RECORD_OVERHEAD = _HEADER.size

    def __init__(self, directory: Path, max_bytes: int, fsync: str) -> None:
        self.directory = directory
        self._fsync = fsync
        self._segment_bytes = max(min(max_bytes // 8, 64 * 1024 * 1024), 16 * 1024)
        self._executor: ThreadPoolExecutor | None = None
        self.size = 0
        """Records written and not acknowledged (queued or in flight)."""
        self.bytes = 0
        """Bytes of the segment files on disk."""
        self.corrupt = 0
        """Torn or corrupt records skipped when the queue was opened."""
        self._unread = 0
        self._ready = asyncio.Event()
        # Owned by the executor's thread:
        self._ends: dict[int, int] = {}  # segment id -> end of its valid records
        self._counts: dict[int, int] = {}  # segment id -> records in it (not behind ACK)
        self._write_id = 0
        self._write_file: BinaryIO | None = None
        self._read_pos = (0, 0)
        self._read_file: tuple[int, BinaryIO] | None = None
        self._ack_pos = (0, 0)
        self._ack_fd = -1
        self._lock_fd = -1
        # ticket -> (end position, records, acknowledged); None while being read. Insertion = read order.
        self._tickets: dict[int, tuple[tuple[int, int], int, bool] | None] = {}
        self._next_ticket = 0

    # -- event-loop side ---------------------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None, "queue is not open"
        try:
            # Shielded: a cancelled caller (shutdown) must not cancel a job the thread has not begun yet.
            return await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._executor, fn, *args))
        except OSError as exc:
            raise StorageError(f"{self.directory}: {exc.strerror or exc}") from exc

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"queue-{self.directory.name}")
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self.size = self._unread = sum(self._counts.values())
        if self._unread:
            self._ready.set()

    async def put(self, items: Sequence[bytes]) -> None:
        assert self._executor is not None, "queue is not open"
        job = asyncio.get_running_loop().run_in_executor(self._executor, self._append, items)

        def written(done: asyncio.Future[None]) -> None:  # counted even when the caller was cancelled
            if not done.cancelled() and done.exception() is None:
                self.size += len(items)
                self._unread += len(items)
                self._ready.set()

        job.add_done_callback(written)
        try:
            await asyncio.shield(job)
        except OSError as exc:
            raise StorageError(f"{self.directory}: {exc.strerror or exc}") from exc

    async def get(self, max_items: int) -> tuple[int, list[bytes]]:
        while not self._unread:
            self._ready.clear()
            await self._ready.wait()
        take = min(max_items, self._unread)
        self._unread -= take
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tickets[ticket] = None
        try:
            items, end = await self._run(self._read, take)
        except StorageError:
            # The cursor did not move past these records: nothing is handed out; the next get retries.
            del self._tickets[ticket]
            self._unread += take
            raise
        # Cancelled (shutdown): the ticket stays unacknowledged, so ACK never passes these records.
        self._tickets[ticket] = (end, take, False)
        return ticket, items

    async def ack(self, ticket: int) -> None:
        entry = self._tickets[ticket]
        assert entry is not None, "acknowledged before it was read"
        end, count, _ = entry
        self._tickets[ticket] = (end, count, True)
        self.size -= count
        # Advance ACK over the acknowledged prefix (tickets are numbered in read order).
        new_pos = None
        while self._tickets:
            first = next(iter(self._tickets))
            entry = self._tickets[first]
            if entry is None or not entry[2]:
                break
            new_pos = entry[0]
            del self._tickets[first]
        if new_pos is not None:
            await self._run(self._advance, new_pos)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    # -- the executor's thread ---------------------------------------------------------------------

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise OSError(0, "the queue directory is in use by another process") from None
        segments = sorted(int(p.stem) for p in self.directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        self._ack_fd = os.open(self.directory / "ACK", os.O_RDWR | os.O_CREAT, 0o644)
        raw = os.pread(self._ack_fd, _ACK.size, 0)
        ack = (segments[0] if segments else 0, 0)
        if len(raw) == _ACK.size:
            seg, off, crc = _ACK.unpack(raw)
            if crc == zlib.crc32(raw[:16]):
                ack = (seg, off)
        for seg in segments:
            path = self._segment(seg)
            if seg < ack[0]:
                path.unlink()
                continue
            start = ack[1] if seg == ack[0] else 0
            end, count, bad = _scan(path, start)
            self._ends[seg] = end
            self._counts[seg] = count
            self.corrupt += bad
            self.bytes += path.stat().st_size
        remaining = sorted(self._ends)
        if remaining and ack[0] not in self._ends:
            ack = (remaining[0], 0)
        self._ack_pos = self._read_pos = ack
        self._write_id = (max(segments) if segments else 0) + 1

    def _segment(self, seg: int) -> Path:
        return self.directory / f"{seg:010d}{_SUFFIX}"

    def _append(self, items: Sequence[bytes]) -> None:
        f = self._write_file
        if f is None or self._ends[self._write_id] >= self._segment_bytes:
            f = self._roll()
        seg = self._write_id
        start = self._ends[seg]
        try:
            if self._fsync == "always":
                for item in items:
                    _write_all(f, _HEADER.pack(len(item), zlib.crc32(item)) + item)
                    os.fdatasync(f.fileno())
            else:
                parts: list[bytes] = []
                for item in items:
                    parts.append(_HEADER.pack(len(item), zlib.crc32(item)))
                    parts.append(item)
                _write_all(f, b"".join(parts))
                if self._fsync == "batch":
                    os.fdatasync(f.fileno())
        except OSError:
            # Partly written: cut the segment back and start the next write in a new one.
            self._write_file = None
            with contextlib.suppress(OSError):
                f.truncate(start)
            with contextlib.suppress(OSError):
                f.close()
            self._sync_bytes(seg)
            raise
        end = f.tell()
        self.bytes += end - start
        self._ends[seg] = end
        self._counts[seg] = self._counts.get(seg, 0) + len(items)

    def _sync_bytes(self, seg: int) -> None:
        try:
            size = self._segment(seg).stat().st_size
        except OSError:
            return
        self.bytes += size - self._ends.get(seg, 0)
        self._ends[seg] = min(self._ends.get(seg, 0), size)

    def _roll(self) -> BinaryIO:
        if self._write_file is not None:
            self._write_file.close()
            self._write_id += 1
        self._write_file = None
        while self._write_id in self._ends:  # a segment cut back after a failed write is closed for good
            self._write_id += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        f = open(self._segment(self._write_id), "ab", buffering=0)
        self._ends[self._write_id] = 0
        if self._fsync != "never":
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._write_file = f
        return f

    def _read(self, count: int) -> tuple[list[bytes], tuple[int, int]]:
        items: list[bytes] = []
        seg, off = self._read_pos
        while len(items) < count:
            end = self._ends.get(seg)
            if end is None or off >= end:
                following = [s for s in self._ends if s > seg]
                if not following:
                    raise OSError(0, "queue index out of step with its segments")
                seg, off = min(following), 0
                continue
            if self._read_file is None or self._read_file[0] != seg:
                if self._read_file is not None:
                    self._read_file[1].close()
                self._read_file = (seg, open(self._segment(seg), "rb"))
            f = self._read_file[1]
            f.seek(off)
            while len(items) < count and off < end:
                length, _crc = _HEADER.unpack(f.read(_HEADER.size))
                items.append(f.read(length))
                off += _HEADER.size + length
        self._read_pos = (seg, off)
        return items, (seg, off)

    def _advance(self, pos: tuple[int, int]) -> None:
        seg, off = pos
        for old in sorted(s for s in self._ends if s < seg or (s == seg and off >= self._ends[s])):
            if old == self._write_id:
                continue
            if self._read_file is not None and self._read_file[0] == old:
                self._read_file[1].close()
                self._read_file = None
            path = self._segment(old)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                size = 0
            self.bytes -= size
            del self._ends[old]
            self._counts.pop(old, None)
        self._ack_pos = pos
        head = struct.pack("<QQ", seg, off)
        os.pwrite(self._ack_fd, head + struct.pack("<I", zlib.crc32(head)), 0)
        if self._fsync == "always":
            os.fdatasync(self._ack_fd)

    def _close(self) -> None:
        for f in (self._write_file, self._read_file[1] if self._read_file else None):
            if f is not None:
                f.close()
        self._write_file = self._read_file = None
        for fd in (self._ack_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._ack_fd = self._lock_fd = -1


def _scan(path: Path, start: int) -> tuple[int, int, int]:
    """The end of the valid records of a segment from ``start``, how many, and 1 if a bad one ends it."""
    count = 0
    off = start
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            header = f.read(_HEADER.size)
            if not header:
                return off, count, 0
            if len(header) < _HEADER.size:
                return off, count, 1
            length, crc = _HEADER.unpack(header)
            if length > _MAX_RECORD:
                return off, count, 1
            data = f.read(length)
            if len(data) < length or zlib.crc32(data) != crc:
                return off, count, 1
            off += _HEADER.size + length
            count += 1


def _write_all(f: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = f.write(view)
        if not written:
            raise OSError(28, "no space left on device (short write)")
        view = view[written:]
