"""Tests for the pure-Python protobuf decoder (webrtc_observer.receiver._protobuf).

The bytes under test come from an independent encoder: the shipped .proto files are compiled
with protoc (grpc_tools) at test time and messages are built and serialized with the official
``protobuf`` runtime. Each compiled file is loaded into its own private DescriptorPool: the 2.x
files all define ``org.observertc.schemas.protobuf.Samples``, and generated ``_pb2`` modules
for them cannot coexist in protobuf's global pool ("duplicate symbol"), whatever the module
names.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from webrtc_observer.receiver._protobuf import (
    MessageSchema,
    ProtobufError,
    decode,
    message_schema,
    parse_proto,
    top_level_field_numbers,
)
from webrtc_observer.schemas import schema_text

PKG = "org.observertc.schemas.protobuf"
SCHEMA_FILES = [
    ("v2_2_11", "ProtobufSamples.proto", "Samples"),
    ("v2_2_11", "ProtobufSamplesV3.proto", "Samples"),
    ("v2_2_11", "ProtobufSamplesV3Optional.proto", "Samples"),
    ("v3_5_0", "ProtobufClientSampleV3.proto", "ClientSample"),
    ("v3_5_0", "ProtobufClientSampleV3Optional.proto", "ClientSample"),
]

CALL_ID = uuid.UUID("3b9d1c4e-8f0a-4c2b-9d6e-1a2b3c4d5e6f")
PC_ID = uuid.UUID("e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b")


# ------------------------------------------------------------------------------------------
# protoc plumbing
# ------------------------------------------------------------------------------------------


class Compiled:
    """A .proto compiled by protoc into a private descriptor pool."""

    def __init__(self, pool: Any, package: str) -> None:
        self.pool = pool
        self.package = package

    def cls(self, name: str) -> Any:
        from google.protobuf import message_factory

        full = f"{self.package}.{name}" if self.package else name
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full))

    def new(self, name: str, **kwargs: Any) -> Any:
        return self.cls(name)(**kwargs)


def _compile(text: str, filename: str, workdir: Path, package: str = PKG) -> Compiled:
    pytest.importorskip("google.protobuf")
    protoc = pytest.importorskip("grpc_tools.protoc")
    from google.protobuf import descriptor_pb2, descriptor_pool

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / filename).write_text(text, encoding="utf-8")
    out = workdir / (filename + ".pb")
    rc = protoc.main(["protoc", f"-I{workdir}", f"--descriptor_set_out={out}", str(workdir / filename)])
    assert rc == 0, f"protoc failed on {filename}"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    return Compiled(pool, package)


@pytest.fixture(scope="session")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Compiled]:
    cache: dict[tuple[str, str], Compiled] = {}

    def get(version_dir: str, proto_file: str) -> Compiled:
        key = (version_dir, proto_file)
        if key not in cache:
            workdir = tmp_path_factory.mktemp(f"protoc_{version_dir}")
            cache[key] = _compile(schema_text(version_dir, proto_file), proto_file, workdir)
        return cache[key]

    return get


def _is_repeated(fd: Any) -> bool:
    if hasattr(fd, "is_repeated"):
        return bool(fd.is_repeated)
    return fd.label == fd.LABEL_REPEATED


def render_bytes(raw: bytes) -> str:
    """The documented ``bytes`` rendering (restated here so that tests pin the spec)."""
    if len(raw) == 16 and not (raw.isascii() and raw.decode().isprintable()) and raw[8] & 0xC0 == 0x80:
        return str(uuid.UUID(bytes=raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return str(uuid.UUID(bytes=raw)) if len(raw) == 16 else raw.hex()


def expected(msg: Any) -> dict[str, Any]:
    """What our decoder must return for a protobuf message: built from protobuf's own view."""
    from google.protobuf.descriptor import FieldDescriptor as FD

    def conv(fd: Any, v: Any) -> Any:
        if fd.type == FD.TYPE_MESSAGE:
            return expected(v)
        if fd.type == FD.TYPE_ENUM:
            ev = fd.enum_type.values_by_number.get(v)
            return ev.name if ev is not None else v
        if fd.type == FD.TYPE_BYTES:
            return render_bytes(v)
        return v

    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        out[fd.name] = [conv(fd, v) for v in value] if _is_repeated(fd) else conv(fd, value)
    return out


def assert_same(actual: Any, want: Any, path: str = "$") -> None:
    """Equality that also checks types, so 3 vs 3.0 or True vs 1 is caught."""
    assert type(actual) is type(want), f"{path}: {type(actual).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert actual.keys() == want.keys(), f"{path}: keys {sorted(actual)} != {sorted(want)}"
        for k in want:
            assert_same(actual[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(actual) == len(want), f"{path}: length {len(actual)} != {len(want)}"
        for i, (a, w) in enumerate(zip(actual, want, strict=True)):
            assert_same(a, w, f"{path}[{i}]")
    else:
        assert actual == want, f"{path}: {actual!r} != {want!r}"


# ------------------------------------------------------------------------------------------
# Realistic messages
# ------------------------------------------------------------------------------------------

# A 2.x Samples as a JSON client would send it. Used both as protobuf input (via ParseDict) and
# as the exact expected decode result: protobuf and JSON must come out the same.
SAMPLES_V2_JSON: dict[str, Any] = {
    "clientSamples": [
        {
            "clientId": "6c1f3a52-0d0f-4e1b-a9b5-5f1e5b1f7c11",
            "callId": str(CALL_ID),
            "roomId": "daily-standup",
            "userId": "alice",
            "timestamp": 1700000000123,
            "sampleSeq": 42,
            "timeZoneOffsetInHours": -5,
            "marker": "canary",
            "browser": {"name": "Chrome", "version": "119.0.6045.159"},
            "engine": {"name": "Blink", "version": "119"},
            "os": {"name": "Mac OS", "version": "10.15.7", "versionName": "Catalina"},
            "platform": {"type": "desktop", "vendor": "Apple"},
            "iceServers": ["stun:stun.example.org:3478", "turns:turn.example.org:443"],
            "mediaConstraints": ['{"audio":true}'],
            "userMediaErrors": [],
            "mediaDevices": [
                {"id": "default", "kind": "audioinput", "label": "MacBook Pro Microphone"},
                {"id": "c0ffee", "kind": "videoinput", "label": "FaceTime HD Camera — ünïcødé"},
            ],
            "customCallEvents": [
                {
                    "name": "MEDIA_TRACK_MUTED",
                    "mediaTrackId": "t-audio-1",
                    "peerConnectionId": str(PC_ID),
                    "timestamp": 1700000000001,
                    "attachments": '{"reason":"user"}',
                },
                {"name": "SCREEN_SHARE_STARTED", "timestamp": 1700000000050},
            ],
            "extensionStats": [{"type": "rtt-probe", "payload": '{"rtt":12.5}'}],
            "pcTransports": [
                {
                    "peerConnectionId": str(PC_ID),
                    "transportId": "T01",
                    "label": "sendrecv",
                    "bytesReceived": 5_368_709_120,
                    "bytesSent": 1_234_567,
                    "packetsReceived": 81234,
                    "packetsSent": 70001,
                    "dtlsState": "connected",
                    "iceState": "connected",
                    "iceRole": "controlling",
                    "selectedCandidatePairChanges": 1,
                    "selectedCandidatePairId": "CPabc",
                    "srtpCipher": "AES_CM_128_HMAC_SHA1_80",
                    "tlsVersion": "FEFD",
                    "dtlsCipher": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                },
            ],
            "iceCandidatePairs": [
                {
                    "candidatePairId": "CPabc",
                    "peerConnectionId": str(PC_ID),
                    "transportId": "T01",
                    "availableOutgoingBitrate": 2_500_000.0,
                    "currentRoundTripTime": 0.042,
                    "totalRoundTripTime": 1.337,
                    "nominated": True,
                    "state": "succeeded",
                    "bytesReceived": 5_368_709_120,
                    "bytesSent": 1_234_567,
                    "requestsSent": 30,
                    "responsesReceived": 29,
                    "lastPacketReceivedTimestamp": 1700000000100,
                    "localCandidateId": "ILa",
                    "remoteCandidateId": "IRb",
                },
                {"candidatePairId": "CPdef", "peerConnectionId": str(PC_ID), "nominated": False, "state": "failed"},
            ],
            "iceLocalCandidates": [
                {
                    "id": "ILa",
                    "address": "192.0.2.10",
                    "port": 54321,
                    "protocol": "udp",
                    "candidateType": "host",
                    "priority": 2_122_260_223,
                    "peerConnectionId": str(PC_ID),
                },
            ],
            "iceRemoteCandidates": [
                {
                    "id": "IRb",
                    "address": "198.51.100.7",
                    "port": 3478,
                    "protocol": "udp",
                    "candidateType": "relay",
                    "priority": 41_885_439,
                    "relayProtocol": "tls",
                },
            ],
            "inboundAudioTracks": [
                {
                    "ssrc": 2_882_400_001,
                    "trackId": "t-in-audio-1",
                    "peerConnectionId": str(PC_ID),
                    "packetsReceived": 15000,
                    "packetsLost": -3,
                    "jitter": 0.004,
                    "audioLevel": 0.25,
                    "roundTripTime": 0.051,
                    "totalRoundTripTime": 3.2,
                    "roundTripTimeMeasurements": 64,
                    "concealedSamples": 1200,
                    "bytesReceived": 1_500_000,
                    "totalAudioEnergy": 12.75,
                    "remoteClientId": "bob",
                    "sfuStreamId": "s-1",
                    "sfuSinkId": "k-1",
                    "decoderImplementation": "libopus",
                },
            ],
            "inboundVideoTracks": [
                {
                    "ssrc": 123456,
                    "trackId": "t-in-video-1",
                    "peerConnectionId": str(PC_ID),
                    "frameWidth": 1280,
                    "frameHeight": 720,
                    "framesPerSecond": 29.97,
                    "framesDecoded": 9000,
                    "framesDropped": 12,
                    "packetsLost": 57,
                    "packetsReceived": 120000,
                    "nackCount": 80,
                    "pliCount": 3,
                    "firCount": 0,
                    "qpSum": 9_000_000_000,
                    "jitter": 0.011,
                    "roundTripTime": 0.049,
                    "decoderImplementation": "ExternalDecoder",
                },
            ],
            "outboundAudioTracks": [
                {
                    "ssrc": 1111,
                    "trackId": "t-out-audio-1",
                    "peerConnectionId": str(PC_ID),
                    "active": True,
                    "packetsSent": 15500,
                    "bytesSent": 1_600_000,
                    "packetsLost": 0,
                    "fractionLost": 0.0,
                    "roundTripTime": 0.05,
                    "targetBitrate": 32000,
                    "encoderImplementation": "libopus",
                    "relayedSource": False,
                },
            ],
            "outboundVideoTracks": [
                {
                    "ssrc": 2222,
                    "trackId": "t-out-video-1",
                    "peerConnectionId": str(PC_ID),
                    "active": True,
                    "rid": "h",
                    "frameWidth": 1920,
                    "frameHeight": 1080,
                    "framesPerSecond": 30.0,
                    "framesEncoded": 9100,
                    "keyFramesEncoded": 4,
                    "qualityLimitationReason": "bandwidth",
                    "qualityLimitationDurationBandwidth": 12.5,
                    "qualityLimitationDurationCPU": 0.0,
                    "packetsSent": 130000,
                    "packetsLost": 25,
                    "roundTripTime": 0.048,
                    "totalEncodeTime": 45.2,
                    "encoderImplementation": "libvpx",
                },
            ],
            "mediaSources": [
                {
                    "kind": "audio",
                    "trackIdentifier": "t-out-audio-1",
                    "audioLevel": 0.1,
                    "echoReturnLoss": -30.0,
                    "totalAudioEnergy": 3.5,
                },
                {
                    "kind": "video",
                    "trackIdentifier": "t-out-video-1",
                    "width": 1920,
                    "height": 1080,
                    "framesPerSecond": 30.0,
                    "frames": 9100,
                },
            ],
            "codecs": [
                {
                    "payloadType": "111",
                    "mimeType": "audio/opus",
                    "clockRate": 48000,
                    "channels": 2,
                    "sdpFmtpLine": "minptime=10;useinbandfec=1",
                    "codecType": "encode",
                },
            ],
            "certificates": [
                {"fingerprint": "AB:CD:EF", "fingerprintAlgorithm": "sha-256", "base64Certificate": "TUlJQm9nPT0="},
            ],
            "dataChannels": [
                {
                    "peerConnectionId": str(PC_ID),
                    "label": "chat",
                    "protocol": "",
                    "state": "open",
                    "dataChannelIdentifier": 1,
                    "messageSent": 12,
                    "messageReceived": 9,
                    "bytesSent": 2048,
                    "bytesReceived": 1024,
                },
            ],
            "localSDPs": ["v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"],
        }
    ],
    "sfuSamples": [
        {
            "sfuId": "sfu-eu-1",
            "timestamp": 1700000000500,
            "timeZoneOffsetInHours": 1,
            "transports": [
                {
                    "transportId": "st-1",
                    "internal": False,
                    "dtlsState": "connected",
                    "iceState": "completed",
                    "iceRole": "controlled",
                    "localAddress": "203.0.113.5",
                    "localPort": 40000,
                    "remoteAddress": "192.0.2.10",
                    "remotePort": 54321,
                    "protocol": "udp",
                    "rtpBytesReceived": 6_000_000_000,
                    "rtpBytesSent": 2_000_000,
                    "rtpPacketsLost": 10,
                    "rtpPacketsReceived": 500000,
                    "rtpPacketsSent": 200000,
                    "sctpState": "connected",
                },
            ],
            "inboundRtpPads": [
                {
                    "padId": "ip-1",
                    "ssrc": 2_882_400_001,
                    "streamId": "s-1",
                    "transportId": "st-1",
                    "mediaType": "audio",
                    "mimeType": "audio/opus",
                    "packetsReceived": 15000,
                    "packetsLost": 3,
                    "fractionLost": 0.001,
                    "jitter": 0.002,
                    "rtxSsrc": 3_000_000_000,
                    "voiceActivityFlag": True,
                    "clockRate": 48000,
                    "payloadType": 111,
                    "roundTripTime": 0.02,
                    "internal": False,
                },
            ],
            "outboundRtpPads": [
                {
                    "padId": "op-1",
                    "sinkId": "k-1",
                    "ssrc": 998877,
                    "streamId": "s-1",
                    "transportId": "st-1",
                    "callId": str(CALL_ID),
                    "clientId": "bob",
                    "mediaType": "video",
                    "packetsSent": 90000,
                    "packetsLost": 7,
                    "framesEncoded": 9000,
                    "bytesSent": 85_000_000,
                    "trackId": "t-sfu-1",
                    "noReport": False,
                },
            ],
            "sctpChannels": [
                {
                    "channelId": "c-1",
                    "streamId": "s-dc",
                    "transportId": "st-1",
                    "label": "chat",
                    "protocol": "json",
                    "messageSent": 5,
                    "messageReceived": 6,
                    "bytesSent": 500,
                    "bytesReceived": 600,
                    "sctpSmoothedRoundTripTime": 0.031,
                    "sctpMtu": 1200,
                    "sctpCongestionWindow": 4800.0,
                },
            ],
            "customSfuEvents": [{"name": "SFU_RTP_PAD_ADDED", "sfuStreamId": "s-1", "timestamp": 1700000000400}],
            "extensionStats": [{"type": "cpu", "payload": "0.42"}],
        }
    ],
    "turnSamples": [
        {
            "serverId": "turn-1",
            "sessions": [
                {
                    "sessionId": "ts-1",
                    "realm": "example.org",
                    "clientId": "alice",
                    "receivedBytes": 1_000_000,
                    "sentBytes": 900_000,
                    "started": 1699999999000,
                }
            ],
            "allocations": [
                {
                    "peerId": "p-1",
                    "relayedAddress": "203.0.113.9",
                    "relayedPort": 50000,
                    "sessionId": "ts-1",
                    "transportProtocol": "udp",
                    "sendingBitrate": 64000,
                }
            ],
        }
    ],
    "controls": {"close": True, "accessClaim": "token-abc"},
}


def _without_empty_lists(d: Any) -> Any:
    """JSON may carry ``[]``; on the protobuf wire an empty repeated field is simply absent."""
    if isinstance(d, dict):
        return {k: _without_empty_lists(v) for k, v in d.items() if v != []}
    if isinstance(d, list):
        return [_without_empty_lists(v) for v in d]
    return d


def _typed(value: Any, schema: MessageSchema) -> Any:
    """Give the JSON literals the Python types protobuf implies (e.g. 30.0 stays float, 0 -> 0.0)."""
    out = {}
    for key, v in value.items():
        f = next(f for f in schema.fields.values() if f.name == key)
        if f.message is not None:
            out[key] = [_typed(x, f.message) for x in v] if f.repeated else _typed(v, f.message)
        elif f.type in ("double", "float"):
            out[key] = float(v)
        else:
            out[key] = v
    return out


def samples_v2_message(compiled: Callable[[str, str], Compiled]) -> Any:
    from google.protobuf import json_format

    c = compiled("v2_2_11", "ProtobufSamples.proto")
    return json_format.ParseDict(SAMPLES_V2_JSON, c.new("Samples"))


def client_sample_v3_message(compiled: Callable[[str, str], Compiled]) -> Any:
    """A 3.x ClientSample as a 3.x client builds it: ids as bytes (UUID raw or UTF-8)."""
    c = compiled("v3_5_0", "ProtobufClientSampleV3.proto")
    cs = c.new("ClientSample")
    cs.timestamp = 1700000000123.5
    cs.callId = CALL_ID.bytes
    cs.clientId = b"client-alice@example.org"
    cs.attachments = '{"tenant":"acme"}'
    cs.score = 4.2
    cs.scoreReasons.extend(["ok", "cpu-limited"])
    events = [("CLIENT_JOINED", "{}"), ("ICE_CONNECTION_STATE_CHANGED", '{"state":"connected"}')]
    for i, (t, payload) in enumerate(events):
        ev = cs.clientEvents.add()
        ev.type, ev.payload, ev.timestamp = t, payload, 1700000000000.0 + i
    issue = cs.clientIssues.add()
    issue.type, issue.key, issue.timestamp = "congestion", "pc-1", 1700000000050.0
    meta = cs.clientMetaItems.add()
    meta.type, meta.peerConnectionId, meta.ssrc, meta.trackId = "SSRC", PC_ID.bytes, 4_000_000_000, b"\xff\x00\x10"

    pc = cs.peerConnections.add()
    pc.peerConnectionId = PC_ID.bytes
    pc.score = 3.9
    inb = pc.inboundRtps.add()
    inb.id, inb.kind, inb.ssrc, inb.timestamp = "IT01A", "audio", 2_882_400_001, 1700000000100.0
    inb.trackIdentifier = uuid.UUID("0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3").bytes
    inb.packetsLost, inb.packetsReceived, inb.jitter = -2, 15000, 0.003
    inb.concealedSamples, inb.totalSamplesReceived = 1200, 7_000_000_000
    inb.audioLevel, inb.mid, inb.powerEfficientDecoder = 0.25, "0", True
    vin = pc.inboundRtps.add()
    vin.id, vin.kind, vin.ssrc = "IT01V", "video", 123456
    vin.trackIdentifier = b"remote-video-track"
    vin.frameWidth, vin.frameHeight, vin.framesPerSecond, vin.qpSum = 1280, 720, 29.97, 123456.0
    vin.freezeCount, vin.totalFreezesDuration = 2, 0.75
    out = pc.outboundRtps.add()
    out.id, out.kind, out.ssrc, out.active = "OT01V", "video", 2222, True
    out.rid, out.targetBitrate, out.framesEncoded = "h", 2_500_000.0, 9100
    out.psnrSum.y, out.psnrSum.u, out.psnrSum.v = 38.5, 40.25, 41.0
    out.qualityLimitationDurations.bandwidth = 12.5
    out.qualityLimitationDurations.none = 100.0
    out.qualityLimitationReason = "bandwidth"
    rin = pc.remoteInboundRtps.add()
    rin.id, rin.kind, rin.ssrc, rin.localId = "RI01", "video", 2222, "OT01V"
    rin.roundTripTime, rin.fractionLost, rin.packetsLost = 0.048, 0.01, 25
    rin.roundTripTimeMeasurements = 64
    for cid, ctype, addr, port in [("ILa", "host", "192.0.2.10", 54321), ("IRb", "relay", "198.51.100.7", 3478)]:
        cand = pc.iceCandidates.add()
        cand.id, cand.candidateType, cand.address, cand.port = cid, ctype, addr, port
        cand.protocol, cand.priority = "udp", 2_122_260_223
    pair = pc.iceCandidatePairs.add()
    pair.id, pair.localCandidateId, pair.remoteCandidateId, pair.nominated = "CP1", "ILa", "IRb", True
    pair.state = pair.SUCCEEDED
    pair.currentRoundTripTime = 0.042
    pair2 = pc.iceCandidatePairs.add()
    pair2.id, pair2.state = "CP2", pair2.INPROGRESS
    tr = pc.iceTransports.add()
    tr.id, tr.bytesReceived, tr.dtlsState, tr.selectedCandidatePairId = "T01", 5_368_709_120, "connected", "CP1"
    return cs


CLIENT_SAMPLE_V3_EXPECTED: dict[str, Any] = {
    "timestamp": 1700000000123.5,
    "callId": str(CALL_ID),
    "clientId": "client-alice@example.org",
    "attachments": '{"tenant":"acme"}',
    "score": 4.2,
    "scoreReasons": ["ok", "cpu-limited"],
    "clientEvents": [
        {"type": "CLIENT_JOINED", "payload": "{}", "timestamp": 1700000000000.0},
        {"type": "ICE_CONNECTION_STATE_CHANGED", "payload": '{"state":"connected"}', "timestamp": 1700000000001.0},
    ],
    "clientIssues": [{"type": "congestion", "key": "pc-1", "timestamp": 1700000000050.0}],
    "clientMetaItems": [{"type": "SSRC", "peerConnectionId": str(PC_ID), "ssrc": 4_000_000_000, "trackId": "ff0010"}],
    "peerConnections": [
        {
            "peerConnectionId": str(PC_ID),
            "score": 3.9,
            "inboundRtps": [
                {
                    "id": "IT01A",
                    "kind": "audio",
                    "ssrc": 2_882_400_001,
                    "timestamp": 1700000000100.0,
                    "trackIdentifier": "0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3",
                    "packetsLost": -2,
                    "packetsReceived": 15000,
                    "jitter": 0.003,
                    "concealedSamples": 1200,
                    "totalSamplesReceived": 7_000_000_000,
                    "audioLevel": 0.25,
                    "mid": "0",
                    "powerEfficientDecoder": True,
                },
                {
                    "id": "IT01V",
                    "kind": "video",
                    "ssrc": 123456,
                    "trackIdentifier": "remote-video-track",
                    "frameWidth": 1280,
                    "frameHeight": 720,
                    "framesPerSecond": 29.97,
                    "qpSum": 123456.0,
                    "freezeCount": 2,
                    "totalFreezesDuration": 0.75,
                },
            ],
            "outboundRtps": [
                {
                    "id": "OT01V",
                    "kind": "video",
                    "ssrc": 2222,
                    "active": True,
                    "rid": "h",
                    "targetBitrate": 2_500_000.0,
                    "framesEncoded": 9100,
                    "psnrSum": {"y": 38.5, "u": 40.25, "v": 41.0},
                    "qualityLimitationDurations": {"bandwidth": 12.5, "none": 100.0},
                    "qualityLimitationReason": "bandwidth",
                },
            ],
            "remoteInboundRtps": [
                {
                    "id": "RI01",
                    "kind": "video",
                    "ssrc": 2222,
                    "localId": "OT01V",
                    "roundTripTime": 0.048,
                    "fractionLost": 0.01,
                    "packetsLost": 25,
                    "roundTripTimeMeasurements": 64,
                },
            ],
            "iceCandidates": [
                {
                    "id": "ILa",
                    "candidateType": "host",
                    "address": "192.0.2.10",
                    "port": 54321,
                    "protocol": "udp",
                    "priority": 2_122_260_223,
                },
                {
                    "id": "IRb",
                    "candidateType": "relay",
                    "address": "198.51.100.7",
                    "port": 3478,
                    "protocol": "udp",
                    "priority": 2_122_260_223,
                },
            ],
            "iceCandidatePairs": [
                {
                    "id": "CP1",
                    "localCandidateId": "ILa",
                    "remoteCandidateId": "IRb",
                    "nominated": True,
                    "state": "SUCCEEDED",
                    "currentRoundTripTime": 0.042,
                },
                {"id": "CP2", "state": "INPROGRESS"},
            ],
            "iceTransports": [
                {"id": "T01", "bytesReceived": 5_368_709_120, "dtlsState": "connected", "selectedCandidatePairId": "CP1"},
            ],
        }
    ],
}


# ------------------------------------------------------------------------------------------
# Schema parsing
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version_dir", "proto_file", "root"), SCHEMA_FILES)
def test_parsed_schema_matches_protoc(compiled, version_dir: str, proto_file: str, root: str) -> None:
    """Every message, field number, name, type, label and enum value agrees with protoc's view."""
    from google.protobuf.descriptor import FieldDescriptor as FD

    scalar_names = {v: k[len("TYPE_") :].lower() for k, v in vars(FD).items() if k.startswith("TYPE_")}
    c = compiled(version_dir, proto_file)
    ours = message_schema(version_dir, proto_file, root)
    seen: set[str] = set()

    def walk(desc: Any, schema: MessageSchema) -> None:
        assert schema.full_name == desc.full_name
        if desc.full_name in seen:
            return
        seen.add(desc.full_name)
        assert sorted(schema.fields) == sorted(f.number for f in desc.fields), desc.full_name
        for fd in desc.fields:
            mine = schema.fields[fd.number]
            assert (mine.name, mine.repeated) == (fd.name, _is_repeated(fd)), f"{desc.full_name}.{fd.name}"
            if fd.type == FD.TYPE_MESSAGE:
                assert mine.message is not None and mine.type == fd.message_type.full_name
                walk(fd.message_type, mine.message)
            elif fd.type == FD.TYPE_ENUM:
                assert mine.type == fd.enum_type.full_name
                assert mine.enum_values == {v.number: v.name for v in fd.enum_type.values}
            else:
                assert mine.type == scalar_names[fd.type]

    walk(c.pool.FindMessageTypeByName(f"{PKG}.{root}"), ours)
    assert len(seen) > 10


def test_message_schema_is_cached_and_accepts_full_names() -> None:
    a = message_schema("v2_2_11", "ProtobufSamples.proto", "Samples")
    assert message_schema("v2_2_11", "ProtobufSamples.proto", "Samples") is a
    full = message_schema("v2_2_11", "ProtobufSamples.proto", f"{PKG}.Samples.ClientSample")
    assert full is a.fields[1].message
    assert full.name == "Samples.ClientSample"
    with pytest.raises(ProtobufError, match="no message Nope"):
        message_schema("v2_2_11", "ProtobufSamples.proto", "Nope")


PARSER_PROTO = """
// line comment with message Fake { }
syntax = "proto3";
package test.scope;   /* block
   comment: enum Nope { X = 1; } */
option java_package = "x.y";

message Leaf { string v = 1; }

message Outer {
  message Leaf { int32 inner = 1; }       // shadows the top-level Leaf inside Outer
  enum Color { option allow_alias = true; RED = 0; CRIMSON = 0; GREEN = 1 [deprecated = true]; }
  message Middle {
    Leaf nearest = 1;                      // Outer.Leaf (innermost scope wins)
    .test.scope.Leaf absolute = 2;         // fully qualified: top-level Leaf
    Outer.Leaf qualified = 3;
    Color color = 4;
    repeated int64 nums = 5 [packed = false];
    reserved 6, 7 to 9;
    reserved "gone";
  }
  oneof choice {
    string name = 1;
    Middle middle = 2;
  }
  Leaf top = 3 [json_name = "topLeaf"];
}
"""


def test_parser_scopes_comments_oneof_options(tmp_path: Path) -> None:
    schemas = parse_proto(PARSER_PROTO)
    assert set(schemas) == {"test.scope.Leaf", "test.scope.Outer", "test.scope.Outer.Leaf", "test.scope.Outer.Middle"}
    middle = schemas["test.scope.Outer.Middle"]
    assert middle.fields[1].type == "test.scope.Outer.Leaf"
    assert middle.fields[2].type == "test.scope.Leaf"
    assert middle.fields[3].type == "test.scope.Outer.Leaf"
    assert middle.fields[4].enum_values == {0: "RED", 1: "GREEN"}
    assert middle.fields[5].repeated and middle.fields[5].type == "int64"
    outer = schemas["test.scope.Outer"]
    assert [f.name for f in outer.fields.values()] == ["name", "middle", "top"]

    # protoc agrees on the resolution, and the decode of a real message uses it.
    c = _compile(PARSER_PROTO, "parser_test.proto", tmp_path, package="test.scope")
    msg = c.new("Outer")
    msg.middle.nearest.inner = -7
    msg.middle.absolute.v = "top-level"
    msg.middle.qualified.inner = 8
    msg.middle.color = 1
    msg.middle.nums.extend([1, -1])
    msg.top.inner = 3
    got = decode(msg.SerializeToString(), outer)
    assert_same(got, expected(msg))
    assert got["middle"]["color"] == "GREEN"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('syntax = "proto3"; message M { map<string, int32> m = 1; }', "'map' is not supported"),
        ('syntax = "proto2"; message M { optional group G = 1 { optional int32 a = 1; } }', "'group' is not supported"),
        ('syntax = "proto3"; message M { Missing x = 1; }', "unknown type Missing"),
        ('syntax = "proto3"; message M { int32 a = 1; int32 b = 1; }', "field number 1 used twice"),
        ('syntax = "proto3"; message M { int32 a = 1 }', "expected ';'"),
        ('syntax = "editions"; message M {}', "unsupported syntax"),
        ('syntax = "proto3"; message A { message B {} } message C { A.X x = 1; }', "unknown type A.X"),
    ],
)
def test_parser_rejects_what_it_does_not_support(text: str, reason: str) -> None:
    with pytest.raises(ProtobufError, match=reason):
        parse_proto(text)


# ------------------------------------------------------------------------------------------
# Decoding the real schemas
# ------------------------------------------------------------------------------------------


def test_samples_v2_decodes_exactly_like_the_json(compiled) -> None:
    msg = samples_v2_message(compiled)
    data = msg.SerializeToString()
    schema = message_schema("v2_2_11", "ProtobufSamples.proto", "Samples")
    got = decode(data, schema)

    assert_same(got, _typed(_without_empty_lists(SAMPLES_V2_JSON), schema))
    assert_same(got, expected(msg))
    # Spot checks of the points the pipeline relies on.
    client = got["clientSamples"][0]
    assert client["inboundAudioTracks"][0]["ssrc"] == 2_882_400_001
    assert client["inboundAudioTracks"][0]["packetsLost"] == -3
    assert client["timeZoneOffsetInHours"] == -5
    assert client["pcTransports"][0]["bytesReceived"] == 5_368_709_120
    assert client["iceCandidatePairs"][1]["nominated"] is False
    assert got["controls"] == {"close": True, "accessClaim": "token-abc"}
    assert "userMediaErrors" not in client  # empty repeated: absent, like any absent field


def test_memoryview_and_bytearray_inputs(compiled) -> None:
    data = samples_v2_message(compiled).SerializeToString()
    schema = message_schema("v2_2_11", "ProtobufSamples.proto", "Samples")
    assert decode(bytearray(data), schema) == decode(memoryview(data), schema) == decode(data, schema)


@pytest.mark.parametrize("proto_file", ["ProtobufSamplesV3.proto", "ProtobufSamplesV3Optional.proto"])
def test_samples_v2_proto3_variants_enums_and_byte_ids(compiled, proto_file: str) -> None:
    c = compiled("v2_2_11", proto_file)
    samples = c.new("Samples")
    cs = samples.clientSamples.add()
    cs.clientId = b"alice"
    cs.callId = CALL_ID.bytes
    cs.timestamp = 1700000000123
    dev = cs.mediaDevices.add(id="default", label="Mic")
    dev.kind = dev.AUDIOINPUT
    cam = cs.mediaDevices.add(id="cam")
    cam.kind = cam.VIDEOINPUT  # enum value 0
    tr = cs.pcTransports.add(transportId="T01")
    tr.peerConnectionId = PC_ID.bytes
    tr.dtlsRole = tr.SERVER
    cs.inboundAudioTracks.add(ssrc=5, packetsLost=-1, peerConnectionId=b"\x00\xfe\x01", trackId=b"")
    sfu = samples.sfuSamples.add(sfuId=b"sfu-1", timestamp=1)
    pad = sfu.inboundRtpPads.add(padId=PC_ID.bytes, ssrc=7, streamId=b"s", transportId="t")
    pad.mediaType = pad.VIDEO
    samples.controls.close = True

    got = decode(samples.SerializeToString(), message_schema("v2_2_11", proto_file, "Samples"))
    assert_same(got, expected(samples))
    client = got["clientSamples"][0]
    assert client["callId"] == str(CALL_ID) and client["clientId"] == "alice"
    assert client["mediaDevices"][0]["kind"] == "AUDIOINPUT"
    assert client["pcTransports"][0] == {"transportId": "T01", "peerConnectionId": str(PC_ID), "dtlsRole": "SERVER"}
    assert client["inboundAudioTracks"][0]["peerConnectionId"] == "00fe01"  # not UTF-8, not 16 bytes: hex
    assert got["sfuSamples"][0]["inboundRtpPads"][0]["mediaType"] == "VIDEO"
    if proto_file.endswith("Optional.proto"):
        # explicit presence: a zero enum / empty bytes that was set is on the wire and decoded
        assert client["mediaDevices"][1] == {"id": "cam", "kind": "VIDEOINPUT"}
        assert client["inboundAudioTracks"][0]["trackId"] == ""
    else:
        # implicit presence: proto3 does not send zero values, and we do not invent them
        assert client["mediaDevices"][1] == {"id": "cam"}
        assert "trackId" not in client["inboundAudioTracks"][0]


def test_client_sample_v3(compiled) -> None:
    msg = client_sample_v3_message(compiled)
    got = decode(msg.SerializeToString(), message_schema("v3_5_0", "ProtobufClientSampleV3.proto", "ClientSample"))
    assert_same(got, CLIENT_SAMPLE_V3_EXPECTED)
    assert_same(got, expected(msg))


def test_client_sample_v3_optional_variant_keeps_zero_values(compiled) -> None:
    c = compiled("v3_5_0", "ProtobufClientSampleV3Optional.proto")
    cs = c.new("ClientSample", timestamp=0.0, score=0.0)
    pc = cs.peerConnections.add()
    pair = pc.iceCandidatePairs.add(id="CP", nominated=False, packetsSent=0)
    pair.state = pair.NEW
    schema = message_schema("v3_5_0", "ProtobufClientSampleV3Optional.proto", "ClientSample")
    pair_dict = {"id": "CP", "nominated": False, "packetsSent": 0, "state": "NEW"}
    want = {"timestamp": 0.0, "score": 0.0, "peerConnections": [{"iceCandidatePairs": [pair_dict]}]}
    assert_same(decode(cs.SerializeToString(), schema), want)


def test_unknown_enum_number_stays_an_int(compiled) -> None:
    c = compiled("v3_5_0", "ProtobufClientSampleV3.proto")
    cs = c.new("ClientSample")
    cs.peerConnections.add().iceCandidatePairs.add(id="x").state = 42  # proto3 enums are open
    got = decode(cs.SerializeToString(), message_schema("v3_5_0", "ProtobufClientSampleV3.proto", "ClientSample"))
    assert got["peerConnections"][0]["iceCandidatePairs"][0] == {"id": "x", "state": 42}


def test_singular_submessage_sent_twice_is_merged(compiled) -> None:
    c = compiled("v2_2_11", "ProtobufSamples.proto")
    first = c.new("Samples")
    first.controls.accessClaim = "a"
    second = c.new("Samples")
    second.controls.close = True
    data = first.SerializeToString() + second.SerializeToString()
    merged = c.new("Samples")
    merged.MergeFromString(data)
    got = decode(data, message_schema("v2_2_11", "ProtobufSamples.proto", "Samples"))
    assert got == expected(merged) == {"controls": {"accessClaim": "a", "close": True}}


# ------------------------------------------------------------------------------------------
# Wire-format corners, with a purpose-made schema
# ------------------------------------------------------------------------------------------

SCALARS_PROTO2 = """
syntax = "proto2";
package wire;
enum E { ZERO = 0; ONE = 1; MINUS = -1; }
message Unpacked {
  repeated int32 i32 = 1;
  repeated int64 i64 = 2;
  repeated sint32 s32 = 3;
  repeated sint64 s64 = 4;
  repeated uint64 u64 = 5;
  repeated fixed32 f32 = 6;
  repeated sfixed64 sf64 = 7;
  repeated double d = 8;
  repeated float fl = 9;
  repeated bool b = 10;
  repeated E e = 11;
  repeated uint32 u32 = 12;
  repeated fixed64 f64 = 13;
  repeated sfixed32 sf32 = 14;
  optional int32 one_i32 = 20;
  optional int64 one_i64 = 21;
  optional sint32 one_s32 = 22;
  optional sint64 one_s64 = 23;
  optional uint32 one_u32 = 24;
  optional E one_e = 25;
}
message Packed {
  repeated int32 i32 = 1 [packed = true];
  repeated int64 i64 = 2 [packed = true];
  repeated sint32 s32 = 3 [packed = true];
  repeated sint64 s64 = 4 [packed = true];
  repeated uint64 u64 = 5 [packed = true];
  repeated fixed32 f32 = 6 [packed = true];
  repeated sfixed64 sf64 = 7 [packed = true];
  repeated double d = 8 [packed = true];
  repeated float fl = 9 [packed = true];
  repeated bool b = 10 [packed = true];
  repeated E e = 11 [packed = true];
  repeated uint32 u32 = 12 [packed = true];
  repeated fixed64 f64 = 13 [packed = true];
  repeated sfixed32 sf32 = 14 [packed = true];
}
message Node { optional Node child = 1; optional int32 depth = 2; }
"""

# Only protoc compiles this part (our parser rejects groups, which no shipped schema uses).
FUTURE_PROTO2 = """
message Future {
  // Unpacked's fields plus fields of every wire type the old schema does not know.
  repeated int32 i32 = 1;
  optional string one_e_is_not_here = 99;
  optional fixed64 x_fixed64 = 100;
  optional fixed32 x_fixed32 = 101;
  optional int64 x_varint = 102;
  optional Node x_message = 103;
  optional group Legacy = 104 {
    optional int32 a = 1;
    optional Node n = 2;
    optional group Inner = 3 { optional string s = 4; }
  }
  optional int64 one_i64 = 21;
  repeated bytes x_bytes = 536870911;
}
"""

EDGE_VALUES: dict[str, list[Any]] = {
    "i32": [0, 1, -1, 2**31 - 1, -(2**31), 300],
    "i64": [0, -1, 2**63 - 1, -(2**63), 5_000_000_000],
    "s32": [0, -1, 1, 2**31 - 1, -(2**31)],
    "s64": [0, -1, 2**63 - 1, -(2**63)],
    "u64": [0, 2**64 - 1, 2**63],
    "u32": [0, 2**32 - 1],
    "f32": [0, 2**32 - 1],
    "f64": [2**64 - 1],
    "sf32": [-(2**31), 5],
    "sf64": [-(2**63), 2**63 - 1],
    "d": [0.0, -1.5, 1e308, 0.1],
    "fl": [0.5, -2.0, 0.1],
    "b": [True, False, True],
    "e": [1, -1, 0],
}


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> tuple[Compiled, dict[str, MessageSchema]]:
    c = _compile(SCALARS_PROTO2 + FUTURE_PROTO2, "wire.proto", tmp_path_factory.mktemp("wire"), package="wire")
    return c, parse_proto(SCALARS_PROTO2)


def _filled(c: Compiled, name: str) -> Any:
    msg = c.new(name)
    for field_name, values in EDGE_VALUES.items():
        getattr(msg, field_name).extend(values)
    return msg


@pytest.mark.parametrize("encoded_as", ["Packed", "Unpacked"])
@pytest.mark.parametrize("decoded_as", ["Packed", "Unpacked"])
def test_repeated_scalars_packed_and_unpacked(wire, encoded_as: str, decoded_as: str) -> None:
    c, schemas = wire
    msg = _filled(c, encoded_as)
    data = msg.SerializeToString()
    got = decode(data, schemas[f"wire.{decoded_as}"])
    want = expected(msg)
    assert_same(got, want)
    assert got["e"] == ["ONE", "MINUS", "ZERO"]
    assert got["i64"] == EDGE_VALUES["i64"] and got["s64"] == EDGE_VALUES["s64"]


def test_packed_and_unpacked_runs_of_one_field_concatenate(wire) -> None:
    c, schemas = wire
    packed = c.new("Packed", i32=[1, 2], s64=[-3])
    unpacked = c.new("Unpacked", i32=[3], s64=[4])
    data = packed.SerializeToString() + unpacked.SerializeToString() + packed.SerializeToString()
    ref = c.new("Unpacked")
    ref.MergeFromString(data)
    got = decode(data, schemas["wire.Unpacked"])
    assert got == expected(ref) == {"i32": [1, 2, 3, 1, 2], "s64": [-3, 4, -3]}


def test_negative_and_zigzag_singular_values(wire) -> None:
    c, schemas = wire
    msg = c.new("Unpacked", one_i32=-5, one_i64=-(2**40), one_s32=-(2**31), one_s64=-1, one_u32=2**32 - 1, one_e=-1)
    data = msg.SerializeToString()
    assert len(c.new("Unpacked", one_i32=-5).SerializeToString()) == 2 + 10  # negative int32: 10-byte varint
    assert decode(data, schemas["wire.Unpacked"]) == {
        "one_i32": -5,
        "one_i64": -(2**40),
        "one_s32": -(2**31),
        "one_s64": -1,
        "one_u32": 2**32 - 1,
        "one_e": "MINUS",
    }


def test_unknown_fields_of_every_wire_type_are_skipped(wire) -> None:
    c, schemas = wire
    fut = c.new("Future", i32=[7, -7], one_i64=9, one_e_is_not_here="x", x_fixed64=1, x_fixed32=2, x_varint=-3)
    fut.x_message.child.child.depth = 3
    fut.legacy.a = 1
    fut.legacy.n.depth = 2
    fut.legacy.inner.s = "deep"
    fut.x_bytes.extend([b"\x00" * 300, b""])
    data = fut.SerializeToString()
    got = decode(data, schemas["wire.Unpacked"])
    assert got == {"i32": [7, -7], "one_i64": 9}
    assert top_level_field_numbers(data) == {1, 21, 99, 100, 101, 102, 103, 104, 536870911}


def test_nesting_depth_is_limited(wire) -> None:
    c, schemas = wire

    def chain(n: int) -> bytes:
        root = node = c.new("Node")
        for _ in range(n):
            node = node.child
        node.depth = n
        return root.SerializeToString()

    ok = decode(chain(60), schemas["wire.Node"])
    for _ in range(60):
        ok = ok["child"]
    assert ok == {"depth": 60}
    with pytest.raises(ProtobufError, match="nested deeper than 64"):
        decode(chain(200), schemas["wire.Node"])


# ------------------------------------------------------------------------------------------
# Malformed input
# ------------------------------------------------------------------------------------------


def test_truncated_input_at_every_length(compiled) -> None:
    """A cut inside any top-level field is an error; a cut between fields is a shorter message."""
    c = compiled("v2_2_11", "ProtobufSamples.proto")
    full = samples_v2_message(compiled)
    schema = message_schema("v2_2_11", "ProtobufSamples.proto", "Samples")
    parts = [
        c.new("Samples", clientSamples=[full.clientSamples[0]]),
        c.new("Samples", sfuSamples=[full.sfuSamples[0]]),
        c.new("Samples", turnSamples=[full.turnSamples[0]]),
        c.new("Samples", controls=full.controls),
    ]
    data = b"".join(p.SerializeToString() for p in parts)
    assert data == full.SerializeToString()
    boundaries, acc = {0}, 0
    for p in parts:
        acc += p.ByteSize()
        boundaries.add(acc)
    # every cut inside the small trailing fields, and a sample of cuts inside the big client sample
    cuts = sorted(set(range(0, len(data) + 1, 7)) | set(range(len(data) - 400, len(data) + 1)) | boundaries)
    for cut in cuts:
        if cut in boundaries:
            decode(data[:cut], schema)
            assert top_level_field_numbers(data[:cut]) <= {1, 2, 3, 4}
        else:
            with pytest.raises(ProtobufError):
                decode(data[:cut], schema)
            with pytest.raises(ProtobufError):
                top_level_field_numbers(data[:cut])


def test_random_corruption_only_ever_raises_protobuf_error(compiled) -> None:
    data = client_sample_v3_message(compiled).SerializeToString()
    schema = message_schema("v3_5_0", "ProtobufClientSampleV3.proto", "ClientSample")
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(3000):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        try:
            decode(bytes(buf), schema)
            outcomes["ok"] += 1
        except ProtobufError:
            outcomes["error"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] > 100


SAMPLES = ("v2_2_11", "ProtobufSamples.proto", "Samples")
CLIENT_V3 = ("v3_5_0", "ProtobufClientSampleV3.proto", "ClientSample")


@pytest.mark.parametrize(
    ("schema_key", "data", "reason"),
    [
        (SAMPLES, b"\x0a", "truncated varint at byte 1"),
        (SAMPLES, b"\x0a\x80", "truncated varint at byte 1"),
        (SAMPLES, b"\x0a\x05\x01", "truncated field 1 of Samples: length 5 at byte 2 runs past byte 3"),
        (SAMPLES, b"\x0a\xff\xff\xff\xff\x0f", "length 4294967295 at byte 6 runs past"),
        (SAMPLES, b"\x0a\x01\x0a", "truncated varint at byte 3"),  # cut inside the sub-message only
        # field 22 (timestamp, int64) of ClientSample sent as fixed32
        (
            SAMPLES,
            b"\x0a\x05\xb5\x01\x00\x00\x00",
            "field 22 of Samples.ClientSample: wire type 5 does not match int64",
        ),
        (SAMPLES, b"\x09" + b"\x00" * 8, "field 1 of Samples: wire type 1 does not match message"),
        (SAMPLES, b"\x22\x02\x0a\x00\x22\x01", "truncated"),
        (SAMPLES, b"\x22\x03\x0a\x01\xff", "field 1 of Samples.Controls: invalid UTF-8 at byte 4"),
        (SAMPLES, b"\x00\x01", "invalid field number 0 at byte 1"),
        (SAMPLES, b"\x2e", "invalid wire type 6"),
        (SAMPLES, b"\x2c", "unexpected end of group"),
        (SAMPLES, b"\x2b\x08\x01", "unterminated group"),
        (SAMPLES, b"\x2b\x34", "mismatched end of group"),
        (SAMPLES, b"\x28" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes at byte 1"),
        (CLIENT_V3, b"\x38\x01", "field 7 of ClientSample: wire type 0 does not match double"),
        (CLIENT_V3, b"\x39\x00\x00", "truncated field 7 of ClientSample at byte 1"),
        # peerConnections[0].peerConnectionId (bytes) sent as a varint
        (
            CLIENT_V3,
            b"\x2a\x02\x88\x01",
            "field 17 of ClientSample.PeerConnectionSample: wire type 0 does not match bytes",
        ),
    ],
)
def test_malformed_input_reasons(schema_key: tuple[str, str, str], data: bytes, reason: str) -> None:
    with pytest.raises(ProtobufError, match=reason.replace("(", r"\(")):
        decode(data, message_schema(*schema_key))


def test_protobuf_error_is_a_value_error() -> None:
    assert issubclass(ProtobufError, ValueError)


# ------------------------------------------------------------------------------------------
# bytes rendering and schema sniffing
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b"", ""),
        ("peer-ünïcødé".encode(), "peer-ünïcødé"),
        (b"0123456789abcdef", "0123456789abcdef"),  # 16 printable ASCII characters stay text
        (CALL_ID.bytes, str(CALL_ID)),
        # a UUID whose 16 bytes happen to be valid UTF-8 ("\xc3\xa9" is "é") is still a UUID
        (b"ABCDEFA\xc3\xa9HIJKLMN", str(uuid.UUID(bytes=b"ABCDEFA\xc3\xa9HIJKLMN"))),
        (b"\xff\x00\x10", "ff0010"),
        (b"\xff" * 17, "ff" * 17),
    ],
)
def test_bytes_rendering(compiled, raw: bytes, want: str) -> None:
    c = compiled("v3_5_0", "ProtobufClientSampleV3.proto")
    data = c.new("ClientSample", callId=raw).SerializeToString() if raw else b"\x4a\x00"
    got = decode(data, message_schema("v3_5_0", "ProtobufClientSampleV3.proto", "ClientSample"))
    assert got == {"callId": want}


def test_top_level_field_numbers_tells_the_schemas_apart(compiled) -> None:
    v2 = samples_v2_message(compiled).SerializeToString()
    v3 = client_sample_v3_message(compiled).SerializeToString()
    assert top_level_field_numbers(v2) == {1, 2, 3, 4}
    assert top_level_field_numbers(v3) == {1, 2, 3, 5, 6, 7, 8, 9, 10, 11}
    assert top_level_field_numbers(b"") == set()
    assert top_level_field_numbers(memoryview(v3)) == top_level_field_numbers(v3)
    with pytest.raises(ProtobufError, match="truncated"):
        top_level_field_numbers(v3[:-1])
    with pytest.raises(ProtobufError, match="invalid wire type 7"):
        top_level_field_numbers(b"\x0f")
