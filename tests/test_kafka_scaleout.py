"""Scaled out on Kafka, end to end: real collector processes, a real broker (tansu), the load generator.

One ingest process (``observertc`` receiver → ``kafka`` exporter, ``encoding: samples``) writes the
load generator's samples to a partitioned topic. Analysis processes (``kafka`` receiver →
correlation, reports → ``kafka`` exporter, JSON) share one consumer group; mid-run one is SIGKILLed,
another stopped with SIGTERM and a new one started. Then a single member replays the same input
topic in a new group (and a new changelog): the reference. The group's reports must be the
reference's, give or take exact duplicates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._kafka_broker import Broker, kafka_broker_fixture  # noqa: F401  (the kafka_broker fixture)
from tests._process import REPO, CollectorProcess, free_port
from webrtc_observer.component import Factory, RetryLater
from webrtc_observer.loadgen import Scenario, run
from webrtc_observer.testing import running_collector

pytestmark = pytest.mark.filterwarnings(
    "ignore:read_text is deprecated:DeprecationWarning", "ignore:open_text is deprecated:DeprecationWarning"
)

PARTITIONS = 4
INPUT = "samples"


def _ingest_yaml(broker: Broker) -> str:
    config = {
        "receivers": {"observertc": {"endpoint": "127.0.0.1:PORT"}},
        "exporters": {"kafka": {"brokers": [broker.bootstrap], "topic": INPUT, "encoding": "samples", "tick_interval": "200ms"}},
        "service": {"pipelines": {"ingest": {"receivers": ["observertc"], "exporters": ["kafka"]}}},
    }
    return yaml.safe_dump(config)


def _analysis_yaml(broker: Broker, group: str, changelog: str, reports: str) -> str:
    config = {
        "receivers": {
            "kafka": {
                "brokers": [broker.bootstrap],
                "topic": INPUT,
                "group_id": group,
                "session_timeout": "6s",
                "state": {"topic": changelog, "checkpoint_interval": "1s"},
            }
        },
        "processors": {
            "correlation": {
                "client_idle_timeout": "3s",
                "media_idle_timeout": "3s",
                "sfu_idle_timeout": "3s",
                "call_empty_timeout": "2s",
            },
            "quality": {},
            "reports": {},
        },
        "exporters": {"kafka": {"brokers": [broker.bootstrap], "topic": reports, "timeout": "5s"}},
        "service": {
            "shutdown_timeout": "20s",
            "pipelines": {
                "analysis": {"receivers": ["kafka"], "processors": ["correlation", "quality", "reports"], "exporters": ["kafka"]}
            },
        },
    }
    return yaml.safe_dump(config)


class Process(CollectorProcess):
    def __init__(self, tmp_path: Path, name: str, config: str) -> None:
        port = free_port()
        path = tmp_path / f"{name}.yaml"
        path.write_text(config.replace("PORT", str(port)))
        self.name = name
        super().__init__(tmp_path / f"{name}.log", path, port)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_log(self, pattern: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.text()}"
            assert time.monotonic() < deadline, f"{self.name}: no {pattern!r} in the log:\n{self.text()}"
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._log_file.closed:
            self.close_log()


def _create_topics(broker: Broker, *topics: tuple[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 3})
    for future in admin.create_topics([NewTopic(name, n, 1) for name, n in topics]).values():
        future.result(10)


def _end_offsets(broker: Broker, topic: str) -> dict[int, int]:
    ends = dict.fromkeys(range(PARTITIONS), 0)
    for m in broker.read(topic, None, 30):
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    return ends


def _committed(broker: Broker, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "log_level": 3})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


async def _wait_consumed(broker: Broker, group: str, members: list[Process], timeout: float = 120) -> None:
    """Until the group committed the end of every input partition (reports are flushed before a commit)."""
    ends = await asyncio.to_thread(_end_offsets, broker, INPUT)
    deadline = time.monotonic() + timeout
    while True:
        committed = await asyncio.to_thread(_committed, broker, group, INPUT)
        if all(committed.get(p, -1) >= end for p, end in ends.items()):
            return
        for m in members:
            assert m.proc.poll() is None, f"{m.name} exited:\n{m.text()}"
        assert time.monotonic() < deadline, f"group {group} committed {committed}, the input ends at {ends}"
        await asyncio.sleep(0.3)


def _reports(broker: Broker, topic: str) -> list[tuple[str, bytes, dict[str, Any]]]:
    out = []
    for m in broker.read(topic, None, 30):
        report = json.loads(m.value)
        assert m.headers["report-id"].decode() == report["id"]
        out.append((report["id"], m.value, report))
    return out


def _lifecycle(reports: dict[str, dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    calls: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for r in reports.values():
        if r["type"] == "CALL_EVENT":
            p = r["payload"]
            key = (p["timestamp"], p["name"], p.get("clientId"), p.get("peerConnectionId"), p.get("mediaTrackId"))
            calls[p["callId"]].append(key)
    return {call: sorted(events, key=repr) for call, events in calls.items()}


def _ended_while_live(reports: dict[str, dict[str, Any]]) -> list[tuple[str, str | None, int, int]]:
    """Clients with a CLIENT_LEFT, and calls with a CALL_ENDED, earlier than a report derived from a
    later sample of theirs: (call, client or None, end, sample timestamp).

    A call whose clients send different sample generations can be split over partitions (legacy
    samples route by client): each part ends on its own, so a call is checked against its last end,
    once every part of it ended (as many CALL_ENDED as CALL_STARTED); its clients are checked anyway."""
    ends: dict[tuple[str, str | None], int] = {}
    samples: dict[tuple[str, str | None], int] = {}
    parts: Counter[str] = Counter()  # CALL_STARTED minus CALL_ENDED
    for r in reports.values():
        p = r["payload"]
        call, client = p.get("callId"), p.get("clientId")
        if call is None or r["type"].startswith("SFU"):
            continue
        if r["type"] == "CALL_EVENT":
            parts[call] += {"CALL_STARTED": 1, "CALL_ENDED": -1}.get(p["name"], 0)
            if p["name"] in ("CALL_ENDED", "CLIENT_LEFT"):
                key = (call, client if p["name"] == "CLIENT_LEFT" else None)
                ends[key] = max(ends.get(key, 0), p["timestamp"])
        elif client is not None:
            at = p.get("sampleTimestamp", p["timestamp"])  # a meta item has a time of its own
            for key in ((call, client), (call, None)):
                samples[key] = max(samples.get(key, 0), at)
    return [
        (call, client, at, samples[(call, client)])
        for (call, client), at in ends.items()
        if at < samples.get((call, client), 0) and (client is not None or parts[call] == 0)
    ]


def _owned(log: str) -> set[int]:
    """The partitions a member owns by its log."""
    owned: set[int] = set()
    for verb, partitions in re.findall(r"partitions (assigned|revoked|lost)\S*\s.*?partitions=([\d,]+)", log):
        numbers = {int(p) for p in partitions.split(",")}
        owned = owned | numbers if verb == "assigned" else owned - numbers
    return owned


def _restored(log: str) -> set[int]:
    return {int(p) for p in re.findall(r"partition restored.*?partition=(\d+)", log)}


def _restored_records(member: Process) -> int:
    return sum(int(n) for n in re.findall(r"partition restored.*?records=(\d+)", member.text()))


async def test_a_group_that_loses_members_reports_what_a_single_member_replay_reports(kafka_broker, http, tmp_path):
    broker: Broker = kafka_broker
    await asyncio.to_thread(_create_topics, broker, (INPUT, PARTITIONS), ("reports", 3), ("reports-ref", 3))
    ingest = Process(tmp_path, "ingest", _ingest_yaml(broker))
    group_yaml = _analysis_yaml(broker, "analysis", "analysis-changelog", "reports")
    members = {name: Process(tmp_path, name, group_yaml) for name in ("a", "b", "c")}
    late: Process | None = None
    everyone = [ingest, *members.values()]
    try:
        await ingest.wait_ready(http, timeout=90)
        for m in members.values():
            await m.wait_log("partition restored", timeout=90)
        scenario = Scenario(
            calls=6, clients_per_call=3, topology="mixed", schema="mixed", interval=0.5, duration=None,
            call_duration=9, seed=11, service_id="scaleout",
        )  # fmt: skip
        stop_traffic = asyncio.Event()
        traffic = asyncio.create_task(run(scenario, ingest.url(""), stop=stop_traffic, concurrency=16))

        async def more_reports(n: int) -> None:
            """Until the group emitted ``n`` more reports than now: mid-run, whatever the machine's pace."""
            target = len(await asyncio.to_thread(_reports, broker, "reports")) + n
            deadline = time.monotonic() + 120
            while len(await asyncio.to_thread(_reports, broker, "reports")) < target:
                assert not traffic.done(), traffic
                assert time.monotonic() < deadline, f"fewer than {target} reports"
                await asyncio.sleep(0.3)

        await more_reports(200)
        orphans = _owned(members["a"].text())
        assert orphans, members["a"].text()
        seen = {n: len(members[n].text()) for n in ("b", "c")}
        members["a"].kill()  # SIGKILL: its partitions move when its session times out
        deadline = time.monotonic() + 90
        while not orphans <= {p for n in ("b", "c") for p in _restored(members[n].text()[seen[n] :])}:
            assert time.monotonic() < deadline, f"the partitions {orphans} of the killed member did not move"
            await asyncio.sleep(0.1)
        await more_reports(200)
        assert await members["b"].stop() == 0, members["b"].text()  # SIGTERM: revoke, checkpoint, leave
        late = Process(tmp_path, "d", group_yaml)
        everyone.append(late)
        await late.wait_log("partition restored", timeout=90)
        await more_reports(200)
        stop_traffic.set()  # the clients still in a call say goodbye
        summary = await traffic
        assert summary.ok, summary.render()
        # Every call ends (stream time is carried on by the ingest's ticks).
        simulated = sum(1 for c in scenario.calls if any(cl.joined for cl in c.clients))
        deadline = time.monotonic() + 120
        while True:
            got = {i: r for i, _, r in await asyncio.to_thread(_reports, broker, "reports")}
            names = [(r["payload"].get("name"), r["payload"].get("callId")) for r in got.values() if r["type"] == "CALL_EVENT"]
            started = {call for name, call in names if name == "CALL_STARTED"}
            ended = {call for name, call in names if name == "CALL_ENDED"}
            if len(started) >= simulated and started <= ended:
                break
            assert time.monotonic() < deadline, f"{len(ended)} of {len(started)} calls ended ({simulated} simulated)"
            await asyncio.sleep(0.5)
        assert await ingest.stop() == 0, ingest.text()  # no more input, no more ticks
        survivors = [members["c"], late]
        await _wait_consumed(broker, "analysis", survivors)
        for m in survivors:
            assert await m.stop() == 0, m.text()

        reference = Process(tmp_path, "reference", _analysis_yaml(broker, "reference", "reference-changelog", "reports-ref"))
        everyone.append(reference)
        await _wait_consumed(broker, "reference", [reference], timeout=180)
        assert await reference.stop() == 0, reference.text()
    finally:
        for p in everyone:
            p.kill()

    group = await asyncio.to_thread(_reports, broker, "reports")
    ref = await asyncio.to_thread(_reports, broker, "reports-ref")
    ref_by_id = {i: value for i, value, _ in ref}
    assert len(ref_by_id) == len(ref), "the reference itself has duplicates"
    group_ids = Counter(i for i, _, _ in group)
    assert set(group_ids) == set(ref_by_id), (
        f"missing {len(set(ref_by_id) - set(group_ids))}, extra {len(set(group_ids) - set(ref_by_id))}"
    )
    for i, value, _ in group:
        assert value == ref_by_id[i], f"a duplicate of {i} differs from the reference"
    group_reports = {i: r for i, _, r in group}
    ref_reports = {i: r for i, _, r in ref}
    assert _lifecycle(group_reports) == _lifecycle(ref_reports)
    assert _ended_while_live(group_reports) == []
    assert _ended_while_live(ref_reports) == []
    starts = Counter(r["payload"]["callId"] for r in ref_reports.values() if r["payload"].get("name") == "CALL_STARTED")
    assert len(starts) >= simulated
    # The failovers really moved state: members restored partitions from the changelog.
    assert _restored_records(members["b"]) + _restored_records(members["c"]) + _restored_records(late) > 0
    duplicates = sum(group_ids.values()) - len(group_ids)
    print(f"{len(ref_by_id)} reports, {duplicates} duplicates in the group's output")


def test_the_example_configs_validate():
    import subprocess
    import sys

    for name in ("scale-out-ingest.yaml", "scale-out-analysis.yaml"):
        done = subprocess.run(
            [sys.executable, "-m", "webrtc_observer", "validate", "--config", str(REPO / "examples" / name)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "KAFKA_BROKERS": "kafka:9092"},
        )
        assert done.returncode == 0, done.stdout + done.stderr


# -- the receiver on its own, in-process ---------------------------------------------------------


@dataclasses.dataclass
class _FlakyConfig:
    refusals: int = 2


class _Flaky:
    """Answers RetryLater to the first ``refusals`` batches with samples, then passes everything on."""

    def __init__(self, config: _FlakyConfig, next_consumer: Any) -> None:
        self.left = config.refusals
        self.next = next_consumer

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def consume(self, batch: Any) -> None:
        if batch.samples and self.left:
            self.left -= 1
            raise RetryLater("busy", retry_after=0.05)
        await self.next.consume(batch)


FLAKY = Factory(kind="processor", type="flaky", config_type=_FlakyConfig, create=lambda s, c, n: _Flaky(c, n))


def _produce(broker: Broker, topic: str, records: list[tuple[int, bytes | None, list[tuple[str, bytes]], int]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 3})
    for partition, value, headers, ts in records:
        producer.produce(topic, value, partition=partition, headers=headers, timestamp=ts)
    assert producer.flush(10) == 0


async def test_json_records_are_decoded_retried_in_order_and_bad_ones_counted(kafka_broker):
    broker: Broker = kafka_broker
    await asyncio.to_thread(_create_topics, broker, ("json-in", 2))
    wrapper = {"clientSamples": [{"clientId": "alice", "callId": "c", "timestamp": 1_700_000_000_000}]}
    ok = [("service-id", b"svc"), ("media-unit-id", b"web")]
    records = [
        (0, json.dumps(wrapper).encode(), ok, 1_700_000_000_500),
        (0, json.dumps({**wrapper, "clientSamples": [{**wrapper["clientSamples"][0], "clientId": "bob"}]}).encode(), ok, 1_700_000_000_600),
        (1, json.dumps(wrapper).encode(), [], 1_700_000_000_700),  # no service-id header
        (1, b"{not json", ok, 1_700_000_000_800),
    ]  # fmt: skip
    await asyncio.to_thread(_produce, broker, "json-in", records)
    config = f"""
receivers:
  kafka:
    brokers: ["{broker.bootstrap}"]
    topic: json-in
    group_id: json-test
    encoding: json
    session_timeout: 6s
    state: {{checkpoint_interval: 200ms}}
processors:
  flaky: {{refusals: 2}}
exporters:
  recording: {{}}
service:
  pipelines:
    p: {{receivers: [kafka], processors: [flaky], exporters: [recording]}}
"""
    async with running_collector(config, extra=(FLAKY,)) as c:
        samples = await c.exporter().wait_for_samples(2, timeout=60)
        assert [s.client_id for s in samples] == ["alice", "bob"], "retried out of order, or twice"
        first = samples[0]
        assert (first.origin.service_id, first.origin.media_unit_id, first.origin.received_at) == (
            "svc",
            "web",
            1_700_000_000_500,
        )
        batches = [b for b in c.exporter().batches if b.samples]
        assert [(b.partition, b.time) for b in batches] == [(0, 1_700_000_000_500), (0, 1_700_000_000_600)]
        refused = c.telemetry.get("samples_refused")
        deadline = time.monotonic() + 30
        while {k[0]: v for k, v in refused.samples().items()} != {"no_service_id": 1, "bad_json": 1}:
            assert time.monotonic() < deadline, refused.samples()
            await asyncio.sleep(0.05)
        # Checkpoints commit what was handled, refused records included.
        deadline = time.monotonic() + 30
        while (await asyncio.to_thread(_committed, broker, "json-test", "json-in")).get(1) != 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    committed = await asyncio.to_thread(_committed, broker, "json-test", "json-in")
    assert (committed[0], committed[1]) == (2, 2)
