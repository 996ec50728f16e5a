"""The observertc receiver over real HTTP: every sample generation and encoding, and every bad input."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from tests import _samples
from webrtc_observer.model import ClientSample, SfuSample
from webrtc_observer.testing import running_collector

JSON = {"Content-Type": "application/json"}
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _body(kind: str, protobuf: Any) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) for one generation/encoding."""
    if kind == "v2-wrapper":
        return "/rest/samples/svc/mu", json.dumps(_samples.samples_v2()).encode(), JSON
    if kind == "v2-client":
        return "/rest/samples/svc/mu", json.dumps(_samples.client_sample_v2()).encode(), JSON
    if kind == "v3-client":
        return "/rest/samples/svc/mu", json.dumps(_samples.client_sample_v3()).encode(), JSON
    if kind == "legacy":
        return "/pcsamples/6a1e0d1b-5d3c-4c8b-9a59-8d5d2f8c1a11/mu", json.dumps(_samples.pc_sample_legacy()).encode(), JSON
    if kind == "v2-wrapper-protobuf":
        return "/rest/samples/svc/mu", protobuf.samples_v2(_samples.samples_v2()), PROTOBUF
    if kind == "v2-wrapper-protobuf-query":
        return (
            "/rest/samples/svc/mu?format=protobuf",
            protobuf.samples_v2(_samples.samples_v2()),
            {"Content-Type": "application/octet-stream"},
        )
    if kind == "v3-client-protobuf":
        return "/rest/samples/svc/mu?schemaVersion=3.5.0", protobuf.client_sample_v3(_samples.client_sample_v3()), PROTOBUF
    raise AssertionError(kind)


def _check_samples(kind: str, samples: list[Any]) -> None:
    clients = [s for s in samples if isinstance(s, ClientSample)]
    assert clients, "no client sample recorded"
    client = clients[0]
    assert client.origin.media_unit_id == "mu"
    if kind.startswith("v2-wrapper"):
        assert [type(s) for s in samples] == [ClientSample, SfuSample]
        sfu = samples[1]
        assert sfu.sfu_id == "sfu-1" and sfu.inbound_rtp_pads[0]["streamId"] == "stream-1"
    if kind.startswith("v2"):
        assert client.origin.generation == "2"
        assert client.client_id == "c-alice" and client.call_id == "call-1" and client.room_id == "room-1"
        audio_in = next(t for t in client.inbound_tracks if t.ssrc == 1111)
        assert audio_in.kind == "audio" and audio_in.stats["packetsLost"] == 3
        assert audio_in.peer_connection_id == "pc-c-alice"
        assert {m.type for m in client.meta} >= {"BROWSER", "OPERATION_SYSTEM", "ENGINE", "MEDIA_DEVICE", "ICE_SERVER"}
        assert client.events[0].name == "MUTE"
        assert client.candidate_pairs[0]["currentRoundTripTime"] == pytest.approx(0.042)
    elif kind.startswith("v3"):
        assert client.origin.generation == "3"
        assert client.client_id == "client-42" and client.call_id == "call-7f3a"
        audio_in = next(t for t in client.inbound_tracks if t.ssrc == 1234567890)
        assert audio_in.kind == "audio" and audio_in.stats["packetsReceived"] == 142
        assert client.score == pytest.approx(4.534)
    elif kind == "legacy":
        assert client.origin.generation == "pcsample-v20200114"
        assert client.origin.service_id == "6a1e0d1b-5d3c-4c8b-9a59-8d5d2f8c1a11"
        assert client.call_id == "standup" and client.user_id == "bob"
        assert any(t.ssrc == 7777 and t.stats.get("packetsLost") == 2 for t in client.inbound_tracks)
        assert any(t.ssrc == 8888 for t in client.outbound_tracks)


KINDS = [
    "v2-wrapper",
    "v2-client",
    "v3-client",
    "legacy",
    "v2-wrapper-protobuf",
    "v2-wrapper-protobuf-query",
    "v3-client-protobuf",
]


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("kind", KINDS)
async def test_accepts_every_generation_and_encoding(collector, http, protobuf, kind, gzipped):
    path, body, headers = _body(kind, protobuf)
    if gzipped:
        body, headers = gzip.compress(body), {**headers, "Content-Encoding": "gzip"}
    async with http.post(collector.url(path), data=body, headers=headers) as resp:
        answer = await resp.json()
        assert resp.status == 202, answer
    recorded = collector.exporter().samples
    assert answer == {"accepted": len(recorded)}
    _check_samples(kind, recorded)
    assert recorded[0].origin.received_at > 1_700_000_000_000


async def test_sniffs_the_encoding_when_the_content_type_does_not_say(collector, http, protobuf):
    body = protobuf.samples_v2(_samples.samples_v2())
    async with http.post(
        collector.url("/rest/samples/svc/mu"), data=body, headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 202
    async with http.post(
        collector.url("/rest/samples/svc/mu"),
        data=json.dumps(_samples.client_sample_v2()),
        headers={"Content-Type": "text/plain"},
    ) as resp:
        assert resp.status == 202
    assert len(collector.exporter().client_samples) == 2


def _wrong_type() -> bytes:
    wrapper = _samples.samples_v2()
    wrapper["clientSamples"][0]["inboundAudioTracks"][0]["ssrc"] = "not-a-number"
    return json.dumps(wrapper).encode()


BAD_INPUTS = [
    # (id, path, body, headers, status, reason, detail contains)
    ("not-json", "/rest/samples/svc/mu", b"{not json", JSON, 400, "bad_json", "not JSON"),
    ("json-array", "/rest/samples/svc/mu", b"[1,2]", JSON, 400, "invalid_sample", "JSON object"),
    ("unknown-shape", "/rest/samples/svc/mu", b'{"hello": "world"}', JSON, 400, "unknown_schema", "hello"),
    (
        "wrong-type",
        "/rest/samples/svc/mu",
        _wrong_type(),
        JSON,
        400,
        "invalid_sample",
        "$.clientSamples[0].inboundAudioTracks[0].ssrc",
    ),
    (
        "missing-client-id",
        "/rest/samples/svc/mu",
        b'{"clientSamples": [{"timestamp": 1}]}',
        JSON,
        400,
        "invalid_sample",
        "clientId",
    ),
    (
        "v3-without-client-id",
        "/rest/samples/svc/mu",
        b'{"timestamp": 1, "peerConnections": []}',
        JSON,
        400,
        "invalid_sample",
        "clientId",
    ),
    (
        "legacy-without-pc-id",
        "/pcsamples/s/mu",
        b'{"browserId": "b", "timestamp": 1}',
        JSON,
        400,
        "invalid_sample",
        "peerConnectionId",
    ),
    ("empty", "/rest/samples/svc/mu", b"", JSON, 400, "empty", "empty"),
    ("bad-gzip", "/rest/samples/svc/mu", b"this is not gzip", {**JSON, "Content-Encoding": "gzip"}, 400, "bad_gzip", "gzip"),
    (
        "truncated-gzip",
        "/rest/samples/svc/mu",
        gzip.compress(b'{"clientSamples": []}' * 50)[:-12],
        {**JSON, "Content-Encoding": "gzip"},
        400,
        "bad_gzip",
        "truncated",
    ),
    (
        "unsupported-content-encoding",
        "/rest/samples/svc/mu",
        b"{}",
        {**JSON, "Content-Encoding": "br"},
        415,
        "unsupported_encoding",
        "br",
    ),
    ("unsupported-format", "/rest/samples/svc/mu?format=xml", b"{}", JSON, 415, "unsupported_encoding", "xml"),
    ("bad-protobuf", "/rest/samples/svc/mu", b"\x0a\xff\xff\xff\xff\x0f", PROTOBUF, 400, "bad_protobuf", ""),
    ("legacy-protobuf", "/pcsamples/s/mu?format=protobuf", b"\x0a\x00", JSON, 415, "unsupported_encoding", "JSON only"),
    ("too-large", "/rest/samples/svc/mu", b" " * (64 * 1024 + 1), JSON, 413, "too_large", "exceeds"),
    (
        "gzip-bomb",
        "/rest/samples/svc/mu",
        gzip.compress(b" " * (2 * 1024 * 1024)),
        {**JSON, "Content-Encoding": "gzip"},
        413,
        "too_large",
        "inflated",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "reason", "detail"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
async def test_refuses_bad_input_with_a_reason(collector, http, path, body, headers, status, reason, detail):
    async with http.post(collector.url(path), data=body, headers=headers) as resp:
        assert resp.status == status
        answer = await resp.json()
    assert answer["error"] == reason
    assert detail in answer["detail"]
    assert collector.exporter().samples == []
    assert collector.telemetry.get("samples_refused").value(reason) == 1
    # The collector is still there and still takes good samples.
    async with http.post(collector.url("/rest/samples/svc/mu"), json=_samples.samples_v2()) as resp:
        assert resp.status == 202


async def test_random_bytes_never_break_the_receiver(collector, http):
    rng = __import__("random").Random(7)
    for i in range(200):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        if i % 3 == 0:
            body = b"{" + body
        async with http.post(collector.url("/rest/samples/svc/mu"), data=body) as resp:
            assert 400 <= resp.status < 500, (body, await resp.text())
    async with http.get(collector.url("/health")) as resp:
        assert resp.status == 200


async def test_health_reports_started_pipelines(collector, http):
    async with http.get(collector.url("/health")) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", "/no/such/path", 404, "not_found"),
        ("PUT", "/rest/samples/svc/mu", 405, "method_not_allowed"),
        ("GET", "/rest/samples/svc/mu", 405, "method_not_allowed"),
        ("DELETE", "/health", 405, "method_not_allowed"),
    ],
)
async def test_every_error_body_is_json_with_a_reason(collector, http, method, path, status, reason):
    async with http.request(method, collector.url(path)) as resp:
        assert resp.status == status and resp.content_type == "application/json"
        body = await resp.json()
        assert body["error"] == reason and body["detail"], body
        if status == 405:
            assert resp.headers["Allow"], "405 says which methods are allowed"


async def test_cors_preflight_and_response_headers(collector, http):
    origin = {"Origin": "https://app.example.com"}
    preflight = {
        **origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,content-encoding",
    }
    async with http.options(collector.url("/rest/samples/svc/mu"), headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "content-type,content-encoding"
        assert int(resp.headers["Access-Control-Max-Age"]) > 0
    async with http.post(collector.url("/rest/samples/svc/mu"), json=_samples.samples_v2(), headers=origin) as resp:
        assert resp.status == 202
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    async with http.options(
        collector.url("/rest/samples/svc/mu"), headers={**preflight, "Origin": "https://evil.example.net"}
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.post(
        collector.url("/rest/samples/svc/mu"), json=_samples.samples_v2(), headers={"Origin": "https://evil.example.net"}
    ) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_allowed_service_ids(http):
    yaml_text = """
receivers:
  observertc: {endpoint: "127.0.0.1:0", allowed_service_ids: [media-prod]}
exporters: {recording: {}}
service: {pipelines: {samples: {receivers: [observertc], exporters: [recording]}}}
"""
    async with running_collector(yaml_text) as c:
        async with http.post(c.url("/rest/samples/other/mu"), json=_samples.samples_v2()) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"] == "unknown_service"
        async with http.post(c.url("/rest/samples/media-prod/mu"), json=_samples.samples_v2()) as resp:
            assert resp.status == 202


async def test_a_full_pipeline_answers_503_with_retry_after(http):
    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
exporters: {recording: {refuse: true}}
service: {pipelines: {samples: {receivers: [observertc], exporters: [recording]}}}
"""
    async with running_collector(yaml_text) as c:
        async with http.post(c.url("/rest/samples/svc/mu"), json=_samples.samples_v2()) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "2"
            assert (await resp.json())["error"] == "pipeline_full"
        assert c.telemetry.get("samples_refused").value("pipeline_full") == 1


async def test_counts_samples_by_service_and_media_unit(collector, http):
    for _ in range(3):
        async with http.post(collector.url("/rest/samples/svc-a/eu-1"), json=_samples.samples_v2()) as resp:
            assert resp.status == 202
    received = collector.telemetry.get("samples_received")
    assert received.value("svc-a", "eu-1") == 6  # 3 x (1 client + 1 SFU sample)
    assert collector.telemetry.get("receiver_accepted_samples").value("observertc", "http") == 6


async def test_placeholder_ids_and_numeric_strings_from_client_monitor_3(collector, http):
    sample = _samples.client_sample_v2("NULL", call_id="NULL")
    async with http.post(collector.url("/rest/samples/svc/mu"), json={"clientSamples": [sample]}) as resp:
        assert resp.status == 400
        assert "placeholder" in (await resp.json())["detail"]
    sample = _samples.client_sample_v2(
        "c-1", call_id="NULL", codecs=[{"payloadType": 111, "mimeType": "audio/opus", "clockRate": 48000}]
    )
    async with http.post(collector.url("/rest/samples/svc/mu"), json={"clientSamples": [sample]}) as resp:
        assert resp.status == 202
    (recorded,) = collector.exporter().client_samples
    assert recorded.call_id is None and recorded.codecs[0]["payloadType"] == 111


async def test_samples_encoder_proto3_wire_format_is_accepted(collector, http, protobuf_v3_samples):
    wrapper = _samples.samples_v2(_samples.client_sample_v2("c-proto3"), sfu=False)
    body = protobuf_v3_samples(wrapper)
    async with http.post(collector.url("/rest/samples/svc/mu"), data=body, headers=PROTOBUF) as resp:
        assert resp.status == 202, await resp.text()
    (recorded,) = collector.exporter().client_samples
    assert recorded.client_id == "c-proto3"
    assert recorded.local_candidates[0]["protocol"] == "udp"  # an enum on this wire, lower case as in JSON
    assert recorded.transports[0]["dtlsRole"] == "client"


def test_sniffing_tells_protobuf_field_one_from_json_after_a_newline():
    from webrtc_observer.receiver._decoding import _sniff

    assert _sniff(b'\n  {"clientSamples": []}\n') == "json"
    assert _sniff(b"[1]") == "json"
    # Field 1, length 123 ('{'): a protobuf message, though it starts like whitespace + JSON.
    assert _sniff(b"\n{" + bytes(range(123))) == "protobuf"
