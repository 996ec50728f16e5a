"""Throughput of webrtc-observer against @observertc/observer-js on the same schema-2 samples.

    .venv/bin/python bench/pipeline.py --calls 50 --clients-per-call 4 --ticks 20

Prints one line per measurement and the ratio ours / observer-js. Three measurements, one workload
(``webrtc_observer.loadgen.Scenario``, schema 2, P2P/mesh calls, realistic counters):

- ``observer-js``: the anchor, in-process in Node (``bench/observer_js/run.mjs``), reports at the end.
- ``ours in-process``: decode + correlation + quality + reports in this process, no network, no export.
- ``ours end-to-end``: the collector as its own process (``webrtc-observer run``), one WebSocket per
  client from this process, through correlation, quality and reports into the file exporter; timed
  from the first message sent to the last report written. Peak RSS of the collector is read from
  /proc.

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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
OBSERVER_JS = ROOT / "bench" / "observer_js"


def workload(calls: int, clients_per_call: int, ticks: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """(client id, 2.x ``Samples`` wrapper holding one ClientSample), in send order."""
    from webrtc_observer.loadgen import Scenario

    topology = "p2p" if clients_per_call == 2 else "mesh"
    scenario = Scenario(
        calls=calls, clients_per_call=clients_per_call, topology=topology, schema="2", interval=1, duration=ticks, seed=seed
    )
    out = []
    for tick in scenario.ticks():
        body = tick.body
        if isinstance(body, dict) and body.get("clientSamples"):
            out.append((tick.sender, body))
    return out


def run_observer_js(samples: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    if shutil.which("node") is None or not (OBSERVER_JS / "node_modules").exists():
        print("observer-js: skipped (run `npm ci` in bench/observer_js)", file=sys.stderr)
        return None
    items = []
    for _, body in samples:
        for sample in body["clientSamples"]:
            items.append(
                {"callId": sample.get("callId"), "roomId": sample.get("roomId"), "clientId": sample["clientId"], "sample": sample}
            )
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
    return json.loads(out.stdout.strip().splitlines()[-1])


async def run_in_process(samples: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    from webrtc_observer.model import Batch, Origin
    from webrtc_observer.receiver._decoding import decode
    from webrtc_observer.testing import running_collector

    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
processors: {correlation: {}, quality: {}, reports: {}}
exporters: {recording: {}}
service: {pipelines: {p: {receivers: [observertc], processors: [correlation, quality, reports], exporters: [recording]}}}
"""
    bodies = [json.dumps(body).encode() for _, body in samples]
    async with running_collector(yaml_text) as c:
        entry = c.service.processors[0][2]
        recording = c.exporter()
        origin = Origin("bench", "bench", 0, "2")
        started = time.perf_counter()
        for data in bodies:
            decoded = decode(data, origin, route="samples", encoding="json", gzipped=False, limit=1 << 22)
            await entry.consume(Batch(samples=decoded.samples))
        seconds = time.perf_counter() - started
        reports = len(recording.reports)
        recording.batches.clear()
    return {"samples": len(bodies), "seconds": seconds, "samplesPerSecond": len(bodies) / seconds, "reports": reports}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.asynccontextmanager
async def _collector(workdir: Path) -> AsyncIterator[tuple[int, Path, int, aiohttp.ClientSession]]:
    """The collector as its own process, writing reports to a file; yields (port, file, its pid, session)."""
    port, out = _free_port(), workdir / "reports.jsonl"
    config = workdir / "bench.yaml"
    config.write_text(
        f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:{port}", websocket_heartbeat: 0}}}}
processors: {{correlation: {{client_idle_timeout: 10m, call_empty_timeout: 10m}}, quality: {{}}, reports: {{}}}}
exporters: {{file: {{path: "{out}", queue_size: 100000}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: [correlation, quality, reports], exporters: [file]}}}}}}
"""
    )
    command = [sys.executable, "-m", "webrtc_observer", "run", "--config", str(config)]
    profile = os.environ.get("BENCH_PROFILE")
    if profile:  # sample the collector with py-spy: BENCH_PROFILE=/tmp/collector (one file per run)
        command = ["py-spy", "record", "-r", "200", "-f", "raw", "-o", f"{profile}-{port}.txt", "--", *command]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    pid = _collector_pid(proc.pid) if profile else proc.pid
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            yield port, out, pid, http
    finally:
        os.kill(pid, signal.SIGTERM)  # under py-spy, the profile is written once the collector exits
        proc.wait(timeout=60)


def _collector_pid(parent: int) -> int:
    """The collector started by py-spy (its only child)."""
    for _ in range(200):
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("py-spy did not start the collector")


def _by_client(samples: list[tuple[str, dict[str, Any]]]) -> dict[str, list[tuple[tuple[str, int], str]]]:
    """Per client, in order: ((clientId, sample timestamp), JSON frame)."""
    out: dict[str, list[tuple[tuple[str, int], str]]] = {}
    for sender, body in samples:
        sample = body["clientSamples"][0]
        out.setdefault(sender, []).append(((sample["clientId"], sample["timestamp"]), json.dumps(body)))
    return out


async def run_end_to_end(samples: list[tuple[str, dict[str, Any]]], workdir: Path, expected_reports: int) -> dict[str, Any]:
    """Peak: every client sends all its samples as fast as the collector takes them."""
    by_client = _by_client(samples)
    async with _collector(workdir) as (port, out, pid, http):
        sockets = {c: await http.ws_connect(f"ws://127.0.0.1:{port}/samples/bench/bench", compress=0) for c in by_client}
        baseline = _peak_rss(pid)
        started = time.perf_counter()

        async def send(client: str) -> None:
            ws = sockets[client]
            for _, frame in by_client[client]:
                await ws.send_str(frame)

        await asyncio.gather(*(send(c) for c in by_client))
        sent = time.perf_counter() - started
        # Done when every report has been written: the in-process run of the same workload says how many.
        deadline = time.monotonic() + 600
        while _lines(out) < expected_reports and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        peak = _peak_rss(pid)
        for ws in sockets.values():
            await ws.close()
        reports = _lines(out)
    clients = len(by_client)
    return {
        "samples": len(samples),
        "seconds": seconds,
        "sendSeconds": sent,
        "samplesPerSecond": len(samples) / seconds,
        "reports": reports,
        "peakRssBytes": peak,
        "rssPerClientBytes": (peak - baseline) / clients if clients else 0,
        "clients": clients,
    }


async def run_paced(samples: list[tuple[str, dict[str, Any]]], workdir: Path, rate: float) -> dict[str, Any]:
    """Steady state at ``rate`` samples/s: latency from sending a sample to its first report in the file,
    and resident memory per client once every client is known."""
    by_client = _by_client(samples)
    sent_at: dict[tuple[str, int], float] = {}
    seen_at: dict[tuple[str, int], float] = {}
    async with _collector(workdir) as (port, out, pid, http):
        sockets = {c: await http.ws_connect(f"ws://127.0.0.1:{port}/samples/bench/bench", compress=0) for c in by_client}
        baseline = _rss(pid)
        done = asyncio.Event()

        async def tail() -> None:
            position = 0
            while not (done.is_set() and len(seen_at) >= len(sent_at)):
                await asyncio.sleep(0.005)
                if not out.exists():
                    continue
                with out.open("rb") as f:
                    f.seek(position)
                    chunk = f.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                position += len(complete)
                now = time.perf_counter()
                for line in complete.splitlines():
                    payload = json.loads(line)["payload"]
                    key = (payload.get("clientId"), payload.get("timestamp"))
                    if key in sent_at and key not in seen_at:
                        seen_at[key] = now

        tailer = asyncio.create_task(tail())
        order = [(c, key, frame) for c, frames in by_client.items() for key, frame in frames]
        order.sort(key=lambda item: item[1][1])  # by sample time, interleaving the clients
        started = time.perf_counter()
        for i, (client, key, frame) in enumerate(order):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[key] = time.perf_counter()
            await sockets[client].send_str(frame)
        done.set()
        await asyncio.wait_for(tailer, 120)
        steady = _rss(pid)
        for ws in sockets.values():
            await ws.close()
    latencies = sorted(seen_at[k] - sent_at[k] for k in seen_at)
    clients = len(by_client)
    return {
        "rate": rate,
        "p50Seconds": latencies[len(latencies) // 2],
        "p99Seconds": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "rssPerClientBytes": (steady - baseline) / clients if clients else 0,
        "clients": clients,
    }


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--clients-per-call", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=20, help="samples per client")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    samples = workload(args.calls, args.clients_per_call, args.ticks, args.seed)
    print(f"workload: {len(samples)} schema-2 samples, {args.calls} calls x {args.clients_per_call} clients x {args.ticks} ticks")
    anchor = run_observer_js(samples)
    if anchor:
        print(
            f"observer-js      : {anchor['samplesPerSecond']:9.0f} samples/s  {anchor['reports'] / max(anchor['samples'], 1):5.1f} reports/sample"
        )
    ours = asyncio.run(run_in_process(samples))
    print(
        f"ours in-process  : {ours['samplesPerSecond']:9.0f} samples/s  {ours['reports'] / ours['samples']:5.1f} reports/sample"
    )
    with tempfile.TemporaryDirectory() as tmp:
        e2e = asyncio.run(run_end_to_end(samples, Path(tmp), ours["reports"]))
    print(
        f"ours end-to-end  : {e2e['samplesPerSecond']:9.0f} samples/s  {e2e['reports'] / e2e['samples']:5.1f} reports/sample"
        f"  peak RSS {e2e['peakRssBytes'] / 2**20:.0f} MiB, {e2e['rssPerClientBytes'] / 1024:.1f} KiB per client"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paced = asyncio.run(run_paced(samples, Path(tmp), e2e["samplesPerSecond"] / 2))
    print(
        f"ours at half peak: {paced['rate']:9.0f} samples/s  latency p50 {paced['p50Seconds'] * 1000:.0f} ms,"
        f" p99 {paced['p99Seconds'] * 1000:.0f} ms; steady RSS {paced['rssPerClientBytes'] / 1024:.1f} KiB per client"
    )
    if anchor:
        print(
            f"ratio ours/observer-js: in-process {ours['samplesPerSecond'] / anchor['samplesPerSecond']:.2f}, "
            f"end-to-end {e2e['samplesPerSecond'] / anchor['samplesPerSecond']:.2f}"
        )


if __name__ == "__main__":
    main()
