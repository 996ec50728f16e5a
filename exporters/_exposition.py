"""The telemetry registry in the Prometheus text format (version 0.0.4), written directly.

prometheus_client's exposition builds a ``Metric`` with a ``Sample`` tuple per line and then formats
each, about 15 µs a line: with ``service.telemetry.metrics.max_samples`` client-labelled lines plus
the collector's own, a scrape spent a quarter of a second there. Here each metric's label order is
settled once and each line is one string join, so a scrape of 10,000 lines costs a few tens of
milliseconds. The output is the one prometheus_client writes for the same registry (label names
sorted, ``_count`` before ``_sum``, numbers as Go prints them), and ``promtool check metrics``
passes on it. OpenMetrics, asked for by ``Accept``, still goes through prometheus_client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client.utils import floatToGoString

from webrtc_observer.telemetry import Histogram, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(metrics: Iterable[Metric], namespace: str, name_of: Callable[[str, str, str], str]) -> bytes:
    """Every metric of ``metrics`` as text exposition lines. ``name_of(namespace, name, unit)`` is the
    exporter's naming rule (prefix and unit suffix)."""
    out: list[str] = []
    for metric in metrics:
        name = name_of(namespace, metric.name, metric.unit)
        if metric.kind == "counter" and not name.endswith("_total"):
            name += "_total"
        kind = "histogram" if isinstance(metric, Histogram) else metric.kind
        out.append(f"# HELP {name} {_help(metric.description)}\n# TYPE {name} {kind}\n")
        if isinstance(metric, Histogram):
            _histogram(out, name, metric)
        else:
            _scalars(out, name, metric)
    return "".join(out).encode()


def _scalars(out: list[str], name: str, metric: Metric) -> None:
    names = metric.labels
    order = sorted(range(len(names)), key=names.__getitem__)
    for values, amount in metric.samples().items():
        if names:
            pairs = ",".join(f'{names[i]}="{_value(values[i])}"' for i in order)
            out.append(f"{name}{{{pairs}}} {_number(amount)}\n")
        else:
            out.append(f"{name} {_number(amount)}\n")


def _histogram(out: list[str], name: str, metric: Histogram) -> None:
    names = metric.labels
    order = sorted(range(len(names)), key=names.__getitem__)
    # ``le`` takes its sorted place among the other label names: the labels before it and after it.
    cut = sum(1 for i in order if names[i] < "le")
    bounds = [_le(b) for b in (*metric.buckets, math.inf)]
    bucket, count, total = f"{name}_bucket{{", f"{name}_count", f"{name}_sum"
    for values, value in metric.series().items():
        pairs = [f'{names[i]}="{_value(values[i])}"' for i in order]
        before = ",".join(pairs[:cut])
        after = ",".join(pairs[cut:])
        head = bucket + before + "," if before else bucket
        tail = "," + after + "}" if after else "}"
        running = 0
        for bound, n in zip(bounds, value.counts, strict=True):
            running += n
            out.append(f'{head}le="{bound}"{tail} {_number(running)}\n')
        plain = "{" + ",".join(pairs) + "}" if pairs else ""
        out.append(f"{count}{plain} {_number(running)}\n{total}{plain} {_number(value.sum)}\n")


def _value(text: str) -> str:
    if "\\" in text or '"' in text or "\n" in text:
        return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return text


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _le(bound: float) -> str:
    """A bucket bound as the registry collector names it (Python's repr, not Go's notation)."""
    return "+Inf" if bound == math.inf else repr(float(bound))


def _number(value: float) -> str:
    """As prometheus_client writes numbers (Go's notation: exponents sooner than Python's repr)."""
    return floatToGoString(value)
