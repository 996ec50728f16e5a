"""Exporter ``prometheus``: serves ``GET /metrics`` for Prometheus to scrape.

It publishes the collector's telemetry registry: every component's counters, gauges and histograms
(samples received and refused, reports by type, active calls and clients, call durations, exporter
queues, quality distributions). Names follow Prometheus conventions: the ``observertc_`` prefix, the
base unit as a suffix (``_seconds``, ``_ratio``), ``_total`` on counters. Prometheus text or OpenMetrics,
by the scraper's ``Accept`` header.

Cardinality is bounded by design: series are labelled by service, media unit, media kind, report
type or reason, never by call or client. ``per_call`` opts into per-call series (latest round-trip
time, jitter and packet loss per client of each call, and participants per call) taken from the
reports that reach this exporter; they are removed when the call or client ends, or after ``expiry``
without updates, and capped at ``max_series`` (new series past the cap are counted, not kept); their
service, call and client ids are cut to 64 characters like every client-derived label.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest

from webrtc_observer import auth
from webrtc_observer.component import Factory, Settings
from webrtc_observer.config import Duration
from webrtc_observer.http_server import Listener, ServerConfig, health_handler, serve
from webrtc_observer.model import Batch
from webrtc_observer.telemetry import Histogram, Telemetry, clip_label
from webrtc_observer.transaction import after_commit

from . import _exposition


@dataclass
class PerCallConfig:
    enabled: bool = False
    """Also publish per-call series (labelled by call and client id): mind the cardinality."""
    expiry: Duration = Duration(300)
    """Remove a per-call series that has not been updated for this long."""
    max_series: int = 10_000

    def validate(self) -> list[tuple[str, str]]:
        return [("max_series", "must be at least 1")] if self.max_series < 1 else []


@dataclass
class PrometheusExporterConfig(ServerConfig):
    endpoint: str = "0.0.0.0:9464"
    """host:port serving /metrics."""
    namespace: str = "observertc"
    """Prefix of every metric name."""
    per_call: PerCallConfig = field(default_factory=PerCallConfig)
    auth: auth.AuthConfig | None = None
    """Who may scrape: ``bearer_tokens`` (service_ids ``*``) or ``basic``."""

    def validate(self) -> list[tuple[str, str]]:
        issues = super().validate()
        issues += auth.scrape_auth_issues(self.auth, "/metrics shows every service")
        if not self.namespace.replace("_", "").isalnum():
            issues.append(("namespace", "letters, digits and _ only"))
        return issues


# Reports whose payload feeds the per-call series: (type, kind, direction).
_TRACK_REPORTS = {
    "INBOUND_AUDIO_TRACK": ("audio", "inbound"),
    "INBOUND_VIDEO_TRACK": ("video", "inbound"),
    "OUTBOUND_AUDIO_TRACK": ("audio", "outbound"),
    "OUTBOUND_VIDEO_TRACK": ("video", "outbound"),
}
_PER_CALL_FIELDS = (("roundTripTime", "round_trip_time_seconds"), ("jitter", "jitter_seconds"), ("packetsLost", "packets_lost"))
_PER_CALL_LABELS = ("service_id", "call_id", "client_id", "kind", "direction")


def metric_name(namespace: str, name: str, unit: str) -> str:
    base = f"{namespace}_{name}"
    return base if not unit or base.endswith(f"_{unit}") else f"{base}_{unit}"


class _PerCallSeries:
    """Latest per-client values of each call, and participants per call, with expiry."""

    def __init__(self, config: PerCallConfig, refused: Any, label: str) -> None:
        self._config = config
        self._values: dict[tuple[str, ...], dict[str, tuple[float, float]]] = {}  # labels → field → (value, updated)
        self._participants: dict[tuple[str, str], set[str]] = {}
        self._refused = refused
        self._label = label

    def update(self, batch: Batch, now: float) -> None:
        for report in batch.reports:
            payload = report.payload
            track = _TRACK_REPORTS.get(report.type)
            if track is not None:
                key = (clip_label(payload["serviceId"]), clip_label(payload["callId"]), clip_label(payload["clientId"]), *track)
                series = self._values.get(key)
                if series is None:
                    if len(self._values) >= self._config.max_series:
                        self._refused.add(1, self._label)
                        continue
                    series = self._values[key] = {}
                for source, name in _PER_CALL_FIELDS:
                    value = payload.get(source)
                    if value is not None:
                        series[name] = (float(value), now)
            elif report.type == "CALL_EVENT":
                self._on_event(payload)

    def _on_event(self, payload: dict[str, Any]) -> None:
        # Label values are cut as the registry cuts client-derived ones (telemetry.clip_label).
        call = (clip_label(payload["serviceId"]), clip_label(payload.get("callId", "")))
        client = clip_label(payload.get("clientId", ""))
        name = payload["name"]
        if name == "CLIENT_JOINED":
            clients = self._participants.get(call)
            if clients is None:
                if len(self._participants) >= self._config.max_series:
                    self._refused.add(1, self._label)
                    return
                clients = self._participants[call] = set()
            clients.add(client)
        elif name == "CLIENT_LEFT":
            self._participants.get(call, set()).discard(client)
            for key in [k for k in self._values if k[:3] == (*call, client)]:
                del self._values[key]
        elif name == "CALL_ENDED":
            self._participants.pop(call, None)
            for key in [k for k in self._values if k[:2] == call]:
                del self._values[key]

    def expire(self, now: float) -> None:
        limit = now - self._config.expiry
        for key, series in list(self._values.items()):
            for name, (_, updated) in list(series.items()):
                if updated < limit:
                    del series[name]
            if not series:
                del self._values[key]

    def families(self, namespace: str) -> Iterator[Metric]:
        for _, name in _PER_CALL_FIELDS:
            family = GaugeMetricFamily(
                f"{namespace}_call_client_{name}",
                f"Latest {name.replace('_', ' ')} per client of a call",
                labels=_PER_CALL_LABELS,
            )
            for key, series in self._values.items():
                if name in series:
                    family.add_metric(list(key), series[name][0])
            yield family
        participants = GaugeMetricFamily(
            f"{namespace}_call_participants_current", "Clients in each call now", labels=("service_id", "call_id")
        )
        for (service, call), clients in self._participants.items():
            participants.add_metric([service, call], len(clients))
        yield participants


class _RegistryCollector:
    """Renders the telemetry registry as Prometheus metric families on every scrape."""

    def __init__(self, telemetry: Telemetry, namespace: str, per_call: _PerCallSeries | None, own: bool = True) -> None:
        self._telemetry = telemetry
        self._namespace = namespace
        self._per_call = per_call
        self._own = own
        """False: only the per-call series (the registry itself is rendered by ._exposition)."""

    def collect(self) -> Iterator[Metric]:
        ns = self._namespace
        for metric in self._telemetry if self._own else ():
            name = metric_name(ns, metric.name, metric.unit)
            labels = list(metric.labels)
            if isinstance(metric, Histogram):
                family = HistogramMetricFamily(name, metric.description, labels=labels, unit=metric.unit)
                for label_values, value in metric.series().items():
                    cumulative, running = [], 0
                    for bound, count in zip((*metric.buckets, float("inf")), value.counts, strict=True):
                        running += count
                        cumulative.append((_le(bound), running))
                    family.add_metric(list(label_values), cumulative, value.sum)
                yield family
                continue
            scalar_type = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            scalar = scalar_type(name, metric.description, labels=labels, unit=metric.unit)
            for label_values, amount in metric.samples().items():
                scalar.add_metric(list(label_values), amount)
            yield scalar
        if self._per_call is not None:
            self._per_call.expire(time.monotonic())
            yield from self._per_call.families(ns)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class PrometheusExporter:
    def __init__(self, settings: Settings, config: PrometheusExporterConfig) -> None:
        self._config = config
        self._log = settings.logger
        self._worker = settings.worker
        self._settings = settings
        label = str(settings.id)
        refused = settings.telemetry.counter(
            "prometheus_per_call_series_refused", "Per-call series not kept because max_series was reached", ("exporter",)
        )
        self._per_call = _PerCallSeries(config.per_call, refused, label) if config.per_call.enabled else None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_RegistryCollector(settings.telemetry, config.namespace, self._per_call))
        self._per_call_registry = CollectorRegistry(auto_describe=False)
        if self._per_call is not None:
            self._per_call_registry.register(_RegistryCollector(Telemetry(), config.namespace, self._per_call, own=False))
        self._runner: Listener | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        authenticator = auth.Authenticator(self._config.auth) if self._config.auth is not None else None
        app = web.Application(middlewares=[auth.middleware(authenticator, open_paths=frozenset({"/health"}))])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", health_handler(self._settings.host))  # for probes: no credentials
        # Each worker process has its own registry and serves it on port + its index.
        self._runner, host, self.bound_port = await serve(
            app, self._config, port_offset=self._worker.index, telemetry=self._settings.telemetry, label=str(self._settings.id)
        )
        self._log.info("serving metrics", endpoint=f"{host}:{self.bound_port}", path="/metrics")

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # Rendering reads every metric under its lock: off the event loop, like any other work.
        if content_type.startswith("text/plain"):  # the text format, written directly (._exposition)
            body = await asyncio.to_thread(self._text)
            return web.Response(body=body, headers={"Content-Type": _exposition.CONTENT_TYPE})
        body = await asyncio.to_thread(encoder, self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _text(self) -> bytes:
        body = _exposition.render(self._settings.telemetry, self._config.namespace, metric_name)
        if self._per_call is not None:
            body += generate_latest(self._per_call_registry)
        return body

    async def consume(self, batch: Batch) -> None:
        per_call = self._per_call
        if per_call is not None and batch.reports:
            await after_commit(lambda: per_call.update(batch, time.monotonic()))

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _create(settings: Settings, config: PrometheusExporterConfig, _next: None) -> PrometheusExporter:
    return PrometheusExporter(settings, config)


FACTORY = Factory(
    kind="exporter",
    type="prometheus",
    config_type=PrometheusExporterConfig,
    create=_create,
    description="GET /metrics for Prometheus",
)
