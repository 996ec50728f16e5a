"""Exporter ``kafka``: sends every report to Kafka, as the observer 1.0 KafkaSink did.

Each report becomes one Kafka record: by default on one topic (``reports``), keyed by its call (so a
call's reports stay in order on one partition), with the report type and schema version in the headers
``report-type`` and ``schema-version``. The value is the report envelope as JSON, or the payload in
binary Avro per the 2.2.11 schema of its type.

Delivery is the exporter helper's (:mod:`webrtc_observer.exporterhelper`): the sending queue (in
memory, or on disk with ``sending_queue.storage: file``), retries with backoff, the drain at shutdown,
health and the standard telemetry. This module only encodes (a batch → one bytes item per record:
topic, key, value and headers, msgpack-encoded so the persistent queue can store it) and sends (a
chunk of items → the client library, then each record's outcome: :class:`SendError` names the
records the broker did not acknowledge, permanent when retrying cannot help).

The library sits behind the narrow protocol of :mod:`._kafka_clients` (confluent-kafka or
kafka-python). Its calls may block, so they run on a worker thread of the exporter's own; the
library's callbacks come back to the loop through ``call_soon_threadsafe``. Delivery is at least
once: a record retried after a timed-out attempt may arrive twice.

Every report record also carries its deterministic id (:attr:`Report.id <webrtc_observer.model.Report>`)
in the header ``report-id``, so consumers can drop the duplicates an at-least-once delivery may bring.

Samples (a pipeline without a ``reports`` processor) are sent as ``{"type": "ClientSample", "payload"}``
with JSON encoding, like the file exporter writes them; Avro has no schema for them, so they are dropped
and counted.

``encoding: samples`` is the ingest tier of a scaled-out collector (README: Scaling out): each sample
becomes one record (:mod:`webrtc_observer.sample_records`: msgpack of the decoded model, header
``format-version``), keyed by its :func:`~webrtc_observer.model.routing_key` (so a room's samples share a
partition), timestamped with its receive time, on the topic ``samples`` by default. Every
``tick_interval`` an empty tick record (header ``tick``) goes to every partition of the topic, so a
quiet partition's stream time still advances. Reports are not sent in this encoding (dropped, counted
and logged): put no ``reports`` processor in such a pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgspec

from webrtc_observer import sample_records
from webrtc_observer.component import Factory, RetryLater, Settings
from webrtc_observer.config import Duration
from webrtc_observer.exporterhelper import QueuedExporter, QueuedExporterConfig, SendError, renamed_options
from webrtc_observer.exporterhelper._storage import DiskQueue
from webrtc_observer.model import Batch, ClientSample, Report, SfuSample, TurnSample, routing_key
from webrtc_observer.schemas import REPORTS_VERSION as _REPORTS_VERSION

from . import _kafka_clients as clients
from ._kafka_avro import avro_encoder
from ._kafka_clients import ClientSettings, KafkaClient, OutRecord, RecordError

_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
_MAX_TOPIC_LENGTH = 249
_LONGEST_TYPE_TOPIC = len("peer-connection-data-channel")


@dataclass
class TopicPerTypeConfig:
    enabled: bool = False
    """One topic per report type, named ``prefix`` + the type in lower kebab case (``call-event``)."""
    prefix: str = ""


@dataclass(kw_only=True)
class KafkaExporterConfig(QueuedExporterConfig):
    """The helper's options (``sending_queue``, ``retry_on_failure``, ``timeout``, ``shutdown_timeout``)
    and Kafka's own. ``timeout`` is also how long the client library may try to deliver a record."""

    RENAMED_OPTIONS: ClassVar[Mapping[str, str]] = renamed_options(
        flush_timeout="renamed: use shutdown_timeout (how long shutdown keeps delivering)",
        queue_size="moved: use sending_queue.queue_size (records queued and in flight)",
        retry="renamed: use retry_on_failure {enabled, initial_interval, max_interval, max_elapsed_time,"
        " multiplier, randomization_factor}",
        max_queued="moved: use sending_queue.queue_size",
    )

    brokers: list[str]
    """Bootstrap brokers, ``host:port``."""
    topic: str | None = None
    """The one topic of every report; ``reports`` unless ``topic_per_type`` is enabled."""
    topic_per_type: TopicPerTypeConfig = field(default_factory=TopicPerTypeConfig)
    encoding: Literal["json", "avro", "samples"] = "json"
    """``json`` or ``avro`` reports; ``samples``: the samples themselves, for a scaled-out analysis tier."""
    tick_interval: Duration | None = None
    """With ``encoding: samples``: how often an empty tick record goes to every partition (default 1s;
    0 disables)."""
    key: Literal["call", "random"] = "call"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    """lz4 by default: report JSON shrinks several fold for little CPU."""
    acks: str = "all"
    """``all`` (with the idempotent producer), ``1`` or ``0``."""
    client: Literal["auto", "confluent", "kafka-python"] = "auto"
    client_options: dict[str, bool | int | float | str] = field(default_factory=dict)
    """Extra configuration of the client library, passed through verbatim (its own option names)."""

    def validate(self) -> list[tuple[str, str]]:
        issues = super().validate()
        if not self.brokers:
            issues.append(("brokers", "must list at least one broker (host:port)"))
        for i, broker in enumerate(self.brokers):
            host, sep, port = broker.rpartition(":")
            if not sep or not host or not port.isdigit():
                issues.append((f"brokers[{i}]", f"expected host:port, got {broker!r}"))
        if self.topic is not None and self.topic_per_type.enabled:
            issues.append(("topic", "set either topic or topic_per_type, not both"))
        if self.topic is not None:
            problem = _topic_problem(self.topic, 0)
            if problem:
                issues.append(("topic", problem))
        if self.topic_per_type.enabled:
            problem = _topic_problem(self.topic_per_type.prefix, _LONGEST_TYPE_TOPIC, prefix=True)
            if problem:
                issues.append(("topic_per_type.prefix", problem))
        if self.encoding == "samples":
            if self.topic_per_type.enabled:
                issues.append(("topic_per_type", "encoding samples writes one topic (topic, default samples)"))
            if self.key != "call":
                issues.append(("key", "encoding samples keys every record by its routing key (room, call or client)"))
        elif self.tick_interval is not None:
            issues.append(("tick_interval", "only with encoding: samples"))
        if self.acks not in ("all", "-1", "1", "0"):
            issues.append(("acks", f"must be all, 1 or 0, got {self.acks!r}"))
        kind = clients.resolve(self.client)
        if kind is None:
            wanted = "confluent-kafka or kafka-python" if self.client == "auto" else self.client
            issues.append(("client", f"{wanted} is not installed"))
        else:
            problem = clients.compression_problem(kind, self.compression)
            if problem:
                issues.append(("compression", problem))
            for name in sorted(self.client_options):
                if name in clients.RESERVED_OPTIONS[kind]:
                    issues.append((f"client_options.{name}", "is set by the exporter (use brokers, or leave it out)"))
        return issues

    @property
    def acks_normalized(self) -> str:
        return "all" if self.acks == "-1" else self.acks

    @property
    def ticks(self) -> float:
        """Seconds between tick records; 0: none."""
        if self.encoding != "samples":
            return 0.0
        return 1.0 if self.tick_interval is None else float(self.tick_interval)

    @property
    def single_topic(self) -> str:
        return self.topic or ("samples" if self.encoding == "samples" else "reports")


def _topic_problem(name: str, suffix_length: int, prefix: bool = False) -> str | None:
    if not prefix and not name:
        return "must not be empty"
    if not _TOPIC_CHARS.match(name):
        return "may only have letters, digits, '.', '_' and '-'"
    if len(name) + suffix_length > _MAX_TOPIC_LENGTH:
        return f"makes topic names longer than {_MAX_TOPIC_LENGTH} characters"
    return None


def type_topic(prefix: str, record_type: str) -> str:
    """``observertc-`` + ``CALL_EVENT`` → ``observertc-call-event``; ``ClientSample`` → ``client-sample``."""
    if record_type.isupper() or "_" in record_type:
        name = record_type.lower().replace("_", "-")
    else:
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", record_type).lower()
    return prefix + name


# -- encoding: a batch → one bytes item per Kafka record -------------------------------------------


class _Item(msgspec.Struct, array_like=True):
    """One Kafka record as the sending queue stores it."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int | None = None
    """None: the library's partitioner picks it from the key."""
    timestamp: int | None = None
    """Epoch ms; None: the time of producing."""


_json = msgspec.json.Encoder()
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(_Item).decode
_NO_AVRO_SAMPLES = "samples have no Avro report schema"
_NO_SAMPLES_REPORTS = "encoding samples sends samples only"
_FORMAT_HEADERS = [(sample_records.FORMAT_HEADER, sample_records.FORMAT_VERSION.encode())]


class _Encoder:
    """Turns a batch into queue items; what cannot be encoded is dropped, counted and logged."""

    def __init__(self, config: KafkaExporterConfig, settings: Settings) -> None:
        self._config = config
        self._log = settings.logger
        self._label = str(settings.id)
        self._failed = settings.telemetry.counter(
            "exporter_send_failed_records", "Records that could not be written or delivered", ("exporter",)
        )
        self._topics: dict[str, str] = {}
        self._headers: dict[tuple[str, str | None], list[tuple[str, bytes]]] = {}
        self._encode_report = self._avro if config.encoding == "avro" else _json.encode
        self._avro_encoders: dict[str, Callable[[Any], bytes]] = {}
        self._key_of = _call_key if config.key == "call" else _random_key
        self._warned_samples = False
        self._warned_reports = False
        self._error_log: dict[str, tuple[float, int]] = {}

    def __call__(self, batch: Batch) -> list[bytes]:
        if self._config.encoding == "samples":
            return self._samples(batch)
        items: list[bytes] = []
        failed: Counter[str] = Counter()
        for report in batch.reports:
            try:
                value = self._encode_report(report)
            except Exception as exc:  # not encodable: retrying cannot help
                failed[f"{report.type}: {type(exc).__name__}: {exc}"] += 1
                continue
            headers = [*self._header(report.type, report.schema_version), ("report-id", (report.id or "").encode())]
            items.append(_pack(_Item(self._topic(report.type), self._key_of(report.payload), value, headers)))
        for sample in batch.samples:
            name = type(sample).__name__
            if self._config.encoding == "avro":
                failed[_NO_AVRO_SAMPLES] += 1
                continue
            value = _json.encode({"type": name, "payload": sample})
            items.append(_pack(_Item(self._topic(name), self._sample_key(sample), value, self._header(name, None))))
        if failed:
            self._failed.add(sum(failed.values()), self._label)
            if failed.pop(_NO_AVRO_SAMPLES, 0) and not self._warned_samples:
                self._warned_samples = True
                self._log.warning(
                    "avro encoding sends reports only; put a reports processor in the pipeline, samples are dropped"
                )
            for reason, n in failed.items():
                self._log_limited(reason, n)
        return items

    def _samples(self, batch: Batch) -> list[bytes]:
        """``encoding: samples``: one record per sample, keyed by its routing key, at its receive time."""
        topic = self._config.single_topic
        items = [
            _pack(
                _Item(
                    topic,
                    routing_key(sample).encode(),
                    sample_records.encode(sample),
                    _FORMAT_HEADERS,
                    timestamp=sample.origin.received_at,
                )
            )
            for sample in batch.samples
        ]
        if batch.reports:
            self._failed.add(len(batch.reports), self._label)
            if not self._warned_reports:
                self._warned_reports = True
                self._log.warning("encoding samples sends samples only; reports are dropped (remove the reports processor)")
        return items

    def tick_items(self, partitions: int, now_ms: int) -> list[bytes]:
        """An empty tick record for each of ``partitions`` partitions, at ``now_ms``."""
        topic = self._config.single_topic
        return [
            _pack(_Item(topic, None, b"", [(sample_records.TICK_HEADER, b"1")], partition=p, timestamp=now_ms))
            for p in range(partitions)
        ]

    def _avro(self, report: Report) -> bytes:
        encoder = self._avro_encoders.get(report.type)
        if encoder is None:
            from webrtc_observer.processors import _report_schemas as schemas

            report_type = report.type
            encoder = avro_encoder(schemas.schema(report_type), lambda: schemas.parsed_schema(report_type))
            self._avro_encoders[report_type] = encoder
        if report.schema_version != _REPORTS_VERSION:
            raise ValueError(f"no Avro schema of version {report.schema_version}")
        payload = report.payload
        return encoder(payload if isinstance(payload, dict) else payload.to_dict())

    def _topic(self, record_type: str) -> str:
        topic = self._topics.get(record_type)
        if topic is None:
            cfg = self._config
            topic = type_topic(cfg.topic_per_type.prefix, record_type) if cfg.topic_per_type.enabled else (cfg.topic or "reports")
            if len(self._topics) < 1000:  # types are a fixed set; bound it all the same
                self._topics[record_type] = topic
        return topic

    def _header(self, record_type: str, version: str | None) -> list[tuple[str, bytes]]:
        headers = self._headers.get((record_type, version))
        if headers is None:
            headers = [("report-type", record_type.encode())]
            if version is not None:
                headers.append(("schema-version", version.encode()))
            if len(self._headers) < 1000:
                self._headers[(record_type, version)] = headers
        return headers

    def _sample_key(self, sample: Any) -> bytes | None:
        if self._config.key == "random":
            return _random_key(None)
        if isinstance(sample, ClientSample):
            value = sample.call_id or sample.client_id
        elif isinstance(sample, SfuSample):
            value = sample.sfu_id
        elif isinstance(sample, TurnSample):
            value = sample.server_id
        else:
            value = None
        return value.encode() if value else None

    def _log_limited(self, reason: str, records: int) -> None:
        """An error per reason at most every 30 s, with the records dropped meanwhile."""
        now = time.monotonic()
        last, suppressed = self._error_log.get(reason, (0.0, 0))
        if last and now - last < 30:
            self._error_log[reason] = (last, suppressed + records)
            return
        if len(self._error_log) > 100:  # reasons carry error texts: keep the memory of them bounded
            self._error_log.clear()
        self._error_log[reason] = (now, 0)
        self._log.error("records not encodable, dropped", records=records + suppressed, reason=reason)


def _call_key(payload: dict[str, Any] | None) -> bytes | None:
    """observer 1.0's OBJECT_HIERARCHY_BASED key: the call, else the client, else the SFU."""
    if payload is None:
        return None
    value = payload.get("callId") or payload.get("clientId") or payload.get("sfuId")
    return value.encode() if isinstance(value, str) and value else None


def _random_key(_payload: Any) -> bytes:
    return str(uuid.uuid4()).encode()


# -- sending: a chunk of items → the client library → each record's outcome ------------------------


class _Worker:
    """One daemon thread running blocking calls in order; a call is awaited from the loop.

    Daemon, unlike an executor's thread: a library call stuck on a dead broker cannot hold up exit.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((fn, args, loop, future))
        return future

    def stop(self) -> None:
        self._calls.put(None)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, args, loop, future = item
            try:
                result = fn(*args)
            except BaseException as exc:
                _settle(loop, future, None, exc)
            else:
                _settle(loop, future, result, None)


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if future.done():  # cancelled: the attempt timed out, nobody waits any more
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


class _Chunk:
    """The outcomes of one attempt's records; ``done`` when every record's outcome is in.

    Guarded by the sender's lock: outcomes arrive on the library's threads.
    """

    __slots__ = ("abandoned", "done", "errors", "left", "loop", "seen")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.errors: dict[int, RecordError] = {}
        self.done: asyncio.Future[None] = loop.create_future()
        self.loop = loop
        self.left = size
        self.seen = bytearray(size)
        self.abandoned = False
        """The attempt was given up (timed out): the records still in the library are orphans."""


class _Outcomes:
    """Each record's outcome, moved to the chunk that waits for it.

    An attempt the helper gives up (``timeout``) leaves its records in the library, which may still
    deliver them. They become orphans; when the helper sends the same items again, the new attempt
    adopts them instead of producing them a second time: a broker that is only slow (frozen, then
    back) gets each record once, and the library holds at most one copy of each.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orphans: dict[bytes, list[OutRecord]] = {}

    def on_result(self, record: OutRecord, error: RecordError | None) -> None:
        with self._lock:
            chunk: _Chunk = record.chunk
            if chunk.abandoned:
                orphans = self._orphans.get(record.item)
                if orphans is not None:
                    with contextlib.suppress(ValueError):
                        orphans.remove(record)
                    if not orphans:
                        del self._orphans[record.item]
                return
            if chunk.seen[record.index]:
                return
            chunk.seen[record.index] = 1
            if error is not None:
                chunk.errors[record.index] = error
            chunk.left -= 1
            finished = chunk.left == 0
        if finished:
            _settle(chunk.loop, chunk.done, None, None)

    def settle_now(self, chunk: _Chunk, index: int, error: RecordError) -> None:
        """The outcome of a record that never reached the library."""
        self.on_result(OutRecord("", None, b"", [], index, chunk), error)

    def adopt(self, chunk: _Chunk, index: int, item: bytes) -> OutRecord | None:
        """Give ``chunk`` the orphan of an earlier attempt at ``item`` if there is one."""
        if not self._orphans:
            return None
        with self._lock:
            orphans = self._orphans.get(item)
            if not orphans:
                return None
            record = orphans.pop()
            if not orphans:
                del self._orphans[item]
            record.chunk, record.index = chunk, index
            return record

    def abandon(self, chunk: _Chunk, records: Sequence[OutRecord]) -> None:
        """The attempt of ``chunk`` was given up; its records without an outcome become orphans."""
        with self._lock:
            chunk.abandoned = True
            for record in records:
                if record.chunk is chunk and not chunk.seen[record.index]:
                    self._orphans.setdefault(record.item, []).append(record)

    @property
    def orphans(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._orphans.values())


class _KafkaSender:
    """The :class:`~webrtc_observer.exporterhelper.Sender` of the kafka exporter."""

    def __init__(self, settings: Settings, config: KafkaExporterConfig, kind: clients.ClientKind) -> None:
        self._config = config
        self._kind = kind
        self._log = settings.logger
        self._label = str(settings.id)
        self._client: KafkaClient | None = None
        self._worker: _Worker | None = None
        self._last_client_error: tuple[str, float] = ("", 0.0)
        self._outcomes = _Outcomes()

    async def start(self) -> None:
        cfg = self._config
        self._worker = _Worker(f"kafka-{self._label}")
        options = dict(cfg.client_options)
        if cfg.encoding == "samples" and self._kind == "confluent":
            # The partition of a key must not depend on which client an ingest process runs:
            # murmur2 is what the Java client and kafka-python use (librdkafka defaults to crc32).
            options.setdefault("partitioner", "murmur2_random")
        settings = ClientSettings(
            brokers=list(cfg.brokers),
            acks=cfg.acks_normalized,
            compression=cfg.compression,
            timeout=float(cfg.timeout),
            max_queued=cfg.sending_queue.queue_size,
            options=options,
        )
        loop = asyncio.get_running_loop()

        def on_error(message: str) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._client_error, message)

        try:
            self._client = await self._worker.call(clients.create, self._kind, settings, self._outcomes.on_result, on_error)
        except Exception:
            self._worker.stop()
            self._worker = None
            raise

    async def send(self, items: Sequence[bytes]) -> None:
        client, worker = self._client, self._worker
        if client is None or worker is None:
            raise SendError("the kafka client is not running")
        outcomes = self._outcomes
        chunk = _Chunk(asyncio.get_running_loop(), len(items))
        mine: list[OutRecord] = []
        """Every record whose outcome this attempt waits for, adopted ones too."""
        fresh: list[OutRecord] = []
        for i, item in enumerate(items):
            adopted = outcomes.adopt(chunk, i, item)
            if adopted is not None:
                mine.append(adopted)
                continue
            try:
                decoded = _unpack(item)
            except msgspec.DecodeError as exc:  # not a record this exporter wrote: cannot be sent
                outcomes.settle_now(chunk, i, RecordError(f"undecodable queue item: {exc}", False))
                continue
            record = OutRecord(
                decoded.topic, decoded.key, decoded.value, decoded.headers, i, chunk, item, decoded.partition, decoded.timestamp
            )
            fresh.append(record)
            mine.append(record)
        try:
            if fresh:
                await worker.call(client.send, fresh)
            await chunk.done
        except asyncio.CancelledError:
            # Given up (timeout, shutdown): what the library still holds may yet be delivered.
            outcomes.abandon(chunk, mine)
            raise
        except Exception as exc:  # a client bug must not stop the exporter: the attempt failed
            outcomes.abandon(chunk, mine)
            self._log.error("kafka client send failed", error=str(exc), exc_info=True)
            raise SendError(f"kafka client failed: {exc}") from exc
        if chunk.errors:
            raise _send_error(chunk.errors)

    async def partitions(self, topic: str, timeout: float) -> int:
        """How many partitions ``topic`` has (0 when it is unknown yet)."""
        client, worker = self._client, self._worker
        if client is None or worker is None:
            return 0
        return int(await worker.call(client.partitions, topic, timeout))

    async def shutdown(self) -> None:
        """Release the library; what it still holds was counted by the helper (lost, or on disk)."""
        client, self._client = self._client, None
        if client is not None:
            # On a thread of its own (the worker may be stuck in a blocking send), bounded: the drain
            # deadline is over, so nothing is flushed any more.
            closer = _Worker(f"kafka-close-{self._label}")
            try:
                await asyncio.wait_for(asyncio.shield(closer.call(client.close, 0.0)), 3.0)
            except TimeoutError:
                self._log.warning("the kafka client did not close in time; abandoning it")
            except Exception as exc:
                self._log.warning("closing the kafka client failed", error=str(exc))
            closer.stop()
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def _client_error(self, message: str) -> None:
        now = time.monotonic()
        previous, at = self._last_client_error
        if message != previous or now - at > 30:
            self._last_client_error = (message, now)
            self._log.warning("kafka client error", error=message)


def _send_error(errors: Mapping[int, RecordError]) -> SendError:
    """Retriable if any record may still be delivered (the permanent ones fail again on their own)."""
    reasons = Counter(e.message for e in errors.values())
    message, _ = reasons.most_common(1)[0]
    if len(reasons) > 1:
        message += f" (and {len(reasons) - 1} other errors)"
    permanent = not any(e.retriable for e in errors.values())
    return SendError(f"{len(errors)} records not delivered: {message}", permanent=permanent, failed=sorted(errors))


# -- the exporter ----------------------------------------------------------------------------------


class KafkaExporter(QueuedExporter):
    """The ``kafka`` exporter: the helper's queue in front of the Kafka sender."""

    def __init__(self, settings: Settings, config: KafkaExporterConfig) -> None:
        kind = clients.resolve(config.client)
        if kind is None:  # validate() reports this; a config built by hand may still get here
            raise RuntimeError(f"kafka client {config.client!r} is not installed")
        self.client_kind: clients.ClientKind = kind
        self._kafka = config
        self._kafka_sender = _KafkaSender(settings, config, kind)
        self._kafka_encoder = _Encoder(config, settings)
        self._ticker: asyncio.Task[None] | None = None
        super().__init__(settings, config, self._kafka_sender, self._kafka_encoder)

    async def start(self) -> None:
        await super().start()  # starts the sender, then the queue's consumers
        cfg = self._kafka
        self._log.info(
            "exporting to kafka",
            brokers=",".join(cfg.brokers),
            topic=type_topic(cfg.topic_per_type.prefix, "REPORT_TYPE") if cfg.topic_per_type.enabled else cfg.single_topic,
            encoding=cfg.encoding,
            client=self.client_kind,
        )
        if cfg.ticks > 0:
            self._ticker = asyncio.create_task(self._tick_loop(cfg.ticks), name=f"exporter-{self._label}-ticks")

    async def shutdown(self) -> int:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        return await super().shutdown()

    async def _tick_loop(self, interval: float) -> None:
        """Every ``interval``: a tick record to every partition of the topic, through the sending queue
        (behind the samples queued before it). Skipped while the queue is full or the topic unknown."""
        topic = self._kafka.single_topic
        partitions = 0
        checked = -math.inf
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - checked > (30 if partitions else 5):  # partitions may be added to a topic
                try:
                    partitions = await self._kafka_sender.partitions(topic, min(5.0, max(interval, 1.0)))
                except Exception as exc:
                    self._log.debug("no partition count for ticks", topic=topic, error=str(exc))
                checked = now
            if not partitions:
                continue
            items = self._kafka_encoder.tick_items(partitions, int(time.time() * 1000))
            count = len(items)
            size = sum(map(len, items)) + DiskQueue.RECORD_OVERHEAD * count if self._storage.persistent else 0
            try:
                self._reserve(count, size)
                await self._enqueue(items, count, size)
            except RetryLater:
                continue  # the next tick says the same, later


def _create(settings: Settings, config: KafkaExporterConfig, _next: None) -> KafkaExporter:
    return KafkaExporter(settings, config)


FACTORY = Factory(
    kind="exporter",
    type="kafka",
    config_type=KafkaExporterConfig,
    create=_create,
    description="reports to Kafka topics (JSON or Avro), keyed by call",
)
