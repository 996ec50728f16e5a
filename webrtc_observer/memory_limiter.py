"""``service.memory_limiter``: refuse new data before input can grow the process past a memory limit.

As the OpenTelemetry Collector's ``memory_limiter``: the process's resident memory is read every
``check_interval``; from ``limit - spike_limit`` on, receivers refuse new data with 503 and
``Retry-After`` (reason ``memory_limit``, counted) until it is back below. ``spike_limit`` is the
headroom for what may arrive between two checks; it defaults to a fifth of ``limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from webrtc_observer.config import MemoryLimiterConfig
from webrtc_observer.telemetry import Telemetry

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size (Linux ``/proc/self/statm``; elsewhere the peak RSS)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryLimiter:
    """Reads memory every ``check_interval`` and says whether receivers may take new data."""

    def __init__(self, config: MemoryLimiterConfig, telemetry: Telemetry, read: Callable[[], int] = resident_bytes) -> None:
        self._config = config
        self._read = read
        self._soft = config.soft_limit
        self._task: asyncio.Task[None] | None = None
        self.refusing = False
        self.resident = 0
        telemetry.gauge(
            "memory_limiter_resident",
            "Resident memory of the process as the memory limiter last read it",
            unit="bytes",
            callback=lambda: {(): float(self.resident)},
        )
        telemetry.gauge(
            "memory_limiter_refusing",
            "1 while the memory limiter refuses new data (above limit - spike_limit)",
            callback=lambda: {(): 1.0 if self.refusing else 0.0},
        )

    def check(self) -> bool:
        """Read memory now; True while new data must be refused."""
        self.resident = self._read()
        self.refusing = self.resident >= self._soft
        return self.refusing

    async def start(self) -> None:
        self.check()
        self._task = asyncio.create_task(self._watch(), name="memory-limiter")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(float(self._config.check_interval))
            self.check()

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
