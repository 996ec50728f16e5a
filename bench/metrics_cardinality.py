"""Size and time of a /metrics scrape after a label bomb: many made-up serviceIds, each very long.

    .venv/bin/python bench/metrics_cardinality.py                       # quality samples; budget 10,000 and off
    .venv/bin/python bench/metrics_cardinality.py --shape plain --max-samples 10000 --repeats 20

Starts ``webrtc-observer run`` as its own process, once per ``--max-samples`` value, with the
default pipeline's processors (correlation, quality, reports) and the ``prometheus`` exporter. Posts
one message into each made-up serviceId. ``--shape`` says what the message carries:

* ``quality`` (the default): one client's two samples, 5 s apart, with inbound and outbound audio
  and video tracks and a candidate pair, so the quality processor observes RTT, jitter, fraction
  lost, bitrate and MOS: 11 histogram label sets per serviceId, 162 sample lines.
* ``jitter``: one sample with an inbound audio track that carries jitter (``quality_jitter`` only).
* ``plain``: one sample with an inbound audio track and no quality field.

Then it scrapes ``/metrics`` ``--repeats`` times and prints, for each ``max_samples``
(``service.telemetry.metrics.max_samples``; ``off`` is a budget larger than any scrape): the scrape
size, its sample lines and those of client-labelled series (overflow series left out), the largest
of the repeats (calls end 60 s after their clients' last sample, and the call histograms then get
series of their own, so a slow run grows late), the scrape's
wall time as the scraper sees it and the collector's CPU time for it (all its threads: rendering
runs on one), min / median / max, and the collector's resident memory. The targets (README, "The
collector's own telemetry"): a scrape under 2 MiB, served in under 100 ms.

A benchmark prints figures; it asserts nothing (tests/test_cardinality.py asserts the bounds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from webrtc_observer.telemetry import CLIENT_LABELS, OVERFLOW

OFF = 1_000_000_000
"""``max_samples`` for "budget off": more lines than any scrape here has."""

# The receiver's id limit (256 characters by default) would refuse these ids before they reach any
# metric: raised, so the metrics' own bounds are what is measured.
CONFIG = """
receivers: {{observertc: {{endpoint: "127.0.0.1:{port}", limits: {{max_id_length: 8192}}}}}}
processors:
  correlation: {{}}
  quality: {{}}
  reports: {{}}
exporters:
  prometheus: {{endpoint: "127.0.0.1:{metrics_port}"}}
service:
  telemetry: {{metrics: {{max_series: {max_series}, max_samples: {max_samples}}}, logs: {{level: warning}}}}
  pipelines:
    p: {{receivers: [observertc], processors: [correlation, quality, reports], exporters: [prometheus]}}
"""

T0 = 1_700_000_000_000
_CLIENT_VALUE = re.compile(rb'(\w+)="((?:[^"\\]|\\.)*)"')
_CLIENT_LABELS = frozenset(name.encode() for name in CLIENT_LABELS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (schedstat: nanoseconds on a CPU)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _hostile_id(i: int, length: int) -> str:
    head = f"{i:06d}-"
    return head + "x" * max(0, length - len(head))


def _quality_sample(client_id: str, ts: int, step: int) -> dict[str, Any]:
    """A 2.x client sample of one peer connection, audio and video both ways, counters ``step`` × 5 s on."""
    pc = "pc-1"
    return {
        "clientId": client_id,
        "callId": f"call-{client_id}",
        "timestamp": ts,
        "iceCandidatePairs": [
            {
                "candidatePairId": "CP1",
                "peerConnectionId": pc,
                "state": "succeeded",
                "nominated": True,
                "currentRoundTripTime": 0.042,
            }
        ],
        "inboundAudioTracks": [
            {
                "peerConnectionId": pc,
                "ssrc": 1111,
                "packetsReceived": 500 + 250 * step,
                "packetsLost": 3 + 2 * step,
                "bytesReceived": 40_000 + 20_000 * step,
                "jitter": 0.004,
                "roundTripTime": 0.05,
            }
        ],
        "inboundVideoTracks": [
            {
                "peerConnectionId": pc,
                "ssrc": 2222,
                "packetsReceived": 900 + 450 * step,
                "packetsLost": 1,
                "framesDecoded": 300 + 150 * step,
                "bytesReceived": 1_000_000 + 500_000 * step,
                "frameWidth": 640,
                "frameHeight": 480,
            }
        ],
        "outboundAudioTracks": [
            {
                "peerConnectionId": pc,
                "ssrc": 3333,
                "packetsSent": 510,
                "bytesSent": 40_000 + 20_000 * step,
                "roundTripTime": 0.048,
                "fractionLost": 0.0,
            }
        ],
        "outboundVideoTracks": [
            {"peerConnectionId": pc, "ssrc": 4444, "packetsSent": 950, "bytesSent": 900_000 + 500_000 * step}
        ],
    }


def _message(shape: str, i: int) -> dict[str, Any]:
    client = f"c{i}"
    if shape == "quality":
        return {"clientSamples": [_quality_sample(client, T0, 0), _quality_sample(client, T0 + 5000, 1)]}
    track: dict[str, object] = {"peerConnectionId": "pc-1", "ssrc": 1, "packetsReceived": 500, "packetsLost": 3}
    if shape == "jitter":
        track["jitter"] = 0.004
    return {"clientSamples": [{"clientId": client, "callId": f"call-{i}", "timestamp": T0, "inboundAudioTracks": [track]}]}


def _client_labelled(line: bytes) -> bool:
    """Whether a sample line has a client-derived label whose value is not the overflow one."""
    brace = line.find(b"{")
    if brace < 0:
        return False
    overflow = OVERFLOW.encode()
    return any(name in _CLIENT_LABELS and value != overflow for name, value in _CLIENT_VALUE.findall(line, brace))


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


async def _post_all(url: str, services: int, length: int, concurrency: int, shape: str) -> dict[int, int]:
    statuses: dict[int, int] = {}
    numbers = iter(range(services))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in numbers:
            target = f"{url}/rest/samples/{quote(_hostile_id(i, length), safe='')}/web"
            async with session.post(target, json=_message(shape, i)) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


def _spread(values: list[float]) -> str:
    return f"{min(values):.0f} / {statistics.median(values):.0f} / {max(values):.0f} ms"


async def _run_one(args: argparse.Namespace, max_samples: int) -> None:
    port, metrics_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "collector.yaml"
        config.write_text(
            CONFIG.format(port=port, metrics_port=metrics_port, max_series=args.max_series, max_samples=max_samples)
        )
        exe = Path(sys.executable).with_name("webrtc-observer")
        proc = subprocess.Popen([str(exe), "run", "--config", str(config)], stdout=subprocess.DEVNULL)
        try:
            url, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
            async with aiohttp.ClientSession() as session:
                await _wait_ready(session, f"{url}/health", proc)
                rss_before = _rss_mib(proc.pid)
                started = time.monotonic()
                statuses = await _post_all(url, args.services, args.id_length, args.concurrency, args.shape)
                posting = time.monotonic() - started
                sizes, lines, client, walls, cpus = [], [], [], [], []
                for _ in range(args.repeats):
                    cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
                    async with session.get(metrics) as resp:
                        body = await resp.read()
                    walls.append((time.perf_counter() - t0) * 1000)
                    cpus.append((_cpu_seconds(proc.pid) - cpu0) * 1000)
                    samples = [line for line in body.splitlines() if line and not line.startswith(b"#")]
                    sizes.append(len(body))
                    lines.append(len(samples))
                    client.append(sum(1 for line in samples if _client_labelled(line)))
                rss_after = _rss_mib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    budget = "off" if max_samples >= OFF else f"{max_samples:,}"
    print(f"max_samples {budget} (max_series {args.max_series}):")
    print(f"  posted {args.services} serviceIds in {posting:.1f} s: answers {statuses}")
    print(
        f"  largest scrape {max(sizes):,} bytes ({max(sizes) / 2**20:.2f} MiB), {max(lines):,} sample lines,"
        f" {max(client):,} of them client-labelled"
    )
    print(f"  over {args.repeats} scrapes, min / median / max: wall {_spread(walls)}, collector CPU {_spread(cpus)}")
    print(f"  collector RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after")


def _max_samples(text: str) -> int:
    return OFF if text == "off" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000, help="made-up serviceIds, one message each")
    parser.add_argument("--id-length", type=int, default=4000, help="characters of each serviceId")
    parser.add_argument("--max-series", type=int, default=2000, help="service.telemetry.metrics.max_series")
    parser.add_argument(
        "--max-samples",
        type=_max_samples,
        nargs="+",
        default=[10_000, OFF],
        help="service.telemetry.metrics.max_samples, one run each; 'off' for no budget (default: 10000 off)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="scrapes timed")
    parser.add_argument("--shape", choices=("quality", "jitter", "plain"), default="quality", help="what each message carries")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    shape = {"quality": "2 samples feeding the quality histograms", "jitter": "1 sample with jitter", "plain": "1 plain sample"}
    print(f"{args.services} serviceIds of {args.id_length} characters, each: {shape[args.shape]}")
    for max_samples in args.max_samples:
        asyncio.run(_run_one(args, max_samples))


if __name__ == "__main__":
    main()
