"""Bounded /metrics: client-derived label values are cut to 64 characters, each metric family keeps
at most ``service.telemetry.metrics.max_series`` label sets, and label sets with client-derived labels
use at most ``service.telemetry.metrics.max_samples`` sample lines in all families together. Past
either bound, data lands in the family's overflow series.

Against a real collector, over real HTTP: hostile service and media unit ids posted to the receiver,
``/metrics`` scraped like Prometheus does and checked with promtool.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import _samples
from tests.test_prometheus_exporter import promtool_check
from webrtc_observer import testing
from webrtc_observer.components import config_types
from webrtc_observer.config import ComponentId, ConfigError, load_text
from webrtc_observer.telemetry import CLIENT_LABELS, MAX_LABEL_LENGTH, OVERFLOW, Telemetry
from webrtc_observer.testing import running_collector

PIPELINE = """
# The receiver's id limit would refuse these ids before they reach any metric: raised here, so the
# metrics' own bound is what is tested.
receivers: {{observertc: {{endpoint: "127.0.0.1:0", limits: {{max_id_length: 8192}}}}}}
processors:
  correlation: {{}}
  quality: {{}}
  reports: {{}}
exporters:
  prometheus: {{endpoint: "127.0.0.1:0"}}
service:
  telemetry: {{metrics: {{max_series: {max_series}, max_samples: {max_samples}}}}}
  pipelines:
    p: {{receivers: [observertc], processors: [correlation, quality, reports], exporters: [prometheus]}}
"""


def pipeline(max_series: int | str = 2000, max_samples: int | str = 10_000) -> str:
    return PIPELINE.format(max_series=max_series, max_samples=max_samples)


# Characters a label value must escape (quote, backslash, newline) and multi-byte UTF-8, inside the
# first 64 characters so they survive the cut.
_NASTY = 'q"b\\n\né€😀'


def hostile_id(i: int, length: int) -> str:
    head = f"{i:06d}{_NASTY}"
    return head + "x" * (length - len(head))


def sample(client_id: str, jitter: bool) -> dict[str, Any]:
    """One client sample with an inbound audio track; with ``jitter``, quality measures it too."""
    track: dict[str, Any] = {"peerConnectionId": "pc-1", "ssrc": 1234, "packetsReceived": 500, "packetsLost": 3}
    if jitter:
        track["jitter"] = 0.004
    return {
        "clientSamples": [
            {
                "clientId": client_id,
                "callId": f"call-{client_id}",
                "timestamp": 1_700_000_000_000,
                "inboundAudioTracks": [track],
            }
        ]
    }


def quality_sample(client_id: str, ts: int, step: int) -> dict[str, Any]:
    """The fixture's 2.x client sample (audio and video, in and out), its counters advanced ``step`` times.

    Two of them, 5 s apart, feed every quality histogram but the client score; see :data:`OBSERVATIONS`.
    """
    s = _samples.client_sample_v2(client_id=client_id, call_id=f"call-{client_id}", ts=ts)
    s["inboundAudioTracks"][0].update(
        packetsReceived=500 + 250 * step, packetsLost=3 + 2 * step, bytesReceived=40_000 + 20_000 * step
    )
    s["inboundVideoTracks"][0].update(
        packetsReceived=900 + 450 * step, framesDecoded=300 + 150 * step, bytesReceived=1_000_000 + 500_000 * step
    )
    s["outboundAudioTracks"][0].update(bytesSent=40_000 + 20_000 * step)
    s["outboundVideoTracks"][0].update(bytesSent=900_000 + 500_000 * step)
    return s


def quality_message(client_id: str) -> dict[str, Any]:
    """One client's two consecutive samples in one message, so the second gives deltas."""
    return {"clientSamples": [quality_sample(client_id, _samples.T0, 0), quality_sample(client_id, _samples.T0 + 5000, 1)]}


OBSERVATIONS = {
    # 4 tracks x 2 samples; the video tracks have no RTT of their own, their candidate pair's counts
    "quality_round_trip_time": ("observertc_quality_round_trip_time_seconds", 8),
    # the inbound audio track alone reports jitter, in both samples
    "quality_jitter": ("observertc_quality_jitter_seconds", 2),
    # outbound audio reports it in both samples; inbound audio and video, over the interval
    "quality_fraction_lost": ("observertc_quality_fraction_lost_ratio", 4),
    # one interval on each of the 4 tracks
    "quality_bitrate": ("observertc_quality_bitrate_bytes_per_second", 4),
    # one interval on each inbound track
    "quality_mos": ("observertc_quality_mos", 2),
}
"""Registry name -> (exposed family, observations from one :func:`quality_message`), as worked out in
tests/test_quality.py for the same counters."""


async def post_hostile(
    url: str,
    count: int,
    length: int,
    *,
    media_unit_length: int | None = None,
    jitter: bool = False,
    quality: bool = False,
) -> Counter[int]:
    """``count`` messages, each into its own made-up serviceId (and mediaUnitId) of ``length`` characters.

    A message is one client sample (:func:`sample`), or with ``quality`` two that feed the quality
    histograms (:func:`quality_message`).
    """
    statuses: Counter[int] = Counter()
    queue = iter(range(count))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in queue:
            service = quote(hostile_id(i, length), safe="")
            unit = quote(hostile_id(i, media_unit_length), safe="") if media_unit_length else "web"
            body = quality_message(f"c{i}") if quality else sample(f"c{i}", jitter)
            async with session.post(f"{url}/rest/samples/{service}/{unit}", json=body) as resp:
                await resp.read()
                statuses[resp.status] += 1

    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(16)))
    return statuses


async def scrape(c: Any) -> bytes:
    port = c.service.exporters[ComponentId("prometheus")].bound_port
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return await resp.read()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def label_sets(family: Any) -> set[tuple[tuple[str, str], ...]]:
    """A family's series, as Prometheus counts them by label set (a histogram's bucket lines are one)."""
    return {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) for s in family.samples}


def assert_bounded(fams: dict[str, Any], max_series: int) -> None:
    for name, family in fams.items():
        sets = label_sets(family)
        overflow = {ls for ls in sets if any(v == OVERFLOW for _, v in ls)}
        assert len(sets - overflow) <= max_series, name
        for ls in sets:
            for key, value in ls:
                if key in CLIENT_LABELS:
                    assert len(value) <= MAX_LABEL_LENGTH, (name, key)
        for ls in overflow:  # the overflow series: every client-derived label is _overflow_, the others kept
            assert all(v == OVERFLOW for k, v in ls if k in CLIENT_LABELS), (name, ls)


def received(fams: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {
        (s.labels["service_id"], s.labels["media_unit_id"]): s.value
        for s in fams["observertc_samples_received"].samples
        if s.name == "observertc_samples_received_total"
    }


def client_labelled_lines(fams: dict[str, Any]) -> int:
    """Sample lines of label sets with client-derived labels, overflow series left out."""
    return sum(
        1
        for family in fams.values()
        for s in family.samples
        if any(k in CLIENT_LABELS and v != OVERFLOW for k, v in s.labels.items())
    )


def overflowed(fams: dict[str, Any]) -> dict[str, float]:
    return {
        s.labels["metric"]: s.value for s in fams["observertc_telemetry_overflowed_updates"].samples if s.name.endswith("_total")
    }


async def test_ten_thousand_hostile_service_ids_leave_a_small_scrape() -> None:
    """10,000 made-up serviceIds of 4,000 characters, each with a client whose samples feed the quality
    histograms: the scrape stays under 2 MiB, and every observation is still counted."""
    async with running_collector(pipeline(max_series=2000, max_samples=10_000)) as c:
        statuses = await post_hostile(c.url(), 10_000, 4000, quality=True)
        assert set(statuses) == {202}, statuses
        accepted = statuses[202]
        body = await scrape(c)

        assert len(body) < 2 * 1024 * 1024, len(body)
        text = body.decode()
        promtool_check(text)  # every line, the bitrate histogram's (unit bytes_per_second) included
        fams = families(text)
        assert_bounded(fams, 2000)
        assert client_labelled_lines(fams) <= 10_000

        # Totals still add up: every sample, every observation, overflow series included.
        counts = received(fams)
        assert sum(counts.values()) == 2 * accepted
        admitted = len(counts) - 1
        assert 0 < admitted < accepted and counts[(OVERFLOW, OVERFLOW)] == 2 * (accepted - admitted)
        assert overflowed(fams)["samples_received"] == accepted - admitted
        for name, (exposed, per_message) in OBSERVATIONS.items():
            family = fams[exposed]
            observed = sum(s.value for s in family.samples if s.name == f"{exposed}_count")
            assert observed == per_message * accepted, name
            assert any(s.labels["service_id"] == OVERFLOW for s in family.samples), name
            assert overflowed(fams)[name] > 0, name


async def test_ids_are_cut_to_64_characters_and_overflow_keeps_collector_labels() -> None:
    async with running_collector(pipeline(max_series=50)) as c:
        # Ids of 200 characters: longer than a label value may be, short enough for any receiver limit.
        statuses = await post_hostile(c.url(), 120, 200, media_unit_length=200, jitter=True)
        assert statuses == {202: 120}
        fams = families((await scrape(c)).decode())

        counts = received(fams)
        cut = [k for k in counts if k != (OVERFLOW, OVERFLOW)]
        assert len(cut) == 50 and sum(counts.values()) == 120 and counts[(OVERFLOW, OVERFLOW)] == 70
        assert all(k == (hostile_id(int(k[0][:6]), 64), hostile_id(int(k[0][:6]), 64)) for k in cut)

        # A histogram counts label sets, not bucket lines; its overflow series keeps `kind`.
        jitter = fams["observertc_quality_jitter_seconds"]
        sets = label_sets(jitter)
        assert len(sets) == 51
        overflow = {dict(ls)["kind"] for ls in sets if dict(ls)["service_id"] == OVERFLOW}
        assert overflow == {"audio"}
        observed = sum(s.value for s in jitter.samples if s.name.endswith("_count"))
        assert observed == 120
        assert_bounded(fams, 50)
        text = (await scrape(c)).decode()
        promtool_check(text)
        assert "x" * (MAX_LABEL_LENGTH + 1) not in text


@pytest.mark.parametrize("option", ["max_series", "max_samples"])
@pytest.mark.parametrize("value", ["0", "-1", "1.5", "true", '"10"'])
def test_bounds_are_validated(option: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_text(pipeline(**{option: value}), config_types(testing.testing_factories()))
    assert f"service.telemetry.metrics.{option}" in str(raised.value)


def test_overflow_series_stay_bounded_when_collector_labels_vary_too() -> None:
    """The registry itself: overflow keys keep collector-derived labels, at most 2 x max_series + 1 series."""
    t = Telemetry(max_series=3)
    refused = t.counter("refused", "test", ("service_id", "reason"))
    for i in range(20):
        refused.add(1, f"svc-{i}", f"reason-{i % 5}")
    values = refused.samples()
    assert sum(values.values()) == 20 and len(values) == 2 * 3 + 1
    assert (OVERFLOW, OVERFLOW) in values  # past 2 x max_series, even the collector-derived value goes
    assert refused.overflowed == 17
    assert t.get("telemetry_overflowed_updates").samples() == {("refused",): 17.0}


def test_the_sample_budget_is_shared_by_every_metric() -> None:
    """The registry itself: a histogram and a counter compete for ``max_samples`` lines.

    A histogram series of 2 bounds takes 5 lines (2 buckets, +Inf, _sum, _count), a counter series 1.
    A new label set is admitted only if all its lines fit; otherwise it lands in the overflow series,
    as past ``max_series``. Overflow series and series without client-derived labels take none.
    """
    t = Telemetry(max_series=10, max_samples=14)
    rtt = t.histogram("rtt", "test", ("service_id", "kind"), (0.1, 0.5))
    received = t.counter("received", "test", ("service_id",))
    pipeline_items = t.counter("items", "test", ("pipeline",))
    assert (rtt.lines_per_series, received.lines_per_series) == (5, 1)

    for i in range(4):  # per service: 5 + 1 lines, until a histogram series no longer fits
        rtt.observe(0.2, f"svc-{i}", "audio")
        received.add(1, f"svc-{i}")
        pipeline_items.add(1, f"p-{i}")  # no client-derived label: not charged
    # svc-0 and svc-1 took 12 lines; svc-2's histogram series (5 more) did not fit, its counter (1) did,
    # then svc-3's counter took the 14th line.
    assert t.budget.used == 14
    assert set(rtt.series()) == {("svc-0", "audio"), ("svc-1", "audio"), (OVERFLOW, "audio")}
    assert rtt.series()[(OVERFLOW, "audio")].count == 2
    assert set(received.samples()) == {("svc-0",), ("svc-1",), ("svc-2",), ("svc-3",)}
    assert len(pipeline_items.samples()) == 4

    # The budget is spent: a new label set of either metric overflows, even the cheap counter, while
    # the label sets already admitted keep counting.
    received.add(1, "svc-4")
    received.add(1, "svc-0")
    rtt.observe(0.7, "svc-1", "audio")
    rtt.observe(0.7, "svc-5", "video")
    assert received.samples() == {("svc-0",): 2.0, ("svc-1",): 1.0, ("svc-2",): 1.0, ("svc-3",): 1.0, (OVERFLOW,): 1.0}
    series = rtt.series()
    assert series[("svc-1", "audio")].count == 2 and series[(OVERFLOW, "video")].count == 1
    assert sum(v.count for v in series.values()) == 6  # every observation is counted somewhere
    assert t.budget.used == 14  # overflow series are not charged
    assert t.get("telemetry_overflowed_updates").samples() == {("rtt",): 3.0, ("received",): 1.0}


def test_max_series_refuses_before_the_budget_is_charged() -> None:
    t = Telemetry(max_series=2, max_samples=100)
    received = t.counter("received", "test", ("service_id",))
    for i in range(5):
        received.add(1, f"svc-{i}")
    assert t.budget.used == 2 and received.samples()[(OVERFLOW,)] == 3
    with pytest.raises(ValueError, match="max_samples"):
        Telemetry(max_samples=0)


def test_a_bound_adder_counts_like_add_within_the_same_bounds() -> None:
    """The registry itself: ``Metric.adder`` (a stage's per-message counter) admits its series on the
    first addition, under ``max_series`` and the sample budget, and counts into the same series as ``add``."""
    t = Telemetry(max_series=2, max_samples=100)
    received = t.counter("received", "test", ("service_id", "transport"))
    adders = [received.adder(f"svc-{i}", "websocket") for i in range(4)]
    assert received.samples() == {}  # nothing appears before the first addition
    for i, adder in enumerate(adders):
        adder.add(i + 1)
    received.add(10, "svc-0", "websocket")
    adders[3].add(1)
    assert received.samples() == {
        ("svc-0", "websocket"): 11.0,
        ("svc-1", "websocket"): 2.0,
        (OVERFLOW, "websocket"): 3.0 + 4.0 + 1.0,  # past max_series: the client-derived label overflows
    }
    assert received.overflowed == 3
    assert t.get("telemetry_overflowed_updates").samples() == {("received",): 3.0}
    with pytest.raises(ValueError, match="takes labels"):
        received.adder("svc-0")
