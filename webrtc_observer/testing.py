"""Helpers for testing pipelines and components: a recording exporter and an in-process collector.

``async with running_collector(yaml) as c:`` builds the collector from YAML (with the extra exporter
type ``recording``), starts it, and gives access to the receivers' real ports and what was recorded.
Use endpoint ``127.0.0.1:0`` to get a free port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from webrtc_observer.component import Factory, RetryLater, Settings
from webrtc_observer.components import builtin_factories, config_types
from webrtc_observer.config import ComponentId, load_text
from webrtc_observer.model import Batch, ClientSample, Report, Sample
from webrtc_observer.service import Service
from webrtc_observer.transaction import after_commit


@dataclass
class RecordingExporterConfig:
    refuse: bool = False
    """Answer every batch with RetryLater, to test backpressure."""


class RecordingExporter:
    """Keeps every batch it is given, in order."""

    def __init__(self, config: RecordingExporterConfig) -> None:
        self.batches: list[Batch] = []
        self.refuse = config.refuse
        self.started = False
        self.stopped = False
        self._arrived = asyncio.Condition()

    async def start(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.stopped = True

    async def consume(self, batch: Batch) -> None:
        if self.refuse:
            raise RetryLater("recording exporter told to refuse", retry_after=2)
        await after_commit(lambda: self._record(batch))

    async def _record(self, batch: Batch) -> None:
        self.batches.append(batch)
        async with self._arrived:
            self._arrived.notify_all()

    @property
    def samples(self) -> list[Sample]:
        return [s for b in self.batches for s in b.samples]

    @property
    def client_samples(self) -> list[ClientSample]:
        return [s for s in self.samples if isinstance(s, ClientSample)]

    @property
    def reports(self) -> list[Report]:
        return [r for b in self.batches for r in b.reports]

    async def wait_for_samples(self, count: int, timeout: float = 5.0) -> list[Sample]:
        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.samples) >= count)

        await asyncio.wait_for(enough(), timeout)
        return self.samples


RECORDING: Factory[RecordingExporterConfig] = Factory(
    kind="exporter",
    type="recording",
    config_type=RecordingExporterConfig,
    create=lambda settings, config, _next: RecordingExporter(config),
)


def testing_factories(*extra: Factory[Any]) -> Mapping[str, Mapping[str, Factory[Any]]]:
    """The built-in factories, the ``recording`` exporter, and ``extra`` ones (a test's own stand-ins)."""
    merged = {kind: dict(by_type) for kind, by_type in builtin_factories().items()}
    for factory in (RECORDING, *extra):
        merged[f"{factory.kind}s"][factory.type] = factory
    return merged


@dataclass
class RunningCollector:
    service: Service

    def port(self, receiver: str = "observertc") -> int:
        return self.service.receivers[ComponentId.parse(receiver)].bound_port

    def url(self, path: str = "", receiver: str = "observertc", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port(receiver)}{path}"

    def exporter(self, exporter_id: str = "recording") -> Any:
        return self.service.exporters[ComponentId.parse(exporter_id)]

    @property
    def telemetry(self) -> Any:
        return self.service.telemetry


@asynccontextmanager
async def running_collector(
    yaml_text: str, env: Mapping[str, str] | None = None, extra: tuple[Factory[Any], ...] = ()
) -> AsyncIterator[RunningCollector]:
    """Build the collector from YAML (with ``extra`` component types), start it, stop it afterwards."""
    factories = testing_factories(*extra)
    config = load_text(yaml_text, config_types(factories), env=env)
    service = Service(config, factories)
    await service.start()
    try:
        yield RunningCollector(service)
    finally:
        await service.shutdown()


def settings_for_tests(component: str, kind: str = "exporter") -> Settings:
    """Settings for building one component by hand in a unit test."""
    from webrtc_observer.logs import get_logger
    from webrtc_observer.telemetry import Telemetry

    class _Host:
        ready = True

        def memory_pressure(self) -> bool:
            return False

        def problems(self) -> dict[str, str]:
            return {}

        def congested(self) -> bool:
            return False

        async def room(self) -> None:
            return None

    cid = ComponentId.parse(component)
    return Settings(id=cid, kind=kind, telemetry=Telemetry(), logger=get_logger(component=component), host=_Host())  # type: ignore[arg-type]
