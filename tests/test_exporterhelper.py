"""The exporter helper with a fake sender, a fake clock and a fake sleep: retry, backoff, jitter,
partial and permanent failures, the transaction path, and the persistent queue on a real directory."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from webrtc_observer import transaction
from webrtc_observer.component import RetryLater, Settings
from webrtc_observer.config import ByteSize, ComponentId, Duration
from webrtc_observer.exporterhelper import (
    QueuedExporter,
    QueuedExporterConfig,
    RetryOnFailureConfig,
    SendError,
    SendingQueueConfig,
)
from webrtc_observer.logs import Logger
from webrtc_observer.model import Batch, Report
from webrtc_observer.telemetry import Telemetry


class _Host:
    ready = True

    def problems(self) -> dict[str, str]:
        return {}


class FakeSender:
    """Answers each send with the next scripted outcome (None: success); records what it got."""

    def __init__(self, outcomes: Sequence[BaseException | None] = (), default: BaseException | None = None) -> None:
        self.outcomes = list(outcomes)
        self.default = default
        self.calls: list[list[bytes]] = []
        self.delivered: list[bytes] = []

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def send(self, items: Sequence[bytes]) -> None:
        self.calls.append(list(items))
        outcome = self.outcomes.pop(0) if self.outcomes else self.default
        if isinstance(outcome, SendError) and outcome.failed is not None:
            self.delivered.extend(item for i, item in enumerate(items) if i not in outcome.failed)
        if outcome is not None:
            raise outcome
        self.delivered.extend(items)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def _batch(*numbers: int) -> Batch:
    return Batch(reports=[Report(type="CALL_EVENT", payload={"i": n}) for n in numbers])


def _encode(batch: Batch) -> list[bytes]:
    return [str(r.payload["i"]).encode() for r in batch.reports]


def _make(
    sender: FakeSender,
    *,
    time: FakeTime | None = None,
    random: Callable[[], float] = lambda: 0.5,
    retry: RetryOnFailureConfig | None = None,
    queue: SendingQueueConfig | None = None,
    telemetry: Telemetry | None = None,
    shutdown_timeout: float = 5,
) -> tuple[QueuedExporter, Telemetry]:
    telemetry = telemetry or Telemetry()
    time = time or FakeTime()
    settings = Settings(ComponentId("fake"), "exporter", telemetry, Logger("test"), _Host())
    config = QueuedExporterConfig(
        sending_queue=queue or SendingQueueConfig(),
        retry_on_failure=retry or RetryOnFailureConfig(),
        shutdown_timeout=Duration(shutdown_timeout),
    )
    exporter = QueuedExporter(settings, config, sender, _encode, clock=time.clock, sleep=time.sleep, random=random)
    return exporter, telemetry


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


def _value(telemetry: Telemetry, name: str) -> float:
    metric = telemetry.get(name)
    return metric.value("fake") if metric is not None else 0.0


async def test_retries_back_off_exponentially_until_the_send_succeeds() -> None:
    sender = FakeSender([SendError("down")] * 4)
    time = FakeTime()
    exporter, t = _make(sender, time=time)  # random 0.5: no jitter
    await exporter.start()
    await exporter.consume(_batch(1, 2))
    await _until(lambda: _value(t, "exporter_sent_records") == 2)
    assert time.sleeps == pytest.approx([5, 7.5, 11.25, 16.875])
    assert sender.delivered == [b"1", b"2"] and exporter.queued == 0
    assert exporter.failing_since() is None
    assert await exporter.shutdown() == 0


@pytest.mark.parametrize(("draw", "factor"), [(0.0, 0.5), (0.999999, 1.5)])
async def test_jitter_stays_within_the_randomization_factor(draw: float, factor: float) -> None:
    sender = FakeSender([SendError("down")] * 8)
    time = FakeTime()
    exporter, t = _make(sender, time=time, random=lambda: draw)
    await exporter.start()
    await exporter.consume(_batch(1))
    await _until(lambda: _value(t, "exporter_sent_records") == 1)
    intervals = [5, 7.5, 11.25, 16.875, 25.3125, 30, 30, 30]  # capped at max_interval
    assert time.sleeps == pytest.approx([i * factor for i in intervals], rel=1e-5)
    await exporter.shutdown()


async def test_retry_after_raises_the_delay_and_failing_since_is_set_meanwhile() -> None:
    gate = asyncio.Event()
    time = FakeTime()

    async def slow_sleep(delay: float) -> None:
        time.sleeps.append(delay)
        await gate.wait()

    sender = FakeSender([SendError("throttled", retry_after=42)])
    exporter, t = _make(sender, time=time)
    exporter._sleep = slow_sleep  # the one place a test holds the retry: to look at health meanwhile
    await exporter.start()
    await exporter.consume(_batch(1))
    await _until(lambda: bool(time.sleeps))
    assert time.sleeps == [42] and exporter.failing_since() == 1000.0
    gate.set()
    await _until(lambda: _value(t, "exporter_sent_records") == 1)
    assert exporter.failing_since() is None
    await exporter.shutdown()


async def test_max_elapsed_time_drops_and_counts_and_zero_retries_for_ever() -> None:
    sender = FakeSender(default=SendError("down"))
    time = FakeTime()
    exporter, t = _make(sender, time=time, retry=RetryOnFailureConfig(max_elapsed_time=Duration(60)))
    await exporter.start()
    await exporter.consume(_batch(1, 2, 3))
    await _until(lambda: _value(t, "exporter_send_failed_records") == 3)
    assert sum(time.sleeps) <= 60 and len(sender.calls) == len(time.sleeps) + 1
    assert exporter.queued == 0
    await exporter.shutdown()

    forever = FakeSender([SendError("down")] * 200)
    exporter, t = _make(forever, retry=RetryOnFailureConfig(max_elapsed_time=Duration(0)))
    await exporter.start()
    await exporter.consume(_batch(1))
    await _until(lambda: _value(t, "exporter_sent_records") == 1)
    assert len(forever.calls) == 201 and _value(t, "exporter_send_failed_records") == 0
    await exporter.shutdown()


async def test_a_partial_failure_retries_only_the_failed_items_and_permanent_ones_are_dropped() -> None:
    sender = FakeSender([SendError("some", failed=[1, 3]), SendError("bad record", failed=[1], permanent=True)])
    exporter, t = _make(sender)
    await exporter.start()
    await exporter.consume(_batch(0, 1, 2, 3))
    await _until(lambda: exporter.queued == 0)
    assert sender.calls == [[b"0", b"1", b"2", b"3"], [b"1", b"3"]]
    assert sender.delivered == [b"0", b"2", b"1"]
    assert _value(t, "exporter_sent_records") == 3 and _value(t, "exporter_send_failed_records") == 1
    await exporter.shutdown()


async def test_in_a_transaction_records_are_queued_on_commit_and_released_on_abort() -> None:
    sender = FakeSender()
    exporter, t = _make(sender, queue=SendingQueueConfig(queue_size=3))
    await exporter.start()
    txn = transaction.Transaction()
    token = transaction._current.set(txn)
    try:
        await exporter.consume(_batch(1, 2))
        with pytest.raises(RetryLater):  # 2 reserved + 2 > 3
            await exporter.consume(_batch(3, 4))
    finally:
        transaction._current.reset(token)
    assert exporter.queued == 0 and _value(t, "exporter_enqueue_failed_records") == 2
    txn.abort()  # the message was refused elsewhere: nothing queued, the room is back
    await asyncio.sleep(0.01)
    assert sender.calls == []

    class Through:
        async def consume(self, batch: Batch) -> None:
            await exporter.consume(batch)

    await transaction.run(Through(), _batch(5, 6, 7))  # fits again: reserved, then queued on commit
    await _until(lambda: _value(t, "exporter_sent_records") == 3)
    assert sender.delivered == [b"5", b"6", b"7"]
    await exporter.shutdown()


async def test_shutdown_counts_what_the_memory_queue_could_not_deliver() -> None:
    sender = FakeSender(default=SendError("down"))
    time = FakeTime()

    async def real_sleep(delay: float) -> None:
        await asyncio.sleep(0.01)

    exporter, t = _make(sender, time=time, shutdown_timeout=0.1)
    exporter._sleep = real_sleep
    await exporter.start()
    await exporter.consume(_batch(1, 2, 3))
    assert await exporter.shutdown() == 3
    assert _value(t, "exporter_lost_records") == 3


async def test_a_message_larger_than_the_whole_queue_is_refused_for_good() -> None:
    from webrtc_observer.component import Refused

    exporter, t = _make(FakeSender(), queue=SendingQueueConfig(queue_size=2))
    await exporter.start()
    with pytest.raises(Refused) as caught:
        await exporter.consume(_batch(1, 2, 3))
    assert caught.value.status == 400 and caught.value.reason == "too_large"
    assert _value(t, "exporter_enqueue_failed_records") == 3
    await exporter.shutdown()


# -- the persistent queue --------------------------------------------------------------------------


def _disk(directory: Path, **kw: object) -> SendingQueueConfig:
    return SendingQueueConfig(storage="file", directory=str(directory), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("fsync", ["batch", "always", "never"])
async def test_records_left_by_an_earlier_run_go_first_in_order(tmp_path: Path, fsync: str) -> None:
    down = FakeSender(default=SendError("down"))

    async def hold(delay: float) -> None:
        await asyncio.sleep(0.01)

    exporter, t = _make(down, queue=_disk(tmp_path, fsync=fsync), shutdown_timeout=0.05)
    exporter._sleep = hold
    await exporter.start()
    for n in range(0, 30, 3):
        await exporter.consume(_batch(n, n + 1, n + 2))
    assert exporter.queued == 30
    assert await exporter.shutdown() == 0  # kept on disk, not lost

    up = FakeSender()
    exporter, t = _make(up, queue=_disk(tmp_path))
    await exporter.start()
    assert exporter.queued == 30
    await exporter.consume(_batch(100))
    await _until(lambda: _value(t, "exporter_sent_records") == 31)
    assert up.delivered == [str(n).encode() for n in [*range(30), 100]]
    await exporter.shutdown()
    exporter, t = _make(FakeSender(), queue=_disk(tmp_path))  # everything acknowledged: nothing again
    await exporter.start()
    assert exporter.queued == 0
    await exporter.shutdown()


async def test_a_torn_tail_is_skipped_and_counted_and_the_rest_delivered(tmp_path: Path) -> None:
    exporter, _ = _make(FakeSender(default=SendError("down")), queue=_disk(tmp_path), shutdown_timeout=0.01)
    exporter._sleep = lambda d: asyncio.sleep(0.01)
    await exporter.start()
    await exporter.consume(_batch(1, 2))
    await exporter.consume(_batch(3))
    await exporter.shutdown()
    (segment,) = (tmp_path / "fake").glob("*.seg")
    segment.write_bytes(segment.read_bytes()[:-1])  # the last record torn, as a crash mid-write leaves it

    sender = FakeSender()
    exporter, t = _make(sender, queue=_disk(tmp_path))
    await exporter.start()
    await _until(lambda: _value(t, "exporter_sent_records") == 2)
    assert sender.delivered == [b"1", b"2"]
    assert _value(t, "exporter_queue_corrupt_records") == 1
    await exporter.shutdown()


async def test_a_full_disk_queue_asks_to_retry_later(tmp_path: Path) -> None:
    exporter, t = _make(
        FakeSender(default=SendError("down")),
        queue=_disk(tmp_path, max_bytes=ByteSize(64 * 1024)),
        shutdown_timeout=0.01,
    )
    exporter._sleep = lambda d: asyncio.sleep(0.01)
    await exporter.start()
    big = 1000
    with pytest.raises(RetryLater) as caught:
        for n in range(200):
            await exporter.consume(Batch(reports=[Report(type="CALL_EVENT", payload={"i": "x" * big + str(n)})]))
    assert caught.value.retry_after > 0
    assert _value(t, "exporter_enqueue_failed_records") == 1
    assert 50 < exporter.queued < 70
    await exporter.shutdown()


async def test_a_failing_disk_write_refuses_the_message_and_sets_failing_since(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    exporter, t = _make(FakeSender(), queue=_disk(blocker))
    await exporter.start()
    for p in (blocker / "fake").iterdir():  # take the folder away and put a file in its way
        p.unlink()
    (blocker / "fake").rmdir()
    (blocker / "fake").write_text("in the way")
    with pytest.raises(RetryLater):
        await exporter.consume(_batch(1))
    assert exporter.failing_since() is not None
    assert _value(t, "exporter_queue_storage_errors") == 1 and _value(t, "exporter_enqueue_failed_records") == 1
    await exporter.shutdown()


logging.getLogger("test").setLevel(logging.CRITICAL)


async def test_a_nearly_full_queue_is_congested_until_it_drained_to_half() -> None:
    """Receivers hold input back while an exporter is congested (90 % of queue_size, until 50 %)."""

    class GatedSender(FakeSender):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def send(self, items: Sequence[bytes]) -> None:
            await self.gate.wait()
            await super().send(items)

    sender = GatedSender()
    exporter, t = _make(sender, queue=SendingQueueConfig(queue_size=10))
    await exporter.start()
    for n in range(8):
        await exporter.consume(_batch(n))
    assert not exporter.congested()
    await exporter.consume(_batch(8))  # 9 of 10
    assert exporter.congested()
    room = asyncio.ensure_future(exporter.room())
    await asyncio.sleep(0.01)
    assert not room.done(), "room while the queue is still nearly full"
    sender.gate.set()
    await asyncio.wait_for(room, 5)
    assert not exporter.congested() and exporter.queued == 0
    await _until(lambda: _value(t, "exporter_sent_records") == 9)
    await exporter.shutdown()


async def test_an_idle_exporter_keeps_no_reference_to_what_it_sent() -> None:
    """Once a chunk is sent the exporter lets go of it: an idle exporter does not hold its last chunk
    (up to ``max_chunk`` records) while it waits for the next one."""
    made: list[bytes] = []

    def encode(batch: Batch) -> list[bytes]:
        items = [f"record {r.payload['i']}".encode() for r in batch.reports]
        made.extend(items)
        return items

    class CountingSender(FakeSender):
        sent = 0

        async def send(self, items: Sequence[bytes]) -> None:
            self.sent += len(items)  # keeps none of them

    sender = CountingSender()
    settings = Settings(ComponentId("fake"), "exporter", Telemetry(), Logger("test"), _Host())
    exporter = QueuedExporter(settings, QueuedExporterConfig(), sender, encode)
    await exporter.start()
    await exporter.consume(_batch(1, 2, 3))
    await _until(lambda: sender.sent == 3)
    await asyncio.sleep(0.01)  # the consume loop is back waiting for the queue
    # Each record's references: ``made``, the comprehension's variable and getrefcount's argument.
    assert [sys.getrefcount(item) for item in made] == [3, 3, 3]
    assert await exporter.shutdown() == 0
