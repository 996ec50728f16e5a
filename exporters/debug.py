"""Exporter ``debug``: logs a compact summary of what flows through, for people trying things out.

Counts are aggregated and logged at most once per ``interval`` (so a busy pipeline does not flood the
log); ``verbosity: detailed`` also logs each record.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from webrtc_observer.component import Factory, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch
from webrtc_observer.records import json_records, record_types
from webrtc_observer.transaction import after_commit


@dataclass
class DebugExporterConfig:
    verbosity: Literal["basic", "detailed"] = "basic"
    interval: Duration = Duration(5)
    """Log the counts at most this often."""


class DebugExporter:
    def __init__(self, settings: Settings, config: DebugExporterConfig) -> None:
        self._config = config
        self._log = settings.logger
        self._counts: Counter[str] = Counter()
        self._totals: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def consume(self, batch: Batch) -> None:
        await after_commit(lambda: self._record(batch))

    def _record(self, batch: Batch) -> None:
        self._counts.update(record_types(batch))
        if self._config.verbosity == "detailed":
            for line in json_records(batch):
                self._log.info("record", json=line.decode())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._config.interval)
            self._flush()

    def _flush(self) -> None:
        if self._counts:
            self._totals.update(self._counts)
            summary = ", ".join(f"{k}={v}" for k, v in sorted(self._counts.items()))
            self._log.info("records", counts=summary, total=sum(self._totals.values()))
            self._counts.clear()

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._flush()


def _create(settings: Settings, config: DebugExporterConfig, _next: None) -> DebugExporter:
    return DebugExporter(settings, config)


FACTORY = Factory(
    kind="exporter", type="debug", config_type=DebugExporterConfig, create=_create, description="log a summary of records"
)
