"""The component model: what receivers, processors and exporters are, and what they are given.

A component type is one module that defines a config dataclass and a :class:`Factory`, registered in
:mod:`webrtc_observer.components`. The runtime builds instances from the YAML, starts exporters first
and receivers last, and shuts them down in the opposite order so that data in flight drains downstream.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import msgspec

from webrtc_observer.config import ComponentId
from webrtc_observer.logs import Logger
from webrtc_observer.model import Batch, Origin
from webrtc_observer.state import Stateful
from webrtc_observer.telemetry import Telemetry

Kind = Literal["receiver", "processor", "exporter"]
C = TypeVar("C")


class Consumer(Protocol):
    """The next stage of a pipeline.

    ``consume`` returns once the batch is accepted (queued or written). It raises :class:`RetryLater`
    when the stage is full: the caller must not drop the batch silently but refuse it to its sender.
    """

    async def consume(self, batch: Batch) -> None: ...


class Undecoded(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A message as a receiver read it, before decoding: what :class:`Forwarder` hands to another worker."""

    data: bytes
    origin: Origin
    route: str
    encoding: str | None = None
    gzipped: bool | None = None


@runtime_checkable
class Forwarder(Protocol):
    """A receiver's next stage when ``service.workers`` > 1 (:mod:`webrtc_observer.workers`): it can hand a
    message whose samples another worker owns to that worker undecoded, so it is decoded only once.

    The receiver tells the routing keys of a message from its bytes; ``owner`` answers which other
    worker owns all of them (None: this one, or several). ``forward`` returns the samples the owner
    took, or raises what the owner's receiver raised (:class:`Refused`, :class:`RetryLater`). The owner
    calls what the receiver registered with ``take_forwarded``: decode and hand on, as if it had read
    the message itself.
    """

    def owner(self, keys: Sequence[str]) -> int | None: ...

    async def forward(self, owner: int, message: Undecoded) -> int: ...

    def take_forwarded(self, take: Callable[[Undecoded], Awaitable[int]]) -> None: ...


@runtime_checkable
class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def shutdown(self) -> int | None:
        """Stop and release everything; drain what was accepted. Safe to call without ``start``.

        An exporter returns the records it accepted and could not deliver (lost); others None."""
        ...


class RetryLater(Exception):
    """A stage cannot take more now (a full queue, shutting down). Receivers answer 503 and count it."""

    def __init__(self, reason: str, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.code = code
        """The refusal code a receiver answers with (``memory_limit``, ``inflight_bytes``...); None
        for the default, ``pipeline_full``."""


class Refused(Exception):
    """A stage refuses this input for good: its content is at fault (status 400) or its sender is over a
    quota (429). Nothing of it was kept; receivers answer with ``status`` and ``reason`` and count it."""

    def __init__(self, reason: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status


class Host(Protocol):
    """What the running collector offers every component."""

    @property
    def ready(self) -> bool:
        """True once every pipeline has started and until shutdown begins."""
        ...

    def memory_pressure(self) -> bool:
        """True while ``service.memory_limiter`` refuses new data: receivers answer 503 (reason memory_limit)."""
        ...

    def problems(self) -> dict[str, str]:
        """Component id → what is wrong, for components failing longer than the health threshold."""
        ...

    def stateful(self, receiver: ComponentId | None = None) -> list[tuple[str, Stateful]]:
        """The stateful processors (:mod:`webrtc_observer.state`) of the pipelines ``receiver`` feeds
        (of all pipelines when None), each named ``pipeline/processor``: a checkpoint's namespaces."""
        ...

    async def flush(self, timeout: float) -> None:
        """Return once every exporter delivered what it accepted so far (:class:`Flushable`); raises
        TimeoutError after ``timeout`` seconds. A checkpoint flushes before it commits input offsets."""
        ...

    def congested(self) -> bool:
        """True while an exporter's sending queue is congested (:class:`Congestible`)."""
        ...

    async def room(self) -> None:
        """Return once no exporter is congested: what a receiver that can hold input back awaits."""
        ...


@runtime_checkable
class Congestible(Protocol):
    """An exporter whose sending queue can be congested: nearly full, and not yet drained back below a
    low watermark. Receivers hold new input back while it is (instead of deriving reports only to
    have them refused)."""

    def congested(self) -> bool: ...

    async def room(self) -> None:
        """Return once the exporter is not congested (at once if it is not)."""
        ...


@runtime_checkable
class Flushable(Protocol):
    """An exporter that can wait until what it accepted so far is delivered (or durable downstream)."""

    async def flush(self, timeout: float) -> None: ...


@runtime_checkable
class FailureReporting(Protocol):
    """An exporter that can tell since when its sends have been failing (health checks ask)."""

    def failing_since(self) -> float | None:
        """``time.monotonic()`` of the first failure of the current failing streak, or None."""
        ...


@dataclass(frozen=True)
class Worker:
    """Which of the collector's worker processes this is (``service.workers``); one process: 0 of 1."""

    index: int = 0
    count: int = 1


@dataclass(frozen=True)
class Settings:
    """Everything a component gets besides its own config and its neighbours."""

    id: ComponentId
    kind: Kind
    telemetry: Telemetry
    logger: Logger
    host: Host
    worker: Worker = Worker()
    """Components that own a resource (a port, a file) keep one per worker: see ``docs``/README."""


@dataclass(frozen=True)
class Factory(Generic[C]):
    """Makes instances of one component type.

    ``create`` takes the settings, the typed config and, for receivers and processors, the next
    consumer; exporters get ``None`` there.
    """

    kind: Kind
    type: str
    config_type: builtins.type[C]
    create: Callable[[Settings, C, Any], Any]
    description: str = ""
