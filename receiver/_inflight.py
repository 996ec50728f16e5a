"""Bytes of input held by the receiver: bodies being read and messages waiting for the pipelines.

A hostile client can send large bodies and stall; each is held until its connection closes. The
receiver counts what it holds against ``max_inflight_bytes`` and refuses past it (503). When a lot
was released and input has then gone quiet for a moment, the C allocator is asked to give free
memory back to the system (glibc ``malloc_trim``, after a full garbage collection), so that resident
memory comes back down after such clients leave. Under steady input the freed memory is reused at
once, and the trim (a walk of the whole heap) would only cost CPU: it waits for a pause.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable

from webrtc_observer.component import RetryLater

_TRIM_AFTER = 32 * 1024 * 1024
"""Bytes released since the last trim that make another one worth it."""
_QUIET_SECONDS = 0.5
"""How long nothing new must have been held before the trim runs."""


def _malloc_trim() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):  # not glibc
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_trim = _malloc_trim()


class Busy(RetryLater):
    """Refused before any of the message was kept: ``code`` is the refusal reason."""

    code: str

    def __init__(self, code: str, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail, retry_after, code)


class Inflight:
    """What the receiver holds, against a cap."""

    def __init__(self, cap: int, quiet: float = _QUIET_SECONDS) -> None:
        self.cap = cap
        self.held = 0
        self.trims = 0
        """Trims run so far."""
        self._quiet = quiet
        self._released = 0
        self._takes = 0  # takes so far: a timer that finds it changed was not quiet
        self._trim_due = False

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise :class:`Busy`."""
        if self.held + size > self.cap:
            raise Busy("inflight_bytes", f"the receiver holds {self.held} bytes of input (max_inflight_bytes {self.cap})")
        self.held += size
        self._takes += 1

    def give(self, size: int) -> None:
        self.held -= size
        self._released += size
        if _trim is not None and self._released >= _TRIM_AFTER and not self._trim_due:
            # Later, not now: the buffers of a failed read are still referenced by its traceback.
            self._trim_due = True
            self._when_quiet(self._takes)

    def _when_quiet(self, takes: int) -> None:
        asyncio.get_running_loop().call_later(self._quiet, self._trim_if_quiet, takes)

    def _trim_if_quiet(self, takes: int) -> None:
        if self._takes != takes or self.held >= self.cap // 4:  # input still comes: its memory is reused
            self._when_quiet(self._takes)
            return
        self._trim_due = False
        self._released = 0
        self.trims += 1
        gc.collect()  # a failed read's buffers may sit in a cycle with its exception
        if _trim is not None:
            asyncio.get_running_loop().run_in_executor(None, _trim)


class Hold:
    """The bytes one request or message holds; ``release()`` gives them all back (idempotent)."""

    __slots__ = ("_inflight", "size")

    def __init__(self, inflight: Inflight) -> None:
        self._inflight = inflight
        self.size = 0

    def take(self, size: int) -> None:
        self._inflight.take(size)
        self.size += size

    def release(self) -> None:
        if self.size:
            self._inflight.give(self.size)
            self.size = 0
