"""Exporter ``otlp``: the collector's metrics to an OpenTelemetry backend, over OTLP gRPC or HTTP.

It publishes the same telemetry registry as the Prometheus exporter through opentelemetry-sdk's
MeterProvider: counters as observable counters, gauges as observable gauges, histograms as SDK
histograms with the registry's bucket boundaries. Metric names are ``<namespace>.<name>``
(``observertc.samples_received``) with UCUM units (``s``, ``1``, ``By/s``). The SDK exports on its
own thread every ``interval``, so the event loop never waits for the backend. Attributes are the
registry's bounded label sets (client-derived values cut to 64 characters, ``_overflow_`` series past
``service.telemetry.metrics.max_series``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, ObservableCounter, ObservableGauge, UpDownCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from webrtc_observer import __version__
from webrtc_observer.component import Factory, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch
from webrtc_observer.telemetry import Histogram as RegistryHistogram
from webrtc_observer.telemetry import Metric, Telemetry

_UNITS = {"seconds": "s", "ratio": "1", "bytes_per_second": "By/s", "bits_per_second": "bit/s", "bytes": "By", "": "1"}
_DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318/v1/metrics"}


@dataclass
class OtlpExporterConfig:
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    endpoint: str = ""
    """Default: http://localhost:4317 (grpc) or http://localhost:4318/v1/metrics (http/protobuf)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Sent with every export, e.g. an API key: ``{api-key: ${env:OTLP_KEY}}``."""
    interval: Duration = Duration(60)
    timeout: Duration = Duration(10)
    temporality: Literal["cumulative", "delta"] = "cumulative"
    insecure: bool = True
    """gRPC without TLS (ignored for http/protobuf, where the endpoint's scheme decides)."""
    namespace: str = "observertc"
    resource_attributes: dict[str, str] = field(default_factory=dict)
    """Added to ``service.name=webrtc-observer`` and ``service.instance.id`` (one per process)."""

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        if self.interval <= 0:
            issues.append(("interval", "must be more than 0"))
        if self.timeout <= 0:
            issues.append(("timeout", "must be more than 0"))
        if self.endpoint and "://" not in self.endpoint:
            issues.append(("endpoint", "a URL like http://collector:4317"))
        return issues


class _TrackedExporter(MetricExporter):
    """Delegates to the OTLP exporter and remembers since when exports have been failing."""

    def __init__(self, inner: MetricExporter, on_result: Callable[[bool], None]) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._on_result = on_result

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            result = MetricExportResult.FAILURE
        self._on_result(result == MetricExportResult.SUCCESS)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class OtlpExporter:
    def __init__(self, settings: Settings, config: OtlpExporterConfig) -> None:
        self._config = config
        self._telemetry: Telemetry = settings.telemetry
        self._log = settings.logger
        self._label = str(settings.id)
        self._exports = settings.telemetry.counter("otlp_exports", "OTLP metric exports, by result", ("exporter", "result"))
        self._provider: MeterProvider | None = None
        self._instrumented: set[str] = set()
        self._listeners: list[tuple[RegistryHistogram, Callable[[float, tuple[str, ...]], None]]] = []
        self._discovery: asyncio.Task[None] | None = None
        self._failing_since: float | None = None

    def failing_since(self) -> float | None:
        return self._failing_since

    def _on_result(self, ok: bool) -> None:  # called on the SDK's export thread
        self._exports.add(1, self._label, "success" if ok else "failure")
        if ok:
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = time.monotonic()

    def _otlp_exporter(self) -> MetricExporter:
        cfg = self._config
        endpoint = cfg.endpoint or _DEFAULT_ENDPOINTS[cfg.protocol]
        temporality: dict[type, AggregationTemporality] = {}
        if cfg.temporality == "delta":
            delta = AggregationTemporality.DELTA
            temporality = {
                Counter: delta,
                ObservableCounter: delta,
                Histogram: delta,
                UpDownCounter: AggregationTemporality.CUMULATIVE,
            }
        if cfg.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

            target = endpoint.split("://", 1)[-1]
            return GrpcExporter(
                endpoint=target,
                insecure=cfg.insecure,
                headers=dict(cfg.headers) or None,
                timeout=cfg.timeout,
                preferred_temporality=temporality or None,
            )
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

        return HttpExporter(
            endpoint=endpoint, headers=dict(cfg.headers) or None, timeout=cfg.timeout, preferred_temporality=temporality or None
        )

    async def start(self) -> None:
        cfg = self._config
        histograms = [m for m in self._telemetry if isinstance(m, RegistryHistogram)]
        views = [
            View(instrument_name=self._name(h), aggregation=ExplicitBucketHistogramAggregation(boundaries=list(h.buckets)))
            for h in histograms
        ]
        resource = Resource.create(
            {
                "service.name": "webrtc-observer",
                "service.version": __version__,
                "service.instance.id": str(uuid.uuid4()),
                **cfg.resource_attributes,
            }
        )
        exporter = _TrackedExporter(self._otlp_exporter(), self._on_result)
        reader = PeriodicExportingMetricReader(
            exporter,
            export_interval_millis=cfg.interval * 1000,
            export_timeout_millis=cfg.timeout * 1000,
            **_cardinality_limits(self._telemetry.max_series),
        )
        self._provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
        self._instrument_new_metrics()
        self._discovery = asyncio.create_task(self._discover_forever())
        self._log.info("exporting metrics", protocol=cfg.protocol, endpoint=cfg.endpoint or _DEFAULT_ENDPOINTS[cfg.protocol])

    def _name(self, metric: Metric) -> str:
        return f"{self._config.namespace}.{metric.name}"

    def _instrument_new_metrics(self) -> None:
        """Give every registry metric an SDK instrument (components may register metrics late)."""
        assert self._provider is not None
        meter = self._provider.get_meter("webrtc_observer", __version__)
        for metric in self._telemetry:
            if metric.name in self._instrumented:
                continue
            self._instrumented.add(metric.name)
            name, unit = self._name(metric), _UNITS.get(metric.unit, metric.unit)
            if isinstance(metric, RegistryHistogram):
                instrument = meter.create_histogram(name, unit=unit, description=metric.description)
                listener = _histogram_listener(instrument, metric.labels)
                metric.add_listener(listener)
                self._listeners.append((metric, listener))
            elif metric.kind == "counter":
                meter.create_observable_counter(name, callbacks=[_observe(metric)], unit=unit, description=metric.description)
            else:
                meter.create_observable_gauge(name, callbacks=[_observe(metric)], unit=unit, description=metric.description)

    async def _discover_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self._config.interval, 5.0))
            self._instrument_new_metrics()

    async def consume(self, batch: Batch) -> None:
        """Nothing to do per batch: metrics are read from the telemetry registry."""

    async def shutdown(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
            await asyncio.gather(self._discovery, return_exceptions=True)
            self._discovery = None
        for metric, listener in self._listeners:
            metric.remove_listener(listener)
        self._listeners.clear()
        provider, self._provider = self._provider, None
        if provider is not None:
            # A last export of what was counted, then stop the SDK's thread (blocking: off the loop).
            await asyncio.to_thread(provider.shutdown, timeout_millis=self._config.timeout * 1000)


def _cardinality_limits(max_series: int) -> dict[str, Any]:
    """Room for every label set the registry keeps (its bound, overflow series included), so the SDK's
    own limit (2000 by default, ``otel.metric.overflow``) never folds them differently.

    Only SDKs that take the reader option get it; older ones keep their fixed limit of 2000.
    """
    if "cardinality_limits" not in inspect.signature(PeriodicExportingMetricReader.__init__).parameters:
        return {}
    limit = 2 * max_series + 1
    kinds = (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableGauge)
    return {"cardinality_limits": {kind: limit for kind in kinds}}


def _observe(metric: Metric) -> Callable[[CallbackOptions], Iterable[Observation]]:
    labels = metric.labels

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(zip(labels, values, strict=True))) for values, value in metric.samples().items()]

    return callback


def _histogram_listener(instrument: Any, labels: Sequence[str]) -> Callable[[float, tuple[str, ...]], None]:
    def record(value: float, values: tuple[str, ...]) -> None:
        instrument.record(value, dict(zip(labels, values, strict=True)))

    return record


def _create(settings: Settings, config: OtlpExporterConfig, _next: None) -> OtlpExporter:
    return OtlpExporter(settings, config)


FACTORY = Factory(kind="exporter", type="otlp", config_type=OtlpExporterConfig, create=_create, description="metrics over OTLP")
