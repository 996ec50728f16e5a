"""``service.state``: the local checkpoint file (round trip, corruption, locking) and the checkpoint
cycle around real processors (restore, changes folded in, tombstones, a failed flush or write)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import _samples
from tests._process import CollectorProcess, free_port
from webrtc_observer.component import Worker
from webrtc_observer.components import config_types
from webrtc_observer.config import ConfigError, load_text
from webrtc_observer.logs import get_logger
from webrtc_observer.model import Batch, ClientSample, Origin, Report
from webrtc_observer.processors.correlation import CorrelationConfig, CorrelationProcessor
from webrtc_observer.state import Changes, decode, encode
from webrtc_observer.state_store import (
    CorruptState,
    LocalCheckpoint,
    LocalStore,
    StateLocked,
    _Checkpoint,
    decode_checkpoint,
    encode_checkpoint,
)
from webrtc_observer.telemetry import Telemetry
from webrtc_observer.testing import settings_for_tests


def _checkpoint(state: dict[str, dict[bytes, bytes]]) -> _Checkpoint:
    return _Checkpoint(worker=1, workers=2, written_at=time.time(), state=state)


# -- the file ------------------------------------------------------------------------------------


def test_a_checkpoint_round_trips_through_the_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "state", Worker(1, 2))
    store.lock()
    try:
        assert store.read() is None  # no checkpoint yet
        state = {
            "p/correlation": {encode(("call", "svc", f"c{i}")): encode([1, "x" * i]) for i in range(100)},
            "p/reports": {b"\x00\xff": b""},
            "q/correlation": {},
        }
        size = store.write(_checkpoint(state))
        assert store.path == tmp_path / "state" / "worker-1.state"
        assert store.path.stat().st_size == size
        assert store.read().state == state  # type: ignore[union-attr]
        # Rewritten whole: keys gone from the map are gone from the file; no temporary file is left.
        store.write(_checkpoint({"p/correlation": {b"k": b"v"}}))
        assert store.read().state == {"p/correlation": {b"k": b"v"}}  # type: ignore[union-attr]
        assert sorted(p.name for p in store.directory.iterdir()) == ["worker-1.lock", "worker-1.state"]
    finally:
        store.unlock()


def _corruptions(good: bytes) -> dict[str, bytes]:
    flipped = bytearray(good)
    if flipped:
        flipped[-3] ^= 0x40
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "one byte short": good[:-1],
        "flipped bit": bytes(flipped),
        "bad magic": b"X" + good[1:],
        "other format": good[:8] + (99).to_bytes(4, "little") + good[12:],
        "longer": good + b"\x00",
        "not ours": b'{"calls": []}\n',
    }


@pytest.mark.parametrize("kind", list(_corruptions(b"")))
def test_a_corrupt_file_is_recognised(kind: str) -> None:
    good = encode_checkpoint(_checkpoint({"p/correlation": {b"a": b"b" * 50}}))
    assert decode_checkpoint(good).state == {"p/correlation": {b"a": b"b" * 50}}
    with pytest.raises(CorruptState):
        decode_checkpoint(_corruptions(good)[kind])


def test_a_well_framed_file_with_the_wrong_content_is_corrupt_too() -> None:
    import struct
    import zlib

    import msgspec

    body = msgspec.msgpack.encode({"worker": "zero", "state": []})
    data = b"WOSTATE\n" + struct.pack("<IIQ", 1, zlib.crc32(body), len(body)) + body
    with pytest.raises(CorruptState, match="undecodable"):
        decode_checkpoint(data)


def test_a_second_process_cannot_take_the_same_workers_state(tmp_path: Path) -> None:
    first = LocalStore(tmp_path, Worker(0, 2))
    first.lock()
    try:
        with pytest.raises(StateLocked, match="in use by another process"):
            LocalStore(tmp_path, Worker(0, 2)).lock()
        other = LocalStore(tmp_path, Worker(1, 2))  # another worker's file is another lock
        other.lock()
        other.unlock()
    finally:
        first.unlock()
    again = LocalStore(tmp_path, Worker(0, 2))  # released with the process (or here, the descriptor)
    again.lock()
    again.unlock()


# -- the checkpoint cycle around real processors ---------------------------------------------------


def _correlation() -> tuple[CorrelationProcessor, list[Report]]:
    emitted: list[Report] = []

    class Down:
        async def consume(self, batch: Batch) -> None:
            emitted.extend(batch.reports)

    config = CorrelationConfig()
    return CorrelationProcessor(settings_for_tests("correlation", "processor"), config, Down()), emitted


def _sample(client: str, call: str, seq: int) -> ClientSample:
    now = int(time.time() * 1000)
    origin = Origin("svc", "mu", now, "2")
    return ClientSample(origin=origin, client_id=client, timestamp=_samples.T0 + seq * 1000, call_id=call, room_id=f"room-{call}")


def _names(reports: list[Report]) -> list[str]:
    return [r.payload["name"] for r in reports if r.type == "CALL_EVENT"]


class _Flush:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def __call__(self, timeout: float) -> None:
        self.calls += 1
        if self.fail:
            raise TimeoutError


def _cycle(
    directory: Path, processors: list[tuple[str, Any]], flush: _Flush | None = None, telemetry: Telemetry | None = None
) -> LocalCheckpoint:
    return LocalCheckpoint(
        LocalStore(directory, Worker(0, 1)),
        processors,
        interval=3600,  # the tests call checkpoint() themselves
        flush=flush or _Flush(),
        flush_timeout=1.0,
        telemetry=telemetry or Telemetry(),
        log=get_logger(),
    )


async def test_a_restarted_process_resumes_its_calls_instead_of_announcing_them_again(tmp_path: Path) -> None:
    first, emitted = _correlation()
    cycle = _cycle(tmp_path, [("p/correlation", first)])
    await cycle.start()
    for call in ("a", "b"):
        for client in ("x", "y"):
            await first.consume(Batch(samples=[_sample(f"{call}-{client}", call, 0)]))
    assert _names(emitted).count("CALL_STARTED") == 2 and _names(emitted).count("CLIENT_JOINED") == 4
    assert await cycle.checkpoint()
    assert cycle.entries >= 4  # two calls, their rooms, the clock
    # The process dies here: no shutdown, no last checkpoint (the lock goes with the process).
    cycle.store.unlock()

    second, emitted_after = _correlation()
    telemetry = Telemetry()
    resumed = _cycle(tmp_path, [("p/correlation", second)], telemetry=telemetry)
    await resumed.start()
    try:
        assert second.state_sizes() == first.state_sizes()
        for call in ("a", "b"):
            for client in ("x", "y"):
                await second.consume(Batch(samples=[_sample(f"{call}-{client}", call, 1)]))
        await second.consume(Batch(samples=[_sample("a-z", "a", 1)]))  # a newcomer joins normally
        assert _names(emitted_after) == ["CLIENT_JOINED"], _names(emitted_after)
        assert telemetry.get("local_state_restore_failures").total() == 0  # type: ignore[union-attr]
        assert telemetry.get("local_state_checkpoint_entries").samples() == {(): float(resumed.entries)}  # type: ignore[union-attr]
    finally:
        await resumed.shutdown()
    assert resumed.checkpoints == 1  # the last checkpoint at shutdown


async def test_ended_calls_leave_the_checkpoint_and_idle_clients_still_idle_out_after_a_restart(tmp_path: Path) -> None:
    first, _ = _correlation()
    cycle = _cycle(tmp_path, [("p/correlation", first)])
    await cycle.start()
    await first.consume(Batch(samples=[_sample("x", "gone", 0), _sample("y", "stays", 0)]))
    await cycle.checkpoint()
    keys = {tuple(decode(k)) for k in cycle._map["p/correlation"]}
    assert ("call", "svc", "gone") in keys
    # The restarted process sees a client last heard of 61 s ago: the wall-clock sweep ends it.
    await cycle.shutdown()
    second, _ = _correlation()
    resumed = _cycle(tmp_path, [("p/correlation", second)])
    await resumed.start()
    try:
        ended = second.sweep(time.time() + 61)
        assert sorted(_names(ended)) == ["CLIENT_LEFT", "CLIENT_LEFT"], _names(ended)
        ended = second.sweep(time.time() + 122)
        assert _names(ended).count("CALL_ENDED") == 2
        await resumed.checkpoint()
        left = {decode(k)[0] for k in resumed._map["p/correlation"]}
        assert left <= {"clock", "room"}, left  # the calls are tombstoned away
    finally:
        await resumed.shutdown()
    third, _ = _correlation()
    final = _cycle(tmp_path, [("p/correlation", third)])
    await final.start()
    await final.shutdown()
    assert not any(third.state_sizes().values()), third.state_sizes()


async def test_a_corrupt_checkpoint_is_logged_counted_set_aside_and_the_process_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "worker-0.state").write_bytes(b"WOSTATE\n" + b"\x01" * 40)
    processor, emitted = _correlation()
    telemetry = Telemetry()
    cycle = _cycle(tmp_path, [("p/correlation", processor)], telemetry=telemetry)
    await cycle.start()
    try:
        assert telemetry.get("local_state_restore_failures").samples() == {("corrupt",): 1.0}  # type: ignore[union-attr]
        assert (tmp_path / "worker-0.state.corrupt").exists()
        await processor.consume(Batch(samples=[_sample("x", "c", 0)]))
        assert _names(emitted) == ["CALL_STARTED", "CLIENT_JOINED"]
        assert await cycle.checkpoint()  # and the next checkpoint is good again
    finally:
        await cycle.shutdown()
    assert LocalStore(tmp_path, Worker()).read() is not None


async def test_a_processor_that_rejects_its_state_starts_empty_and_the_others_resume(tmp_path: Path) -> None:
    class Picky:
        def __init__(self) -> None:
            self.assigned: list[dict[bytes, bytes]] = []
            self.pending: Changes = {}

        def assign(self, partition: Any, entries: Any) -> None:
            if entries:
                raise ValueError("state version 7 is not 1")
            self.assigned.append(dict(entries))

        def revoke(self, partition: Any) -> None:
            pass

        def changes(self, partition: Any) -> Changes:
            out, self.pending = self.pending, {}
            return out

    picky, good = Picky(), Picky()
    picky.pending = {b"k": b"v"}
    good.pending = {b"a": b"1", b"b": b"2"}
    cycle = _cycle(tmp_path, [("p/picky", picky), ("p/good", good)])
    await cycle.start()
    assert await cycle.checkpoint()
    good.pending = {b"b": None}
    await cycle.shutdown()

    again_picky, again_good = Picky(), Picky()
    again_good.assign = lambda partition, entries: again_good.assigned.append(dict(entries))  # type: ignore[method-assign]
    telemetry = Telemetry()
    cycle = _cycle(tmp_path, [("p/picky", again_picky), ("p/good", again_good)], telemetry=telemetry)
    await cycle.start()
    try:
        assert again_picky.assigned == [{}]  # rejected, then started empty
        assert again_good.assigned == [{b"a": b"1"}]  # the tombstone dropped b
        assert telemetry.get("local_state_restore_failures").samples() == {("rejected",): 1.0}  # type: ignore[union-attr]
        assert cycle._map == {"p/picky": {}, "p/good": {b"a": b"1"}}
    finally:
        await cycle.shutdown()


async def test_nothing_is_written_before_the_exporters_delivered_and_the_changes_wait_for_the_next_checkpoint(
    tmp_path: Path,
) -> None:
    processor, _ = _correlation()
    flush = _Flush()
    telemetry = Telemetry()
    cycle = _cycle(tmp_path, [("p/correlation", processor)], flush=flush, telemetry=telemetry)
    await cycle.start()
    try:
        await processor.consume(Batch(samples=[_sample("x", "c", 0)]))
        flush.fail = True
        assert not await cycle.checkpoint()
        assert not cycle.store.path.exists()
        assert telemetry.get("local_state_checkpoint_failures").samples() == {("flush",): 1.0}  # type: ignore[union-attr]
        flush.fail = False
        assert await cycle.checkpoint()  # processor.changes() is empty now: the map kept them
        saved = cycle.store.read()
        assert saved is not None
        assert ("call", "svc", "c") in {tuple(decode(k)) for k in saved.state["p/correlation"]}
        assert flush.calls == 2
    finally:
        await cycle.shutdown()


async def test_a_failed_write_is_counted_and_the_next_one_writes_everything(tmp_path: Path) -> None:
    processor, _ = _correlation()
    telemetry = Telemetry()
    cycle = _cycle(tmp_path / "state", [("p/correlation", processor)], telemetry=telemetry)
    await cycle.start()
    try:
        await processor.consume(Batch(samples=[_sample("x", "c", 0)]))
        (tmp_path / "state" / "worker-0.state.tmp").mkdir()  # the temporary file cannot be created
        assert not await cycle.checkpoint()
        assert telemetry.get("local_state_checkpoint_failures").samples() == {("write",): 1.0}  # type: ignore[union-attr]
        (tmp_path / "state" / "worker-0.state.tmp").rmdir()
        assert await cycle.checkpoint()
        assert ("call", "svc", "c") in {tuple(decode(k)) for k in cycle.store.read().state["p/correlation"]}  # type: ignore[union-attr]
    finally:
        await cycle.shutdown()


async def test_a_process_with_nothing_new_does_not_rewrite_its_file_and_its_checkpoint_stays_fresh(tmp_path: Path) -> None:
    class Quiet:
        def __init__(self) -> None:
            self.pending: Changes = {}

        def assign(self, partition: Any, entries: Any) -> None:
            pass

        def revoke(self, partition: Any) -> None:
            pass

        def changes(self, partition: Any) -> Changes:
            out, self.pending = self.pending, {}
            return out

    quiet = Quiet()
    quiet.pending = {b"k": b"v"}
    telemetry = Telemetry()
    flush = _Flush()
    cycle = _cycle(tmp_path, [("p/quiet", quiet)], flush=flush, telemetry=telemetry)
    await cycle.start()
    try:
        assert await cycle.checkpoint()
        written = cycle.store.path.stat()
        for _ in range(3):
            assert await cycle.checkpoint()
        assert cycle.checkpoints == 1 and flush.calls == 1
        assert cycle.store.path.stat().st_ino == written.st_ino  # not replaced
        (age,) = telemetry.get("local_state_checkpoint_age").samples().values()  # type: ignore[union-attr]
        assert 0 <= age < 3600
    finally:
        await cycle.shutdown()
    assert cycle.checkpoints == 1


# -- configuration ---------------------------------------------------------------------------------

_BASE = "receivers: {observertc: {}}\nexporters: {debug: {}}\n"
_PIPE = "pipelines: {p: {receivers: [observertc], exporters: [debug]}}"


def test_state_options_have_defaults_and_bad_values_name_their_yaml_path(tmp_path: Path) -> None:
    config = load_text(f"{_BASE}service: {{{_PIPE}}}", config_types())
    assert config.state.directory is None and config.state.checkpoint_interval == 5.0
    config = load_text(
        f"{_BASE}service: {{state: {{directory: {tmp_path}, checkpoint_interval: 200ms}}, {_PIPE}}}", config_types()
    )
    assert config.state.directory == str(tmp_path) and config.state.checkpoint_interval == pytest.approx(0.2)

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for options, path, words in [
        ("{checkpoint_interval: 0s}", "service.state.checkpoint_interval", "more than 0"),
        ("{checkpoint_interval: soon}", "service.state.checkpoint_interval", "duration"),
        ('{directory: ""}', "service.state.directory", "must not be empty"),
        (f"{{directory: {a_file}}}", "service.state.directory", "not a directory"),
        ("{dir: /tmp}", "service.state.dir", "unknown option"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_text(f"{_BASE}service: {{state: {options}, {_PIPE}}}", config_types())
        issues = [str(i) for i in err.value.issues]
        assert any(i.startswith(path) and words in i for i in issues), (options, issues)


# -- a collector process killed and started again ---------------------------------------------------


IDLE = 30
"""client_idle_timeout of the restart test: longer than a restart takes on a busy machine (7 s seen),
or a client that did not idle out would rightly leave and join again."""


def _config(tmp_path: Path, port: int, metrics_port: int, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:{port}"}}}}
processors:
  correlation: {{client_idle_timeout: {IDLE}s, call_empty_timeout: 1s, sweep_interval: 100ms}}
  reports: {{}}
exporters:
  file: {{path: "{tmp_path}/reports.jsonl"}}
  prometheus: {{endpoint: "127.0.0.1:{metrics_port}"}}
service:
  state: {{directory: "{tmp_path}/state", checkpoint_interval: 200ms}}
  pipelines: {{p: {{receivers: [observertc], processors: [correlation, reports], exporters: [file, prometheus]}}}}
"""
    )
    return path


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text()
    lines = text[: text.rfind("\n") + 1].splitlines()
    return [r["payload"] for r in map(json.loads, lines) if r["type"] == "CALL_EVENT"]


async def _metric(http: aiohttp.ClientSession, port: int, name: str) -> float:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def _until(condition: Any, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_collector_killed_and_started_again_resumes_its_calls_and_their_timers(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = _config(tmp_path, port, metrics_port, "collector")
    out = tmp_path / "reports.jsonl"
    url = f"http://127.0.0.1:{port}/rest/samples/svc/mu"

    async def send(http: aiohttp.ClientSession, client: str, tick: int, close: bool = False) -> None:
        sample = _samples.client_sample_v2(client, call_id="standup", ts=_samples.T0 + tick * 1000)
        async with http.post(url, json=_samples.samples_v2(sample, sfu=False, close=close)) as resp:
            assert resp.status == 202, await resp.text()

    first = CollectorProcess(tmp_path / "first.log", config, port)
    second: CollectorProcess | None = None
    try:
        async with aiohttp.ClientSession() as http:
            await first.wait_ready(http)
            for tick in range(2):
                await send(http, "alice", tick)
                await send(http, "bob", tick)
            metric = "observertc_local_state_checkpoint_duration_seconds_count"
            done = await _metric(http, metrics_port, metric)

            async def checkpointed() -> bool:
                return await _metric(http, metrics_port, metric) >= done + 2

            await _until(checkpointed, what="a checkpoint covering the call")
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=30)

            second = CollectorProcess(tmp_path / "second.log", config, port)
            await second.wait_ready(http)

            # A third process given the same directory refuses to start.
            third = CollectorProcess(tmp_path / "third.log", _config(tmp_path, free_port(), free_port(), "third"), port)
            assert third.proc.wait(timeout=30) == 1
            third.close_log()
            assert "in use by another process" in third.log.read_text(), third.log.read_text()

            # Alice goes on; Bob sent nothing since before the restart and idles out at his usual time.
            tick = 2

            async def bob_left() -> bool:
                nonlocal tick
                await send(http, "alice", tick)
                tick += 1
                await asyncio.sleep(0.3)
                return any(e["name"] == "CLIENT_LEFT" and e.get("clientId") == "bob" for e in _events(out))

            await _until(bob_left, timeout=IDLE + 30, what="bob's CLIENT_LEFT")
            await send(http, "alice", tick, close=True)

            async def ended() -> bool:
                return any(e["name"] == "CALL_ENDED" for e in _events(out))

            await _until(ended, what="CALL_ENDED")
    finally:
        first.close_log()
        if second is not None:
            second.proc.send_signal(signal.SIGTERM)
            assert second.proc.wait(timeout=60) == 0, second.log.read_text()
            second.close_log()

    events = _events(out)
    names = Counter((e["name"], e.get("clientId")) for e in events)
    assert names["CALL_STARTED", None] == 1, names
    assert names["CLIENT_JOINED", "alice"] == names["CLIENT_JOINED", "bob"] == 1, names
    assert names["CLIENT_LEFT", "alice"] == names["CLIENT_LEFT", "bob"] == 1, names
    assert names["CALL_ENDED", None] == 1, names
    (bob_left_event,) = [e for e in events if e["name"] == "CLIENT_LEFT" and e.get("clientId") == "bob"]
    assert bob_left_event["timestamp"] == _samples.T0 + 1000  # the time of his last sample, from before the kill
    assert events[-1]["name"] == "CALL_ENDED"
    assert "state restored" in second.log.read_text()


def test_every_state_option_is_in_the_service_reference() -> None:
    import dataclasses
    import re

    from webrtc_observer.config._document import StateConfig

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    match = re.search(r"^### `service`\n(.*?)(?=^### )", readme, re.S | re.M)
    assert match, "README has no '### `service`' section"
    for field in dataclasses.fields(StateConfig):
        assert f"| `state.{field.name}` |" in match.group(1), f"README does not document service.state.{field.name}"
