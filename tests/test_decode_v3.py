"""Schema 3.x ClientSample (client-monitor-js 4.x) -> model, receiver/_v3.py."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import msgspec
import pytest

from tests._samples import client_sample_v2
from webrtc_observer.model import ClientSample, Origin, PeerConnection, Track
from webrtc_observer.receiver._decoding import RefusedInput
from webrtc_observer.receiver._decoding import decode as receive
from webrtc_observer.receiver._limits import LimitsConfig
from webrtc_observer.receiver._v3 import client_sample_in_json, decode_client_sample_v3, v2_record_fields, wire_sample_in_json
from webrtc_observer.receiver._wire_types import WireError
from webrtc_observer.schemas import avro_schema

# The schemas' golden 3.5.0 stream (ObserveRTC/schemas, Apache-2.0); the repo keeps a copy in fixtures/.
GOLDEN_COPIES = (
    Path(__file__).parent / "fixtures" / "client-sample-v3.5.0.golden-stream.json",
    Path("/work/shared/reference/observertc-schemas-3.5.0/stream.golden.json"),
)
ORIGIN = Origin(service_id="svc", media_unit_id="mu", received_at=1756000000500, generation="3", schema_version="3.5.0")
TS = 1756000000000


@cache
def _golden_text() -> str:
    for path in GOLDEN_COPIES:
        if path.exists():
            return path.read_text(encoding="utf-8")
    pytest.skip("golden 3.5.0 stream not available")


def golden0() -> dict[str, Any]:
    """Message 0 of the golden stream: the only full sample in it (later messages are deltas)."""
    return copy.deepcopy(json.loads(_golden_text())["messages"][0])


def enriched0() -> dict[str, Any]:
    """Message 0 plus the stats a real browser also reports but the golden sample leaves out.

    The golden sample has no remote-inbound/remote-outbound-rtp, media sources, playouts, candidates,
    data channels or certificates; these are added here (shaped as client-monitor-js 4.x emits them)
    so that merging and candidate classification can be checked on an otherwise real sample.
    """
    s = golden0()
    pc = s["peerConnections"][0]
    inbound_audio, _inbound_video = pc["inboundRtps"]
    outbound_audio, outbound_video = pc["outboundRtps"]
    inbound_audio["playoutId"] = "AP"
    inbound_audio["lastPacketReceivedTimestamp"] = 1755999999990.25  # W3C double, 2.x long
    pc["iceCandidatePairs"][0]["lastPacketReceivedTimestamp"] = 1755999999991.75
    outbound_audio["mediaSourceId"] = "SA1"
    outbound_video["mediaSourceId"] = "SV2"
    outbound_video["codecId"] = "COT01_96"
    pc["remoteOutboundRtps"] = [
        {
            "id": "ROA1234567890",
            "timestamp": TS,
            "ssrc": 1234567890,
            "kind": "audio",
            "transportId": "T01",
            "localId": "IT01A",
            "packetsSent": 150,
            "bytesSent": 44100,
            "remoteTimestamp": 1755999999800.0,
            "reportsSent": 3,
            "roundTripTime": 0.051,
            "totalRoundTripTime": 0.153,
            "roundTripTimeMeasurements": 3,
        }
    ]
    pc["remoteInboundRtps"] = [
        {
            "id": "RIA4567890123",
            "timestamp": TS,
            "ssrc": 4567890123,
            "kind": "audio",
            "transportId": "T01",
            "localId": "OT01A",
            "packetsLost": 1,
            "jitter": 0.003,
            "roundTripTime": 0.048,
            "totalRoundTripTime": 0.144,
            "fractionLost": 0.0,
            "roundTripTimeMeasurements": 3,
        },
        {
            "id": "RIV5678901234",
            "timestamp": TS,
            "ssrc": 5678901234,
            "kind": "video",
            "transportId": "T01",
            "localId": "OT02V",
            "packetsLost": 4,
            "jitter": 0.007,
            "roundTripTime": 0.062,
            "totalRoundTripTime": 0.186,
            "fractionLost": 0.00390625,
            "roundTripTimeMeasurements": 3,
            "packetsWithBleachedEct1Marking": 0,
        },
    ]
    pc["mediaSources"] = [
        {
            "id": "SA1",
            "timestamp": TS,
            "kind": "audio",
            "trackIdentifier": "track-local-audio",
            "audioLevel": 0.031,
            "totalAudioEnergy": 0.012,
            "totalSamplesDuration": 3.2,
            "echoReturnLoss": -30.0,
            "echoReturnLossEnhancement": 0.18,
        },
        {
            "id": "SV2",
            "timestamp": TS,
            "kind": "video",
            "trackIdentifier": "track-local-video",
            "width": 1280,
            "height": 720,
            "frames": 96,
            "framesPerSecond": 30,
        },
    ]
    pc["mediaPlayouts"] = [
        {
            "id": "AP",
            "timestamp": TS,
            "kind": "audio",
            "synthesizedSamplesDuration": 0.02,
            "synthesizedSamplesEvents": 2,
            "totalSamplesDuration": 3.1,
            "totalPlayoutDelay": 0.9,
            "totalSamplesCount": 148800,
        }
    ]
    pc["codecs"].append({"id": "COT01_96", "timestamp": TS, "mimeType": "video/H264", "clockRate": 90000, "payloadType": 96})
    pc["iceCandidates"] = [
        {
            "id": "LC01",
            "timestamp": TS,
            "transportId": "T01",
            "address": "192.0.2.10",
            "port": 50000,
            "protocol": "udp",
            "candidateType": "host",
            "priority": 2122260223,
            "foundation": "1",
            "usernameFragment": "lUfr",
        },
        {
            "id": "RC01",
            "timestamp": TS,
            "transportId": "T01",
            "address": "198.51.100.7",
            "port": 3478,
            "protocol": "udp",
            "candidateType": "srflx",
            "priority": 1686052607,
            "usernameFragment": "rUfr",
        },
        {
            # referenced by no pair; url and relayProtocol exist only on local candidates
            "id": "LC02",
            "timestamp": TS,
            "transportId": "T01",
            "address": "203.0.113.5",
            "port": 61000,
            "protocol": "udp",
            "candidateType": "relay",
            "priority": 41885439,
            "url": "turn:turn.example.org:3478?transport=udp",
            "relayProtocol": "udp",
        },
    ]
    pc["dataChannels"] = [
        {
            "id": "DC01",
            "timestamp": TS,
            "label": "signalling",
            "state": "open",
            "protocol": "",
            "dataChannelIdentifier": 1,
            "messagesSent": 2,
            "bytesSent": 128,
            "messagesReceived": 1,
            "bytesReceived": 64,
        }
    ]
    pc["certificates"] = [
        {
            "id": "CF01",
            "timestamp": TS,
            "fingerprint": "AA:BB:CC",
            "fingerprintAlgorithm": "sha-256",
            "base64Certificate": "MIIB...",
        }
    ]
    pc["peerConnectionTransports"] = [{"id": "P", "timestamp": TS, "dataChannelsOpened": 1, "dataChannelsClosed": 0}]
    s["clientIssues"] = [{"type": "FREEZE", "key": "track-remote-video", "timestamp": TS, "payload": {"ms": 420}}]
    s["clientMetaItems"] = [
        {
            "type": "MEDIA_TRACK_ADDED",
            "timestamp": TS,
            "peerConnectionId": "pc-01",
            "trackId": "track-local-video",
            "ssrc": 5678901234,
        }
    ]
    s["extensionStats"] = [{"type": "app-metric", "payload": {"queue": 3}}]
    return s


def decode(obj: Any) -> ClientSample:
    return decode_client_sample_v3(obj, ORIGIN)


def track(tracks: list[Track], ssrc: int) -> Track:
    (found,) = [t for t in tracks if t.ssrc == ssrc]
    return found


# --------------------------------------------------------------------------------------------
# The golden sample as it is
# --------------------------------------------------------------------------------------------


def test_identity_and_scores() -> None:
    s = decode(golden0())
    assert s.origin is ORIGIN
    assert (s.client_id, s.call_id, s.timestamp) == ("client-42", "call-7f3a", TS)
    assert isinstance(s.timestamp, int)
    assert s.score == 4.534
    assert s.attachments == '{"app":"observertc-tests","build":"deterministic"}'
    assert (s.room_id, s.user_id, s.marker) == (None, None, None)  # not in these attachments
    assert s.peer_connections == [
        PeerConnection(peer_connection_id="pc-01", score=4.188, attachments='{"role":"publisher","region":"eu-north-1"}')
    ]


def test_inbound_tracks() -> None:
    s = decode(golden0())
    audio = track(s.inbound_tracks, 1234567890)
    assert (audio.kind, audio.track_id, audio.peer_connection_id) == ("audio", "track-remote-audio", "pc-01")
    assert audio.stats == {
        "bytesReceived": 41980,
        "packetsReceived": 142,
        "packetsLost": 0,
        "jitter": 0.019,
        "audioLevel": 0.228,
        "totalAudioEnergy": 0.409,
        "concealedSamples": 0,
    }  # no id/kind/trackIdentifier/codecId/mid/powerEfficientDecoder/attachments: not 2.x fields

    video = track(s.inbound_tracks, 2345678901)
    assert (video.kind, video.track_id) == ("video", "track-remote-video")
    assert video.stats["framesDecoded"] == 30
    assert (video.stats["frameWidth"], video.stats["frameHeight"]) == (1280, 720)
    assert video.stats["framesPerSecond"] == 30.0 and isinstance(video.stats["framesPerSecond"], float)
    assert video.stats["headerBytesReceived"] == 9007199254740000
    assert video.stats["decoderImplementation"] == ""


def test_outbound_tracks() -> None:
    s = decode(golden0())
    audio = track(s.outbound_tracks, 4567890123)
    assert (audio.kind, audio.peer_connection_id, audio.track_id) == ("audio", "pc-01", None)
    assert audio.stats == {"bytesSent": 54390, "packetsSent": 171, "active": True, "targetBitrate": 32000}
    assert isinstance(audio.stats["targetBitrate"], int)  # 2.x declares int, W3C a double

    video = track(s.outbound_tracks, 5678901234)
    assert video.kind == "video"
    assert video.stats["framesEncoded"] == 30
    assert video.stats["qualityLimitationReason"] == "none"
    assert video.stats["qualityLimitationDurationNone"] == 0
    assert video.stats["qualityLimitationDurationCPU"] == 0
    assert video.stats["qualityLimitationDurationBandwidth"] == 0
    assert video.stats["qualityLimitationDurationOther"] == 0
    for gone in ("qualityLimitationDurations", "psnrSum", "psnrMeasurements", "scalabilityMode", "mid", "id"):
        assert gone not in video.stats


def test_transports_and_candidate_pairs() -> None:
    s = decode(golden0())
    assert s.transports == [
        {
            "peerConnectionId": "pc-01",
            "transportId": "T01",
            "dtlsState": "connected",
            "iceState": "checking",
            "selectedCandidatePairId": "CP01",
            "bytesSent": 54390,
            "bytesReceived": 41980,
            "packetsSent": 171,
            "packetsReceived": 142,
        }
    ]
    assert s.candidate_pairs == [
        {
            "peerConnectionId": "pc-01",
            "candidatePairId": "CP01",
            "state": "waiting",
            "nominated": False,
            "localCandidateId": "LC01",
            "remoteCandidateId": "RC01",
            "currentRoundTripTime": 0.124,
            "availableOutgoingBitrate": 1800886.0,
            "bytesSent": 54390,
            "bytesReceived": 41980,
        }
    ]


def test_codecs() -> None:
    s = decode(golden0())
    assert s.codecs == [
        {
            "peerConnectionId": "pc-01",
            "mimeType": "audio/opus",
            "clockRate": 48000,
            "channels": 2,
            "payloadType": "111",  # 2.x: a string
            "codecType": "decode",  # used by an inbound-rtp
        },
        {
            "peerConnectionId": "pc-01",
            "mimeType": "video/H264",
            "clockRate": 90000,
            "payloadType": "96",
            "codecType": "decode",
        },
    ]


def test_client_events() -> None:
    s = decode(golden0())
    assert [(e.name, e.value, e.message, e.peer_connection_id, e.timestamp) for e in s.events] == [
        ("CLIENT_JOINED", '{"role":"host"}', None, None, TS),
        ("CLIENT_JOINED", '{"role":"guest"}', None, None, TS),
    ]
    assert (s.issues, s.meta, s.extensions) == ([], [], [])
    for empty in (s.local_candidates, s.remote_candidates, s.data_channels, s.certificates, s.media_sources):
        assert empty == []


# --------------------------------------------------------------------------------------------
# The golden sample with the remaining stats types
# --------------------------------------------------------------------------------------------


def test_inbound_audio_merges_remote_outbound_and_playout() -> None:
    s = decode(enriched0())
    audio = track(s.inbound_tracks, 1234567890)
    assert audio.stats["packetsReceived"] == 142  # inbound-rtp
    assert audio.stats["packetsSent"] == 150  # remote-outbound-rtp, matched by localId
    assert audio.stats["roundTripTime"] == 0.051
    assert audio.stats["reportsSent"] == 3
    assert audio.stats["remoteTimestamp"] == 1755999999800 and isinstance(audio.stats["remoteTimestamp"], int)
    assert audio.stats["synthesizedSamplesDuration"] == 0.02  # media-playout by playoutId
    assert audio.stats["totalSamplesCount"] == 148800
    assert audio.stats["totalPlayoutDelay"] == 0.9
    assert "totalSamplesDuration" not in audio.stats  # 2.x takes that one from the inbound-rtp only
    assert audio.stats["lastPacketReceivedTimestamp"] == 1755999999990
    assert isinstance(audio.stats["lastPacketReceivedTimestamp"], int)
    assert s.candidate_pairs[0]["lastPacketReceivedTimestamp"] == 1755999999991
    # the video stream has no remote-outbound-rtp: nothing borrowed
    assert "packetsSent" not in track(s.inbound_tracks, 2345678901).stats


def test_outbound_merges_remote_inbound_and_media_source() -> None:
    s = decode(enriched0())
    video = track(s.outbound_tracks, 5678901234)
    assert video.track_id == "track-local-video"  # from the media source
    assert video.stats["roundTripTime"] == 0.062  # remote-inbound-rtp, matched by localId
    assert video.stats["packetsLost"] == 4
    assert video.stats["fractionLost"] == 0.00390625
    assert video.stats["roundTripTimeMeasurements"] == 3
    assert (video.stats["width"], video.stats["height"], video.stats["frames"]) == (1280, 720, 96)
    assert "framesPerSecond" not in video.stats  # the outbound-rtp did not say; not taken from the source
    assert "packetsWithBleachedEct1Marking" not in video.stats

    audio = track(s.outbound_tracks, 4567890123)
    assert audio.track_id == "track-local-audio"
    assert audio.stats["roundTripTime"] == 0.048
    assert audio.stats["jitter"] == 0.003
    assert audio.stats["audioLevel"] == 0.031
    assert audio.stats["echoReturnLoss"] == -30.0
    assert "width" not in audio.stats


def test_candidates_classified() -> None:
    s = decode(enriched0())
    assert [c["id"] for c in s.local_candidates] == ["LC01", "LC02"]
    assert [c["id"] for c in s.remote_candidates] == ["RC01"]
    assert s.local_candidates[0] == {
        "peerConnectionId": "pc-01",
        "id": "LC01",
        "address": "192.0.2.10",
        "port": 50000,
        "protocol": "udp",
        "candidateType": "host",
        "priority": 2122260223,
    }
    assert s.local_candidates[1]["url"] == "turn:turn.example.org:3478?transport=udp"
    assert s.local_candidates[1]["relayProtocol"] == "udp"
    assert s.remote_candidates[0]["address"] == "198.51.100.7"


@pytest.mark.parametrize(
    ("candidate", "transport_ufrag", "local"),
    [
        ({"usernameFragment": "mine"}, "mine", True),
        ({"usernameFragment": "theirs"}, "mine", False),
        ({"usernameFragment": "theirs"}, None, True),  # nothing to compare with
        ({"candidateType": "prflx"}, None, True),  # unknown: local
        ({"url": "stun:stun.example.org"}, "mine", True),
    ],
)
def test_unreferenced_candidate_heuristics(candidate: dict[str, Any], transport_ufrag: str | None, local: bool) -> None:
    s = golden0()
    pc = s["peerConnections"][0]
    if transport_ufrag:
        pc["iceTransports"][0]["iceLocalUsernameFragment"] = transport_ufrag
    pc["iceCandidates"] = [{"id": "X", "timestamp": TS, "protocol": "udp", **candidate}]
    out = decode(s)
    assert [c["id"] for c in (out.local_candidates if local else out.remote_candidates)] == ["X"]
    assert (out.remote_candidates if local else out.local_candidates) == []


def test_data_channels_certificates_media_sources() -> None:
    s = decode(enriched0())
    assert s.data_channels == [
        {
            "peerConnectionId": "pc-01",
            "label": "signalling",
            "state": "open",
            "protocol": "",
            "dataChannelIdentifier": 1,
            "messageSent": 2,
            "bytesSent": 128,
            "messageReceived": 1,
            "bytesReceived": 64,
        }
    ]
    assert s.certificates == [
        {
            "peerConnectionId": "pc-01",
            "fingerprint": "AA:BB:CC",
            "fingerprintAlgorithm": "sha-256",
            "base64Certificate": "MIIB...",
        }
    ]
    assert [m["trackIdentifier"] for m in s.media_sources] == ["track-local-audio", "track-local-video"]
    assert s.media_sources[1] == {
        "peerConnectionId": "pc-01",
        "kind": "video",
        "trackIdentifier": "track-local-video",
        "width": 1280,
        "height": 720,
        "frames": 96,
        "framesPerSecond": 30.0,
    }
    # W3C codec stats have no codecType: it follows from the RTP streams naming the codec
    codec_types = [(c["payloadType"], c.get("codecType")) for c in s.codecs]
    assert codec_types == [("111", "decode"), ("96", "decode"), ("96", "encode")]


def test_issues_meta_extensions() -> None:
    s = decode(enriched0())
    (issue,) = s.issues
    assert (issue.name, issue.message, issue.timestamp) == ("FREEZE", "track-remote-video", TS)
    assert issue.attachments == '{"ms":420}'
    (meta,) = s.meta
    assert (meta.type, meta.peer_connection_id, meta.track_id, meta.ssrc, meta.timestamp) == (
        "MEDIA_TRACK_ADDED",
        "pc-01",
        "track-local-video",
        5678901234,
        TS,
    )
    (ext,) = s.extensions
    assert (ext.type, ext.payload) == ("app-metric", '{"queue":3}')


@cache
def _v2_samples_schema() -> Any:
    return fastavro.parse_schema(avro_schema("v2_2_11", "Samples.avsc"))


def as_v2_client_sample(s: ClientSample) -> dict[str, Any]:
    """Reassemble a 2.x ClientSample from the model, as a report builder would read it."""

    def tracks(ts: list[Track], kind: str) -> list[dict[str, Any]]:
        return [
            {**t.stats, "ssrc": t.ssrc, "trackId": t.track_id, "peerConnectionId": t.peer_connection_id}
            for t in ts
            if t.kind == kind
        ]

    strip = lambda records: [{k: v for k, v in r.items() if k != "peerConnectionId"} for r in records]  # noqa: E731
    return {
        "clientId": s.client_id,
        "callId": s.call_id,
        "timestamp": s.timestamp,
        "inboundAudioTracks": tracks(s.inbound_tracks, "audio"),
        "inboundVideoTracks": tracks(s.inbound_tracks, "video"),
        "outboundAudioTracks": tracks(s.outbound_tracks, "audio"),
        "outboundVideoTracks": tracks(s.outbound_tracks, "video"),
        "pcTransports": s.transports,
        "iceCandidatePairs": s.candidate_pairs,
        "iceLocalCandidates": s.local_candidates,
        "iceRemoteCandidates": s.remote_candidates,
        "dataChannels": s.data_channels,
        # 2.x has no peerConnectionId on these three; the model carries it for the reports
        "codecs": strip(s.codecs),
        "certificates": strip(s.certificates),
        "mediaSources": strip(s.media_sources),
    }


def test_every_stats_record_type_checks_as_2x() -> None:
    s = decode(enriched0())
    fields = v2_record_fields()
    allowed = {
        "inboundAudioTracks": "InboundAudioTrack",
        "inboundVideoTracks": "InboundVideoTrack",
        "outboundAudioTracks": "OutboundAudioTrack",
        "outboundVideoTracks": "OutboundVideoTrack",
    }
    v2 = as_v2_client_sample(s)
    for key, record in allowed.items():
        assert v2[key], key
        for rec in v2[key]:
            assert set(rec) <= set(fields[record]), (key, set(rec) - set(fields[record]))
    # types too: a W3C double 2.x declares long (lastPacketReceivedTimestamp...) would fail here
    fastavro.validation.validate({"clientSamples": [v2]}, _v2_samples_schema(), raise_errors=True)


# --------------------------------------------------------------------------------------------
# Matching rules
# --------------------------------------------------------------------------------------------


def test_remote_outbound_matched_by_remote_id_then_ssrc() -> None:
    s = golden0()
    pc = s["peerConnections"][0]
    audio, _video = pc["inboundRtps"]
    audio["remoteId"] = "RO-A"
    pc["remoteOutboundRtps"] = [
        {"id": "RO-A", "timestamp": TS, "ssrc": 111, "kind": "audio", "packetsSent": 1},  # by remoteId, other ssrc
        {"id": "RO-V", "timestamp": TS, "ssrc": 2345678901, "kind": "video", "packetsSent": 2},  # by ssrc
    ]
    out = decode(s)
    assert track(out.inbound_tracks, 1234567890).stats["packetsSent"] == 1
    assert track(out.inbound_tracks, 2345678901).stats["packetsSent"] == 2


def test_remote_inbound_matched_by_ssrc_when_local_id_missing() -> None:
    s = golden0()
    pc = s["peerConnections"][0]
    pc["remoteInboundRtps"] = [
        {"id": "RI-V", "timestamp": TS, "ssrc": 5678901234, "kind": "video", "roundTripTime": 0.25},
        {"id": "RI-X", "timestamp": TS, "ssrc": 1, "kind": "audio", "localId": "OT01A", "roundTripTime": 0.5},
    ]
    out = decode(s)
    assert track(out.outbound_tracks, 5678901234).stats["roundTripTime"] == 0.25
    assert track(out.outbound_tracks, 4567890123).stats["roundTripTime"] == 0.5  # localId wins over ssrc


def test_candidate_pair_state_spellings_normalised() -> None:
    s = golden0()
    pairs = s["peerConnections"][0]["iceCandidatePairs"]
    pairs.extend(copy.deepcopy(pairs[0]) for _ in range(3))
    for pair, state in zip(pairs, ("inProgress", "SUCCEEDED", "in-progress", "something-new"), strict=False):
        pair["state"] = state
    states = [p["state"] for p in decode(s).candidate_pairs]
    assert states == ["in-progress", "succeeded", "in-progress", "something-new"]


def test_event_payload_names_peer_connection_and_track() -> None:
    s = golden0()
    s["clientEvents"] = [
        {"type": "MEDIA_TRACK_MUTED", "timestamp": TS, "payload": {"peerConnectionId": "pc-01", "trackId": "t-1"}},
        {"type": "NOTE", "payload": "plain text"},
    ]
    first, second = decode(s).events
    assert (first.peer_connection_id, first.track_id) == ("pc-01", "t-1")
    assert first.value == '{"peerConnectionId":"pc-01","trackId":"t-1"}'
    assert (second.value, second.timestamp, second.peer_connection_id) == ("plain text", None, None)


# --------------------------------------------------------------------------------------------
# Identity and attachments
# --------------------------------------------------------------------------------------------


def test_attachments_object_carries_room_user_marker() -> None:
    s = golden0()
    s["attachments"] = {"roomId": "room-1", "userId": "alice", "marker": "canary", "n": 1}
    out = decode(s)
    assert (out.room_id, out.user_id, out.marker) == ("room-1", "alice", "canary")
    assert out.attachments == '{"roomId":"room-1","userId":"alice","marker":"canary","n":1}'


def test_attachments_as_string() -> None:
    s = golden0()
    s["attachments"] = '{"roomId": "room-2", "userId": 7}'
    s["peerConnections"][0]["attachments"] = "pc attachment text"
    out = decode(s)
    assert out.attachments == '{"roomId": "room-2", "userId": 7}'  # text stays as sent
    assert (out.room_id, out.user_id, out.marker) == ("room-2", "7", None)
    assert out.peer_connections[0].attachments == "pc attachment text"


def test_attachments_text_that_is_not_json_object() -> None:
    s = golden0()
    s["attachments"] = "just a note"
    out = decode(s)
    assert (out.attachments, out.room_id) == ("just a note", None)


def test_integral_double_timestamp_becomes_int() -> None:
    s = golden0()
    s["timestamp"] = 1756000000000.0  # protobuf clients send the timestamp as a double
    out = decode(s)
    assert out.timestamp == TS and isinstance(out.timestamp, int)


# --------------------------------------------------------------------------------------------
# Bad and odd input
# --------------------------------------------------------------------------------------------


def test_missing_client_id() -> None:
    s = golden0()
    del s["clientId"]
    with pytest.raises(WireError, match="clientId is required"):
        decode(s)


def test_wrong_type_names_the_path() -> None:
    s = golden0()
    s["peerConnections"][0]["inboundRtps"][0]["ssrc"] = "abc"
    with pytest.raises(WireError, match=r"\$\.peerConnections\[0\]\.inboundRtps\[0\]\.ssrc"):
        decode(s)


def test_missing_required_stats_field_names_the_path() -> None:
    s = golden0()
    del s["peerConnections"][0]["outboundRtps"][1]["kind"]
    with pytest.raises(WireError, match=r"kind.*\$\.peerConnections\[0\]\.outboundRtps\[1\]"):
        decode(s)


def test_unknown_kind() -> None:
    s = golden0()
    s["peerConnections"][0]["outboundRtps"][1]["kind"] = "screen"
    with pytest.raises(WireError, match=r"'screen'.*\$\.peerConnections\[0\]\.outboundRtps\[1\]\.kind"):
        decode(s)


def test_not_an_object() -> None:
    with pytest.raises(WireError):
        decode(["not", "a", "sample"])


def test_unknown_fields_tolerated() -> None:
    s = golden0()
    s["futureTopLevel"] = {"x": 1}
    pc = s["peerConnections"][0]
    pc["futureStatsType"] = [{"id": "F", "timestamp": TS}]
    pc["inboundRtps"][0]["futureMetric"] = 42
    pc["iceTransports"][0]["futureField"] = "x"
    out = decode(s)
    assert out.client_id == "client-42"
    assert "futureMetric" not in track(out.inbound_tracks, 1234567890).stats
    assert "futureField" not in out.transports[0]
    assert track(out.inbound_tracks, 1234567890).stats["packetsReceived"] == 142


def test_nulls_are_dropped() -> None:
    s = golden0()
    s["callId"] = None
    s["peerConnections"][0]["inboundRtps"][0]["jitter"] = None
    out = decode(s)
    assert out.call_id is None
    assert "jitter" not in track(out.inbound_tracks, 1234567890).stats


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every object member in ``value``, depth first."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in [(*at, k), *_paths(v, (*at, k))]]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths(v, (*at, i))]
    return []


def _outcome(sample: dict[str, Any]) -> ClientSample | str:
    try:
        return decode(sample)
    except WireError:
        return "refused"


def test_a_null_member_that_is_taken_reads_as_a_missing_one() -> None:
    base = enriched0()
    # Free-form content (attachments, payloads) is the client's own JSON: a null in it is data.
    paths = [p for p in _paths(base) if not {"attachments", "payload"} & set(p[:-1])]
    assert len(paths) > 250
    accepted = 0
    for path in paths:
        *parents, key = path
        nulled, removed = copy.deepcopy(base), copy.deepcopy(base)
        nulled_parent, removed_parent = nulled, removed
        for step in parents:
            nulled_parent, removed_parent = nulled_parent[step], removed_parent[step]
        nulled_parent[key] = None
        del removed_parent[key]
        taken = _outcome(nulled)
        if taken != "refused":  # a null where the schema has no null (a proto3-omittable number) is refused
            assert taken == _outcome(removed), path
            accepted += 1
    assert accepted > 150


def test_minimal_sample() -> None:
    out = decode({"clientId": "c", "timestamp": TS})
    assert (out.client_id, out.timestamp, out.peer_connections, out.inbound_tracks, out.events) == ("c", TS, [], [], [])


def test_fractional_stats_timestamp_accepted() -> None:
    s = golden0()
    s["peerConnections"][0]["inboundRtps"][0]["timestamp"] = 1756000000123.456
    s["timestamp"] = 1756000000123.9
    out = decode(s)
    assert isinstance(out.timestamp, int)


def test_a_kind_keeps_only_its_own_fields() -> None:
    """One Struct reads the inbound-rtps of both kinds: what only the other kind keeps is left out."""
    s = golden0()
    inbound_audio, inbound_video = s["peerConnections"][0]["inboundRtps"]
    inbound_video["audioLevel"] = 0.5
    inbound_video["concealedSamples"] = 7
    inbound_audio["framesDecoded"] = 30
    inbound_audio["qpSum"] = 1e300  # not read for audio, so not refused as out of range either
    out = decode(s)
    audio = track(out.inbound_tracks, inbound_audio["ssrc"]).stats
    video = track(out.inbound_tracks, inbound_video["ssrc"]).stats
    assert not {"framesDecoded", "qpSum"} & audio.keys()
    assert not {"audioLevel", "concealedSamples"} & video.keys()
    assert set(audio) <= set(v2_record_fields()["InboundAudioTrack"])
    assert set(video) <= set(v2_record_fields()["InboundVideoTrack"])


def _received(sample: dict[str, Any]) -> Any:
    data = json.dumps(sample).encode()
    return receive(data, ORIGIN, route="samples", encoding="json", gzipped=False, limit=1 << 22, limits=LimitsConfig())


def test_strings_bounded_while_decoding_when_the_limits_allow_it() -> None:
    """With limits, JSON text is decoded with every id bounded to max_id_length: then no id needs
    checking after. Other text may be longer. A longer id is decoded again, unbounded, and refused by
    the limits, wherever the sample carries it."""
    s = enriched0()
    s["peerConnections"][0]["certificates"][0]["base64Certificate"] = "A" * 5000
    decoded = _received(s)
    assert (decoded.samples, decoded.strings_within) == ([decode(s)], LimitsConfig().max_id_length)
    long = "x" * 257
    s["peerConnections"][0]["iceCandidatePairs"][0]["localCandidateId"] = long
    assert client_sample_in_json(json.dumps(s).encode(), ORIGIN, 256) == (decode(s), False)
    for field, sample in (
        ("localCandidateId", s),
        ("callId", {**enriched0(), "callId": long}),
        (
            "trackId",
            {
                **enriched0(),
                "peerConnections": [
                    {
                        "peerConnectionId": "pc",
                        "inboundRtps": [{"ssrc": 1, "kind": "audio", "id": "I", "timestamp": TS, "trackIdentifier": long}],
                    }
                ],
            },
        ),
        ("roomId", {**enriched0(), "attachments": {"roomId": long}}),
        ("mediaTrackId", {**enriched0(), "clientEvents": [{"type": "e", "payload": {"trackId": long}}]}),
    ):
        with pytest.raises(RefusedInput) as refused:
            _received(sample)
        assert refused.value.reason == "limits" and field in refused.value.detail, (field, refused.value)


def _received_as(body: bytes, schema_version: str | None) -> Any:
    origin = msgspec.structs.replace(ORIGIN, schema_version=schema_version)
    return receive(body, origin, route="samples", encoding="json", gzipped=False, limit=1 << 22, limits=LimitsConfig())


def test_generation_told_by_the_keys_even_when_the_text_decodes_as_a_3x_sample() -> None:
    """JSON text is first decoded as a 3.x ClientSample; the keys it then is known to have must still
    make it one, as the top-level keys alone do: a wrapper key, a declared 2.x version, or no 3.x key
    with a value (a null one reads as missing there, so the keys are looked at) send it the way its
    keys say."""
    v3 = json.dumps(enriched0()).encode()
    assert _received_as(v3, None).samples[0].origin.generation == "3"
    assert _received_as(v3, "3.5.0").samples[0].origin.generation == "3"
    assert _received_as(v3, "2.2.11").samples[0].origin.generation == "2"  # declared: a 2.x sample
    # A wrapper key after the others (past the quick look at the start of the text).
    wrapper_last = v3[:-1] + b',"clientSamples":[' + json.dumps(client_sample_v2()).encode() + b"]}"
    assert [s.origin.generation for s in _received_as(wrapper_last, None).samples] == ["2"]
    for key in ("sfuSamples", "turnSamples", "controls"):  # a null one too: a wrapper, without client samples
        assert _received_as(v3[:-1] + f',"{key}":null}}'.encode(), None).samples == []
    # 3.x keys sent as null are keys sent: the sample is 3.x (the typed decoding alone cannot tell).
    nulls = json.dumps({"clientId": "c", "timestamp": TS, "score": None, "peerConnections": None}).encode()
    assert _received_as(nulls, None).samples[0].origin.generation == "3"
    # No 3.x key: a 2.x sample, though the text decodes as a 3.x one.
    bare = json.dumps({"clientId": "c", "timestamp": TS}).encode()
    assert _received_as(bare, None).samples[0].origin.generation == "2"
    assert _received_as(bare, "3.5.0").samples[0].origin.generation == "3"


def test_a_3x_sample_without_peer_connections_is_told_from_its_keys_alike() -> None:
    """Only text that names ``peerConnections`` is tried as a 3.x sample first; a 3.x sample without
    them takes the way of its top-level keys and decodes the same."""
    events_only = {k: v for k, v in enriched0().items() if k != "peerConnections"}
    body = json.dumps(events_only).encode()
    assert b'"peerConnections"' not in body
    (sample,) = _received_as(body, None).samples
    assert sample.origin.generation == "3"
    with_empty = json.dumps({**events_only, "peerConnections": []}).encode()
    (told_first,) = _received_as(with_empty, None).samples
    assert msgspec.to_builtins(sample) == msgspec.to_builtins(told_first)


def test_wire_sample_keeps_the_marked_keys_unparsed() -> None:
    """The keys ``marking`` names are kept as their JSON text, a null one too, so that they read as sent."""
    body = b'{"clientId":"c","timestamp":1,"controls":null,"clientSamples":[{"x":1}]}'
    wire = wire_sample_in_json(body, 256, ("clientSamples", "controls", "sfuSamples"))
    assert (bytes(wire.clientSamples), bytes(wire.controls), wire.sfuSamples) == (b'[{"x":1}]', b"null", None)
    with pytest.raises(WireError):
        wire_sample_in_json(b'{"clientId":"' + b"x" * 300 + b'","timestamp":1}', 256, ())


@pytest.mark.parametrize("capture", ["browser-cm3-rest.json", "browser-cm4-ws.json"])
def test_a_clients_ids_decoded_from_each_sample_are_one_string_each(capture: str) -> None:
    """Every sample brings its client's ids anew; what the processors keep of them is one copy of each
    text (the interned one), however many samples they came from."""
    messages = json.loads((Path(__file__).parent / "fixtures" / capture).read_text())["messages"]
    origin = msgspec.structs.replace(ORIGIN, generation="2" if "cm3" in capture else "3", schema_version=None)
    seen: dict[str, str] = {}
    checked = 0
    for message in messages:
        decoded = receive(message["body"].encode(), origin, route="samples", encoding="json", gzipped=False, limit=1 << 22)
        for sample in decoded.samples:
            assert isinstance(sample, ClientSample)
            tracks = [*sample.inbound_tracks, *sample.outbound_tracks]
            ids = [sample.client_id, sample.call_id, sample.room_id, sample.user_id]
            ids += [t.peer_connection_id for t in tracks] + [t.track_id for t in tracks]
            for text in filter(None, ids):
                assert seen.setdefault(text, text) is text, f"{text!r} kept twice"
                checked += 1
    assert checked > 2 * len(seen) > 0  # ids came again in later samples
