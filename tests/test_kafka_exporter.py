"""The ``kafka`` exporter against a real Kafka-protocol broker (tansu), with both client libraries.

Samples go in over HTTP to a collector built from YAML; what arrives in Kafka is read back with an
independent consumer (manual partition assignment, see ``tests/_kafka_broker.py``). Outages are real:
the broker is frozen with SIGSTOP, or killed and restarted on the same port.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from fastavro import schemaless_reader

from tests import _samples
from tests._kafka_broker import Broker, Message, kafka_broker_fixture  # noqa: F401  (the kafka_broker fixture)
from webrtc_observer import testing
from webrtc_observer.component import Consumer, Factory, Settings
from webrtc_observer.components import config_types
from webrtc_observer.config import ConfigError, load_text
from webrtc_observer.exporters import _kafka_clients as clients
from webrtc_observer.exporters import kafka
from webrtc_observer.model import Batch, ClientSample, Report
from webrtc_observer.processors import _report_schemas as schemas
from webrtc_observer.testing import RunningCollector

CLIENTS = [
    pytest.param(
        "confluent", marks=pytest.mark.skipif(not clients.available("confluent"), reason="confluent-kafka not installed")
    ),
    pytest.param(
        "kafka-python", marks=pytest.mark.skipif(not clients.available("kafka-python"), reason="kafka-python not installed")
    ),
]
# kafka-python 3.0 loads its protocol schemas with deprecated importlib.resources calls.
pytestmark = pytest.mark.filterwarnings(
    "ignore:read_text is deprecated:DeprecationWarning", "ignore:open_text is deprecated:DeprecationWarning"
)
FAST_RETRY = {"initial_interval": "100ms", "max_interval": "500ms"}
"""retry_on_failure for tests: an outage is retried within a second of its end."""

# --------------------------------------------------------------------------------------------------
# A stand-in for correlation + reports: each client sample becomes two reports with a unique id
# --------------------------------------------------------------------------------------------------


@dataclass
class TwoReportsConfig:
    pass


class TwoReports:
    """``CALL_EVENT`` (value = id) and ``CALL_META_DATA`` (payload = id) per client sample, id = client:seq."""

    def __init__(self, settings: Settings, config: TwoReportsConfig, next_consumer: Consumer) -> None:
        self._next = next_consumer

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def consume(self, batch: Batch) -> None:
        reports = []
        for s in batch.samples:
            if isinstance(s, ClientSample):
                reports.extend(two_reports(s.origin.service_id, s.call_id, s.client_id, s.sample_seq or 0, s.timestamp))
        await self._next.consume(Batch(reports=reports))


def two_reports(service: str, call_id: str | None, client_id: str, seq: int, ts: int) -> list[Report]:
    ident = f"{client_id}:{seq}"
    common = {"serviceId": service, "timestamp": ts, "callId": call_id, "clientId": client_id, "sampleSeq": seq}
    event = schemas.build("CALL_EVENT", {**common, "name": "SAMPLE_SEEN", "value": ident})
    meta = schemas.build("CALL_META_DATA", {**common, "type": "TEST", "payload": ident})
    assert event is not None and meta is not None
    return [Report(type="CALL_EVENT", payload=event), Report(type="CALL_META_DATA", payload=meta)]


TWO_REPORTS = Factory(
    kind="processor",
    type="two_reports",
    config_type=TwoReportsConfig,
    create=lambda settings, config, next_consumer: TwoReports(settings, config, next_consumer),
)


@asynccontextmanager
async def collector(exporter: dict[str, Any], processors: list[str], record: bool = False) -> AsyncIterator[RunningCollector]:
    """observertc → ``processors`` → kafka (and ``recording`` beside it if ``record``)."""
    exporters = ["kafka", "recording"] if record else ["kafka"]
    yaml_text = f"""
receivers:
  observertc: {{endpoint: "127.0.0.1:0"}}
processors:
{"".join(f"  {p}: {{}}" + chr(10) for p in processors) or "  {}"}
exporters:
  kafka: {json.dumps(exporter)}
  recording: {{}}
service:
  health: {{exporter_failure_threshold: 500ms}}
  pipelines:
    reports:
      receivers: [observertc]
      processors: {json.dumps(processors)}
      exporters: {json.dumps(exporters)}
"""
    async with testing.running_collector(yaml_text, extra=(TWO_REPORTS,)) as running:
        yield running


async def post(c: RunningCollector, http: aiohttp.ClientSession, body: dict[str, Any]) -> int:
    async with http.post(c.url("/rest/samples/svc/mu"), json=body) as resp:
        await resp.read()
        return resp.status


def metric(c: RunningCollector, name: str, *labels: str) -> float:
    m = c.telemetry.get(name)
    return 0.0 if m is None else m.value(*labels)


async def delivered(exporter: kafka.KafkaExporter, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while exporter.queued:
        assert time.monotonic() < deadline, f"{exporter.queued} records still queued after {timeout}s"
        await asyncio.sleep(0.02)


async def until(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{what} not met after {timeout}s"
        await asyncio.sleep(0.02)


async def health(c: RunningCollector, http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
    async with http.get(c.url("/health")) as resp:
        return resp.status, await resp.json()


async def read(broker: Broker, topics: str | list[str], count: int | None = None, timeout: float = 10.0) -> list[Message]:
    return await asyncio.to_thread(broker.read, topics, count, timeout)


def expected_key(payload: dict[str, Any]) -> bytes | None:
    value = payload.get("callId") or payload.get("clientId") or payload.get("sfuId")
    return value.encode() if value else None


def avro_decoded(message: Message) -> dict[str, Any]:
    report_type = message.headers["report-type"].decode()
    return schemaless_reader(io.BytesIO(message.value), schemas.parsed_schema(report_type), None)  # type: ignore[return-value]


def full(report_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as an Avro reader gives it back: every field of the schema, absent ones None."""
    return {name: payload.get(name) for name in schemas.fields_of(report_type)}


def sample(i: int, clients_: int = 5, calls: int = 3) -> dict[str, Any]:
    """A small 2.x ClientSample whose (client, seq) is unique per ``i``."""
    return {"clientId": f"c-{i % clients_}", "callId": f"call-{i % calls}", "sampleSeq": i, "timestamp": _samples.T0 + i}


def ids_of(messages: list[Message]) -> Counter[str]:
    out: Counter[str] = Counter()
    for m in messages:
        payload = json.loads(m.value)["payload"]
        out[payload.get("value") or payload.get("payload")] += 1
    return out


def expected_ids(indices: list[int]) -> Counter[str]:
    return Counter(f"c-{i % 5}:{i}" for i in indices for _ in range(2))


# --------------------------------------------------------------------------------------------------
# The real pipeline: correlation + reports → kafka
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "avro"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_reports_of_a_real_pipeline_arrive_keyed_by_call_with_headers(kafka_broker, http, client, encoding):
    options = {"brokers": [kafka_broker.bootstrap], "client": client, "encoding": encoding}
    async with collector(options, ["correlation", "reports"], record=True) as c:
        body = _samples.samples_v2(_samples.client_sample_v2("c-alice"), _samples.client_sample_v2("c-bob"))
        assert await post(c, http, body) == 202
        exporter = c.exporter("kafka")
        assert exporter.client_kind == client
        await delivered(exporter)
        reports = c.exporter("recording").reports
        assert len(reports) > 10
        assert {r.type for r in reports} >= {"CALL_EVENT", "INBOUND_AUDIO_TRACK", "OUTBOUND_VIDEO_TRACK", "SFU_TRANSPORT"}
        assert metric(c, "exporter_sent_records", "kafka") == len(reports)
        assert metric(c, "exporter_send_failed_records", "kafka") == 0
        messages = await read(kafka_broker, "reports", len(reports))

    assert len(messages) == len(reports)
    assert kafka_broker.topics() == {"reports"}
    got: list[tuple[str, str]] = []
    for m in messages:
        report_type = m.headers["report-type"].decode()
        assert m.headers["schema-version"] == b"2.2.11"
        if encoding == "json":
            envelope = json.loads(m.value)
            assert envelope["type"] == report_type and envelope["schemaVersion"] == "2.2.11"
            payload = envelope["payload"]
            assert m.key == expected_key(payload)
            got.append((report_type, json.dumps(full(report_type, payload), sort_keys=True)))
        else:
            decoded = avro_decoded(m)
            assert m.key == expected_key(decoded)
            got.append((report_type, json.dumps(decoded, sort_keys=True)))
    want = [(r.type, json.dumps(full(r.type, r.envelope()["payload"]), sort_keys=True)) for r in reports]
    assert sorted(got) == sorted(want)
    # The client reports of the call are keyed by the call: one partition keeps them in order.
    call_messages = [m for m in messages if m.key == b"call-1"]
    assert len(call_messages) >= len(reports) // 2
    assert len({m.partition for m in call_messages}) == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_topic_per_type_and_random_keys(kafka_broker, http, client):
    options = {
        "brokers": [kafka_broker.bootstrap],
        "client": client,
        "topic_per_type": {"enabled": True, "prefix": "observertc-"},
        "key": "random",
        "compression": "none",
    }
    async with collector(options, ["correlation", "reports"], record=True) as c:
        body = _samples.samples_v2(_samples.client_sample_v2("c-alice"))
        assert await post(c, http, body) == 202
        await delivered(c.exporter("kafka"))
        by_type = Counter(r.type for r in c.exporter("recording").reports)

    expected_topics = {f"observertc-{t.lower().replace('_', '-')}": (t, n) for t, n in by_type.items()}
    assert "observertc-call-event" in expected_topics and "observertc-inbound-audio-track" in expected_topics
    assert kafka_broker.topics() == set(expected_topics)
    messages = await read(kafka_broker, list(expected_topics), sum(by_type.values()))
    assert Counter(m.topic for m in messages) == {topic: n for topic, (_, n) in expected_topics.items()}
    for m in messages:
        report_type = expected_topics[m.topic][0]
        assert json.loads(m.value)["type"] == report_type
        assert m.headers["report-type"] == report_type.encode()
    keys = [m.key for m in messages]
    assert all(k is not None and len(k) == 36 for k in keys)  # a random UUID each
    assert len(set(keys)) == len(keys)


def test_type_topic_names():
    assert kafka.type_topic("observertc-", "CALL_EVENT") == "observertc-call-event"
    assert kafka.type_topic("", "PEER_CONNECTION_DATA_CHANNEL") == "peer-connection-data-channel"
    assert kafka.type_topic("raw.", "ClientSample") == "raw.client-sample"


# --------------------------------------------------------------------------------------------------
# Outages: frozen broker, stopped and restarted broker, full queue, shutdown with the broker down
# --------------------------------------------------------------------------------------------------


async def keep_posting(
    c: RunningCollector, http: aiohttp.ClientSession, start: int, stop: asyncio.Event, accepted: list[int], refused: list[int]
) -> None:
    i = start
    while not stop.is_set():
        status = await post(c, http, sample(i))
        assert status in (202, 503), status
        (accepted if status == 202 else refused).append(i)
        i += 1
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_frozen_broker_loses_nothing(kafka_broker, http, client):
    # A 1 s attempt: the frozen broker fails attempts (and turns /health unhealthy) quickly.
    options = {"brokers": [kafka_broker.bootstrap], "client": client, "retry_on_failure": FAST_RETRY, "timeout": "1s"}
    async with collector(options, ["two_reports"]) as c:
        exporter = c.exporter("kafka")
        accepted: list[int] = []
        refused: list[int] = []
        for i in range(20):
            assert await post(c, http, sample(i)) == 202
            accepted.append(i)
        await delivered(exporter)
        assert exporter.failing_since() is None

        kafka_broker.freeze()
        stop = asyncio.Event()
        poster = asyncio.create_task(keep_posting(c, http, 20, stop, accepted, refused))
        frozen_at = time.monotonic()

        async def unhealthy() -> bool:
            status, body = await health(c, http)
            return status == 503 and "exporter kafka" in body["problems"]

        await until(unhealthy, what="/health unhealthy with the broker frozen")
        assert exporter.queued > 0
        since = exporter.failing_since()
        assert since is not None and frozen_at <= since <= time.monotonic() - 0.5  # says since when
        kafka_broker.thaw()
        sent_before = len(accepted)
        await until(lambda: asyncio.sleep(0, len(accepted) > sent_before + 10), what="more posts after the thaw")
        stop.set()
        await poster
        await delivered(exporter)
        assert exporter.failing_since() is None
        assert (await health(c, http))[0] == 200
        assert metric(c, "exporter_sent_records", "kafka") == 2 * len(accepted)
        messages = await read(kafka_broker, "reports")  # to the end: copies must not hide a missing one

    assert not refused, "the queue was large enough: nothing should have been refused"
    assert len(accepted) > 60
    got, want = ids_of(messages), expected_ids(accepted)
    if client == "confluent":
        # librdkafka keeps a timed-out attempt's records and the retry adopts them: exactly once.
        assert got == want
    else:
        # kafka-python fails a request that timed out although the broker may still write it: the
        # retry can then add a copy (at least once), never lose one.
        assert set(got) == set(want) and all(got[k] >= n for k, n in want.items())


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_stopped_and_restarted_broker_loses_nothing_sent_meanwhile(kafka_broker, http, client):
    # The restarted (in-memory) broker has forgotten the idempotent producer: the client's attempts fail
    # until ``timeout``, then the exporter retries through a new producer. A short timeout keeps it quick.
    options = {"brokers": [kafka_broker.bootstrap], "client": client, "retry_on_failure": FAST_RETRY, "timeout": "2s"}
    async with collector(options, ["two_reports"]) as c:
        exporter = c.exporter("kafka")
        for i in range(10):
            assert await post(c, http, sample(i)) == 202
        await delivered(exporter)

        kafka_broker.stop()  # in-memory storage: what was delivered so far is gone with it
        accepted: list[int] = []
        refused: list[int] = []
        stop = asyncio.Event()
        poster = asyncio.create_task(keep_posting(c, http, 10, stop, accepted, refused))
        await asyncio.sleep(1.0)
        assert exporter.queued > 0
        kafka_broker.start()  # same port, empty storage
        await asyncio.sleep(1.0)
        stop.set()
        await poster
        await delivered(exporter, timeout=20)
        messages = await read(kafka_broker, "reports", timeout=10)

    assert not refused
    assert len(accepted) > 30
    got = ids_of(messages)
    # Everything accepted after the broker went down arrives; nothing else was there to arrive. A record
    # whose attempt the restart interrupted may arrive twice (at least once), never zero times.
    assert set(got) == set(expected_ids(accepted))
    assert all(got[k] >= n for k, n in expected_ids(accepted).items())


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_full_queue_answers_503_and_counts_the_refusals(kafka_broker, http, client):
    options = {"brokers": [kafka_broker.bootstrap], "client": client, "sending_queue": {"queue_size": 6}}
    options["retry_on_failure"] = FAST_RETRY
    async with collector(options, ["two_reports"]) as c:
        exporter = c.exporter("kafka")
        assert await post(c, http, sample(0)) == 202
        await delivered(exporter)
        kafka_broker.freeze()
        accepted = [0]
        for i in range(1, 4):  # 2 records each: 6 fill the queue
            assert await post(c, http, sample(i)) == 202
            accepted.append(i)
        assert exporter.queued == 6
        assert metric(c, "exporter_queue_size", "kafka") == 6
        assert metric(c, "exporter_queue_capacity", "kafka") == 6
        async with http.post(c.url("/rest/samples/svc/mu"), json=sample(4)) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "pipeline_full"
            assert int(resp.headers["Retry-After"]) >= 1
        assert await post(c, http, sample(5)) == 503
        assert metric(c, "exporter_enqueue_failed_records", "kafka") == 4
        assert metric(c, "receiver_refused_messages", "observertc", "http", "pipeline_full") == 2
        kafka_broker.thaw()
        await delivered(exporter)
        assert await post(c, http, sample(6)) == 202  # room again
        accepted.append(6)
        await delivered(exporter)
        messages = await read(kafka_broker, "reports", 2 * len(accepted))
    assert ids_of(messages) == expected_ids(accepted)


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("outage", ["frozen", "stopped"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_shutdown_with_the_broker_down_keeps_the_deadline_and_counts_the_loss(kafka_broker, http, client, outage):
    captured = _Captured()
    logger = logging.getLogger("webrtc_observer")
    logger.addHandler(captured)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    options = {"brokers": [kafka_broker.bootstrap], "client": client, "shutdown_timeout": "1s", "retry_on_failure": FAST_RETRY}
    try:
        async with collector(options, ["two_reports"]) as c:
            exporter = c.exporter("kafka")
            assert await post(c, http, sample(0)) == 202
            await delivered(exporter)
            kafka_broker.freeze() if outage == "frozen" else kafka_broker.stop()
            for i in range(1, 6):
                assert await post(c, http, sample(i)) == 202
            await asyncio.sleep(0.2)
            assert exporter.queued == 10
            started = time.monotonic()
            lost = await c.service.shutdown()
            took = time.monotonic() - started
            assert 0.9 <= took <= 2.5, f"shutdown took {took:.2f}s with shutdown_timeout 1s"
            assert lost == 10 and c.service.lost == 10
            assert metric(c, "exporter_sent_records", "kafka") == 2
            assert metric(c, "exporter_lost_records", "kafka") == 10
    finally:
        logger.removeHandler(captured)
        logger.setLevel(previous_level)
    logged = [r for r in captured.records if r.getMessage().startswith("records lost at shutdown")]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert logged[0].fields["records"] == 10  # type: ignore[attr-defined]


async def test_service_shutdown_timeout_wins_over_a_longer_exporter_shutdown_timeout(kafka_broker, http):
    # service.shutdown_timeout 1s, the exporter's 30s: the service abandons the drain after 1s and
    # counts what the in-memory queue held as lost.
    kafka_broker.freeze()
    options = {"brokers": [kafka_broker.bootstrap], "shutdown_timeout": "30s", "retry_on_failure": FAST_RETRY}
    async with collector(options, ["two_reports"]) as c:
        for i in range(3):
            assert await post(c, http, sample(i)) == 202
        started = time.monotonic()
        lost = await c.service.shutdown(timeout=1.0)
        took = time.monotonic() - started
    assert 0.9 <= took <= 2.5, f"shutdown took {took:.2f}s with service.shutdown_timeout 1s"
    assert lost == 6
    assert metric(c, "exporter_lost_records", "kafka") == 6


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_broker_down_at_start_is_waited_for(kafka_broker, http, client):
    kafka_broker.stop()
    options = {"brokers": [kafka_broker.bootstrap], "client": client, "retry_on_failure": FAST_RETRY, "timeout": "1s"}
    async with collector(options, ["two_reports"]) as c:
        exporter = c.exporter("kafka")
        for i in range(5):
            assert await post(c, http, sample(i)) == 202
        await until(lambda: asyncio.sleep(0, exporter.failing_since() is not None), what="failing with the broker down")
        assert exporter.queued == 10
        kafka_broker.start()
        await delivered(exporter, timeout=20)
        messages = await read(kafka_broker, "reports")
    got = ids_of(messages)
    assert set(got) == set(expected_ids(list(range(5))))


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def _load(options: str) -> Any:
    yaml_text = f"""
receivers: {{observertc: {{}}}}
exporters:
  kafka: {options}
service: {{pipelines: {{p: {{receivers: [observertc], exporters: [kafka]}}}}}}
"""
    return load_text(yaml_text, config_types(testing.testing_factories(TWO_REPORTS)))


def test_defaults():
    config = _load("{brokers: ['kafka-1:9092', 'kafka-2:9092']}").components["exporters"]
    (options,) = config.values()
    assert options.topic is None and not options.topic_per_type.enabled
    assert (options.encoding, options.key, options.compression, options.acks, options.client) == (
        "json",
        "call",
        "lz4",
        "all",
        "auto",
    )
    assert (options.sending_queue.queue_size, options.sending_queue.storage) == (10_000, "memory")
    assert (options.timeout, options.shutdown_timeout) == (5, 30)
    retry = options.retry_on_failure
    assert (retry.enabled, retry.initial_interval, retry.max_interval, retry.max_elapsed_time) == (True, 5, 30, 300)
    assert options.client_options == {}


def test_option_errors_are_listed_with_their_paths():
    with pytest.raises(ConfigError) as err:
        _load(
            "{brokers: ['nohost', 'k:9092'], topic: 'a topic', topic_per_type: {enabled: true}, acks: 2,"
            " sending_queue: {queue_size: 0}, retry_on_failure: {initial_interval: 2s, max_interval: 1s},"
            " client: confluent, client_options: {bootstrap.servers: 'x:1', linger.ms: 20}}"
        )
    paths = {i.path: i.message for i in err.value.issues}
    assert set(paths) == {
        "exporters.kafka.brokers[0]",
        "exporters.kafka.topic",
        "exporters.kafka.acks",
        "exporters.kafka.sending_queue.queue_size",
        "exporters.kafka.retry_on_failure.max_interval",
        "exporters.kafka.client_options.bootstrap.servers",
    }
    with pytest.raises(ConfigError, match=r"exporters\.kafka\.brokers: required option is missing"):
        _load("{topic: reports}")
    with pytest.raises(ConfigError, match=r"exporters\.kafka\.topic_per_type\.prefix: may only have"):
        _load("{brokers: ['k:9092'], topic_per_type: {enabled: true, prefix: 'observer/'}}")


def test_the_old_option_names_are_errors_that_name_the_new_ones():
    with pytest.raises(ConfigError) as err:
        _load("{brokers: ['k:9092'], flush_timeout: 5s, queue_size: 100, retry: {initial_interval: 1s}}")
    paths = {i.path: i.message for i in err.value.issues}
    assert set(paths) == {"exporters.kafka.flush_timeout", "exporters.kafka.queue_size", "exporters.kafka.retry"}
    assert "shutdown_timeout" in paths["exporters.kafka.flush_timeout"]
    assert "sending_queue.queue_size" in paths["exporters.kafka.queue_size"]
    assert "retry_on_failure" in paths["exporters.kafka.retry"]


@pytest.mark.skipif(not clients.available("kafka-python"), reason="kafka-python not installed")
def test_kafka_python_codecs_that_are_missing_are_config_errors():
    from kafka import codec

    if codec.has_zstd():
        pytest.skip("zstandard is installed")
    with pytest.raises(ConfigError, match=r"exporters\.kafka\.compression: kafka-python needs the zstandard package"):
        _load("{brokers: ['k:9092'], client: kafka-python, compression: zstd}")


@pytest.mark.skipif(not clients.available("kafka-python"), reason="kafka-python not installed")
async def test_unknown_kafka_python_options_fail_the_start():
    from webrtc_observer.testing import settings_for_tests

    config = _load("{brokers: ['k:9092'], client: kafka-python, client_options: {no_such_option: 1}}")
    (options,) = config.components["exporters"].values()
    exporter = kafka.KafkaExporter(settings_for_tests("kafka"), options)
    with pytest.raises(ValueError, match="no_such_option"):
        await exporter.start()
    await exporter.shutdown()


async def test_avro_drops_what_it_cannot_encode_and_counts_it(kafka_broker):
    from webrtc_observer.testing import settings_for_tests

    config = _load(f"{{brokers: ['{kafka_broker.bootstrap}'], encoding: avro, retry_on_failure: {{initial_interval: 100ms}}}}")
    (options,) = config.components["exporters"].values()
    settings = settings_for_tests("kafka")
    exporter = kafka.KafkaExporter(settings, options)
    await exporter.start()
    try:
        good = two_reports("svc", "call-1", "c-1", 1, _samples.T0)
        bad = Report(type="CALL_EVENT", payload={"serviceId": "svc"})  # no timestamp, no name: required
        unknown = Report(type="NO_SUCH_REPORT", payload={})
        await exporter.consume(Batch(reports=[*good, bad, unknown]))
        await delivered(exporter)
        failed = settings.telemetry.get("exporter_send_failed_records")
        sent = settings.telemetry.get("exporter_sent_records")
        assert failed is not None and failed.value("kafka") == 2
        assert sent is not None and sent.value("kafka") == 2
    finally:
        await exporter.shutdown()


# --------------------------------------------------------------------------------------------------
# Avro: the exporter's encoder writes the bytes fastavro writes
# --------------------------------------------------------------------------------------------------


def _every_field_set(report_type: str) -> dict[str, Any]:
    values = {"string": "ü-ß ☃ text", "int": -(2**31), "long": -(2**40) - 7, "double": -1.5e-3, "float": 0.5, "boolean": True}
    out = {}
    for f in schemas.schema(report_type)["fields"]:
        tp = f["type"]
        primitive = next(t for t in tp if t != "null") if isinstance(tp, list) else tp
        out[f["name"]] = values[primitive]
    return out


async def test_the_avro_encoder_writes_what_fastavro_writes(http):
    from webrtc_observer.exporters._kafka_avro import avro_encoder, fastavro_encoder

    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
processors: {correlation: {}, reports: {}}
exporters: {recording: {}}
service: {pipelines: {p: {receivers: [observertc], processors: [correlation, reports], exporters: [recording]}}}
"""
    async with testing.running_collector(yaml_text) as c:
        body = _samples.samples_v2(_samples.client_sample_v2("c-alice"), _samples.client_sample_v2("c-bob"))
        assert await post(c, http, body) == 202
        reports = c.exporter().reports
    payloads = [(r.type, r.envelope()["payload"]) for r in reports]  # the encoders take builtins
    for report_type in schemas.REPORT_TYPES:
        required_only = {name: _every_field_set(report_type)[name] for name in schemas.required_of(report_type)}
        payloads += [(report_type, _every_field_set(report_type)), (report_type, required_only)]
    assert len({t for t, _ in payloads}) == 18
    for report_type, payload in payloads:
        ours = avro_encoder(schemas.schema(report_type), lambda t=report_type: pytest.fail(f"{t} has no fast plan"))
        reference = fastavro_encoder(schemas.parsed_schema(report_type))
        assert ours(payload) == reference(payload), report_type

    ours = avro_encoder(schemas.schema("CALL_EVENT"), lambda: None)
    with pytest.raises(ValueError, match="timestamp"):
        ours({"serviceId": "svc", "name": "X"})
    with pytest.raises(TypeError, match="callId"):
        ours({"serviceId": "svc", "name": "X", "timestamp": 1, "callId": 5})
    with pytest.raises(ValueError, match="out of range"):
        ours({"serviceId": "svc", "name": "X", "timestamp": 2**63})

    nested = {"type": "record", "name": "N", "fields": [{"name": "inner", "type": {"type": "record", "name": "I", "fields": []}}]}
    from fastavro import parse_schema

    fallback = avro_encoder(nested, lambda: parse_schema(nested))
    assert fallback({"inner": {}}) == b""


@pytest.mark.parametrize("client", CLIENTS)
async def test_records_are_given_up_after_max_elapsed_time(kafka_broker, http, client):
    options = {
        "brokers": [kafka_broker.bootstrap],
        "client": client,
        "timeout": "300ms",
        "retry_on_failure": {"initial_interval": "100ms", "max_interval": "200ms", "max_elapsed_time": "1s"},
    }
    async with collector(options, ["two_reports"]) as c:
        exporter = c.exporter("kafka")
        kafka_broker.stop()
        started = time.monotonic()
        for i in range(3):
            assert await post(c, http, sample(i)) == 202
        await delivered(exporter, timeout=10)  # given up: nothing pending any more
        assert time.monotonic() - started >= 1.0
        assert metric(c, "exporter_send_failed_records", "kafka") == 6
        assert metric(c, "exporter_sent_records", "kafka") == 0
        assert exporter.failing_since() is not None


@pytest.mark.parametrize("client", CLIENTS)
async def test_samples_without_a_reports_processor_are_sent_as_json_envelopes(kafka_broker, http, client):
    options = {"brokers": [kafka_broker.bootstrap], "client": client}
    async with collector(options, []) as c:
        assert await post(c, http, _samples.samples_v2(_samples.client_sample_v2("c-alice"), sfu=True)) == 202
        await delivered(c.exporter("kafka"))
        messages = await read(kafka_broker, "reports", 2)
    by_type = {m.headers["report-type"]: m for m in messages}
    assert set(by_type) == {b"ClientSample", b"SfuSample"}
    client_sample = by_type[b"ClientSample"]
    assert client_sample.key == b"call-1" and "schema-version" not in client_sample.headers
    envelope = json.loads(client_sample.value)
    assert envelope["type"] == "ClientSample" and envelope["payload"]["client_id"] == "c-alice"
    assert by_type[b"SfuSample"].key == b"sfu-1"


async def test_avro_without_reports_drops_the_samples_and_says_so(kafka_broker, http):
    captured = _Captured()
    logger = logging.getLogger("webrtc_observer")
    logger.addHandler(captured)
    try:
        async with collector({"brokers": [kafka_broker.bootstrap], "encoding": "avro"}, []) as c:
            assert await post(c, http, _samples.samples_v2(_samples.client_sample_v2("c-alice"), sfu=False)) == 202
            assert await post(c, http, _samples.samples_v2(_samples.client_sample_v2("c-bob"), sfu=False)) == 202
            assert metric(c, "exporter_send_failed_records", "kafka") == 2
            assert c.exporter("kafka").queued == 0
    finally:
        logger.removeHandler(captured)
    warnings = [r for r in captured.records if "avro encoding sends reports only" in r.getMessage()]
    assert len(warnings) == 1  # once, not per sample


async def test_kafka_python_sends_with_the_default_lz4(kafka_broker, http):
    options = {"brokers": [kafka_broker.bootstrap], "client": "kafka-python"}
    async with collector(options, ["two_reports"]) as c:
        assert await post(c, http, sample(8)) == 202
        await delivered(c.exporter("kafka"))
        messages = await read(kafka_broker, "reports", 2)
    assert ids_of(messages) == expected_ids([8])


@pytest.mark.parametrize("compression", ["none", "snappy", "lz4", "zstd"])
async def test_every_codec_of_the_confluent_client(kafka_broker, http, compression):
    if not clients.available("confluent"):
        pytest.skip("confluent-kafka not installed")
    options = {"brokers": [kafka_broker.bootstrap], "client": "confluent", "compression": compression}
    async with collector(options, ["two_reports"]) as c:
        assert await post(c, http, sample(7)) == 202
        await delivered(c.exporter("kafka"))
        messages = await read(kafka_broker, "reports", 2)
    assert ids_of(messages) == expected_ids([7])


# --------------------------------------------------------------------------------------------------
# Atomic fan-out: a message refused by one exporter leaves no copy in another
# --------------------------------------------------------------------------------------------------


def _fan_out_yaml(broker: Broker, out: str, two_pipelines: bool) -> str:
    kafka_options = {
        "brokers": [broker.bootstrap],
        "timeout": "1s",
        "sending_queue": {"queue_size": 40},
        "retry_on_failure": FAST_RETRY,
    }
    # The file exporter comes first: it reserves room before kafka refuses, so the abort must undo it.
    if two_pipelines:
        pipelines = """
    to_file: {receivers: [observertc], processors: [two_reports], exporters: [file]}
    to_kafka: {receivers: [observertc], processors: [two_reports], exporters: [kafka]}"""
    else:
        pipelines = """
    both: {receivers: [observertc], processors: [two_reports], exporters: [file, kafka]}"""
    return f"""
receivers:
  observertc: {{endpoint: "127.0.0.1:0"}}
processors:
  two_reports: {{}}
exporters:
  kafka: {json.dumps(kafka_options)}
  file: {{path: {json.dumps(out)}, rotation: {{max_megabytes: 0}}}}
service:
  pipelines:{pipelines}
"""


def _file_ids(path: Any) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        payload = json.loads(line)["payload"]
        out[payload.get("value") or payload.get("payload")] += 1
    return out


@pytest.mark.parametrize("two_pipelines", [False, True], ids=["one-pipeline", "two-pipelines"])
async def test_a_frozen_broker_under_load_leaves_no_duplicate_in_the_file_exporter(kafka_broker, http, tmp_path, two_pipelines):
    out = tmp_path / "reports.jsonl"
    yaml_text = _fan_out_yaml(kafka_broker, str(out), two_pipelines)
    async with testing.running_collector(yaml_text, extra=(TWO_REPORTS,)) as c:
        kafka_exporter, file_exporter = c.exporter("kafka"), c.exporter("file")
        accepted: list[int] = []
        refusals = 0
        most_queued = 0

        async def post_until_accepted(i: int) -> None:
            """A client that retries a refused sample until it is taken (without waiting Retry-After out)."""
            nonlocal refusals, most_queued
            while True:
                async with http.post(c.url("/rest/samples/svc/mu"), json=sample(i)) as resp:
                    await resp.read()
                    most_queued = max(most_queued, kafka_exporter.queued)
                    if resp.status == 202:
                        accepted.append(i)
                        return
                    assert resp.status == 503, resp.status
                    assert int(resp.headers["Retry-After"]) >= 1
                    refusals += 1
                await asyncio.sleep(0.02)

        for i in range(10):
            await post_until_accepted(i)
        await delivered(kafka_exporter)
        kafka_broker.freeze()
        i = 10
        poster: asyncio.Task[None] | None = None
        deadline = time.monotonic() + 20
        while refusals < 20:  # the kafka queue (40 records) is full and clients keep retrying
            assert time.monotonic() < deadline, "the full kafka queue never refused a sample"
            poster = asyncio.create_task(post_until_accepted(i))
            done, _ = await asyncio.wait({poster}, timeout=0.2)
            if done:
                poster.result()
                poster = None
                i += 1
        kafka_broker.thaw()
        if poster is not None:
            await poster
            i += 1
        for j in range(i, i + 10):
            await post_until_accepted(j)
        await delivered(kafka_exporter, timeout=20)
        await delivered(file_exporter)
        assert most_queued <= 40, "memory is bounded by the sending queue"
        messages = await read(kafka_broker, "reports")

    want = expected_ids(accepted)
    assert _file_ids(out) == want, "a refused (503) sample left a copy in the file exporter"
    got = ids_of(messages)
    assert set(got) == set(want)
    assert len(accepted) >= 40
