"""QueuedExporter: the pipeline ``Consumer`` of a queued exporter, around the exporter's :class:`Sender`."""

from __future__ import annotations

import asyncio
import contextlib
import random as _random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from webrtc_observer import transaction
from webrtc_observer.component import Refused, RetryLater, Settings
from webrtc_observer.model import Batch

from ._config import QueuedExporterConfig
from ._queue import MemoryQueue
from ._storage import DiskQueue, StorageError

_CONGESTED, _DECONGESTED = 0.9, 0.5
"""Shares of ``queue_size`` at which a queue becomes congested, and stops being congested."""


class SendError(Exception):
    """What a :class:`Sender` raises when a chunk (or part of it) was not acknowledged.

    ``permanent``: the destination will never take it; the records are dropped and counted as
    send-failed. Otherwise they are retried per ``retry_on_failure``; ``retry_after`` (seconds, e.g.
    a throttling answer) raises the next delay to at least that. ``failed``: the indexes, in the chunk
    given to ``send``, of the items that failed (the others were acknowledged); None: all of them.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        failed: Sequence[int] | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.failed = failed


class Sender(Protocol):
    """Delivers chunks of encoded records. ``send`` returns when every item was acknowledged."""

    async def send(self, items: Sequence[bytes]) -> None: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class QueuedExporter:
    """A bounded sending queue (records), ``num_consumers`` consumers, retry with backoff, telemetry.

    An exporter subclasses it, giving it its sender and encoding; the pipeline hands it batches
    (:meth:`consume`). The queue bound is
    ``sending_queue.queue_size`` records queued and in flight together (and ``max_bytes`` on disk
    with ``storage: file``); when full, :meth:`consume` raises
    :class:`~webrtc_observer.component.RetryLater` and counts ``exporter_enqueue_failed_records``.
    """

    def __init__(
        self,
        settings: Settings,
        config: QueuedExporterConfig,
        sender: Sender,
        encode: Callable[[Batch], list[bytes]],
        *,
        max_chunk: int = 2048,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._config = config
        self._queue_config = config.sending_queue
        self._retry = config.retry_on_failure
        self._sender = sender
        self._encode = encode
        self._max_chunk = max_chunk
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._log = settings.logger
        self._label = label = str(settings.id)
        qc = config.sending_queue
        self._storage: MemoryQueue | DiskQueue
        if qc.enabled and qc.storage == "file":
            self._storage = DiskQueue(_queue_directory(qc.directory, label, settings), qc.max_bytes, qc.fsync)
        else:
            self._storage = MemoryQueue()
        self._reserved = 0
        self._reserved_bytes = 0
        self._consumers: list[asyncio.Task[None]] = []
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._stopped = False
        self._started = False
        self._send_failing_since: float | None = None
        self._disk_failing_since: float | None = None
        # For flush(): records are taken from the queue in the order they were put, so positions in
        # that order tell what was accepted before a flush and whether all of it is acknowledged.
        self._put_seq = 0
        """Records put in the queue so far (those an earlier run left on disk included)."""
        self._taken_seq = 0
        """Records consumers took so far."""
        self._taken_chunks: dict[int, int] = {}
        """Start position → end of each chunk taken and not yet acknowledged."""
        self._direct: set[asyncio.Future[None]] = set()
        """Deliveries in progress without a queue (``sending_queue.enabled: false``)."""
        self._progress = asyncio.Event()
        self._room = asyncio.Event()
        """Set while the queue is not congested (see :meth:`congested`)."""
        self._room.set()
        t = settings.telemetry
        lbl = ("exporter",)
        self._sent = t.counter("exporter_sent_records", "Records delivered (acknowledged by the destination)", lbl)
        self._send_failed = t.counter("exporter_send_failed_records", "Records dropped after failed sends", lbl)
        self._enqueue_failed = t.counter(
            "exporter_enqueue_failed_records", "Records refused because the sending queue was full", lbl
        )
        self._queue_gauge = t.gauge("exporter_queue_size", "Records queued or in flight", lbl)
        t.gauge("exporter_queue_capacity", "Records the sending queue holds at most", lbl).set(qc.queue_size, label)
        self._corrupt = t.counter(
            "exporter_queue_corrupt_records", "Torn or corrupt records skipped in the persistent queue", lbl
        )
        self._storage_errors = t.counter(
            "exporter_queue_storage_errors", "Failed writes to the persistent queue (disk full or failing)", lbl
        )
        self._lost = t.counter("exporter_lost_records", "Records an exporter could not deliver before shutdown ended", lbl)
        self._queue_gauge.set(0, label)
        # Every series exists from the start at 0, so rate() and increase() see the first failure.
        for counter in (self._sent, self._send_failed, self._enqueue_failed, self._corrupt, self._storage_errors, self._lost):
            counter.add(0, label)

    # -- what the owner and the service see -------------------------------------------------------

    def failing_since(self) -> float | None:
        """Monotonic time since when sends (or persistent queue writes) have been failing, or None."""
        times = [t for t in (self._send_failing_since, self._disk_failing_since) if t is not None]
        return min(times) if times else None

    def congested(self) -> bool:
        """The queue (queued + reserved records) reached 90 % of ``queue_size`` and has not drained
        back to 50 % yet: receivers hold new input back until it has (:meth:`room`)."""
        return not self._room.is_set()

    async def room(self) -> None:
        await self._room.wait()

    def _watch_room(self) -> None:
        used, size = self._storage.size + self._reserved, self._queue_config.queue_size
        if self._room.is_set():
            if used >= size * _CONGESTED and not self._closing:
                self._room.clear()
        elif used <= size * _DECONGESTED or self._closing:
            self._room.set()

    @property
    def queued(self) -> int:
        """Records queued or in flight (not acknowledged yet)."""
        return self._storage.size

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sender, open the queue (records left by an earlier run go first), start consumers."""
        await self._sender.start()
        await self._storage.open()
        self._started = True
        self._taken_seq = 0
        self._put_seq = self._storage.size  # what an earlier run left goes first
        if self._storage.corrupt:
            self._corrupt.add(self._storage.corrupt, self._label)
            self._log.error("skipped torn or corrupt records in the persistent queue", records=self._storage.corrupt)
        if self._storage.size:
            self._log.info("sending records left by an earlier run", records=self._storage.size)
        self._gauge()
        if self._queue_config.enabled:
            self._consumers = [
                asyncio.create_task(self._consume_loop(), name=f"exporter-{self._label}-{i}")
                for i in range(self._queue_config.num_consumers)
            ]

    async def shutdown(self) -> int:
        """Stop taking records, drain within ``shutdown_timeout``, stop the sender; the records LOST.

        Records still queued at the deadline are lost with the in-memory queue (counted in
        ``exporter_lost_records`` and logged); with the persistent queue they stay on disk for the
        next run, so the answer is 0.
        """
        self._closing = True
        self._watch_room()  # whoever waits for room finds the exporter closing (RetryLater)
        lost = 0
        if self._consumers:
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained(), self._config.shutdown_timeout)
            except asyncio.CancelledError:
                # The service's deadline came first (it reads ``unsent()``): count the loss, stop the
                # consumers and release the sender (its connections and threads).
                self._count_lost(self.unsent())
                await self._stop_consumers()
                await self._sender.shutdown()
                raise
            await self._stop_consumers()
        if self._started:
            lost = self.unsent()
            if self._storage.persistent and self._storage.size:
                self._log.info("records kept on disk for the next run", records=self._storage.size)
            await self._storage.close()
            self._started = False
        self._count_lost(lost)
        await self._sender.shutdown()
        return lost

    async def flush(self, timeout: float) -> None:
        """Return once every record accepted before the call was acknowledged by the destination (or
        dropped for good, counted as send-failed); raises TimeoutError after ``timeout`` seconds.
        Records accepted meanwhile are not waited for. The persistent queue works the same way."""
        target = self._put_seq
        direct = list(self._direct)
        async with asyncio.timeout(timeout):
            if direct:
                await asyncio.wait(direct)
            while self._acknowledged_prefix() < target:
                self._progress.clear()
                await self._progress.wait()

    def _acknowledged_prefix(self) -> int:
        """Every record before this position (in put order) is acknowledged or dropped."""
        return min(self._taken_chunks) if self._taken_chunks else self._taken_seq

    def unsent(self) -> int:
        """Records lost if the exporter stopped now: what the in-memory queue holds (0 on disk)."""
        return 0 if self._storage.persistent else self._storage.size

    def _count_lost(self, lost: int) -> None:
        if lost:
            self._lost.add(lost, self._label)
            self._log.error("records not delivered before shutdown_timeout", records=lost)

    async def _stop_consumers(self) -> None:
        self._stopped = True  # a consumer that missed its cancel stops before its next attempt
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        self._consumers = []

    async def _drained(self) -> None:
        while self._storage.size:
            self._idle.clear()
            await self._idle.wait()

    # -- accepting ---------------------------------------------------------------------------------

    async def consume(self, batch: Batch) -> None:
        """Queue the records of ``batch``; inside a transaction, on its commit (see the module doc)."""
        items = self._encode(batch)
        if not items:
            return
        count = len(items)
        size = sum(map(len, items)) + DiskQueue.RECORD_OVERHEAD * count if self._storage.persistent else 0
        self._reserve(count, size)
        txn = transaction.current()
        if txn is None:
            await self._enqueue(items, count, size)
            return
        txn.on_abort(lambda: self._release(count, size))
        txn.on_commit(lambda: self._enqueue(items, count, size))

    def _reserve(self, count: int, size: int) -> None:
        qc = self._queue_config
        if self._closing:
            self._enqueue_failed.add(count, self._label)
            raise RetryLater("exporter is shutting down")
        if count > qc.queue_size or (self._storage.persistent and size > qc.max_bytes):
            self._enqueue_failed.add(count, self._label)
            raise Refused("too_large", f"{count} records do not fit in exporter {self._label}'s sending queue")
        if self._storage.size + self._reserved + count > qc.queue_size:
            self._enqueue_failed.add(count, self._label)
            raise RetryLater(f"sending queue of exporter {self._label} is full ({qc.queue_size} records)", self._retry_after())
        if self._storage.persistent and self._storage.bytes + self._reserved_bytes + size > qc.max_bytes:
            self._enqueue_failed.add(count, self._label)
            raise RetryLater(f"persistent queue of exporter {self._label} is full ({qc.max_bytes} bytes)", self._retry_after())
        self._reserved += count
        self._reserved_bytes += size
        self._watch_room()

    def _release(self, count: int, size: int) -> None:
        self._reserved -= count
        self._reserved_bytes -= size
        self._watch_room()

    def _retry_after(self) -> float:
        return float(self._retry.initial_interval) if self.failing_since() is not None else 1.0

    async def _enqueue(self, items: list[bytes], count: int, size: int) -> None:
        if not self._queue_config.enabled:
            self._release(count, size)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._direct.add(done)
            try:
                await self._deliver(items)
            finally:
                self._direct.discard(done)
                done.set_result(None)
            return
        try:
            await self._storage.put(items)
        except StorageError as exc:
            self._enqueue_failed.add(count, self._label)
            self._storage_errors.add(1, self._label)
            if self._disk_failing_since is None:
                self._disk_failing_since = self._clock()
            self._log.error("persistent queue write failed", error=str(exc), records=count)
            raise RetryLater(f"persistent queue of exporter {self._label} cannot write: {exc}", self._retry_after()) from None
        finally:
            self._release(count, size)
        self._put_seq += count
        self._disk_failing_since = None
        self._gauge()

    def _gauge(self) -> None:
        self._queue_gauge.set(self._storage.size, self._label)
        self._watch_room()

    # -- sending -----------------------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        while True:
            ticket, items = await self._storage.get(self._max_chunk)
            start = self._taken_seq
            self._taken_seq += len(items)
            self._taken_chunks[start] = self._taken_seq
            await self._deliver(items)
            del items  # sent: not kept alive while the next chunk is awaited (up to max_chunk records)
            try:
                await self._storage.ack(ticket)
            except StorageError as exc:  # delivered, but may be sent again by the next run
                self._storage_errors.add(1, self._label)
                self._log.error("persistent queue acknowledgement failed", error=str(exc))
            del self._taken_chunks[start]
            self._progress.set()
            self._gauge()
            if not self._storage.size:
                self._idle.set()

    async def _deliver(self, items: Sequence[bytes]) -> None:
        """Send ``items`` until acknowledged, dropped (permanent error, max_elapsed_time) or cancelled."""
        retry = self._retry
        pending: Sequence[bytes] = items
        started = self._clock()
        interval = float(retry.initial_interval)
        while True:
            retry_after: float | None = None
            permanent = False
            try:
                async with asyncio.timeout(self._config.timeout):  # not wait_for: 3.11's can swallow a cancel
                    await self._sender.send(pending)
            except SendError as exc:
                if exc.failed is not None:
                    failed = [pending[i] for i in sorted(set(exc.failed)) if 0 <= i < len(pending)]
                    self._sent.add(len(pending) - len(failed), self._label)
                    pending = failed
                    if not pending:
                        self._send_failing_since = None
                        return
                retry_after, permanent, error = exc.retry_after, exc.permanent, str(exc)
            except TimeoutError:
                error = f"send timed out after {self._config.timeout}s"
            except Exception as exc:  # a sender bug or an unexpected client error: retried like a failure
                error = f"{type(exc).__name__}: {exc}"
            else:
                self._sent.add(len(pending), self._label)
                self._send_failing_since = None
                return
            if self._send_failing_since is None:
                self._send_failing_since = self._clock()
            if permanent or not retry.enabled:
                self._drop(pending, error, "permanent error" if permanent else "retry disabled")
                return
            delay = interval * (1 + retry.randomization_factor * (2 * self._random() - 1))
            if retry_after is not None:
                delay = max(delay, retry_after)
            if retry.max_elapsed_time and self._clock() + delay - started > retry.max_elapsed_time:
                self._drop(pending, error, "max_elapsed_time reached")
                return
            if self._stopped:
                raise asyncio.CancelledError
            self._log.warning("send failed, will retry", error=error, records=len(pending), retry_in_s=round(delay, 3))
            await self._sleep(delay)
            interval = min(interval * retry.multiplier, float(retry.max_interval))

    def _drop(self, pending: Sequence[bytes], error: str, why: str) -> None:
        self._send_failed.add(len(pending), self._label)
        self._log.error("records dropped", error=error, reason=why, records=len(pending))


def _queue_directory(directory: str, label: str, settings: Settings) -> Path:
    """``directory/<exporter id>`` (``/`` and other unsafe characters as ``_``), ``/worker-<i>`` with workers."""
    path = Path(directory) / re.sub(r"[^A-Za-z0-9._-]", "_", label)
    if settings.worker.count > 1:
        path = path / f"worker-{settings.worker.index}"
    return path
