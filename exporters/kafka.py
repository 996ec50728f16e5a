"""Exporter ``kafka``: sends every report to Kafka, as the observer 1.0 KafkaSink did.

Each report becomes one Kafka record: by default on one topic (``reports``), keyed by its call (so a
call's reports stay in order on one partition), with the report type and schema version in the headers
``report-type`` and ``schema-version``. The value is the report envelope as JSON, or the payload in
binary Avro per the 2.2.11 schema of its type.

Delivery: accepted records wait in a queue bounded by a number of records. A sender task hands them to
the client library from a worker thread of its own (the event loop never blocks on the library), and
the library's callbacks come back to the loop through ``call_soon_threadsafe``. The library retries a
record itself for ``timeout``; a record it fails with a retriable error is sent again after an
exponential backoff, until ``retry.max_elapsed_time`` (0: for ever). While the broker is unreachable
records wait, and they are delivered when it comes back; when the queue is full, ``consume`` raises
:class:`RetryLater` and the receivers answer 503. On shutdown the queue is flushed until
``flush_timeout``; what could not be sent by then is counted in ``exporter_send_failed_records`` and
logged. Delivery is at least once: a record retried after a timed-out attempt may arrive twice.

Samples (a pipeline without a ``reports`` processor) are sent as ``{"type": "ClientSample", "payload"}``
with JSON encoding, like the file exporter writes them; Avro has no schema for them, so they are dropped
and counted.

Health: :meth:`KafkaExporter.failing_since` says since when sending has been failing (monotonic
seconds), or None while it works; ``GET /health`` asks it.

The library sits behind the narrow protocol of :mod:`._kafka_clients` (confluent-kafka or kafka-python),
so the queue and retry logic here is written once; Avro is encoded by :mod:`._kafka_avro`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from webrtc_observer.component import Factory, RetryLater, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch, ClientSample, Report, SfuSample, TurnSample
from webrtc_observer.schemas import REPORTS_VERSION as _REPORTS_VERSION

from . import _kafka_clients as clients
from ._kafka_avro import avro_encoder
from ._kafka_clients import ClientSettings, KafkaClient, OutRecord, SendError

_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
_MAX_TOPIC_LENGTH = 249
_LONGEST_TYPE_TOPIC = len("peer-connection-data-channel")


@dataclass
class TopicPerTypeConfig:
    enabled: bool = False
    """One topic per report type, named ``prefix`` + the type in lower kebab case (``call-event``)."""
    prefix: str = ""


@dataclass
class RetryConfig:
    initial_interval: Duration = Duration(1)
    """Wait after the first failed attempt; doubled (with ±50% jitter) after each further failure."""
    max_interval: Duration = Duration(30)
    max_elapsed_time: Duration = Duration(0)
    """Give a record up this long after its first attempt; 0 retries for ever (the queue bounds memory)."""

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        if self.initial_interval <= 0:
            issues.append(("initial_interval", "must be more than 0"))
        if self.max_interval < self.initial_interval:
            issues.append(("max_interval", "must be at least initial_interval"))
        return issues


@dataclass
class KafkaExporterConfig:
    brokers: list[str]
    """Bootstrap brokers, ``host:port``."""
    topic: str | None = None
    """The one topic of every report; ``reports`` unless ``topic_per_type`` is enabled."""
    topic_per_type: TopicPerTypeConfig = field(default_factory=TopicPerTypeConfig)
    encoding: Literal["json", "avro"] = "json"
    key: Literal["call", "random"] = "call"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    """gzip by default: report JSON shrinks about tenfold, and both clients have it without extra packages."""
    acks: str = "all"
    """``all`` (with the idempotent producer), ``1`` or ``0``."""
    client: Literal["auto", "confluent", "kafka-python"] = "auto"
    timeout: Duration = Duration(30)
    """How long the client library may try to deliver a record before the exporter's retry takes over."""
    queue_size: int = 50_000
    """Records accepted and not yet delivered (queued, waiting to be retried or in flight)."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    flush_timeout: Duration = Duration(10)
    """On shutdown, how long to keep delivering what was accepted."""
    client_options: dict[str, bool | int | float | str] = field(default_factory=dict)
    """Extra configuration of the client library, passed through verbatim (its own option names)."""

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
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
        if self.acks not in ("all", "-1", "1", "0"):
            issues.append(("acks", f"must be all, 1 or 0, got {self.acks!r}"))
        if self.timeout <= 0:
            issues.append(("timeout", "must be more than 0"))
        if self.queue_size < 1:
            issues.append(("queue_size", "must be at least 1"))
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


_json = msgspec.json.Encoder()
_NO_AVRO_SAMPLES = "samples have no Avro report schema"


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
                _resolve(loop, future, None, exc)
            else:
                _resolve(loop, future, result, None)


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if future.done():
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


class _Inbox:
    """Collects outcomes reported on the library's threads; hands them to the loop in bursts."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Callable[[list[Any]], None]) -> None:
        self._loop = loop
        self._handler = handler
        self._items: list[Any] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def put_result(self, record: OutRecord, error: SendError | None) -> None:
        self.put((record, error))

    def put(self, item: Any) -> None:
        """``(record, error)``, or a client error message."""
        with self._lock:
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        if items:
            self._handler(items)


class KafkaExporter:
    stall_after = 5.0
    """Seconds without any delivery while records are outstanding after which sending counts as failing."""
    _CHUNK = 2048
    """Records handed to the client per call on the worker thread."""

    def __init__(self, settings: Settings, config: KafkaExporterConfig) -> None:
        self._config = config
        self._log = settings.logger
        self._label = label = str(settings.id)
        kind = clients.resolve(config.client)
        if kind is None:  # validate() reports this; a config built by hand may still get here
            raise RuntimeError(f"kafka client {config.client!r} is not installed")
        self.client_kind: clients.ClientKind = kind
        self._capacity = config.queue_size
        self._queue: deque[OutRecord] = deque()
        """Records ready to be sent, oldest first."""
        self._retry: list[OutRecord] = []
        """Records whose attempt failed, waiting for the backoff to pass."""
        self._pending = 0
        """Records accepted and not finished: queued, waiting to be retried or in flight."""
        self._seq = 0
        self._closing = False
        self._final = False
        self._abandoned = False
        self._client: KafkaClient | None = None
        self._worker: _Worker | None = None
        self._inbox: _Inbox | None = None
        self._sender: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # Backoff and health.
        self._interval = float(config.retry.initial_interval)
        self._backoff_until = 0.0
        self._attempt = 0
        self._error_since: float | None = None
        self._busy_since: float | None = None
        self._last_success = 0.0
        self._last_client_error: tuple[str, float] = ("", 0.0)
        self._warned_samples = False
        self._error_log: dict[tuple[str, str], tuple[float, int]] = {}
        # Encoding.
        self._topics: dict[str, str] = {}
        self._headers: dict[tuple[str, str | None], list[tuple[str, bytes]]] = {}
        self._encode_report = self._avro if config.encoding == "avro" else self._json_report
        self._avro_encoders: dict[str, Callable[[Any], bytes]] = {}
        self._avro_version = _REPORTS_VERSION
        self._key_of = _call_key if config.key == "call" else _random_key
        t = settings.telemetry
        self._sent = t.counter("exporter_sent_records", "Records written or delivered", ("exporter",))
        self._failed = t.counter("exporter_send_failed_records", "Records that could not be written or delivered", ("exporter",))
        self._enqueue_failed = t.counter(
            "exporter_enqueue_failed_records", "Records refused because the exporter queue was full", ("exporter",)
        )
        self._queue_gauge = t.gauge("exporter_queue_size", "Records waiting in the exporter queue", ("exporter",))
        self._queue_gauge.set(0, label)
        t.gauge("exporter_queue_capacity", "Capacity of the exporter queue", ("exporter",)).set(config.queue_size, label)
        self._sent.add(0, label)
        self._failed.add(0, label)
        self._enqueue_failed.add(0, label)

    # -- health -----------------------------------------------------------------------------------

    def failing_since(self) -> float | None:
        """Monotonic time since which sending has been failing, or None while it works.

        Failing means: a delivery failed (or the client reported an error with records outstanding) and
        none has succeeded since, or records have been outstanding for ``stall_after`` seconds without
        any delivery (a broker that accepts connections but does not answer).
        """
        since = self._error_since
        if self._pending and self._busy_since is not None:
            ref = max(self._busy_since, self._last_success)
            if time.monotonic() - ref >= self.stall_after and (since is None or ref < since):
                since = ref
        return since

    @property
    def pending(self) -> int:
        """Records accepted and not yet delivered or given up."""
        return self._pending

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._inbox = _Inbox(loop, self._on_outcomes)
        self._worker = _Worker(f"kafka-{self._label}")
        cfg = self._config
        settings = ClientSettings(
            brokers=list(cfg.brokers),
            acks=cfg.acks_normalized,
            compression=cfg.compression,
            timeout=float(cfg.timeout),
            max_queued=cfg.queue_size,
            options=dict(cfg.client_options),
        )
        try:
            self._client = await self._worker.call(
                clients.create, self.client_kind, settings, self._inbox.put_result, self._inbox.put
            )
        except Exception:
            self._worker.stop()
            self._worker = None
            raise
        self._sender = asyncio.create_task(self._send_loop(), name=f"kafka-exporter-{self._label}")
        self._log.info(
            "exporting to kafka",
            brokers=",".join(cfg.brokers),
            topic=self._topic_description(),
            encoding=cfg.encoding,
            client=self.client_kind,
        )

    def _topic_description(self) -> str:
        if self._config.topic_per_type.enabled:
            return type_topic(self._config.topic_per_type.prefix, "REPORT_TYPE")
        return self._config.topic or "reports"

    async def shutdown(self) -> None:
        """Keep delivering until everything accepted is out or ``flush_timeout`` passes; count the rest."""
        self._closing = True
        if self._sender is None:
            return
        deadline = time.monotonic() + self._config.flush_timeout
        if self._pending:
            self._log.info("flushing", records=self._pending, timeout_s=self._config.flush_timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._config.flush_timeout)
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)
        self._sender = None
        self._final = True  # from here on, a failed attempt is not retried: it is counted below
        # Release the library on a thread of its own (the worker may be stuck in a blocking send), and
        # do not wait for it beyond a short grace: the deadline is what the operator configured.
        client, self._client = self._client, None
        if client is not None:
            closer = _Worker(f"kafka-close-{self._label}")
            remaining = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(asyncio.shield(closer.call(client.close, remaining)), remaining + 1.0)
            except TimeoutError:
                self._log.warning("the kafka client did not close in time; abandoning it")
            except Exception as exc:
                self._log.warning("closing the kafka client failed", error=str(exc))
            closer.stop()
        if self._inbox is not None:
            self._inbox.drain()  # outcomes reported while closing (deliveries, purged records)
        self._abandoned = True
        unsent = self._pending
        if unsent:
            self._failed.add(unsent, self._label)
            self._log.error(
                "could not deliver before the flush deadline; records lost",
                records=unsent,
                flush_timeout_s=self._config.flush_timeout,
            )
        self._queue.clear()
        self._retry.clear()
        self._set_pending(0)
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self._log.info("kafka exporter stopped", sent=int(self._sent.value(self._label)))

    # -- accepting --------------------------------------------------------------------------------

    async def consume(self, batch: Batch) -> None:
        if self._closing:
            raise RetryLater("exporter is shutting down")
        count = len(batch.reports) + len(batch.samples)
        if not count:
            return
        # A batch larger than the whole queue is still taken when the queue is empty, or it never would be.
        if self._pending and self._pending + count > self._capacity:
            self._enqueue_failed.add(count, self._label)
            wait = max(1.0, self._backoff_until - time.monotonic())
            raise RetryLater(f"kafka exporter queue is full ({self._capacity} records)", retry_after=wait)
        records = list(self._encode(batch))
        if not records:
            return
        self._queue.extend(records)
        self._set_pending(self._pending + len(records))
        self._wake.set()

    def _encode(self, batch: Batch) -> Iterable[OutRecord]:
        failed: dict[str, int] = {}
        for report in batch.reports:
            try:
                value = self._encode_report(report)
            except Exception as exc:  # not encodable: retrying cannot help
                reason = f"{report.type}: {type(exc).__name__}: {exc}"
                failed[reason] = failed.get(reason, 0) + 1
                continue
            self._seq += 1
            yield OutRecord(
                self._topic(report.type),
                self._key_of(report.payload),
                value,
                self._header(report.type, report.schema_version),
                self._seq,
            )
        for sample in batch.samples:
            name = type(sample).__name__
            if self._config.encoding == "avro":
                failed[_NO_AVRO_SAMPLES] = failed.get(_NO_AVRO_SAMPLES, 0) + 1
                continue
            self._seq += 1
            value = _json.encode({"type": name, "payload": sample})
            yield OutRecord(self._topic(name), self._sample_key(sample), value, self._header(name, None), self._seq)
        if failed:
            total = sum(failed.values())
            self._failed.add(total, self._label)
            if failed.pop(_NO_AVRO_SAMPLES, 0) and not self._warned_samples:
                self._warned_samples = True
                self._log.warning(
                    "avro encoding sends reports only; put a reports processor in the pipeline, samples are dropped"
                )
            for reason, n in failed.items():
                self._log_limited("records not encodable, dropped", reason, n)

    def _json_report(self, report: Report) -> bytes:
        return _json.encode(report)

    def _avro(self, report: Report) -> bytes:
        encoder = self._avro_encoders.get(report.type)
        if encoder is None:
            from webrtc_observer.processors import _report_schemas as schemas

            report_type = report.type
            encoder = avro_encoder(schemas.schema(report_type), lambda: schemas.parsed_schema(report_type))
            self._avro_encoders[report_type] = encoder
        if report.schema_version != self._avro_version:
            raise ValueError(f"no Avro schema of version {report.schema_version}")
        payload = report.payload
        return encoder(payload if isinstance(payload, dict) else payload.to_dict())

    def _topic(self, record_type: str) -> str:
        topic = self._topics.get(record_type)
        if topic is None:
            cfg = self._config
            topic = type_topic(cfg.topic_per_type.prefix, record_type) if cfg.topic_per_type.enabled else (cfg.topic or "reports")
            self._topics[record_type] = topic
        return topic

    def _header(self, record_type: str, version: str | None) -> list[tuple[str, bytes]]:
        headers = self._headers.get((record_type, version))
        if headers is None:
            headers = [("report-type", record_type.encode())]
            if version is not None:
                headers.append(("schema-version", version.encode()))
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

    def _set_pending(self, value: int) -> None:
        if value and not self._pending:
            self._busy_since = time.monotonic()
        self._pending = value
        self._queue_gauge.set(value, self._label)
        if value:
            self._idle.clear()
        else:
            self._idle.set()

    # -- sending ----------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        assert self._worker is not None and self._client is not None
        client, worker = self._client, self._worker
        while True:
            now = time.monotonic()
            if now < self._backoff_until:
                await self._sleep(self._backoff_until - now)
                continue
            if self._retry:
                self._retry.sort(key=lambda r: r.seq)
                self._queue.extendleft(reversed(self._retry))
                self._retry.clear()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            chunk = [self._queue.popleft() for _ in range(min(self._CHUNK, len(self._queue)))]
            now = time.monotonic()
            for record in chunk:
                record.in_flight = True
                if not record.first_try:
                    record.first_try = now
            try:
                await worker.call(client.send, chunk)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a client bug must not stop the exporter: count it as a failed attempt
                self._log.error("kafka client send failed", error=str(exc), exc_info=True)
                self._on_outcomes([(record, SendError(str(exc), True)) for record in chunk])

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _on_outcomes(self, items: list[Any]) -> None:
        """On the loop: record delivery outcomes and client errors reported by the library."""
        if self._abandoned:
            return
        now = time.monotonic()
        sent = 0
        dropped: dict[str, int] = {}
        retried = 0
        last_error = ""
        max_elapsed = self._config.retry.max_elapsed_time
        for item in items:
            if isinstance(item, str):
                self._client_error(item, now)
                continue
            record, error = item
            if not record.in_flight or (error is not None and self._final):
                continue
            record.in_flight = False
            if error is None:
                sent += 1
            elif not error.retriable:
                dropped[error.message] = dropped.get(error.message, 0) + 1
            elif max_elapsed and now - record.first_try >= max_elapsed:
                reason = f"retries exhausted after {max_elapsed:g}s: {error.message}"
                dropped[reason] = dropped.get(reason, 0) + 1
            else:
                self._retry.append(record)
                retried += 1
                last_error = error.message
        if sent:
            self._sent.add(sent, self._label)
            self._last_success = now
            if self._error_since is not None:
                self._log.info("kafka delivery recovered", failing_for_s=round(now - self._error_since, 3))
                self._error_since = None
            self._interval = float(self._config.retry.initial_interval)
            self._attempt = 0
        if dropped:
            total = sum(dropped.values())
            self._failed.add(total, self._label)
            for reason, n in dropped.items():
                self._log_limited("records dropped", reason, n)
        if retried:
            if self._error_since is None:
                self._error_since = now
            if now >= self._backoff_until:  # one backoff step per failed round, not per record
                delay = self._interval * random.uniform(0.5, 1.5)
                self._backoff_until = now + delay
                self._interval = min(self._interval * 2, float(self._config.retry.max_interval))
                self._attempt += 1
                self._log.warning(
                    "kafka delivery failed, will retry",
                    records=len(self._retry),
                    error=last_error,
                    attempt=self._attempt,
                    retry_in_s=round(delay, 3),
                )
            self._wake.set()
        finished = sent + sum(dropped.values())
        if finished:
            self._set_pending(self._pending - finished)

    def _log_limited(self, event: str, reason: str, records: int) -> None:
        """An error per reason at most every 30 s, with the records dropped meanwhile."""
        now = time.monotonic()
        last, suppressed = self._error_log.get((event, reason), (0.0, 0))
        if last and now - last < 30:
            self._error_log[(event, reason)] = (last, suppressed + records)
            return
        if len(self._error_log) > 100:  # reasons carry error texts: keep the memory of them bounded
            self._error_log.clear()
        self._error_log[(event, reason)] = (now, 0)
        self._log.error(event, records=records + suppressed, reason=reason)

    def _client_error(self, message: str, now: float) -> None:
        if self._pending and self._error_since is None:
            self._error_since = now
        previous, at = self._last_client_error
        if message != previous or now - at > 30:
            self._last_client_error = (message, now)
            self._log.warning("kafka client error", error=message, pending=self._pending)


def _call_key(payload: dict[str, Any] | None) -> bytes | None:
    """observer 1.0's OBJECT_HIERARCHY_BASED key: the call, else the client, else the SFU."""
    if payload is None:
        return None
    value = payload.get("callId") or payload.get("clientId") or payload.get("sfuId")
    return value.encode() if isinstance(value, str) and value else None


def _random_key(_payload: Any) -> bytes:
    return str(uuid.uuid4()).encode()


def _create(settings: Settings, config: KafkaExporterConfig, _next: None) -> KafkaExporter:
    return KafkaExporter(settings, config)


FACTORY = Factory(
    kind="exporter",
    type="kafka",
    config_type=KafkaExporterConfig,
    create=_create,
    description="reports to Kafka topics (JSON or Avro), keyed by call",
)
