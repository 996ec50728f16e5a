"""The registry of built-in component types. A new component is one module plus one line here."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from webrtc_observer.component import Factory


@cache
def builtin_factories() -> Mapping[str, Mapping[str, Factory[Any]]]:
    """kind (``receivers``/``processors``/``exporters``) → type → factory."""
    from webrtc_observer.exporters import debug, file, kafka, liveview, otlp, prometheus
    from webrtc_observer.processors import correlation, issues, obfuscation, quality, reports, summary
    from webrtc_observer.receiver import kafka as kafka_receiver
    from webrtc_observer.receiver import observertc

    factories: list[Factory[Any]] = [
        observertc.FACTORY,
        kafka_receiver.FACTORY,
        obfuscation.FACTORY,
        correlation.FACTORY,
        reports.FACTORY,
        quality.FACTORY,
        issues.FACTORY,
        summary.FACTORY,
        file.FACTORY,
        debug.FACTORY,
        kafka.FACTORY,
        prometheus.FACTORY,
        otlp.FACTORY,
        liveview.FACTORY,
    ]
    registry: dict[str, dict[str, Factory[Any]]] = {"receivers": {}, "processors": {}, "exporters": {}}
    for factory in factories:
        registry[f"{factory.kind}s"][factory.type] = factory
    return registry


def config_types(factories: Mapping[str, Mapping[str, Factory[Any]]] | None = None) -> Mapping[str, Mapping[str, type]]:
    """kind → type → config class, of ``factories`` (default: the built-in ones), for the config loader."""
    found = builtin_factories() if factories is None else factories
    return {kind: {t: f.config_type for t, f in by_type.items()} for kind, by_type in found.items()}
