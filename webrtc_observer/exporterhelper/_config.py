"""The options every queued exporter shares (OpenTelemetry Collector ``exporterhelper`` names)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from webrtc_observer.config import ByteSize, Duration


@dataclass
class SendingQueueConfig:
    enabled: bool = True
    """False: no queue; ``consume`` sends at once and waits for the outcome (no retry room for a burst)."""
    queue_size: int = 10000
    """Records queued and in flight together; when full, the pipeline is told to retry later (503)."""
    num_consumers: int = 1
    """Concurrent senders draining the queue."""
    storage: Literal["memory", "file"] = "memory"
    """``file``: records are on disk before the receiver answers 202 and stay there until delivered."""
    directory: str = ""
    """Required with ``storage: file``; one sub-folder per exporter id (and per worker index)."""
    max_bytes: ByteSize = ByteSize(1024**3)
    """On-disk bound of the persistent queue; when full, the pipeline is told to retry later."""
    fsync: Literal["batch", "always", "never"] = "batch"
    """``batch``: one fsync per accepted message; ``always``: one per record; ``never``: the OS decides."""

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if self.queue_size < 1:
            issues.append(("queue_size", "must be at least 1"))
        if self.num_consumers < 1:
            issues.append(("num_consumers", "must be at least 1"))
        if self.storage == "file" and not self.directory:
            issues.append(("directory", "required with storage: file"))
        if self.storage == "file" and self.max_bytes < 64 * 1024:
            issues.append(("max_bytes", "must be at least 64KiB"))
        if self.storage == "file" and not self.enabled:
            issues.append(("storage", "storage: file needs the queue (enabled: true)"))
        return issues


@dataclass
class RetryOnFailureConfig:
    enabled: bool = True
    """False: a failed send is dropped and counted as send-failed."""
    initial_interval: Duration = Duration(5)
    max_interval: Duration = Duration(30)
    max_elapsed_time: Duration = Duration(300)
    """How long one chunk may be retried before it is dropped and counted; 0 retries for ever."""
    multiplier: float = 1.5
    randomization_factor: float = 0.5
    """Each delay is drawn from ``[d * (1 - f), d * (1 + f)]``."""

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if self.initial_interval <= 0:
            issues.append(("initial_interval", "must be more than 0"))
        if self.max_interval < self.initial_interval:
            issues.append(("max_interval", "must be at least initial_interval"))
        if self.multiplier < 1:
            issues.append(("multiplier", "must be at least 1"))
        if not 0 <= self.randomization_factor <= 1:
            issues.append(("randomization_factor", "must be between 0 and 1"))
        return issues


@dataclass
class QueuedExporterConfig:
    """Base of a queued exporter's config: these options sit flat among the exporter's own."""

    RENAMED_OPTIONS: ClassVar[Mapping[str, str]] = {}
    """Old option name → hint naming the new one; the config loader reports such a key with the hint.
    Subclasses set it with :func:`renamed_options`."""

    sending_queue: SendingQueueConfig = field(default_factory=SendingQueueConfig)
    retry_on_failure: RetryOnFailureConfig = field(default_factory=RetryOnFailureConfig)
    timeout: Duration = Duration(5)
    """One send attempt; longer counts as a failed attempt (retried)."""
    shutdown_timeout: Duration = Duration(30)
    """How long shutdown waits for the queue to drain; what is left is counted as lost (in memory)."""

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if self.timeout <= 0:
            issues.append(("timeout", "must be more than 0"))
        return issues


def renamed_options(**hints: str) -> Mapping[str, str]:
    """``RENAMED_OPTIONS = renamed_options(drain_timeout="use shutdown_timeout")``: old name → hint."""
    return dict(hints)
