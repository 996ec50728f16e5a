"""What the ``issues`` processor costs: the default pipeline with and without it, in process.

    .venv/bin/python bench/issues_overhead.py --calls 50 --clients-per-call 4 --ticks 20

One load-generator workload (SFU calls, 2.x samples, a quarter of the clients impaired with loss,
RTT spikes, frozen video and drops, so detectors raise and resolve), decoded and handed to
``correlation → quality → reports`` and to ``correlation → quality → issues → reports`` in this
process, no network, no export. Prints samples per second of each (best of ``--repeat`` runs), the
cost of the processor per sample, and how many issue reports it made. A benchmark prints figures; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from webrtc_observer.loadgen import Scenario
from webrtc_observer.model import Batch, Origin
from webrtc_observer.receiver._decoding import decode
from webrtc_observer.testing import running_collector

PIPELINES = {
    "without issues": ("correlation", "quality", "reports"),
    "with issues": ("correlation", "quality", "issues", "reports"),
}


def workload(calls: int, clients: int, ticks: int, seed: int) -> list[tuple[int, bytes]]:
    interval = 5.0
    sc = Scenario(
        calls=calls,
        clients_per_call=clients,
        topology="sfu",
        schema="2",
        impairments=["loss=0.15@0.25", "rtt=0.5@0.25", "frozen@0.25", "drop@0.1"],
        interval=interval,
        duration=interval * ticks,
        seed=seed,
    )
    return [(t.timestamp, json.dumps(t.body).encode()) for t in sc.ticks() if t.client_id is not None]


async def run(bodies: list[tuple[int, bytes]], processors: tuple[str, ...]) -> dict[str, Any]:
    options = {
        "correlation": "{client_idle_timeout: 10m, call_empty_timeout: 10m}",
        "quality": "{}",
        "issues": "{}",
        "reports": "{}",
    }
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors: {{{", ".join(f"{p}: {options[p]}" for p in processors)}}}
exporters: {{recording: {{}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: [{", ".join(processors)}], exporters: [recording]}}}}}}
"""
    async with running_collector(yaml_text) as c:
        entry = c.service.processors[0][2]
        recording = c.exporter()
        started = time.perf_counter()
        # Received at the sample's own time: stream time as the samples were spaced.
        for ts, data in bodies:
            origin = Origin("bench", "bench", ts, "2")
            decoded = decode(data, origin, route="samples", encoding="json", gzipped=False, limit=1 << 22)
            await entry.consume(Batch(samples=decoded.samples))
        seconds = time.perf_counter() - started
        issues = sum(1 for r in recording.reports if r.type == "OBSERVER_EVENT" and r.payload.get("value"))
    return {"samples": len(bodies), "seconds": seconds, "issues": issues}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--clients-per-call", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=20, help="samples per client")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bodies = workload(args.calls, args.clients_per_call, args.ticks, args.seed)
    best: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeat):
        for name, processors in PIPELINES.items():
            result = await run(bodies, processors)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    for name, r in best.items():
        print(
            f"{name:16} {r['samples']} samples in {r['seconds']:.3f} s: {r['samples'] / r['seconds']:,.0f} samples/s, {r['issues']} issue reports"
        )
    extra = (best["with issues"]["seconds"] - best["without issues"]["seconds"]) / len(bodies)
    print(f"issues processor: {extra * 1e6:.1f} µs per sample")


if __name__ == "__main__":
    asyncio.run(main())
