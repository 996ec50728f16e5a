"""Exporter ``file``: appends one JSON record per line to a local file, rotating it by size.

Queueing, retries, the drain at shutdown, health and the standard telemetry are the exporter
helper's (:mod:`webrtc_observer.exporterhelper`; ``sending_queue.storage: file`` keeps the queue on
disk). This module encodes (a batch → one JSON line per record) and writes (a chunk of lines →
the file, on a worker thread of its own so the event loop never blocks on disk).

Before each chunk it checks that the path still names the open file (device and inode): a file
deleted or moved away is reopened at the path, creating missing folders. A write that fails (disk
full, folder gone) is counted in ``exporter_write_errors`` and retried by the helper; a write that
stopped half-way goes on where it stopped, so no line is written twice or torn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import msgspec

from webrtc_observer.component import Factory, Settings, Worker
from webrtc_observer.exporterhelper import QueuedExporter, QueuedExporterConfig, SendError, renamed_options
from webrtc_observer.logs import Logger
from webrtc_observer.model import Batch
from webrtc_observer.telemetry import Metric

_encoder = msgspec.json.Encoder()


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
class FileExporterConfig(QueuedExporterConfig):
    RENAMED_OPTIONS: ClassVar[Mapping[str, str]] = renamed_options(
        queue_size="use sending_queue.queue_size (counted in records, not batches)",
        drain_timeout="use shutdown_timeout",
        retry_max_interval="use retry_on_failure.max_interval",
        linger="removed: each write takes what waits in the sending queue, up to 2048 records",
    )
    path: str = "data/reports.jsonl"
    rotation: RotationConfig = field(default_factory=RotationConfig)

    def validate(self) -> list[tuple[str, str]]:
        issues = super().validate()
        if not self.path:
            issues.append(("path", "must not be empty"))
        return issues


def _encode(batch: Batch) -> list[bytes]:
    """One JSON line (newline included) per record: reports as envelopes, samples as ``{type, payload}``.

    Each kind is encoded in one call and then cut at its newlines: JSON text escapes control
    characters inside strings, so the only newlines are the ones between records.
    """
    lines = _encoder.encode_lines(batch.reports).splitlines(keepends=True) if batch.reports else []
    if batch.samples:
        samples = [{"type": type(sample).__name__, "payload": sample} for sample in batch.samples]
        lines.extend(_encoder.encode_lines(samples).splitlines(keepends=True))
    return lines


class _FileSender:
    """Writes chunks of lines to the file (the exporter helper's ``Sender``)."""

    def __init__(self, path: Path, rotation: RotationConfig, log: Logger, write_errors: Metric, label: str) -> None:
        self._path = path
        self._max_bytes = rotation.max_megabytes * 1024 * 1024
        self._backups = rotation.max_backups
        self._log = log
        self._write_errors = write_errors
        self._label = label
        self._file: Any = None  # a raw (unbuffered) file, or a test's stand-in for one
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._size = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"file-{label}")
        self._running: asyncio.Future[list[int]] | None = None
        # Progress of the chunk being written, across failed attempts (the objects, so ids stay unique):
        self._written: dict[int, bytes] = {}
        self._partial: tuple[bytes, int] | None = None
        self._error = ""

    async def start(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_open)
        except OSError as exc:  # not fatal: each write tries again, and failing writes turn health unhealthy
            self._log.error("cannot open the output file yet", path=str(self._path), error=str(exc))
        else:
            self._log.info("writing records", path=str(self._path))

    async def send(self, items: Sequence[bytes]) -> None:
        if self._running is not None and not self._running.done():
            # An earlier attempt timed out but its thread still writes: let it end first (it records what it wrote).
            with contextlib.suppress(Exception):
                await asyncio.shield(self._running)
        self._running = asyncio.get_running_loop().run_in_executor(self._executor, self._write_chunk, items)
        failed = await asyncio.shield(self._running)
        if failed:
            self._write_errors.add(1, self._label)
            raise SendError(f"writing {self._path} failed: {self._error}", failed=failed)

    def _write_chunk(self, items: Sequence[bytes]) -> list[int]:
        """Runs on the thread: write what of ``items`` is not written yet; the indexes left on failure."""
        if self._written:  # a retry: skip what an earlier attempt wrote
            todo = [i for i, item in enumerate(items) if self._written.get(id(item)) is not item]
        else:
            todo = list(range(len(items)))
        skip = 0  # bytes of the first item an earlier attempt wrote
        done = 0  # bytes of the joined chunk written now
        try:
            self._ensure_open()  # a reopened file forgets the partial line: it is in the old file
            if todo and self._partial is not None and self._partial[0] is items[todo[0]]:
                skip = self._partial[1]
            data = memoryview(b"".join([items[i] for i in todo]))[skip:]
            if self._max_bytes and self._size and self._size + len(data) > self._max_bytes:
                self._rotate()
            while done < len(data):
                written = self._file.write(data[done:])
                self._size += written
                done += written
        except OSError as exc:
            self._error = str(exc)
            self._log.error("write failed", path=str(self._path), error=str(exc))
            return self._progress(items, todo, skip + done)
        self._written.clear()
        self._partial = None
        return []

    def _progress(self, items: Sequence[bytes], todo: list[int], written: int) -> list[int]:
        """After a failed write of ``written`` bytes of ``todo``'s items: remember them; the indexes left."""
        for n, i in enumerate(todo):
            item = items[i]
            if written >= len(item):
                written -= len(item)
                self._written[id(item)] = item
                continue
            self._partial = (item, written) if written else None
            return todo[n:]
        return []

    def _ensure_open(self) -> None:
        """Open the path, or reopen it when the open file is no longer there (deleted, moved, replaced)."""
        try:
            st = os.stat(self._path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if self._file is not None and current is not None and current == self._identity:
            return
        if self._file is not None:
            self._log.warning("output file deleted or moved; reopening the path", path=str(self._path))
            self._close()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        f: BinaryIO = open(self._path, "ab", buffering=0)
        st = os.fstat(f.fileno())
        self._file, self._identity, self._size = f, (st.st_dev, st.st_ino), st.st_size
        self._partial = None  # the first part of a torn line is in the file that went away

    def _rotate(self) -> None:
        self._close()
        if self._backups == 0:
            self._path.unlink(missing_ok=True)
        else:
            self._path.with_name(f"{self._path.name}.{self._backups}").unlink(missing_ok=True)
            for i in range(self._backups - 1, 0, -1):
                src = self._path.with_name(f"{self._path.name}.{i}")
                if src.exists():
                    os.replace(src, self._path.with_name(f"{self._path.name}.{i + 1}"))
            os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))
        self._ensure_open()
        self._log.info("rotated", path=str(self._path))

    def _close(self) -> None:
        f, self._file, self._identity = self._file, None, None
        if f is not None:
            with contextlib.suppress(OSError):  # not a regular file (/dev/stdout), or the disk failed
                os.fsync(f.fileno())
            with contextlib.suppress(OSError):
                f.close()

    async def shutdown(self) -> None:
        if self._running is not None and not self._running.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._running)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)


class FileExporter(QueuedExporter):
    """The ``file`` exporter: the helper's queue in front of :class:`_FileSender`."""

    def __init__(self, settings: Settings, config: FileExporterConfig) -> None:
        path = _worker_path(Path(config.path), settings.worker)
        write_errors = settings.telemetry.counter("exporter_write_errors", "Failed write attempts (retried)", ("exporter",))
        sender = _FileSender(path, config.rotation, settings.logger, write_errors, str(settings.id))
        super().__init__(settings, config, sender, _encode)


def _worker_path(path: Path, worker: Worker) -> Path:
    """With several workers, each writes its own file: ``reports.jsonl`` becomes ``reports-0.jsonl``..."""
    if worker.count == 1:
        return path
    return path.with_name(f"{path.stem}-{worker.index}{path.suffix}")


def _create(settings: Settings, config: FileExporterConfig, _next: None) -> FileExporter:
    return FileExporter(settings, config)


FACTORY = Factory(
    kind="exporter", type="file", config_type=FileExporterConfig, create=_create, description="JSON lines to a local file"
)
