"""The observertc receiver over real WebSocket connections."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import aiohttp
import pytest

from tests import _samples
from webrtc_observer.model import ClientSample
from webrtc_observer.testing import running_collector


async def _send_all(http, url, frames, expected_answers=0):
    """Send frames (str: text, bytes: binary); return the error answers the server sent back."""
    async with http.ws_connect(url) as ws:
        for frame in frames:
            await (ws.send_str(frame) if isinstance(frame, str) else ws.send_bytes(frame))
        await ws.send_str(json.dumps(_samples.samples_v2(_samples.client_sample_v2("c-last"), sfu=False)))
        return [json.loads((await ws.receive(timeout=5)).data) for _ in range(expected_answers)]


async def test_every_generation_and_encoding_over_websocket(collector, http, protobuf):
    v2 = _samples.samples_v2(_samples.client_sample_v2("c-json"), sfu=False)
    frames = [
        json.dumps(v2),  # text JSON
        gzip.compress(json.dumps(_samples.samples_v2(_samples.client_sample_v2("c-gzip"), sfu=False)).encode()),  # binary gzip
        json.dumps(_samples.client_sample_v2("c-single")),  # a lone 2.x ClientSample
        json.dumps(_samples.client_sample_v3("c-v3")),  # a 3.x ClientSample
        protobuf.samples_v2(_samples.samples_v2(_samples.client_sample_v2("c-proto"), sfu=False)),  # binary protobuf
        protobuf.client_sample_v3(_samples.client_sample_v3("c-proto-v3")),
        gzip.compress(protobuf.samples_v2(_samples.samples_v2(_samples.client_sample_v2("c-proto-gz"), sfu=False))),
    ]
    answers = await _send_all(http, collector.url("/samples/svc/mu", scheme="ws"), frames)
    assert answers == []
    await collector.exporter().wait_for_samples(8)
    ids = [s.client_id for s in collector.exporter().client_samples]
    assert ids == ["c-json", "c-gzip", "c-single", "c-v3", "c-proto", "c-proto-v3", "c-proto-gz", "c-last"]
    v3 = collector.exporter().client_samples[3]
    assert v3.origin.generation == "3" and any(t.ssrc == 1234567890 for t in v3.inbound_tracks)


async def test_legacy_pcsamples_over_websocket(collector, http):
    frames = [json.dumps(_samples.pc_sample_legacy(pc_id=f"pc-{i}")) for i in range(3)]
    async with http.ws_connect(collector.url("/pcsamples/6a1e0d1b-5d3c-4c8b-9a59-8d5d2f8c1a11/mu", scheme="ws")) as ws:
        for frame in frames:
            await ws.send_str(frame)
        await collector.exporter().wait_for_samples(3)
    samples = collector.exporter().client_samples
    assert [s.origin.generation for s in samples] == ["pcsample-v20200114"] * 3
    assert {p.peer_connection_id for s in samples for p in s.peer_connections} == {"pc-0", "pc-1", "pc-2"}


async def test_a_bad_frame_is_answered_and_skipped_but_good_frames_go_on(collector, http):
    frames = [
        json.dumps(_samples.client_sample_v2("c-1")),
        "{broken",
        json.dumps({"clientSamples": [{"clientId": "c-x", "timestamp": "yesterday"}]}),
        b"\x1f\x8b not really gzip",
        json.dumps(_samples.client_sample_v2("c-2")),
    ]
    answers = await _send_all(http, collector.url("/samples/svc/mu", scheme="ws"), frames, expected_answers=3)
    assert [a["error"] for a in answers] == ["bad_json", "invalid_sample", "bad_gzip"]
    assert "$.clientSamples[0].timestamp" in answers[1]["detail"]
    await collector.exporter().wait_for_samples(3)
    assert [s.client_id for s in collector.exporter().client_samples] == ["c-1", "c-2", "c-last"]
    refused = collector.telemetry.get("receiver_refused_messages")
    assert refused.value("observertc", "websocket", "bad_json") == 1


async def test_a_frame_over_the_limit_closes_with_1009(collector, http):
    async with http.ws_connect(collector.url("/samples/svc/mu", scheme="ws")) as ws:
        await ws.send_str(json.dumps(_samples.client_sample_v2("c-ok")))
        await ws.send_str(" " * (64 * 1024 + 10))
        msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert ws.close_code == 1009
    await collector.exporter().wait_for_samples(1)
    assert collector.telemetry.get("samples_refused").value("too_large") == 1


async def test_a_gzip_frame_that_inflates_past_the_limit_is_refused(collector, http):
    bomb = gzip.compress(b" " * (1024 * 1024))
    async with http.ws_connect(collector.url("/samples/svc/mu", scheme="ws")) as ws:
        await ws.send_bytes(bomb)
        answer = json.loads((await ws.receive()).data)
        assert answer["error"] == "too_large"
        await ws.send_str(json.dumps(_samples.client_sample_v2("c-after")))
        await collector.exporter().wait_for_samples(1)


async def test_websocket_backpressure_answers_instead_of_dropping_silently(http):
    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0", websocket_backpressure_timeout: 300ms}}
exporters: {recording: {refuse: true}}
service: {pipelines: {samples: {receivers: [observertc], exporters: [recording]}}}
"""
    async with running_collector(yaml_text) as c, http.ws_connect(c.url("/samples/svc/mu", scheme="ws")) as ws:
        sent = time.monotonic()
        await ws.send_str(json.dumps(_samples.client_sample_v2()))
        answer = json.loads((await ws.receive()).data)
        assert time.monotonic() - sent >= 0.3, "refused before websocket_backpressure_timeout"
    assert answer["error"] == "pipeline_full" and answer["retryAfter"] == 2
    assert c.telemetry.get("receiver_backpressure_waits").value("observertc") == 1


async def test_frames_wait_while_the_pipeline_is_full_and_are_taken_in_order_once_it_has_room(http):
    """A full pipeline slows a WebSocket client down (its frames wait unread) instead of refusing them."""
    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
exporters: {recording: {refuse: true}}
service: {pipelines: {samples: {receivers: [observertc], exporters: [recording]}}}
"""
    async with running_collector(yaml_text) as c, http.ws_connect(c.url("/samples/svc/mu", scheme="ws")) as ws:
        for i in range(5):
            await ws.send_str(json.dumps(_samples.client_sample_v2(f"c-{i}")))
        waits = c.telemetry.get("receiver_backpressure_waits")
        while waits.value("observertc") < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not c.exporter().samples
        c.exporter().refuse = False
        await c.exporter().wait_for_samples(5)
        assert [s.client_id for s in c.exporter().client_samples] == [f"c-{i}" for i in range(5)]
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.2)  # no answer: nothing was refused
    assert c.telemetry.get("samples_refused").value("pipeline_full") == 0


async def test_shutdown_closes_websockets_with_going_away(http):
    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
exporters: {recording: {}}
service: {pipelines: {samples: {receivers: [observertc], exporters: [recording]}}}
"""
    async with running_collector(yaml_text) as c:
        ws = await http.ws_connect(c.url("/samples/svc/mu", scheme="ws"))
        await ws.send_str(json.dumps(_samples.client_sample_v2()))
        await c.exporter().wait_for_samples(1)
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
    await ws.close()
    assert isinstance(c.exporter().samples[0], ClientSample)


async def test_connections_that_ended_are_forgotten_and_shutdown_closes_the_open_ones(http):
    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
exporters: {recording: {}}
service: {pipelines: {samples: {receivers: [observertc], exporters: [recording]}}}
"""
    url_path = "/samples/svc/mu"
    async with running_collector(yaml_text) as c:
        gauge = c.telemetry.get("receiver_websockets_open")
        gone = [await http.ws_connect(c.url(url_path, scheme="ws")) for _ in range(3)]
        still_open = [await http.ws_connect(c.url(url_path, scheme="ws")) for _ in range(2)]
        for ws in gone + still_open:
            await ws.send_str(json.dumps(_samples.client_sample_v2()))
        await c.exporter().wait_for_samples(5)
        assert gauge.total() == 5
        for ws in gone:
            await ws.close()
            assert ws.close_code == 1000
        deadline = time.monotonic() + 5
        while gauge.total() > 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert gauge.total() == 2
        receiver = next(iter(c.service.receivers.values()))
        assert len(receiver._sockets) == 2
    for ws in still_open:
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await ws.close()


async def test_frames_wait_unprocessed_while_an_exporter_queue_is_congested(tmp_path, http):
    """A nearly full sending queue holds WebSocket frames back before any work is done for them; once
    it drains, every frame is taken and written, and none was refused."""
    folder = tmp_path / "out"
    folder.write_text("in the way")  # the file exporter cannot create its folder: its queue fills up
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors: {{correlation: {{}}, reports: {{}}}}
exporters:
  file: {{path: "{folder}/r.jsonl", sending_queue: {{queue_size: 60}}, retry_on_failure: {{initial_interval: 20ms, max_interval: 50ms}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: [correlation, reports], exporters: [file]}}}}}}
"""
    async with running_collector(yaml_text) as c, http.ws_connect(c.url("/samples/svc/mu", scheme="ws")) as ws:
        for tick in range(12):
            sample = _samples.client_sample_v2("c-1", ts=_samples.T0 + tick * 1000)
            await ws.send_str(json.dumps(_samples.samples_v2(sample, sfu=False)))
        waits = c.telemetry.get("receiver_backpressure_waits")
        while waits.value("observertc") < 1:
            await asyncio.sleep(0.01)
        stage = c.telemetry.get("pipeline_stage_items"), c.telemetry.get("pipeline_stage_refused_items")
        before = [m.value("p", "correlation") for m in stage]
        await asyncio.sleep(0.3)
        assert [m.value("p", "correlation") for m in stage] == before, "frames were processed while congested"
        folder.unlink()  # the exporter can write again: the queue drains, the frames go on
        accepted = c.telemetry.get("receiver_accepted_samples")
        while accepted.value("observertc", "websocket") < 12:
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.1)  # no answer: nothing was refused
    assert c.telemetry.get("samples_refused").value("pipeline_full") == 0
    written = [json.loads(line) for line in (folder / "r.jsonl").read_text().splitlines()]
    assert {r["payload"]["timestamp"] for r in written if r["type"] == "INBOUND_AUDIO_TRACK"} == {
        _samples.T0 + tick * 1000 for tick in range(12)
    }
