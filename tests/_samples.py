"""Realistic samples of every generation, as the ObserveRTC clients send them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1_700_000_000_000


def client_sample_v2(client_id: str = "c-alice", call_id: str | None = "call-1", ts: int = T0, **extra: Any) -> dict[str, Any]:
    """A 2.x ClientSample as client-monitor-js 2.x/3.x sends it: one PC with audio+video both ways."""
    pc = f"pc-{client_id}"
    sample = {
        "clientId": client_id,
        "callId": call_id,
        "roomId": "room-1",
        "userId": f"user-{client_id}",
        "sampleSeq": 1,
        "timestamp": ts,
        "timeZoneOffsetInHours": 1,
        "marker": "test",
        "browser": {"name": "Chrome", "version": "120.0"},
        "os": {"name": "Linux", "version": "6.1"},
        "engine": {"name": "Blink", "version": "120"},
        "mediaDevices": [{"id": "default", "kind": "audioinput", "label": "Mic"}],
        "iceServers": ["turn:turn.example.com:3478"],
        "customCallEvents": [{"name": "MUTE", "value": "audio", "peerConnectionId": pc, "timestamp": ts}],
        "extensionStats": [{"type": "app", "payload": '{"ok":true}'}],
        "pcTransports": [
            {
                "transportId": "T01",
                "peerConnectionId": pc,
                "packetsSent": 100,
                "packetsReceived": 90,
                "dtlsState": "connected",
                "iceState": "connected",
                "dtlsRole": "client",
            }
        ],
        "iceCandidatePairs": [
            {
                "candidatePairId": "CP1",
                "peerConnectionId": pc,
                "transportId": "T01",
                "state": "succeeded",
                "nominated": True,
                "currentRoundTripTime": 0.042,
                "availableOutgoingBitrate": 1500000.0,
            }
        ],
        "iceLocalCandidates": [
            {
                "peerConnectionId": pc,
                "id": "L1",
                "address": "192.0.2.10",
                "port": 50000,
                "protocol": "udp",
                "candidateType": "host",
            }
        ],
        "iceRemoteCandidates": [
            {
                "peerConnectionId": pc,
                "id": "R1",
                "address": "198.51.100.7",
                "port": 3478,
                "protocol": "udp",
                "candidateType": "relay",
            }
        ],
        "inboundAudioTracks": [
            {
                "trackId": "in-a",
                "peerConnectionId": pc,
                "ssrc": 1111,
                "packetsReceived": 500,
                "packetsLost": 3,
                "jitter": 0.004,
                "audioLevel": 0.2,
                "roundTripTime": 0.05,
            }
        ],
        "inboundVideoTracks": [
            {
                "trackId": "in-v",
                "peerConnectionId": pc,
                "ssrc": 2222,
                "packetsReceived": 900,
                "packetsLost": 1,
                "framesDecoded": 300,
                "frameWidth": 640,
                "frameHeight": 480,
            }
        ],
        "outboundAudioTracks": [
            {
                "trackId": "out-a",
                "peerConnectionId": pc,
                "ssrc": 3333,
                "packetsSent": 510,
                "bytesSent": 40000,
                "roundTripTime": 0.048,
                "fractionLost": 0.0,
            }
        ],
        "outboundVideoTracks": [
            {
                "trackId": "out-v",
                "peerConnectionId": pc,
                "ssrc": 4444,
                "packetsSent": 950,
                "bytesSent": 900000,
                "framesEncoded": 301,
                "frameWidth": 640,
                "frameHeight": 480,
                "qualityLimitationReason": "none",
            }
        ],
    }
    if call_id is None:
        del sample["callId"]
    sample.update(extra)
    return sample


def sfu_sample_v2(sfu_id: str = "sfu-1", ts: int = T0) -> dict[str, Any]:
    return {
        "sfuId": sfu_id,
        "timestamp": ts,
        "transports": [{"transportId": "st-1", "dtlsState": "connected", "iceState": "connected", "rtpPacketsReceived": 1000}],
        "inboundRtpPads": [
            {
                "transportId": "st-1",
                "streamId": "stream-1",
                "padId": "pad-in-1",
                "ssrc": 3333,
                "mediaType": "audio",
                "packetsReceived": 1000,
            }
        ],
        "outboundRtpPads": [
            {
                "transportId": "st-2",
                "streamId": "stream-1",
                "sinkId": "sink-1",
                "padId": "pad-out-1",
                "ssrc": 5555,
                "mediaType": "audio",
                "packetsSent": 990,
            }
        ],
        "sctpChannels": [{"transportId": "st-1", "streamId": "sctp-1", "channelId": "ch-1", "label": "chat", "messageSent": 3}],
    }


def samples_v2(*client_samples: dict[str, Any], sfu: bool = True, close: bool = False) -> dict[str, Any]:
    wrapper: dict[str, Any] = {"clientSamples": list(client_samples) or [client_sample_v2()]}
    if sfu:
        wrapper["sfuSamples"] = [sfu_sample_v2()]
    if close:
        wrapper["controls"] = {"close": True}
    return wrapper


def client_sample_v3(client_id: str = "client-42", call_id: str = "call-7f3a") -> dict[str, Any]:
    """A complete 3.5.0 ClientSample (message 0 of the schemas' golden stream)."""
    stream = json.loads((FIXTURES / "client-sample-v3.5.0.golden-stream.json").read_text())
    sample = copy.deepcopy(stream["messages"][0])
    sample["clientId"] = client_id
    sample["callId"] = call_id
    return sample


def pc_sample_legacy(
    pc_id: str = "5e3a7c1c-0000-4000-8000-000000000001", call_id: str = "standup", ts: int = T0
) -> dict[str, Any]:
    """A PeerConnectionSample v20200114 as the 2020 observer.js sent it."""
    return {
        "peerConnectionId": pc_id,
        "browserId": "browser-fp-1",
        "callId": call_id,
        "userId": "bob",
        "timestamp": ts,
        "timeZoneOffsetInMinute": 60,
        "marker": "legacy",
        "iceStats": {
            "candidatePairs": [
                {
                    "id": "CP1",
                    "localCandidateId": "L1",
                    "remoteCandidateId": "R1",
                    "state": "SUCCEEDED",
                    "nominated": True,
                    "currentRoundTripTime": 0.03,
                    "bytesSent": 1000,
                }
            ],
            "localCandidates": [
                {"id": "L1", "ip": "192.0.2.20", "port": 50001, "protocol": "UDP", "candidateType": "HOST", "networkType": "WIFI"}
            ],
            "remoteCandidates": [{"id": "R1", "ip": "198.51.100.8", "port": 50002, "protocol": "UDP", "candidateType": "SRFLX"}],
        },
        "receiverStats": {
            "inboundRTPStats": [
                {
                    "id": "in1",
                    "ssrc": 7777,
                    "mediaType": "AUDIO",
                    "packetsReceived": 300,
                    "packetsLost": 2,
                    "jitter": 0.01,
                    "trackId": "trk1",
                    "isRemote": False,
                }
            ],
            "tracks": [
                {"id": "trk1", "mediaType": "AUDIO", "concealedSamples": 10, "jitterBufferDelay": 1.5, "remoteSource": True}
            ],
        },
        "senderStats": {
            "outboundRTPStats": [
                {
                    "id": "out1",
                    "ssrc": 8888,
                    "mediaType": "VIDEO",
                    "packetsSent": 400,
                    "bytesSent": 300000,
                    "framesEncoded": 100,
                    "qualityLimitationReason": "NONE",
                    "mediaSourceId": "ms1",
                    "isRemote": False,
                }
            ],
            "remoteInboundRTPStats": [
                {"id": "rin1", "ssrc": 8888, "mediaType": "VIDEO", "packetsLost": 4, "roundTripTime": 0.06}
            ],
            "mediaSources": [{"id": "ms1", "mediaType": "VIDEO", "width": 1280, "height": 720, "framesPerSecond": 30}],
        },
        "clientDetails": {"browser": {"name": "Chrome", "version": "88"}, "os": {"name": "Mac OS", "version": "10.15"}},
        "extensions": [{"extensionType": "CUSTOM", "payload": '{"x":1}'}],
    }
