"""The OTLP exporter against test OTLP servers (HTTP and gRPC) that decode the official protobuf messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from tests.test_correlation import client, post, wait_until
from webrtc_observer.testing import running_collector


class OtlpSink:
    """What a backend received: every ExportMetricsServiceRequest, decoded."""

    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.refuse = False

    def metrics(self) -> dict[str, Any]:
        """name → the most recent Metric message with that name."""
        found: dict[str, Any] = {}
        for request in self.requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        found[m.name] = m
        return found

    def resource(self) -> dict[str, str]:
        rm = self.requests[-1].resource_metrics[0]
        return {kv.key: kv.value.string_value for kv in rm.resource.attributes}


@pytest.fixture
async def http_sink() -> AsyncIterator[tuple[OtlpSink, str]]:
    sink = OtlpSink()

    async def export(request: web.Request) -> web.Response:
        if sink.refuse:
            return web.Response(status=503)
        message = metrics_service_pb2.ExportMetricsServiceRequest()
        message.ParseFromString(await request.read())
        sink.requests.append(message)
        body = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/metrics", export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield sink, f"http://127.0.0.1:{port}/v1/metrics"
    await runner.cleanup()


class _Servicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink: OtlpSink) -> None:
        self.sink = sink

    def Export(self, request, context):
        self.sink.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def grpc_sink() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    sink = OtlpSink()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Servicer(sink), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield sink, f"http://127.0.0.1:{port}"
    server.stop(grace=None)


def pipeline(protocol: str, endpoint: str, extra: str = "") -> str:
    return f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors:
  correlation: {{client_idle_timeout: 200ms, call_empty_timeout: 100ms, sweep_interval: 50ms}}
  reports: {{}}
exporters:
  recording: {{}}
  otlp: {{protocol: {protocol}, endpoint: "{endpoint}", interval: 200ms, timeout: 2s, resource_attributes: {{deployment.environment: test}}{extra}}}
service:
  health: {{exporter_failure_threshold: 300ms}}
  pipelines:
    p: {{receivers: [observertc], processors: [correlation, reports], exporters: [recording, otlp]}}
"""


def attributes(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


async def exercise_and_check(c, http, sink: OtlpSink) -> None:
    await post(c, http, client("alice", call_id="c1", out=(1,), inb=(2,)), client("bob", call_id="c1", out=(2,), inb=(1,)))
    await wait_until(
        lambda: c.telemetry.get("calls_active").value() + c.telemetry.get("calls_ending").value() == 0
    )  # idle out: a call duration is observed
    await wait_until(
        lambda: "observertc.call_duration" in sink.metrics() and sink.metrics()["observertc.call_duration"].histogram.data_points
    )
    await asyncio.sleep(0.5)  # one more export with everything
    metrics = sink.metrics()
    resource = sink.resource()
    assert resource["service.name"] == "webrtc-observer" and resource["service.instance.id"]
    assert resource["deployment.environment"] == "test"

    received = metrics["observertc.samples_received"]
    assert received.sum.is_monotonic and received.sum.aggregation_temporality == 2  # cumulative
    (point,) = received.sum.data_points
    assert attributes(point) == {"service_id": "svc", "media_unit_id": "web"} and point.as_double == 2

    reports = {attributes(p)["type"]: p.as_double for p in metrics["observertc.reports"].sum.data_points}
    assert reports["INBOUND_AUDIO_TRACK"] == 2

    (active,) = metrics["observertc.calls_active"].gauge.data_points
    assert active.as_double == 0

    duration = metrics["observertc.call_duration"]
    assert duration.unit == "s"
    (hist,) = duration.histogram.data_points
    assert hist.count == 1 and attributes(hist) == {"service_id": "svc"}
    assert list(hist.explicit_bounds)[:3] == [10.0, 30.0, 60.0]
    participants = metrics["observertc.call_participants"].histogram.data_points[0]
    assert participants.sum == 2


async def test_metrics_over_otlp_http(http, http_sink):
    sink, endpoint = http_sink
    async with running_collector(pipeline("http/protobuf", endpoint)) as c:
        await exercise_and_check(c, http, sink)


async def test_metrics_over_otlp_grpc(http, grpc_sink):
    sink, endpoint = grpc_sink
    async with running_collector(pipeline("grpc", endpoint)) as c:
        await exercise_and_check(c, http, sink)


async def test_delta_temporality(http, http_sink):
    sink, endpoint = http_sink
    async with running_collector(pipeline("http/protobuf", endpoint, ", temporality: delta")) as c:
        await post(c, http, client("alice", call_id="c1", out=(1,)))
        await wait_until(lambda: "observertc.samples_received" in sink.metrics())
        assert sink.metrics()["observertc.samples_received"].sum.aggregation_temporality == 1  # delta


async def test_a_failing_backend_turns_health_unhealthy_then_recovers(http, http_sink):
    sink, endpoint = http_sink
    sink.refuse = True
    async with running_collector(pipeline("http/protobuf", endpoint, ", timeout: 300ms")) as c:

        async def health() -> int:
            async with http.get(c.url("/health")) as resp:
                return resp.status

        deadline = asyncio.get_running_loop().time() + 15
        while await health() != 503:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        assert c.telemetry.get("otlp_exports").value("otlp", "failure") >= 1
        sink.refuse = False
        while await health() != 200:
            assert asyncio.get_running_loop().time() < deadline + 15
            await asyncio.sleep(0.1)


async def test_otlp_attributes_are_the_bounded_label_sets(http, http_sink):
    """Hostile service ids reach OTLP cut to 64 characters, and past max_series in the overflow series."""
    sink, endpoint = http_sink
    config = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors: {{correlation: {{}}, quality: {{}}}}
exporters:
  otlp: {{protocol: http/protobuf, endpoint: "{endpoint}", interval: 200ms, timeout: 2s}}
service:
  telemetry: {{metrics: {{max_series: 5}}}}
  pipelines:
    p: {{receivers: [observertc], processors: [correlation, quality], exporters: [otlp]}}
"""
    async with running_collector(config) as c:
        for i in range(12):
            sample = client(f"c{i}", call_id=f"call-{i}", inb=(1,))
            sample["inboundAudioTracks"][0]["jitter"] = 0.004
            await post(c, http, sample, path=f"/rest/samples/{i:02d}{'s' * 198}/web")

        def received() -> dict[tuple[str, str], float]:
            metric = sink.metrics().get("observertc.samples_received")
            points = metric.sum.data_points if metric is not None else []
            return {(attributes(p)["service_id"], attributes(p)["media_unit_id"]): p.as_double for p in points}

        await wait_until(lambda: sum(received().values()) == 12)
        points = received()
        assert len(points) == 6 and points[("_overflow_", "_overflow_")] == 7
        assert {service for service, _ in points} - {"_overflow_"} == {f"{i:02d}{'s' * 62}" for i in range(5)}

        def jitter() -> dict[tuple[str, str], int]:
            metric = sink.metrics().get("observertc.quality_jitter")
            points = metric.histogram.data_points if metric is not None else []
            return {(attributes(p)["service_id"], attributes(p)["kind"]): p.count for p in points}

        await wait_until(lambda: sum(jitter().values()) == 12)
        assert len(jitter()) == 6 and jitter()[("_overflow_", "audio")] == 7  # collector-derived `kind` kept
