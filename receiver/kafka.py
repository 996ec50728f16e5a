"""Receiver ``kafka``: the analysis tier of a scaled-out collector, a member of a Kafka consumer group.

It reads samples from ``topic`` (written by the ``kafka`` exporter with ``encoding: samples``, or
ObserveRTC ``Samples`` JSON with ``encoding: json``) in the consumer group ``group_id``, and hands
every record to its pipelines as one batch naming its partition and stream time
(:class:`~webrtc_observer.model.Batch` ``partition``/``time``; a tick record is an empty batch with a
time). Kafka decides which member owns which partition (cooperative-sticky assignment); the state of
the stateful processors (:mod:`webrtc_observer.state`) moves with the partitions:

- **assigned**: the partition's changelog (``state.topic``, same partition number) is read from its
  start to its end (``enable.partition.eof``: tansu's ListOffsets watermark is wrong), the latest
  entry of each key up to the group's committed offset is kept (:mod:`._checkpoint`), every
  stateful processor is given its entries (``assign``), and consumption starts at the committed
  offset. Only that partition waits while it is restored (on a thread of its own).
- every ``state.checkpoint_interval``, on **revoke** and at shutdown: a checkpoint, in this order:
  collect ``changes`` between messages, write them to the changelog, flush the changelog producer and
  every exporter, commit the input offsets. Then ``revoke`` on a revoked partition.
- a partition **lost** (the session expired): its state is dropped without a checkpoint.

Records of a partition are handled in order, one transaction each. ``RetryLater`` pauses the
partition and retries the same record after ``retry_after``; ``Refused`` (and undecodable records)
are counted (``observertc_samples_refused_total{reason}``) and skipped.

The client library (confluent-kafka) blocks, so the consumer runs on a thread of its own and hands
records to the event loop; its rebalance callbacks wait for the loop's checkpoint. Every call on the
consumer is made on that thread (one from another thread waits while it is inside a rebalance
callback): the loop asks for commits through a queue, served between polls and while a callback
waits. The committed offsets of newly assigned partitions are read there too, after the callback;
the changelog is read by a separate consumer without a group. Delivery of the
reports is at least once: a member that dies re-emits, through the next owner, what it emitted after
its last checkpoint, with the same report ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Literal

from webrtc_observer import sample_records
from webrtc_observer.component import Consumer, Factory, Refused, RetryLater, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch, Origin

from ._checkpoint import ChangelogRecord, Checkpointer, Restored, input_offset, restore_entries
from ._decoding import RefusedInput, decode

_RESERVED = frozenset(
    {
        "bootstrap.servers",
        "metadata.broker.list",
        "group.id",
        "group.instance.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "auto.offset.reset",
        "enable.partition.eof",
        "on_commit",
        "error_cb",
        "logger",
    }
)
_HIGH_WATER = 5000
"""Records waiting on the loop per partition before the partition is paused."""
_LOW_WATER = 1000
_MAX_JSON_BYTES = 16 * 1024 * 1024
_RESTORE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_CHECKPOINT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class StateConfig:
    topic: str | None = None
    """The changelog topic (compacted; created if missing with the input topic's partition count);
    default ``<group_id>-changelog``."""
    checkpoint_interval: Duration = Duration(5)
    """How often the state of every owned partition is checkpointed (and input offsets committed)."""


@dataclass
class KafkaReceiverConfig:
    brokers: list[str] = field(default_factory=list)
    """Bootstrap brokers, ``host:port``."""
    topic: str = "samples"
    """The input topic."""
    group_id: str = "webrtc-observer"
    """The consumer group: every member of one analysis tier has the same."""
    session_timeout: Duration = Duration(10)
    """How long the group waits for a silent member before its partitions move (the failover pause)."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group without committed offsets starts: ``earliest`` reads the topic from its start."""
    encoding: Literal["samples", "json"] = "samples"
    """``samples``: records of the ``kafka`` exporter's ``encoding: samples``; ``json``: ObserveRTC
    ``Samples`` (or ``ClientSample``) JSON, the service and media unit in the headers ``service-id``
    and ``media-unit-id``."""
    state: StateConfig = field(default_factory=StateConfig)
    group_instance_id: str | None = None
    """Static membership (``group.instance.id``), for real Kafka only; off by default."""
    client_options: dict[str, bool | int | float | str] = field(default_factory=dict)
    """Extra confluent-kafka (librdkafka) consumer options, passed through verbatim."""

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if not self.brokers:
            issues.append(("brokers", "must list at least one broker (host:port)"))
        for i, broker in enumerate(self.brokers):
            host, sep, port = broker.rpartition(":")
            if not sep or not host or not port.isdigit():
                issues.append((f"brokers[{i}]", f"expected host:port, got {broker!r}"))
        if not self.topic:
            issues.append(("topic", "must not be empty"))
        if not self.group_id:
            issues.append(("group_id", "must not be empty"))
        if self.state.topic is not None and self.state.topic == self.topic:
            issues.append(("state.topic", "must differ from the input topic"))
        if self.state.checkpoint_interval <= 0:
            issues.append(("state.checkpoint_interval", "must be positive"))
        if self.session_timeout < 1:
            issues.append(("session_timeout", "must be at least 1s"))
        for name in sorted(self.client_options):
            if name in _RESERVED:
                issues.append((f"client_options.{name}", "is set by the receiver (use its own option, or leave it out)"))
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            issues.append(("brokers", "the kafka receiver needs confluent-kafka, which is not installed"))
        return issues

    @property
    def changelog(self) -> str:
        return self.state.topic or f"{self.group_id}-changelog"


class _Owned:
    """A partition this member owns, on the loop: records waiting, the position, the worker task."""

    __slots__ = ("backlog", "last_seen", "partition", "paused", "position", "retrying", "stopped", "task", "wakeup")

    def __init__(self, partition: int, position: int | None) -> None:
        self.partition = partition
        self.backlog: deque[Any] = deque()
        self.position = position
        """The next offset to handle (None: nothing handled and nothing committed yet)."""
        self.last_seen = -1
        self.paused = False
        self.retrying = False
        self.stopped = False
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class KafkaReceiver:
    def __init__(self, settings: Settings, config: KafkaReceiverConfig, next_consumer: Consumer) -> None:
        self._settings = settings
        self._config = config
        self._next = next_consumer
        self._log = settings.logger
        self._label = str(settings.id)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._consumer: Any = None
        self._producer: Any = None
        self._owned: dict[int, _Owned] = {}
        self._restoring: set[int] = set()
        """Partitions assigned by the group and being restored (poll thread only)."""
        self._assigned: set[int] = set()
        """Partitions handed to the consumer with ``incremental_assign`` (poll thread only)."""
        self._generations: dict[int, int] = {}
        """How many times each partition was assigned: a restore answers for one assignment (poll thread only)."""
        self._to_restore: set[int] = set()
        """Partitions assigned in a callback, whose committed offsets are read after it (poll thread only)."""
        self._between_messages = asyncio.Lock()
        self._checkpointer = Checkpointer(
            lambda: settings.host.stateful(settings.id),
            self._write_changelog,
            settings.host.flush,
            self._commit,
            flush_timeout=max(10.0, float(config.session_timeout)),
        )
        self._checkpoints: asyncio.Task[None] | None = None
        self._last_checkpoint = time.monotonic()
        self._started = False
        t = settings.telemetry
        label = self._label
        self._accepted = t.counter("receiver_accepted_samples", "Samples accepted into the pipelines", ("receiver", "transport"))
        self._refused = t.counter("receiver_refused_messages", "Messages refused, by reason", ("receiver", "transport", "reason"))
        self._received = t.counter(
            "samples_received", "Samples received, by service and media unit", ("service_id", "media_unit_id")
        )
        self._refused_samples = t.counter("samples_refused", "Samples or messages refused, by reason", ("reason",))
        self._internal_errors = t.counter(
            "receiver_internal_errors", "Messages the receiver failed on (bugs), by transport", ("receiver", "transport")
        )
        self._restore_seconds = t.histogram(
            "kafka_receiver_restore_duration",
            "Time to restore a partition's state from its changelog",
            ("receiver",),
            _RESTORE_BUCKETS,
            "seconds",
        )
        self._restored = t.counter("kafka_receiver_restored_records", "Changelog records read while restoring", ("receiver",))
        self._checkpoint_seconds = t.histogram(
            "kafka_receiver_checkpoint_duration",
            "Time of a checkpoint: changelog write, flush of every exporter, offset commit",
            ("receiver",),
            _CHECKPOINT_BUCKETS,
            "seconds",
        )
        self._checkpoint_failures = t.counter("kafka_receiver_checkpoint_failures", "Checkpoints that failed", ("receiver",))
        t.gauge(
            "kafka_receiver_checkpoint_age",
            "Seconds since the last successful checkpoint",
            ("receiver",),
            "seconds",
            callback=lambda: {(label,): time.monotonic() - self._last_checkpoint} if self._started else {},
        )
        t.gauge(
            "kafka_receiver_partitions_owned",
            "Input partitions this member owns (restored and consuming)",
            ("receiver",),
            callback=lambda: {(label,): float(len(self._owned))},
        )
        t.gauge(
            "kafka_receiver_lag",
            "Records of a partition received or known to exist and not handled yet (a lower bound)",
            ("receiver", "partition"),
            "records",
            callback=self._lags,
        )

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._last_checkpoint = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"kafka-receiver-{self._label}", daemon=True)
        self._thread.start()
        self._checkpoints = asyncio.create_task(self._checkpoint_loop(), name=f"receiver-{self._label}-checkpoints")
        cfg = self._config
        self._log.info(
            "consuming from kafka",
            brokers=",".join(cfg.brokers),
            topic=cfg.topic,
            group=cfg.group_id,
            changelog=cfg.changelog,
            encoding=cfg.encoding,
        )

    async def shutdown(self) -> None:
        """Leave the group: the final checkpoint of every owned partition runs in the revoke."""
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            await asyncio.gather(self._checkpoints, return_exceptions=True)
            self._checkpoints = None
        self._stop.set()
        thread = self._thread
        if thread is not None:
            while thread.is_alive():  # its last act is leaving the group: the final checkpoint
                await asyncio.sleep(0.02)
            self._thread = None
        for owned in list(self._owned.values()):
            await self._stop_worker(owned)
        self._owned.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.flush, 5.0)
        self._started = False

    # -- the consumer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if not self._setup():
                return
            self._consume()
        except Exception:
            self._log.error("kafka receiver failed", exc_info=True)

    def _setup(self) -> bool:
        """Topics (the changelog created if missing), the producer and the consumer. False: stopped first."""
        from confluent_kafka import Consumer, Producer

        cfg = self._config
        warned = False
        while not self._stop.is_set():
            try:
                self._ensure_changelog()
                break
            except _NotYet as exc:
                if not warned:
                    self._log.warning("waiting for the input topic", topic=cfg.topic, reason=str(exc))
                    warned = True
                self._stop.wait(1.0)
            except Exception as exc:
                self._log.error("cannot set up the changelog topic; retrying", topic=cfg.changelog, error=str(exc))
                self._stop.wait(2.0)
        if self._stop.is_set():
            return False
        base = {"bootstrap.servers": ",".join(cfg.brokers), "error_cb": self._client_error}
        self._producer = Producer(
            {**base, "acks": "all", "enable.idempotence": True, "linger.ms": 5, "client.id": f"webrtc-observer-{cfg.group_id}"}
        )
        session_ms = int(cfg.session_timeout * 1000)
        conf: dict[str, Any] = {
            **cfg.client_options,
            **base,
            "group.id": cfg.group_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "auto.offset.reset": cfg.auto_offset_reset,
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": max(100, min(3000, session_ms // 3)),
        }
        if cfg.group_instance_id:
            conf["group.instance.id"] = cfg.group_instance_id
        self._consumer = Consumer(conf)
        self._consumer.subscribe([cfg.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        return True

    def _ensure_changelog(self) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        cfg = self._config
        admin = AdminClient({"bootstrap.servers": ",".join(cfg.brokers)})
        topics = admin.list_topics(timeout=10).topics
        found = topics.get(cfg.topic)
        if found is None or found.error is not None or not found.partitions:
            raise _NotYet(f"topic {cfg.topic} does not exist")
        partitions = len(found.partitions)
        changelog = topics.get(cfg.changelog)
        if changelog is not None and changelog.error is None and changelog.partitions:
            if len(changelog.partitions) < partitions:
                raise RuntimeError(
                    f"changelog topic {cfg.changelog} has {len(changelog.partitions)} partitions, the input {partitions}"
                )
            return
        config = {"cleanup.policy": "compact", "retention.ms": "-1"}
        futures = admin.create_topics([NewTopic(cfg.changelog, partitions, 1, config=config)], request_timeout=10)
        for future in futures.values():
            try:
                future.result(15)
            except Exception as exc:
                if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
        self._log.info("created the changelog topic", topic=cfg.changelog, partitions=partitions)

    def _consume(self) -> None:
        consumer = self._consumer
        loop = self._loop
        assert loop is not None
        try:
            while not self._stop.is_set():
                self._run_commands()
                messages = consumer.consume(500, 0.1)
                if not messages:
                    continue
                good = [m for m in messages if m.error() is None]
                for m in messages:
                    if m.error() is not None:
                        self._client_error(m.error())
                if good:
                    loop.call_soon_threadsafe(self._deliver, good)
        finally:
            with contextlib.suppress(Exception):
                consumer.close()  # leaves the group: the revoke callback checkpoints

    def _run_commands(self, commits_only: bool = False) -> None:
        """Calls the loop asked for: every call on the consumer is made on this thread (a call from
        another thread waits while this one is inside a rebalance callback)."""
        from confluent_kafka import TopicPartition

        topic = self._config.topic
        if self._to_restore and not commits_only:
            self._start_restore()
        deferred: list[tuple[str, Any]] = []
        while True:
            try:
                command, arg = self._commands.get_nowait()
            except queue.Empty:
                break
            if command == "commit":
                offsets, done = arg
                try:
                    self._commit_now(offsets)
                except Exception as exc:
                    self._settle(done, exc)
                else:
                    self._settle(done, None)
            elif commits_only:
                deferred.append((command, arg))
            elif command == "pause" and arg in self._assigned:
                with contextlib.suppress(Exception):
                    self._consumer.pause([TopicPartition(topic, arg)])
            elif command == "resume" and arg in self._assigned:
                with contextlib.suppress(Exception):
                    self._consumer.resume([TopicPartition(topic, arg)])
            elif command == "restored":
                partition, generation, committed, restored, took = arg
                if partition not in self._restoring or self._generations.get(partition) != generation:
                    continue  # revoked while it was restored (and maybe assigned again since)
                self._restoring.discard(partition)
                self._on_loop(self._activate(partition, committed, restored, took))
                offset = committed if committed is not None else -1001  # OFFSET_INVALID: auto_offset_reset
                self._consumer.incremental_assign([TopicPartition(topic, partition, offset)])
                self._assigned.add(partition)
        for item in deferred:
            self._commands.put(item)

    def _settle(self, done: asyncio.Future[None], exc: BaseException | None) -> None:
        def settle() -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle)

    def _commit_now(self, offsets: dict[int, int]) -> None:
        from confluent_kafka import TopicPartition

        topic = self._config.topic
        tps = [TopicPartition(topic, p, o) for p, o in sorted(offsets.items()) if p in self._assigned]
        if not tps:
            raise RuntimeError("none of these partitions is assigned any more")
        result = self._consumer.commit(offsets=tps, asynchronous=False)
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise RuntimeError(f"offset commit failed: {failed[0].error}")

    def _start_restore(self) -> None:
        """The committed offsets of the partitions assigned last (on this thread), then their restore."""
        from confluent_kafka import TopicPartition

        partitions = [p for p in sorted(self._to_restore) if p in self._restoring]
        self._to_restore.clear()
        if not partitions:
            return
        topic = self._config.topic
        while not self._stop.is_set():
            try:
                found = self._consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
                break
            except Exception as exc:
                self._log.error("reading committed offsets failed; retrying", error=str(exc))
                self._stop.wait(1.0)
        else:
            return
        committed = {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}
        generations = {p: self._generations[p] for p in partitions}
        threading.Thread(
            target=self._restore, args=(partitions, generations, committed), name=f"kafka-restore-{self._label}", daemon=True
        ).start()

    def _on_loop(self, coro: Any) -> Any:
        """Run ``coro`` on the event loop and wait for it (the consumer thread only), serving the
        commits it asks for meanwhile."""
        assert self._loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        while True:
            try:
                return future.result(timeout=0.01)
            except FutureTimeout:
                self._run_commands(commits_only=True)

    # rebalance callbacks: on the consumer thread, inside consume() or close()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        consumer.incremental_assign([])  # assigned for real once restored (see _run_commands)
        new = sorted(tp.partition for tp in partitions if tp.partition not in self._assigned)
        if not new:
            return
        self._restoring.update(new)
        self._to_restore.update(new)
        for p in new:
            self._generations[p] = self._generations.get(p, 0) + 1
        self._log.info("partitions assigned; restoring", partitions=_ranges(new))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._give_up(consumer, partitions, checkpoint=True)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._give_up(consumer, partitions, checkpoint=False)

    def _give_up(self, consumer: Any, partitions: list[Any], checkpoint: bool) -> None:
        numbers = sorted(tp.partition for tp in partitions)
        self._restoring.difference_update(numbers)
        active = [p for p in numbers if p in self._assigned]
        if active:
            self._log.info("partitions revoked" if checkpoint else "partitions lost", partitions=_ranges(active))
            try:
                self._on_loop(self._release(active, checkpoint))
            except Exception:
                self._log.error("releasing partitions failed", exc_info=True)
        consumer.incremental_unassign([tp for tp in partitions if tp.partition in self._assigned])
        self._assigned.difference_update(numbers)

    # -- restore (a thread per assignment) ---------------------------------------------------------

    def _restore(self, partitions: list[int], generations: dict[int, int], committed: dict[int, int | None]) -> None:
        cfg = self._config
        pending = list(partitions)
        while pending and not self._stop.is_set():
            started = time.monotonic()
            try:
                records = _read_to_end(cfg.brokers, cfg.changelog, pending, f"{cfg.group_id}-restore", self._stop)
            except Exception as exc:
                self._log.error("restoring partitions failed; retrying", partitions=_ranges(pending), error=str(exc))
                self._stop.wait(1.0)
                continue
            took = time.monotonic() - started
            for p in pending:
                restored = restore_entries(records.get(p, []), committed.get(p))
                self._commands.put(("restored", (p, generations[p], committed.get(p), restored, took)))
            return

    async def _activate(self, partition: int, committed: int | None, restored: Restored, took: float) -> None:
        async with self._between_messages:
            for name, processor in self._settings.host.stateful(self._settings.id):
                processor.assign(partition, restored.entries.get(name, {}))
            self._checkpointer.assigned(partition, committed)
            owned = self._owned[partition] = _Owned(partition, committed)
            owned.task = asyncio.create_task(self._work(owned), name=f"receiver-{self._label}-p{partition}")
        self._restore_seconds.observe(took, self._label)
        self._restored.add(restored.records, self._label)
        self._log.info(
            "partition restored",
            partition=partition,
            committed_offset=committed,
            records=restored.records,
            skipped=restored.skipped,
            took_s=round(took, 3),
        )

    async def _release(self, partitions: list[int], checkpoint: bool) -> None:
        owned = [self._owned[p] for p in partitions if p in self._owned]
        for o in owned:
            o.stopped = True
            o.wakeup.set()
        if checkpoint and owned:
            try:
                await self._checkpoint([o.partition for o in owned])
            except Exception as exc:
                self._log.error("checkpoint of revoked partitions failed; the next owner replays", error=str(exc))
        async with self._between_messages:
            for o in owned:
                for _name, processor in self._settings.host.stateful(self._settings.id):
                    processor.revoke(o.partition)
                self._checkpointer.forget(o.partition)
                self._owned.pop(o.partition, None)
        for o in owned:
            await self._stop_worker(o)

    async def _stop_worker(self, owned: _Owned) -> None:
        owned.stopped = True
        owned.wakeup.set()
        task = owned.task
        if task is not None:
            async with self._between_messages:  # never cancel a message half handled
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- records on the loop -----------------------------------------------------------------------

    def _deliver(self, messages: list[Any]) -> None:
        for msg in messages:
            owned = self._owned.get(msg.partition())
            if owned is None or owned.stopped:
                continue  # revoked meanwhile: the next owner reads it from the committed offset
            owned.backlog.append(msg)
            owned.last_seen = max(owned.last_seen, msg.offset())
            owned.wakeup.set()
            if len(owned.backlog) > _HIGH_WATER and not owned.paused:
                owned.paused = True
                self._commands.put(("pause", owned.partition))

    async def _work(self, owned: _Owned) -> None:
        while not owned.stopped:
            if not owned.backlog:
                owned.wakeup.clear()
                await owned.wakeup.wait()
                continue
            msg = owned.backlog[0]
            async with self._between_messages:
                if owned.stopped:
                    return
                retry_after = await self._handle(owned.partition, msg)
                if retry_after is None:
                    owned.backlog.popleft()
                    owned.position = msg.offset() + 1
            if retry_after is not None:
                if not owned.paused:
                    owned.paused = True
                    self._commands.put(("pause", owned.partition))
                owned.retrying = True
                owned.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(owned.wakeup.wait(), retry_after)
                owned.retrying = False
            elif owned.paused and len(owned.backlog) < _LOW_WATER:
                owned.paused = False
                self._commands.put(("resume", owned.partition))

    async def _handle(self, partition: int, msg: Any) -> float | None:
        """Hand one record on; the seconds to wait before retrying it, or None when it is done."""
        _, ts = msg.timestamp()
        headers = msg.headers() or []
        try:
            batch = self._batch(partition, ts, msg.value(), headers)
        except RefusedInput as exc:
            self._count_refused(exc.reason)
            return None
        try:
            await self._next.consume(batch)
        except RetryLater as exc:
            return max(0.05, exc.retry_after)
        except Refused as exc:
            self._count_refused(exc.reason)
            return None
        except Exception:
            self._internal_errors.add(1, self._label, "kafka")
            self._log.error("a record failed in the pipeline; skipped", partition=partition, offset=msg.offset(), exc_info=True)
            return None
        if batch.samples:
            self._accepted.add(len(batch.samples), self._label, "kafka")
            for sample in batch.samples:
                self._received.add(1, sample.origin.service_id, sample.origin.media_unit_id)
        return None

    def _batch(self, partition: int, ts: int, value: bytes | None, headers: list[tuple[str, bytes]]) -> Batch:
        names = dict(headers)
        if sample_records.TICK_HEADER in names:
            return Batch(partition=partition, time=ts)
        if value is None:
            raise RefusedInput("empty", "record has no value")
        if self._config.encoding == "samples":
            version = names.get(sample_records.FORMAT_HEADER)
            if version != sample_records.FORMAT_VERSION.encode():
                raise RefusedInput("unknown_format", f"format-version {version!r}")
            try:
                sample = sample_records.decode(value)
            except sample_records.RecordError as exc:
                raise RefusedInput("invalid_sample", str(exc)) from None
            return Batch(samples=[sample], partition=partition, time=ts)
        service = names.get("service-id")
        if not service:
            raise RefusedInput("no_service_id", "record has no service-id header")
        media_unit = names.get("media-unit-id") or b"kafka"
        schema = names.get("schema-version")
        origin = Origin(
            service_id=service.decode(errors="replace"),
            media_unit_id=media_unit.decode(errors="replace"),
            received_at=ts,
            generation="2",
            schema_version=schema.decode(errors="replace") if schema else None,
        )
        decoded = decode(value, origin, route="samples", encoding="json", gzipped=None, limit=_MAX_JSON_BYTES)
        return Batch(samples=decoded.samples, partition=partition, time=ts)

    def _count_refused(self, reason: str) -> None:
        self._refused.add(1, self._label, "kafka", reason)
        self._refused_samples.add(1, reason)

    # -- checkpoints -------------------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        interval = float(self._config.state.checkpoint_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._checkpoint(list(self._owned))
            except Exception as exc:
                self._log.error("checkpoint failed; retried at the next interval", error=str(exc))

    async def _checkpoint(self, partitions: list[int]) -> None:
        started = time.monotonic()

        def positions() -> Mapping[int, int]:
            out = {}
            for p in partitions:
                owned = self._owned.get(p)
                if owned is not None and owned.position is not None:
                    out[p] = owned.position
            return out

        try:
            await self._checkpointer.checkpoint(positions, self._between_messages)
        except Exception:
            self._checkpoint_failures.add(1, self._label)
            raise
        self._last_checkpoint = time.monotonic()
        self._checkpoint_seconds.observe(self._last_checkpoint - started, self._label)

    async def _write_changelog(self, records: list[ChangelogRecord]) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("the changelog producer is not running")
        topic = self._config.changelog
        timeout = max(10.0, float(self._config.session_timeout))

        def write() -> None:
            errors: list[str] = []

            def delivered(err: Any, _msg: Any) -> None:
                if err is not None:
                    errors.append(err.str())

            for record in records:
                while True:
                    try:
                        producer.produce(
                            topic,
                            record.value,
                            record.key,
                            partition=record.partition,
                            headers=record.headers,
                            on_delivery=delivered,
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
            left = producer.flush(timeout)
            if left:
                raise TimeoutError(f"{left} changelog records not delivered within {timeout}s")
            if errors:
                raise RuntimeError(f"{len(errors)} changelog records not delivered: {errors[0]}")

        await asyncio.to_thread(write)

    async def _commit(self, offsets: dict[int, int]) -> None:
        """Commit on the consumer thread (which serves it between polls, or while it waits in a rebalance)."""
        thread = self._thread
        if self._consumer is None or thread is None or not thread.is_alive():
            raise RuntimeError("the consumer is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commands.put(("commit", (offsets, done)))
        await done

    # -- telemetry and errors ----------------------------------------------------------------------

    def _lags(self) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for p, owned in list(self._owned.items()):
            if owned.position is None:
                continue
            out[(self._label, str(p))] = float(max(0, owned.last_seen + 1 - owned.position))
        return out

    def _client_error(self, err: Any) -> None:
        text = err.str() if hasattr(err, "str") else str(err)
        self._log.warning("kafka client error", error=text)


class _NotYet(Exception):
    pass


def _read_to_end(
    brokers: list[str], topic: str, partitions: list[int], group: str, stop: threading.Event
) -> dict[int, list[tuple[bytes | None, bytes | None, int | None]]]:
    """Every record of ``partitions`` of ``topic``, from the start to the end seen by the fetcher."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": ",".join(brokers),
            "group.id": group,  # the client requires one; no group is joined (assign, never commit)
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
        }
    )
    out: dict[int, list[tuple[bytes | None, bytes | None, int | None]]] = {p: [] for p in partitions}
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        while len(at_end) < len(partitions):
            if stop.is_set():
                raise RuntimeError("stopped while restoring")
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                partition = int(msg.partition() or 0)
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(partition)
                        continue
                    raise KafkaException(err)
                at_end.discard(partition)
                out[partition].append((msg.key(), msg.value(), input_offset(msg.headers())))
    finally:
        consumer.close()
    return out


def _ranges(partitions: list[int]) -> str:
    return ",".join(str(p) for p in partitions)


def _create(settings: Settings, config: KafkaReceiverConfig, next_consumer: Consumer) -> KafkaReceiver:
    return KafkaReceiver(settings, config, next_consumer)


FACTORY = Factory(
    kind="receiver",
    type="kafka",
    config_type=KafkaReceiverConfig,
    create=_create,
    description="samples from a Kafka topic in a consumer group, processor state moving with the partitions",
)
