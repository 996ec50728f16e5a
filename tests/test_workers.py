"""``service.workers``: several processes, each call in one of them, behind one port."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests import _samples
from webrtc_observer.components import config_types
from webrtc_observer.config import ConfigError, load_text
from webrtc_observer.model import ClientSample, Origin
from webrtc_observer.workers import owner_of, owner_of_key

REPO = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> int:
    """A port p with p .. p+n-1 all free (a worker i listens on p + i)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            for i in range(n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


def _issues(yaml: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_text(yaml, config_types())
    return [str(i) for i in err.value.issues]


PIPELINE = "pipelines: {p: {receivers: [observertc], exporters: [debug]}}"


def test_workers_must_be_a_sane_number() -> None:
    issues = _issues(f"receivers: {{observertc: {{}}}}\nexporters: {{debug: {{}}}}\nservice: {{workers: 0, {PIPELINE}}}")
    assert any(i.startswith("service.workers") and "between 1 and 64" in i for i in issues), issues


def test_workers_cannot_share_a_random_port() -> None:
    yaml = (
        f'receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}\nexporters: {{debug: {{}}}}\nservice: {{workers: 2, {PIPELINE}}}'
    )
    issues = _issues(yaml)
    assert any(i.startswith("receivers.observertc.endpoint") and "port 0" in i for i in issues), issues


def test_one_worker_owns_every_sample_of_a_room() -> None:
    origin = Origin("svc", "mu", 0, "2")
    owners = Counter()
    for room in range(200):
        seen = {
            owner_of(ClientSample(origin=origin, client_id=f"c{client}", timestamp=0, room_id=f"room-{room}"), 2)
            for client in range(5)
        }
        assert len(seen) == 1
        owners[seen.pop()] += 1
    assert min(owners.values()) > 60, owners  # both workers get a fair share
    # Without a room, the call id decides; the service id is part of the key.
    a = ClientSample(origin=origin, client_id="x", timestamp=0, call_id="call-1")
    b = ClientSample(origin=origin, client_id="y", timestamp=5, call_id="call-1")
    assert owner_of(a, 4) == owner_of(b, 4)


class _Supervised:
    """``webrtc-observer run`` with ``service.workers: 2``: a file per worker, /metrics per worker."""

    def __init__(self, tmp_path: Path, workers: int = 2, state: str = "{}") -> None:
        """``state``: the ``service.state`` options (YAML flow mapping)."""
        self.port = _free_ports(1)
        self.metrics_port = _free_ports(workers)
        self.workers = workers
        self.dir = tmp_path
        config = tmp_path / "workers.yaml"
        config.write_text(
            f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:{self.port}"}}}}
processors: {{correlation: {{}}, reports: {{}}}}
exporters:
  file: {{path: "{tmp_path}/reports.jsonl"}}
  prometheus: {{endpoint: "127.0.0.1:{self.metrics_port}"}}
service:
  workers: {workers}
  state: {state}
  pipelines: {{p: {{receivers: [observertc], processors: [correlation, reports], exporters: [file, prometheus]}}}}
"""
        )
        self.log = tmp_path / "collector.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webrtc_observer", "run", "--config", str(config)],
            cwd=REPO,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        """Every worker answers: each serves /metrics on its own port."""
        deadline = time.monotonic() + timeout
        pending = set(range(self.workers))
        while pending and time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            for i in list(pending):
                try:
                    async with http.get(f"http://127.0.0.1:{self.metrics_port + i}/metrics") as resp:
                        if resp.status == 200:
                            pending.discard(i)
                except aiohttp.ClientConnectionError:
                    pass
            await asyncio.sleep(0.05)
        assert not pending, f"workers {pending} not ready:\n{self.log.read_text()}"

    async def metric(self, http: aiohttp.ClientSession, worker: int, name: str) -> float:
        async with http.get(f"http://127.0.0.1:{self.metrics_port + worker}/metrics") as resp:
            text = await resp.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._log_file.close()
        return code

    def reports_by_worker(self) -> list[list[dict]]:
        return [
            [json.loads(line) for line in (self.dir / f"reports-{i}.jsonl").read_text().splitlines()] for i in range(self.workers)
        ]


async def test_two_workers_keep_each_call_in_one_process(tmp_path: Path) -> None:
    collector = _Supervised(tmp_path)
    calls = [f"call-{n}" for n in range(12)]
    sent = 0
    try:
        async with aiohttp.ClientSession() as http:
            await collector.wait_ready(http)
            # One WebSocket per client: the kernel spreads connections over the workers, so the two
            # clients of a call usually land on different ones.
            sockets = {}
            for call in calls:
                for client in ("a", "b"):
                    sockets[call, client] = await http.ws_connect(f"ws://127.0.0.1:{collector.port}/samples/svc/mu")
            for tick in range(3):
                for (call, client), ws in sockets.items():
                    sample = _samples.client_sample_v2(
                        f"{call}-{client}", call_id=call, ts=_samples.T0 + tick * 1000, roomId=f"room-{call}"
                    )
                    await ws.send_str(json.dumps(_samples.samples_v2(sample, sfu=False)))
                    sent += 1
            # HTTP too, for a call of its own.
            for tick in range(3):
                body = _samples.samples_v2(
                    _samples.client_sample_v2(
                        "http-client", call_id="call-http", ts=_samples.T0 + tick * 1000, roomId="room-http"
                    ),
                    sfu=False,
                )
                async with http.post(f"http://127.0.0.1:{collector.port}/rest/samples/svc/mu", json=body) as resp:
                    assert resp.status == 202, await resp.text()
                sent += 1
            for ws in sockets.values():
                await ws.close()
            # Every sample is counted once, by the worker whose connection received it.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                received = [await collector.metric(http, i, "observertc_samples_received_total") for i in range(2)]
                if sum(received) >= sent:
                    break
                await asyncio.sleep(0.1)
            assert sum(received) == sent, received
            assert all(received), f"one worker took every connection: {received}"
            # Each message held one room's samples: those another worker owned went over undecoded.
            handoffs = {
                form: [
                    await collector.metric(http, i, f'observertc_worker_handoffs_total{{form="{form}",receiver="observertc"}}')
                    for i in range(2)
                ]
                for form in ("undecoded", "decoded")
            }
            assert sum(handoffs["undecoded"]) > 0 and sum(handoffs["decoded"]) == 0, handoffs
            await asyncio.sleep(0.5)  # let the owners write what peers handed them
    finally:
        assert collector.stop() == 0, collector.log.read_text()

    files = collector.reports_by_worker()
    owner = {}
    for i, reports in enumerate(files):
        for r in reports:
            call = r["payload"].get("callId")
            if call is not None:
                assert owner.setdefault(call, i) == i, f"{call} has reports from workers {owner[call]} and {i}"
    assert set(owner) == {*calls, "call-http"}
    assert set(owner.values()) == {0, 1}, "every call ended up in one worker"
    started = Counter(r["payload"]["callId"] for f in files for r in f if r["payload"].get("name") == "CALL_STARTED")
    assert started == dict.fromkeys([*calls, "call-http"], 1)
    tracks = Counter(
        (r["payload"]["callId"], r["payload"]["clientId"]) for f in files for r in f if r["type"] == "INBOUND_AUDIO_TRACK"
    )
    assert all(tracks[call, f"{call}-{c}"] == 3 for call in calls for c in ("a", "b")), tracks


async def test_a_worker_that_dies_is_started_again(tmp_path: Path) -> None:
    collector = _Supervised(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            await collector.wait_ready(http)
            before = collector.children()
            assert len(before) == 2
            os.kill(before[1], signal.SIGKILL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                now = collector.children()
                if len(now) == 2 and before[1] not in now:
                    break
                await asyncio.sleep(0.1)
            assert len(now) == 2 and before[1] not in now, now
            await collector.wait_ready(http)
            body = _samples.samples_v2(_samples.client_sample_v2("c-1", call_id="call-after"), sfu=False)
            async with http.post(f"http://127.0.0.1:{collector.port}/rest/samples/svc/mu", json=body) as resp:
                assert resp.status == 202
    finally:
        assert collector.stop() == 0, collector.log.read_text()
    assert "worker died; starting it again" in collector.log.read_text()


# -- a worker killed mid-call resumes its calls (service.state) ------------------------------------


async def _post_until_accepted(http: aiohttp.ClientSession, url: str, body: dict, timeout: float = 60) -> None:
    """POST until 202: a 503 (the owning worker is down or starting again) or a connection the
    killed worker dropped is tried again, as a client would."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.post(url, json=body) as resp:
                if resp.status == 202:
                    return
                assert resp.status == 503, (resp.status, await resp.text())
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, f"not accepted within {timeout}s"
        await asyncio.sleep(0.05)


def _complete_reports(path: Path) -> list[dict]:
    """The reports of a file the collector may still be writing (a partial last line is left out)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def _worker_pids(log: str, index: int) -> list[int]:
    """The pids the supervisor started worker ``index`` with, in order (it logs every start)."""
    return [int(m.group(1)) for m in re.finditer(rf"worker started .*worker={index} pid=(\d+)", log)]


async def _until(condition, timeout: float = 30, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _lifecycle(reports: list[dict], name: str) -> Counter:
    return Counter(
        (r["payload"]["callId"], r["payload"].get("clientId"))
        for r in reports
        if r["type"] == "CALL_EVENT" and r["payload"]["name"] == name
    )


async def test_a_worker_killed_mid_call_resumes_its_calls_without_announcing_them_again(tmp_path: Path) -> None:
    collector = _Supervised(tmp_path, state="{checkpoint_interval: 200ms}")
    calls = [f"call-{n}" for n in range(8)]
    clients = [(call, f"{call}-{c}") for call in calls for c in ("a", "b")]
    url = f"http://127.0.0.1:{collector.port}/rest/samples/svc/mu"
    files = [tmp_path / f"reports-{i}.jsonl" for i in range(2)]

    async def send_round(http: aiohttp.ClientSession, tick: int) -> None:
        for call, client in clients:
            sample = _samples.client_sample_v2(client, call_id=call, ts=_samples.T0 + tick * 1000, roomId=f"room-{call}")
            await _post_until_accepted(http, url, _samples.samples_v2(sample, sfu=False))

    def owners() -> dict[str, int]:
        return {
            r["payload"]["callId"]: i
            for i, path in enumerate(files)
            for r in _complete_reports(path)
            if r["type"] == "CALL_EVENT" and r["payload"]["name"] == "CALL_STARTED"
        }

    try:
        async with aiohttp.ClientSession() as http:
            await collector.wait_ready(http)
            for tick in range(2):
                await send_round(http, tick)

            async def all_started() -> bool:
                return len(owners()) == len(calls)

            await _until(all_started, what="every CALL_STARTED in the files")
            by_worker = Counter(owners().values())
            victim = by_worker.most_common(1)[0][0]
            victim_calls = sorted(c for c, w in owners().items() if w == victim)

            # A checkpoint that began after the calls were accepted: two more than now.
            metric = "observertc_local_state_checkpoint_duration_seconds_count"
            done = await collector.metric(http, victim, metric)

            async def checkpointed() -> bool:
                return await collector.metric(http, victim, metric) >= done + 2

            await _until(checkpointed, what="a checkpoint covering the calls")
            (pid,) = _worker_pids(collector.log.read_text(), victim)
            os.kill(pid, signal.SIGKILL)

            for tick in range(2, 5):  # the same calls go on; the first sends wait out the restart
                await send_round(http, tick)
            assert len(_worker_pids(collector.log.read_text(), victim)) == 2, "the killed worker was not started again"
    finally:
        assert collector.stop() == 0, collector.log.read_text()

    reports = [r for path in files for r in _complete_reports(path)]
    assert _lifecycle(reports, "CALL_STARTED") == {(call, None): 1 for call in calls}
    assert _lifecycle(reports, "CLIENT_JOINED") == dict.fromkeys(clients, 1)
    log = collector.log.read_text()
    assert "worker died; starting it again" in log
    assert re.search(rf"state restored .*worker={victim}", log), log
    # The restarted worker took the samples that came after its restart, in the calls it resumed.
    after = {
        (r["payload"]["callId"], r["payload"]["clientId"])
        for r in _complete_reports(files[victim])
        if r["type"] == "INBOUND_AUDIO_TRACK" and r["payload"]["timestamp"] == _samples.T0 + 4000
    }
    assert after == {(call, client) for call, client in clients if call in victim_calls}


def _room_of(owner: int, workers: int = 2) -> str:
    return next(f"room-{n}" for n in range(100) if owner_of_key(f"svc\x00room-{n}", workers) == owner)


async def test_what_the_owner_refuses_or_splits_reaches_the_client_as_from_one_process(tmp_path: Path) -> None:
    """A message handed over undecoded is refused by its owner with the reason one process would give;
    a message holding rooms of both workers is decoded where it arrived and split between them."""
    collector = _Supervised(tmp_path)
    theirs = {w: _room_of(w) for w in range(2)}
    try:
        async with aiohttp.ClientSession() as http:
            await collector.wait_ready(http)
            sockets = [await http.ws_connect(f"ws://127.0.0.1:{collector.port}/samples/svc/mu") for _ in range(16)]
            bad = _samples.client_sample_v2("mallory", call_id="call-bad", roomId=theirs[1], inboundAudioTracks=[{"ssrc": "x"}])
            for ws in sockets:
                await ws.send_str(json.dumps(_samples.samples_v2(bad, sfu=False)))
                answer = json.loads((await ws.receive(timeout=10)).data)
                assert answer["error"] == "invalid_sample" and "ssrc" in answer["detail"], answer
            refused = [await collector.metric(http, i, "observertc_samples_refused_total") for i in range(2)]
            assert sum(refused) == len(sockets) and all(refused), f"every connection went to one worker: {refused}"
            # Worker 0 handed the bad message to worker 1 undecoded; worker 1's refusal came back.
            assert await collector.metric(http, 0, 'observertc_worker_handoffs_total{form="undecoded",receiver="observertc"}')

            both = _samples.samples_v2(
                *(_samples.client_sample_v2(f"client-{w}", call_id=f"call-{w}", roomId=theirs[w]) for w in range(2)),
                sfu=False,
            )
            for tick, ws in enumerate(sockets):
                both["clientSamples"][0]["timestamp"] = both["clientSamples"][1]["timestamp"] = _samples.T0 + tick * 1000
                await ws.send_str(json.dumps(both))
            for ws in sockets:
                await ws.close()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                received = sum([await collector.metric(http, i, "observertc_samples_received_total") for i in range(2)])
                if received >= 2 * len(sockets):
                    break
                await asyncio.sleep(0.1)
            assert received == 2 * len(sockets)
            decoded = [
                await collector.metric(http, i, 'observertc_worker_handoffs_total{form="decoded",receiver="observertc"}')
                for i in range(2)
            ]
            assert all(decoded), decoded
            await asyncio.sleep(0.5)  # let the owners write what peers handed them
    finally:
        assert collector.stop() == 0, collector.log.read_text()
    files = collector.reports_by_worker()
    for w in range(2):
        calls = {r["payload"].get("callId") for r in files[w]} - {None}
        assert calls == {f"call-{w}"}, (w, calls)


# -- the wire between two workers, in two real processes ------------------------------------------


def _owner_process(directory: str, ready, received) -> None:  # type: ignore[no-untyped-def]
    """Worker 1 of 2: takes what worker 0 hands it. The data says how: ``busy`` and ``refuse`` raise
    what a receiver would, ``hang`` never answers (it sets ``received`` first), else the byte count."""
    from webrtc_observer.component import Refused, RetryLater, Worker
    from webrtc_observer.telemetry import Telemetry
    from webrtc_observer.workers import Peers

    class Local:
        async def consume(self, batch) -> None:  # type: ignore[no-untyped-def]
            pass

    async def take(message) -> int:  # type: ignore[no-untyped-def]
        if message.data == b"busy":
            raise RetryLater("the owner is above its memory limit", 5.0, "memory_limit")
        if message.data == b"refuse":
            raise Refused("invalid_sample", "ssrc: not an integer", 400)
        if message.data == b"hang":
            received.set()
            await asyncio.Event().wait()
        return len(message.data)

    async def main() -> None:
        peers = Peers(Worker(1, 2), directory)
        peers.router("observertc", Local(), Telemetry()).take_forwarded(take)  # type: ignore[attr-defined]
        await peers.start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


@pytest.fixture
def owner(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Worker 1 in a process of its own; yields (the process, an event set when it got a ``hang``)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    ready, received = context.Event(), context.Event()
    process = context.Process(target=_owner_process, args=(str(tmp_path), ready, received), daemon=True)
    process.start()
    assert ready.wait(30), "the owner did not start"
    yield process, received
    process.kill()
    process.join()


def _sender(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Worker 0's router (a Forwarder) and its Peers."""
    from webrtc_observer.component import Worker
    from webrtc_observer.telemetry import Telemetry
    from webrtc_observer.workers import Peers

    class Local:
        async def consume(self, batch) -> None:  # type: ignore[no-untyped-def]
            pass

    peers = Peers(Worker(0, 2), str(tmp_path))
    return peers.router("observertc", Local(), Telemetry()), peers


def _undecoded(data: bytes):  # type: ignore[no-untyped-def]
    from webrtc_observer.component import Undecoded

    return Undecoded(data, Origin("svc", "mu", 0, "2"), "samples", "json", False)


async def test_many_forwards_at_once_each_get_their_own_answer(tmp_path: Path, owner) -> None:  # type: ignore[no-untyped-def]
    """Forwards sent in the same turn of the loop leave together and their answers come back
    together; each caller gets the answer to its own message, large ones (read in pieces) too."""
    router, peers = _sender(tmp_path)
    sizes = [1 + (n * 7919) % 20000 for n in range(300)] + [3 * 1024 * 1024]
    try:
        taken = await asyncio.gather(*(router.forward(1, _undecoded(b"x" * size)) for size in sizes))
    finally:
        await peers.shutdown()
    assert taken == sizes


async def test_what_the_owner_raises_reaches_the_sender_as_raised(tmp_path: Path, owner) -> None:  # type: ignore[no-untyped-def]
    """A full owner's RetryLater keeps its code and Retry-After; a refusal its reason, detail and status."""
    from webrtc_observer.component import Refused, RetryLater

    router, peers = _sender(tmp_path)
    try:
        with pytest.raises(RetryLater) as busy:
            await router.forward(1, _undecoded(b"busy"))
        assert (busy.value.code, busy.value.retry_after) == ("memory_limit", 5.0)
        assert busy.value.reason == "the owner is above its memory limit"
        with pytest.raises(Refused) as refused:
            await router.forward(1, _undecoded(b"refuse"))
        assert (refused.value.reason, refused.value.detail, refused.value.status) == (
            "invalid_sample",
            "ssrc: not an integer",
            400,
        )
        assert await router.forward(1, _undecoded(b"fine")) == 4  # the link carries on after both
    finally:
        await peers.shutdown()


async def test_a_forward_in_flight_to_an_owner_that_dies_is_retried_later(tmp_path: Path, owner) -> None:  # type: ignore[no-untyped-def]
    """The owner took the message and died before answering: the sender gets RetryLater (the client
    is told to send it again), and so does the next forward while no owner listens."""
    from webrtc_observer.component import RetryLater

    process, received = owner
    router, peers = _sender(tmp_path)
    try:
        hanging = asyncio.create_task(router.forward(1, _undecoded(b"hang")))
        assert await asyncio.to_thread(received.wait, 30), "the owner did not get the message"
        assert not hanging.done()
        process.kill()
        with pytest.raises(RetryLater, match="worker 1 is not reachable"):
            await asyncio.wait_for(hanging, 30)
        with pytest.raises(RetryLater, match="worker 1 is not reachable"):
            await router.forward(1, _undecoded(b"after"))
    finally:
        await peers.shutdown()


async def test_a_worker_is_ready_only_once_every_other_worker_takes_handed_samples(tmp_path: Path) -> None:
    """``GET /health`` of a worker answers from its own process: it says ready only once every peer
    listens, so a load balancer does not send a sample that a peer, still starting, would owe."""
    from webrtc_observer.component import Worker
    from webrtc_observer.workers import Peers

    first, second = Peers(Worker(0, 2), str(tmp_path)), Peers(Worker(1, 2), str(tmp_path))
    await first.start()
    try:
        assert not first.all_listening()
        await second.start()
        assert first.all_listening() and second.all_listening()
    finally:
        await second.shutdown()
        await first.shutdown()
