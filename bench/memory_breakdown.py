"""Where an active client's memory is: tracemalloc of ``collector.yaml`` in this process, per client.

The shipped pipeline runs in this process with its call timeouts and WebSocket heartbeat lifted. A
load process opens one WebSocket per client and sends every sample of the client but its last (the
goodbye), in the frames of ``bench/pipeline.py``, in rounds of 200 frames. Two calls warm up first;
then half of the clients, a snapshot, the other half, a second snapshot, each taken once every
frame sent is taken in and its reports written. What the second half added, per client, is printed
by source file (``--by file``), by the line that allocated it (``--by line``), or by the innermost
line of this repository on the allocation's stack (``--by ours``): what a library allocates in a call
from our code (msgspec decoding, aiohttp answering our handler) shows under our line, what it
allocates in its own callbacks (a connection's parser and tasks) under its own.

Traced Python memory is a little below RSS (allocator rounding and arenas); ``bench/pipeline.py
--only memory`` measures RSS.

    .venv/bin/python bench/memory_breakdown.py [--workload capture|mesh] [--clients 1000] [--by file|line|ours] [--top 30]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import linecache
import pickle
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

import _workloads  # bench/, the script's folder, is on the path
import yaml
from pipeline import FileSink, _by_call, _split_goodbyes, _WebSocket, shipped_config

from webrtc_observer.testing import RunningCollector, running_collector

ROOT = Path(__file__).resolve().parents[1]

_LOAD = r"""
import asyncio, pickle, sys

sys.path.insert(0, sys.argv[4])
from pipeline import _WebSocket

async def main(port, path, per_round):
    items = pickle.loads(open(path, "rb").read())
    sockets = {}
    for sender, _ in items:
        if sender not in sockets:
            sockets[sender] = await _WebSocket.connect(port, "/samples/bench/bench")
    wait = asyncio.get_running_loop().run_in_executor
    for start in range(0, len(items), per_round):  # a round at a time, each taken in before the next
        for sender, frame in items[start : start + per_round]:
            await sockets[sender].send(frame)
        print("sent", flush=True)
        await wait(None, sys.stdin.readline)
    await wait(None, sys.stdin.readline)  # connections stay open until told

asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
"""


_ROUND = 200
"""Frames sent at once: the collector takes each round in before the next is sent, so the shipped
queues never fill (tracemalloc makes every step slower)."""


def _frames(calls: list[list[_workloads.Message]]) -> list[tuple[str, bytes]]:
    """(client, WebSocket frame) of every sample of ``calls`` but each client's last."""
    active, _ = _split_goodbyes([m for call in calls for m in call])
    return [(m.sender, _WebSocket.frame(m.frame)) for m in active]


class _Load:
    """Sends frames from a process of its own, each client on its own WebSocket, kept open."""

    def __init__(self, c: RunningCollector, port: int, folder: Path) -> None:
        self._c, self._port, self._folder = c, port, folder
        self._processes: list[asyncio.subprocess.Process] = []
        self._sent = 0

    async def send(self, items: list[tuple[str, bytes]]) -> None:
        """Send ``items``; return once the collector took every frame sent so far in and exported it."""
        path = self._folder / f"frames-{len(self._processes)}.pickle"
        path.write_bytes(pickle.dumps(items))
        load = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LOAD,
            str(self._port),
            str(path),
            str(_ROUND),
            str(Path(__file__).resolve().parent),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE,
        )
        self._processes.append(load)
        assert load.stdout is not None and load.stdin is not None
        accepted, queued = self._c.telemetry.get("receiver_accepted_samples"), self._c.telemetry.get("exporter_queue_size")
        for start in range(0, len(items), _ROUND):
            await load.stdout.readline()  # "sent": one more round written
            self._sent += len(items[start : start + _ROUND])
            async with asyncio.timeout(120):  # a frame refused would never count: say so
                while accepted.total() < self._sent or queued.total():
                    await asyncio.sleep(0.05)
            load.stdin.write(b"\n")
        await asyncio.sleep(0.5)  # the exporters' last writes

    async def close(self) -> None:
        for load in self._processes:
            assert load.stdin is not None
            load.stdin.write(b"\n")
        for load in self._processes:
            await load.wait()


async def measure(workload: str, clients: int) -> tuple[tracemalloc.Snapshot, tracemalloc.Snapshot, int]:
    """(snapshot at half, snapshot at all clients, clients added between them)."""
    if workload == "capture":
        calls = _by_call(_workloads.capture(clients // 2 + 2, 5))
    else:
        calls = _by_call(_workloads.mesh(clients // 4 + 2, 4, 5, 10))
    warm, calls = calls[:2], calls[2:]
    half = len(calls) // 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        launch = shipped_config(folder, FileSink(folder / "reports.jsonl"), timeouts="1h")
        config = yaml.safe_load(launch.config.read_text())
        # The load never answers pings, and tracemalloc makes the run outlast the shipped 30 s
        # heartbeat: an hour keeps the connections (and their heartbeat timers) without dropping them.
        config["receivers"]["observertc"]["websocket_heartbeat"] = "1h"
        async with running_collector(json.dumps(config), env=launch.env) as c:
            load = _Load(c, launch.port, folder)
            await load.send(_frames(warm))
            tracemalloc.start(25)
            await load.send(_frames(calls[:half]))
            gc.collect()
            first = tracemalloc.take_snapshot()
            second_half = _frames(calls[half:])
            await load.send(second_half)
            gc.collect()
            second = tracemalloc.take_snapshot()
            tracemalloc.stop()
            await load.close()
    return first, second, len({sender for sender, _ in second_half})


def _where(filename: str, lineno: int | None = None) -> str:
    name = filename.split("site-packages/")[-1]
    if name.startswith(str(ROOT)):
        name = name[len(str(ROOT)) + 1 :]
    elif "/lib/python3" in name:
        name = name.split("/lib/")[-1]
    if lineno is None:
        return name
    return f"{name}:{lineno}  {linecache.getline(filename, lineno).strip()[:70]}"


def report(first: tracemalloc.Snapshot, second: tracemalloc.Snapshot, clients: int, by: str, top: int) -> list[str]:
    not_ours = [tracemalloc.Filter(False, str(Path(__file__).parent / "*"))]  # this script's frames to send
    first, second = first.filter_traces(not_ours), second.filter_traces(not_ours)
    rows: Counter[str] = Counter()
    if by in ("file", "line"):
        for stat in second.compare_to(first, "filename" if by == "file" else "lineno"):
            frame = stat.traceback[0]
            rows[_where(frame.filename, None if by == "file" else frame.lineno)] += stat.size_diff
    else:
        ours = str(ROOT) + "/"
        for stat in second.compare_to(first, "traceback"):
            mine = [f for f in stat.traceback if f.filename.startswith(ours) and "/bench/" not in f.filename]
            frame = mine[-1] if mine else stat.traceback[-1]  # frames run from the oldest to the innermost
            rows[_where(frame.filename, frame.lineno)] += stat.size_diff
    total = sum(rows.values())
    out = [
        f"{total / clients:,.0f} bytes traced per client ({clients} clients added)",
        "",
        "| bytes per client | where |",
        "| ---: | --- |",
    ]
    out += [f"| {size / clients:,.0f} | `{where}` |" for where, size in rows.most_common(top)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("capture", "mesh"), default="capture")
    parser.add_argument("--clients", type=int, default=1000, help="active clients at the second snapshot")
    parser.add_argument("--by", choices=("file", "line", "ours"), default="file")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    first, second, clients = asyncio.run(measure(args.workload, args.clients))
    print("\n".join(report(first, second, clients, args.by, args.top)))


if __name__ == "__main__":
    main()
