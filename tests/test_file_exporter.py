"""The file exporter: JSON lines, rotation by size, bounded queue, drain on shutdown."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests import _samples
from webrtc_observer.component import RetryLater
from webrtc_observer.config import ComponentId
from webrtc_observer.model import Batch, Report
from webrtc_observer.testing import running_collector


def _report(i: int) -> Report:
    return Report(type="CALL_EVENT", payload={"serviceId": "svc", "timestamp": i, "name": "CLIENT_JOINED", "padding": "x" * 200})


async def test_reports_are_written_as_envelopes_and_rotated_by_size(tmp_path):
    path = tmp_path / "reports.jsonl"
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
exporters:
  file: {{path: "{path}", rotation: {{max_megabytes: 1, max_backups: 2}}}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [file]}}}}}}
"""
    async with running_collector(yaml_text) as c:
        exporter = c.service.exporters[ComponentId("file")]
        for i in range(12_000):  # ~3 MB: two rotations and then some
            while True:
                try:
                    await exporter.consume(Batch(reports=[_report(i)]))
                    break
                except RetryLater:  # the disk is slower than this loop: wait as a sender would
                    await asyncio.sleep(0.01)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["reports.jsonl", "reports.jsonl.1", "reports.jsonl.2"]
    for f in files:
        assert f.stat().st_size <= 1024 * 1024
    newest = [json.loads(line) for line in path.read_text().splitlines()]
    assert newest[-1] == {"type": "CALL_EVENT", "schemaVersion": "2.2.11", "payload": _report(11_999).payload}
    # Nothing is lost between files that were kept: the timestamps run on without a gap.
    kept = [json.loads(line)["payload"]["timestamp"] for f in reversed(files) for line in f.read_text().splitlines()]
    assert kept == list(range(kept[0], 12_000))


async def test_a_full_queue_pushes_back_instead_of_growing(tmp_path):
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
exporters: {{file: {{path: "{tmp_path}/r.jsonl", queue_size: 2}}}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [file]}}}}}}
"""
    async with running_collector(yaml_text) as c:
        exporter = c.service.exporters[ComponentId("file")]
        # No await between puts: the writer task cannot run, so the third batch finds the queue full.
        await exporter.consume(Batch(reports=[_report(1)]))
        await exporter.consume(Batch(reports=[_report(2)]))
        with pytest.raises(RetryLater):
            await exporter.consume(Batch(reports=[_report(3)]))
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 2


async def test_samples_are_written_until_reports_exist(tmp_path, http):
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
exporters: {{file: {{path: "{tmp_path}/s.jsonl"}}}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [file]}}}}}}
"""
    async with running_collector(yaml_text) as c:
        async with http.post(c.url("/rest/samples/svc/mu"), json=_samples.samples_v2()) as resp:
            assert resp.status == 202
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["ClientSample", "SfuSample"]
    assert records[0]["payload"]["client_id"] == "c-alice"


async def test_a_failing_disk_turns_health_unhealthy_and_shutdown_counts_the_loss(http):
    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
processors: {correlation: {}, reports: {}}
exporters: {file: {path: /dev/full, drain_timeout: 300ms, retry_max_interval: 100ms}}
service:
  health: {exporter_failure_threshold: 200ms}
  pipelines: {p: {receivers: [observertc], processors: [correlation, reports], exporters: [file]}}
"""
    async with running_collector(yaml_text) as c:
        async with http.get(c.url("/health")) as resp:
            assert resp.status == 200
        async with http.post(c.url("/rest/samples/svc/mu"), json=_samples.samples_v2()) as resp:
            assert resp.status == 202  # queued; the disk fails afterwards
        await asyncio.sleep(0.5)
        async with http.get(c.url("/health")) as resp:
            assert resp.status == 503
            answer = await resp.json()
        assert answer["status"] == "unhealthy" and "sending has failed" in answer["problems"]["exporter file"]
        assert c.telemetry.get("exporter_write_errors").value("file") >= 1
    lost = c.telemetry.get("exporter_send_failed_records").value("file")
    assert lost > 0 and c.telemetry.get("exporter_sent_records").value("file") == 0


class _FailingOnce:
    """The real file, except that its first write stops half-way and the next fails (the disk filled up)."""

    def __init__(self, real) -> None:
        self._real = real
        self._state = "half"
        self.failed = False

    def write(self, data) -> int:
        if self._state == "half":
            self._state = "fail"
            return self._real.write(data[: len(data) // 2])
        if self._state == "fail":
            self._state = "ok"
            self.failed = True
            raise OSError(28, "No space left on device")
        return self._real.write(data)

    def __getattr__(self, name):
        return getattr(self._real, name)


async def test_a_write_that_fails_half_way_goes_on_where_it_stopped(tmp_path):
    path = tmp_path / "r.jsonl"
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
exporters: {{file: {{path: "{path}", retry_max_interval: 50ms, linger: 0s}}}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [file]}}}}}}
"""
    async with running_collector(yaml_text) as c:
        exporter = c.service.exporters[ComponentId("file")]
        flaky = exporter._file = _FailingOnce(exporter._file)
        await exporter.consume(Batch(reports=[_report(i) for i in range(5000)]))  # several chunks
        for _ in range(200):
            if c.telemetry.get("exporter_sent_records").value("file") == 5000:
                break
            await asyncio.sleep(0.05)
    assert flaky.failed
    assert c.telemetry.get("exporter_write_errors").value("file") == 1
    timestamps = [json.loads(line)["payload"]["timestamp"] for line in path.read_text().splitlines()]
    assert timestamps == list(range(5000)), "every line once, in order"
