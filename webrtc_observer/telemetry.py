"""The collector's own telemetry: one registry of counters, gauges and histograms for every component.

Components count what they accept, refuse, send and fail; the Prometheus and OTLP exporters publish
the registry. Names have no prefix and no unit suffix here (``samples_received``); publishers add their
conventions (``observertc_samples_received_total``).

Cardinality is bounded in one place, here. Label values of the labels in :data:`CLIENT_LABELS` come
from clients (a service id is whatever a browser puts in the URL): they are cut to
:data:`MAX_LABEL_LENGTH` characters. Each metric keeps at most ``max_series`` label sets (a histogram
counts label sets, not bucket lines). All metrics together, label sets with client-derived labels
may use at most ``max_samples`` exposed sample lines (a :class:`SampleBudget`): one for a counter or
gauge series, a histogram's bucket lines plus ``_sum`` and ``_count`` for a histogram series. Past
either bound, updates land in an overflow series in which every client-derived label is
:data:`OVERFLOW` and the other labels keep their value, so totals still add up. Overflow series are
not charged to the budget (they are bounded already), nor are series without client-derived labels.
Overflowed updates are counted in ``telemetry_overflowed_updates{metric}``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeVar

MetricKind = Literal["counter", "gauge", "histogram"]
LabelValues = tuple[str, ...]

OVERFLOW = "_overflow_"
"""The value of every client-derived label in a metric's overflow series (OTel: ``otel.metric.overflow``)."""
MAX_LABEL_LENGTH = 64
"""Client-derived label values are cut to this many characters."""
DEFAULT_MAX_SERIES = 2000
DEFAULT_MAX_SAMPLES = 10_000
CLIENT_LABELS = frozenset(
    {"service_id", "media_unit_id", "call_id", "room_id", "client_id", "user_id", "peer_connection_id", "sfu_id"}
)
"""Label names whose values come from clients. Every other label's values are chosen by the collector
(component ids, transports, reasons, report types...), so they are few."""

_V = TypeVar("_V")


def clip_label(value: str) -> str:
    """A client-derived label value as published: at most :data:`MAX_LABEL_LENGTH` characters."""
    return value if len(value) <= MAX_LABEL_LENGTH else value[:MAX_LABEL_LENGTH]


class SampleBudget:
    """Exposed sample lines that label sets with client-derived labels may use, in all metrics together.

    A line is what Prometheus' scrape ``sample_limit`` counts: one line of the text exposition. A
    label set is charged once, when it is admitted, and keeps its lines (series are never removed).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_samples must be at least 1")
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Lines taken so far."""
        return self._used

    def take(self, lines: int) -> bool:
        """Take ``lines`` if they all fit; whether they did."""
        with self._lock:
            if self._used + lines > self.limit:
                return False
            self._used += lines
            return True


@dataclass
class Metric:
    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...]
    unit: str = ""
    max_series: int = DEFAULT_MAX_SERIES
    _values: dict[LabelValues, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _callback: Callable[[], dict[LabelValues, float]] | None = None
    _client: tuple[int, ...] = field(init=False, repr=False)
    """Positions of the client-derived labels."""
    _overflowed: int = field(default=0, init=False, repr=False)
    """Updates that landed in an overflow series."""
    budget: SampleBudget | None = field(default=None, repr=False)
    """The registry's budget of lines for label sets with client-derived labels (none: unbounded)."""

    def __post_init__(self) -> None:
        self._client = tuple(i for i, name in enumerate(self.labels) if name in CLIENT_LABELS)

    @property
    def lines_per_series(self) -> int:
        """Sample lines one label set of this metric takes in the exposition."""
        return 1

    def _bounded(self, labels: LabelValues, table: dict[LabelValues, _V]) -> tuple[LabelValues, bool]:
        """The key ``labels`` are kept under in ``table`` (clipped), and whether it is an overflow key.

        Called with the lock held. A new label set with client-derived labels is admitted while the
        metric has fewer than ``max_series`` and the registry's :class:`SampleBudget` has room for
        all its lines (which it then takes). Otherwise an overflow key keeps the collector-derived
        values, so a metric has one overflow series per combination of them (one in all when every
        label is client-derived); once the table holds ``2 * max_series`` keys, the rest lands in the
        all-``_overflow_`` series. So a metric never has more than ``2 * max_series + 1``.
        """
        if labels in table:
            return labels, False
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {labels}")
        if self._client:
            labels = tuple(clip_label(v) if i in self._client else v for i, v in enumerate(labels))
            if labels in table:
                return labels, False
        if len(table) < self.max_series and (not self._client or self.budget is None or self.budget.take(self.lines_per_series)):
            return labels, False
        if self._client and len(self._client) < len(labels):
            key = tuple(OVERFLOW if i in self._client else v for i, v in enumerate(labels))
            if key in table or len(table) < 2 * self.max_series:
                return key, True
        return (OVERFLOW,) * len(labels), True

    def add(self, amount: float = 1.0, *labels: str) -> None:
        values = self._values
        lock = self._lock
        lock.acquire()  # rather than ``with``, which costs about twice as much: adds come per sample
        try:
            if labels in values:  # a known label set, the usual case: nothing to bound
                values[labels] += amount
            else:
                key, overflow = self._bounded(labels, values)
                values[key] = values.get(key, 0.0) + amount
                self._overflowed += overflow
        finally:
            lock.release()

    def set(self, value: float, *labels: str) -> None:
        values = self._values
        lock = self._lock
        lock.acquire()  # as in ``add``
        try:
            if labels in values:
                values[labels] = value
            else:
                key, overflow = self._bounded(labels, values)
                values[key] = value
                self._overflowed += overflow
        finally:
            lock.release()

    def adder(self, *labels: str) -> Adder:
        """The series of ``labels``, to add to without looking the labels up (and locking) each time.

        For a counter added to per message from one thread (the event loop's), as a stage counts what
        it takes. The series appears on its first addition; series are never removed, so a bound
        series stays valid for the metric's lifetime.
        """
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {labels}")
        return Adder(self, labels)

    def _admit(self, labels: LabelValues) -> tuple[LabelValues, bool]:
        """The key ``labels`` are kept under (its series created at 0), and whether it is an overflow key."""
        with self._lock:
            key, overflow = self._bounded(labels, self._values)
            self._values.setdefault(key, 0.0)
            return key, overflow

    def value(self, *labels: str) -> float:
        return self.samples().get(labels, 0.0)

    def samples(self) -> dict[LabelValues, float]:
        if self._callback is not None:
            return self._callback()
        with self._lock:
            return dict(self._values)

    def total(self) -> float:
        return sum(self.samples().values())

    @property
    def overflowed(self) -> int:
        """How many updates landed in an overflow series."""
        return self._overflowed


class Adder:
    """One series of a :class:`Metric` (a counter, or a gauge that is added to); ``add`` costs one dict update."""

    __slots__ = ("_key", "_metric", "_overflow", "_values")

    def __init__(self, metric: Metric, labels: LabelValues) -> None:
        self._metric = metric
        self._values = metric._values
        self._key = labels
        self._overflow: bool | None = None
        """None until the first addition admits the series (see :meth:`Metric._bounded`)."""

    def add(self, amount: float = 1.0) -> None:
        if self._overflow is None:
            self._key, self._overflow = self._metric._admit(self._key)
        # No lock, as in BoundHistogram.observe: one thread adds; the lock guards the table, whose
        # readers copy it whole.
        self._values[self._key] += amount
        if self._overflow:
            self._metric._overflowed += 1


@dataclass
class HistogramValue:
    """Cumulative bucket counts (one per upper bound, then +Inf), sum and count of one series."""

    counts: list[int]
    sum: float = 0.0
    count: int = 0


@dataclass
class Histogram(Metric):
    """Observations counted into fixed buckets (upper bounds, ``le``), as Prometheus and OTLP need.

    Listeners (e.g. an OTLP exporter's SDK instrument) also get every observation as it happens, with
    the label values of the series it landed in (clipped, or the overflow series').
    """

    buckets: tuple[float, ...] = ()
    _series: dict[LabelValues, HistogramValue] = field(default_factory=dict)
    _listeners: list[Callable[[float, LabelValues], None]] = field(default_factory=list)

    @property
    def lines_per_series(self) -> int:
        """A bucket line per bound and ``+Inf``, then ``_sum`` and ``_count`` (no ``_created`` is exposed)."""
        return len(self.buckets) + 3

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

    def _series_for(self, labels: LabelValues) -> tuple[LabelValues, HistogramValue, bool]:
        with self._lock:
            key, overflow = self._bounded(labels, self._series)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = HistogramValue(counts=[0] * (len(self.buckets) + 1))
            return key, series, overflow

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

    __slots__ = ("_buckets", "_histogram", "_key", "_listeners", "_overflow", "_series")

    def __init__(self, histogram: Histogram, labels: LabelValues) -> None:
        self._histogram = histogram
        self._buckets = histogram.buckets
        self._listeners = histogram._listeners
        """The histogram's list itself: listeners added or removed later are seen."""
        self._key = labels
        self._series: HistogramValue | None = None
        self._overflow = False

    def observe(self, value: float) -> None:
        series = self._series
        if series is None:
            self._key, series, self._overflow = self._histogram._series_for(self._key)
            self._series = series
        # No lock: each histogram is observed from one thread (processors run on the event loop).
        # The lock guards the series table; a reader in another thread copies a series whole, at
        # worst one observation behind in ``sum`` or ``count``.
        series.counts[bisect_left(self._buckets, value)] += 1
        series.sum += value
        series.count += 1
        if self._overflow:
            self._histogram._overflowed += 1
        if self._listeners:  # seldom any: no loop to set up without them
            for listener in self._listeners:
                listener(value, self._key)


class Telemetry:
    """A registry of :class:`Metric`. Asking twice for one name returns the same metric.

    ``max_series`` bounds the label sets of every metric (``service.telemetry.metrics.max_series``);
    ``max_samples`` bounds the sample lines that label sets with client-derived labels use in all
    metrics together (``service.telemetry.metrics.max_samples``).
    """

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        if max_series < 1:
            raise ValueError("max_series must be at least 1")
        self._metrics: dict[str, Metric] = {}
        self._lock = threading.Lock()
        self.max_series = max_series
        self.budget = SampleBudget(max_samples)
        self.counter(
            "telemetry_overflowed_updates",
            "Updates that landed in a metric's overflow series because of max_series or max_samples",
            ("metric",),
            callback=self._overflow_counts,
        )

    @property
    def max_samples(self) -> int:
        return self.budget.limit

    def _overflow_counts(self) -> dict[LabelValues, float]:
        return {(m.name,): float(m.overflowed) for m in self if m.overflowed}

    def counter(
        self,
        name: str,
        description: str,
        labels: tuple[str, ...] = (),
        unit: str = "",
        callback: Callable[[], dict[LabelValues, float]] | None = None,
    ) -> Metric:
        """A counter added to by the owner, or read from ``callback`` whenever it is published."""
        return self._get(name, "counter", description, labels, unit, callback)

    def gauge(
        self,
        name: str,
        description: str,
        labels: tuple[str, ...] = (),
        unit: str = "",
        callback: Callable[[], dict[LabelValues, float]] | None = None,
    ) -> Metric:
        """A gauge set by the owner, or read from ``callback`` whenever it is published."""
        return self._get(name, "gauge", description, labels, unit, callback)

    def histogram(
        self, name: str, description: str, labels: tuple[str, ...], buckets: tuple[float, ...], unit: str = ""
    ) -> Histogram:
        """``unit`` is a base unit (``seconds``, ``bytes``, ``ratio``...) or empty."""
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = self._metrics[name] = Histogram(
                    name,
                    "histogram",
                    description,
                    labels,
                    unit,
                    self.max_series,
                    budget=self.budget,
                    buckets=tuple(sorted(buckets)),
                )
            elif not isinstance(metric, Histogram) or metric.labels != labels:
                raise ValueError(f"metric {name} already registered as {metric.kind}{metric.labels}")
            return metric

    def _get(
        self,
        name: str,
        kind: MetricKind,
        description: str,
        labels: tuple[str, ...],
        unit: str,
        callback: Callable[[], dict[LabelValues, float]] | None,
    ) -> Metric:
        """The metric of ``name``, registered on first use. A callback's label sets are its owner's to bound."""
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = self._metrics[name] = Metric(name, kind, description, labels, unit, self.max_series, budget=self.budget)
            elif metric.kind != kind or metric.labels != labels:
                raise ValueError(f"metric {name} already registered as {metric.kind}{metric.labels}")
            if callback is not None:
                metric._callback = callback
            return metric

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def __iter__(self) -> Iterator[Metric]:
        with self._lock:
            return iter(list(self._metrics.values()))
