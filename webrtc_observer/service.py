"""The running collector: builds the pipeline graph from a config, starts it, drains it on shutdown.

Graph: each receiver is one instance shared by every pipeline that lists it and feeds all of them;
each pipeline has its own processor instances (state is per pipeline); each exporter is one instance
shared by the pipelines that list it. Start order is exporters, processors, receivers; shutdown is the
reverse, so by the time an exporter stops nothing can reach it any more. With a state checkpoint
(``service.state``, :mod:`webrtc_observer.state_store`) the processors' state is restored between the
processors and the receivers, and written a last time after the receivers stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

from webrtc_observer.component import (
    Congestible,
    Consumer,
    Factory,
    FailureReporting,
    Flushable,
    Lifecycle,
    RetryLater,
    Settings,
    Worker,
)
from webrtc_observer.config import CollectorConfig, ComponentId
from webrtc_observer.exporterhelper import QueuedExporter
from webrtc_observer.logs import get_logger
from webrtc_observer.memory_limiter import MemoryLimiter
from webrtc_observer.model import Batch
from webrtc_observer.state import Stateful
from webrtc_observer.state_store import LocalCheckpoint, LocalStore
from webrtc_observer.telemetry import Metric, Telemetry
from webrtc_observer.transaction import Transactional
from webrtc_observer.workers import Peers

_KIND = {"receivers": "receiver", "processors": "processor", "exporters": "exporter"}


class FanOut:
    """Hands one batch to several consumers in turn; succeeds only if all of them took it.

    In turn, not concurrently: inside a transaction (:mod:`webrtc_observer.transaction`) every stage
    only applies or reserves, so the walk never suspends, and the first refusal aborts the whole of it.
    """

    def __init__(self, consumers: Sequence[Consumer]) -> None:
        self._consumers = list(consumers)

    async def consume(self, batch: Batch) -> None:
        for consumer in self._consumers:
            await consumer.consume(batch)


class _Counted:
    """Counts what enters a stage (and what it refuses), so operators see where data stops flowing."""

    def __init__(self, inner: Consumer, incoming: Metric, refused: Metric, pipeline: str, component: str) -> None:
        self._inner = inner
        self._incoming = incoming.adder(pipeline, component)
        self._refused = refused.adder(pipeline, component)

    async def consume(self, batch: Batch) -> None:
        try:
            await self._inner.consume(batch)
        except RetryLater:
            self._refused.add(len(batch))
            raise
        self._incoming.add(len(batch))


class Service:
    """A built collector. ``start``/``shutdown`` run the lifecycle; ``ready`` backs ``GET /health``."""

    def __init__(
        self,
        config: CollectorConfig,
        factories: Mapping[str, Mapping[str, Factory[Any]]],
        telemetry: Telemetry | None = None,
        peers: Peers | None = None,
    ) -> None:
        """``peers``: this process is one of several workers (see :mod:`webrtc_observer.workers`)."""
        self.config = config
        metrics = config.telemetry.metrics
        self.telemetry = telemetry or Telemetry(max_series=metrics.max_series, max_samples=metrics.max_samples)
        self.worker = peers.worker if peers is not None else Worker()
        self._peers = peers
        self.log = get_logger() if peers is None else get_logger(worker=self.worker.index)
        self._ready = False
        self._started: list[tuple[str, Lifecycle]] = []
        self.lost = 0
        """Records lost by the shutdowns so far (see :meth:`shutdown`)."""
        self._memory = MemoryLimiter(config.memory_limiter, self.telemetry) if config.memory_limiter is not None else None
        self.exporters: dict[ComponentId, Any] = {}
        self.processors: list[tuple[str, ComponentId, Any]] = []
        self.receivers: dict[ComponentId, Any] = {}
        self._build(factories)
        self._congestible = [e for e in self.exporters.values() if isinstance(e, Congestible)]
        """Asked for every message (:meth:`congested`): a Protocol check costs tens of µs, so once."""
        self.local_state = self._local_state()
        """Checkpoints of the processors' state (``service.state``), or None."""

    @property
    def ready(self) -> bool:
        """Every pipeline started (with ``service.workers``, every worker's)."""
        return self._ready and (self._peers is None or self._peers.all_listening())

    def memory_pressure(self) -> bool:
        return self._memory is not None and self._memory.refusing

    def problems(self) -> dict[str, str]:
        threshold = self.config.health.exporter_failure_threshold
        now = time.monotonic()
        found = {}
        for cid, exporter in self.exporters.items():
            since = exporter.failing_since() if isinstance(exporter, FailureReporting) else None
            if since is not None and now - since > threshold:
                found[f"exporter {cid}"] = f"sending has failed for {now - since:.0f}s"
        return found

    def stateful(self, receiver: ComponentId | None = None) -> list[tuple[str, Stateful]]:
        pipelines = {name for name, p in self.config.pipelines.items() if receiver is None or receiver in p.receivers}
        return [
            (f"{name}/{pid}", processor)
            for name, pid, processor in self.processors
            if name in pipelines and isinstance(processor, Stateful)
        ]

    def congested(self) -> bool:
        return any(e.congested() for e in self._congestible)

    async def room(self) -> None:
        while True:
            congested = next((e for e in self._congestible if e.congested()), None)
            if congested is None:
                return
            await congested.room()

    async def flush(self, timeout: float) -> None:
        flushes = [e.flush(timeout) for e in self.exporters.values() if isinstance(e, Flushable)]
        if flushes:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*flushes)

    def _settings(self, kind: str, cid: ComponentId, pipeline: str | None = None) -> Settings:
        fields = {"component": str(cid)}
        if pipeline:
            fields["pipeline"] = pipeline
        return Settings(
            id=cid,
            kind=_KIND[kind],  # type: ignore[arg-type]
            telemetry=self.telemetry,
            logger=self.log.bind(**fields),
            host=self,
            worker=self.worker,
        )

    def _build(self, factories: Mapping[str, Mapping[str, Factory[Any]]]) -> None:
        cfg = self.config
        used: dict[str, set[ComponentId]] = {kind: set() for kind in _KIND}
        for pipeline in cfg.pipelines.values():
            used["exporters"].update(pipeline.exporters)
            used["receivers"].update(pipeline.receivers)
        for cid, options in cfg.components["exporters"].items():
            if cid in used["exporters"]:
                self.exporters[cid] = factories["exporters"][cid.type].create(self._settings("exporters", cid), options, None)

        t = self.telemetry
        incoming = t.counter(
            "pipeline_stage_items", "Samples and reports taken by each stage of each pipeline", ("pipeline", "component")
        )
        refused = t.counter(
            "pipeline_stage_refused_items", "Samples and reports a stage asked to retry later", ("pipeline", "component")
        )
        entry_points: dict[ComponentId, list[Consumer]] = {}
        for name, pipeline in cfg.pipelines.items():
            consumer: Consumer = FanOut(
                [_Counted(self.exporters[e], incoming, refused, name, str(e)) for e in pipeline.exporters]
            )
            for pid in reversed(pipeline.processors):
                options = cfg.components["processors"][pid]
                processor = factories["processors"][pid.type].create(self._settings("processors", pid, name), options, consumer)
                self.processors.insert(0, (name, pid, processor))
                consumer = _Counted(processor, incoming, refused, name, str(pid))
            for rid in pipeline.receivers:
                entry_points.setdefault(rid, []).append(consumer)

        for rid, consumers in entry_points.items():
            options = cfg.components["receivers"][rid]
            entry: Consumer = Transactional(FanOut(consumers))
            if self._peers is not None:
                entry = self._peers.router(str(rid), entry, self.telemetry)
            self.receivers[rid] = factories["receivers"][rid.type].create(self._settings("receivers", rid), options, entry)

        unused = [
            f"{kind[:-1]} {cid}"
            for kind in _KIND
            for cid in cfg.components[kind]
            if kind != "processors" and cid not in used[kind]
        ]
        if unused:
            self.log.info("defined but not in any pipeline", components=", ".join(unused))

    def _local_state(self) -> LocalCheckpoint | None:
        """``service.state``: the directory given, else with workers the supervisor's run directory,
        else (one process) no checkpoint; none either without stateful processors."""
        directory = self.config.state.directory
        if directory is None and self._peers is not None:
            directory = os.path.join(self._peers.directory, "state")
        stateful = self.stateful()
        if directory is None or not stateful:
            return None
        return LocalCheckpoint(
            LocalStore(directory, self.worker),
            stateful,
            interval=float(self.config.state.checkpoint_interval),
            flush=self.flush,
            flush_timeout=min(10.0, self.config.shutdown_timeout / 4),
            telemetry=self.telemetry,
            log=self.log,
        )

    async def start(self) -> None:
        """Exporters first, then processors (downstream first), then receivers."""
        order: list[tuple[str, Lifecycle]] = []
        if self._memory is not None:
            order.append(("memory limiter", self._memory))
        order += [(f"exporter {cid}", e) for cid, e in self.exporters.items()]
        order += [(f"processor {pid} in {name}", p) for name, pid, p in reversed(self.processors)]
        if self.local_state is not None:  # restores before any input; shuts down after the receivers
            order.append(("state checkpoint", self.local_state))
        if self._peers is not None:
            order.append(("samples from peer workers", self._peers))
        order += [(f"receiver {rid}", r) for rid, r in self.receivers.items()]
        for label, component in order:
            try:
                await component.start()
            except Exception:
                self.log.error("start failed, stopping what started", component=label, exc_info=True)
                await self.shutdown()
                raise
            self._started.append((label, component))
        self._ready = True
        self.log.info("collector started", pipelines=", ".join(self.config.pipelines), config=self.config.source)

    async def shutdown(self, timeout: float | None = None) -> int:
        """Receivers stop accepting, then processors flush downstream, then exporters drain.

        ``timeout`` (default ``service.shutdown_timeout``) bounds the whole shutdown; each exporter's
        own ``shutdown_timeout`` bounds its drain, and the smaller wins: a component still stopping
        when the budget is spent is abandoned. Returns the records lost: what exporters without a
        persistent queue could not deliver (their ``shutdown()`` returns it), plus what an abandoned
        exporter still held in memory. Also kept in :attr:`lost`.
        """
        self._ready = False
        started, self._started = self._started, []
        budget = float(self.config.shutdown_timeout if timeout is None else timeout)
        deadline = time.monotonic() + budget
        lost = 0
        for label, component in reversed(started):
            remaining = deadline - time.monotonic()
            try:
                result = await asyncio.wait_for(component.shutdown(), max(remaining, 0.01))
            except TimeoutError:
                abandoned = component.unsent() if isinstance(component, QueuedExporter) else 0  # it counted them
                lost += abandoned
                self.log.error(
                    "shutdown did not finish in service.shutdown_timeout; abandoning it",
                    component=label,
                    timeout_s=budget,
                    records_lost=abandoned,
                )
                continue
            except Exception:
                self.log.error("shutdown failed", component=label, exc_info=True)
                continue
            lost += result or 0
        self.lost += lost
        if lost:
            self.log.error("records lost at shutdown", records=lost)
        self.log.info("collector stopped")
        return lost

    async def run_until_signal(self) -> int:
        """Run until SIGTERM or SIGINT, then shut down within ``shutdown_timeout``; the records lost."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        self.log.info("shutting down", timeout_s=self.config.shutdown_timeout)
        return await self.shutdown()
