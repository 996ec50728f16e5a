"""Records/s through the file exporter with the in-memory sending queue against the persistent one.

Each accepted message (``--per-message`` reports, one transaction, as a receiver hands it on) is
queued; the run ends when the last record is in the output file. The persistent queue is measured
with each ``fsync`` mode. Prints min/median/max records/s over ``--repeats`` runs and records per
CPU-second of the process (event loop and threads together).

    .venv/bin/python bench/file_queue.py [--records 20000] [--per-message 10] [--concurrency 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from webrtc_observer import transaction
from webrtc_observer.component import RetryLater, Settings
from webrtc_observer.config import ComponentId
from webrtc_observer.exporterhelper import SendingQueueConfig
from webrtc_observer.exporters.file import FileExporter, FileExporterConfig
from webrtc_observer.logs import Logger
from webrtc_observer.model import Batch, Report
from webrtc_observer.telemetry import Telemetry


class _Host:
    ready = True

    def problems(self) -> dict[str, str]:
        return {}


def _report(i: int) -> Report:
    return Report(
        type="CALL_EVENT",
        payload={"serviceId": "svc", "callId": f"call-{i // 40}", "timestamp": i, "name": "CLIENT_JOINED", "x": "y" * 400},
    )


async def _run(records: int, per_message: int, concurrency: int, queue: SendingQueueConfig, folder: Path) -> tuple[float, float]:
    telemetry = Telemetry()
    settings = Settings(ComponentId("file"), "exporter", telemetry, Logger("bench"), _Host())
    exporter = FileExporter(settings, FileExporterConfig(path=str(folder / "out.jsonl"), sending_queue=queue))
    await exporter.start()
    messages = [Batch(reports=[_report(i + j) for j in range(per_message)]) for i in range(0, records, per_message)]
    sent = telemetry.get("exporter_sent_records")
    assert sent is not None
    wall, cpu = time.perf_counter(), time.process_time()
    todo = iter(messages)

    async def client() -> None:  # one of ``concurrency`` senders, each waiting for its answer
        for message in todo:
            while True:
                try:
                    await transaction.run(exporter, message)
                    break
                except RetryLater:
                    await asyncio.sleep(0.001)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    while sent.value("file") < records:
        await asyncio.sleep(0.001)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await exporter.shutdown()
    return records / wall, records / cpu


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--per-message", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="messages in flight at once (clients)")
    args = parser.parse_args()
    logging.getLogger("bench").setLevel(logging.ERROR)
    cases: list[tuple[str, dict[str, object]]] = [
        ("memory", {}),
        ("file, fsync: never", {"storage": "file", "fsync": "never"}),
        ("file, fsync: batch", {"storage": "file", "fsync": "batch"}),
        ("file, fsync: always", {"storage": "file", "fsync": "always"}),
    ]
    print(f"{args.records} records, {args.per_message} a message, {args.concurrency} in flight, {args.repeats} runs each")
    print(f"{'queue':<22} {'records/s min':>14} {'median':>10} {'max':>10} {'records/CPU-s':>14}")
    for name, options in cases:
        rates, per_cpu = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                queue = SendingQueueConfig(directory=f"{tmp}/queue", **options)  # type: ignore[arg-type]
                rate, cpu_rate = await _run(args.records, args.per_message, args.concurrency, queue, Path(tmp))
            rates.append(rate)
            per_cpu.append(cpu_rate)
        print(
            f"{name:<22} {min(rates):>14,.0f} {statistics.median(rates):>10,.0f} {max(rates):>10,.0f}"
            f" {statistics.median(per_cpu):>14,.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
