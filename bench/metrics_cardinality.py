"""Size and time of a /metrics scrape after a label bomb: many made-up serviceIds, each very long.

    .venv/bin/python bench/metrics_cardinality.py --services 10000 --id-length 4000 --repeats 20

Starts ``webrtc-observer run`` as its own process, with the default pipeline's processors
(correlation, quality, reports) and the ``prometheus`` exporter. Posts one client sample with an
inbound audio track into each made-up serviceId (``--jitter``: the track carries jitter, so the
quality processor observes it into ``quality_jitter``, a histogram with a series per serviceId).
Then scrapes ``/metrics`` ``--repeats`` times and prints the scrape size, the number of series
lines, the scrape time (min / median / max) and the collector's resident memory. The targets
(README, "The collector's own telemetry"): a scrape under 2 MiB, served in under 100 ms.

A benchmark prints figures; it asserts nothing (tests/test_cardinality.py asserts the size bound).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

CONFIG = """
receivers: {{observertc: {{endpoint: "127.0.0.1:{port}"}}}}
processors:
  correlation: {{}}
  quality: {{}}
  reports: {{}}
exporters:
  prometheus: {{endpoint: "127.0.0.1:{metrics_port}"}}
service:
  telemetry: {{metrics: {{max_series: {max_series}}}, logs: {{level: warning}}}}
  pipelines:
    p: {{receivers: [observertc], processors: [correlation, quality, reports], exporters: [prometheus]}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _hostile_id(i: int, length: int) -> str:
    head = f"{i:06d}-"
    return head + "x" * max(0, length - len(head))


async def _wait_ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the collector exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise SystemExit("the collector did not become ready in 30 s")


async def _post_all(url: str, services: int, length: int, concurrency: int, jitter: bool) -> dict[int, int]:
    statuses: dict[int, int] = {}
    numbers = iter(range(services))

    track: dict[str, object] = {"peerConnectionId": "pc-1", "ssrc": 1, "packetsReceived": 500, "packetsLost": 3}
    if jitter:
        track["jitter"] = 0.004

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in numbers:
            body = {
                "clientSamples": [
                    {
                        "clientId": f"c{i}",
                        "callId": f"call-{i}",
                        "timestamp": 1_700_000_000_000,
                        "inboundAudioTracks": [track],
                    }
                ]
            }
            async with session.post(f"{url}/rest/samples/{quote(_hostile_id(i, length), safe='')}/web", json=body) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


async def _run(args: argparse.Namespace) -> None:
    port, metrics_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "collector.yaml"
        config.write_text(CONFIG.format(port=port, metrics_port=metrics_port, max_series=args.max_series))
        exe = Path(sys.executable).with_name("webrtc-observer")
        proc = subprocess.Popen([str(exe), "run", "--config", str(config)], stdout=subprocess.DEVNULL)
        try:
            url, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
            async with aiohttp.ClientSession() as session:
                await _wait_ready(session, f"{url}/health", proc)
                rss_before = _rss_mib(proc.pid)
                started = time.monotonic()
                statuses = await _post_all(url, args.services, args.id_length, args.concurrency, args.jitter)
                posting = time.monotonic() - started
                sizes, lines, times = [], [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    async with session.get(metrics) as resp:
                        body = await resp.read()
                    times.append((time.perf_counter() - t0) * 1000)
                    sizes.append(len(body))
                    lines.append(sum(1 for line in body.splitlines() if line and not line.startswith(b"#")))
                rss_after = _rss_mib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    shape = "with jitter" if args.jitter else "without quality fields"
    print(f"posted {args.services} serviceIds ({shape}) of {args.id_length} chars in {posting:.1f} s: answers {statuses}")
    print(f"max_series {args.max_series}: scrape {max(sizes) / 1024:.0f} KiB, {max(lines)} series lines")
    print(
        f"scrape time over {args.repeats} repeats: min {min(times):.1f} ms, "
        f"median {statistics.median(times):.1f} ms, max {max(times):.1f} ms (the first: {times[0]:.1f} ms)"
    )
    print(f"collector RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000, help="made-up serviceIds, one sample each")
    parser.add_argument("--id-length", type=int, default=4000, help="characters of each serviceId")
    parser.add_argument("--max-series", type=int, default=2000, help="service.telemetry.metrics.max_series")
    parser.add_argument("--repeats", type=int, default=20, help="scrapes timed")
    parser.add_argument(
        "--jitter", action="store_true", help="samples carry jitter, so quality_jitter grows a series per serviceId"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
