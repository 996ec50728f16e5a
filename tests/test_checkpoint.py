"""Checkpoints, restores and record formats of the scaled-out tiers, without a broker: fakes at the narrow
seams (a changelog writer, a flusher and a committer recording their calls; a stateful processor)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec
import pytest

from webrtc_observer import sample_records, state
from webrtc_observer.component import Settings
from webrtc_observer.config import ComponentId, Duration
from webrtc_observer.exporterhelper import QueuedExporter, QueuedExporterConfig, SendingQueueConfig
from webrtc_observer.exporters.kafka import KafkaExporterConfig, _Encoder, _Item
from webrtc_observer.logs import Logger
from webrtc_observer.model import Batch, ClientSample, Origin, Report, SfuSample, TurnSample, routing_key
from webrtc_observer.receiver._checkpoint import (
    ChangelogRecord,
    Checkpointer,
    changelog_key,
    input_offset,
    restore_entries,
    split_key,
)
from webrtc_observer.receiver.kafka import KafkaReceiverConfig
from webrtc_observer.state import Partition
from webrtc_observer.telemetry import Telemetry
from webrtc_observer.workers import owner_of

ORIGIN = Origin(service_id="svc", media_unit_id="mu", received_at=1_700_000_000_123, generation="2")


class FakeProcessor:
    """A Stateful processor: ``changes`` hands out what tests put in ``pending``."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name
        self.pending: dict[Partition, dict[bytes, bytes | None]] = {}
        self.assigned: dict[Partition, dict[bytes, bytes]] = {}

    def assign(self, partition: Partition, entries: Mapping[bytes, bytes]) -> None:
        self.assigned[partition] = dict(entries)

    def revoke(self, partition: Partition) -> None:
        self.assigned.pop(partition, None)

    def changes(self, partition: Partition) -> dict[bytes, bytes | None]:
        self.log.append(f"changes {self.name} {partition}")
        return self.pending.pop(partition, {})


class Seams:
    """The writer, flusher and committer of a :class:`Checkpointer`, recording the order of calls."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.written: list[ChangelogRecord] = []
        self.committed: list[dict[int, int]] = []
        self.fail: set[str] = set()

    async def write(self, records: list[ChangelogRecord]) -> None:
        self.log.append(f"write {len(records)}")
        if "write" in self.fail:
            raise RuntimeError("broker down")
        self.written += records

    async def flush(self, timeout: float) -> None:
        self.log.append("flush")
        if "flush" in self.fail:
            raise TimeoutError("exporter slow")

    async def commit(self, offsets: dict[int, int]) -> None:
        self.log.append(f"commit {sorted(offsets.items())}")
        if "commit" in self.fail:
            raise RuntimeError("rebalancing")
        self.committed.append(offsets)


def _checkpointer(seams: Seams, *processors: FakeProcessor) -> Checkpointer:
    named = [(f"p/{proc.name}", proc) for proc in processors]
    return Checkpointer(lambda: named, seams.write, seams.flush, seams.commit, flush_timeout=1.0)


async def test_a_checkpoint_collects_then_writes_then_flushes_then_commits() -> None:
    seams = Seams()
    correlation, reports = FakeProcessor(seams.log, "correlation"), FakeProcessor(seams.log, "reports")
    correlation.pending = {3: {b"call-1": b"v1", b"call-2": None}, 4: {b"call-9": b"x"}}
    reports.pending = {3: {b"client-1": b"meta"}}
    checkpointer = _checkpointer(seams, correlation, reports)

    await checkpointer.checkpoint(lambda: {3: 120, 4: 7}, asyncio.Lock())

    assert seams.log == [
        "changes correlation 3",
        "changes reports 3",
        "changes correlation 4",
        "changes reports 4",
        "write 4",
        "flush",
        "commit [(3, 120), (4, 7)]",
    ]
    by_key = {r.key: r for r in seams.written}
    assert by_key[changelog_key("p/correlation", b"call-1")] == ChangelogRecord(3, b"p/correlation\x00call-1", b"v1", 120)
    assert by_key[b"p/correlation\x00call-2"].value is None  # a tombstone
    assert by_key[b"p/reports\x00client-1"].partition == 3
    assert by_key[b"p/correlation\x00call-9"].headers == [("input-offset", b"7")]


async def test_a_checkpoint_waits_for_the_message_in_flight() -> None:
    seams = Seams()
    proc = FakeProcessor(seams.log, "correlation")
    proc.pending = {0: {b"k": b"v"}}
    checkpointer = _checkpointer(seams, proc)
    between_messages = asyncio.Lock()
    await between_messages.acquire()  # a message is being handled
    task = asyncio.create_task(checkpointer.checkpoint(lambda: {0: 5}, between_messages))
    await asyncio.sleep(0.01)
    assert seams.log == [], "changes were collected during a message"
    seams.log.append("message done")
    between_messages.release()
    await task
    assert seams.log == ["message done", "changes correlation 0", "write 1", "flush", "commit [(0, 5)]"]


@pytest.mark.parametrize("failing", ["write", "flush", "commit"])
async def test_a_failed_step_commits_nothing_and_the_next_checkpoint_writes_the_changes_again(failing: str) -> None:
    seams = Seams()
    proc = FakeProcessor(seams.log, "correlation")
    proc.pending = {0: {b"a": b"1", b"b": b"1"}}
    checkpointer = _checkpointer(seams, proc)
    seams.fail = {failing}
    with pytest.raises((RuntimeError, TimeoutError)):
        await checkpointer.checkpoint(lambda: {0: 10}, asyncio.Lock())
    assert seams.committed == []
    steps = [entry.split()[0] for entry in seams.log]
    assert steps[steps.index(failing) + 1 :] == [], f"a step ran after {failing} failed"

    seams.fail = set()
    seams.written.clear()
    proc.pending = {0: {b"b": b"2"}}  # b changed again meanwhile; a did not
    await checkpointer.checkpoint(lambda: {0: 20}, asyncio.Lock())
    assert {(r.key, r.value, r.input_offset) for r in seams.written} == {
        (b"p/correlation\x00a", b"1", 20),
        (b"p/correlation\x00b", b"2", 20),
    }
    assert seams.committed == [{0: 20}]


async def test_nothing_changed_and_nothing_consumed_means_no_checkpoint() -> None:
    seams = Seams()
    proc = FakeProcessor(seams.log, "correlation")
    checkpointer = _checkpointer(seams, proc)
    checkpointer.assigned(0, 42)
    await checkpointer.checkpoint(lambda: {0: 42}, asyncio.Lock())
    assert [e for e in seams.log if not e.startswith("changes")] == []
    await checkpointer.checkpoint(lambda: {0: 43}, asyncio.Lock())  # consumed a record without changes
    assert [e for e in seams.log if not e.startswith("changes")] == ["flush", "commit [(0, 43)]"]


def _record(namespace: str, key: bytes, value: bytes | None, offset: int | None) -> tuple[bytes, bytes | None, int | None]:
    return changelog_key(namespace, key), value, offset


def test_restore_ignores_records_past_the_committed_offset_and_drops_tombstoned_keys() -> None:
    records = [
        _record("p/correlation", b"call-1", b"v1", 10),
        _record("p/correlation", b"call-2", b"w1", 10),
        _record("p/correlation", b"call-3", b"x1", 10),
        _record("p/reports", b"client-1", b"m1", 10),
        _record("p/correlation", b"call-1", b"v2", 20),  # committed
        _record("p/correlation", b"call-2", None, 20),  # ended, committed
        _record("p/correlation", b"call-1", b"v3", 30),  # written, never committed: the member died
        _record("p/correlation", b"call-3", None, 30),  # idem: call-3 is still live as of offset 20
        _record("p/correlation", b"call-4", b"y1", 30),  # idem: call-4 does not exist yet
    ]
    restored = restore_entries(records, committed=20)
    assert restored.entries == {
        "p/correlation": {b"call-1": b"v2", b"call-3": b"x1"},
        "p/reports": {b"client-1": b"m1"},
    }
    assert restored.records == 9 and restored.skipped == 3


def test_restore_keeps_the_highest_input_offset_not_the_last_record() -> None:
    records = [
        _record("p/correlation", b"call-1", b"new owner", 150),
        _record("p/correlation", b"call-1", b"zombie", 100),  # a member that lost the partition, late
        _record("p/correlation", b"call-2", b"a", 150),
        _record("p/correlation", b"call-2", b"b", 150),  # equal offsets: the later one
    ]
    assert restore_entries(records, committed=150).entries == {"p/correlation": {b"call-1": b"new owner", b"call-2": b"b"}}


def test_restore_of_a_group_that_never_committed_is_empty_and_bad_records_are_skipped() -> None:
    records = [_record("p/correlation", b"call-1", b"v1", 10), (None, b"x", 5), (b"no-separator", b"v", 5)]
    assert restore_entries(records, committed=None).entries == {}
    restored = restore_entries(records, committed=100)
    assert restored.entries == {"p/correlation": {b"call-1": b"v1"}} and restored.skipped == 2


def test_changelog_keys_and_headers_round_trip() -> None:
    key = changelog_key("pipe/correlation", state.encode(("call", "svc", "c\x00d")))
    namespace, inner = split_key(key) or ("", b"")
    assert namespace == "pipe/correlation" and state.decode(inner) == ["call", "svc", "c\x00d"]
    assert input_offset([("other", b"1"), ("input-offset", b"1234")]) == 1234
    assert input_offset(None) is None and input_offset([("input-offset", b"x")]) is None


# -- deterministic report ids ----------------------------------------------------------------------


def test_report_ids_are_deterministic_and_tell_reports_apart() -> None:
    payload = {"serviceId": "svc", "callId": "c", "name": "CLIENT_JOINED", "clientId": "a", "timestamp": 1}
    one = Report(type="CALL_EVENT", payload=dict(payload))
    again = Report(type="CALL_EVENT", payload=dict(reversed(list(payload.items()))))  # key order does not matter
    rejoined = Report(type="CALL_EVENT", payload={**payload, "timestamp": 2})
    other_type = Report(type="OBSERVER_EVENT", payload=dict(payload))
    assert one.id == again.id
    assert len({one.id, rejoined.id, other_type.id}) == 3
    assert uuid.UUID(one.id or "").version == 5
    assert msgspec.json.decode(msgspec.json.encode(one))["id"] == one.id
    assert Report(type="CALL_EVENT", payload=payload, id="given").id == "given"


# -- the routing key and sample records -------------------------------------------------------------


def test_the_routing_key_keeps_a_room_together_and_workers_use_it() -> None:
    a = ClientSample(origin=ORIGIN, client_id="a", timestamp=0, room_id="r", call_id="c1")
    b = ClientSample(origin=ORIGIN, client_id="b", timestamp=0, room_id="r", call_id="c2")
    assert routing_key(a) == routing_key(b) == "svc\x00r"
    assert routing_key(ClientSample(origin=ORIGIN, client_id="a", timestamp=0, call_id="c1")) == "svc\x00c1"
    assert routing_key(ClientSample(origin=ORIGIN, client_id="a", timestamp=0)) == "svc\x00a"
    assert routing_key(SfuSample(origin=ORIGIN, sfu_id="s", timestamp=0)) == "svc\x00s"
    assert routing_key(TurnSample(origin=ORIGIN, server_id="t")) == "svc\x00t"
    assert owner_of(a, 7) == owner_of(b, 7)


def test_sample_records_round_trip_every_kind_and_refuse_garbage() -> None:
    samples = [
        ClientSample(origin=ORIGIN, client_id="a", timestamp=5, room_id="r", closing=True),
        SfuSample(origin=ORIGIN, sfu_id="s", timestamp=6, inbound_rtp_pads=[{"padId": "p", "ssrc": 1}]),
        TurnSample(origin=ORIGIN, server_id="t"),
    ]
    for sample in samples:
        assert sample_records.decode(sample_records.encode(sample)) == sample
    for garbage in (b"", b"\x93\x01\x02\x03", msgspec.msgpack.encode(("ufo", {})), msgspec.msgpack.encode(("client", 1))):
        with pytest.raises(sample_records.RecordError):
            sample_records.decode(garbage)


def test_sample_records_read_back_share_one_copy_of_each_id() -> None:
    from webrtc_observer.model import Track

    track = Track(kind="audio", ssrc=1, peer_connection_id="pc-" + "a" * 30, track_id="t-" + "b" * 30)
    sample = ClientSample(origin=ORIGIN, client_id="client-" + "c" * 30, timestamp=5, outbound_tracks=[track])
    first, second = (sample_records.decode(sample_records.encode(sample)) for _ in range(2))
    assert isinstance(first, ClientSample) and isinstance(second, ClientSample)
    assert first.client_id is second.client_id
    assert first.outbound_tracks[0].peer_connection_id is second.outbound_tracks[0].peer_connection_id
    assert first.outbound_tracks[0].track_id is second.outbound_tracks[0].track_id


class _Host:
    ready = True

    def problems(self) -> dict[str, str]:
        return {}


def _settings() -> Settings:
    return Settings(ComponentId("kafka"), "exporter", Telemetry(), Logger("test"), _Host())  # type: ignore[arg-type]


def test_encoding_samples_keys_by_routing_key_stamps_receive_time_and_names_the_format() -> None:
    config = KafkaExporterConfig(brokers=["b:9092"], encoding="samples")
    encode = _Encoder(config, _settings())
    sample = ClientSample(origin=ORIGIN, client_id="a", timestamp=5, room_id="r")
    report = Report(type="CALL_EVENT", payload={"callId": "c"})
    items = [msgspec.msgpack.decode(i, type=_Item) for i in encode(Batch(samples=[sample], reports=[report]))]
    assert len(items) == 1, "reports are not sent with encoding samples"
    (item,) = items
    assert (item.topic, item.key, item.timestamp, item.partition) == ("samples", b"svc\x00r", ORIGIN.received_at, None)
    assert item.headers == [("format-version", b"webrtc-observer-samples/1")]
    assert sample_records.decode(item.value) == sample
    ticks = [msgspec.msgpack.decode(i, type=_Item) for i in encode.tick_items(3, 1234)]
    assert [(t.partition, t.key, t.value, t.timestamp, t.headers) for t in ticks] == [
        (p, None, b"", 1234, [("tick", b"1")]) for p in range(3)
    ]


def test_every_report_record_carries_its_id() -> None:
    encode = _Encoder(KafkaExporterConfig(brokers=["b:9092"]), _settings())
    report = Report(type="CALL_EVENT", payload={"callId": "c", "name": "CALL_STARTED"})
    (item,) = [msgspec.msgpack.decode(i, type=_Item) for i in encode(Batch(reports=[report]))]
    assert ("report-id", (report.id or "").encode()) in item.headers
    assert msgspec.json.decode(item.value)["id"] == report.id


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"encoding": "json", "tick_interval": Duration(1)}, "tick_interval"),
        ({"encoding": "samples", "key": "random"}, "key"),
    ],
)
def test_samples_options_are_checked(options: dict[str, object], path: str) -> None:
    config = KafkaExporterConfig(brokers=["b:9092"], **options)  # type: ignore[arg-type]
    assert path in [p for p, _ in config.validate()]


def test_receiver_options_are_checked() -> None:
    config = KafkaReceiverConfig(brokers=["nohost"], topic="samples", client_options={"group.id": "x"})
    config.state.topic = "samples"
    paths = [p for p, _ in config.validate()]
    assert paths == ["brokers[0]", "state.topic", "client_options.group.id"]
    assert KafkaReceiverConfig(brokers=["k:9092"], group_id="g").changelog == "g-changelog"


# -- flush of a queued exporter --------------------------------------------------------------------


class SlowSender:
    """Acknowledges a chunk when the test releases it."""

    def __init__(self) -> None:
        self.chunks: list[tuple[list[bytes], asyncio.Event]] = []

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def send(self, items: Sequence[bytes]) -> None:
        release = asyncio.Event()
        self.chunks.append((list(items), release))
        await release.wait()


def _reports(*numbers: int) -> Batch:
    return Batch(reports=[Report(type="CALL_EVENT", payload={"i": n}) for n in numbers])


def _encode(batch: Batch) -> list[bytes]:
    return [str(r.payload["i"]).encode() for r in batch.reports]


async def _until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


def _exporter(sender: SlowSender, queue: SendingQueueConfig) -> QueuedExporter:
    settings = Settings(ComponentId("fake"), "exporter", Telemetry(), Logger("test"), _Host())  # type: ignore[arg-type]
    return QueuedExporter(settings, QueuedExporterConfig(sending_queue=queue), sender, _encode, max_chunk=2)


def _release(sender: SlowSender, *items: bytes) -> None:
    next(release for chunk, release in sender.chunks if chunk == list(items)).set()


@pytest.mark.parametrize("storage", ["memory", "file"])
async def test_flush_waits_for_what_was_accepted_before_it_and_not_after(storage: str, tmp_path: Path) -> None:
    sender = SlowSender()
    queue = SendingQueueConfig(storage=storage, directory=str(tmp_path), num_consumers=2)  # type: ignore[arg-type]
    exporter = _exporter(sender, queue)
    await exporter.start()
    await exporter.consume(_reports(1, 2, 3))
    await _until(lambda: [c for c, _ in sender.chunks] == [[b"1", b"2"], [b"3"]])  # both consumers busy
    flush = asyncio.create_task(exporter.flush(5))
    await exporter.consume(_reports(4))  # accepted after the flush began
    _release(sender, b"3")
    await _until(lambda: len(sender.chunks) == 3)
    _release(sender, b"4")  # acknowledged before [1, 2]: flush still waits for those
    await _until(lambda: exporter.queued == 2)
    await asyncio.sleep(0.01)
    assert not flush.done()
    _release(sender, b"1", b"2")
    await asyncio.wait_for(flush, 5)
    assert exporter.queued == 0
    await exporter.flush(1)  # nothing pending: returns at once
    assert await exporter.shutdown() == 0


async def test_flush_without_a_queue_waits_for_the_deliveries_in_progress() -> None:
    sender = SlowSender()
    exporter = _exporter(sender, SendingQueueConfig(enabled=False))
    await exporter.start()
    first = asyncio.create_task(exporter.consume(_reports(1)))
    await _until(lambda: len(sender.chunks) == 1)
    flush = asyncio.create_task(exporter.flush(5))
    later = asyncio.create_task(exporter.consume(_reports(2)))
    await _until(lambda: len(sender.chunks) == 2)
    _release(sender, b"2")
    await later
    await asyncio.sleep(0.01)
    assert not flush.done()
    _release(sender, b"1")
    await asyncio.wait_for(flush, 5)
    await first
    assert await exporter.shutdown() == 0


async def test_flush_times_out_when_the_destination_does_not_acknowledge() -> None:
    sender = SlowSender()
    exporter = _exporter(sender, SendingQueueConfig())
    await exporter.start()
    await exporter.consume(_reports(1))
    with pytest.raises(TimeoutError):
        await exporter.flush(0.05)
    await _until(lambda: len(sender.chunks) == 1)
    _release(sender, b"1")
    await exporter.flush(5)
    assert await exporter.shutdown() == 0
