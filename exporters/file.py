"""Exporter ``file``: appends one JSON record per line to a local file, rotating it by size.

Batches wait in a bounded queue; a single writer task drains it and does the file I/O on a worker
thread so the event loop never blocks on disk. When the queue is full the pipeline is told to retry
later (receivers answer 503) rather than growing memory. A write that fails (disk full) is retried
with backoff; on shutdown the queue is drained and flushed before the file closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from webrtc_observer.component import Factory, RetryLater, Settings, Worker
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch
from webrtc_observer.records import json_lines

_LINGER_UNTIL = 64
"""Batches already waiting that make lingering pointless: a busy writer writes at once."""
_MAX_BATCHES_PER_WRITE = 4096
"""A busy collector's loop turns slowly; each turn of the writer takes all that waits, up to this."""


@dataclass
class RotationConfig:
    max_megabytes: int = 100
    """Rotate when the file would grow past this size; 0 never rotates."""
    max_backups: int = 5
    """Rotated files kept as ``path.1`` (newest) … ``path.N``; older ones are deleted."""

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        if self.max_megabytes < 0:
            issues.append(("max_megabytes", "must be 0 (never rotate) or more"))
        if self.max_backups < 0:
            issues.append(("max_backups", "must be 0 or more"))
        return issues


@dataclass
class FileExporterConfig:
    path: str = "data/reports.jsonl"
    rotation: RotationConfig = field(default_factory=RotationConfig)
    queue_size: int = 1000
    """Batches that may wait for the disk; when full, the pipeline is asked to retry later."""
    retry_max_interval: Duration = Duration(30)
    drain_timeout: Duration = Duration(10)
    """On shutdown, how long queued records may take to reach the disk before they are counted as failed."""
    linger: Duration = Duration(0.005)
    """How long the writer waits for more batches after the first, so that a busy collector writes
    fewer, larger chunks (each write is a hand-over to a thread); 0 writes what is there at once."""

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        if not self.path:
            issues.append(("path", "must not be empty"))
        if not 0 <= self.linger <= 1:
            issues.append(("linger", "must be between 0 and 1s"))
        if self.queue_size < 1:
            issues.append(("queue_size", "must be at least 1"))
        return issues


class FileExporter:
    def __init__(self, settings: Settings, config: FileExporterConfig) -> None:
        self._config = config
        self._log = settings.logger
        self._path = _worker_path(Path(config.path), settings.worker)
        self._max_bytes = config.rotation.max_megabytes * 1024 * 1024
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=config.queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._file: object | None = None
        self._size = 0
        self._closing = False
        self._failing_since: float | None = None
        self._inflight = 0
        label = str(settings.id)
        t = settings.telemetry
        self._sent = t.counter("exporter_sent_records", "Records written or delivered", ("exporter",))
        self._failed = t.counter("exporter_send_failed_records", "Records that could not be written or delivered", ("exporter",))
        self._write_errors = t.counter("exporter_write_errors", "Failed write attempts (retried)", ("exporter",))
        self._queue_gauge = t.gauge("exporter_queue_size", "Batches waiting in the exporter queue", ("exporter",))
        self._queue_gauge.set(0, label)
        t.gauge("exporter_queue_capacity", "Capacity of the exporter queue", ("exporter",)).set(config.queue_size, label)
        self._label = label

    def failing_since(self) -> float | None:
        """When the current streak of failed writes began (``/health`` turns unhealthy after a while)."""
        return self._failing_since

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = await asyncio.to_thread(open, self._path, "ab", 0)
        self._size = self._path.stat().st_size
        self._writer = asyncio.create_task(self._drain(), name=f"file-exporter-{self._label}")
        self._log.info("writing records", path=str(self._path))

    async def consume(self, batch: Batch) -> None:
        if self._closing:
            raise RetryLater("exporter is shutting down")
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            raise RetryLater(f"file exporter queue is full ({self._config.queue_size} batches)") from None
        self._queue_gauge.set(self._queue.qsize(), self._label)

    async def _drain(self) -> None:
        while True:
            batch = await self._queue.get()
            if self._config.linger and not self._closing and self._queue.qsize() < _LINGER_UNTIL:
                await asyncio.sleep(self._config.linger)
            batches = [batch]
            while not self._queue.empty() and len(batches) < _MAX_BATCHES_PER_WRITE:  # what waits, in one go
                batches.append(self._queue.get_nowait())
            chunks, records = json_lines(batches)
            self._inflight = records
            await self._write_with_retry(chunks, records)
            self._inflight = 0
            for _ in batches:
                self._queue.task_done()
            self._queue_gauge.set(self._queue.qsize(), self._label)

    async def _write_with_retry(self, chunks: list[bytes], records: int) -> None:
        pending = [memoryview(chunk) for chunk in chunks]
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(self._write, pending)
                self._sent.add(records, self._label)
                self._failing_since = None
                return
            except OSError as exc:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                self._write_errors.add(1, self._label)
                self._log.error("write failed, will retry", path=str(self._path), error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.retry_max_interval)

    def _write(self, pending: list[memoryview]) -> None:
        """Runs on a worker thread: rotate if needed, then append ``pending``, taking off what is written.

        The file is unbuffered, and ``pending`` keeps only what has not reached it yet: a retry after
        a failed write (disk full) goes on where the failure stopped, with no line written twice.
        """
        size = sum(map(len, pending))
        if self._max_bytes and self._size and self._size + size > self._max_bytes and self._path.is_file():
            self._rotate()
        while pending:
            written = self._file.write(pending[0])  # type: ignore[attr-defined]
            self._size += written
            rest = pending[0][written:]
            if rest:
                pending[0] = rest
            else:
                pending.pop(0)

    def _rotate(self) -> None:
        self._file.close()  # type: ignore[attr-defined]
        backups = self._config.rotation.max_backups
        if backups == 0:
            self._path.unlink(missing_ok=True)
        else:
            oldest = self._path.with_name(f"{self._path.name}.{backups}")
            oldest.unlink(missing_ok=True)
            for i in range(backups - 1, 0, -1):
                src = self._path.with_name(f"{self._path.name}.{i}")
                if src.exists():
                    os.replace(src, self._path.with_name(f"{self._path.name}.{i + 1}"))
            os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))
        self._file = open(self._path, "ab", buffering=0)
        self._size = 0
        self._log.info("rotated", path=str(self._path))

    async def shutdown(self) -> None:
        """Write everything already accepted, then close the file."""
        self._closing = True
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._queue.join(), self._config.drain_timeout)
            except TimeoutError:
                lost = self._inflight + sum(len(b) for b in _drain_nowait(self._queue))
                self._failed.add(lost, self._label)
                self._log.error("records not written before the drain timeout", records=lost, path=str(self._path))
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._file is not None:
            f, self._file = self._file, None
            await asyncio.to_thread(_sync_close, f)
            self._log.info("file closed", path=str(self._path), records=int(self._sent.value(self._label)))


def _worker_path(path: Path, worker: Worker) -> Path:
    """With several workers, each writes its own file: ``reports.jsonl`` becomes ``reports-0.jsonl``..."""
    if worker.count == 1:
        return path
    return path.with_name(f"{path.stem}-{worker.index}{path.suffix}")


def _drain_nowait(queue: asyncio.Queue[Batch]) -> list[Batch]:
    batches = []
    while not queue.empty():
        batches.append(queue.get_nowait())
        queue.task_done()
    return batches


def _sync_close(f: object) -> None:
    # Not a regular file (/dev/stdout), or the disk failed: that was counted when the write failed.
    with contextlib.suppress(OSError):
        os.fsync(f.fileno())  # type: ignore[attr-defined]
    f.close()  # type: ignore[attr-defined]


def _create(settings: Settings, config: FileExporterConfig, _next: None) -> FileExporter:
    return FileExporter(settings, config)


FACTORY = Factory(
    kind="exporter", type="file", config_type=FileExporterConfig, create=_create, description="JSON lines to a local file"
)
