"""The kafka exporter's seam to a Kafka client library: one small protocol, two implementations.

The exporter helper owns the queue, retries, backoff and counting. A client only hands records to its
library and reports each record's outcome exactly once through ``on_result``, from whatever thread the
library calls back on (the exporter moves it to the event loop). Client methods may block, so the exporter calls
them from a worker thread of its own, never from the event loop.

* ``confluent`` (confluent-kafka, librdkafka): ``produce()`` does not block but raises ``BufferError``
  when librdkafka's own queue is full; delivery callbacks are served by ``poll()``, which a daemon
  thread of the client calls all the time.
* ``kafka-python`` (pure Python): ``send()`` can block (waiting for metadata, up to ``max_block_ms``)
  and the producer's constructor connects to the cluster. So the producer is made on the first
  ``send``, and a broker that is down at start-up is one more failure to retry. Callbacks run on the
  library's sender thread.

Both replace their producer after a fatal error of the idempotent producer, and after a record timed
out: a broker that lost its producer state (as a restarted in-memory broker does) can otherwise keep an
idempotent producer failing for ever (librdkafka bumps its epoch locally, the broker still does not know
the producer id). What the old producer held is reported failed-retriable, and the exporter sends it
again through the new one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol

ClientKind = Literal["confluent", "kafka-python"]
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
_MODULES: dict[str, str] = {"confluent": "confluent_kafka", "kafka-python": "kafka"}
# Options the exporter sets itself and that would break it if replaced through client_options.
RESERVED_OPTIONS: dict[str, frozenset[str]] = {
    "confluent": frozenset(
        {"bootstrap.servers", "metadata.broker.list", "on_delivery", "error_cb", "logger", "transactional.id"}
    ),
    "kafka-python": frozenset({"bootstrap_servers", "key_serializer", "value_serializer", "transactional_id"}),
}


class OutRecord:
    """One Kafka record of a chunk being sent; ``index`` is its place in the chunk, ``chunk`` the
    sender's bookkeeping of the chunk's outcomes."""

    __slots__ = ("chunk", "headers", "index", "item", "key", "partition", "timestamp", "topic", "value")

    def __init__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        index: int = 0,
        chunk: Any = None,
        item: bytes = b"",
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.index = index
        self.chunk = chunk
        self.item = item
        """The queue item the record was decoded from."""
        self.partition = partition
        """None: the library's partitioner picks one from the key."""
        self.timestamp = timestamp
        """The record's timestamp, epoch ms; None: the time of producing."""


@dataclass(frozen=True, slots=True)
class RecordError:
    """Why the library did not deliver a record; ``retriable`` False: sending it again cannot help."""

    message: str
    retriable: bool


OnResult = Callable[[OutRecord, RecordError | None], None]
OnClientError = Callable[[str], None]


class KafkaClient(Protocol):
    name: str

    def send(self, records: Sequence[OutRecord]) -> None:
        """Hand ``records`` to the library. Every record's outcome is reported once through ``on_result``,
        also for a record the library refused right away."""
        ...

    def close(self, timeout: float) -> None:
        """Deliver what the library holds for up to ``timeout`` seconds, then drop the rest and release
        everything. Records dropped here may or may not be reported."""
        ...

    def partitions(self, topic: str, timeout: float) -> int:
        """The partition count of ``topic`` (metadata, up to ``timeout`` seconds); 0 if unknown."""
        ...


@dataclass(frozen=True)
class ClientSettings:
    brokers: list[str]
    acks: str
    """``all``, ``1`` or ``0``; the producer is idempotent with ``all``."""
    compression: str
    timeout: float
    """Seconds the library may try to deliver a record (its own retries included) before it fails it."""
    max_queued: int
    """Records the exporter may have handed over at once (its queue size): the library must hold them."""
    options: dict[str, Any] = field(default_factory=dict)
    client_id: str = "webrtc-observer"


def available(kind: ClientKind) -> bool:
    return importlib.util.find_spec(_MODULES[kind]) is not None


def resolve(kind: Literal["auto", "confluent", "kafka-python"]) -> ClientKind | None:
    """The client library to use: ``auto`` is confluent-kafka if installed, else kafka-python."""
    if kind != "auto":
        return kind if available(kind) else None
    order: tuple[ClientKind, ...] = ("confluent", "kafka-python")
    for candidate in order:
        if available(candidate):
            return candidate
    return None


def compression_problem(kind: ClientKind, compression: str) -> str | None:
    """Why ``kind`` cannot compress with ``compression`` here, or None (librdkafka has every codec)."""
    if kind != "kafka-python" or compression in ("none", "gzip"):
        return None
    from kafka import codec

    if getattr(codec, f"has_{compression}")():
        return None
    package = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}[compression]
    return f"kafka-python needs the {package} package for {compression}; install it or use the confluent client"


def create(kind: ClientKind, settings: ClientSettings, on_result: OnResult, on_error: OnClientError) -> KafkaClient:
    if kind == "confluent":
        return ConfluentClient(settings, on_result, on_error)
    return KafkaPythonClient(settings, on_result, on_error)


# --------------------------------------------------------------------------------------------------
# confluent-kafka
# --------------------------------------------------------------------------------------------------


class ConfluentClient:
    name = "confluent"
    _BUFFER_FULL_WAIT = 1.0
    """How long ``send`` waits for room in librdkafka's queue before it fails the rest of a chunk."""

    def __init__(self, settings: ClientSettings, on_result: OnResult, on_error: OnClientError) -> None:
        from confluent_kafka import KafkaError

        self._on_result = on_result
        self._on_error = on_error
        self._permanent = frozenset(
            getattr(KafkaError, name)
            for name in (
                "MSG_SIZE_TOO_LARGE",
                "_MSG_SIZE_TOO_LARGE",
                "INVALID_MSG",
                "INVALID_MSG_SIZE",
                "INVALID_RECORD",
                "RECORD_LIST_TOO_LARGE",
                "TOPIC_EXCEPTION",
                "TOPIC_AUTHORIZATION_FAILED",
                "CLUSTER_AUTHORIZATION_FAILED",
                "UNSUPPORTED_FOR_MESSAGE_FORMAT",
                "_INVALID_ARG",
                "_INVALID_TYPE",
            )
            if hasattr(KafkaError, name)
        )
        self._fatal_code = KafkaError._FATAL
        # Errors after which the producer is replaced (its idempotence state may be stuck).
        self._replace_after = frozenset(
            getattr(KafkaError, name)
            for name in (
                "_MSG_TIMED_OUT",
                "_FATAL",
                "UNKNOWN_PRODUCER_ID",
                "OUT_OF_ORDER_SEQUENCE_NUMBER",
                "INVALID_PRODUCER_EPOCH",
                "INVALID_PRODUCER_ID_MAPPING",
                "_GAPLESS_GUARANTEE",
            )
            if hasattr(KafkaError, name)
        )
        idempotent = settings.acks == "all"
        self._conf: dict[str, Any] = {
            "bootstrap.servers": ",".join(settings.brokers),
            "client.id": settings.client_id,
            "acks": settings.acks,
            "enable.idempotence": idempotent,
            "compression.type": settings.compression,
            "linger.ms": 5,
            "message.timeout.ms": max(1, int(settings.timeout * 1000)),
            # The exporter bounds what it hands over; librdkafka must never refuse less than that.
            "queue.buffering.max.messages": max(100_000, settings.max_queued + 10_000),
            **settings.options,
            "error_cb": self._client_error,
            "logger": logging.getLogger("webrtc_observer.exporters.kafka.librdkafka"),
        }
        self._lock = threading.Lock()
        """Held while producing and while replacing the producer."""
        self._replace_producer = False
        """Set on a fatal error or a timed-out record; the poll thread (or the next send) replaces the producer."""
        self._producer = self._new_producer()
        self._stopped = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-confluent-poll", daemon=True)
        self._poller.start()

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        return Producer(self._conf)

    def _poll(self) -> None:
        """Serve delivery callbacks and errors; replace the producer after a fatal error."""
        while not self._stopped.is_set():
            producer = self._producer
            if producer is None:
                return
            producer.poll(0.1)
            if self._replace_producer and not self._stopped.is_set():
                self._replace()

    def _replace(self) -> None:
        with self._lock:
            if not self._replace_producer or self._producer is None:
                return
            old = self._producer
            self._producer = self._new_producer()
            self._replace_producer = False
        self._on_error("replaced the producer after a fatal error or timeout; undelivered records will be sent again")
        # On a thread of its own: the poll thread must go on serving the new producer meanwhile.
        threading.Thread(target=_abandon_confluent, args=(old,), name="kafka-confluent-abandon", daemon=True).start()

    def _client_error(self, err: Any) -> None:
        if err.fatal():
            self._replace_producer = True
        self._on_error(err.str())

    def _delivered(self, record: OutRecord, err: Any, _msg: Any) -> None:
        if err is None:
            self._on_result(record, None)
            return
        code = err.code()
        if code in self._replace_after:
            self._replace_producer = True
        self._on_result(record, RecordError(err.str(), code not in self._permanent))

    def send(self, records: Sequence[OutRecord]) -> None:
        from confluent_kafka import KafkaException

        if self._replace_producer:
            self._replace()
        with self._lock:
            producer = self._producer
            produce = producer.produce
            delivered = self._delivered
            for i, record in enumerate(records):
                waited = 0.0
                while True:
                    try:
                        extra: dict[str, int] = {}
                        if record.partition is not None:
                            extra["partition"] = record.partition
                        if record.timestamp is not None:
                            extra["timestamp"] = record.timestamp
                        produce(
                            record.topic,
                            record.value,
                            record.key,
                            headers=record.headers,
                            on_delivery=partial(delivered, record),
                            **extra,
                        )
                        break
                    except BufferError:
                        # librdkafka's queue is full: the poll thread is serving deliveries; wait a little.
                        if waited >= self._BUFFER_FULL_WAIT:
                            error = RecordError("librdkafka's queue is full", True)
                            for rest in records[i:]:
                                self._on_result(rest, error)
                            return
                        producer.poll(0.01)
                        waited += 0.01
                    except KafkaException as exc:
                        kerr = exc.args[0]
                        if kerr.code() == self._fatal_code:
                            self._replace_producer = True
                        self._on_result(record, RecordError(kerr.str(), kerr.code() not in self._permanent))
                        break
                    except (TypeError, ValueError) as exc:
                        self._on_result(record, RecordError(str(exc), False))
                        break

    def partitions(self, topic: str, timeout: float) -> int:
        producer = self._producer
        if producer is None:
            return 0
        found = producer.list_topics(topic, timeout=timeout).topics.get(topic)
        if found is None or found.error is not None:
            return 0
        return len(found.partitions)

    def close(self, timeout: float) -> None:
        producer = self._producer
        if producer is None:
            return
        if timeout > 0:
            producer.flush(timeout)
        self._stopped.set()
        self._poller.join(1.0)
        self._producer = None
        _abandon_confluent(producer)


def _abandon_confluent(producer: Any) -> None:
    """Drop what ``producer`` still holds (its delivery callbacks report it failed) and release it."""
    try:
        producer.purge(in_queue=True, in_flight=True)
        deadline = time.monotonic() + 2.0
        while len(producer) > 0 and time.monotonic() < deadline:
            producer.poll(0.05)  # serves the purged records' delivery callbacks
    except Exception:  # a producer in a fatal state may refuse; it is dropped all the same
        pass


# --------------------------------------------------------------------------------------------------
# kafka-python
# --------------------------------------------------------------------------------------------------


class KafkaPythonClient:
    name = "kafka-python"

    def __init__(self, settings: ClientSettings, on_result: OnResult, on_error: OnClientError) -> None:
        from kafka import KafkaProducer, errors

        self._on_result = on_result
        self._on_error = on_error
        self._errors = errors
        self._permanent: tuple[type[BaseException], ...] = (
            errors.MessageSizeTooLargeError,
            errors.RecordListTooLargeError,
            errors.InvalidRecordError,
            errors.InvalidTopicError,
            errors.TopicAuthorizationFailedError,
            errors.ClusterAuthorizationFailedError,
            errors.UnsupportedForMessageFormatError,
            TypeError,
            ValueError,
        )
        timeout_ms = max(1, int(settings.timeout * 1000))
        linger_ms = 5
        acks: str | int = "all" if settings.acks == "all" else int(settings.acks)
        self._config: dict[str, Any] = {
            "bootstrap_servers": list(settings.brokers),
            "client_id": settings.client_id,
            "acks": acks,
            "enable_idempotence": settings.acks == "all",
            "compression_type": None if settings.compression == "none" else settings.compression,
            "linger_ms": linger_ms,
            "delivery_timeout_ms": max(timeout_ms, linger_ms + 1),
            "request_timeout_ms": max(1, min(30_000, timeout_ms - linger_ms)),
            # send() and the constructor block at most this long for an unreachable cluster.
            "max_block_ms": min(timeout_ms, 5_000),
            **settings.options,
        }
        # The constructor's wait for the cluster (renamed in kafka-python 3.0).
        for name in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):
            if name in KafkaProducer.DEFAULT_CONFIG:
                self._config.setdefault(name, min(timeout_ms, 5_000))
                break
        unknown = set(self._config) - set(KafkaProducer.DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"unknown kafka-python producer options: {', '.join(sorted(unknown))}")
        self._replace_after: tuple[type[BaseException], ...] = (
            errors.UnknownProducerIdError,
            errors.OutOfOrderSequenceNumberError,
            errors.InvalidProducerEpochError,
        )
        self._producer: Any = None
        self._replace_producer = False

    def _ensure(self) -> Any:
        producer = self._producer
        if producer is not None and (self._replace_producer or _kafka_python_fatal(producer)):
            self._replace_producer = False
            self._producer = None
            self._on_error("replaced the producer after a fatal error; undelivered records will be sent again")
            _abandon_kafka_python(producer)
            producer = None
        if producer is None:
            from kafka import KafkaProducer

            producer = self._producer = KafkaProducer(**self._config)
        return producer

    def _ok(self, record: OutRecord, _metadata: Any) -> None:
        self._on_result(record, None)

    def _failed(self, record: OutRecord, exc: BaseException) -> None:
        if isinstance(exc, self._replace_after):
            self._replace_producer = True
        self._on_result(record, RecordError(_describe(exc), not isinstance(exc, self._permanent)))

    def send(self, records: Sequence[OutRecord]) -> None:
        try:
            producer = self._ensure()
        except Exception as exc:
            error = RecordError(f"cannot connect: {_describe(exc)}", True)
            self._on_error(error.message)
            for record in records:
                self._on_result(record, error)
            return
        send = producer.send
        for i, record in enumerate(records):
            try:
                future = send(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    partition=record.partition,
                    timestamp_ms=record.timestamp,
                )
            except self._errors.KafkaTimeoutError as exc:
                # No metadata within max_block_ms: the cluster is unreachable; do not wait once per record.
                error = RecordError(_describe(exc), True)
                for rest in records[i:]:
                    self._on_result(rest, error)
                return
            except Exception as exc:
                self._failed(record, exc)
                continue
            future.add_callback(self._ok, record)
            future.add_errback(self._failed, record)

    def partitions(self, topic: str, timeout: float) -> int:
        producer = self._ensure()
        found = producer.partitions_for(topic)
        return len(found) if found else 0

    def close(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if timeout > 0:
            with contextlib.suppress(Exception):
                producer.flush(timeout)
        _abandon_kafka_python(producer)


def _kafka_python_fatal(producer: Any) -> bool:
    manager = getattr(producer, "_transaction_manager", None)
    try:
        return bool(manager is not None and manager.has_fatal_error())
    except Exception:
        return False


def _abandon_kafka_python(producer: Any) -> None:
    """Close without waiting: pending batches are aborted and their errbacks fire.

    ``close(0)`` flushes first and raises if anything is still pending, before it force-closes the
    sender; so the sender is force-closed here in that case.
    """
    try:
        producer.close(timeout=0)
        return
    except Exception:
        pass
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        with contextlib.suppress(Exception):
            sender.force_close()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text and text != "None" else type(exc).__name__
