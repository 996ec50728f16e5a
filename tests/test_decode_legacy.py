"""Decoding legacy PeerConnectionSample v20200114 (observer.js / WebExtrApp) into the internal model."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from webrtc_observer.model import ClientSample, Origin, Track
from webrtc_observer.receiver._legacy import decode_pc_sample
from webrtc_observer.receiver._wire_types import WireError
from webrtc_observer.schemas import avro_schema

PC_ID = "6b6b4cf0-55a5-4c4e-9a2f-1a0dbbd3c2a1"
BROWSER_ID = "d41d8cd98f00b204e9800998ecf8427e"
ORIGIN = Origin(
    service_id="b8bf0467-d7a9-4caa-93c9-8cd6e0dd7731",
    media_unit_id="webapp-1.4",
    received_at=1_602_000_000_999,
    generation="pcsample-v20200114",
)

# Pair and candidates as Chrome ~M85 reported them; webextrapp collected them from every receiver's and
# sender's getStats(), so they repeat across the buckets.
_PAIR = {
    "id": "RTCIceCandidatePair_Vx2VpdVk_Bd6k7lWz",
    "transportId": "RTCTransport_0_1",
    "localCandidateId": "RTCIceCandidate_Vx2VpdVk",
    "remoteCandidateId": "RTCIceCandidate_Bd6k7lWz",
    "state": "succeeded",
    "priority": 9115005270282354000,
    "nominated": True,
    "writable": True,
    "bytesSent": 1_843_210,
    "bytesReceived": 2_101_877,
    "totalRoundTripTime": 0.731,
    "currentRoundTripTime": 0.021,
    "availableOutgoingBitrate": 1_874_312,
    "requestsReceived": 31,
    "requestsSent": 32,
    "responsesReceived": 32,
    "responsesSent": 31,
    "consentRequestsSent": 30,
}
_LOCAL = {
    "id": "RTCIceCandidate_Vx2VpdVk",
    "transportId": "RTCTransport_0_1",
    "isRemote": False,
    "networkType": "wifi",
    "ip": "192.168.1.23",
    "port": 54321,
    "protocol": "udp",
    "candidateType": "host",
    "priority": 2122260223,
    "deleted": False,
}
_REMOTE = {
    "id": "RTCIceCandidate_Bd6k7lWz",
    "transportId": "RTCTransport_0_1",
    "isRemote": True,
    "ip": "203.0.113.7",
    "port": 61234,
    "protocol": "udp",
    "candidateType": "srflx",
    "priority": 1686052607,
    "deleted": False,
}


def chrome_sample() -> dict[str, Any]:
    """A one-to-one call seen from one Chrome tab: audio+video each way."""
    return {
        "peerConnectionId": PC_ID,
        "browserId": BROWSER_ID,
        "callId": "daily-standup",
        "userId": "alice",
        "marker": "canary",
        "timestamp": 1_602_000_000_123,
        "timeZoneOffsetInMinute": -120,
        "receiverStats": {
            "inboundRTPStats": [
                {
                    "id": "RTCInboundRTPAudioStream_3194867405",
                    "ssrc": 3194867405,
                    "isRemote": False,
                    "mediaType": "audio",
                    "trackId": "RTCMediaStreamTrack_receiver_3",
                    "transportId": "RTCTransport_0_1",
                    "codecId": "RTCCodec_0_Inbound_111",
                    "packetsReceived": 2519,
                    "bytesReceived": 203_311,
                    "headerBytesReceived": 70_532,
                    "packetsLost": 7,
                    "lastPacketReceivedTimestamp": 1_602_000_000_101.337,
                    "jitter": 0.004,
                    "fecPacketsReceived": 0,
                    "fecPacketsDiscarded": 0,
                    "nackCount": 0,
                },
                {
                    "id": "RTCInboundRTPVideoStream_1407335041",
                    "ssrc": 1407335041,
                    "isRemote": False,
                    "mediaType": "video",
                    "trackId": "RTCMediaStreamTrack_receiver_4",
                    "transportId": "RTCTransport_0_1",
                    "codecId": "RTCCodec_1_Inbound_96",
                    "firCount": 0,
                    "pliCount": 2,
                    "nackCount": 11,
                    "qpSum": 41_873.0,
                    "packetsReceived": 4410,
                    "bytesReceived": 4_733_991,
                    "headerBytesReceived": 110_720,
                    "packetsLost": 3,
                    "framesDecoded": 1488,
                    "keyFramesDecoded": 3,
                    "totalDecodeTime": 3.112,
                    "totalInterFrameDelay": 49.6,
                    "totalSquaredInterFrameDelay": 1.71,
                    "decoderImplementation": "libvpx",
                    "jitter": 0.011,
                    "lastPacketReceivedTimestamp": 1_602_000_000_117.9,
                },
            ],
            "tracks": [
                {
                    "id": "RTCMediaStreamTrack_receiver_3",
                    "mediaType": "audio",
                    "remoteSource": True,
                    "ended": False,
                    "detached": False,
                    "jitterBufferDelay": 3481.4,
                    "jitterBufferEmittedCount": 2_401_920,
                    "totalSamplesReceived": 2_415_360,
                    "concealedSamples": 13_440,
                    "silentConcealedSamples": 3_840,
                    "concealmentEvents": 12,
                    "insertedSamplesForDeceleration": 7_210,
                    "removedSamplesForAcceleration": 1_933,
                    "samplesDuration": 50.31,
                },
                {
                    "id": "RTCMediaStreamTrack_receiver_4",
                    "mediaType": "video",
                    "remoteSource": True,
                    "ended": False,
                    "detached": False,
                    "jitterBufferDelay": 87.2,
                    "jitterBufferEmittedCount": 1487,
                    "frameWidth": 640,
                    "frameHeight": 360,
                    "framesReceived": 1495,
                    "framesDecoded": 1490,  # inbound-rtp's framesDecoded wins
                    "framesDropped": 5,
                },
            ],
            "outboundRTPStats": [],
            "remoteInboundRTPStats": [],
            "mediaSources": [],
        },
        "senderStats": {
            "outboundRTPStats": [
                {
                    "id": "RTCOutboundRTPAudioStream_1720183301",
                    "ssrc": 1720183301,
                    "isRemote": False,
                    "mediaType": "audio",
                    "mediaSourceId": "RTCAudioSource_1",
                    "trackId": "RTCMediaStreamTrack_sender_1",
                    "transportId": "RTCTransport_0_1",
                    "codecId": "RTCCodec_0_Outbound_111",
                    "remoteId": "RTCRemoteInboundRtpAudioStream_1720183301",
                    "packetsSent": 2530,
                    "retransmittedPacketsSent": 0,
                    "bytesSent": 199_118,
                    "headerBytesSent": 70_840,
                    "retransmittedBytesSent": 0,
                    "nackCount": 0,
                },
                {
                    "id": "RTCOutboundRTPVideoStream_2887613250",
                    "ssrc": 2887613250,
                    "isRemote": False,
                    "mediaType": "video",
                    "mediaSourceId": "RTCVideoSource_2",
                    "trackId": "RTCMediaStreamTrack_sender_2",
                    "transportId": "RTCTransport_0_1",
                    "codecId": "RTCCodec_1_Outbound_96",
                    "remoteId": "RTCRemoteInboundRtpVideoStream_2887613250",
                    "firCount": 0,
                    "pliCount": 1,
                    "nackCount": 4,
                    "qpSum": 39_114,
                    "packetsSent": 4460,
                    "retransmittedPacketsSent": 4,
                    "bytesSent": 4_801_233,
                    "headerBytesSent": 111_988,
                    "retransmittedBytesSent": 4_412,
                    "framesEncoded": 1502,
                    "keyFramesEncoded": 2,
                    "totalEncodeTime": 5.807,
                    "totalEncodedBytesTarget": 4_688_122,
                    "totalPacketSendDelay": 12.44,
                    "qualityLimitationReason": "bandwidth",
                    "qualityLimitationResolutionChanges": 2,
                    "encoderImplementation": "libvpx",
                },
            ],
            "remoteInboundRTPStats": [
                {
                    "id": "RTCRemoteInboundRtpAudioStream_1720183301",
                    "ssrc": 1720183301,
                    "mediaType": "audio",
                    "localId": "RTCOutboundRTPAudioStream_1720183301",
                    "transportId": "RTCTransport_0_1",
                    "codecId": "RTCCodec_0_Outbound_111",
                    "packetsLost": 2,
                    "jitter": 0.0031,
                    "roundTripTime": 0.042,
                },
                {
                    "id": "RTCRemoteInboundRtpVideoStream_2887613250",
                    "ssrc": 2887613250,
                    "mediaType": "video",
                    "localId": "RTCOutboundRTPVideoStream_2887613250",
                    "transportId": "RTCTransport_0_1",
                    "codecId": "RTCCodec_1_Outbound_96",
                    "packetsLost": 9,
                    "jitter": 0.0072,
                    "roundTripTime": 0.044,
                },
            ],
            "mediaSources": [
                {
                    "id": "RTCAudioSource_1",
                    "mediaType": "audio",
                    "trackId": "3f1a9c4e-8e3b-4c1e-9f6d-0b8e5a2d7c11",
                    "audioLevel": 0.0198,
                    "totalAudioEnergy": 0.8123,
                    "totalSamplesDuration": 50.62,
                },
                {
                    "id": "RTCVideoSource_2",
                    "mediaType": "video",
                    "trackId": "a7c6d2b0-41f5-4a0e-8f0b-6c2e9d1b3e45",
                    "width": 1280.0,
                    "height": 720.0,
                    "framesPerSecond": 30.0,
                },
            ],
            "tracks": [
                {
                    "id": "RTCMediaStreamTrack_sender_1",
                    "mediaType": "audio",
                    "mediaSourceId": "RTCAudioSource_1",
                    "remoteSource": False,
                    "ended": False,
                    "detached": False,
                },
                {
                    "id": "RTCMediaStreamTrack_sender_2",
                    "mediaType": "video",
                    "mediaSourceId": "RTCVideoSource_2",
                    "remoteSource": False,
                    "ended": False,
                    "detached": False,
                    "hugeFramesSent": 1,
                    "frameWidth": 960,
                    "frameHeight": 540,
                },
            ],
            "inboundRTPStats": [],
        },
        "iceStats": {
            # receiver bucket + sender bucket, concatenated by webextrapp
            "candidatePairs": [dict(_PAIR), dict(_PAIR)],
            "localCandidates": [dict(_LOCAL), dict(_LOCAL)],
            "remoteCandidates": [dict(_REMOTE), dict(_REMOTE)],
        },
        "clientDetails": {
            "browser": {"name": "Chrome", "version": "85.0.4183.121"},
            "os": {"name": "Windows", "version": "NT 10.0", "versionName": "10"},
            "platform": {"type": "desktop"},
            "engine": {"name": "Blink", "version": "85.0.4183.121"},
        },
        "deviceList": [
            {"deviceId": "default", "groupId": "g1", "kind": "audioinput", "label": "Default - Microphone (Realtek)"},
            {"deviceId": "4c0b", "groupId": "g2", "kind": "videoinput", "label": "HD WebCam (04f2:b5a7)"},
            {"deviceId": "default", "groupId": "g1", "kind": "audiooutput", "label": "Default - Speakers (Realtek)"},
        ],
        "extensions": [{"extensionType": "APP_STATE", "payload": '{"muted":false,"screenShare":false}'}],
    }


def _one(tracks: list[Track], kind: str) -> Track:
    found = [t for t in tracks if t.kind == kind]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def decoded() -> ClientSample:
    return decode_pc_sample(chrome_sample(), ORIGIN)


# --- identity ---------------------------------------------------------------------------------------


def test_identity(decoded: ClientSample) -> None:
    assert decoded.origin is ORIGIN
    assert decoded.client_id == BROWSER_ID
    assert decoded.browser_id == BROWSER_ID
    assert decoded.call_id == "daily-standup"
    assert decoded.room_id == "daily-standup"  # the legacy call *name* also groups as a room
    assert decoded.user_id == "alice"
    assert decoded.marker == "canary"
    assert decoded.timestamp == 1_602_000_000_123
    assert decoded.time_zone_offset_hours == -2
    assert [pc.peer_connection_id for pc in decoded.peer_connections] == [PC_ID]


def test_client_id_falls_back_to_peer_connection_and_timestamp_to_receipt() -> None:
    raw = chrome_sample()
    del raw["browserId"], raw["timestamp"], raw["callId"]
    raw["timeZoneOffsetInMinute"] = -330  # India: not a whole number of hours
    s = decode_pc_sample(raw, ORIGIN)
    assert s.client_id == PC_ID
    assert s.browser_id is None
    assert s.timestamp == ORIGIN.received_at
    assert s.call_id is None and s.room_id is None
    assert s.time_zone_offset_hours is None


# --- tracks -----------------------------------------------------------------------------------------


def test_inbound_audio(decoded: ClientSample) -> None:
    t = _one(decoded.inbound_tracks, "audio")
    assert (t.ssrc, t.peer_connection_id, t.track_id) == (3194867405, PC_ID, "RTCMediaStreamTrack_receiver_3")
    st = t.stats
    assert st["packetsReceived"] == 2519
    assert st["packetsLost"] == 7
    assert st["jitter"] == 0.004
    assert st["bytesReceived"] == 203_311
    assert st["lastPacketReceivedTimestamp"] == 1_602_000_000_101  # legacy double -> 2.x long
    # from the legacy track stats
    assert st["concealedSamples"] == 13_440
    assert st["silentConcealedSamples"] == 3_840
    assert st["concealmentEvents"] == 12
    assert st["jitterBufferDelay"] == 3481.4
    assert st["jitterBufferEmittedCount"] == 2_401_920
    assert st["totalSamplesReceived"] == 2_415_360
    assert st["insertedSamplesForDeceleration"] == 7_210
    assert st["removedSamplesForAcceleration"] == 1_933
    assert st["totalSamplesDuration"] == 50.31  # legacy samplesDuration
    # identity and legacy-only fields do not leak into stats
    for key in ("ssrc", "trackId", "peerConnectionId", "id", "codecId", "mediaType", "isRemote", "remoteSource"):
        assert key not in st


def test_inbound_video(decoded: ClientSample) -> None:
    t = _one(decoded.inbound_tracks, "video")
    assert (t.ssrc, t.track_id) == (1407335041, "RTCMediaStreamTrack_receiver_4")
    st = t.stats
    assert st["framesDecoded"] == 1488  # inbound-rtp wins over the track stats
    assert st["keyFramesDecoded"] == 3
    assert st["qpSum"] == 41_873 and isinstance(st["qpSum"], int)
    assert st["pliCount"] == 2
    assert st["nackCount"] == 11
    assert st["totalDecodeTime"] == 3.112
    assert st["decoderImplementation"] == "libvpx"
    assert st["framesDropped"] == 5
    assert st["framesReceived"] == 1495
    assert (st["frameWidth"], st["frameHeight"]) == (640, 360)
    assert st["jitterBufferDelay"] == 87.2
    assert "concealedSamples" not in st


def test_outbound_audio(decoded: ClientSample) -> None:
    t = _one(decoded.outbound_tracks, "audio")
    # the media source carries the MediaStreamTrack id
    assert (t.ssrc, t.peer_connection_id, t.track_id) == (1720183301, PC_ID, "3f1a9c4e-8e3b-4c1e-9f6d-0b8e5a2d7c11")
    st = t.stats
    assert st["packetsSent"] == 2530
    assert st["bytesSent"] == 199_118
    assert st["headerBytesSent"] == 70_840
    # remote-inbound-rtp of the same SSRC
    assert st["packetsLost"] == 2
    assert st["jitter"] == 0.0031
    assert st["roundTripTime"] == 0.042
    # media-source
    assert st["audioLevel"] == 0.0198
    assert st["totalAudioEnergy"] == 0.8123
    assert st["totalSamplesDuration"] == 50.62
    assert "framesEncoded" not in st and "width" not in st


def test_outbound_video(decoded: ClientSample) -> None:
    t = _one(decoded.outbound_tracks, "video")
    assert (t.ssrc, t.track_id) == (2887613250, "a7c6d2b0-41f5-4a0e-8f0b-6c2e9d1b3e45")
    st = t.stats
    assert st["framesEncoded"] == 1502
    assert st["keyFramesEncoded"] == 2
    assert st["qualityLimitationReason"] == "bandwidth"
    assert st["qualityLimitationResolutionChanges"] == 2
    assert st["totalEncodeTime"] == 5.807
    assert st["retransmittedBytesSent"] == 4_412
    assert st["roundTripTime"] == 0.044
    assert st["packetsLost"] == 9
    assert (st["width"], st["height"]) == (1280, 720) and isinstance(st["width"], int)
    assert st["framesPerSecond"] == 30.0
    assert st["hugeFramesSent"] == 1
    assert (st["frameWidth"], st["frameHeight"]) == (960, 540)
    assert "audioLevel" not in st


def test_media_sources(decoded: ClientSample) -> None:
    by_track = {m["trackIdentifier"]: m for m in decoded.media_sources}
    audio = by_track["3f1a9c4e-8e3b-4c1e-9f6d-0b8e5a2d7c11"]
    assert audio == {
        "peerConnectionId": PC_ID,
        "trackIdentifier": "3f1a9c4e-8e3b-4c1e-9f6d-0b8e5a2d7c11",
        "kind": "audio",
        "audioLevel": 0.0198,
        "totalAudioEnergy": 0.8123,
        "totalSamplesDuration": 50.62,
    }
    assert by_track["a7c6d2b0-41f5-4a0e-8f0b-6c2e9d1b3e45"]["width"] == 1280


def test_uppercase_enums_and_remote_flag() -> None:
    """schema.md documents the Java constant names; accept them as well as the W3C strings."""
    raw = chrome_sample()
    recv = raw["receiverStats"]["inboundRTPStats"]
    recv[0]["mediaType"] = "AUDIO"
    recv[1]["mediaType"] = "UNKNOWN"  # the receiver track says video
    # a Firefox <= 68 style "remote" inbound-rtp: RTCP receiver report about our outbound audio
    raw["senderStats"]["inboundRTPStats"] = [
        {"id": "outbound_rtcp_audio_0", "ssrc": 1720183301, "isRemote": True, "mediaType": "audio",
         "packetsReceived": 2500, "packetsLost": 99},
    ]  # fmt: skip
    raw["senderStats"]["outboundRTPStats"][1]["qualityLimitationReason"] = "CPU"
    raw["iceStats"]["candidatePairs"][1] = {**_PAIR, "id": "RTCIceCandidatePair_other", "state": "IN_PROGRESS"}
    raw["iceStats"]["localCandidates"][1] = {**_LOCAL, "id": "RTCIceCandidate_tcp", "protocol": "TCP",
                                            "candidateType": "UNKNOWN"}  # fmt: skip
    s = decode_pc_sample(raw, ORIGIN)
    assert _one(s.inbound_tracks, "audio").ssrc == 3194867405
    assert _one(s.inbound_tracks, "video").ssrc == 1407335041
    assert len(s.inbound_tracks) == 2  # the isRemote entry is not an inbound track
    out_audio = _one(s.outbound_tracks, "audio").stats
    assert out_audio["packetsLost"] == 2  # remote-inbound-rtp wins over the isRemote view
    assert out_audio["packetsReceived"] == 2500  # only the isRemote view has it
    assert _one(s.outbound_tracks, "video").stats["qualityLimitationReason"] == "cpu"
    states = {p["candidatePairId"]: p["state"] for p in s.candidate_pairs}
    assert states == {_PAIR["id"]: "succeeded", "RTCIceCandidatePair_other": "in-progress"}
    tcp = next(c for c in s.local_candidates if c["id"] == "RTCIceCandidate_tcp")
    assert tcp["protocol"] == "tcp" and "candidateType" not in tcp


def test_kind_from_chrome_ids_when_media_type_is_missing() -> None:
    raw = chrome_sample()
    for entry in raw["senderStats"]["outboundRTPStats"]:
        del entry["mediaType"]
    for entry in raw["senderStats"]["tracks"] + raw["senderStats"]["mediaSources"]:
        del entry["mediaType"]
    for entry in raw["senderStats"]["remoteInboundRTPStats"]:
        del entry["mediaType"]
    s = decode_pc_sample(raw, ORIGIN)
    assert _one(s.outbound_tracks, "audio").ssrc == 1720183301  # RTCOutboundRTPAudioStream_...
    assert _one(s.outbound_tracks, "video").ssrc == 2887613250


def test_unknown_kind_is_skipped() -> None:
    raw = chrome_sample()
    unknown = {"id": "x1", "ssrc": 42, "mediaType": "UNKNOWN", "packetsReceived": 1}
    raw["receiverStats"]["inboundRTPStats"].append(unknown)
    s = decode_pc_sample(raw, ORIGIN)
    assert 42 not in {t.ssrc for t in s.inbound_tracks}


def test_stats_fit_the_2x_records(decoded: ClientSample) -> None:
    """Every stats key exists in the 2.x record for its kind, and no value is None."""
    records = {r["name"]: r for r in _avro_records()}
    expected = {
        ("in", "audio"): "InboundAudioTrack",
        ("in", "video"): "InboundVideoTrack",
        ("out", "audio"): "OutboundAudioTrack",
        ("out", "video"): "OutboundVideoTrack",
    }
    for direction, tracks in (("in", decoded.inbound_tracks), ("out", decoded.outbound_tracks)):
        for t in tracks:
            names = {f["name"] for f in records[expected[direction, t.kind]]["fields"]}
            assert set(t.stats) <= names, set(t.stats) - names
            assert None not in t.stats.values()
    for kind, items in (
        ("IceCandidatePair", decoded.candidate_pairs),
        ("IceLocalCandidate", decoded.local_candidates),
        ("IceRemoteCandidate", decoded.remote_candidates),
    ):
        names = {f["name"] for f in records[kind]["fields"]}
        for item in items:
            assert set(item) <= names, set(item) - names


def test_field_maps_name_real_fields() -> None:
    """Guard against typos: every source name is a legacy wire field, every target a 2.x field."""
    import msgspec

    from webrtc_observer.receiver import _legacy as L

    records = {r["name"]: {f["name"] for f in r["fields"]} for r in _avro_records()}
    inbound, outbound = ("InboundAudioTrack", "InboundVideoTrack"), ("OutboundAudioTrack", "OutboundVideoTrack")
    uses = [
        (L._INBOUND_RTP, L.InboundRTPStreamStats, inbound),
        (L._RECEIVER_TRACK, L.RTCTrackStats, inbound),
        (L._REMOTE_VIEW_OF_INBOUND, L.OutboundRTPStreamStats, inbound),
        (L._OUTBOUND_RTP, L.OutboundRTPStreamStats, outbound),
        (L._REMOTE_INBOUND, L.RemoteInboundRTPStreamStats, outbound),
        (L._REMOTE_VIEW_OF_OUTBOUND, L.InboundRTPStreamStats, outbound),
        (L._MEDIA_SOURCE, L.MediaSourceStats, outbound),
        (L._SENDER_TRACK, L.RTCTrackStats, outbound),
        (L._MEDIA_SOURCE_STAT, L.MediaSourceStats, ("MediaSourceStat",)),
        (L._CANDIDATE_PAIR, L.ICECandidatePair, ("IceCandidatePair",)),
        (L._CANDIDATE, L.ICELocalCandidate, ("IceLocalCandidate", "IceRemoteCandidate")),
        (L._CANDIDATE, L.ICERemoteCandidate, ("IceLocalCandidate", "IceRemoteCandidate")),
    ]
    for field_map, wire_type, targets in uses:
        wire_fields = {f.name for f in msgspec.structs.fields(wire_type)}
        assert set(field_map) <= wire_fields, set(field_map) - wire_fields
        assert set(field_map.values()) <= set().union(*(records[r] for r in targets))


# --- reports can be derived by copying fields ------------------------------------------------------

_REPORT_OF = {
    ("in", "audio"): "InboundAudioTrackReport.avsc",
    ("in", "video"): "InboundVideoTrackReport.avsc",
    ("out", "audio"): "OutboundAudioTrackReport.avsc",
    ("out", "video"): "OutboundVideoTrackReport.avsc",
}


def _report_base(s: ClientSample) -> dict[str, Any]:
    return {
        "serviceId": s.origin.service_id,
        "mediaUnitId": s.origin.media_unit_id,
        "marker": s.marker,
        "timestamp": s.timestamp,
        "callId": s.call_id,
        "roomId": s.room_id,
        "clientId": s.client_id,
        "userId": s.user_id,
        "sampleSeq": 0,
    }


def test_reports_derived_by_copying_validate_against_2x_report_schemas(decoded: ClientSample) -> None:
    fastavro = pytest.importorskip("fastavro")
    from fastavro.validation import validate as avro_validate

    base = _report_base(decoded)
    for direction, tracks in (("in", decoded.inbound_tracks), ("out", decoded.outbound_tracks)):
        for t in tracks:
            schema = fastavro.parse_schema(copy.deepcopy(avro_schema("v2_2_11", _REPORT_OF[direction, t.kind])))
            identity = {"peerConnectionId": t.peer_connection_id, "trackId": t.track_id, "ssrc": t.ssrc}
            report = {**base, **t.stats, **identity}
            assert avro_validate(report, schema, strict=True)
    pair_schema = fastavro.parse_schema(copy.deepcopy(avro_schema("v2_2_11", "IceCandidatePairReport.avsc")))
    for pair in decoded.candidate_pairs:
        assert avro_validate({**base, **pair}, pair_schema, strict=True)


# --- ICE ---------------------------------------------------------------------------------------------


def test_ice(decoded: ClientSample) -> None:
    assert decoded.candidate_pairs == [
        {
            "peerConnectionId": PC_ID,
            "candidatePairId": "RTCIceCandidatePair_Vx2VpdVk_Bd6k7lWz",
            "transportId": "RTCTransport_0_1",
            "localCandidateId": "RTCIceCandidate_Vx2VpdVk",
            "remoteCandidateId": "RTCIceCandidate_Bd6k7lWz",
            "state": "succeeded",
            "nominated": True,
            "bytesSent": 1_843_210,
            "bytesReceived": 2_101_877,
            "totalRoundTripTime": 0.731,
            "currentRoundTripTime": 0.021,
            "availableOutgoingBitrate": 1_874_312.0,
            "requestsReceived": 31,
            "requestsSent": 32,
            "responsesReceived": 32,
            "responsesSent": 31,
            "consentRequestsSent": 30,
        }
    ]
    assert decoded.local_candidates == [
        {
            "peerConnectionId": PC_ID,
            "id": "RTCIceCandidate_Vx2VpdVk",
            "address": "192.168.1.23",
            "port": 54321,
            "protocol": "udp",
            "candidateType": "host",
            "priority": 2122260223,
        }
    ]
    assert decoded.remote_candidates == [
        {
            "peerConnectionId": PC_ID,
            "id": "RTCIceCandidate_Bd6k7lWz",
            "address": "203.0.113.7",
            "port": 61234,
            "protocol": "udp",
            "candidateType": "srflx",
            "priority": 1686052607,
        }
    ]


# --- meta and extensions -----------------------------------------------------------------------------


def test_meta(decoded: ClientSample) -> None:
    by_type: dict[str, list[Any]] = {}
    for m in decoded.meta:
        by_type.setdefault(m.type, []).append(m.payload)
    assert by_type["BROWSER"] == [{"name": "Chrome", "version": "85.0.4183.121"}]
    assert by_type["OPERATION_SYSTEM"] == [{"name": "Windows", "version": "NT 10.0", "versionName": "10"}]
    assert by_type["PLATFORM"] == [{"type": "desktop"}]
    assert by_type["ENGINE"] == [{"name": "Blink", "version": "85.0.4183.121"}]
    assert by_type["MEDIA_DEVICE"] == [
        {"id": "default", "kind": "audioinput", "label": "Default - Microphone (Realtek)"},
        {"id": "4c0b", "kind": "videoinput", "label": "HD WebCam (04f2:b5a7)"},
        {"id": "default", "kind": "audiooutput", "label": "Default - Speakers (Realtek)"},
    ]
    assert "USER_MEDIA_ERROR" not in by_type


def test_extensions(decoded: ClientSample) -> None:
    assert [(x.type, x.payload) for x in decoded.extensions] == [("APP_STATE", '{"muted":false,"screenShare":false}')]


def test_device_kind_constant_names() -> None:
    raw = chrome_sample()
    raw["deviceList"] = [{"deviceId": "d", "kind": "VIDEO_INPUT", "label": "cam"}]
    s = decode_pc_sample(raw, ORIGIN)
    devices = [m.payload for m in s.meta if m.type == "MEDIA_DEVICE"]
    assert devices == [{"id": "d", "kind": "videoinput", "label": "cam"}]


# --- errors and leniency -----------------------------------------------------------------------------


def test_missing_peer_connection_id() -> None:
    raw = chrome_sample()
    del raw["peerConnectionId"]
    with pytest.raises(WireError, match="peerConnectionId is required"):
        decode_pc_sample(raw, ORIGIN)


def test_wrong_type_names_the_path() -> None:
    raw = chrome_sample()
    raw["receiverStats"]["inboundRTPStats"][1]["packetsLost"] = "lots"
    with pytest.raises(WireError, match=r"\$\.receiverStats\.inboundRTPStats\[1\]\.packetsLost"):
        decode_pc_sample(raw, ORIGIN)


@pytest.mark.parametrize("bad", [[], "sample", 42, None])
def test_not_an_object(bad: Any) -> None:
    with pytest.raises(WireError):
        decode_pc_sample(bad, ORIGIN)


def test_wrong_container_type() -> None:
    raw = chrome_sample()
    raw["iceStats"]["candidatePairs"] = {"id": "not-a-list"}
    with pytest.raises(WireError, match=r"\$\.iceStats\.candidatePairs"):
        decode_pc_sample(raw, ORIGIN)


def test_unknown_fields_are_tolerated() -> None:
    raw = chrome_sample()
    raw["sdkVersion"] = "observer.js 0.6.1"
    raw["receiverStats"]["inboundRTPStats"][0]["totalProcessingDelay"] = 1.2  # newer Chrome, not in v20200114
    raw["receiverStats"]["codecs"] = [{"id": "c"}]
    raw["iceStats"]["candidatePairs"][0]["packetsDiscardedOnSend"] = 0
    raw["clientDetails"]["browser"]["major"] = "85"
    s = decode_pc_sample(raw, ORIGIN)
    assert s.inbound_tracks and "totalProcessingDelay" not in _one(s.inbound_tracks, "audio").stats
    assert next(m.payload for m in s.meta if m.type == "BROWSER") == {"name": "Chrome", "version": "85.0.4183.121"}


def test_user_media_errors_only() -> None:
    """What observer.js sent when getUserMedia failed: no peer connection yet."""
    raw = {
        "browserId": BROWSER_ID,
        "timeZoneOffsetInMinute": 60,
        "timestamp": 1_602_000_000_500,
        "userMediaErrors": [{"message": "NotAllowedError"}],
    }
    s = decode_pc_sample(raw, ORIGIN)
    assert s.client_id == BROWSER_ID
    assert s.timestamp == 1_602_000_000_500
    assert s.time_zone_offset_hours == 1
    assert [(m.type, m.payload) for m in s.meta] == [("USER_MEDIA_ERROR", "NotAllowedError")]
    assert s.peer_connections == [] and s.inbound_tracks == [] and s.candidate_pairs == []


def test_user_media_errors_without_browser_id() -> None:
    s = decode_pc_sample({"userMediaErrors": [{"message": "NotFoundError"}]}, ORIGIN)
    assert s.client_id == "unknown"
    assert s.timestamp == ORIGIN.received_at


def test_empty_user_media_errors_still_need_a_peer_connection() -> None:
    with pytest.raises(WireError, match="peerConnectionId is required"):
        decode_pc_sample({"browserId": BROWSER_ID, "userMediaErrors": []}, ORIGIN)


def test_user_media_errors_with_peer_connection() -> None:
    raw = chrome_sample()
    raw["userMediaErrors"] = [{"message": "OverconstrainedError"}]
    s = decode_pc_sample(raw, ORIGIN)
    assert [m.payload for m in s.meta if m.type == "USER_MEDIA_ERROR"] == ["OverconstrainedError"]
    assert s.inbound_tracks


def test_does_not_mutate_input() -> None:
    raw = chrome_sample()
    before = copy.deepcopy(raw)
    decode_pc_sample(raw, ORIGIN)
    assert raw == before


# --- helpers ---------------------------------------------------------------------------------------


def _avro_records() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(t: Any) -> None:
        if isinstance(t, list):
            for m in t:
                walk(m)
        elif isinstance(t, dict):
            if t.get("type") == "record":
                found.append(t)
                for f in t["fields"]:
                    walk(f["type"])
            elif t.get("type") == "array":
                walk(t["items"])
            elif t.get("type") == "map":
                walk(t["values"])

    walk(avro_schema("v2_2_11", "Samples.avsc"))
    return found
