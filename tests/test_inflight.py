"""The receiver's hold on input bytes gives freed memory back to the system once input pauses, not
while it streams (a trim walks the whole heap: under steady input it would only cost CPU)."""

from __future__ import annotations

import asyncio

import pytest

from webrtc_observer.receiver import _inflight
from webrtc_observer.receiver._inflight import Busy, Hold, Inflight

MB = 1024 * 1024


async def _until(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _message(inflight: Inflight, size: int) -> None:
    hold = Hold(inflight)
    hold.take(size)
    hold.release()


@pytest.mark.skipif(_inflight._trim is None, reason="no glibc malloc_trim on this platform")
async def test_trims_once_input_pauses_and_never_while_it_streams() -> None:
    inflight = Inflight(cap=64 * MB, quiet=0.2)
    loop = asyncio.get_running_loop()
    streamed_until = loop.time() + 1.5
    while loop.time() < streamed_until:  # 2 MB every 20 ms: the 32 MB that make a trim worth it in 0.3 s
        _message(inflight, 2 * MB)
        await asyncio.sleep(0.02)
    assert inflight.trims == 0, "trimmed while input kept coming"
    await _until(lambda: inflight.trims == 1)
    await asyncio.sleep(0.5)
    assert inflight.trims == 1, "a pause trims once"


async def test_refuses_past_the_cap_and_releases_what_it_held() -> None:
    inflight = Inflight(cap=10)
    hold = Hold(inflight)
    hold.take(6)
    with pytest.raises(Busy):
        Hold(inflight).take(5)
    hold.release()
    hold.release()  # idempotent
    assert inflight.held == 0
    Hold(inflight).take(10)
