"""``service.state``: a process checkpoints the :data:`~webrtc_observer.state.LOCAL` state of its
stateful processors to a local file, and resumes from it when it starts again.

Input without partitions (HTTP, WebSocket) has no log to replay, so a worker of ``service.workers``
killed with SIGKILL would otherwise come back empty and announce its calls and clients a second
time. With a checkpoint it resumes them: the next sample of a known client is one more sample of
its call.

- One file per process, ``<directory>/worker-<i>.state`` (``i`` is the worker index; 0 for a single
  process), and ``worker-<i>.lock``, held (flock) while the process runs: a second process given the
  same directory and index refuses to start.
- The process keeps the latest value of every key of every stateful processor in memory, namespaced
  by ``pipeline/processor`` (:meth:`Host.stateful <webrtc_observer.component.Host.stateful>`). Every
  ``checkpoint_interval``, and once more at shutdown after the receivers stopped, it takes each
  processor's :meth:`~webrtc_observer.state.Stateful.changes`, folds them into that map, has the
  exporters deliver what they accepted so far (:meth:`Host.flush <webrtc_observer.component.Host.flush>`),
  and then writes the whole map: a temporary file, fsync, rename over the old one, fsync of the
  directory, on a thread of its own (never on the event loop). The state on disk therefore never
  claims a report the exporters had not delivered yet: a crash repeats at most the reports of the
  last interval (with the same ids), and misses none. If the flush or the write fails, the changes
  stay in the map and the next checkpoint writes them.
- At start, before any receiver runs, the file is read and every processor gets its entries
  (:meth:`~webrtc_observer.state.Stateful.assign` of :data:`LOCAL`). A file that cannot be read or
  is corrupt (bad magic, checksum, or content) is logged, counted, moved aside as
  ``worker-<i>.state.corrupt``, and the process starts empty: a bad file never stops the collector.

:data:`LOCAL` state is swept by the wall clock and its timestamps are epoch seconds, so a client
that sent nothing while the process was down idles out at its usual time after the restart.

File layout: 8 bytes of magic, then ``<u32 format version><u32 crc32(body)><u64 len(body)>``, then
the body, msgpack of :class:`_Checkpoint`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from webrtc_observer.component import Worker
from webrtc_observer.logs import Logger
from webrtc_observer.state import LOCAL, Stateful
from webrtc_observer.telemetry import Telemetry

_MAGIC = b"WOSTATE\n"
_HEADER = struct.Struct("<IIQ")  # format version, crc32 of the body, body length
_FORMAT = 1
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Namespaces = dict[str, dict[bytes, bytes]]
"""``pipeline/processor`` → key → latest value (tombstoned keys left out)."""


class _Checkpoint(msgspec.Struct, forbid_unknown_fields=False):
    worker: int
    workers: int
    written_at: float
    """Epoch seconds."""
    state: Namespaces


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Checkpoint).decode


class CorruptState(Exception):
    """The checkpoint file is not one this version wrote whole (torn, truncated, overwritten)."""


class StateLocked(OSError):
    """Another process holds this worker's checkpoint."""


class LocalStore:
    """The checkpoint file of one process: blocking calls, meant for a thread of their own."""

    def __init__(self, directory: str | Path, worker: Worker) -> None:
        self.directory = Path(directory)
        self.worker = worker
        self.path = self.directory / f"worker-{worker.index}.state"
        self._lock_path = self.directory / f"worker-{worker.index}.lock"
        self._lock_fd = -1

    def lock(self) -> None:
        """Create the directory and take this worker's lock; :class:`StateLocked` if it is held."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLocked(f"{self.path} is in use by another process") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1

    def read(self) -> _Checkpoint | None:
        """The last checkpoint, or None if there is none. Raises :class:`CorruptState` or OSError."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return decode_checkpoint(data)

    def write(self, checkpoint: _Checkpoint) -> int:
        """Replace the checkpoint atomically and durably; the bytes written."""
        data = encode_checkpoint(checkpoint)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return len(data)

    def set_aside(self) -> Path | None:
        """Move a bad checkpoint out of the way (kept for inspection); where it went."""
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, aside)
        except OSError:
            return None
        return aside


def encode_checkpoint(checkpoint: _Checkpoint) -> bytes:
    body = _encode(checkpoint)
    return _MAGIC + _HEADER.pack(_FORMAT, zlib.crc32(body), len(body)) + body


def decode_checkpoint(data: bytes) -> _Checkpoint:
    head = len(_MAGIC) + _HEADER.size
    if len(data) < head or not data.startswith(_MAGIC):
        raise CorruptState("not a state checkpoint (bad magic or too short)")
    version, crc, length = _HEADER.unpack_from(data, len(_MAGIC))
    if version != _FORMAT:
        raise CorruptState(f"checkpoint format {version}, this version reads {_FORMAT}")
    body = data[head:]
    if len(body) != length:
        raise CorruptState(f"the body has {len(body)} bytes, the header says {length} (a torn write)")
    if zlib.crc32(body) != crc:
        raise CorruptState("checksum mismatch")
    try:
        return _decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is one
        raise CorruptState(f"undecodable content: {exc}") from None


class LocalCheckpoint:
    """Restores the stateful processors at start, checkpoints them every ``interval`` and at shutdown.

    A :class:`~webrtc_observer.component.Lifecycle` the service starts after the processors and
    before the receivers (so it shuts down after the receivers stopped and before the processors).
    """

    def __init__(
        self,
        store: LocalStore,
        processors: Sequence[tuple[str, Stateful]],
        interval: float,
        flush: Callable[[float], Awaitable[None]],
        flush_timeout: float,
        telemetry: Telemetry,
        log: Logger,
    ) -> None:
        self.store = store
        self._processors = list(processors)
        self._interval = interval
        self._flush = flush
        self._flush_timeout = flush_timeout
        self._log = log.bind(component="state", path=str(store.path))
        self._map: Namespaces = {}
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._last_success: float | None = None
        """``time.monotonic()`` of the last successful checkpoint (or of the restore)."""
        self.checkpoints = 0
        """Checkpoints written since start."""
        self.entries = 0
        """Entries in the last checkpoint written (or restored)."""
        self._unwritten = False
        """The map holds changes the file does not have yet."""
        t = telemetry
        t.gauge(
            "local_state_checkpoint_age",
            "Seconds since the last successful checkpoint of processor state (service.state)",
            unit="seconds",
            callback=self._age,
        )
        t.gauge(
            "local_state_checkpoint_entries",
            "Entries (calls, SFUs, rooms, clocks...) in the last checkpoint of processor state",
            callback=lambda: {(): float(self.entries)},
        )
        self._duration = t.histogram(
            "local_state_checkpoint_duration",
            "Time a checkpoint of processor state that was written took: changes, exporter flush, write",
            (),
            _DURATION_BUCKETS,
            unit="seconds",
        )
        self._failures = t.counter(
            "local_state_checkpoint_failures", "Checkpoints of processor state that failed, by stage", ("stage",)
        )
        self._restore_failures = t.counter(
            "local_state_restore_failures",
            "Starts that could not resume (part of) the checkpointed state, by reason",
            ("reason",),
        )

    def _age(self) -> dict[tuple[str, ...], float]:
        if self._last_success is None:
            return {}
        return {(): time.monotonic() - self._last_success}

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Lock the store, restore every processor, start the periodic checkpoint."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-checkpoint")
        try:
            await self._run(self.store.lock)  # StateLocked, or a directory we cannot create: start fails
            await self.restore()
        except BaseException:
            self.store.unlock()
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._stop.clear()
        self._task = asyncio.create_task(self._every_interval(), name="state-checkpoint")

    async def shutdown(self) -> None:
        """Stop the periodic checkpoint, write a last one, release the store."""
        if self._task is not None:
            self._stop.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            await self.checkpoint()
        if self._executor is not None:
            await self._run(self.store.unlock)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None, "the state store is not open"
        # Shielded: a cancelled caller does not leave the file half-handled by a thread still running.
        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._executor, fn, *args))

    async def _every_interval(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)
            if self._stop.is_set():
                return
            try:
                await self.checkpoint()
            except Exception:  # the checkpoint task must outlive a bad day on disk
                self._log.error("state checkpoint failed", exc_info=True)

    # -- restore --------------------------------------------------------------------------------------

    async def restore(self) -> None:
        """Read the checkpoint and hand each processor its entries; start empty on a bad file."""
        started = time.monotonic()
        saved: Namespaces = {}
        try:
            checkpoint = await self._run(self.store.read)
        except CorruptState as exc:
            aside = await self._run(self.store.set_aside)
            self._restore_failures.add(1, "corrupt")
            self._log.error("state checkpoint is corrupt; starting empty", reason=str(exc), moved_to=str(aside))
            checkpoint = None
        except OSError as exc:
            self._restore_failures.add(1, "unreadable")
            self._log.error("state checkpoint cannot be read; starting empty", reason=str(exc))
            checkpoint = None
        if checkpoint is not None:
            saved = checkpoint.state
            if checkpoint.workers != self.store.worker.count:
                self._log.warning(
                    "state checkpoint was written with another number of workers; calls now owned by another "
                    "worker are announced there again, and idle out here",
                    written_with=checkpoint.workers,
                    workers=self.store.worker.count,
                )
        known = {name for name, _ in self._processors}
        dropped = sorted(set(saved) - known)
        if dropped:
            self._log.info("state of processors no longer configured is dropped", processors=", ".join(dropped))
        self._map = {}
        # Rebuilding creates objects by the hundred thousand and frees none: collecting garbage
        # meanwhile would only rescan them (a quarter of the time with it off). Nothing else runs yet.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for name, processor in self._processors:
                entries = saved.get(name, {})
                try:
                    processor.assign(LOCAL, entries)
                except Exception:
                    self._restore_failures.add(1, "rejected")
                    self._log.error("a processor could not resume its state; it starts empty", processor=name, exc_info=True)
                    entries = {}
                    with contextlib.suppress(Exception):
                        processor.assign(LOCAL, {})
                self._map[name] = dict(entries)
        finally:
            if collecting:
                gc.enable()
        self.entries = sum(len(m) for m in self._map.values())
        self._last_success = time.monotonic()
        if checkpoint is not None:
            self._log.info(
                "state restored",
                entries=self.entries,
                written_s_ago=round(time.time() - checkpoint.written_at, 3),
                duration_s=round(time.monotonic() - started, 3),
            )

    # -- checkpoint -----------------------------------------------------------------------------------

    def _collect(self) -> int:
        """Fold every processor's changes into the map; the number of changed keys."""
        changed = 0
        for name, processor in self._processors:
            table = self._map.setdefault(name, {})
            for key, value in processor.changes(LOCAL).items():
                changed += 1
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
        return changed

    async def checkpoint(self) -> bool:
        """One checkpoint: changes → exporters flushed → the whole map written. False if it failed
        (the changes stay in memory for the next one)."""
        started = time.monotonic()
        if self._collect():  # synchronous: between two messages, never inside one
            self._unwritten = True
        if not self._unwritten:  # the file already holds exactly this state
            self._last_success = time.monotonic()
            return True
        try:
            await self._flush(self._flush_timeout)
        except Exception as exc:
            self._failures.add(1, "flush")
            self._log.warning(
                "state checkpoint postponed: the exporters did not deliver in time",
                reason=repr(exc),
                timeout_s=self._flush_timeout,
            )
            return False
        snapshot = _Checkpoint(
            worker=self.store.worker.index,
            workers=self.store.worker.count,
            written_at=time.time(),
            state={name: dict(table) for name, table in self._map.items()},  # values are immutable bytes
        )
        try:
            await self._run(self.store.write, snapshot)
        except OSError as exc:
            self._failures.add(1, "write")
            self._log.error("state checkpoint could not be written", reason=str(exc))
            return False
        self.entries = sum(len(t) for t in snapshot.state.values())
        self._unwritten = False  # checkpoints run one at a time: nothing was collected meanwhile
        self.checkpoints += 1
        self._last_success = time.monotonic()
        self._duration.observe(self._last_success - started)
        return True


def restored_entries(store: LocalStore) -> Mapping[str, Mapping[bytes, bytes]]:
    """What ``store`` holds, for tools and tests; empty when there is no checkpoint."""
    checkpoint = store.read()
    return {} if checkpoint is None else checkpoint.state
