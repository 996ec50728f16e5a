"""What a ``service.state`` checkpoint costs: one process's correlation state written whole, and read back.

Builds a correlation processor holding ``--calls`` calls of ``--clients`` clients, each client with
one peer connection and an audio and a video track both ways, then times (min/median/max over
``--repeats``): a checkpoint after every call changed (changes folded in, copy, encode, write,
fsync, rename), the part of it spent on the event loop, the file size, and a restore into a new
processor (read, decode, ``assign``).

    .venv/bin/python bench/state_checkpoint.py [--calls 10000] [--clients 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from webrtc_observer.component import Worker
from webrtc_observer.logs import get_logger
from webrtc_observer.model import Batch, ClientSample, Origin, Track
from webrtc_observer.processors.correlation import CorrelationConfig, CorrelationProcessor
from webrtc_observer.state_store import LocalCheckpoint, LocalStore
from webrtc_observer.telemetry import Telemetry
from webrtc_observer.testing import settings_for_tests

T0 = 1_700_000_000_000


class _Sink:
    async def consume(self, batch: Batch) -> None:
        pass


def _processor() -> CorrelationProcessor:
    config = CorrelationConfig(max_calls=10_000_000, max_clients=100_000_000)
    return CorrelationProcessor(settings_for_tests("correlation", "processor"), config, _Sink())


def _sample(call: int, client: int, tick: int) -> ClientSample:
    ssrc = (call * 64 + client) * 4
    pc = f"pc-{call}-{client}"
    tracks = [Track(kind=k, ssrc=ssrc + i, peer_connection_id=pc, track_id=f"t{i}") for i, k in enumerate(("audio", "video"))]
    return ClientSample(
        origin=Origin("svc", "mu", int(time.time() * 1000), "2"),
        client_id=f"client-{call}-{client}",
        timestamp=T0 + tick * 1000,
        call_id=f"call-{call}",
        room_id=f"room-{call}",
        user_id=f"user-{client}",
        outbound_tracks=tracks,
        inbound_tracks=[
            Track(kind=t.kind, ssrc=t.ssrc + 2, peer_connection_id=pc, track_id=f"in{i}") for i, t in enumerate(tracks)
        ],
    )


async def _touch_every_call(processor: CorrelationProcessor, calls: int, clients: int, tick: int) -> None:
    for call in range(calls):
        await processor.consume(Batch(samples=[_sample(call, c, tick) for c in range(clients)]))


async def _flush(timeout: float) -> None:
    pass


def _cycle(directory: Path, processor: CorrelationProcessor) -> LocalCheckpoint:
    return LocalCheckpoint(
        LocalStore(directory, Worker()),
        [("p/correlation", processor)],
        interval=3600,
        flush=_flush,
        flush_timeout=10,
        telemetry=Telemetry(),
        log=get_logger(),
    )


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        processor = _processor()
        cycle = _cycle(directory, processor)
        await cycle.start()
        totals: list[float] = []
        on_loop: list[float] = []
        for tick in range(args.repeats):
            await _touch_every_call(processor, args.calls, args.clients, tick)
            loop = asyncio.get_running_loop()
            blocked = 0.0
            probe_at = time.perf_counter()

            async def probe() -> None:  # the longest stretch the event loop could not run a callback
                nonlocal blocked, probe_at
                while True:
                    await asyncio.sleep(0)
                    now = time.perf_counter()
                    blocked = max(blocked, now - probe_at)
                    probe_at = now

            task = loop.create_task(probe())
            await asyncio.sleep(0)
            started = time.perf_counter()
            assert await cycle.checkpoint()
            totals.append(time.perf_counter() - started)
            task.cancel()
            on_loop.append(blocked)
        size = cycle.store.path.stat().st_size
        entries = cycle.entries
        await cycle.shutdown()

        restores = []
        for _ in range(args.repeats):
            fresh = _processor()
            again = _cycle(directory, fresh)
            started = time.perf_counter()
            await again.start()
            restores.append(time.perf_counter() - started)
            assert fresh.state_sizes()["calls"] == args.calls
            await again.shutdown()

    def fmt(values: list[float]) -> str:
        return f"{min(values) * 1000:.0f} / {statistics.median(values) * 1000:.0f} / {max(values) * 1000:.0f} ms"

    print(f"{args.calls} calls x {args.clients} clients: {entries} entries, {size / 1e6:.1f} MB per checkpoint")
    print(f"checkpoint (min/median/max): {fmt(totals)}; longest event-loop stall: {fmt(on_loop)}")
    print(f"restore (read, decode, assign): {fmt(restores)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
