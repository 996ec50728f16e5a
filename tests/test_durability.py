"""Accepted means delivered: the collector as a real process (``webrtc-observer run``), a real broker.

- With the persistent sending queue, a SIGKILL while the broker is frozen loses nothing that a 202
  answered: the next run on the same directory delivers it to Kafka (read back by an independent
  consumer).
- With the in-memory queue, a SIGTERM with undeliverable records ends with exit code 3 and the loss
  counted and logged, also through the multi-worker supervisor.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import _samples
from tests._kafka_broker import Broker, kafka_broker_fixture  # noqa: F401  (the kafka_broker fixture)
from tests._process import CollectorProcess, free_port

pytestmark = pytest.mark.filterwarnings(
    "ignore:read_text is deprecated:DeprecationWarning", "ignore:open_text is deprecated:DeprecationWarning"
)


class Collector(CollectorProcess):
    """``webrtc-observer run`` on a config whose receiver listens on ``PORT``."""

    def __init__(self, tmp_path: Path, config: str, name: str) -> None:
        port = free_port()
        path = tmp_path / f"{name}.yaml"
        path.write_text(config.replace("PORT", str(port)))
        super().__init__(tmp_path / f"{name}.log", path, port)

    async def post(self, http: aiohttp.ClientSession, i: int) -> int:
        body = {"clientId": f"c-{i % 5}", "callId": f"call-{i % 3}", "sampleSeq": i, "timestamp": _samples.T0 + i}
        async with http.post(self.url("/rest/samples/svc/mu"), json=body) as resp:
            await resp.read()
            return resp.status

    async def stop(self, sig: int, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.to_thread(self.proc.wait, timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.close_log()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.close_log()


def _config(broker: Broker, sending_queue: dict[str, Any], workers: int = 1) -> str:
    kafka = {
        "brokers": [broker.bootstrap],
        "timeout": "1s",
        "shutdown_timeout": "1s",
        "retry_on_failure": {"initial_interval": "100ms", "max_interval": "500ms", "max_elapsed_time": "0s"},
        "sending_queue": sending_queue,
    }
    return f"""
receivers:
  observertc: {{endpoint: "127.0.0.1:PORT"}}
exporters:
  kafka: {json.dumps(kafka)}
service:
  workers: {workers}
  shutdown_timeout: 10s
  pipelines:
    samples: {{receivers: [observertc], exporters: [kafka]}}
"""


def _ids(broker: Broker) -> Counter[str]:
    out: Counter[str] = Counter()
    for m in broker.read("reports", None, 10):
        payload = json.loads(m.value)["payload"]
        out[f"{payload['client_id']}:{payload['sample_seq']}"] += 1
    return out


def _id(i: int) -> str:
    return f"c-{i % 5}:{i}"


async def test_sigkill_with_reports_queued_on_disk_loses_nothing_that_was_accepted(kafka_broker, http, tmp_path):
    config = _config(kafka_broker, {"storage": "file", "directory": str(tmp_path / "queue")})
    first = Collector(tmp_path, config, "first")
    accepted: list[int] = []
    try:
        await first.wait_ready(http)
        for i in range(10):
            assert await first.post(http, i) == 202
            accepted.append(i)
        kafka_broker.freeze()
        for i in range(10, 60):  # on disk before each 202; the broker takes none of them
            assert await first.post(http, i) == 202
            accepted.append(i)
    finally:
        first.kill()  # SIGKILL: no drain, no flush
    kafka_broker.thaw()

    second = Collector(tmp_path, config, "second")
    try:
        await second.wait_ready(http)
        want = {_id(i) for i in accepted}
        deadline = time.monotonic() + 30
        while True:
            got = await asyncio.to_thread(_ids, kafka_broker)
            if set(got) >= want:
                break
            assert time.monotonic() < deadline, f"{len(want - set(got))} accepted reports never reached Kafka"
            await asyncio.sleep(0.2)
        assert await second.stop(signal.SIGTERM) == 0, second.log.read_text()
    finally:
        second.kill() if second.proc.poll() is None else None
    # Every accepted report arrived, and nothing else. A record in flight when the process was
    # killed may arrive twice (at least once), never zero times.
    assert set(got) == want
    assert sum(got.values()) - len(want) <= 2048, "more copies than one chunk in flight"
    assert "sending records left by an earlier run" in second.log.read_text()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_with_undeliverable_records_in_memory_exits_3_and_counts_the_loss(kafka_broker, http, tmp_path, workers):
    collector = Collector(tmp_path, _config(kafka_broker, {"storage": "memory"}, workers), "memory")
    try:
        await collector.wait_ready(http)
        kafka_broker.freeze()
        for i in range(12):  # every worker is ready once /health says so: none is refused
            assert await collector.post(http, i) == 202
        started = time.monotonic()
        code = await collector.stop(signal.SIGTERM)
        took = time.monotonic() - started
    finally:
        if collector.proc.poll() is None:
            collector.kill()
    log = collector.log.read_text()
    assert code == 3, log
    assert took < 8, f"shutdown took {took:.1f}s with the exporter's shutdown_timeout 1s"
    lost = [line for line in log.splitlines() if "records lost at shutdown" in line]
    assert lost, log
    counted = sum(int(part.split("=", 1)[1]) for line in lost for part in line.split() if part.startswith("records="))
    assert counted == 12, lost


async def test_sigterm_with_everything_delivered_exits_0(kafka_broker, http, tmp_path):
    collector = Collector(tmp_path, _config(kafka_broker, {"storage": "memory"}), "clean")
    try:
        await collector.wait_ready(http)
        for i in range(5):
            assert await collector.post(http, i) == 202
        code = await collector.stop(signal.SIGTERM)
    finally:
        if collector.proc.poll() is None:
            collector.kill()
    assert code == 0, collector.log.read_text()
    assert set(await asyncio.to_thread(_ids, kafka_broker)) == {_id(i) for i in range(5)}
