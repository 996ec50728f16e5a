"""The ``reports`` processor in a real collector: samples of every generation in over HTTP, reports out.

The pipeline is ``observertc → stand-in → reports → recording``. The stand-in, defined here, does the
little of call correlation that the reports processor relies on: it marks client samples correlated
(``call_id``/``sample_seq`` settled), can give peer connections labels, links SFU pads to a call, and can
emit the lifecycle ``CALL_EVENT`` reports (``CLIENT_JOINED``/``CLIENT_LEFT``) that the correlation
processor puts into batches. Every report that comes out is validated against its Avro schema with
fastavro, in every test.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import msgspec
import pytest
from fastavro.validation import validate

from tests import _samples
from webrtc_observer import state, testing
from webrtc_observer.component import Consumer, Factory, Settings
from webrtc_observer.components import config_types
from webrtc_observer.config import ConfigError, load_text
from webrtc_observer.model import (
    Batch,
    ClientSample,
    MetaItem,
    Origin,
    PadLink,
    PeerConnection,
    Report,
    SfuSample,
    Track,
)
from webrtc_observer.processors import _report_schemas as schemas
from webrtc_observer.processors.reports import ReportsConfig, ReportsProcessor
from webrtc_observer.testing import RunningCollector, settings_for_tests

# --------------------------------------------------------------------------------------------------
# The stand-in for the correlation processor, and a collector that has it
# --------------------------------------------------------------------------------------------------


@dataclass
class StandInConfig:
    PROVIDES: ClassVar[tuple[str, ...]] = ("correlation",)
    """It stands in for correlation, so the reports processor may follow it."""

    uncorrelated_clients: list[str] = field(default_factory=list)
    """Client ids whose samples are passed on uncorrelated."""
    pc_labels: dict[str, str] = field(default_factory=dict)
    """peerConnectionId -> label, added to the sample's peer connections."""
    link_pads: bool = True
    """Link the SFU sample's pads to call ``call-x`` (inbound pads to c-alice, outbound pads to c-bob)."""
    lifecycle: bool = False
    """Emit CALL_EVENT CLIENT_JOINED for a client's first sample, CLIENT_LEFT for its closing one."""


class StandInCorrelation:
    def __init__(self, settings: Settings, config: StandInConfig, next_consumer: Consumer) -> None:
        self._config = config
        self._next = next_consumer
        self._seen: set[tuple[str, str]] = set()

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def consume(self, batch: Batch) -> None:
        samples: list[Any] = []
        events: list[Report] = []
        for s in batch.samples:
            if isinstance(s, ClientSample):
                if s.client_id not in self._config.uncorrelated_clients:
                    s = msgspec.structs.replace(s, call_id=s.call_id or "call-x", sample_seq=s.sample_seq or 1, correlated=True)
                    if self._config.pc_labels:
                        s = msgspec.structs.replace(s, peer_connections=self._labelled(s))
                    if self._config.lifecycle:
                        events.extend(self._lifecycle(s))
            elif isinstance(s, SfuSample) and self._config.link_pads:
                links = {
                    p["padId"]: PadLink(
                        call_id="call-x",
                        room_id="room-1",
                        client_id="c-alice",
                        track_id="out-a",
                        remote_sfu_id="sfu-2",
                        remote_transport_id="rt-1",
                        remote_sink_id="rs-1",
                        remote_rtp_pad_id="rp-1",
                    )
                    for p in s.inbound_rtp_pads
                }
                links.update(
                    {p["padId"]: PadLink(call_id="call-x", client_id="c-bob", track_id="in-a") for p in s.outbound_rtp_pads}
                )
                s = msgspec.structs.replace(s, pad_links=links)
            samples.append(s)
        await self._next.consume(Batch(samples=samples, reports=[*batch.reports, *events]))

    def _labelled(self, s: ClientSample) -> list[PeerConnection]:
        known = {pc.peer_connection_id: pc for pc in s.peer_connections}
        ids = {t.peer_connection_id for t in (*s.inbound_tracks, *s.outbound_tracks) if t.peer_connection_id} | set(known)
        labels = self._config.pc_labels
        return [
            msgspec.structs.replace(known.get(pc_id) or PeerConnection(peer_connection_id=pc_id), label=labels.get(pc_id))
            for pc_id in sorted(ids)
        ]

    def _lifecycle(self, s: ClientSample) -> list[Report]:
        key = (s.origin.service_id, s.client_id)
        names = []
        if key not in self._seen:
            self._seen.add(key)
            names.append("CLIENT_JOINED")
        if s.closing:
            self._seen.discard(key)
            names.append("CLIENT_LEFT")
        identity = {
            "serviceId": s.origin.service_id,
            "mediaUnitId": s.origin.media_unit_id,
            "timestamp": s.timestamp,
            "callId": s.call_id,
            "roomId": s.room_id,
            "clientId": s.client_id,
            "userId": s.user_id,
        }
        return [Report(type="CALL_EVENT", payload=schemas.build("CALL_EVENT", {**identity, "name": n})) for n in names]  # type: ignore[arg-type]


STAND_IN = Factory(
    kind="processor",
    type="correlation_stand_in",
    config_type=StandInConfig,
    create=lambda settings, config, next_consumer: StandInCorrelation(settings, config, next_consumer),
)


@asynccontextmanager
async def collector(
    reports: dict[str, Any] | None = None, stand_in: dict[str, Any] | None = None, refuse: bool = False
) -> AsyncIterator[RunningCollector]:
    """A collector like ``running_collector`` builds, with the stand-in registered and in the pipeline."""
    yaml_text = f"""
receivers:
  observertc:
    endpoint: 127.0.0.1:0
processors:
  correlation_stand_in: {json.dumps(stand_in or {})}
  reports: {json.dumps(reports or {})}
exporters:
  recording: {{refuse: {json.dumps(refuse)}}}
service:
  pipelines:
    reports:
      receivers: [observertc]
      processors: [correlation_stand_in, reports]
      exporters: [recording]
"""
    async with testing.running_collector(yaml_text, extra=(STAND_IN,)) as running:
        yield running


async def post(
    c: RunningCollector, http: aiohttp.ClientSession, body: dict[str, Any], path: str = "/rest/samples/svc/mu", status: int = 202
) -> None:
    async with http.post(c.url(path), json=body) as resp:
        assert resp.status == status, await resp.text()


def validated(reports: list[Report]) -> list[Report]:
    """Every payload validated, strictly, against its Avro schema; the reports returned as they are."""
    for report in reports:
        assert report.type in schemas.REPORT_TYPES, report.type
        assert report.schema_version == "2.2.11"
        validate(report.envelope()["payload"], schemas.parsed_schema(report.type), raise_errors=True, strict=True)
    return reports


def recorded(c: RunningCollector) -> list[Report]:
    return validated(c.exporter().reports)


def of_type(reports: list[Report], report_type: str) -> list[dict[str, Any]]:
    """The payloads of ``report_type``, as the builtins they encode to."""
    return [r.envelope()["payload"] for r in reports if r.type == report_type]


def counts(reports: list[Report]) -> Counter[str]:
    return Counter(r.type for r in reports)


def one(payloads: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [p for p in payloads if all(p.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one payload with {match}, found {len(found)} in {payloads}"
    return found[0]


def metric(c: RunningCollector, name: str, *labels: str) -> float:
    m = c.telemetry.get(name)
    return 0.0 if m is None else m.value(*labels)


def v3_full_sample() -> dict[str, Any]:
    """Message 0 of the 3.5.0 golden stream, plus the meta items, extension stats and issues of later messages."""
    stream = json.loads((_samples.FIXTURES / "client-sample-v3.5.0.golden-stream.json").read_text())
    sample = _samples.client_sample_v3()
    for index, key in ((1, "clientMetaItems"), (2, "extensionStats"), (5, "clientIssues")):
        sample[key] = copy.deepcopy(stream["messages"][index][key])
    return sample


# --------------------------------------------------------------------------------------------------
# Every generation
# --------------------------------------------------------------------------------------------------

V2_CLIENT_COUNTS = {
    "INBOUND_AUDIO_TRACK": 1,
    "INBOUND_VIDEO_TRACK": 1,
    "OUTBOUND_AUDIO_TRACK": 1,
    "OUTBOUND_VIDEO_TRACK": 1,
    "PEER_CONNECTION_TRANSPORT": 1,
    "ICE_CANDIDATE_PAIR": 1,
    # ENGINE, BROWSER, OPERATION_SYSTEM, MEDIA_DEVICE, ICE_SERVER, ICE_LOCAL_CANDIDATE, ICE_REMOTE_CANDIDATE
    "CALL_META_DATA": 7,
    "CLIENT_EXTENSION_DATA": 1,
    "CALL_EVENT": 1,
}
V2_SFU_COUNTS = {"SFU_TRANSPORT": 1, "SFU_INBOUND_RTP_PAD": 1, "SFU_OUTBOUND_RTP_PAD": 1, "SFU_SCTP_STREAM": 1}


async def test_v2_samples_wrapper_gives_every_client_and_sfu_report(http):
    async with collector(stand_in={"pc_labels": {"pc-c-alice": "main"}}) as c:
        await post(c, http, _samples.samples_v2())
        reports = recorded(c)
        assert c.exporter().samples == [], "samples are not forwarded by default"

    assert counts(reports) == {**V2_CLIENT_COUNTS, **V2_SFU_COUNTS}
    identity = {
        "serviceId": "svc",
        "mediaUnitId": "mu",
        "marker": "test",
        "callId": "call-1",
        "roomId": "room-1",
        "clientId": "c-alice",
        "userId": "user-c-alice",
        "sampleSeq": 1,
    }

    audio_in = one(of_type(reports, "INBOUND_AUDIO_TRACK"), ssrc=1111)
    assert audio_in == {
        **identity,
        "timestamp": _samples.T0,
        "peerConnectionId": "pc-c-alice",
        "label": "main",
        "trackId": "in-a",
        "ssrc": 1111,
        "packetsReceived": 500,
        "packetsLost": 3,
        "jitter": 0.004,
        "audioLevel": 0.2,
        "roundTripTime": 0.05,
    }
    assert list(audio_in)[:4] == ["serviceId", "mediaUnitId", "marker", "timestamp"], "schema field order"
    video_in = one(of_type(reports, "INBOUND_VIDEO_TRACK"), ssrc=2222)
    assert (video_in["framesDecoded"], video_in["frameWidth"], video_in["label"]) == (300, 640, "main")
    audio_out = one(of_type(reports, "OUTBOUND_AUDIO_TRACK"), ssrc=3333)
    assert audio_out["fractionLost"] == 0.0 and isinstance(audio_out["fractionLost"], float)
    assert audio_out["bytesSent"] == 40000 and audio_out["trackId"] == "out-a"
    video_out = one(of_type(reports, "OUTBOUND_VIDEO_TRACK"), ssrc=4444)
    assert video_out["qualityLimitationReason"] == "none" and video_out["framesEncoded"] == 301

    transport = one(of_type(reports, "PEER_CONNECTION_TRANSPORT"))
    assert transport == {
        **identity,
        "timestamp": _samples.T0,
        "peerConnectionId": "pc-c-alice",
        "transportId": "T01",
        "label": "main",
        "packetsSent": 100,
        "packetsReceived": 90,
        "dtlsState": "connected",
        "iceState": "connected",
        "dtlsRole": "client",
    }
    pair = one(of_type(reports, "ICE_CANDIDATE_PAIR"))
    assert pair["candidatePairId"] == "CP1" and pair["nominated"] is True and pair["currentRoundTripTime"] == 0.042
    assert pair["availableOutgoingBitrate"] == 1500000.0 and pair["label"] == "main"

    meta = of_type(reports, "CALL_META_DATA")
    assert {m["type"] for m in meta} == {
        "ENGINE",
        "BROWSER",
        "OPERATION_SYSTEM",
        "MEDIA_DEVICE",
        "ICE_SERVER",
        "ICE_LOCAL_CANDIDATE",
        "ICE_REMOTE_CANDIDATE",
    }
    browser = one(meta, type="BROWSER")
    assert browser["payload"] == '{"name":"Chrome","version":"120.0"}'
    assert browser["callId"] == "call-1" and browser["clientId"] == "c-alice" and browser["sampleTimestamp"] == _samples.T0
    assert one(meta, type="ICE_SERVER")["payload"] == "turn:turn.example.com:3478", "a str payload is kept as it is"
    local = one(meta, type="ICE_LOCAL_CANDIDATE")
    assert local["peerConnectionId"] == "pc-c-alice"
    assert json.loads(local["payload"]) == _samples.client_sample_v2()["iceLocalCandidates"][0]

    extension = one(of_type(reports, "CLIENT_EXTENSION_DATA"))
    assert (extension["extensionType"], extension["payload"], extension["callId"]) == ("app", '{"ok":true}', "call-1")
    event = one(of_type(reports, "CALL_EVENT"))
    assert event == {
        **identity,
        "timestamp": _samples.T0,
        "sampleTimestamp": _samples.T0,
        "name": "MUTE",
        "value": "audio",
        "peerConnectionId": "pc-c-alice",
    }

    sfu_identity = {"serviceId": "svc", "mediaUnitId": "mu", "sfuId": "sfu-1", "timestamp": _samples.T0}
    pad_in = one(of_type(reports, "SFU_INBOUND_RTP_PAD"))
    assert pad_in == {
        **sfu_identity,
        "transportId": "st-1",
        "sfuStreamId": "stream-1",
        "rtpPadId": "pad-in-1",
        "ssrc": 3333,
        "mediaType": "audio",
        "packetsReceived": 1000,
        "callId": "call-x",
        "clientId": "c-alice",
        "trackId": "out-a",
        "remoteSfuId": "sfu-2",
        "remoteTransportId": "rt-1",
        "remoteSinkId": "rs-1",
        "remoteRtpPadId": "rp-1",
    }
    pad_out = one(of_type(reports, "SFU_OUTBOUND_RTP_PAD"))
    assert pad_out == {
        **sfu_identity,
        "transportId": "st-2",
        "sfuStreamId": "stream-1",
        "sfuSinkId": "sink-1",
        "rtpPadId": "pad-out-1",
        "ssrc": 5555,
        "mediaType": "audio",
        "packetsSent": 990,
        "callId": "call-x",
        "clientId": "c-bob",
        "trackId": "in-a",
    }
    sfu_transport = one(of_type(reports, "SFU_TRANSPORT"))
    assert sfu_transport == {
        **sfu_identity,
        "transportId": "st-1",
        "dtlsState": "connected",
        "iceState": "connected",
        "rtpPacketsReceived": 1000,
        "callId": "call-x",
        "roomId": "room-1",
    }
    sctp = one(of_type(reports, "SFU_SCTP_STREAM"))
    assert sctp == {
        **sfu_identity,
        "transportId": "st-1",
        "streamId": "sctp-1",
        "label": "chat",
        "messageSent": 3,
        "callId": "call-x",
        "roomId": "room-1",
    }


async def test_v2_client_sample_alone_and_protobuf_give_the_same_reports(http, protobuf):
    async with collector() as c:
        await post(c, http, _samples.client_sample_v2())
        as_json = recorded(c)
    assert counts(as_json) == V2_CLIENT_COUNTS

    body = protobuf.samples_v2(_samples.samples_v2(sfu=False))
    async with collector() as c:
        async with http.post(
            c.url("/rest/samples/svc/mu"), data=body, headers={"Content-Type": "application/x-protobuf"}
        ) as resp:
            assert resp.status == 202
        as_protobuf = recorded(c)
    assert [(r.type, r.payload) for r in as_protobuf] == [(r.type, r.payload) for r in as_json]


async def test_v3_client_sample(http):
    async with collector(stand_in={"pc_labels": {"pc-01": "publisher"}}) as c:
        await post(c, http, v3_full_sample())
        reports = recorded(c)

    assert counts(reports) == {
        "INBOUND_AUDIO_TRACK": 1,
        "INBOUND_VIDEO_TRACK": 1,
        "OUTBOUND_AUDIO_TRACK": 1,
        "OUTBOUND_VIDEO_TRACK": 1,
        "PEER_CONNECTION_TRANSPORT": 1,
        "ICE_CANDIDATE_PAIR": 1,
        "CALL_META_DATA": 3,  # two codecs, one clientMetaItem
        "CLIENT_EXTENSION_DATA": 1,
        "CALL_EVENT": 2,  # the two clientEvents
        "OBSERVER_EVENT": 1,  # the clientIssue
    }
    audio_in = one(of_type(reports, "INBOUND_AUDIO_TRACK"), ssrc=1234567890)
    assert audio_in["packetsReceived"] == 142 and audio_in["callId"] == "call-7f3a" and audio_in["clientId"] == "client-42"
    assert audio_in["label"] == "publisher" and audio_in["trackId"] == "track-remote-audio" and audio_in["sampleSeq"] == 1
    video_in = one(of_type(reports, "INBOUND_VIDEO_TRACK"))
    assert video_in["headerBytesReceived"] == 9007199254740000 and video_in["framesPerSecond"] == 30.0
    assert one(of_type(reports, "OUTBOUND_AUDIO_TRACK"))["ssrc"] == 4567890123, "ssrc is a long"
    assert one(of_type(reports, "OUTBOUND_AUDIO_TRACK"))["active"] is True
    assert one(of_type(reports, "PEER_CONNECTION_TRANSPORT"))["selectedCandidatePairId"] == "CP01"

    meta = of_type(reports, "CALL_META_DATA")
    codecs = [json.loads(m["payload"]) for m in meta if m["type"] == "CODEC"]
    assert sorted(c["mimeType"] for c in codecs) == ["audio/opus", "video/H264"]
    assert all(c["codecType"] == "decode" for c in codecs)
    added = one(meta, type="MEDIA_TRACK_ADDED")
    assert added["peerConnectionId"] == "pc-01" and added["timestamp"] == 1756000001000
    assert added["sampleTimestamp"] == 1756000000000 and "payload" not in added

    extension = one(of_type(reports, "CLIENT_EXTENSION_DATA"))
    assert (extension["extensionType"], extension["payload"]) == ("app-metric", '{"queue":3}')
    assert {e["value"] for e in of_type(reports, "CALL_EVENT")} == {'{"role":"host"}', '{"role":"guest"}'}
    issue = one(of_type(reports, "OBSERVER_EVENT"))
    assert issue == {
        "serviceId": "svc",
        "mediaUnitId": "mu",
        "timestamp": 1756000005000,
        "callId": "call-7f3a",
        "clientId": "client-42",
        "sampleTimestamp": 1756000000000,
        "sampleSeq": 1,
        "name": "FREEZE",
        "message": "track-remote-video",
        "attachments": '{"ms":420}',
    }


async def test_legacy_peer_connection_sample(http):
    async with collector() as c:
        await post(c, http, _samples.pc_sample_legacy(), path="/pcsamples/6a1e0d1b-5d3c-4c8b-9a59-8d5d2f8c1a11/mu")
        reports = recorded(c)

    assert counts(reports) == {
        "INBOUND_AUDIO_TRACK": 1,
        "OUTBOUND_VIDEO_TRACK": 1,
        "ICE_CANDIDATE_PAIR": 1,
        # BROWSER, OPERATION_SYSTEM, ICE_LOCAL_CANDIDATE, ICE_REMOTE_CANDIDATE, MEDIA_SOURCE
        "CALL_META_DATA": 5,
        "CLIENT_EXTENSION_DATA": 1,
    }
    pc = "5e3a7c1c-0000-4000-8000-000000000001"
    audio_in = one(of_type(reports, "INBOUND_AUDIO_TRACK"), ssrc=7777)
    assert audio_in["serviceId"] == "6a1e0d1b-5d3c-4c8b-9a59-8d5d2f8c1a11" and audio_in["peerConnectionId"] == pc
    assert (audio_in["packetsLost"], audio_in["concealedSamples"], audio_in["callId"]) == (2, 10, "standup")
    assert audio_in["clientId"] == "browser-fp-1" and audio_in["userId"] == "bob" and audio_in["marker"] == "legacy"
    video_out = one(of_type(reports, "OUTBOUND_VIDEO_TRACK"), ssrc=8888)
    assert (video_out["packetsLost"], video_out["width"], video_out["roundTripTime"]) == (4, 1280, 0.06)
    meta = of_type(reports, "CALL_META_DATA")
    assert json.loads(one(meta, type="MEDIA_SOURCE")["payload"])["width"] == 1280
    assert json.loads(one(meta, type="OPERATION_SYSTEM")["payload"]) == {"name": "Mac OS", "version": "10.15"}
    assert one(of_type(reports, "CLIENT_EXTENSION_DATA"))["extensionType"] == "CUSTOM"


async def test_data_channels_observer_events_and_sfu_events_and_extensions(http):
    client = _samples.client_sample_v2(
        dataChannels=[
            {
                "peerConnectionId": "pc-c-alice",
                "dataChannelIdentifier": 1,
                "label": "chat",
                "protocol": "json",
                "state": "open",
                "messageSent": 5,
                "bytesSent": 500,
                "messageReceived": 7,
                "bytesReceived": 700,
            }
        ],
        customObserverEvents=[{"name": "NO_SSRC", "message": "no ssrc", "mediaTrackId": "t1"}],
        customCallEvents=[{"name": "UNMUTE", "mediaTrackId": "out-a", "timestamp": _samples.T0 - 700, "attachments": '{"k":2}'}],
    )
    wrapper = _samples.samples_v2(client)
    sfu = wrapper["sfuSamples"][0]
    sfu["customSfuEvents"] = [
        {
            "name": "SFU_RTP_PAD_ADDED",
            "transportId": "st-1",
            "sfuStreamId": "stream-1",
            "sfuSinkId": "sink-1",
            "value": "v",
            "message": "m",
            "attachments": '{"a":1}',
            "timestamp": _samples.T0 + 5,
        }
    ]
    sfu["extensionStats"] = [{"type": "sfu-ext", "payload": '{"load":0.5}'}]
    async with collector(stand_in={"pc_labels": {"pc-c-alice": "main"}}) as c:
        await post(c, http, wrapper)
        reports = recorded(c)

    channel = one(of_type(reports, "PEER_CONNECTION_DATA_CHANNEL"))
    assert channel["messagesSent"] == 5 and channel["messagesReceived"] == 7
    assert "messageSent" not in channel and "dataChannelIdentifier" not in channel
    assert (channel["label"], channel["peerConnectionLabel"], channel["state"]) == ("chat", "main", "open")
    assert (channel["bytesSent"], channel["callId"], channel["sampleSeq"]) == (500, "call-1", 1)

    event = one(of_type(reports, "CALL_EVENT"))
    assert (event["name"], event["mediaTrackId"], event["attachments"]) == ("UNMUTE", "out-a", '{"k":2}')
    assert (event["timestamp"], event["sampleTimestamp"]) == (_samples.T0 - 700, _samples.T0)
    assert "peerConnectionId" not in event

    issue = one(of_type(reports, "OBSERVER_EVENT"))
    assert (issue["name"], issue["message"], issue["callId"], issue["timestamp"]) == ("NO_SSRC", "no ssrc", "call-1", _samples.T0)

    sfu_event = one(of_type(reports, "SFU_EVENT"))
    assert sfu_event == {
        "serviceId": "svc",
        "mediaUnitId": "mu",
        "sfuId": "sfu-1",
        "timestamp": _samples.T0 + 5,
        "callId": "call-x",
        "transportId": "st-1",
        "mediaStreamId": "stream-1",
        "mediaSinkId": "sink-1",
        "name": "SFU_RTP_PAD_ADDED",
        "message": "m",
        "value": "v",
        "attachments": '{"a":1}',
    }
    sfu_ext = one(of_type(reports, "SFU_EXTENSION_DATA"))
    assert (sfu_ext["sfuId"], sfu_ext["extensionType"], sfu_ext["payload"]) == ("sfu-1", "sfu-ext", '{"load":0.5}')


async def test_sfu_without_pad_links_and_no_report_flags(http):
    wrapper = _samples.samples_v2()
    sfu = wrapper["sfuSamples"][0]
    sfu["transports"].append({"transportId": "st-9", "noReport": True})
    sfu["outboundRtpPads"][0]["noReport"] = True
    async with collector(stand_in={"link_pads": False}, reports={"include": list(V2_SFU_COUNTS)}) as c:
        await post(c, http, wrapper)
        reports = recorded(c)
    assert counts(reports) == {"SFU_TRANSPORT": 1, "SFU_INBOUND_RTP_PAD": 1, "SFU_SCTP_STREAM": 1}
    assert "callId" not in one(of_type(reports, "SFU_TRANSPORT"))
    assert "callId" not in one(of_type(reports, "SFU_INBOUND_RTP_PAD"))


# --------------------------------------------------------------------------------------------------
# Meta reports: only when they changed
# --------------------------------------------------------------------------------------------------


def _v2(seq: int, client_id: str = "c-alice", **extra: Any) -> dict[str, Any]:
    return _samples.client_sample_v2(client_id=client_id, ts=_samples.T0 + seq * 1000, sampleSeq=seq, **extra)


async def test_meta_reports_are_sent_once_and_again_when_changed(http):
    async with collector() as c:
        await post(c, http, _samples.samples_v2(_v2(1), sfu=False))
        first = of_type(recorded(c), "CALL_META_DATA")
        assert len(first) == 7

        c.exporter().batches.clear()
        await post(c, http, _samples.samples_v2(_v2(2), sfu=False))
        second = recorded(c)
        assert of_type(second, "CALL_META_DATA") == [], "an unchanged meta item is not reported again"
        assert counts(second)["INBOUND_AUDIO_TRACK"] == 1, "stats reports are sent with every sample"

        c.exporter().batches.clear()
        await post(c, http, _samples.samples_v2(_v2(3, browser={"name": "Chrome", "version": "121.0"}), sfu=False))
        third = of_type(recorded(c), "CALL_META_DATA")
        assert [(m["type"], m["payload"], m["sampleSeq"]) for m in third] == [
            ("BROWSER", '{"name":"Chrome","version":"121.0"}', 3)
        ]

        c.exporter().batches.clear()  # another client has its own memory; the same client's is unchanged
        await post(c, http, _samples.samples_v2(_v2(4, client_id="c-bob"), _v2(4), sfu=False))
        fourth = of_type(recorded(c), "CALL_META_DATA")
        assert len(fourth) == 7 and {m["clientId"] for m in fourth} == {"c-bob"}

        c.exporter().batches.clear()  # the same meta item twice in one sample is reported once
        twice = _v2(5, client_id="c-carol", mediaDevices=[{"id": "d", "kind": "audioinput"}] * 2)
        await post(c, http, _samples.samples_v2(twice, sfu=False))
        assert [m["type"] for m in of_type(recorded(c), "CALL_META_DATA")].count("MEDIA_DEVICE") == 1


async def test_client_left_forgets_the_client_meta(http):
    async with collector(stand_in={"lifecycle": True}) as c:
        await post(c, http, _samples.samples_v2(_v2(1), sfu=False))
        reports = recorded(c)
        assert len(of_type(reports, "CALL_META_DATA")) == 7
        joined = one(of_type(reports, "CALL_EVENT"), name="CLIENT_JOINED")
        assert joined["clientId"] == "c-alice" and joined["serviceId"] == "svc", "lifecycle events pass through"
        assert reports[0].type == "CALL_EVENT", "reports of the incoming batch come first"

        c.exporter().batches.clear()
        await post(c, http, _samples.samples_v2(_v2(2), sfu=False, close=True))
        reports = recorded(c)
        assert of_type(reports, "CALL_META_DATA") == []
        one(of_type(reports, "CALL_EVENT"), name="CLIENT_LEFT")

        c.exporter().batches.clear()  # the client is back: it is told about again in full
        await post(c, http, _samples.samples_v2(_v2(3), sfu=False))
        assert len(of_type(recorded(c), "CALL_META_DATA")) == 7


async def test_meta_cache_is_bounded(http):
    async with collector(reports={"max_clients": 1}) as c:
        for client_id in ("c-alice", "c-bob", "c-alice"):
            c.exporter().batches.clear()
            await post(c, http, _samples.samples_v2(_v2(1, client_id=client_id), sfu=False))
            assert len(of_type(recorded(c), "CALL_META_DATA")) == 7, f"{client_id}: the one remembered client is another"
        assert metric(c, "reports_meta_cache_clients", "reports") == 1

    async with collector(reports={"max_meta_items_per_client": 2}) as c:
        await post(c, http, _samples.samples_v2(_v2(1), sfu=False))
        c.exporter().batches.clear()
        await post(c, http, _samples.samples_v2(_v2(2), sfu=False))
        # only the two newest fingerprints (the ICE candidates) were kept: the 5 others are reported again
        again = of_type(recorded(c), "CALL_META_DATA")
        assert sorted(m["type"] for m in again) == ["BROWSER", "ENGINE", "ICE_SERVER", "MEDIA_DEVICE", "OPERATION_SYSTEM"]


async def test_a_refused_batch_does_not_use_up_its_meta_reports(http):
    async with collector(refuse=True) as c:
        await post(c, http, _samples.samples_v2(_v2(1), sfu=False), status=503)
        assert c.exporter().reports == []
        c.exporter().refuse = False
        await post(c, http, _samples.samples_v2(_v2(1), sfu=False))  # the client sends it again
        assert len(of_type(recorded(c), "CALL_META_DATA")) == 7
        assert metric(c, "reports", "CALL_META_DATA") == 7, "a refused batch is not counted"


# --------------------------------------------------------------------------------------------------
# Options, uncorrelated samples, telemetry
# --------------------------------------------------------------------------------------------------


async def test_include_and_exclude(http):
    include = {"include": ["INBOUND_AUDIO_TRACK", "CALL_EVENT", "SFU_INBOUND_RTP_PAD"], "exclude": ["CALL_EVENT"]}
    async with collector(reports=include, stand_in={"lifecycle": True}) as c:
        await post(c, http, _samples.samples_v2())
        assert counts(recorded(c)) == {"INBOUND_AUDIO_TRACK": 1, "SFU_INBOUND_RTP_PAD": 1}

    async with collector(reports={"exclude": ["CALL_META_DATA", "CALL_EVENT"]}, stand_in={"lifecycle": True}) as c:
        await post(c, http, _samples.samples_v2())
        expected = {**V2_CLIENT_COUNTS, **V2_SFU_COUNTS}
        del expected["CALL_META_DATA"], expected["CALL_EVENT"]
        assert counts(recorded(c)) == expected, "incoming CALL_EVENTs are excluded too"


async def test_uncorrelated_client_samples_give_nothing_and_are_counted(http):
    async with collector(stand_in={"uncorrelated_clients": ["c-alice"]}) as c:
        await post(c, http, _samples.samples_v2())
        assert counts(recorded(c)) == V2_SFU_COUNTS
        await post(c, http, _samples.client_sample_v2())
        assert counts(recorded(c)) == V2_SFU_COUNTS
        assert metric(c, "reports_uncorrelated_samples", "reports") == 2
        assert len(c.exporter().batches) == 1, "a batch with nothing to pass on is not passed on"


async def test_forward_samples_keeps_the_samples_next_to_the_reports(http):
    async with collector(reports={"forward_samples": True}) as c:
        await post(c, http, _samples.samples_v2())
        [batch] = c.exporter().batches
        assert [type(s) for s in batch.samples] == [ClientSample, SfuSample]
        assert batch.samples[0].correlated is True
        assert counts(validated(batch.reports)) == {**V2_CLIENT_COUNTS, **V2_SFU_COUNTS}


async def test_turn_samples_give_no_reports(http):
    wrapper = {"turnSamples": [{"serverId": "turn-1", "allocations": [], "sessions": []}]}
    async with collector(reports={"forward_samples": True}) as c:
        await post(c, http, wrapper)
        assert recorded(c) == [] and len(c.exporter().samples) == 1


async def test_telemetry_counts_reports_by_type_and_invalid_ones(http):
    broken = _v2(1)
    del broken["inboundAudioTracks"][0]["peerConnectionId"]  # a track report needs it
    async with collector() as c:
        await post(c, http, _samples.samples_v2(broken))
        reports = recorded(c)
        assert of_type(reports, "INBOUND_AUDIO_TRACK") == []
        assert metric(c, "reports_dropped_invalid", "reports", "INBOUND_AUDIO_TRACK") == 1
        for report_type, n in counts(reports).items():
            assert metric(c, "reports", report_type) == n
        assert metric(c, "reports", "INBOUND_VIDEO_TRACK") == 1


def test_unknown_report_types_are_config_errors():
    yaml_text = """
receivers:
  observertc: {endpoint: "127.0.0.1:0"}
processors:
  correlation: {}
  reports:
    include: [INBOUND_AUDIO_TRACK, INBOUND_AUDIO_TRACKS]
    exclude: [call_event]
    max_clients: 0
exporters:
  recording: {}
service:
  pipelines:
    p: {receivers: [observertc], processors: [correlation, reports], exporters: [recording]}
"""
    with pytest.raises(ConfigError) as err:
        load_text(yaml_text, config_types(testing.testing_factories()))
    messages = {i.path: i.message for i in err.value.issues}
    assert set(messages) == {"processors.reports.include[1]", "processors.reports.exclude[0]", "processors.reports.max_clients"}
    assert messages["processors.reports.include[1]"].startswith(
        "unknown report type 'INBOUND_AUDIO_TRACKS' (valid: OBSERVER_EVENT, "
    )
    assert "SFU_SCTP_STREAM" in messages["processors.reports.exclude[0]"]
    assert ReportsConfig(include=["CALL_EVENT"], exclude=["CALL_EVENT"]).enabled_types() == frozenset()
    assert len(ReportsConfig().enabled_types()) == 18


# --------------------------------------------------------------------------------------------------
# The processor alone: it never changes what it is given
# --------------------------------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


async def test_the_incoming_batch_and_its_samples_are_not_changed():
    origin = Origin(service_id="svc", media_unit_id="mu", received_at=1, generation="2")
    sample = ClientSample(
        origin=origin,
        client_id="c",
        timestamp=5,
        call_id="call",
        sample_seq=3,
        correlated=True,
        inbound_tracks=[Track(kind="audio", ssrc=1, peer_connection_id="pc", stats={"packetsLost": 1.6, "jitter": 1})],
        data_channels=[{"peerConnectionId": "pc", "messageSent": 1}],
        codecs=[{"peerConnectionId": "pc", "mimeType": "audio/opus"}],
    )
    incoming = Report(type="CALL_EVENT", payload={"serviceId": "svc", "timestamp": 1, "name": "CLIENT_LEFT", "clientId": "c"})
    batch = Batch(samples=[sample], reports=[incoming])
    before = msgspec.to_builtins(batch)
    sink = _Sink()
    processor = ReportsProcessor(settings_for_tests("reports", "processor"), ReportsConfig(), sink)
    await processor.consume(batch)
    assert msgspec.to_builtins(batch) == before
    [out] = sink.batches
    assert out is not batch and out.samples == []
    assert out.reports[-1] is incoming, "a client leaves after its last reports"
    track = one(of_type(validated(out.reports), "INBOUND_AUDIO_TRACK"))
    assert track["packetsLost"] == 2 and track["jitter"] == 1.0 and isinstance(track["jitter"], float)


# --------------------------------------------------------------------------------------------------
# _report_schemas
# --------------------------------------------------------------------------------------------------


def test_the_18_report_types_and_their_schemas():
    assert len(schemas.REPORT_TYPES) == 18
    for report_type in schemas.REPORT_TYPES:
        names = schemas.fields_of(report_type)
        assert names[0] == "serviceId" and "timestamp" in names
        assert schemas.required_of(report_type) >= {"serviceId", "timestamp"}
        assert schemas.parsed_schema(report_type)["name"] == schemas.record_name(report_type)
    assert schemas.record_name("CALL_EVENT") == "org.observertc.schemas.reports.reports.CallEventReport"
    with pytest.raises(KeyError, match="unknown report type 'NOPE'"):
        schemas.build("NOPE", {})


def builtins(report_type: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """``schemas.build``, as the builtins the typed payload encodes to."""
    built = schemas.build(report_type, fields)
    return None if built is None else msgspec.to_builtins(built)


def test_build_coerces_to_the_avro_types():
    base = {
        "serviceId": "svc",
        "mediaUnitId": "mu",
        "timestamp": 1.4,
        "callId": "c",
        "clientId": "cl",
        "peerConnectionId": "pc",
        "sampleSeq": 2,
        "ssrc": 7,
    }
    built = builtins(
        "INBOUND_AUDIO_TRACK",
        {
            **base,
            "packetsLost": 2.5,  # rounded (to even)
            "packetsReceived": True,  # a bool is not a number: dropped
            "bytesReceived": 2**40,  # fits a long
            "nackCount": 2**40,  # does not fit an int: dropped
            "jitter": 3,  # an int for a double
            "audioLevel": math.nan,  # dropped
            "totalAudioEnergy": math.inf,  # dropped
            "label": 42,  # a number for a string
            "trackId": None,  # dropped
            "decoderImplementation": {"x": 1},  # not a string: dropped
            "notAField": 1,  # dropped
        },
    )
    assert built == {**base, "timestamp": 1, "packetsLost": 2, "bytesReceived": 2**40, "jitter": 3.0, "label": "42"}
    assert list(built) == [f for f in schemas.fields_of("INBOUND_AUDIO_TRACK") if f in built]
    validate(built, schemas.parsed_schema("INBOUND_AUDIO_TRACK"), raise_errors=True, strict=True)

    assert schemas.build("INBOUND_AUDIO_TRACK", {**base, "ssrc": None}) is None, "required field missing"
    assert schemas.build("INBOUND_AUDIO_TRACK", {**base, "ssrc": "7"}) is None, "required field of the wrong type"
    assert schemas.build("INBOUND_AUDIO_TRACK", {**base, "sampleSeq": 2**31}) is None, "required int out of range"
    assert builtins("OUTBOUND_AUDIO_TRACK", {**base, "active": 1}) == base | {"timestamp": 1}, "only bools for a boolean"
    assert schemas.build("CALL_EVENT", {"serviceId": "s", "timestamp": 1, "name": "N", "value": True})["value"] == "true"


def test_build_handles_enums_the_way_it_handles_other_fields():
    # No 2.2.11 report has an enum; a later schema version may.
    plan = schemas._Plan(
        "TEST",
        {
            "name": "T",
            "fields": [
                {"name": "serviceId", "type": "string"},
                {"name": "kind", "type": ["null", {"type": "enum", "name": "K", "symbols": ["AUDIO", "VIDEO"]}], "default": None},
                {"name": "must", "type": {"type": "enum", "name": "M", "symbols": ["A"]}},
            ],
        },
    )
    assert plan.struct is None
    assert schemas._coerced(plan, {"serviceId": "s", "kind": "AUDIO", "must": "A"}) == {
        "serviceId": "s",
        "kind": "AUDIO",
        "must": "A",
    }
    assert schemas._coerced(plan, {"serviceId": "s", "kind": "audio", "must": "A"}) == {"serviceId": "s", "must": "A"}
    assert schemas._coerced(plan, {"serviceId": "s", "must": "B"}) is None


def test_fast_and_field_by_field_build_agree():
    """build() takes a msgspec fast path and falls back to field-by-field coercion; both must agree."""
    rng = random.Random(7)
    values = [
        None,
        True,
        False,
        0,
        -1,
        7,
        2**31,
        2**40,
        2**70,
        0.5,
        2.5,
        -3.7,
        math.nan,
        math.inf,
        10**400,
        "",
        "x",
        "12",
        b"b",
        [1],
        {"a": 1},
    ]
    for report_type in schemas.REPORT_TYPES:
        names = schemas.fields_of(report_type)
        plan = schemas._plan(report_type)
        for _ in range(300):
            fields = {"serviceId": "svc", "mediaUnitId": "mu", "timestamp": 1, "sfuId": "s", "name": "n"}
            for name in rng.sample(names, k=min(len(names), rng.randint(1, 12))):
                fields[name] = rng.choice(values)
            fields["extra"] = 1
            built = builtins(report_type, fields)
            assert built == schemas._coerced(plan, fields), (report_type, fields)
            if built is not None:
                validate(built, schemas.parsed_schema(report_type), raise_errors=True, strict=True)


# --------------------------------------------------------------------------------------------------
# The meta memory moves with its partition (webrtc_observer.state)
# --------------------------------------------------------------------------------------------------


def _with_meta(client_id: str, seq: int, browser: str = "121.0") -> ClientSample:
    origin = Origin(service_id="svc", media_unit_id="mu", received_at=_samples.T0 + seq * 1000, generation="2")
    return ClientSample(
        origin=origin,
        client_id=client_id,
        timestamp=_samples.T0 + seq * 1000,
        call_id="call",
        sample_seq=seq,
        correlated=True,
        meta=[
            MetaItem(type="BROWSER", payload={"name": "Chrome", "version": browser}),
            MetaItem(type="OPERATION_SYSTEM", payload={"name": "Linux"}),
            MetaItem(type="ICE_SERVER", payload="turn:turn.example.com:3478"),
        ],
        codecs=[{"peerConnectionId": "pc", "mimeType": "audio/opus", "payloadType": 111}],
        inbound_tracks=[Track(kind="audio", ssrc=1, peer_connection_id="pc", stats={"packetsReceived": seq})],
    )


def _client_left(client_id: str) -> Report:
    payload = {"serviceId": "svc", "timestamp": _samples.T0, "name": "CLIENT_LEFT", "clientId": client_id, "callId": "call"}
    return Report(type="CALL_EVENT", payload=payload)


def _reports_alone(**options: Any) -> tuple[ReportsProcessor, _Sink]:
    sink = _Sink()
    return ReportsProcessor(settings_for_tests("reports", "processor"), ReportsConfig(**options), sink), sink


def _client_key(client_id: str) -> bytes:
    return state.encode(("client", "svc", client_id))


def _restored(changes: dict[bytes, bytes | None]) -> dict[bytes, bytes]:
    """What a changelog gives back: the latest value of each key, tombstones left out, in another order."""
    return {k: v for k, v in reversed(list(changes.items())) if v is not None}


def _sent(batch: Batch) -> list[dict[str, Any]]:
    return [r.envelope() for r in validated(batch.reports)]


async def test_meta_memory_moves_with_its_partition():
    a, a_out = _reports_alone()
    first = Batch(samples=[_with_meta("c-a", 1), _with_meta("c-b", 1)], partition=3, time=_samples.T0 + 1000)
    await a.consume(first)
    [out] = a_out.batches
    assert (out.partition, out.time) == (3, _samples.T0 + 1000), "the batch handed on keeps partition and time"
    assert len(of_type(out.reports, "CALL_META_DATA")) == 8
    checkpoint = a.changes(3)
    assert set(checkpoint) == {_client_key("c-a"), _client_key("c-b")}

    b, b_out = _reports_alone()
    b.assign(3, _restored(checkpoint))
    fresh, fresh_out = _reports_alone()  # the same partition without its state: all meta again
    later = [
        Batch(samples=[_with_meta("c-a", 2), _with_meta("c-b", 2, browser="122.0")], partition=3, time=_samples.T0 + 2000),
        Batch(samples=[_with_meta("c-b", 3, browser="122.0")], partition=3, reports=[_client_left("c-a")]),
        Batch(samples=[_with_meta("c-a", 4)], partition=3),
    ]
    for batch in later:
        await a.consume(batch)
        await b.consume(batch)
        await fresh.consume(batch)
    after_a, after_b = [_sent(x) for x in a_out.batches[1:]], [_sent(x) for x in b_out.batches]
    assert after_a == after_b, "same reports, same ids"
    assert [m["type"] for m in of_type(b_out.batches[0].reports, "CALL_META_DATA")] == ["BROWSER"]
    assert of_type(b_out.batches[1].reports, "CALL_META_DATA") == []
    assert len(of_type(b_out.batches[2].reports, "CALL_META_DATA")) == 4, "c-a left: told about again in full"
    assert len(of_type(fresh_out.batches[0].reports, "CALL_META_DATA")) == 8, "the check can fail"
    assert a.changes(3) == b.changes(3)


def _with_servers(seq: int, *servers: str) -> ClientSample:
    """A sample of c-a whose only meta items are the ICE servers ``servers``."""
    meta = [MetaItem(type="ICE_SERVER", payload=server) for server in servers]
    return msgspec.structs.replace(_with_meta("c-a", seq), meta=meta, codecs=[])


async def test_a_meta_item_seen_again_is_the_last_one_forgotten_and_checkpoints_keep_64_bit_integers():
    processor, out = _reports_alone(max_meta_items_per_client=2)

    async def told(seq: int, *servers: str) -> list[str]:
        await processor.consume(Batch(samples=[_with_servers(seq, *servers)], partition=3))
        return [m["payload"] for m in of_type(out.batches[-1].reports, "CALL_META_DATA")] if out.batches else []

    assert await told(1, "turn:a", "turn:b") == ["turn:a", "turn:b"]
    await told(2, "turn:a")  # a seen again: now the newest, b the oldest
    assert await told(3, "turn:c") == ["turn:c"]  # past 2 items: b is forgotten, not a
    assert await told(4, "turn:a", "turn:b") == ["turn:b"]

    version, _order, fingerprints = msgspec.msgpack.decode(processor.changes(3)[_client_key("c-a")])
    assert version == 1 and len(fingerprints) == 2
    assert all(type(fp) is int and 0 <= fp < 2**64 for fp in fingerprints)
    restored, restored_out = _reports_alone(max_meta_items_per_client=2)
    restored.assign(3, {_client_key("c-a"): state.encode([1, 7, fingerprints])})
    await restored.consume(Batch(samples=[_with_servers(6, "turn:a", "turn:b", "turn:x")], partition=3))
    assert [m["payload"] for m in of_type(restored_out.batches[-1].reports, "CALL_META_DATA")] == ["turn:x"]


def test_a_packed_fingerprint_is_found_only_where_one_starts():
    from webrtc_observer.processors.reports import _find

    fps = bytearray(b"xxxxAAAA" + b"AAAAxxxx" + b"AAAAAAAA")  # the first match spans two fingerprints
    assert _find(fps, b"AAAAAAAA") == 16
    assert _find(fps[:16], b"AAAAAAAA") == -1
    assert _find(fps, b"xxxxAAAA") == 0


async def test_meta_memory_is_the_same_in_every_process():
    """Fingerprints do not depend on Python's per-process string hashing (PYTHONHASHSEED)."""
    import os
    import subprocess
    import sys

    program = """
import asyncio
from tests.test_reports_processor import _reports_alone, _with_meta
from webrtc_observer.model import Batch
a, _ = _reports_alone()
asyncio.run(a.consume(Batch(samples=[_with_meta("c-a", 1)], partition=3)))
print(sorted((k.hex(), v.hex()) for k, v in a.changes(3).items()))
"""
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
        outputs.add(done.stdout)
    assert len(outputs) == 1 and "[]" not in outputs


async def test_forgotten_clients_give_tombstones_and_revoke_forgets():
    processor, out = _reports_alone(max_clients=2)
    await processor.consume(Batch(samples=[_with_meta("c-a", 1), _with_meta("c-b", 1)], partition=3))
    await processor.consume(Batch(samples=[_with_meta("c-x", 1)], partition=4))
    processor.changes(3)
    await processor.consume(Batch(reports=[_client_left("c-a")], partition=3))
    assert processor.changes(3) == {_client_key("c-a"): None}, "CLIENT_LEFT: a tombstone"
    await processor.consume(Batch(samples=[_with_meta("c-c", 2)], partition=3))  # over max_clients: c-b goes
    changes = processor.changes(3)
    assert set(changes) == {_client_key("c-b"), _client_key("c-c")}
    assert changes[_client_key("c-b")] is None and changes[_client_key("c-c")] is not None

    processor.revoke(3)
    assert processor.changes(3) == {}
    assert processor._meta_clients.value("reports") == 1, "c-x of partition 4 is left"
    out.batches.clear()
    await processor.consume(Batch(samples=[_with_meta("c-c", 3)], partition=3))
    assert len(of_type(out.batches[0].reports, "CALL_META_DATA")) == 4, "forgotten with its partition"
    await processor.consume(Batch(samples=[_with_meta("c-x", 2)], partition=4))
    assert of_type(out.batches[1].reports, "CALL_META_DATA") == [], "partition 4 kept its memory"


async def test_a_tick_yields_nothing_and_is_not_handed_on():
    processor, out = _reports_alone()
    await processor.consume(Batch(partition=3, time=_samples.T0))
    assert out.batches == [] and processor.changes(3) == {}


async def test_the_lru_order_moves_too():
    a, a_out = _reports_alone(max_clients=2)
    for client_id in ("c-b", "c-a"):  # c-b is the least recently used, though it sorts after c-a
        await a.consume(Batch(samples=[_with_meta(client_id, 1)], partition=3))
    b, b_out = _reports_alone(max_clients=2)
    b.assign(3, _restored(a.changes(3)))
    a_out.batches.clear()
    for batch in (
        Batch(samples=[_with_meta("c-c", 2)], partition=3),  # c-b goes
        Batch(samples=[_with_meta("c-a", 3), _with_meta("c-b", 3)], partition=3),
    ):
        await a.consume(batch)
        await b.consume(batch)
    assert [_sent(x) for x in a_out.batches] == [_sent(x) for x in b_out.batches]
    second = of_type(b_out.batches[1].reports, "CALL_META_DATA")
    assert {m["clientId"] for m in second} == {"c-b"}, "c-a was kept, c-b told about again"


async def test_a_leaving_client_s_last_reports_come_before_its_client_left(http):
    """Its last sample's track reports, then the closes and CLIENT_LEFT that sample caused."""
    from tests.test_correlation import client, post
    from webrtc_observer.testing import running_collector

    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
processors: {correlation: {}, reports: {}}
exporters: {recording: {}}
service: {pipelines: {p: {receivers: [observertc], processors: [correlation, reports], exporters: [recording]}}}
"""
    async with running_collector(yaml_text) as c:
        await post(c, http, client("alice", call_id="c1", out=(1,), inb=(2,)))
        await post(c, http, client("alice", call_id="c1", out=(1,), inb=(2,), ts=1_700_000_001_000), close=True)
        reports = c.exporter().reports
    last = [r for r in reports if r.payload.get("clientId") == "alice"][-6:]
    kinds = [r.payload["name"] if r.type == "CALL_EVENT" else r.type for r in last]
    assert kinds[-1] == "CLIENT_LEFT" and "INBOUND_AUDIO_TRACK" in kinds and "OUTBOUND_AUDIO_TRACK" in kinds, kinds
    first_close = min(i for i, k in enumerate(kinds) if k in ("MEDIA_TRACK_REMOVED", "PEER_CONNECTION_CLOSED", "CLIENT_LEFT"))
    assert all(k in ("MEDIA_TRACK_REMOVED", "PEER_CONNECTION_CLOSED", "CLIENT_LEFT") for k in kinds[first_close:]), kinds
    assert max(i for i, k in enumerate(kinds) if k.endswith("_TRACK")) < first_close, kinds
