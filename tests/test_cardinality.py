"""Bounded /metrics: client-derived label values are cut to 64 characters, and each metric family keeps
at most ``service.telemetry.metrics.max_series`` label sets, past which data lands in its overflow series.

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

from tests.test_prometheus_exporter import promtool_check
from webrtc_observer import testing
from webrtc_observer.components import config_types
from webrtc_observer.config import ComponentId, ConfigError, load_text
from webrtc_observer.telemetry import CLIENT_LABELS, MAX_LABEL_LENGTH, OVERFLOW
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
  telemetry: {{metrics: {{max_series: {max_series}}}}}
  pipelines:
    p: {{receivers: [observertc], processors: [correlation, quality, reports], exporters: [prometheus]}}
"""

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


async def post_hostile(
    url: str, count: int, length: int, *, media_unit_length: int | None = None, jitter: bool = False
) -> Counter[int]:
    """``count`` samples, each into its own made-up serviceId (and mediaUnitId) of ``length`` characters."""
    statuses: Counter[int] = Counter()
    queue = iter(range(count))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in queue:
            service = quote(hostile_id(i, length), safe="")
            unit = quote(hostile_id(i, media_unit_length), safe="") if media_unit_length else "web"
            async with session.post(f"{url}/rest/samples/{service}/{unit}", json=sample(f"c{i}", jitter)) as resp:
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


async def test_ten_thousand_hostile_service_ids_leave_a_small_scrape() -> None:
    async with running_collector(PIPELINE.format(max_series=2000)) as c:
        statuses = await post_hostile(c.url(), 10_000, 4000)
        assert set(statuses) == {202}, statuses
        accepted = statuses[202]
        body = await scrape(c)

        assert len(body) < 2 * 1024 * 1024, len(body)
        text = body.decode()
        promtool_check(text)
        fams = families(text)
        assert_bounded(fams, 2000)
        counts = received(fams)
        assert sum(counts.values()) == accepted  # totals still add up
        if accepted > 2000:  # always: every sample was accepted
            assert len(counts) == 2001
            assert counts[(OVERFLOW, OVERFLOW)] == accepted - 2000
            overflowed = {
                s.labels["metric"]: s.value
                for s in fams["observertc_telemetry_overflowed_updates"].samples
                if s.name.endswith("_total")
            }
            assert overflowed["samples_received"] == accepted - 2000


async def test_ids_are_cut_to_64_characters_and_overflow_keeps_collector_labels() -> None:
    async with running_collector(PIPELINE.format(max_series=50)) as c:
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


def test_max_series_is_validated() -> None:
    with pytest.raises(ConfigError) as raised:
        load_text(PIPELINE.format(max_series=0), config_types(testing.testing_factories()))
    assert "service.telemetry.metrics.max_series" in str(raised.value)


def test_overflow_series_stay_bounded_when_collector_labels_vary_too() -> None:
    """The registry itself: overflow keys keep collector-derived labels, at most 2 x max_series + 1 series."""
    from webrtc_observer.telemetry import Telemetry

    t = Telemetry(max_series=3)
    refused = t.counter("refused", "test", ("service_id", "reason"))
    for i in range(20):
        refused.add(1, f"svc-{i}", f"reason-{i % 5}")
    values = refused.samples()
    assert sum(values.values()) == 20 and len(values) == 2 * 3 + 1
    assert (OVERFLOW, OVERFLOW) in values  # past 2 x max_series, even the collector-derived value goes
    assert refused.overflowed == 17
    assert t.get("telemetry_overflowed_updates").samples() == {("refused",): 17.0}
