"""The collector as users run it: the CLI process, real HTTP/WebSocket, SIGTERM, the file it writes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests import _samples
from tests._process import REPO, CollectorProcess, free_port
from tests.conftest import assert_valid_report


class Collector(CollectorProcess):
    def __init__(self, tmp_path: Path, config: str = "collector.yaml", extra_env: dict[str, str] | None = None) -> None:
        port = free_port()
        self.out = tmp_path / "out" / "reports.jsonl"
        self.metrics_port = free_port()
        env = {
            "OBSERVER_ENDPOINT": f"127.0.0.1:{port}",
            "OBSERVER_METRICS_ENDPOINT": f"127.0.0.1:{self.metrics_port}",
            "OBSERVER_UI_ENDPOINT": "127.0.0.1:0",
            "OBSERVER_FILE": str(self.out),
            **(extra_env or {}),
        }
        super().__init__(tmp_path / "collector.log", config, port, env)

    def stop(self, sig: int | None = signal.SIGTERM) -> int:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.close_log()
        return code

    def records(self) -> list[dict]:
        """Every line of the output file; each must be a report envelope valid against its schema."""
        records = [json.loads(line) for line in self.out.read_text().splitlines()]
        for record in records:
            assert record["schemaVersion"] == "2.2.11"
            assert_valid_report(record["type"], record["payload"])
        return records

    def of_type(self, report_type: str) -> list[dict]:
        return [r["payload"] for r in self.records() if r["type"] == report_type]


@pytest.fixture
def process(tmp_path):
    c = Collector(tmp_path)
    yield c
    if c.proc.poll() is None:
        c.proc.kill()
        c.proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_mid_stream_loses_nothing_that_was_accepted(tmp_path, http, sig):
    c = Collector(tmp_path)
    try:
        await c.wait_ready(http)

        async def post(i: int) -> int:
            body = _samples.samples_v2(_samples.client_sample_v2(f"c-{i}"), sfu=False)
            try:
                async with http.post(c.url("/rest/samples/svc/mu"), json=body) as resp:
                    return (await resp.json())["accepted"] if resp.status == 202 else 0
            except aiohttp.ClientError:  # refused at the door once shutdown began: not accepted
                return 0

        tasks = [asyncio.create_task(post(i)) for i in range(300)]
        while sum(t.done() for t in tasks) < 50:
            await asyncio.sleep(0.005)
        c.proc.send_signal(sig)  # while the rest are in flight
        accepted = sum(await asyncio.gather(*tasks))
        code = c.stop(None)  # waits; one signal is enough
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
    assert code == 0, c.log.read_text()
    # Each accepted sample has one inbound audio track: its report is there, exactly once.
    inbound = c.of_type("INBOUND_AUDIO_TRACK")
    assert 50 <= accepted == len(inbound)
    assert len({r["clientId"] for r in inbound}) == accepted
    joined = [e["clientId"] for e in c.of_type("CALL_EVENT") if e["name"] == "CLIENT_JOINED"]
    assert sorted(joined) == sorted(r["clientId"] for r in inbound)
    log = c.log.read_text()
    assert "collector started" in log and "shutting down" in log and "collector stopped" in log


async def test_websocket_samples_reach_the_file_and_the_debug_summary(process, http):
    await process.wait_ready(http)
    async with http.ws_connect(process.url("/samples/svc/mu", scheme="ws")) as ws:
        for i in range(30):
            await ws.send_str(json.dumps(_samples.client_sample_v2(f"ws-{i}")))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not process.out.exists() or b"ws-29" not in process.out.read_bytes()):
            await asyncio.sleep(0.02)
    assert process.stop() == 0
    assert [r["clientId"] for r in process.of_type("INBOUND_AUDIO_TRACK")] == [f"ws-{i}" for i in range(30)]
    assert "INBOUND_AUDIO_TRACK=30" in process.log.read_text()  # the debug exporter's summary


async def test_health_metrics_and_a_legacy_client(process, http):
    await process.wait_ready(http)
    async with http.get(f"http://127.0.0.1:{process.metrics_port}/metrics") as resp:
        assert resp.status == 200
        assert "observertc_calls_active 0.0" in await resp.text()
    async with http.post(
        process.url("/pcsamples/6a1e0d1b-5d3c-4c8b-9a59-8d5d2f8c1a11/mu"), json=_samples.pc_sample_legacy()
    ) as resp:
        assert resp.status == 202
    assert process.stop() == 0
    (joined,) = [e for e in process.of_type("CALL_EVENT") if e["name"] == "CLIENT_JOINED"]
    assert joined["callId"] == "standup" and joined["clientId"] == "browser-fp-1"
    assert process.of_type("OUTBOUND_VIDEO_TRACK")[0]["ssrc"] == 8888


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {
            **os.environ,
            "OBSERVER_ENDPOINT": f"127.0.0.1:{port}",
            "OBSERVER_METRICS_ENDPOINT": "127.0.0.1:0",
            "OBSERVER_UI_ENDPOINT": "127.0.0.1:0",
            "OBSERVER_FILE": str(tmp_path / "x.jsonl"),
        }
        result = subprocess.run(
            [sys.executable, "-m", "webrtc_observer", "run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower() or "cannot start" in result.stderr
