"""Several collector processes on one machine (``service.workers``), each sample of a call in one of them.

* The supervisor (the process started by ``webrtc-observer run``) forks the workers, passes SIGTERM
  and SIGINT on to them, and starts a worker again if it dies.
* Every worker runs the whole configured collector. Receivers share their port (SO_REUSEPORT): the
  kernel spreads connections over the workers.
* A sample belongs to one worker, chosen by a hash of its service id and room id (else call id,
  else client id; SFU samples by SFU id). A worker hands what it does not own to the owner over a
  Unix socket and waits for the owner's answer, so a full pipeline in the owner (``RetryLater``, its
  Retry-After and reason code kept) or input it refuses reaches the client as it would in one
  process. Requests and answers sent in one turn of the event loop leave in one write, and every
  frame one read brings is handled at once; a request whose owner dies before answering fails with
  ``RetryLater``. A message whose samples all
  belong to one other worker goes over undecoded (the receiver tells its routing keys from the
  bytes, :class:`~webrtc_observer.component.Forwarder`), and the owner decodes it; otherwise the
  decoded samples that are not this worker's go to their owners.

Resources a component owns are per worker: the Prometheus and live-view endpoints listen on port +
worker index, and the file exporter writes one file per worker (``reports-0.jsonl``...). Each
worker checkpoints its processors' state in the run's directory (``service.state``), so a worker
started again resumes its calls instead of announcing them anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from webrtc_observer.component import Consumer, Refused, RetryLater, Undecoded, Worker
from webrtc_observer.logs import get_logger
from webrtc_observer.model import Batch, ClientSample, Sample, SfuSample, TurnSample, routing_key, share_ids
from webrtc_observer.telemetry import Metric, Telemetry

# -- which worker owns a sample ------------------------------------------------------------------


def owner_of(sample: Sample, workers: int) -> int:
    """The worker that handles ``sample``: every sample of a room (or call) goes to the same one."""
    return owner_of_key(routing_key(sample), workers)


def owner_of_key(key: str, workers: int) -> int:
    """The worker that handles the samples of routing key ``key`` (:func:`~webrtc_observer.model.routing_key`)."""
    return zlib.crc32(key.encode()) % workers


# -- the wire between workers ----------------------------------------------------------------------


class _Shipment(msgspec.Struct, array_like=True, tag="samples"):
    """Samples one worker hands to their owner, for the owner's copy of receiver ``receiver``."""

    receiver: str
    clients: list[ClientSample] = []
    sfus: list[SfuSample] = []
    turns: list[TurnSample] = []


class _Message(msgspec.Struct, array_like=True, tag="message"):
    """A whole message, undecoded, for the owner's copy of receiver ``receiver`` to decode."""

    receiver: str
    message: Undecoded


_encode = msgspec.msgpack.Encoder().encode
_decode_request = msgspec.msgpack.Decoder(_Shipment | _Message).decode
_decode_refusal = msgspec.msgpack.Decoder(tuple[str, str, int]).decode
_decode_retry = msgspec.msgpack.Decoder(tuple[str, float, str | None]).decode  # reason, retry_after, code
_HEADER = struct.Struct("!II")  # body length, request id
_OK, _RETRY, _FAILED, _REFUSED = b"\x00", b"\x01", b"\x02", b"\x03"
_COUNT = struct.Struct("!I")  # after _OK, for a message: the samples the owner took
_MAX_FRAME = 256 * 1024 * 1024


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"worker-{index}.sock")


class _Channel(asyncio.Protocol):
    """One end of a Unix socket between two workers: frames of (request id, body), both ways.

    What is sent during one turn of the event loop leaves in one write at the end of the turn, and
    every whole frame that one read brings is handed to ``on_frame`` at once: a busy exchange costs
    a few system calls and wakeups a turn, not a few a message. ``on_lost`` is called once, when the
    connection ends (with the error, if any).
    """

    def __init__(self, on_frame: Callable[[int, bytes], None], on_lost: Callable[[Exception | None], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._inbox = bytearray()
        self._outbox: list[bytes] = []

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, request: int, body: bytes) -> None:
        """Queue one frame; the queue is written at the end of this turn of the loop."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox += (_HEADER.pack(len(body), request), body)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if self.open:
            self._transport.write(b"".join(outbox))  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        inbox = self._inbox
        if not inbox:  # the common case: frames that arrived whole
            end = self._frames(data)
            if end < len(data):
                inbox += memoryview(data)[end:]
            return
        inbox += data
        del inbox[: self._frames(inbox)]

    def _frames(self, data: bytes | bytearray) -> int:
        """Hand on every whole frame in ``data``; where the first incomplete one starts."""
        offset, size = 0, len(data)
        with memoryview(data) as view:
            while size - offset >= _HEADER.size:
                length, request = _HEADER.unpack_from(view, offset)
                if length > _MAX_FRAME:
                    self._transport.abort()  # type: ignore[union-attr]  # not a peer worker: connection_lost follows
                    return size
                start = offset + _HEADER.size
                if size - start < length:
                    break
                offset = start + length
                self._on_frame(request, bytes(view[start:offset]))
        return offset

    def close(self) -> None:
        """Write what is queued, then close."""
        if self._outbox:
            self._flush()
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._outbox.clear()
        self._on_lost(exc)


class _PeerLink:
    """One worker's connection to another: requests multiplexed by id, answered in any order.

    If the connection ends, the requests waiting for an answer fail with ConnectionError; the next
    request connects again."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._channel: _Channel | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._connecting = asyncio.Lock()

    async def request(self, body: bytes) -> bytes:
        channel = self._channel
        if channel is None or not channel.open:
            channel = await self._connect()
        request = next(self._ids)
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request] = answer
        channel.send(request, body)
        try:
            return await answer
        finally:
            self._pending.pop(request, None)

    async def _connect(self) -> _Channel:
        async with self._connecting:
            if self._channel is None or not self._channel.open:
                loop = asyncio.get_running_loop()
                _, self._channel = await loop.create_unix_connection(lambda: _Channel(self._answered, self._lost), self._path)
            if not self._channel.open:  # lost before this task resumed: no answer would ever come on it
                raise ConnectionError("the peer worker closed the connection")
            return self._channel

    def _answered(self, request: int, body: bytes) -> None:
        answer = self._pending.get(request)
        if answer is not None and not answer.done():
            answer.set_result(body)

    def _lost(self, exc: Exception | None) -> None:
        self._channel = None
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            if not answer.done():
                answer.set_exception(ConnectionError(f"peer worker went away: {exc or 'connection closed'}"))

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


class Peers:
    """This worker's side of the exchange: a server for samples it owns, links to the others."""

    def __init__(self, worker: Worker, directory: str) -> None:
        self.worker = worker
        self._directory = directory
        self._local: dict[str, Consumer] = {}
        self._takers: dict[str, Callable[[Undecoded], Awaitable[int]]] = {}
        self._links: dict[int, _PeerLink] = {}
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._log = get_logger(component="workers")

    @property
    def directory(self) -> str:
        """The supervisor's directory for this run: the workers' sockets, and by default their
        state checkpoints (``service.state``), so a restarted worker finds its own."""
        return self._directory

    def router(self, receiver: str, local: Consumer, telemetry: Telemetry) -> Consumer:
        """What receiver ``receiver`` feeds: ``local`` for the samples this worker owns, peers for the rest."""
        self._local[receiver] = local
        handoffs = telemetry.counter(
            "worker_handoffs",
            "Messages (undecoded) and batches of decoded samples handed to the worker that owns them",
            ("receiver", "form"),
        )
        return _Router(receiver, local, self, handoffs)

    def serve_undecoded(self, receiver: str, take: Callable[[Undecoded], Awaitable[int]]) -> None:
        """Messages peers hand over undecoded for receiver ``receiver`` go to ``take``."""
        self._takers[receiver] = take

    def all_listening(self) -> bool:
        """Whether every other worker takes samples handed to it (its socket is there: it is made once
        the worker's pipelines started). Until then this worker is not ready (``GET /health`` 503),
        so a load balancer holds off a sample that another worker, still starting, would owe."""
        index, count = self.worker.index, self.worker.count
        return all(os.path.exists(socket_path(self._directory, i)) for i in range(count) if i != index)

    async def start(self) -> None:
        path = socket_path(self._directory, self.worker.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.get_running_loop().create_unix_server(self._accept, path)

    async def shutdown(self) -> None:
        """Stop taking samples from peers once those in hand are through this worker's pipelines;
        requests that arrive after that are answered "retry later"."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        for link in self._links.values():
            await link.close()
        self._links.clear()

    async def send(self, owner: int, request: _Shipment | _Message) -> bytes:
        """Hand ``request`` to worker ``owner``; what its answer says after OK. Raises what the owner raised."""
        link = self._links.get(owner)
        if link is None:
            link = self._links[owner] = _PeerLink(socket_path(self._directory, owner))
        try:
            answer = await link.request(_encode(request))
        except (ConnectionError, OSError) as exc:
            raise RetryLater(f"worker {owner} is not reachable ({exc})") from None
        if answer[:1] == _RETRY:
            raise _retry_later(answer[1:])
        if answer[:1] == _REFUSED:
            raise Refused(*_decode_refusal(answer[1:]))
        if answer[:1] != _OK:
            raise RuntimeError(f"worker {owner} failed: {answer[1:].decode(errors='replace')}")
        return answer[1:]

    def _accept(self) -> _Channel:
        """A peer connected: each request it sends is handled in a task of its own and answered on its channel."""

        def received(request: int, body: bytes) -> None:
            if self._stopping:
                channel.send(request, _RETRY + _encode(("worker shutting down", 1.0, None)))
                return
            task = asyncio.create_task(self._handle(request, body, channel))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

        channel = _Channel(received, lambda exc: None)
        return channel

    async def _handle(self, request: int, body: bytes, channel: _Channel) -> None:
        try:
            shipment = _decode_request(body)
            if isinstance(shipment, _Message):
                taken = await self._takers[shipment.receiver](shipment.message)
                answer = _OK + _COUNT.pack(taken)
            else:
                samples: list[Sample] = [*shipment.clients, *shipment.sfus, *shipment.turns]
                share_ids(shipment.clients)
                await self._local[shipment.receiver].consume(Batch(samples=samples))
                answer = _OK
        except RetryLater as exc:  # as the owner's receiver raised it: its reason, Retry-After and code
            answer = _RETRY + _encode((exc.reason, exc.retry_after, exc.code))
        except Refused as exc:  # the owner's receiver refused the message (what it would answer a client)
            answer = _REFUSED + _encode((exc.reason, exc.detail, exc.status))
        except Exception as exc:
            self._log.error("samples from a peer worker failed", exc_info=True)
            answer = _FAILED + str(exc).encode()
        if channel.open:
            channel.send(request, answer)


def _retry_later(answer: bytes) -> RetryLater:
    """The RetryLater an owner's answer stands for, as its receiver raised it."""
    reason, retry_after, code = _decode_retry(answer)
    return RetryLater(reason, retry_after, code)


class _Router:
    """Keeps the samples this worker owns and hands the others to their owners (a :class:`Forwarder`)."""

    def __init__(self, receiver: str, local: Consumer, peers: Peers, handoffs: Metric) -> None:
        self._receiver = receiver
        self._local = local
        self._peers = peers
        self._count = peers.worker.count
        self._index = peers.worker.index
        self._handoffs = handoffs

    def owner(self, keys: Sequence[str]) -> int | None:
        owners = {owner_of_key(key, self._count) for key in keys}
        if len(owners) != 1:
            return None
        owner = owners.pop()
        return None if owner == self._index else owner

    async def forward(self, owner: int, message: Undecoded) -> int:
        self._handoffs.add(1, self._receiver, "undecoded")
        answer = await self._peers.send(owner, _Message(self._receiver, message))
        return int(_COUNT.unpack(answer)[0])

    def take_forwarded(self, take: Callable[[Undecoded], Awaitable[int]]) -> None:
        self._peers.serve_undecoded(self._receiver, take)

    async def consume(self, batch: Batch) -> None:
        mine: list[Sample] = []
        theirs: dict[int, _Shipment] = {}
        for sample in batch.samples:
            owner = owner_of(sample, self._count)
            if owner == self._index:
                mine.append(sample)
                continue
            shipment = theirs.get(owner)
            if shipment is None:
                shipment = theirs[owner] = _Shipment(self._receiver, [], [], [])
            if isinstance(sample, ClientSample):
                shipment.clients.append(sample)
            elif isinstance(sample, SfuSample):
                shipment.sfus.append(sample)
            else:
                shipment.turns.append(sample)
        if not theirs:
            await self._local.consume(batch)
            return
        self._handoffs.add(len(theirs), self._receiver, "decoded")
        sends: list[Awaitable[Any]] = [self._peers.send(owner, shipment) for owner, shipment in theirs.items()]
        if mine or batch.reports:
            sends.append(self._local.consume(Batch(samples=mine, reports=batch.reports)))
        results = await asyncio.gather(*sends, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


# -- the supervisor --------------------------------------------------------------------------------

WorkerMain = Callable[[Worker, str], int]
"""Runs one worker until SIGTERM/SIGINT; returns its exit code. Gets its identity and the socket directory."""

_RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
_STABLE_AFTER = 60.0
"""A worker that ran this long before dying is restarted after the shortest delay again."""


def supervise(count: int, worker_main: WorkerMain) -> int:
    """Fork ``count`` workers and keep them running until SIGTERM/SIGINT; 0 if every worker stopped
    cleanly, 3 if one lost records at shutdown, else 1."""
    log = get_logger(component="supervisor")
    directory = tempfile.mkdtemp(prefix="webrtc-observer-")
    context = multiprocessing.get_context("fork")
    processes: dict[int, multiprocessing.process.BaseProcess] = {}
    started_at: dict[int, float] = {}
    failures: dict[int, int] = {}
    stopping = False

    def start(index: int) -> None:
        process = context.Process(target=_worker_entry, args=(worker_main, Worker(index, count), directory), daemon=False)
        process.start()
        processes[index] = process
        started_at[index] = time.monotonic()
        log.info("worker started", worker=index, pid=process.pid)

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for process in processes.values():
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    exit_code = 0
    try:
        for index in range(count):
            start(index)
        restart_at: dict[int, float] = {}
        while processes or (restart_at and not stopping):
            sentinels = {p.sentinel: i for i, p in processes.items()}
            timeout = max(0.0, min(restart_at.values()) - time.monotonic()) if restart_at else None
            for ready in multiprocessing.connection.wait(list(sentinels), timeout):
                index = sentinels[ready]  # type: ignore[index]
                process = processes.pop(index)
                process.join()
                if stopping:
                    exit_code = _combined_exit(exit_code, process.exitcode)
                    log.info("worker stopped", worker=index, exit_code=process.exitcode)
                    continue
                ran = time.monotonic() - started_at[index]
                failures[index] = 1 if ran > _STABLE_AFTER else failures.get(index, 0) + 1
                delay = _RESTART_DELAYS[min(failures[index], len(_RESTART_DELAYS)) - 1]
                log.error("worker died; starting it again", worker=index, exit_code=process.exitcode, restart_in_s=delay)
                restart_at[index] = time.monotonic() + delay
            now = time.monotonic()
            for index, when in list(restart_at.items()):
                if stopping:
                    restart_at.pop(index)
                elif when <= now:
                    restart_at.pop(index)
                    start(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(directory, ignore_errors=True)
    return exit_code


_EXIT_LOST = 3
"""A worker lost records at shutdown (see ``webrtc_observer.cli.EXIT_LOST``)."""


def _combined_exit(so_far: int, worker_exit: int | None) -> int:
    """The supervisor's exit code after one more worker stopped: 3 if any worker lost records,
    else 1 if any failed (a worker killed by a signal has no exit code: that is a failure), else 0."""
    if worker_exit == _EXIT_LOST or so_far == _EXIT_LOST:
        return _EXIT_LOST
    return 0 if worker_exit == 0 and so_far == 0 else 1


def _worker_entry(worker_main: WorkerMain, worker: Worker, directory: str) -> None:
    # The supervisor's handlers were inherited by the fork; the worker's event loop installs its own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(worker_main(worker, directory))
