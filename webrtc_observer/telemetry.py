"""The collector's own telemetry: one registry of counters, gauges and histograms for every component.

Components count what they accept, refuse, send and fail; the Prometheus and OTLP exporters publish
the registry. Names have no prefix and no unit suffix here (``samples_received``); publishers add their
conventions (``observertc_samples_received_total``). Label sets are bounded by ``max_series`` per
metric: past it, new label sets are folded into one series labelled ``_other`` (and counted), so a
client inventing service ids cannot grow memory without bound.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

MetricKind = Literal["counter", "gauge", "histogram"]
LabelValues = tuple[str, ...]
OTHER = "_other"


@dataclass
class Metric:
    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...]
    unit: str = ""
    max_series: int = 1000
    _values: dict[LabelValues, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _callback: Callable[[], dict[LabelValues, float]] | None = None

    def _key(self, labels: LabelValues) -> LabelValues:
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {labels}")
        if labels in self._values or len(self._values) < self.max_series:
            return labels
        return (OTHER,) * len(labels)

    def add(self, amount: float = 1.0, *labels: str) -> None:
        with self._lock:
            key = self._key(labels)
            self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, value: float, *labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = value

    def value(self, *labels: str) -> float:
        return self.samples().get(labels, 0.0)

    def samples(self) -> dict[LabelValues, float]:
        if self._callback is not None:
            return self._callback()
        with self._lock:
            return dict(self._values)

    def total(self) -> float:
        return sum(self.samples().values())


@dataclass
class HistogramValue:
    """Cumulative bucket counts (one per upper bound, then +Inf), sum and count of one series."""

    counts: list[int]
    sum: float = 0.0
    count: int = 0


@dataclass
class Histogram(Metric):
    """Observations counted into fixed buckets (upper bounds, ``le``), as Prometheus and OTLP need.

    Listeners (e.g. an OTLP exporter's SDK instrument) also get every observation as it happens.
    """

    buckets: tuple[float, ...] = ()
    _series: dict[LabelValues, HistogramValue] = field(default_factory=dict)
    _listeners: list[Callable[[float, LabelValues], None]] = field(default_factory=list)

    def observe(self, value: float, *labels: str) -> None:
        self.bind(*labels).observe(value)

    def bind(self, *labels: str) -> BoundHistogram:
        """The series of ``labels``, to observe into without looking the labels up each time.

        The series appears on its first observation. Series are never removed, so a bound series
        stays valid for the histogram's lifetime.
        """
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {labels}")
        return BoundHistogram(self, labels)

    def _series_for(self, labels: LabelValues) -> tuple[LabelValues, HistogramValue]:
        with self._lock:
            key = self._key_for(labels)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = HistogramValue(counts=[0] * (len(self.buckets) + 1))
            return key, series

    def _key_for(self, labels: LabelValues) -> LabelValues:
        """``labels`` (checked by ``bind``), or the ``_other`` series once ``max_series`` is reached."""
        if labels in self._series or len(self._series) < self.max_series:
            return labels
        return (OTHER,) * len(labels)

    def series(self) -> dict[LabelValues, HistogramValue]:
        """A copy of every series; bucket counts are per bucket (not cumulative)."""
        with self._lock:
            return {k: HistogramValue(list(v.counts), v.sum, v.count) for k, v in self._series.items()}

    def add_listener(self, listener: Callable[[float, LabelValues], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[float, LabelValues], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)


class BoundHistogram:
    """One series of a :class:`Histogram`; ``observe`` costs a bucket search and three additions."""

    __slots__ = ("_buckets", "_histogram", "_key", "_series")

    def __init__(self, histogram: Histogram, labels: LabelValues) -> None:
        self._histogram = histogram
        self._buckets = histogram.buckets
        self._key = labels
        self._series: HistogramValue | None = None

    def observe(self, value: float) -> None:
        series = self._series
        if series is None:
            self._key, series = self._histogram._series_for(self._key)
            self._series = series
        # No lock: each histogram is observed from one thread (processors run on the event loop).
        # The lock guards the series table; a reader in another thread copies a series whole, at
        # worst one observation behind in ``sum`` or ``count``.
        series.counts[bisect_left(self._buckets, value)] += 1
        series.sum += value
        series.count += 1
        for listener in self._histogram._listeners:
            listener(value, self._key)


class Telemetry:
    """A registry of :class:`Metric`. Asking twice for one name returns the same metric."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._lock = threading.Lock()

    def counter(self, name: str, description: str, labels: tuple[str, ...] = (), unit: str = "") -> Metric:
        return self._get(name, "counter", description, labels, unit)

    def gauge(
        self,
        name: str,
        description: str,
        labels: tuple[str, ...] = (),
        unit: str = "",
        callback: Callable[[], dict[LabelValues, float]] | None = None,
    ) -> Metric:
        """A gauge set by the owner, or read from ``callback`` whenever it is published."""
        metric = self._get(name, "gauge", description, labels, unit)
        if callback is not None:
            metric._callback = callback
        return metric

    def histogram(
        self, name: str, description: str, labels: tuple[str, ...], buckets: tuple[float, ...], unit: str = ""
    ) -> Histogram:
        """``unit`` is a base unit (``seconds``, ``bytes``, ``ratio``...) or empty."""
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = self._metrics[name] = Histogram(
                    name, "histogram", description, labels, unit, buckets=tuple(sorted(buckets))
                )
            elif not isinstance(metric, Histogram) or metric.labels != labels:
                raise ValueError(f"metric {name} already registered as {metric.kind}{metric.labels}")
            return metric

    def _get(self, name: str, kind: MetricKind, description: str, labels: tuple[str, ...], unit: str) -> Metric:
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = self._metrics[name] = Metric(name, kind, description, labels, unit)
            elif metric.kind != kind or metric.labels != labels:
                raise ValueError(f"metric {name} already registered as {metric.kind}{metric.labels}")
            return metric

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def __iter__(self) -> Iterator[Metric]:
        with self._lock:
            return iter(list(self._metrics.values()))
