"""The Prometheus exporter, scraped over HTTP like Prometheus does, and checked with promtool."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_correlation import client, post, wait_until
from webrtc_observer.config import ComponentId
from webrtc_observer.testing import running_collector

PIPELINE = """
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors:
  correlation: {{client_idle_timeout: 300ms, call_empty_timeout: 200ms, sweep_interval: 50ms}}
  reports: {{}}
exporters:
  recording: {{}}
  prometheus: {{endpoint: "127.0.0.1:0"{extra}}}
service:
  pipelines:
    p: {{receivers: [observertc], processors: [correlation, reports], exporters: [recording, prometheus]}}
"""


def metrics_url(c) -> str:
    return f"http://127.0.0.1:{c.service.exporters[ComponentId('prometheus')].bound_port}/metrics"


async def scrape(c, http, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with http.get(metrics_url(c), headers=headers) as resp:
        assert resp.status == 200
        return await resp.text(), resp.headers["Content-Type"]


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples_of(text).get((name, tuple(sorted(labels.items()))))


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus); .ci/run installs it")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_metrics_follow_a_call_and_pass_promtool(http):
    async with running_collector(PIPELINE.format(extra="")) as c:
        await post(c, http, client("alice", call_id="c1", out=(1,), inb=(2,)), client("bob", call_id="c1", out=(2,), inb=(1,)))
        text, content_type = await scrape(c, http)
        assert content_type.startswith("text/plain")
        assert value(text, "observertc_samples_received_total", service_id="svc", media_unit_id="web") == 2
        assert value(text, "observertc_calls_active") == 1
        assert value(text, "observertc_clients_active") == 2
        assert value(text, "observertc_peer_connections_active") == 2
        assert value(text, "observertc_reports_total", type="INBOUND_AUDIO_TRACK") == 2
        assert value(text, "observertc_reports_total", type="CALL_EVENT") == 1 + 2 + 2 + 4
        assert value(text, "observertc_exporter_queue_capacity", exporter="file") is None  # no file exporter here
        # Where data flows: 2 samples enter correlation, 2 samples + 9 events enter reports.
        assert value(text, "observertc_pipeline_stage_items_total", pipeline="p", component="correlation") == 2
        assert value(text, "observertc_pipeline_stage_items_total", pipeline="p", component="reports") == 11
        promtool_check(text)

        async with http.post(c.url("/rest/samples/svc/web"), data=b"{broken") as resp:
            assert resp.status == 400
        await wait_until(lambda: c.telemetry.get("calls_active").value() + c.telemetry.get("calls_ending").value() == 0)
        text, _ = await scrape(c, http)
        assert value(text, "observertc_samples_refused_total", reason="bad_json") == 1
        assert value(text, "observertc_call_duration_seconds_count", service_id="svc") == 1
        assert value(text, "observertc_call_participants_bucket", service_id="svc", le="2.0") == 1
        assert value(text, "observertc_call_participants_bucket", service_id="svc", le="1.0") == 0
        assert value(text, "observertc_calls_active") == 0
        promtool_check(text)
        # Bounded cardinality: nothing is labelled by call or client.
        labels = {k for (_, ls) in samples_of(text) for k, _ in ls}
        assert not labels & {"call_id", "client_id", "user_id", "room_id"}


async def test_openmetrics_by_accept_header(http):
    async with running_collector(PIPELINE.format(extra="")) as c:
        await post(c, http, client("alice", call_id="c1", out=(1,)))
        text, content_type = await scrape(c, http, "application/openmetrics-text; version=1.0.0; charset=utf-8")
        assert content_type.startswith("application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")
        assert "# UNIT observertc_call_duration_seconds seconds" in text
        assert "observertc_samples_received_total" in text


async def test_per_call_series_come_and_go_with_the_call(http):
    extra = ", per_call: {enabled: true, expiry: 10s}"
    async with running_collector(PIPELINE.format(extra=extra)) as c:
        alice = client("alice", call_id="c1", out=(1,), inb=(2,))
        alice["inboundAudioTracks"][0]["roundTripTime"] = 0.120
        alice["inboundAudioTracks"][0]["jitter"] = 0.004
        await post(c, http, alice, client("bob", call_id="c1", out=(2,), inb=(1,)))
        text, _ = await scrape(c, http)
        labels = {"service_id": "svc", "call_id": "c1", "client_id": "alice", "kind": "audio", "direction": "inbound"}
        assert value(text, "observertc_call_client_round_trip_time_seconds", **labels) == pytest.approx(0.120)
        assert value(text, "observertc_call_client_jitter_seconds", **labels) == pytest.approx(0.004)
        assert value(text, "observertc_call_client_packets_lost", **labels) == 1
        assert value(text, "observertc_call_participants_current", service_id="svc", call_id="c1") == 2
        promtool_check(text)
        await wait_until(lambda: c.telemetry.get("calls_active").value() + c.telemetry.get("calls_ending").value() == 0)
        await asyncio.sleep(0.05)
        text, _ = await scrape(c, http)
        assert "c1" not in text  # the ended call left no series behind


async def test_per_call_series_are_bounded_and_their_ids_cut(http):
    extra = ", per_call: {enabled: true, max_series: 2}"
    long_call = "call-" + "c" * 150
    async with running_collector(PIPELINE.format(extra=extra)) as c:
        alice = client("alice" + "a" * 150, call_id=long_call, inb=(2,))
        await post(c, http, alice, client("bob", call_id=long_call, inb=(1,)))
        await post(c, http, client("carol", call_id="c2", inb=(3,)))
        text, _ = await scrape(c, http)
        series = {
            (s.labels["call_id"], s.labels["client_id"], s.labels["direction"])
            for f in text_string_to_metric_families(text)
            if f.name == "observertc_call_client_packets_lost"
            for s in f.samples
        }
        # Two series kept (alice's and bob's inbound tracks); carol's was one too many, and counted.
        assert series == {(long_call[:64], ("alice" + "a" * 150)[:64], "inbound"), (long_call[:64], "bob", "inbound")}
        assert value(text, "observertc_prometheus_per_call_series_refused_total", exporter="prometheus") == 1
        assert value(text, "observertc_call_participants_current", service_id="svc", call_id=long_call[:64]) == 2
        assert "c" * 65 not in text
        promtool_check(text)


async def test_the_metrics_endpoint_serves_health_without_credentials(http):
    """A tier without a receiver (one that reads Kafka) is probed here; /metrics keeps its auth."""
    extra = ', auth: {bearer_tokens: [{token: "scrape-token-0123456789"}]}'
    async with running_collector(PIPELINE.format(extra=extra)) as c:
        base = metrics_url(c).removesuffix("/metrics")
        async with http.get(base + "/health") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with http.get(metrics_url(c)) as resp:
            assert resp.status == 401
        async with http.get(metrics_url(c), headers={"Authorization": "Bearer scrape-token-0123456789"}) as resp:
            assert resp.status == 200


def test_the_text_exposition_is_byte_for_byte_what_prometheus_client_writes():
    """The exporter writes the text format itself, for speed; prometheus_client's output is the reference."""
    import random

    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from webrtc_observer.exporters import _exposition
    from webrtc_observer.exporters.prometheus import _RegistryCollector, metric_name
    from webrtc_observer.telemetry import Telemetry

    rng = random.Random(7)
    t = Telemetry(max_series=50, max_samples=400)
    counter = t.counter("samples_received", 'Samples "received"\\ per\nservice', ("service_id", "media_unit_id"))
    t.gauge("calls_active", "Calls", ()).set(2)
    t.gauge("by_callback", "A callback", ("x",), callback=lambda: {("a",): 1.0, ("b",): 2.5e10, ("c",): float("nan")})
    jitter = t.histogram("quality_jitter", "Jitter", ("service_id", "media_unit_id", "kind"), (0.01, 0.1, 1.0), "seconds")
    plain = t.histogram("plain", "No labels", (), (1.0, 1e9))
    t.counter("never_added", "No series yet", ("reason",))
    for i in range(120):  # past max_series and max_samples: overflow series too
        counter.add(rng.random() * 1e12, f'svc-{i}"\\\n{"x" * rng.randrange(80)}', "mu")
        jitter.observe(rng.random(), f"s{i}", "mu", rng.choice(("audio", "video")))
        plain.observe(rng.choice((0.5, 3.0, 1e12, float("inf"))))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RegistryCollector(t, "observertc", None))
    assert _exposition.render(t, "observertc", metric_name) == generate_latest(registry)
