"""Sending a scenario to a collector over HTTP and WebSocket, with a progress line and a summary.

The runner paces the scenario's ticks in real time (or sends them as fast as it can with
``realtime=False``), keeps each sender's messages in order, and bounds the messages in flight with
``concurrency``. A WebSocket is opened per sender on its first message and closed after its last;
before closing, a ping is sent and its pong awaited, so every frame has been handled by then and
every error message the collector answered a frame with has arrived (the collector answers good
frames with nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp
import orjson

from ._scenario import Scenario, Tick

__all__ = ["Progress", "Runner", "Summary", "run"]

MAX_LATENCIES = 100_000
_reservoir = random.Random(0)


@dataclass
class Summary:
    """What a run sent and what the collector answered. Every message holds one sample."""

    title: str = ""
    messages_sent: int = 0
    samples_sent: int = 0
    samples_accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """Messages the collector refused, by ``HTTP <status> <reason>`` or ``WebSocket <reason>``."""
    errors: Counter[str] = field(default_factory=Counter)
    """Messages that got no answer: connection failures, timeouts, WebSockets lost."""
    bytes_sent: int = 0
    by_transport: Counter[str] = field(default_factory=Counter)
    by_generation: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list, repr=False)
    """Seconds from sending an HTTP request to reading its answer: all of them, or a uniform sample of
    ``MAX_LATENCIES`` in long runs."""
    http_requests: int = 0
    elapsed: float = 0.0
    calls: int = 0
    clients: int = 0
    goodbyes: int = 0
    dropped: int = 0
    silent_leavers: int = 0
    """Legacy clients, which cannot say goodbye: the collector ends them by idle timeout."""
    behind: float = 0.0
    """The most the sender fell behind the schedule, seconds."""
    stopped_early: bool = False

    def add_latency(self, seconds: float) -> None:
        self.http_requests += 1
        if len(self.latencies) < MAX_LATENCIES:
            self.latencies.append(seconds)
        else:  # reservoir sampling keeps the quantiles honest in bounded memory
            slot = _reservoir.randrange(self.http_requests)
            if slot < MAX_LATENCIES:
                self.latencies[slot] = seconds

    @property
    def ok(self) -> bool:
        return not self.refused and not self.errors and self.samples_accepted == self.samples_sent

    @property
    def rate(self) -> float:
        return self.samples_sent / self.elapsed if self.elapsed > 0 else 0.0

    def latency(self, quantile: float) -> float | None:
        """A quantile of the HTTP answer latency, in seconds (nearest rank)."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))]

    def as_dict(self) -> dict[str, Any]:
        p50, p99 = self.latency(0.5), self.latency(0.99)
        return {
            "title": self.title,
            "elapsed_s": round(self.elapsed, 3),
            "calls": self.calls,
            "clients": self.clients,
            "messages_sent": self.messages_sent,
            "samples_sent": self.samples_sent,
            "samples_accepted": self.samples_accepted,
            "refused": dict(self.refused),
            "errors": dict(self.errors),
            "bytes_sent": self.bytes_sent,
            "samples_per_second": round(self.rate, 2),
            "by_transport": dict(self.by_transport),
            "by_generation": dict(self.by_generation),
            "http_requests": self.http_requests,
            "http_latency_p50_ms": round(p50 * 1000, 3) if p50 is not None else None,
            "http_latency_p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
            "goodbyes": self.goodbyes,
            "dropped": self.dropped,
            "silent_leavers": self.silent_leavers,
            "behind_schedule_s": round(self.behind, 3),
            "stopped_early": self.stopped_early,
        }

    def render(self) -> str:
        p50, p99 = self.latency(0.5), self.latency(0.99)
        refused = sum(self.refused.values())
        errors = sum(self.errors.values())
        rows = [
            (
                "samples sent",
                f"{self.samples_sent}  ({_mix(self.by_generation, _GENERATION_NAMES)}; {_mix(self.by_transport, {})})",
            ),
            ("accepted (2xx)", f"{self.samples_accepted}"),
            ("refused", f"{refused}" + (f"  ({_counts(self.refused)})" if refused else "")),
        ]
        if errors:
            rows.append(("no answer", f"{errors}  ({_counts(self.errors)})"))
        rows += [
            ("bytes sent", f"{_size(self.bytes_sent)}"),
            ("rate", f"{self.rate:.1f} samples/s over {self.elapsed:.1f} s"),
            (
                "HTTP latency",
                f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms ({self.http_requests} requests)"
                if p50 is not None and p99 is not None
                else "no HTTP requests",
            ),
            (
                "clients",
                f"{self.clients} in {_plural(self.calls, 'call')}: {self.goodbyes} said goodbye, {self.dropped} dropped"
                + (f", {self.silent_leavers} legacy left silently" if self.silent_leavers else ""),
            ),
        ]
        if self.behind > 1.0:
            rows.append(("behind schedule", f"up to {self.behind:.1f} s (raise --concurrency or lower the load)"))
        width = max(len(label) for label, _ in rows)
        head = f"loadgen summary: {self.title}" + (" (stopped early)" if self.stopped_early else "")
        return "\n".join([head, *(f"  {label:<{width}}  {value}" for label, value in rows)])


_GENERATION_NAMES = {"2": "2.x", "3": "3.x", "legacy": "legacy"}


def _mix(counter: Counter[str], names: dict[str, str]) -> str:
    return ", ".join(f"{names.get(k, k)} {v}" for k, v in sorted(counter.items())) or "none"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counter.most_common())


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """A one-line progress display on stderr: redrawn in place on a terminal, else a line now and then."""

    def __init__(self, stream: IO[str] | None = None, every: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if every is not None else (0.25 if self.tty else 5.0)
        self._drawn = False

    def line(self, summary: Summary, scenario: Scenario, elapsed: float, done: bool = False) -> str:
        duration = scenario.duration
        if duration:
            share = 1.0 if done and not summary.stopped_early else min(1.0, elapsed / duration)
            filled = int(share * 20)
            when = f"{elapsed:5.1f}s/{duration:g}s [{'#' * filled}{'.' * (20 - filled)}] {share:4.0%}"
        else:
            when = f"{elapsed:6.1f}s"
        refused = sum(summary.refused.values()) + sum(summary.errors.values())
        p50 = summary.latency(0.5)
        latency = f"  p50 {p50 * 1000:.1f}ms" if p50 is not None else ""
        return (
            f"loadgen {when}  calls {scenario.active_calls()}  clients {scenario.active_clients()}"
            f"  sent {summary.samples_sent}  ok {summary.samples_accepted}  refused {refused}"
            f"  {summary.samples_sent / elapsed if elapsed > 0 else 0:.1f}/s{latency}"
        )

    def show(self, summary: Summary, scenario: Scenario, elapsed: float, done: bool = False) -> None:
        text = self.line(summary, scenario, elapsed, done)
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class _Socket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.sent = 0
        self.refused = 0
        self.pending: dict[bytes, asyncio.Future[None]] = {}
        self.reader: asyncio.Task[None] | None = None


class Runner:
    """Sends a :class:`Scenario` to the collector at ``url`` (``http://host:port``)."""

    def __init__(
        self,
        scenario: Scenario,
        url: str,
        *,
        concurrency: int = 64,
        realtime: bool = True,
        progress: Progress | None = None,
        timeout: float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.scenario = scenario
        self.url = url.rstrip("/")
        self.ws_url = "ws" + self.url[4:] if self.url.startswith("http") else self.url
        self.concurrency = concurrency
        self.realtime = realtime
        self.progress = progress
        self.timeout = timeout
        self.summary = Summary(title=_title(scenario))
        self._locks: dict[str, asyncio.Lock] = {}
        self._sockets: dict[str, _Socket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        self._sem = asyncio.Semaphore(concurrency)
        self._started = 0.0

    async def run(self, stop: asyncio.Event | None = None) -> Summary:
        """Send every tick (until ``stop`` is set, then the goodbyes) and return the summary."""
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        self._started = loop.time()
        ticker = asyncio.create_task(self._show_progress()) if self.progress else None
        at = 0.0
        try:
            # WebSockets hold their connection for as long as their sender lives, so they get a pool of
            # their own: in the HTTP pool they would starve the requests.
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency), timeout=timeout) as session,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as ws_session,
            ):
                self._session = session
                self._ws_session = ws_session
                for tick in self.scenario.ticks():
                    at = tick.at
                    if self.realtime:
                        delay = self._started + tick.at - loop.time()
                        if delay > 0:
                            if await _wait(stop, delay):
                                break
                        else:
                            self.summary.behind = max(self.summary.behind, -delay)
                    if stop is not None and stop.is_set():
                        break
                    await self._dispatch(tick)
                if stop is not None and stop.is_set():
                    self.summary.stopped_early = True
                    now = loop.time() - self._started if self.realtime else at
                    for goodbye in self.scenario.stop(now):
                        await self._dispatch(goodbye)
                if self._tasks:
                    await asyncio.gather(*self._tasks)
                await asyncio.gather(*(self._close_socket(sender) for sender in list(self._sockets)))
        finally:
            self.summary.elapsed = loop.time() - self._started
            self._count_clients()
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                assert self.progress is not None
                self.progress.show(self.summary, self.scenario, self.summary.elapsed, done=True)
                self.progress.finish()
        return self.summary

    # -- sending -----------------------------------------------------------------------------------
    async def _dispatch(self, tick: Tick) -> None:
        await self._sem.acquire()
        lock = self._locks.get(tick.sender)
        if lock is None:
            lock = self._locks[tick.sender] = asyncio.Lock()
        task = asyncio.create_task(self._send(tick, lock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, tick: Tick, lock: asyncio.Lock) -> None:
        try:
            async with lock:  # a sender's messages go out one after the other, in order
                encoded = tick.encode()
                s = self.summary
                s.messages_sent += 1
                s.samples_sent += tick.samples
                s.bytes_sent += len(encoded.data)
                s.by_transport[tick.transport] += 1
                s.by_generation[tick.generation] += 1
                if tick.transport == "http":
                    await self._post(tick, encoded)
                else:
                    await self._frame(tick, encoded)
                if tick.last:
                    if tick.sender in self._sockets:
                        await self._close_socket(tick.sender)
                    self._locks.pop(tick.sender, None)
        except Exception as exc:  # a bug must cost one message, not the run
            self.summary.errors[f"internal {type(exc).__name__}: {exc}"] += 1
        finally:
            self._sem.release()

    async def _post(self, tick: Tick, encoded: Any) -> None:
        assert self._session is not None
        started = time.perf_counter()
        try:
            async with self._session.post(self.url + tick.http_path, data=encoded.data, headers=encoded.headers()) as resp:
                body = await resp.read()
                self.summary.add_latency(time.perf_counter() - started)
                answer = _json(body)
                if 200 <= resp.status < 300:
                    accepted = answer.get("accepted") if isinstance(answer, dict) else None
                    self.summary.samples_accepted += accepted if isinstance(accepted, int) else tick.samples
                else:
                    reason = answer.get("error", "") if isinstance(answer, dict) else ""
                    self.summary.refused[f"HTTP {resp.status} {reason}".strip()] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.summary.errors[f"HTTP {type(exc).__name__}"] += 1

    async def _frame(self, tick: Tick, encoded: Any) -> None:
        sock = self._sockets.get(tick.sender)
        if sock is None or sock.ws.closed:
            if sock is not None:
                await self._close_socket(tick.sender)
            sock = await self._open_socket(tick)
            if sock is None:
                return
        try:
            if encoded.text:
                await sock.ws.send_str(encoded.data.decode())
            else:
                await sock.ws.send_bytes(encoded.data)
            sock.sent += tick.samples
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            self.summary.errors[f"WebSocket {type(exc).__name__}"] += 1

    async def _open_socket(self, tick: Tick) -> _Socket | None:
        assert self._ws_session is not None
        try:
            ws = await self._ws_session.ws_connect(self.ws_url + tick.websocket_path, autoping=False, max_msg_size=0)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status = getattr(exc, "status", None)
            key = f"WebSocket connect HTTP {status}" if status else f"WebSocket connect {type(exc).__name__}"
            self.summary.errors[key] += 1
            return None
        sock = _Socket(ws)
        sock.reader = asyncio.create_task(self._read(sock))
        self._sockets[tick.sender] = sock
        return sock

    async def _read(self, sock: _Socket) -> None:
        """Count the collector's error answers; answer its pings; resolve our flush pings."""
        ws = sock.ws
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                answer = _json(msg.data if isinstance(msg.data, bytes) else msg.data.encode())
                reason = answer.get("error", "unknown") if isinstance(answer, dict) else "unknown"
                sock.refused += 1
                self.summary.refused[f"WebSocket {reason}"] += 1
            elif msg.type == aiohttp.WSMsgType.PING:
                with contextlib.suppress(Exception):
                    await ws.pong(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                future = sock.pending.pop(bytes(msg.data), None)
                if future is not None and not future.done():
                    future.set_result(None)
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                break
        for future in sock.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("websocket closed"))

    async def _close_socket(self, sender: str) -> None:
        sock = self._sockets.pop(sender, None)
        if sock is None:
            return
        confirmed = False
        if not sock.ws.closed:
            token = f"flush-{id(sock)}".encode()
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            sock.pending[token] = future
            try:
                await sock.ws.ping(token)
                await asyncio.wait_for(future, self.timeout)
                confirmed = True
            except (ConnectionError, aiohttp.ClientError, OSError, RuntimeError, TimeoutError):
                pass
            with contextlib.suppress(Exception):
                await sock.ws.close()
        if sock.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.reader, 5)
        handled = sock.sent - sock.refused
        if confirmed:
            self.summary.samples_accepted += handled
        elif handled > 0:
            self.summary.errors["WebSocket closed before the collector confirmed"] += handled

    # -- reporting ---------------------------------------------------------------------------------
    async def _show_progress(self) -> None:
        assert self.progress is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.progress.every)
            self.progress.show(self.summary, self.scenario, loop.time() - self._started)

    def _count_clients(self) -> None:
        s, sc = self.summary, self.scenario
        clients = [c for c in sc.clients if c.joined]
        s.calls = sum(1 for call in sc.calls if any(c.joined for c in call.clients))
        s.clients = len(clients)
        s.goodbyes = sum(1 for c in clients if c.said_goodbye)
        s.dropped = sum(1 for c in clients if c.dropped and c.departed and not c.said_goodbye)
        s.silent_leavers = sum(1 for c in clients if c.generation == "legacy" and c.departed and not c.dropped)


async def run(scenario: Scenario, url: str, *, stop: asyncio.Event | None = None, **options: Any) -> Summary:
    """Send ``scenario`` to the collector at ``url``; see :class:`Runner` for ``options``."""
    return await Runner(scenario, url, **options).run(stop)


async def _wait(stop: asyncio.Event | None, delay: float) -> bool:
    """Sleep ``delay`` seconds; True if ``stop`` was set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _title(sc: Scenario) -> str:
    size = f"{_plural(sc.calls_at_once, 'call')} x {_plural(sc.clients_per_call, 'client')}"
    how = f"topology {sc.topology}, schema {sc.schema}, {sc.transport}/{sc.format}"
    impaired = f", impaired {' '.join(map(str, sc.impairments))}" if sc.impairments else ""
    return f"{size} ({how}{impaired}), every {sc.interval:g}s, seed {sc.seed}"
