"""The issues processor: each detector on hand-built batches (client samples with the quality the
quality processor would have measured), raise once and resolve once, the order around CLIENT_LEFT,
state that moves with its partition, and end to end: the load generator's impairments through a real
collector process raise the matching issues for the impaired clients only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests._process import CollectorProcess, free_port
from tests.conftest import assert_valid_report
from webrtc_observer import state
from webrtc_observer.component import RetryLater
from webrtc_observer.components import config_types
from webrtc_observer.config import ConfigError, load_text
from webrtc_observer.model import (
    Batch,
    ClientIssue,
    ClientSample,
    MetaItem,
    Origin,
    Report,
    Track,
    TrackQuality,
)
from webrtc_observer.processors.issues import DEFAULTS, DetectorConfig, IssuesConfig, IssuesProcessor
from webrtc_observer.testing import settings_for_tests

SVC, MU, CALL = "svc", "web", "call-1"
T0 = 1_700_000_000_000
STEP = 5000
PART = 3


class _Sink:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.error: BaseException | None = None

    async def consume(self, batch: Batch) -> None:
        if self.error is not None:
            raise self.error
        self.batches.append(batch)

    def issues(self) -> list[dict[str, Any]]:
        return [issue(r) for b in self.batches for r in b.reports if r.type == "OBSERVER_EVENT"]


def issue(report: Report) -> dict[str, Any]:
    assert report.type == "OBSERVER_EVENT" and report.schema_version == "2.2.11"
    payload = dict(report.payload.to_dict() if hasattr(report.payload, "to_dict") else report.payload)
    assert_valid_report("OBSERVER_EVENT", payload)
    assert payload["name"] in ("CLIENT_ISSUE", "CLIENT_ISSUE_RESOLVED")
    payload["attachments"] = json.loads(payload["attachments"])
    assert payload["attachments"]["severity"] in ("critical", "major", "minor", "info")
    return payload


def processor(**options: Any) -> tuple[IssuesProcessor, _Sink, Any]:
    settings = settings_for_tests("issues", kind="processor")
    sink = _Sink()
    options["detectors"] = {k: DetectorConfig(**v) for k, v in options.get("detectors", {}).items()}
    return IssuesProcessor(settings, IssuesConfig(**options), sink), sink, settings.telemetry


def sample(ts: int, client: str = "alice", **fields: Any) -> ClientSample:
    fields.setdefault("inbound_tracks", [Track(kind="audio", ssrc=1, peer_connection_id="pc", track_id="t-in")])
    return ClientSample(
        origin=Origin(service_id=SVC, media_unit_id=MU, received_at=ts, generation="2"),
        client_id=client,
        timestamp=ts,
        call_id=CALL,
        room_id="room",
        user_id=f"user-{client}",
        correlated=True,
        **fields,
    )


def quality(ts: int, client: str = "alice", **fields: Any) -> TrackQuality:
    base: dict[str, Any] = {
        "service_id": SVC,
        "media_unit_id": MU,
        "call_id": CALL,
        "client_id": client,
        "peer_connection_id": "pc",
        "ssrc": 1,
        "kind": "audio",
        "direction": "inbound",
        "timestamp": ts,
        "track_id": "t-in",
        "interval": 5.0,
        "packets_delta": 250,
        "fraction_lost": 0.0,
        "rtt": 0.05,
        "jitter": 0.005,
        "mos": 4.3,
    }
    base.update(fields)
    return TrackQuality(**base)


def event(name: str, ts: int, client: str = "alice", call: str = CALL) -> Report:
    payload = {"serviceId": SVC, "mediaUnitId": MU, "timestamp": ts, "callId": call, "name": name, "clientId": client}
    return Report(type="CALL_EVENT", payload=payload)


def batch(ts: int, samples: list[ClientSample] | None = None, qualities: list[TrackQuality] | None = None, **kw: Any) -> Batch:
    return Batch(samples=samples or [], quality=qualities or [], partition=kw.pop("partition", PART), time=ts, **kw)


def healthy(ts: int, client: str = "alice") -> Batch:
    return batch(ts, [sample(ts, client)], [quality(ts, client)])


def names(issues: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(i["name"], i["value"]) for i in issues]


# --------------------------------------------------------------------------------------------------
# Every detector: (issue type, a batch in which it holds, a batch in which it is clear)
# --------------------------------------------------------------------------------------------------

VIDEO_IN = Track(kind="video", ssrc=2, peer_connection_id="pc", track_id="v-in")
VIDEO_OUT = Track(kind="video", ssrc=3, peer_connection_id="pc", track_id="v-out")


def _video_in(ts: int, **q: Any) -> Batch:
    fields = {"kind": "video", "ssrc": 2, "track_id": "v-in", "mos": None, "fps": 30.0, "frames_delta": 150, **q}
    return batch(ts, [sample(ts, inbound_tracks=[VIDEO_IN])], [quality(ts, **fields)])


def _video_out(ts: int, limitation: str | None) -> Batch:
    fields = {
        "kind": "video",
        "ssrc": 3,
        "track_id": "v-out",
        "direction": "outbound",
        "mos": None,
        "quality_limitation": limitation,
    }
    return batch(ts, [sample(ts, inbound_tracks=[], outbound_tracks=[VIDEO_OUT])], [quality(ts, **fields)])


def _transport(ts: int, ice: str = "connected", dtls: str = "connected") -> Batch:
    transports = [{"peerConnectionId": "pc", "transportId": "T1", "iceState": ice, "dtlsState": dtls}]
    return batch(ts, [sample(ts, transports=transports)], [quality(ts)])


def _candidate(ts: int, candidate_type: str, protocol: str, relay_protocol: str | None = None) -> Batch:
    local: dict[str, Any] = {"peerConnectionId": "pc", "id": "L1", "candidateType": candidate_type, "protocol": protocol}
    if relay_protocol:
        local["relayProtocol"] = relay_protocol
    fields = {
        "transports": [{"peerConnectionId": "pc", "transportId": "T1", "selectedCandidatePairId": "CP1"}],
        "candidate_pairs": [{"peerConnectionId": "pc", "candidatePairId": "CP1", "localCandidateId": "L1", "state": "succeeded"}],
        "local_candidates": [local],
    }
    return batch(ts, [sample(ts, **fields)], [quality(ts)])


def _client_issue(ts: int, reported: bool) -> Batch:
    issues = [ClientIssue(name="freezed-video-track", message="frozen", track_id="v-in")] if reported else []
    return batch(ts, [sample(ts, issues=issues)], [quality(ts)])


def _media_error(ts: int, error: bool) -> Batch:
    meta = [MetaItem(type="USER_MEDIA_ERROR", payload="NotAllowedError: Permission denied")] if error else []
    return batch(ts, [sample(ts, meta=meta)], [quality(ts)])


DETECTOR_CASES: list[tuple[str, Any, Any]] = [
    ("low_mos", lambda ts: batch(ts, [sample(ts)], [quality(ts, mos=3.0)]), healthy),
    ("high_loss", lambda ts: batch(ts, [sample(ts)], [quality(ts, fraction_lost=0.1, packets_delta=225)]), healthy),
    ("high_rtt", lambda ts: batch(ts, [sample(ts)], [quality(ts, rtt=0.6)]), healthy),
    ("high_jitter", lambda ts: batch(ts, [sample(ts)], [quality(ts, jitter=0.08)]), healthy),
    ("frozen_video", lambda ts: _video_in(ts, frames_delta=0, fps=0.0), lambda ts: _video_in(ts)),
    ("no_media", lambda ts: batch(ts, [sample(ts)], [quality(ts, packets_delta=0, fraction_lost=None, mos=None)]), healthy),
    ("ice_failed", lambda ts: _transport(ts, ice="failed"), _transport),
    ("ice_disconnected", lambda ts: _transport(ts, ice="disconnected"), _transport),
    ("dtls_failed", lambda ts: _transport(ts, dtls="failed"), _transport),
    ("turn_relay", lambda ts: _candidate(ts, "relay", "udp"), lambda ts: _candidate(ts, "srflx", "udp")),
    ("tcp_transport", lambda ts: _candidate(ts, "host", "tcp"), lambda ts: _candidate(ts, "host", "udp")),
    ("quality_limited_cpu", lambda ts: _video_out(ts, "cpu"), lambda ts: _video_out(ts, None)),
    ("quality_limited_bandwidth", lambda ts: _video_out(ts, "bandwidth"), lambda ts: _video_out(ts, None)),
    ("client_issue", lambda ts: _client_issue(ts, True), lambda ts: _client_issue(ts, False)),
    ("user_media_error", lambda ts: _media_error(ts, True), lambda ts: _media_error(ts, False)),
]


def test_every_detector_has_a_case_here():
    covered = {name for name, _, _ in DETECTOR_CASES} | {"rejoin", "client_lost"}
    assert covered == set(DEFAULTS)


@pytest.mark.parametrize(("issue_type", "holds", "clear"), DETECTOR_CASES, ids=[c[0] for c in DETECTOR_CASES])
async def test_each_detector_raises_once_after_min_samples_and_resolves_once(issue_type, holds, clear):
    p, sink, telemetry = processor()
    default = DEFAULTS[issue_type]
    ts = [T0 + i * STEP for i in range(8)]
    await p.consume(healthy(ts[0]))
    for i in range(1, 5):  # four samples in which it holds: raised at the min_samples-th, once
        await p.consume(holds(ts[i]))
        raised = [x for x in sink.issues() if x["name"] == "CLIENT_ISSUE"]
        assert len(raised) == (1 if i >= default.min_samples else 0), (issue_type, i)
    for i in range(5, 8):  # clear from ts[5]: resolved after min_samples clear samples, once
        await p.consume(clear(ts[i]))
    found = sink.issues()
    assert names(found) == [("CLIENT_ISSUE", issue_type), ("CLIENT_ISSUE_RESOLVED", issue_type)], found
    up, down = found
    for x in found:
        assert (x["serviceId"], x["mediaUnitId"], x["callId"], x["roomId"], x["clientId"], x["userId"]) == (
            SVC,
            MU,
            CALL,
            "room",
            "alice",
            "user-alice",
        )
        assert x["attachments"]["severity"] == default.severity and x["message"]
    assert up["timestamp"] == ts[default.min_samples] and up["attachments"]["startedAt"] == ts[1]
    assert "endedAt" not in up["attachments"]
    assert down["attachments"]["startedAt"] == ts[1] and down["attachments"]["endedAt"] == ts[5]
    assert down["timestamp"] == ts[4 + default.min_samples]
    assert telemetry.get("issues").value(issue_type, default.severity) == 1
    assert p.active() == {}
    assert telemetry.get("issues_active").samples()[(issue_type,)] == 0


async def test_values_and_where_in_the_attachments():
    p, sink, _ = processor()
    for i in range(2):
        ts = T0 + i * STEP
        await p.consume(batch(ts, [sample(ts)], [quality(ts, fraction_lost=0.2, packets_delta=200, mos=2.9)]))
    by_type = {x["value"]: x for x in sink.issues()}
    loss, mos = by_type["high_loss"], by_type["low_mos"]
    assert loss["attachments"]["values"] == {"fractionLost": 0.2, "direction": "inbound", "worst": 0.2, "threshold": 0.05}
    assert "ssrc" not in loss["attachments"], "about the peer connection, not one track"
    assert loss["attachments"]["peerConnectionId"] == "pc" and loss["peerConnectionId"] == "pc"
    assert "20.0 %" in loss["message"] and "5.0 %" in loss["message"]
    assert mos["attachments"]["trackId"] == "t-in" and mos["attachments"]["ssrc"] == 1
    assert mos["attachments"]["direction"] == "inbound" and mos["attachments"]["kind"] == "audio"
    assert mos["attachments"]["values"]["mos"] == 2.9 and mos["attachments"]["values"]["threshold"] == 3.5


async def test_a_peer_connection_issue_names_the_remote_client_of_a_p2p_connection():
    p, sink, _ = processor()
    for i in range(2):
        ts = T0 + i * STEP
        track = Track(kind="audio", ssrc=1, peer_connection_id="pc", remote_client_id="bob")
        await p.consume(batch(ts, [sample(ts, inbound_tracks=[track])], [quality(ts, rtt=0.7)]))
    [rtt] = sink.issues()
    assert rtt["value"] == "high_rtt" and rtt["attachments"]["remoteClientId"] == "bob"


async def test_loss_of_a_peer_connection_is_weighted_by_packets():
    # 10 % of 100 audio packets and 0 % of 1 000 video packets: 1 % over the peer connection.
    p, sink, _ = processor()
    for i in range(3):
        ts = T0 + i * STEP
        s = sample(ts, inbound_tracks=[Track(kind="audio", ssrc=1, peer_connection_id="pc"), VIDEO_IN])
        qs = [quality(ts, fraction_lost=0.1, packets_delta=90), quality(ts, kind="video", ssrc=2, packets_delta=1000, mos=None)]
        await p.consume(batch(ts, [s], qs))
    assert "high_loss" not in {x["value"] for x in sink.issues()}


async def test_a_short_spike_raises_nothing_and_min_samples_is_configurable():
    p, sink, _ = processor(detectors={"high_rtt": {"min_samples": 3}})
    rtts = [0.05, 0.9, 0.05, 0.9, 0.9, 0.05, 0.9, 0.9, 0.9, 0.9]
    for i, rtt in enumerate(rtts):
        ts = T0 + i * STEP
        await p.consume(batch(ts, [sample(ts)], [quality(ts, rtt=rtt)]))
    assert names(sink.issues()) == [("CLIENT_ISSUE", "high_rtt")]
    assert sink.issues()[0]["timestamp"] == T0 + 8 * STEP  # the third of four in a row


async def test_unknown_measurements_keep_the_streak_and_a_gone_track_resolves_at_once():
    p, sink, _ = processor()
    await p.consume(batch(T0, [sample(T0)], [quality(T0, mos=3.0)]))
    await p.consume(batch(T0 + STEP, [sample(T0 + STEP)], [quality(T0 + STEP, mos=None)]))  # not measured
    await p.consume(batch(T0 + 2 * STEP, [sample(T0 + 2 * STEP)], [quality(T0 + 2 * STEP, mos=3.1)]))
    assert names(sink.issues()) == [("CLIENT_ISSUE", "low_mos")]
    other = Track(kind="audio", ssrc=9, peer_connection_id="pc")
    ts = T0 + 3 * STEP
    await p.consume(batch(ts, [sample(ts, inbound_tracks=[other])], [quality(ts, ssrc=9)]))  # track 1 is gone
    resolved = sink.issues()[-1]
    assert (resolved["name"], resolved["value"], resolved["attachments"]["endedAt"]) == ("CLIENT_ISSUE_RESOLVED", "low_mos", ts)


async def test_client_reported_names_that_are_no_issue_are_ignored():
    # client-monitor-js 3.x sends its CPU information as a CALL_META_DATA customObserverEvent.
    p, sink, _ = processor()
    meta = ClientIssue(name="CALL_META_DATA", message="CPU_INFO", attachments='{"architecture":"amd64"}')
    await p.consume(batch(T0, [sample(T0, issues=[meta])], [quality(T0)]))
    assert sink.issues() == []
    p, sink, _ = processor(ignored_client_issues=[])
    await p.consume(batch(T0, [sample(T0, issues=[meta])], [quality(T0)]))
    assert names(sink.issues()) == [("CLIENT_ISSUE", "client_issue")]


async def test_detectors_can_be_turned_off_and_their_severity_changed():
    p, sink, telemetry = processor(
        detectors={"low_mos": {"enabled": False}, "high_loss": {"severity": "critical", "threshold": 0.5}}
    )
    for i in range(3):
        ts = T0 + i * STEP
        await p.consume(batch(ts, [sample(ts)], [quality(ts, mos=2.0, fraction_lost=0.6, packets_delta=100)]))
    [raised] = sink.issues()
    assert raised["value"] == "high_loss" and raised["attachments"]["severity"] == "critical"
    assert raised["attachments"]["values"]["threshold"] == 0.5
    assert telemetry.get("issues").value("high_loss", "critical") == 1


def test_config_errors_name_the_option():
    types = config_types()
    yaml_text = """
receivers: {observertc: {}}
processors:
  correlation: {}
  quality: {}
  issues:
    detectors:
      high_los: {threshold: 0.1}
      high_loss: {threshold: 5, min_samples: 0}
      frozen_video: {threshold: 1}
      low_mos: {severity: awful}
    max_clients: 0
exporters: {debug: {}}
service: {pipelines: {p: {receivers: [observertc], processors: [correlation, quality, issues], exporters: [debug]}}}
"""
    with pytest.raises(ConfigError) as err:
        load_text(yaml_text, types)
    paths = {i.path: i.message for i in err.value.issues}
    base = "processors.issues"
    assert set(paths) == {
        f"{base}.detectors.high_los",
        f"{base}.detectors.high_loss.threshold",
        f"{base}.detectors.high_loss.min_samples",
        f"{base}.detectors.frozen_video.threshold",
        f"{base}.detectors.low_mos.severity",
        f"{base}.max_clients",
    }, paths
    assert "unknown issue type" in paths[f"{base}.detectors.high_los"]
    assert "fraction" in paths[f"{base}.detectors.high_loss.threshold"]
    # The order is checked too: issues needs quality (and correlation) before it.
    wrong = yaml_text.replace("processors: [correlation, quality, issues]", "processors: [correlation, issues, quality]")
    good = wrong.split("  issues:")[0] + "  issues: {}\nexporters" + wrong.split("\nexporters")[1]
    with pytest.raises(ConfigError) as err:
        load_text(good, types)
    assert any("needs a quality processor before it" in i.message for i in err.value.issues)


# --------------------------------------------------------------------------------------------------
# Events: rejoin, lost clients; the order around CLIENT_LEFT
# --------------------------------------------------------------------------------------------------


async def test_a_client_that_rejoins_its_call():
    p, sink, _ = processor()
    await p.consume(batch(T0, [sample(T0)], [quality(T0)], reports=[event("CLIENT_JOINED", T0)]))
    await p.consume(batch(T0 + STEP, reports=[event("CLIENT_LEFT", T0)]))
    assert sink.issues() == []
    ts = T0 + 2 * STEP
    await p.consume(batch(ts, [sample(ts)], [quality(ts)], reports=[event("CLIENT_JOINED", ts)]))
    await p.consume(healthy(ts + STEP))
    assert names(sink.issues()) == [("CLIENT_ISSUE", "rejoin"), ("CLIENT_ISSUE_RESOLVED", "rejoin")]
    # Another call (a new CALL_STARTED after CALL_ENDED) starts the count afresh.
    await p.consume(batch(ts + 2 * STEP, reports=[event("CLIENT_LEFT", ts + STEP), event("CALL_ENDED", ts + STEP)]))
    await p.consume(batch(ts + 3 * STEP, [sample(ts + 3 * STEP)], reports=[event("CLIENT_JOINED", ts + 3 * STEP)]))
    assert len(sink.issues()) == 2


async def test_resolutions_come_before_the_client_left_and_a_leaving_sample_raises_first():
    p, sink, _ = processor()
    await p.consume(batch(T0, [sample(T0)], [quality(T0, rtt=0.9)]))
    ts = T0 + STEP
    # Its last sample holds the condition a second time (raised), and it leaves in the same message.
    left = event("CLIENT_LEFT", ts)
    before = event("PEER_CONNECTION_CLOSED", ts)
    await p.consume(
        batch(ts, [sample(ts), sample(ts, "bob")], [quality(ts, rtt=0.9), quality(ts, "bob")], reports=[before, left])
    )
    out = sink.batches[-1].reports
    kinds = [(r.type, r.payload.get("name"), r.payload.get("value")) for r in out]
    assert kinds == [
        ("CALL_EVENT", "PEER_CONNECTION_CLOSED", None),
        ("OBSERVER_EVENT", "CLIENT_ISSUE", "high_rtt"),
        ("OBSERVER_EVENT", "CLIENT_ISSUE_RESOLVED", "high_rtt"),
        ("CALL_EVENT", "CLIENT_LEFT", None),
    ]
    assert out[-1] is left and p.followed == 1 and p.active() == {}


async def test_a_client_lost_is_raised_after_three_of_its_intervals_and_resolved_before_it_leaves():
    p, sink, telemetry = processor(sweep_interval=0.5)
    for i in range(4):  # every 5 s of stream time
        await p.consume(healthy(T0 + i * STEP))
    last = T0 + 3 * STEP
    await p.consume(Batch(partition=PART, time=last + 14_000))  # a tick: 14 s of silence, under 3 × 5 s
    assert sink.issues() == []
    await p.consume(Batch(partition=PART, time=last + 15_500))
    [lost] = sink.issues()
    assert (lost["name"], lost["value"], lost["attachments"]["severity"]) == ("CLIENT_ISSUE", "client_lost", "critical")
    assert lost["attachments"]["startedAt"] == last and lost["timestamp"] == last + 15_500
    assert lost["attachments"]["values"]["intervalSeconds"] == 5.0
    assert p.active() == {"client_lost": 1} and telemetry.get("issues_active").samples()[("client_lost",)] == 1
    await p.consume(Batch(partition=PART, time=last + 20_000))  # raised once
    assert len(sink.issues()) == 1
    # correlation's idle timeout ends it: the resolution comes just before its CLIENT_LEFT.
    left = event("CLIENT_LEFT", last)
    await p.consume(batch(last + 60_000, reports=[left]))
    out = sink.batches[-1].reports
    assert [r.payload["name"] for r in out] == ["CLIENT_ISSUE_RESOLVED", "CLIENT_LEFT"]
    assert issue(out[0])["attachments"]["endedAt"] == last + 60_000
    assert p.followed == 0 and p.active() == {}


async def test_a_lost_client_that_sends_again_is_resolved_by_its_sample():
    p, sink, _ = processor(sweep_interval=0.5)
    for i in range(3):
        await p.consume(healthy(T0 + i * STEP))
    await p.consume(Batch(partition=PART, time=T0 + 2 * STEP + 16_000))
    ts = T0 + 2 * STEP + 17_000
    await p.consume(healthy(ts))
    assert names(sink.issues()) == [("CLIENT_ISSUE", "client_lost"), ("CLIENT_ISSUE_RESOLVED", "client_lost")]
    assert sink.issues()[1]["attachments"]["endedAt"] == ts


async def test_local_input_is_swept_by_the_wall_clock():
    p, sink, _ = processor(sweep_interval=0.05)
    now = int(time.time() * 1000)
    for i in range(3):  # received 200 ms apart: its interval
        ts = now - 2000 + i * 200
        s = msgspec.structs.replace(sample(ts), origin=Origin(SVC, MU, received_at=ts, generation="3"))
        await p.consume(Batch(samples=[s], quality=[quality(ts)]))
    await p.start()
    try:
        deadline = time.monotonic() + 5
        while not sink.issues():
            assert time.monotonic() < deadline, "no client_lost by the wall clock"
            await asyncio.sleep(0.02)
    finally:
        await p.shutdown()
    assert names(sink.issues()) == [("CLIENT_ISSUE", "client_lost")]


# --------------------------------------------------------------------------------------------------
# All or nothing, bounds, state that moves with its partition
# --------------------------------------------------------------------------------------------------


async def test_a_refused_message_leaves_no_trace_and_its_retry_raises_once():
    p, sink, telemetry = processor()
    first = batch(T0, [sample(T0)], [quality(T0, rtt=0.9)])
    second = batch(T0 + STEP, [sample(T0 + STEP)], [quality(T0 + STEP, rtt=0.9)])
    await p.consume(first)
    before = p.changes(PART)
    sink.error = RetryLater("full")
    for _ in range(2):
        with pytest.raises(RetryLater):
            await p.consume(second)
    assert p.changes(PART) == {}, "nothing changed"
    assert telemetry.get("issues").value("high_rtt", "major") == 0 and p.active() == {}
    sink.error = None
    await p.consume(second)
    assert names(sink.issues()) == [("CLIENT_ISSUE", "high_rtt")]
    assert telemetry.get("issues").value("high_rtt", "major") == 1 and p.active() == {"high_rtt": 1}
    assert before


async def test_bounds_are_counted():
    p, _, telemetry = processor(max_clients=2)
    for client in ("a", "b", "c"):
        await p.consume(batch(T0, [sample(T0, client)], [quality(T0, client, rtt=0.9)]))
    assert p.followed == 2
    assert telemetry.get("issues_dropped").value("issues", "max_clients") == 1


def _restored(changes: dict[bytes, bytes | None]) -> dict[bytes, bytes]:
    return {k: v for k, v in reversed(list(changes.items())) if v is not None}


def _script() -> list[Batch]:
    """A call of two clients: bob's loss and RTT come and go, alice is lost, then leaves."""
    out: list[Batch] = []
    for i in range(12):
        ts = T0 + i * STEP
        samples, qs = (
            [sample(ts, "bob")],
            [quality(ts, "bob", fraction_lost=0.2 if 2 <= i <= 6 else 0.0, rtt=0.9 if i % 4 < 2 else 0.05)],
        )
        reports = [event("CLIENT_JOINED", ts, "bob"), event("CLIENT_JOINED", ts, "alice")] if i == 0 else []
        if i < 5:
            samples.append(sample(ts, "alice"))
            qs.append(quality(ts, "alice", mos=3.0 if i >= 2 else 4.2))
        if i == 11:
            reports.append(event("CLIENT_LEFT", T0 + 4 * STEP, "alice"))
        out.append(batch(ts, samples, qs, reports=reports))
        out.append(Batch(partition=PART, time=ts + 2500))  # a tick between samples
    return out


async def test_state_moves_with_its_partition_and_gives_the_same_reports():
    script = _script()
    a, a_sink, _ = processor()
    for b in script[:9]:
        await a.consume(b)
    checkpoint = a.changes(PART)
    assert state.encode(("clock", "", "")) in checkpoint
    assert any(state.decode(k)[0] == "call" for k in checkpoint), "the call's joins move too"

    b, b_sink, _ = processor()
    b.assign(PART, _restored(checkpoint))
    assert b.changes(PART) == {}, "nothing changed since the restore"
    assert b.active() == a.active() and b.followed == a.followed
    a_sink.batches.clear()
    for item in script[9:]:
        await a.consume(item)
        await b.consume(item)
    a_out = [(r.id, r.payload) for x in a_sink.batches for r in x.reports]
    b_out = [(r.id, r.payload) for x in b_sink.batches for r in x.reports]
    assert a_out == b_out and len(a_out) > 4
    seen = {(i["name"], i["value"]) for i in b_sink.issues()}
    assert {("CLIENT_ISSUE", "client_lost"), ("CLIENT_ISSUE_RESOLVED", "low_mos"), ("CLIENT_ISSUE_RESOLVED", "high_loss")} <= seen
    assert a.changes(PART) == b.changes(PART)
    assert a.active() == b.active()


async def test_without_the_moved_state_the_reports_differ():
    """The check above can fail: a fresh processor raises what the checkpoint had already raised."""
    script = _script()
    a, a_sink, _ = processor()
    for item in script[:9]:
        await a.consume(item)
    a.changes(PART)
    fresh, fresh_sink, _ = processor()
    a_sink.batches.clear()
    for item in script[9:]:
        await a.consume(item)
        await fresh.consume(item)
    assert names(a_sink.issues()) != names(fresh_sink.issues())


async def test_revoke_forgets_a_partition():
    p, _, _ = processor()
    for i in range(2):
        await p.consume(batch(T0 + i * STEP, [sample(T0 + i * STEP)], [quality(T0 + i * STEP, rtt=0.9)]))
    assert p.active() == {"high_rtt": 1} and p.followed == 1
    p.revoke(PART)
    assert p.active() == {} and p.followed == 0 and p.changes(PART) == {}


# --------------------------------------------------------------------------------------------------
# End to end: the load generator's impairments through a real collector process
# --------------------------------------------------------------------------------------------------

E2E_CONFIG = """
receivers:
  observertc: {{endpoint: "127.0.0.1:{port}"}}
processors:
  correlation: {{client_idle_timeout: 4s, call_empty_timeout: 1s, sweep_interval: 100ms}}
  quality: {{}}
  issues: {{sweep_interval: 100ms}}
  reports: {{include: [CALL_EVENT, OBSERVER_EVENT]}}
exporters:
  file: {{path: "{path}"}}
service:
  pipelines:
    p: {{receivers: [observertc], processors: [correlation, quality, issues, reports], exporters: [file]}}
"""
MATCHING = {"loss": "high_loss", "rtt": "high_rtt", "frozen": "frozen_video", "drop": "client_lost"}


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def test_loadgen_impairments_raise_the_matching_issues_for_the_impaired_clients_only(tmp_path, http):
    from webrtc_observer.loadgen import Scenario, run

    sc = Scenario(
        calls=3,
        clients_per_call=4,
        topology="sfu",
        schema="mixed",
        transport="mixed",
        impairments=["loss=0.15@0.25", "rtt=0.5@0.25", "frozen@0.25", "drop@0.25"],
        interval=0.5,
        duration=8,
        seed=5,
    )
    port, out = free_port(), tmp_path / "reports.jsonl"
    config = tmp_path / "collector.yaml"
    config.write_text(E2E_CONFIG.format(port=port, path=out))
    proc = CollectorProcess(tmp_path / "collector.log", config, port)
    try:
        await proc.wait_ready(http)
        summary = await run(sc, proc.url(""), realtime=True, concurrency=8)
        assert summary.ok, summary.render()
        deadline = time.monotonic() + 30
        while sum(1 for e in _read(out) if e["payload"].get("name") == "CLIENT_LEFT") < len(sc.clients):
            assert time.monotonic() < deadline, "not every client left"
            await asyncio.sleep(0.1)
    finally:
        proc.proc.terminate()
        proc.proc.wait(timeout=20)
        proc.close_log()
    envelopes = _read(out)
    kinds = Counter(kind for cl in sc.clients for kind in cl.impairments)
    assert all(kinds[k] >= 2 for k in MATCHING), kinds

    issues: dict[str, list[dict[str, Any]]] = defaultdict(list)
    order: dict[str, list[str]] = defaultdict(list)
    for e in envelopes:
        p = e["payload"]
        if e["type"] == "OBSERVER_EVENT":
            assert_valid_report("OBSERVER_EVENT", p)
            if p["name"] not in ("CLIENT_ISSUE", "CLIENT_ISSUE_RESOLVED"):
                continue  # what the client reported itself, as the reports processor passes it on
            p = {**p, "attachments": json.loads(p["attachments"])}
            issues[p["clientId"]].append(p)
            order[p["clientId"]].append(p["name"])
        elif p["name"] == "CLIENT_LEFT":
            order[p["clientId"]].append("CLIENT_LEFT")
    for client in sc.clients:
        mine = issues[client.client_id]
        raised = {p["value"] for p in mine if p["name"] == "CLIENT_ISSUE"}
        for kind, issue_type in MATCHING.items():
            if kind in client.impairments:
                assert issue_type in raised, (client, kind, raised)
            elif issue_type == "client_lost" and client.generation == "legacy":
                # A 2020 client cannot say goodbye: lost after its last sample too, at the end of the call.
                lost = [p for p in mine if p["value"] == "client_lost" and p["name"] == "CLIENT_ISSUE"]
                assert all(p["attachments"]["startedAt"] == sc.timestamp(client.left_at) for p in lost)
            else:
                assert issue_type not in raised, (client, kind, raised)
        if not client.impairments:
            assert raised <= {"client_lost"} and (not raised or client.generation == "legacy"), (client, raised)
        # Raised once and resolved once per condition, and all of it before the client's CLIENT_LEFT.
        per_condition = Counter(
            (p["value"], p["attachments"].get("peerConnectionId"), p["attachments"].get("ssrc"), p["name"]) for p in mine
        )
        ups = {k[:3]: n for k, n in per_condition.items() if k[3] == "CLIENT_ISSUE"}
        downs = {k[:3]: n for k, n in per_condition.items() if k[3] == "CLIENT_ISSUE_RESOLVED"}
        assert set(ups) == set(downs) and all(ups[k] == downs[k] for k in ups), (client, per_condition)
        assert order[client.client_id][-1] == "CLIENT_LEFT" and order[client.client_id].count("CLIENT_LEFT") == 1, (
            client,
            order[client.client_id],
        )
        if client.dropped:  # lost before the idle timeout ended it
            lost = next(p for p in mine if p["value"] == "client_lost" and p["name"] == "CLIENT_ISSUE")
            assert lost["attachments"]["startedAt"] == sc.timestamp(client.left_at)
            assert lost["timestamp"] - lost["attachments"]["startedAt"] < 4000


# --------------------------------------------------------------------------------------------------
# Real browser calls (tests/fixtures/browser-*.json, no impairment) raise no issue
# --------------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CAPTURES = ("browser-cm3-rest.json", "browser-cm4-ws.json")
CAPTURE_CONFIG = """
receivers:
  observertc: {{endpoint: "127.0.0.1:{port}"}}
processors:
  correlation: {{client_idle_timeout: 10s, call_empty_timeout: 500ms, sweep_interval: 100ms}}
  quality: {{}}
  issues: {{sweep_interval: 100ms}}
  reports: {{include: [CALL_EVENT, OBSERVER_EVENT]}}
exporters:
  file: {{path: "{path}"}}
  prometheus: {{endpoint: "127.0.0.1:{metrics}"}}
service:
  pipelines:
    p: {{receivers: [observertc], processors: [correlation, quality, issues, reports], exporters: [file, prometheus]}}
"""


def _renamed(body: str, prefix: str) -> tuple[str, str]:
    """The message with its client ids prefixed (both captures call their clients alice and bob), and
    the client."""
    message = json.loads(body)
    for sample in message.get("clientSamples", [message]):
        sample["clientId"] = who = f"{prefix}-{sample['clientId']}"
    return json.dumps(message), who


async def _replay(capture: dict[str, Any], base: str, http: Any) -> None:
    """Send a capture's messages at the pace they were recorded: HTTP as POSTs, WebSocket frames on one
    socket per client, as the page had."""
    sockets: dict[str, Any] = {}
    start = time.monotonic()
    try:
        for message in capture["messages"]:
            delay = start + message["at"] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body, who = _renamed(message["body"], capture["library"])
            if message["transport"] == "http":
                headers = {"Content-Type": message["contentType"]}
                async with http.post(base + message["path"], data=body, headers=headers) as resp:
                    assert resp.status == 202, await resp.text()
            else:
                if who not in sockets:
                    sockets[who] = await http.ws_connect(base.replace("http", "ws") + message["path"])
                await sockets[who].send_str(body)
    finally:
        for ws in sockets.values():
            await ws.close()


async def test_real_browser_calls_raise_no_issue(tmp_path, http):
    from tests.test_prometheus_exporter import promtool_check, samples_of

    captures = [json.loads((FIXTURES / name).read_text()) for name in CAPTURES]
    assert all(len(c["messages"]) >= 20 for c in captures)
    port, metrics, out = free_port(), free_port(), tmp_path / "reports.jsonl"
    config = tmp_path / "collector.yaml"
    config.write_text(CAPTURE_CONFIG.format(port=port, metrics=metrics, path=out))
    proc = CollectorProcess(tmp_path / "collector.log", config, port)
    try:
        await proc.wait_ready(http)
        await asyncio.gather(*(_replay(c, proc.url(""), http) for c in captures))
        deadline = time.monotonic() + 20
        while sum(1 for e in _read(out) if e["payload"].get("name") == "CALL_ENDED") < len(captures):
            assert time.monotonic() < deadline, f"the calls did not end:\n{proc.log.read_text()[-3000:]}"
            await asyncio.sleep(0.1)
        async with http.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
            text = await resp.text()
    finally:
        proc.proc.terminate()
        proc.proc.wait(timeout=20)
        proc.close_log()
    envelopes = _read(out)
    left = Counter(e["payload"]["clientId"] for e in envelopes if e["payload"].get("name") == "CLIENT_LEFT")
    assert left == {f"{c['library']}-{who}": 1 for c in captures for who in ("alice", "bob")}
    raised = [e["payload"] for e in envelopes if e["payload"].get("name") in ("CLIENT_ISSUE", "CLIENT_ISSUE_RESOLVED")]
    assert raised == [], [(p["clientId"], p["value"], p["message"]) for p in raised]
    # The issues processor had something to judge: the quality processor measured these calls.
    values = samples_of(text)
    measured = {n: v for (n, _), v in values.items() if n.endswith("_count") and n.startswith("observertc_quality_")}
    for family in ("mos", "fraction_lost_ratio", "round_trip_time_seconds", "jitter_seconds", "bitrate_bytes_per_second"):
        assert sum(v for n, v in measured.items() if n == f"observertc_quality_{family}_count") > 10, (family, measured)
    assert not [v for (n, _), v in values.items() if n == "observertc_issues_total" and v], "no issue counted"
    promtool_check(text)
