"""The file exporter: JSON lines, rotation by size, bounded queue, drain on shutdown, reopening, old options."""

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
    last = _report(11_999)
    assert newest[-1] == {"type": "CALL_EVENT", "schemaVersion": "2.2.11", "payload": last.payload, "id": last.id}
    # Nothing is lost between files that were kept: the timestamps run on without a gap.
    kept = [json.loads(line)["payload"]["timestamp"] for f in reversed(files) for line in f.read_text().splitlines()]
    assert kept == list(range(kept[0], 12_000))


async def test_a_full_queue_pushes_back_instead_of_growing(tmp_path):
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
exporters: {{file: {{path: "{tmp_path}/r.jsonl", sending_queue: {{queue_size: 2}}}}}}
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
exporters: {file: {path: /dev/full, shutdown_timeout: 300ms, retry_on_failure: {initial_interval: 50ms, max_interval: 100ms}}}
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
    lost = c.telemetry.get("exporter_lost_records").value("file")
    assert lost > 0 and c.service.lost == lost and c.telemetry.get("exporter_sent_records").value("file") == 0


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
exporters: {{file: {{path: "{path}", retry_on_failure: {{initial_interval: 50ms}}}}}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [file]}}}}}}
"""
    async with running_collector(yaml_text) as c:
        exporter = c.service.exporters[ComponentId("file")]
        sender = exporter._sender
        flaky = sender._file = _FailingOnce(sender._file)
        await exporter.consume(Batch(reports=[_report(i) for i in range(5000)]))  # several chunks
        for _ in range(200):
            if c.telemetry.get("exporter_sent_records").value("file") == 5000:
                break
            await asyncio.sleep(0.05)
    assert flaky.failed
    assert c.telemetry.get("exporter_write_errors").value("file") == 1
    timestamps = [json.loads(line)["payload"]["timestamp"] for line in path.read_text().splitlines()]
    assert timestamps == list(range(5000)), "every line once, in order"


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_old_options_are_config_errors_naming_the_new_ones(tmp_path):
    from webrtc_observer.config import ConfigError, load_text
    from webrtc_observer.testing import config_types, testing_factories

    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
exporters: {{file: {{path: "{tmp_path}/r.jsonl", queue_size: 5, drain_timeout: 1s, linger: 0s, retry_max_interval: 1s}}}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [file]}}}}}}
"""
    with pytest.raises(ConfigError) as caught:
        load_text(yaml_text, config_types(testing_factories()))
    messages = {issue.path: issue.message for issue in caught.value.issues}
    assert "sending_queue.queue_size" in messages["exporters.file.queue_size"]
    assert "shutdown_timeout" in messages["exporters.file.drain_timeout"]
    assert "retry_on_failure.max_interval" in messages["exporters.file.retry_max_interval"]
    assert "removed" in messages["exporters.file.linger"]


async def test_a_deleted_output_file_is_reopened_with_its_folders(tmp_path):
    path = tmp_path / "out" / "r.jsonl"
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
exporters: {{file: {{path: "{path}"}}}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [file]}}}}}}
"""
    async with running_collector(yaml_text) as c:
        exporter = c.service.exporters[ComponentId("file")]
        sent = c.telemetry.get("exporter_sent_records")
        await exporter.consume(Batch(reports=[_report(0)]))
        await _until(lambda: sent.value("file") == 1)
        path.unlink()
        path.parent.rmdir()
        await exporter.consume(Batch(reports=[_report(1)]))
        await _until(lambda: sent.value("file") == 2)
        moved = tmp_path / "moved.jsonl"
        path.rename(moved)
        await exporter.consume(Batch(reports=[_report(2)]))
        await _until(lambda: sent.value("file") == 3)
    assert [json.loads(line)["payload"]["timestamp"] for line in path.read_text().splitlines()] == [2]
    assert [json.loads(line)["payload"]["timestamp"] for line in moved.read_text().splitlines()] == [1]


async def test_an_unwritable_folder_turns_health_unhealthy_until_it_is_writable_again(tmp_path, http):
    folder = tmp_path / "out"
    path = folder / "r.jsonl"
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors: {{correlation: {{}}, reports: {{}}}}
exporters: {{file: {{path: "{path}", retry_on_failure: {{initial_interval: 20ms, max_interval: 50ms, max_elapsed_time: 0s}}}}}}
service:
  health: {{exporter_failure_threshold: 100ms}}
  pipelines: {{p: {{receivers: [observertc], processors: [correlation, reports], exporters: [file]}}}}
"""
    async with running_collector(yaml_text) as c:
        sent = c.telemetry.get("exporter_sent_records")
        errors = c.telemetry.get("exporter_write_errors")
        path.unlink(missing_ok=True)
        folder.rmdir()
        folder.write_text("not a folder")  # root can write anywhere chmod forbids; a file in the way stops it too
        async with http.post(c.url("/rest/samples/svc/mu"), json=_samples.samples_v2()) as resp:
            assert resp.status == 202
        await _until(lambda: errors.value("file") >= 2)

        async def health() -> int:
            async with http.get(c.url("/health")) as resp:
                return resp.status

        deadline = asyncio.get_running_loop().time() + 5
        while await health() != 503:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        assert sent.value("file") == 0
        folder.unlink()  # fixed: the path can be created again
        await _until(lambda: c.service.exporters[ComponentId("file")].queued == 0)
        assert await health() == 200
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and sent.value("file") == len(records)
    assert c.telemetry.get("exporter_send_failed_records").value("file") == 0


async def test_sigkill_with_the_output_folder_blocked_loses_nothing_that_got_a_202(tmp_path, http):
    """A real process, its persistent queue on disk while the output folder cannot be created (a file
    is in its way: tests may run as root, whom chmod does not stop); SIGKILL; the folder fixed; the
    next run on the same queue writes every accepted record exactly once."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from collections import Counter
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    blocked = tmp_path / "out"
    blocked.write_text("in the way")
    out = blocked / "r.jsonl"

    def start() -> tuple[subprocess.Popen, int]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:{port}"}}}}
exporters:
  file:
    path: "{out}"
    sending_queue: {{storage: file, directory: "{tmp_path}/queue"}}
    retry_on_failure: {{initial_interval: 50ms, max_interval: 100ms, max_elapsed_time: 0s}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [file]}}}}}}
""")
        log = (tmp_path / "collector.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "webrtc_observer", "run", "--config", str(config)],
            cwd=repo,
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return proc, port

    async def ready(proc: subprocess.Popen, port: int) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "collector.log").read_text()
            try:
                async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                    if resp.status in (200, 503):
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError((tmp_path / "collector.log").read_text())

    import aiohttp

    proc, port = start()
    accepted: Counter[str] = Counter()
    try:
        await ready(proc, port)
        for i in range(40):
            body = _samples.samples_v2(_samples.client_sample_v2(client_id=f"c-{i}"), sfu=False)
            async with http.post(f"http://127.0.0.1:{port}/rest/samples/svc/mu", json=body) as resp:
                if resp.status == 202:
                    accepted[f"c-{i}"] += 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(accepted) == 40 and not out.exists()

    blocked.unlink()  # fixed
    proc, port = start()
    try:
        await ready(proc, port)
        deadline = time.monotonic() + 20
        while not (out.exists() and len(out.read_text().splitlines()) >= 40):
            assert time.monotonic() < deadline, (tmp_path / "collector.log").read_text()
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    written = Counter(json.loads(line)["payload"]["client_id"] for line in out.read_text().splitlines())
    assert written == accepted, "every accepted record once"


async def test_one_line_per_record_whatever_characters_the_payloads_hold(tmp_path):
    """Records are encoded per batch and cut at newlines: no character in a payload may cut a record."""
    awkward = "".join(map(chr, range(32))) + '\u0085\u2028\u2029\x7f"\\ é 🎧'
    reports = [Report(type="CALL_EVENT", payload={"serviceId": "svc", "timestamp": i, "name": awkward * i}) for i in range(5)]
    path = tmp_path / "reports.jsonl"
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
exporters: {{file: {{path: "{path}"}}}}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [file]}}}}}}
"""
    async with running_collector(yaml_text) as c:
        await c.service.exporters[ComponentId("file")].consume(Batch(reports=reports))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(reports) + 1
    assert [json.loads(line)["payload"]["name"] for line in lines[:-1]] == [awkward * i for i in range(5)]
