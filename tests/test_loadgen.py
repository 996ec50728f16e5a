"""The load generator against the real collector: every topology, generation, transport and format."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import signal
import socket
import sys
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from webrtc_observer.loadgen import FORMATS, GENERATIONS, TRANSPORTS, Impairment, Scenario, Tick, run
from webrtc_observer.testing import RunningCollector, running_collector

REPO = Path(__file__).resolve().parents[1]


def pipeline(reports: bool = True, idle: str = "600ms") -> str:
    return f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors:
  correlation: {{client_idle_timeout: {idle}, call_empty_timeout: 300ms, sfu_idle_timeout: {idle}, sweep_interval: 50ms}}
  reports: {{}}
exporters: {{recording: {{}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: [correlation{", reports" if reports else ""}], exporters: [recording]}}}}}}
"""


REPORTS = pipeline()
# Many calls at once: record the correlated samples, and only the lifecycle events as reports (conftest
# checks every recorded report against its Avro schema, which costs more than making it). The load
# generators share this process with the collector, so give a client's samples time to arrive.
CORRELATED = pipeline(reports=False, idle="1500ms")
INTERVAL = 0.2


def events(c: RunningCollector, name: str, service: str | None = None) -> list[dict[str, Any]]:
    return [
        r.payload
        for r in c.exporter().reports
        if r.type in ("CALL_EVENT", "SFU_EVENT")
        and r.payload["name"] == name
        and (service is None or r.payload["serviceId"] == service)
    ]


def reports(c: RunningCollector, *types: str, client_id: str | None = None) -> list[dict[str, Any]]:
    return [
        r.payload
        for r in c.exporter().reports
        if r.type in types and (client_id is None or r.payload.get("clientId") == client_id)
    ]


def received(c: RunningCollector, service: str) -> float:
    metric = c.telemetry.get("samples_received")
    return sum(v for labels, v in metric.samples().items() if labels[0] == service)


async def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def by_track(payloads: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    tracks: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for p in sorted(payloads, key=lambda p: p["timestamp"]):
        tracks[(p["clientId"], p["ssrc"])].append(p)
    return tracks


# -- the scenario alone ------------------------------------------------------------------------------


def test_impairments_parse():
    assert Impairment.parse("loss=0.05@0.2") == Impairment("loss", 0.05, 0.2)
    assert Impairment.parse("rtt=400ms@0.1") == Impairment("rtt", 0.4, 0.1)
    assert Impairment.parse("frozen@0.1") == Impairment("frozen", 0.0, 0.1)
    assert Impairment.parse("drop") == Impairment("drop", 0.0, 1.0)
    assert str(Impairment.parse("loss@0.5")) == "loss=0.05@0.5"
    for bad in ("jitter@0.1", "loss=2", "loss=0.1@3", "frozen=1@0.1", "rtt=soon"):
        with pytest.raises(ValueError):
            Impairment.parse(bad)


def test_a_seed_gives_the_same_messages_and_impairments_hit_their_share():
    def make(seed: int) -> Scenario:
        return Scenario(
            calls=4, clients_per_call=5, topology="mixed", schema="mixed", impairments=["loss@0.2", "drop@0.1"],
            interval=1, duration=10, seed=seed, start_ms=1_700_000_000_000,
        )  # fmt: skip

    one, two, other = make(7), make(7), make(8)
    ticks = [(t.at, t.sender, orjson.dumps(t.body)) for t in one.ticks()]
    assert ticks == [(t.at, t.sender, orjson.dumps(t.body)) for t in two.ticks()]
    assert ticks != [(t.at, t.sender, orjson.dumps(t.body)) for t in other.ticks()]
    clients = one.clients
    assert len(clients) == 5 + 5 + 2 + 5  # mixed topologies rotate sfu, mesh, p2p; p2p calls have 2
    assert sum("loss" in c.impairments for c in clients) in (3, 4)  # 20% of 17, picked evenly
    assert sum("drop" in c.impairments for c in clients) in (1, 2)
    assert [call.topology for call in one.calls] == ["sfu", "mesh", "p2p", "sfu"]


def test_counters_grow_with_time_and_ids_stay_stable():
    sc = Scenario(calls=2, clients_per_call=3, topology="mesh", schema="2", interval=2, duration=20, seed=1, start_ms=0)
    ticks = [t for t in sc.ticks() if t.client_id]
    per_client: dict[str, list[Tick]] = defaultdict(list)
    for t in ticks:
        per_client[t.sender].append(t)
    assert len(per_client) == 6 and len({c.client_id for c in sc.clients}) == 6
    assert len({c.call_id for c in sc.calls}) == 2 and len({c.room_id for c in sc.calls}) == 2
    for client in sc.clients:
        mine = per_client[client.client_id]
        samples = [t.body["clientSamples"][0] for t in mine]
        assert {s["clientId"] for s in samples} == {client.client_id}
        assert {(s["callId"], s["roomId"]) for s in samples} == {(client.call.call_id, client.call.room_id)}
        stamps = [s["timestamp"] for s in samples]
        assert all(b - a == 2000 for a, b in itertools.pairwise(stamps))  # one sample per interval
        assert mine[0].first and mine[-1].last and mine[-1].goodbye and mine[-1].body["controls"] == {"close": True}
        assert not any(t.goodbye for t in mine[:-1])
        # one peer connection per other participant, with stable ids and SSRCs
        pcs = {(tr["peerConnectionId"], tr["ssrc"]) for s in samples for tr in s.get("outboundAudioTracks", [])}
        assert len(pcs) == 2
        video = defaultdict(list)
        jitter = set()
        for s in samples:
            for tr in s.get("outboundVideoTracks", []):
                video[tr["ssrc"]].append(tr)
            for tr in s.get("inboundAudioTracks", []):
                jitter.add(tr["jitter"])
        for series in video.values():
            sent = [tr["bytesSent"] for tr in series]
            assert all(b > a for a, b in itertools.pairwise(sent))
            rate = (sent[-1] - sent[0]) * 8 / (2 * (len(sent) - 1))
            assert 400_000 < rate < 1_000_000  # mesh sends 700 kbps per peer connection
            frames = [tr["framesEncoded"] for tr in series]
            assert 25 * 2 < frames[1] - frames[0] < 35 * 2
        assert len(jitter) > 3  # fluctuates


def test_v3_and_legacy_clients_say_goodbye_their_way():
    sc = Scenario(calls=1, clients_per_call=3, topology="mesh", schema="mixed", interval=1, duration=5, seed=2, start_ms=0)
    last = {t.sender: t for t in sc.ticks()}
    by_generation = {c.generation: last[c.client_id] for c in sc.clients}
    assert (
        by_generation["3"].goodbye
        and {"type": "CLIENT_LEFT", "timestamp": by_generation["3"].timestamp} in (by_generation["3"].body["clientEvents"])
    )
    assert by_generation["2"].goodbye and by_generation["2"].body["controls"] == {"close": True}
    assert not by_generation["legacy"].goodbye and by_generation["legacy"].last  # 2020 clients just stop
    assert by_generation["legacy"].http_path == "/pcsamples/loadgen/loadgen"


def _protoc_json(node: Any, descriptor: Any) -> Any:
    """What ParseDict needs to build the message our encoder should have written (see _wire's rules)."""
    from google.protobuf.descriptor import FieldDescriptor

    out = {}
    for key, value in node.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        values = value if isinstance(value, list) else [value]
        converted = []
        for v in values:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                v = _protoc_json(v, field.message_type)
            elif field.type == FieldDescriptor.TYPE_BYTES:
                raw = uuid.UUID(v).bytes if re.fullmatch(r"[0-9a-f-]{36}", v) else v.encode()
                v = base64.b64encode(raw).decode()
            elif field.type == FieldDescriptor.TYPE_STRING and isinstance(v, (dict, list)):
                v = orjson.dumps(v).decode()
            elif field.type == FieldDescriptor.TYPE_ENUM and isinstance(v, str):
                v = v.replace("-", "").upper()
            converted.append(v)
        out[key] = converted if isinstance(value, list) else converted[0]
    return out


def _protoc_class(tmp_path: Path, version: str, proto_file: str, message: str) -> Any:
    """The message class protoc (grpcio-tools) builds from a shipped .proto, in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    proto_dir = REPO / "webrtc_observer" / "schemas" / version
    out = tmp_path / f"{version}.pb"
    assert protoc.main(["protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}", str(proto_dir / proto_file)]) == 0
    pool = descriptor_pool.DescriptorPool()
    for fd in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"org.observertc.schemas.protobuf.{message}"))


def test_protobuf_encoding_matches_protoc_generated_classes(tmp_path):
    from google.protobuf.json_format import ParseDict

    v2 = _protoc_class(tmp_path, "v2_2_11", "ProtobufSamples.proto", "Samples")
    v3 = _protoc_class(tmp_path, "v3_5_0", "ProtobufClientSampleV3.proto", "ClientSample")
    sc = Scenario(calls=2, clients_per_call=3, topology="sfu", schema="mixed", format="protobuf", interval=1, duration=4, seed=3)
    checked = Counter()
    for tick in sc.ticks():
        if tick.generation == "legacy":
            assert tick.encode().format == "json"  # the 2020 samples are JSON only
            continue
        cls = v3 if tick.generation == "3" else v2
        encoded = tick.encode()
        assert encoded.format == "protobuf" and encoded.content_type == "application/x-protobuf"
        expected = ParseDict(_protoc_json(tick.body, cls.DESCRIPTOR), cls())
        assert cls.FromString(encoded.data) == expected
        checked["sfu" if "sfuSamples" in tick.body else tick.generation] += 1
    assert checked["2"] and checked["3"] and checked["sfu"]


# -- against the collector -----------------------------------------------------------------------


async def test_every_topology_generation_transport_and_format_is_accepted_and_correlated():
    runs: dict[str, Scenario] = {}
    combinations = [*itertools.product(("p2p", "mesh", "sfu"), GENERATIONS), ("sfu", "mixed"), ("mixed", "mixed")]
    for n, (topology, schema) in enumerate(combinations):
        runs[f"svc-{topology}-{schema}"] = Scenario(
            calls=3,
            clients_per_call=3,
            topology=topology,
            schema=schema,
            transport="mixed",
            format="mixed",
            interval=0.5,
            duration=2.5,
            seed=11 + n,  # the same seed would give the same client ids
            service_id=f"svc-{topology}-{schema}",
        )
    async with running_collector(CORRELATED) as c:
        # As fast as the collector takes them (realtime=False): the counters still advance by the
        # scenario's clock; few messages in flight keep the senders roughly in step.
        sending = (run(sc, c.url(), realtime=False, concurrency=4) for sc in runs.values())
        summaries = dict(zip(runs, await asyncio.gather(*sending), strict=True))
        total_clients = sum(len(sc.clients) for sc in runs.values())
        await wait_until(
            lambda: (
                sum(len(events(c, "CLIENT_LEFT", svc)) for svc in runs) == total_clients
                and sum(len(events(c, "CALL_ENDED", svc)) for svc in runs) == 3 * len(runs)
            ),
        )

        for service, sc in runs.items():
            summary = summaries[service]
            assert summary.ok, (service, summary.refused, summary.errors)
            assert summary.samples_sent == summary.samples_accepted == received(c, service) > 0
            assert summary.calls == 3 and summary.clients == len(sc.clients)
            assert len(events(c, "CALL_STARTED", service)) == 3
            joined = {e["clientId"] for e in events(c, "CLIENT_JOINED", service)}
            assert joined == {cl.client_id for cl in sc.clients}
            assert len(events(c, "CLIENT_JOINED", service)) == len(sc.clients)  # each exactly once
            assert {e["callId"] for e in events(c, "CLIENT_JOINED", service)} == {call.call_id for call in sc.calls}
            if sc.schema != "mixed":  # each generation over each transport in each format (legacy: JSON for protobuf)
                combos = {(cl.transport, cl.format) for cl in sc.clients}
                assert combos == set(itertools.product(TRANSPORTS, FORMATS)), (service, combos)
            if sc.topology == "sfu":
                assert len(events(c, "SFU_JOINED", service)) == len(sc.sfus) == 1

        # Every inbound track is matched to its sender: by SFU stream/sink ids for 2.x, else by SSRC.
        inbound: dict[tuple[str, int], list[str | None]] = defaultdict(list)
        for sample in c.exporter().client_samples:
            for track in sample.inbound_tracks:
                inbound[sample.client_id, track.ssrc].append(track.remote_client_id)
        checked = Counter()
        for sc in runs.values():
            for client in sc.clients:
                for ssrc, sender in client.senders.items():
                    named = inbound.get((client.client_id, ssrc), [])[1:]
                    if not named:
                        continue  # the sender was gone right after
                    # Known from the second sample on; the very last may come after the sender left.
                    assert sender in named and set(named) <= {sender, None}, (sc.topology, client, ssrc, named)
                    checked[client.call.topology, client.generation] += 1
        assert set(checked) == set(itertools.product(("p2p", "mesh", "sfu"), GENERATIONS))

        # The SFU's pads are linked to the clients whose tracks they carry, by the 2.x stream and sink ids.
        sfu_samples = [s for s in c.exporter().samples if getattr(s, "sfu_id", None) and s.origin.service_id == "svc-sfu-2"]
        linked = {link.client_id for s in sfu_samples for link in s.pad_links.values()}
        assert linked == {cl.client_id for cl in runs["svc-sfu-2"].clients}


async def test_impaired_clients_show_it_in_their_reports_and_dropped_ones_idle_out():
    sc = Scenario(
        calls=3,
        clients_per_call=4,
        topology="sfu",
        schema="mixed",
        transport="mixed",
        impairments=["loss=0.1@0.25", "rtt=0.4@0.25", "frozen@0.25", "drop@0.2"],
        interval=INTERVAL,
        duration=1.6,
        seed=5,
    )
    async with running_collector(REPORTS) as c:
        summary = await run(sc, c.url(), realtime=False, concurrency=4)
        assert summary.ok and summary.dropped == sum(cl.dropped for cl in sc.clients) > 0

        # Every client left for good: as often as it joined (a loaded machine may idle one out
        # between two samples; it rejoins with its next one).
        def everyone_gone() -> bool:
            joined = Counter(e["clientId"] for e in events(c, "CLIENT_JOINED"))
            left = Counter(e["clientId"] for e in events(c, "CLIENT_LEFT"))
            return set(left) == {cl.client_id for cl in sc.clients} and joined == left

        await wait_until(everyone_gone)

        kinds = Counter(kind for cl in sc.clients for kind in cl.impairments)
        assert all(kinds[k] >= 2 for k in ("loss", "rtt", "frozen", "drop")), kinds
        for client in sc.clients:
            mine = by_track(reports(c, "INBOUND_AUDIO_TRACK", "INBOUND_VIDEO_TRACK", client_id=client.client_id))
            lost = sum(s[-1]["packetsLost"] for s in mine.values())
            got = sum(s[-1]["packetsReceived"] for s in mine.values())
            if got + lost > 200:
                ratio = lost / (lost + got)
                assert (ratio > 0.05) if "loss" in client.impairments else (ratio < 0.02), (client, ratio)
            pairs = reports(c, "ICE_CANDIDATE_PAIR", client_id=client.client_id)
            worst = max(p["currentRoundTripTime"] for p in pairs)
            assert (worst >= 0.4) if "rtt" in client.impairments else (worst < 0.1), (client, worst)
            video = by_track(reports(c, "INBOUND_VIDEO_TRACK", client_id=client.client_id))
            for series in video.values():
                if len(series) < 3:
                    continue
                decoded = [s["framesDecoded"] for s in series]
                if client.frozen:
                    assert len(set(decoded[1:])) == 1, (client, decoded)  # stopped after the first sample
                else:
                    assert decoded[-1] > decoded[0], (client, decoded)

        left = {e["clientId"]: e for e in events(c, "CLIENT_LEFT")}
        for client in sc.clients:
            assert left[client.client_id]["timestamp"] == sc.timestamp(client.left_at)  # the last sample it sent
            if client.dropped:
                assert not client.said_goodbye and client.left_at < 1.6 * 0.75  # vanished mid-call, left by idle timeout
            else:
                assert client.said_goodbye == (client.generation != "legacy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_cli_loadgen_prints_a_summary_matching_what_the_collector_counted():
    async with running_collector(REPORTS) as c:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "webrtc_observer", "loadgen", "--url", c.url(), "--calls", "2", "--duration", "2s",
            "--interval", "500ms", "--transport", "mixed", "--format", "mixed", "--impair", "loss=0.05@0.5,drop@0.2",
            "--service-id", "cli", "--seed", "4",
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        stdout, stderr = out.decode(), err.decode()
        assert proc.returncode == 0, stdout + stderr
        assert stdout.startswith("loadgen summary: 2 calls x 3 clients")
        sent = int(re.search(r"samples sent\s+(\d+)", stdout).group(1))
        assert f"accepted (2xx)  {sent}" in stdout and re.search(r"refused\s+0", stdout)
        assert re.search(r"HTTP latency\s+p50 [\d.]+ ms, p99 [\d.]+ ms", stdout)
        assert sent == received(c, "cli") > 0
        assert "100%" in stderr  # the progress line (plain lines when stderr is not a terminal)


def _demo_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OBSERVER_ENDPOINT": f"127.0.0.1:{_free_port()}",
        "OBSERVER_METRICS_ENDPOINT": f"127.0.0.1:{_free_port()}",
        "OBSERVER_UI_ENDPOINT": "127.0.0.1:0",
        "OBSERVER_FILE": str(tmp_path / "reports.jsonl"),
    }


EXPECTED_IN_DEMO = ("CALL_STARTED", "INBOUND_VIDEO_TRACK", "SFU_INBOUND_RTP_PAD", "SFU_OUTBOUND_RTP_PAD", "ICE_CANDIDATE_PAIR")


async def test_demo_runs_collector_and_load_until_ctrl_c(tmp_path):
    env = _demo_env(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webrtc_observer", "demo", "--interval", "300ms", "--call-duration", "2s",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out = tmp_path / "reports.jsonl"
        await wait_until(lambda: out.exists() and all(f'"{t}"' in out.read_text() for t in EXPECTED_IN_DEMO), timeout=30)
        metrics_port = env["OBSERVER_METRICS_ENDPOINT"].rsplit(":", 1)[1]
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                assert "observertc_samples_received_total" in await resp.text()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stdout.decode()
    assert proc.returncode == 0, text + stderr.decode()
    assert f"http://127.0.0.1:{metrics_port}/metrics" in text and str(out) in text
    assert "loadgen summary" in text and "(stopped early)" in text
    assert re.search(r"refused\s+0", text)
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert {r["payload"]["serviceId"] for r in lines} == {"demo"}
    assert set(EXPECTED_IN_DEMO) - {"CALL_STARTED"} <= {r["type"] for r in lines}


async def test_demo_stops_by_itself_after_its_duration(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webrtc_observer", "demo", "--duration", "2s", "--interval", "500ms", "--calls", "2",
        cwd=REPO, env=_demo_env(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, stdout.decode() + stderr.decode()
    assert "The demo stops after 2s" in stdout.decode() and "(stopped early)" not in stdout.decode()
