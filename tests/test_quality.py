"""The quality processor: the scoring maths against known values, then the processor in a real collector.

The collector tests post real HTTP requests (schemas 2.x and 3.x) to a collector whose pipeline is
``observertc → quality → recording``. They then read the histograms in the collector's telemetry
registry, the one the Prometheus and OTLP exporters publish. A second pipeline, ``raw``
(``observertc → recording/raw``), gets the very batch objects the processor was handed. So it shows the
processor passes them on as they are. Expected values are worked out here from the counters posted.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests import _samples
from webrtc_observer import state, testing
from webrtc_observer.components import config_types
from webrtc_observer.config import ConfigError, load_text
from webrtc_observer.model import Batch, ClientSample, Origin, Report, Track
from webrtc_observer.processors import _emodel
from webrtc_observer.processors.quality import (
    BITRATE_BUCKETS,
    FRACTION_LOST_BUCKETS,
    MOS_BUCKETS,
    RTT_BUCKETS,
    QualityConfig,
    QualityProcessor,
)
from webrtc_observer.testing import RunningCollector, settings_for_tests

JSON = {"Content-Type": "application/json"}
SVC, MU = "svc", "web-app"
T0 = _samples.T0


# --------------------------------------------------------------------------------------------------
# The maths (processors/_emodel.py)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "mos"),
    [
        (93.2, 4.409),  # G.107 default connection
        (90, 4.339),  # G.109 band edges: 4.34, 4.03 (4.024 computed), 3.60, 3.10, 2.58
        (80, 4.024),
        (70, 3.597),
        (60, 3.100),
        (50, 2.575),
        (0, 1.0),
        (-10, 1.0),
        (3, 1.0),  # the cubic dips under 1 for 0 < R < 6.5: clamped
        (100, 4.5),
        (120, 4.5),
    ],
)
def test_mos_from_r_is_g107_annex_b(r, mos):
    assert _emodel.mos_from_r(r) == pytest.approx(mos, abs=5e-4)


def test_mos_from_r_is_monotonic_and_within_range():
    values = [_emodel.mos_from_r(r / 10) for r in range(-100, 1200)]
    assert all(1.0 <= v <= 4.5 for v in values)
    assert all(b >= a for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(("d", "impairment"), [(0, 0.0), (-5, 0.0), (100, 2.4), (177.3, 4.2552), (200, 7.297), (400, 34.097)])
def test_delay_impairment_is_cole_rosenbluth(d, impairment):
    assert _emodel.delay_impairment(d) == pytest.approx(impairment, abs=1e-3)


def test_effective_equipment_impairment_is_g107_eq_7_29():
    assert _emodel.effective_equipment_impairment(0) == 0.0
    assert _emodel.effective_equipment_impairment(2) == pytest.approx(95 * 2 / 27.1)  # G.711+PLC, Bpl 25.1
    assert _emodel.effective_equipment_impairment(0, ie=11, bpl=19) == 11  # G.729A+VAD (G.113 App. I)
    assert _emodel.effective_equipment_impairment(5, ie=11, bpl=19) == pytest.approx(11 + 84 * 5 / 24)
    assert _emodel.effective_equipment_impairment(250) == _emodel.effective_equipment_impairment(100)
    assert _emodel.effective_equipment_impairment(4, burst_ratio=2) == pytest.approx(95 * 4 / 27.1)


def test_audio_mos():
    assert _emodel.r_factor(0, 0) == 93.2
    assert _emodel.audio_mos(0, 0, 0, codec_delay=0) == pytest.approx(4.409, abs=5e-4)
    # 50 ms RTT, 8 ms jitter buffer, Opus's 26.5 ms: d = 59.5 ms, Id = 1.428, R = 91.772
    assert _emodel.one_way_delay(0.05, 0.008) == pytest.approx(0.0595)
    assert _emodel.audio_mos(0.05, 0.008, 0) == pytest.approx(_emodel.mos_from_r(91.772))
    assert _emodel.audio_mos(0.05, 0.008, 0) == pytest.approx(4.380, abs=5e-4)
    # 1 % loss costs 95/26.1 = 3.64 R; 20 % loss is a poor call; 600 ms RTT alone is a mediocre one
    assert _emodel.audio_mos(0.05, 0.008, 0.01) == pytest.approx(_emodel.mos_from_r(91.772 - 95 / 26.1))
    assert _emodel.audio_mos(0.05, 0.008, 0.2) < 3.1
    assert 3.1 < _emodel.audio_mos(0.6, 0.02, 0) < 4.03
    assert _emodel.audio_mos(5, 1, 1) == 1.0
    losses = [_emodel.audio_mos(0.1, 0.02, p / 100) for p in range(101)]
    assert all(b <= a for a, b in itertools.pairwise(losses))


def test_video_mos_is_the_bits_per_pixel_curve():
    assert _emodel.bits_per_pixel(1_000_000, 1280, 720, 30) == pytest.approx(1e6 / (1280 * 720 * 30))
    assert _emodel.bits_per_pixel(0, 1280, 720, 30) is None
    assert _emodel.bits_per_pixel(1e6, 0, 720, 30) is None
    assert _emodel.bits_per_pixel(1e6, 1280, 720, 0) is None
    assert _emodel.video_mos(0.1) == pytest.approx(0.56 * math.log(0.1) + 5.36)
    assert _emodel.video_mos(0.1) == pytest.approx(4.0706, abs=1e-4)
    assert _emodel.video_mos(0.01) == pytest.approx(2.7811, abs=1e-4)
    assert _emodel.video_mos(1.0) == 4.5
    assert _emodel.video_mos(1e-5) == 1.0
    assert _emodel.video_mos(0) == 1.0


# --------------------------------------------------------------------------------------------------
# Through a real collector
# --------------------------------------------------------------------------------------------------


def _yaml(options: dict[str, Any] | None = None, refuse: bool = False) -> str:
    return f"""
receivers:
  observertc:
    endpoint: 127.0.0.1:0
processors:
  quality: {json.dumps(options or {})}
exporters:
  recording: {{refuse: {json.dumps(refuse)}}}
  recording/raw: {{}}
service:
  pipelines:
    quality:
      receivers: [observertc]
      processors: [quality]
      exporters: [recording]
    raw:
      receivers: [observertc]
      exporters: [recording/raw]
"""


@asynccontextmanager
async def collector(options: dict[str, Any] | None = None, refuse: bool = False) -> AsyncIterator[RunningCollector]:
    async with testing.running_collector(_yaml(options, refuse)) as running:
        yield running


async def post(c: RunningCollector, http, body: dict[str, Any], status: int = 202) -> None:
    async with http.post(c.url(f"/rest/samples/{SVC}/{MU}"), data=json.dumps(body), headers=JSON) as resp:
        assert resp.status == status, await resp.text()


def series(c: RunningCollector, name: str) -> dict[tuple[str, ...], Any]:
    metric = c.telemetry.get(name)
    return {} if metric is None else metric.series()


def processor(c: RunningCollector) -> QualityProcessor:
    [(_, _, instance)] = c.service.processors
    return instance


def v2(ts: int, step: int, client_id: str = "c-alice") -> dict[str, Any]:
    """The fixture's 2.x sample at ``ts``, its counters advanced ``step`` times by 5 s worth of media.

    Each step: inbound audio +250 packets (+2 lost), +20 000 bytes; inbound video +450 packets,
    +150 frames, +500 000 bytes; outbound audio +20 000 bytes; outbound video +500 000 bytes.
    """
    s = _samples.client_sample_v2(client_id=client_id, ts=ts)
    s["inboundAudioTracks"][0].update(
        packetsReceived=500 + 250 * step, packetsLost=3 + 2 * step, bytesReceived=40_000 + 20_000 * step
    )
    s["inboundVideoTracks"][0].update(
        packetsReceived=900 + 450 * step, framesDecoded=300 + 150 * step, bytesReceived=1_000_000 + 500_000 * step
    )
    s["outboundAudioTracks"][0].update(bytesSent=40_000 + 20_000 * step)
    s["outboundVideoTracks"][0].update(bytesSent=900_000 + 500_000 * step)
    return s


def wrapper(*client_samples: dict[str, Any]) -> dict[str, Any]:
    return _samples.samples_v2(*client_samples, sfu=False)


async def test_two_consecutive_samples_give_every_histogram(http):
    async with collector() as c:
        await post(c, http, wrapper(v2(T0, 0)))
        await post(c, http, wrapper(v2(T0 + 5000, 1)))

        audio, video = (SVC, MU, "audio"), (SVC, MU, "video")

        # RTT, per track and sample: audio tracks carry their own (50 and 48 ms); the video tracks have
        # none, so their peer connection's candidate pair answers (42 ms).
        rtt = series(c, "quality_round_trip_time")
        assert set(rtt) == {audio, video}
        assert rtt[audio].count == 4 and rtt[audio].sum == pytest.approx(2 * (0.05 + 0.048))
        assert rtt[video].count == 4 and rtt[video].sum == pytest.approx(4 * 0.042)
        assert rtt[audio].counts[RTT_BUCKETS.index(0.05)] == 4  # le=0.05 holds 48 and 50 ms
        assert rtt[video].counts[RTT_BUCKETS.index(0.05)] == 4

        jitter = series(c, "quality_jitter")
        assert set(jitter) == {audio}  # only the inbound audio track reports jitter here
        assert jitter[audio].count == 2 and jitter[audio].sum == pytest.approx(0.008)

        # Fraction lost: inbound from the deltas (2 lost of 252 expected; video lost none), outbound as
        # reported (0.0 in both samples).
        lost = series(c, "quality_fraction_lost")
        assert lost[audio].count == 3 and lost[audio].sum == pytest.approx(2 / 252)
        assert lost[audio].counts[FRACTION_LOST_BUCKETS.index(0.0)] == 2
        assert lost[audio].counts[FRACTION_LOST_BUCKETS.index(0.01)] == 1
        assert lost[video].count == 1 and lost[video].sum == 0.0

        # Bitrate in bytes per second (Prometheus' base unit): 32 kbit/s is 4 kB/s, 800 kbit/s 100 kB/s.
        bitrate = series(c, "quality_bitrate")
        assert {k: (v.count, v.sum) for k, v in bitrate.items()} == {
            (SVC, MU, "audio", "inbound"): (1, pytest.approx(4_000)),
            (SVC, MU, "audio", "outbound"): (1, pytest.approx(4_000)),
            (SVC, MU, "video", "inbound"): (1, pytest.approx(100_000)),
            (SVC, MU, "video", "outbound"): (1, pytest.approx(100_000)),
        }
        assert bitrate[(SVC, MU, "audio", "inbound")].counts[BITRATE_BUCKETS.index(4e3)] == 1
        assert bitrate[(SVC, MU, "video", "outbound")].counts[BITRATE_BUCKETS.index(125e3)] == 1

        # MOS, inbound only. Audio: RTT 50 ms, jitter buffer 2 × 4 ms, loss 2/252. Video: 800 kbit/s
        # over 640×480 at 30 fps (150 frames in 5 s).
        mos = series(c, "quality_mos")
        assert mos[audio].count == 1
        assert mos[audio].sum == pytest.approx(_emodel.audio_mos(0.05, 0.008, 2 / 252))
        assert 4.2 < mos[audio].sum < 4.34
        assert mos[video].count == 1
        assert mos[video].sum == pytest.approx(_emodel.video_mos(800_000 / (640 * 480 * 30)))
        assert 3.6 < mos[video].sum < 4.03 and mos[video].counts[MOS_BUCKETS.index(4.03)] == 1

        assert series(c, "quality_client_score") == {}  # 2.x samples carry no score

        # The batches went on with what was measured added: the very samples the raw pipeline got, and
        # one TrackQuality per track and sample, with the numbers the histograms got.
        quality, raw = c.exporter("recording").batches, c.exporter("recording/raw").batches
        assert len(quality) == len(raw) == 2
        for a, b in zip(quality, raw, strict=True):
            assert a is not b and all(x is y for x, y in zip(a.samples, b.samples, strict=True))
            assert (a.reports, a.partition, a.time) == (b.reports, b.partition, b.time) and b.quality == []
        first, second = quality[0].quality, quality[1].quality
        assert len(first) == len(second) == 4
        assert all(q.interval is None and q.bitrate is None and q.mos is None for q in first)
        measured = {(q.direction, q.kind): q for q in second}
        assert set(measured) == {("inbound", "audio"), ("inbound", "video"), ("outbound", "audio"), ("outbound", "video")}
        audio_in, video_in = measured[("inbound", "audio")], measured[("inbound", "video")]
        assert (audio_in.client_id, audio_in.service_id, audio_in.media_unit_id) == ("c-alice", SVC, MU)
        assert audio_in.interval == 5.0 and audio_in.packets_delta == 250 and audio_in.bytes_delta == 20_000
        assert audio_in.bitrate == pytest.approx(32_000) and audio_in.fraction_lost == pytest.approx(2 / 252)
        assert audio_in.mos == pytest.approx(mos[audio].sum) and audio_in.rtt == pytest.approx(0.05)
        assert video_in.frames_delta == 150 and video_in.fps == pytest.approx(30.0)
        assert (video_in.frame_width, video_in.frame_height) == (640, 480)
        assert video_in.mos == pytest.approx(mos[video].sum) and video_in.bitrate == pytest.approx(800_000)
        assert measured[("outbound", "video")].bitrate == pytest.approx(800_000)
        assert audio_in.ssrc == raw[1].samples[0].inbound_tracks[0].ssrc and audio_in.timestamp == T0 + 5000
        assert processor(c).tracked == 4
        assert c.telemetry.get("quality_tracks").value("quality") == 4


async def test_metric_metadata():
    async with collector() as c:
        t = c.telemetry
        expected = {
            "quality_round_trip_time": ("seconds", ("service_id", "media_unit_id", "kind")),
            "quality_jitter": ("seconds", ("service_id", "media_unit_id", "kind")),
            "quality_fraction_lost": ("ratio", ("service_id", "media_unit_id", "kind")),
            "quality_bitrate": ("bytes_per_second", ("service_id", "media_unit_id", "kind", "direction")),
            "quality_mos": ("", ("service_id", "media_unit_id", "kind")),
            "quality_client_score": ("", ("service_id", "media_unit_id")),
        }
        for name, (unit, labels) in expected.items():
            metric = t.get(name)
            assert metric is not None and metric.kind == "histogram", name
            assert (metric.unit, metric.labels) == (unit, labels), name
            assert list(metric.buckets) == sorted(metric.buckets) and metric.description


async def test_the_3x_client_score_and_candidate_pair_rtt(http):
    async with collector() as c:
        await post(c, http, _samples.client_sample_v3())
        score = series(c, "quality_client_score")
        assert set(score) == {(SVC, MU)}
        assert score[(SVC, MU)].count == 1 and score[(SVC, MU)].sum == pytest.approx(4.534)
        # The golden sample's tracks have no roundTripTime of their own: its candidate pair's 124 ms.
        rtt = series(c, "quality_round_trip_time")
        assert rtt[(SVC, MU, "audio")].count == 2 and rtt[(SVC, MU, "audio")].sum == pytest.approx(0.248)
        assert rtt[(SVC, MU, "video")].count == 2
        assert series(c, "quality_jitter")[(SVC, MU, "audio")].sum == pytest.approx(0.019)
        assert series(c, "quality_bitrate") == {}  # one sample: no delta yet


async def test_a_second_3x_sample_gives_deltas(http):
    first = _samples.client_sample_v3()
    second = copy.deepcopy(first)
    second["timestamp"] = first["timestamp"] + 2000
    pc = second["peerConnections"][0]
    pc["inboundRtps"][0].update(bytesReceived=41_980 + 8_000, packetsReceived=142 + 100, packetsLost=0)
    pc["outboundRtps"][1].update(bytesSent=598_290 + 250_000)
    async with collector() as c:
        await post(c, http, first)
        await post(c, http, second)
        bitrate = series(c, "quality_bitrate")
        assert bitrate[(SVC, MU, "audio", "inbound")].sum == pytest.approx(4_000)
        assert bitrate[(SVC, MU, "video", "outbound")].sum == pytest.approx(125_000)
        assert series(c, "quality_client_score")[(SVC, MU)].count == 2
        mos = series(c, "quality_mos")
        # no loss, 124 ms RTT, jitter buffer 2 × 19 ms: d = 62 + 38 + 26.5 ms
        assert mos[(SVC, MU, "audio")].sum == pytest.approx(_emodel.audio_mos(0.124, 0.038, 0.0))


async def test_a_counter_reset_gives_no_negative_bitrate(http):
    restarted = v2(T0 + 5000, 0)
    restarted["inboundAudioTracks"][0].update(packetsReceived=10, packetsLost=0, bytesReceived=1_000)
    restarted["outboundVideoTracks"][0].update(bytesSent=2_000)
    after = v2(T0 + 10_000, 0)
    after["inboundAudioTracks"][0].update(packetsReceived=260, packetsLost=0, bytesReceived=21_000)
    after["outboundVideoTracks"][0].update(bytesSent=502_000)
    async with collector() as c:
        await post(c, http, wrapper(v2(T0, 3)))
        await post(c, http, wrapper(restarted))
        bitrate = series(c, "quality_bitrate")
        assert (SVC, MU, "audio", "inbound") not in bitrate
        assert (SVC, MU, "video", "outbound") not in bitrate
        assert all(v.sum >= 0 and v.counts[0] == 0 for v in bitrate.values())  # nothing at or under 1 kbit/s
        await post(c, http, wrapper(after))  # measured from the reset values
        bitrate = series(c, "quality_bitrate")
        assert bitrate[(SVC, MU, "audio", "inbound")].count == 1
        assert bitrate[(SVC, MU, "audio", "inbound")].sum == pytest.approx(4_000)
        assert bitrate[(SVC, MU, "video", "outbound")].sum == pytest.approx(100_000)
        assert all(v.sum >= 0 for v in bitrate.values())
        lost = series(c, "quality_fraction_lost")
        assert all(0 <= v.sum <= v.count for v in lost.values())


async def test_state_stays_bounded_by_max_tracks(http):
    # Each client has 4 tracks; past max_tracks the least recently updated clients go, whole.
    async with collector({"max_tracks": 8}) as c:
        for i in range(5):
            await post(c, http, wrapper(v2(T0, 0, client_id=f"c-{i}")))
            assert processor(c).tracked <= 8
        assert processor(c).tracked == 8
        assert c.telemetry.get("quality_tracks").value("quality") == 8
        assert c.telemetry.get("quality_tracks_evicted").value("quality", "max_tracks") == 3 * 4
        # The last client is kept, so its next sample gives a delta; the first starts afresh.
        await post(c, http, wrapper(v2(T0 + 5000, 1, client_id="c-4")))
        await post(c, http, wrapper(v2(T0 + 5000, 1, client_id="c-0")))
        bitrate = series(c, "quality_bitrate")
        assert {labels: v.count for labels, v in bitrate.items()} == {
            (SVC, MU, "audio", "inbound"): 1,
            (SVC, MU, "video", "inbound"): 1,
            (SVC, MU, "audio", "outbound"): 1,
            (SVC, MU, "video", "outbound"): 1,
        }
        assert processor(c).tracked == 8


async def test_one_client_with_more_tracks_than_allowed_keeps_the_first(http):
    async with collector({"max_tracks": 2}) as c:
        await post(c, http, wrapper(v2(T0, 0)))
        assert processor(c).tracked == 2
        assert c.telemetry.get("quality_tracks_evicted").value("quality", "max_tracks") == 2


async def test_a_track_the_client_stops_reporting_is_forgotten(http):
    async with collector() as c:
        await post(c, http, wrapper(v2(T0, 0)))
        assert processor(c).tracked == 4
        fewer = v2(T0 + 5000, 1)
        fewer.update(inboundVideoTracks=[], outboundVideoTracks=[])
        await post(c, http, wrapper(fewer))
        assert processor(c).tracked == 2
        assert c.telemetry.get("quality_tracks").value("quality") == 2


async def test_a_client_that_leaves_is_forgotten_at_once(http):
    # After the correlation processor, quality sees the CLIENT_LEFT event of a leaving client.
    yaml_text = _yaml().replace("processors: [quality]", "processors: [correlation, quality]")
    yaml_text = yaml_text.replace("processors:\n  quality:", "processors:\n  correlation: {}\n  quality:")
    async with testing.running_collector(yaml_text) as c:
        await post(c, http, wrapper(v2(T0, 0), v2(T0, 0, client_id="c-bob")))
        quality = next(p for _, pid, p in c.service.processors if pid.type == "quality")
        assert quality.tracked == 8
        await post(c, http, _samples.samples_v2(v2(T0 + 5000, 1), sfu=False, close=True))
        assert quality.tracked == 4
        assert c.telemetry.get("quality_tracks_evicted").value("quality", "left") == 4


async def test_a_resent_sample_is_counted_once(http):
    async with collector() as c:
        body = wrapper(v2(T0, 0))
        await post(c, http, body)
        await post(c, http, body)
        assert series(c, "quality_round_trip_time")[(SVC, MU, "audio")].count == 2  # two tracks, once
        assert series(c, "quality_fraction_lost")[(SVC, MU, "audio")].count == 1  # outbound, reported


async def test_a_refused_batch_is_not_counted(http):
    async with collector(refuse=True) as c:
        await post(c, http, _samples.client_sample_v3(), status=503)
        assert series(c, "quality_client_score") == {}
        assert processor(c).tracked == 0


async def test_mos_can_be_turned_off(http):
    async with collector({"mos": False}) as c:
        await post(c, http, wrapper(v2(T0, 0)))
        await post(c, http, wrapper(v2(T0 + 5000, 1)))
        assert series(c, "quality_mos") == {}
        assert series(c, "quality_bitrate")  # the rest is still measured


def test_config_defaults_and_errors():
    config = QualityConfig()
    assert (config.max_tracks, config.track_idle_timeout, config.mos) == (100_000, 300.0, True)
    types = config_types(testing.testing_factories())
    loaded = load_text(_yaml({"max_tracks": 10, "track_idle_timeout": "90s", "mos": False}), types)
    [options] = [o for cid, o in loaded.components["processors"].items() if cid.type == "quality"]
    assert (options.max_tracks, options.track_idle_timeout, options.mos) == (10, 90.0, False)
    with pytest.raises(ConfigError) as err:
        load_text(_yaml({"max_tracks": 0, "track_idle_timeout": "0s"}), types)
    messages = {i.path: i.message for i in err.value.issues}
    assert set(messages) == {"processors.quality.max_tracks", "processors.quality.track_idle_timeout"}
    assert "at least 1" in messages["processors.quality.max_tracks"]


# --------------------------------------------------------------------------------------------------
# The processor alone, with a controlled clock and hand-made samples
# --------------------------------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ORIGIN = Origin(service_id=SVC, media_unit_id=MU, received_at=1, generation="2")


def _sample(ts: int, stats: dict[str, Any], client_id: str = "c", kind: str = "audio") -> ClientSample:
    return ClientSample(
        origin=ORIGIN,
        client_id=client_id,
        timestamp=ts,
        inbound_tracks=[Track(kind=kind, ssrc=1, peer_connection_id="pc", stats=stats)],  # type: ignore[arg-type]
    )


def _standalone(**options: Any) -> tuple[QualityProcessor, _Sink, _Clock, Any]:
    settings = settings_for_tests("quality", kind="processor")
    sink, clock = _Sink(), _Clock()
    return QualityProcessor(settings, QualityConfig(**options), sink, clock=clock), sink, clock, settings.telemetry


async def test_idle_tracks_are_forgotten():
    quality, _, clock, telemetry = _standalone(track_idle_timeout=60.0)
    await quality.consume(Batch(samples=[_sample(T0, {"bytesReceived": 0})]))
    clock.now += 59
    await quality.consume(Batch(samples=[_sample(T0 + 5000, {"bytesReceived": 20_000})]))
    assert telemetry.get("quality_bitrate").series()[(SVC, MU, "audio", "inbound")].count == 1
    clock.now += 61  # idle: swept at the next batch, whatever it holds
    await quality.consume(Batch())
    assert quality.tracked == 0
    assert telemetry.get("quality_tracks_evicted").value("quality", "idle") == 1
    await quality.consume(Batch(samples=[_sample(T0 + 70_000, {"bytesReceived": 40_000})]))
    assert telemetry.get("quality_bitrate").series()[(SVC, MU, "audio", "inbound")].count == 1  # no delta
    assert quality.tracked == 1


async def test_the_batch_is_passed_on_with_its_quality_and_nothing_else_changed():
    quality, sink, _, _ = _standalone()
    sample = _sample(T0, {"bytesReceived": 5, "jitter": 0.01})
    before = copy.deepcopy(sample)
    batch = Batch(samples=[sample], reports=[_left("other")], partition=None, time=T0)
    await quality.consume(batch)
    [out] = sink.batches
    assert out is not batch and batch.quality == [], "the batch received is not changed"
    assert out.samples[0] is sample and out.reports == batch.reports and out.time == T0
    assert sample == before
    [q] = out.quality
    assert (q.client_id, q.peer_connection_id, q.ssrc, q.direction, q.kind) == ("c", "pc", 1, "inbound", "audio")
    assert q.jitter == 0.01 and q.interval is None and q.bytes_delta is None
    # Nothing measured (no tracks; a tick): the very batch goes on.
    for nothing in (Batch(samples=[ClientSample(origin=ORIGIN, client_id="s", timestamp=T0)]), Batch(partition=1, time=T0)):
        await quality.consume(nothing)
        assert sink.batches[-1] is nothing


async def test_the_quality_says_whose_track_it_is():
    """What the live view learns its tracks from: the sample's call, room and user, the track's id and sender."""
    quality, sink, _, _ = _standalone()
    track = Track(kind="video", ssrc=7, peer_connection_id="pc", track_id="t-7", stats={"bytesReceived": 5})
    track.remote_client_id, track.remote_user_id = "bob", "user-bob"
    sample = _sample(T0, {})
    sample.call_id, sample.room_id, sample.user_id, sample.inbound_tracks = "call", "room", "user-alice", [track]
    await quality.consume(Batch(samples=[sample, _sample(T0, {}, client_id="anonymous")]))
    [q, anonymous] = sink.batches[-1].quality
    assert (q.call_id, q.room_id, q.client_id, q.user_id) == ("call", "room", "c", "user-alice")
    assert (q.track_id, q.remote_client_id, q.remote_user_id, q.kind, q.ssrc) == ("t-7", "bob", "user-bob", "video", 7)
    assert (anonymous.room_id, anonymous.user_id, anonymous.remote_client_id, anonymous.remote_user_id) == (None,) * 4


async def test_outbound_quality_limitation_and_frozen_video_show_in_the_quality():
    quality, sink, _, _ = _standalone()
    video = {"packetsReceived": 100, "framesDecoded": 50, "bytesReceived": 10_000, "frameWidth": 640, "frameHeight": 360}
    out = {"packetsSent": 100, "bytesSent": 10_000, "framesEncoded": 50, "qualityLimitationReason": "cpu"}

    def sample(ts: int, inbound: dict[str, Any], outbound: dict[str, Any]) -> ClientSample:
        return ClientSample(
            origin=ORIGIN,
            client_id="c",
            timestamp=ts,
            inbound_tracks=[Track(kind="video", ssrc=1, peer_connection_id="pc", stats=inbound)],
            outbound_tracks=[Track(kind="video", ssrc=2, peer_connection_id="pc", stats=outbound)],
        )

    await quality.consume(Batch(samples=[sample(T0, video, out)]))
    frozen = {**video, "packetsReceived": 400, "bytesReceived": 310_000}  # packets flow, no frame decoded
    await quality.consume(Batch(samples=[sample(T0 + 2000, frozen, {**out, "packetsSent": 160, "framesEncoded": 110})]))
    inbound, outbound = sink.batches[-1].quality
    assert (inbound.packets_delta, inbound.frames_delta, inbound.fps) == (300, 0, 0.0)
    assert inbound.mos is None, "a frozen picture gives no MOS"
    assert (outbound.packets_delta, outbound.frames_delta, outbound.fps) == (60, 60, 30.0)
    assert outbound.quality_limitation == "cpu" and inbound.quality_limitation is None
    none = {**out, "packetsSent": 200, "qualityLimitationReason": "none"}
    await quality.consume(Batch(samples=[sample(T0 + 4000, frozen, none)]))
    assert sink.batches[-1].quality[1].quality_limitation is None


async def test_short_intervals_keep_the_older_baseline():
    quality, _, _, telemetry = _standalone()
    await quality.consume(Batch(samples=[_sample(T0, {"bytesReceived": 0})]))
    await quality.consume(Batch(samples=[_sample(T0 + 50, {"bytesReceived": 1_500})]))  # 50 ms later
    assert telemetry.get("quality_bitrate") is not None
    assert telemetry.get("quality_bitrate").series() == {}
    await quality.consume(Batch(samples=[_sample(T0 + 4000, {"bytesReceived": 16_000})]))
    bitrate = telemetry.get("quality_bitrate").series()[(SVC, MU, "audio", "inbound")]
    assert bitrate.count == 1 and bitrate.sum == pytest.approx(4_000)  # 32 kbit/s over 4 s from the first


async def test_out_of_order_and_zero_interval_samples_are_skipped():
    quality, _, _, telemetry = _standalone()
    await quality.consume(Batch(samples=[_sample(T0 + 5000, {"bytesReceived": 20_000, "jitter": 0.01})]))
    await quality.consume(Batch(samples=[_sample(T0, {"bytesReceived": 0, "jitter": 0.01})]))
    await quality.consume(Batch(samples=[_sample(T0 + 5000, {"bytesReceived": 20_000, "jitter": 0.01})]))
    assert telemetry.get("quality_bitrate").series() == {}
    assert telemetry.get("quality_jitter").series()[(SVC, MU, "audio")].count == 1


async def test_broken_values_are_skipped_not_fatal():
    quality, sink, _, telemetry = _standalone()
    junk = {
        "roundTripTime": -1.0,
        "jitter": "0.01",
        "packetsReceived": True,
        "packetsLost": float("nan"),
        "bytesReceived": 1e300,
        "frameWidth": "wide",
    }
    samples = [
        _sample(T0, junk, kind="video"),
        _sample(T0 + 5000, {**junk, "bytesReceived": float("inf"), "jitter": 1e9}, kind="video"),
        ClientSample(origin=ORIGIN, client_id="s", timestamp=T0, score=float("nan")),
        ClientSample(origin=ORIGIN, client_id="s", timestamp=T0, score=7.0),
        ClientSample(origin=ORIGIN, client_id="s", timestamp=T0, score=-1.0),
    ]
    await quality.consume(Batch(samples=samples))
    assert len(sink.batches) == 1
    for name in ("quality_round_trip_time", "quality_jitter", "quality_fraction_lost", "quality_bitrate", "quality_mos"):
        assert telemetry.get(name).series() == {}, name
    assert telemetry.get("quality_client_score").series() == {}
    assert telemetry.get("quality_failed_samples").value("quality") == 0


async def test_audio_mos_uses_the_measured_jitter_buffer_and_duplicates_count_as_no_loss():
    quality, _, _, telemetry = _standalone()
    first = {
        "packetsReceived": 1000,
        "packetsLost": 10,
        "jitter": 0.005,
        "roundTripTime": 0.1,
        "jitterBufferDelay": 48_000.0,  # 480 000 samples that waited 100 ms each
        "jitterBufferEmittedCount": 480_000,
    }
    # 5 s later: 250 packets more, packetsLost down by 2 (duplicates), 240 000 more samples at 100 ms
    second = {
        **first,
        "packetsReceived": 1250,
        "packetsLost": 8,
        "jitterBufferDelay": 72_000.0,
        "jitterBufferEmittedCount": 720_000,
    }
    await quality.consume(Batch(samples=[_sample(T0, first)]))
    await quality.consume(Batch(samples=[_sample(T0 + 5000, second)]))
    lost = telemetry.get("quality_fraction_lost").series()[(SVC, MU, "audio")]
    assert (lost.count, lost.sum) == (1, 0.0)
    mos = telemetry.get("quality_mos").series()[(SVC, MU, "audio")]
    assert mos.count == 1 and mos.sum == pytest.approx(_emodel.audio_mos(0.1, 0.1, 0.0))


async def test_candidate_pair_choice():
    quality, _, _, telemetry = _standalone()
    sample = ClientSample(
        origin=ORIGIN,
        client_id="c",
        timestamp=T0,
        inbound_tracks=[Track(kind="video", ssrc=1, peer_connection_id="pc", stats={})],
        transports=[{"peerConnectionId": "pc", "selectedCandidatePairId": "B"}],
        candidate_pairs=[
            {
                "peerConnectionId": "pc",
                "candidatePairId": "A",
                "nominated": True,
                "state": "succeeded",
                "currentRoundTripTime": 0.3,
            },
            {"peerConnectionId": "pc", "candidatePairId": "B", "currentRoundTripTime": 0.02},
            {"peerConnectionId": "other", "candidatePairId": "C", "currentRoundTripTime": 0.9},
        ],
    )
    await quality.consume(Batch(samples=[sample]))
    rtt = telemetry.get("quality_round_trip_time").series()[(SVC, MU, "video")]
    assert (rtt.count, rtt.sum) == (1, pytest.approx(0.02))


# --------------------------------------------------------------------------------------------------
# State per partition: it moves with its partition (webrtc_observer.state)
# --------------------------------------------------------------------------------------------------

HISTOGRAMS = (
    "quality_round_trip_time",
    "quality_jitter",
    "quality_fraction_lost",
    "quality_bitrate",
    "quality_mos",
    "quality_client_score",
)


def _listen(telemetry: Any) -> list[tuple[str, float, tuple[str, ...]]]:
    """Every histogram observation of the processor, in order, as (metric, value, labels)."""
    seen: list[tuple[str, float, tuple[str, ...]]] = []
    for name in HISTOGRAMS:
        telemetry.get(name).add_listener(lambda value, labels, name=name: seen.append((name, value, tuple(labels))))
    return seen


def _media(ts: int, step: int, client_id: str, received_at: int | None = None) -> ClientSample:
    """A client with an inbound audio and an outbound video track, counters advanced ``step`` times."""
    origin = Origin(service_id=SVC, media_unit_id=MU, received_at=ts if received_at is None else received_at, generation="2")
    inbound = {
        "packetsReceived": 500 + 250 * step,
        "packetsLost": 3 + 2 * step + (step % 3),
        "bytesReceived": 40_000 + 20_000 * step,
        "jitter": 0.004 + 0.001 * step,
        "roundTripTime": 0.05,
    }
    outbound = {"bytesSent": 900_000 + 500_000 * step + 1000 * (step % 2), "framesEncoded": 300 + 150 * step}
    return ClientSample(
        origin=origin,
        client_id=client_id,
        timestamp=ts,
        score=3.5 + step % 2,
        inbound_tracks=[Track(kind="audio", ssrc=11, peer_connection_id="pc", stats=inbound)],  # type: ignore[arg-type]
        outbound_tracks=[Track(kind="video", ssrc=22, peer_connection_id="pc", stats=outbound)],  # type: ignore[arg-type]
    )


def _left(client_id: str) -> Report:
    payload = {"serviceId": SVC, "timestamp": T0, "name": "CLIENT_LEFT", "clientId": client_id, "callId": "call"}
    return Report(type="CALL_EVENT", payload=payload)


def _client_key(client_id: str) -> bytes:
    return state.encode(("client", SVC, client_id))


def _restored(changes: dict[bytes, bytes | None]) -> dict[bytes, bytes]:
    """What a changelog gives back: the latest value of each key, tombstones left out, in another order."""
    return {k: v for k, v in reversed(list(changes.items())) if v is not None}


async def test_state_moves_with_its_partition_and_observes_the_same():
    # max_tracks=4 holds two clients of two tracks: a third one evicts the least recently updated
    # (c-b, updated before c-a although it sorts after it), so the LRU order must survive the move.
    a, _, a_clock, a_tel = _standalone(max_tracks=4, track_idle_timeout=30.0)
    for step, client_id in ((0, "c-b"), (0, "c-a"), (1, "c-b"), (1, "c-a")):
        ts = T0 + 5000 * step + (1 if client_id == "c-a" else 0)
        await a.consume(Batch(samples=[_media(ts, step, client_id)], partition=3))
    assert a.tracked == 4
    checkpoint = a.changes(3)
    assert set(checkpoint) == {_client_key("c-a"), _client_key("c-b"), state.encode(("clock", "", ""))}

    b, _, b_clock, b_tel = _standalone(max_tracks=4, track_idle_timeout=30.0)
    b.assign(3, _restored(checkpoint))
    assert b.tracked == 4 and b_tel.get("quality_tracks").value("quality") == 4
    a_seen, b_seen = _listen(a_tel), _listen(b_tel)
    b_clock.now = a_clock.now + 10_000  # another machine's wall clock: partitions never read it

    later = [
        Batch(samples=[_media(T0 + 10_000, 0, "c-c")], partition=3),  # over max_tracks: c-b goes, not c-a
        Batch(samples=[_media(T0 + 10_000, 2, "c-a")], partition=3),  # a delta only if c-a was kept
        Batch(samples=[_media(T0 + 15_000, 1, "c-c")], partition=3, reports=[_left("c-c")]),
        Batch(partition=3, time=T0 + 40_001),  # a tick: c-a, last heard at 10 s, has idled out (30 s)
        Batch(samples=[_media(T0 + 45_000, 2, "c-b")], partition=3),  # back, afresh: no delta
        Batch(samples=[_media(T0 + 50_000, 3, "c-b")], partition=3),
    ]
    for batch in later:
        await a.consume(batch)
        await b.consume(batch)
    assert a_seen == b_seen
    names = {name for name, _, _ in a_seen}
    assert names == set(HISTOGRAMS), "every histogram was observed after the move"
    assert a.tracked == b.tracked == 2
    for reason in ("idle", "left", "max_tracks"):
        assert a_tel.get("quality_tracks_evicted").value("quality", reason) == 2, reason
        assert b_tel.get("quality_tracks_evicted").value("quality", reason) == 2, reason
    assert a.changes(3) == b.changes(3), "both hold the same state, entry for entry"


async def test_a_tracks_counters_are_kept_packed_and_checkpointed_as_eight_numbers():
    quality, _, _, _ = _standalone()
    await quality.consume(Batch(samples=[_sample(T0, {"bytesReceived": 5, "packetsReceived": 1})], partition=3))
    [client] = quality._parts[3].clients.values()
    [kept] = client.tracks.values()
    assert sys.getsizeof(kept) <= 112, "eight doubles in one object: about 105 bytes (an array of them takes 144)"
    entry = quality.changes(3)[_client_key("c")]
    assert entry is not None
    [[pc, inbound, ssrc, numbers]] = state.decode(entry)[3]
    assert (pc, inbound, ssrc) == ("pc", True, 1)
    assert numbers[:4] == [T0, T0, 5.0, 1.0] and len(numbers) == 8 and all(isinstance(n, float) for n in numbers)


async def test_the_partition_clock_moves_too():
    a, _, _, _ = _standalone(track_idle_timeout=60.0)
    await a.consume(Batch(samples=[_media(T0, 0, "c")], partition=3))
    await a.consume(Batch(partition=3, time=T0 + 50_000))
    b, _, _, _ = _standalone(track_idle_timeout=60.0)
    b.assign(3, _restored(a.changes(3)))
    assert b.changes(3) == {}, "nothing changed since the restore"
    # A record older than the partition's time (another ingest process's clock): time does not go
    # back, so the late client is heard from at 50 s and outlives the tick at 70 s.
    for batch in (
        Batch(samples=[_media(T0 + 1000, 0, "late", received_at=T0 + 1000)], partition=3),
        Batch(partition=3, time=T0 + 70_000),
    ):
        await a.consume(batch)
        await b.consume(batch)
    assert a.tracked == b.tracked == 2, "c idled out (heard at 0 s); late did not (heard at 50 s)"
    assert a.changes(3) == b.changes(3)


async def test_a_restored_partition_is_needed_for_the_same_observations():
    """The check above can fail: without the moved state the first sample after the move is no delta."""
    a, _, _, a_tel = _standalone()
    b, _, _, b_tel = _standalone()
    await a.consume(Batch(samples=[_media(T0, 0, "c")], partition=3))
    a.changes(3)
    a_seen, b_seen = _listen(a_tel), _listen(b_tel)
    batch = Batch(samples=[_media(T0 + 5000, 1, "c")], partition=3)
    await a.consume(batch)
    await b.consume(batch)
    assert {name for name, _, _ in a_seen} - {name for name, _, _ in b_seen} == {
        "quality_bitrate",
        "quality_fraction_lost",
        "quality_mos",
    }


async def test_partitions_keep_apart_and_run_on_stream_time():
    quality, sink, clock, telemetry = _standalone(track_idle_timeout=60.0)
    await quality.consume(Batch(samples=[_media(T0, 0, "c")], partition=1))
    await quality.consume(Batch(samples=[_media(T0, 0, "c")], partition=2))
    assert quality.tracked == 4, "the same client in two partitions is two states"
    quality.changes(1), quality.changes(2)

    clock.now += 1e6  # the wall clock never ends anything in a partition
    await quality.consume(Batch(partition=1))
    assert quality.tracked == 4 and quality.changes(1) == {}

    tick = Batch(partition=1, time=T0 + 59_000)  # not idle yet: 59 s of stream time
    await quality.consume(tick)
    assert sink.batches[-1] is tick, "a tick is passed on as it is"
    assert quality.tracked == 4
    assert quality.changes(1) == {state.encode(("clock", "", "")): state.encode(T0 + 59_000)}

    # A sample received later advances its partition's time too; partition 2 stays where it was.
    late = _media(T0 + 1000, 1, "other", received_at=T0 + 61_000)
    await quality.consume(Batch(samples=[late], partition=1))
    assert quality.tracked == 4, "c of partition 1 idled out; other arrived"
    changes = quality.changes(1)
    assert set(changes) == {_client_key("c"), _client_key("other"), state.encode(("clock", "", ""))}
    assert changes[_client_key("c")] is None, "a tombstone for the client that idled out"
    assert changes[_client_key("other")] is not None
    assert changes[state.encode(("clock", "", ""))] == state.encode(T0 + 61_000)
    assert telemetry.get("quality_tracks_evicted").value("quality", "idle") == 2
    assert quality.changes(2) == {}, "partition 2 did not move"


async def test_clients_that_leave_give_tombstones_and_revoke_forgets():
    quality, _, _, telemetry = _standalone()
    await quality.consume(Batch(samples=[_media(T0, 0, "c-a"), _media(T0, 0, "c-b")], partition=3))
    await quality.consume(Batch(samples=[_media(T0, 0, "c-a")], partition=4))
    quality.changes(3)
    await quality.consume(Batch(reports=[_left("c-a")], partition=3))
    assert quality.changes(3) == {_client_key("c-a"): None}
    assert quality.tracked == 4

    quality.revoke(3)
    assert quality.tracked == 2 and telemetry.get("quality_tracks").value("quality") == 2
    assert quality.changes(3) == {}
    seen = _listen(telemetry)
    await quality.consume(Batch(samples=[_media(T0 + 5000, 1, "c-b")], partition=3))
    assert "quality_bitrate" not in {name for name, _, _ in seen}, "c-b was forgotten with its partition"
    assert quality.changes(4) != {}, "partition 4 is untouched"


async def test_local_state_moves_the_same_way():
    """Input without partitions (HTTP) is checkpointed the same way (``service.workers``)."""
    a, _, clock, a_tel = _standalone()
    await a.consume(Batch(samples=[_media(T0, 0, "c"), _media(T0, 0, "gone")]))
    await a.consume(Batch(reports=[_left("gone")]))
    entries = a.changes(None)  # the first checkpoint: all there is, no tombstone for what was never written
    assert set(entries) == {_client_key("c")}, "LOCAL runs on the wall clock: no clock entry"
    b, _, b_clock, b_tel = _standalone()
    b_clock.now = clock.now
    b.assign(None, _restored(entries))
    a_seen, b_seen = _listen(a_tel), _listen(b_tel)
    batch = Batch(samples=[_media(T0 + 5000, 1, "c")])
    await a.consume(batch)
    await b.consume(batch)
    assert a_seen == b_seen and "quality_mos" in {name for name, _, _ in b_seen}
    b.revoke(None)
    assert b.tracked == 0


# --------------------------------------------------------------------------------------------------
# /metrics after real samples: promtool passes with the bitrate histogram filled
# --------------------------------------------------------------------------------------------------


async def test_metrics_after_real_samples_pass_promtool(http):
    from tests.test_prometheus_exporter import promtool_check, samples_of
    from webrtc_observer.config import ComponentId

    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
processors: {correlation: {}, quality: {}, reports: {}}
exporters: {recording: {}, prometheus: {endpoint: "127.0.0.1:0"}}
service:
  pipelines:
    p: {receivers: [observertc], processors: [correlation, quality, reports], exporters: [recording, prometheus]}
"""
    async with testing.running_collector(yaml_text) as c:
        await post(c, http, wrapper(v2(T0, 0)))
        await post(c, http, wrapper(v2(T0 + 5000, 1)))
        await post(c, http, _samples.client_sample_v3())
        port = c.service.exporters[ComponentId("prometheus")].bound_port
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    values = samples_of(text)
    name = "observertc_quality_bitrate_bytes_per_second"
    counts = {
        dict(labels)["kind"] + "/" + dict(labels)["direction"]: v for (n, labels), v in values.items() if n == f"{name}_count"
    }
    assert counts == {"audio/inbound": 1, "audio/outbound": 1, "video/inbound": 1, "video/outbound": 1}
    sums = {
        dict(labels)["kind"]: v
        for (n, labels), v in values.items()
        if n == f"{name}_sum" and dict(labels)["direction"] == "inbound"
    }
    assert sums == {"audio": pytest.approx(4_000), "video": pytest.approx(100_000)}  # 32 and 800 kbit/s
    assert not [n for n, _ in values if "_bits" in n], "no family in bits"
    for family in ("quality_mos", "quality_round_trip_time_seconds", "quality_client_score"):
        assert any(n.startswith(f"observertc_{family}_count") and v > 0 for (n, _), v in values.items()), family
    promtool_check(text)
