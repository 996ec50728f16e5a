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
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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


async def run_end_to_end(samples: list[tuple[str, dict[str, Any]]], workdir: Path, expected_reports: int) -> dict[str, Any]:
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
    proc = subprocess.Popen([sys.executable, "-m", "webrtc_observer", "run", "--config", str(config)], stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            by_client: dict[str, list[str]] = {}
            for sender, body in samples:
                by_client.setdefault(sender, []).append(json.dumps(body))
            sockets = {c: await http.ws_connect(f"ws://127.0.0.1:{port}/samples/bench/bench", compress=0) for c in by_client}
            baseline = _peak_rss(proc.pid)
            started = time.perf_counter()

            async def send(client: str) -> None:
                ws = sockets[client]
                for frame in by_client[client]:
                    await ws.send_str(frame)

            await asyncio.gather(*(send(c) for c in by_client))
            sent = time.perf_counter() - started
            # Done when every report has been written: the in-process run of the same workload says how many.
            deadline = time.monotonic() + 600
            while _lines(out) < expected_reports and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - started
            peak = _peak_rss(proc.pid)
            for ws in sockets.values():
                await ws.close()
        reports = sum(1 for _ in out.open("rb"))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
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
    if anchor:
        print(
            f"ratio ours/observer-js: in-process {ours['samplesPerSecond'] / anchor['samplesPerSecond']:.2f}, "
            f"end-to-end {e2e['samplesPerSecond'] / anchor['samplesPerSecond']:.2f}"
        )


if __name__ == "__main__":
    main()
