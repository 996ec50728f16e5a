"""A message is applied whole or not at all by every processor; every report is schema-valid; quotas.

The unit tests drive the correlation processor directly and compare a full dump of its tables before
and after a refused attempt (refused by the processor itself, by the next stage, or by a sibling after
``consume`` returned). The end-to-end tests go through the real HTTP receiver.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tests import _samples
from webrtc_observer import transaction
from webrtc_observer.component import Refused, RetryLater
from webrtc_observer.model import Batch, ClientEvent, ClientSample, Origin, PeerConnection, Report, SfuSample, Track
from webrtc_observer.processors._undo import Recency
from webrtc_observer.processors.correlation import CorrelationConfig, CorrelationProcessor
from webrtc_observer.testing import running_collector, settings_for_tests

T0 = _samples.T0


# -- a correlation processor driven directly ---------------------------------------------------------


class Downstream:
    """The next stage: records what it took, or refuses with ``error`` while it is set."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.error: Exception | None = None
        self.attempts = 0

    async def consume(self, batch: Batch) -> None:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        await transaction.after_commit(lambda: self.batches.append(batch))

    @property
    def reports(self) -> list[Report]:
        return [r for b in self.batches for r in b.reports]


def correlation(**options: Any) -> tuple[CorrelationProcessor, Downstream]:
    down = Downstream()
    config = CorrelationConfig(**options)
    assert config.validate() == []
    return CorrelationProcessor(settings_for_tests("correlation", "processor"), config, down), down


def _dump(value: Any, seen: set[int], times: bool = True) -> Any:
    """The whole state reachable from ``value``, as comparable builtins (the recency tables in order)."""
    if isinstance(value, Recency):
        return (
            "recency",
            [(_dump(k, seen, times), _dump(v, seen, times)) for k, v in zip(value.keys(), value.values(), strict=True)],
        )
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return ("dict", [(_dump(k, seen, times), _dump(v, seen, times)) for k, v in items])
    if isinstance(value, set):
        return ("set", sorted(repr(v) for v in value))
    if isinstance(value, (list, tuple)):
        return [_dump(v, seen, times) for v in value]
    slots = getattr(type(value), "__slots__", None)
    if slots and not isinstance(value, (str, int, float)):
        if id(value) in seen:
            return ("ref", type(value).__name__, getattr(value, "client_id", None), getattr(value, "call_id", None))
        seen.add(id(value))
        return (type(value).__name__, [(s, _dump(getattr(value, s), seen, times)) for s in slots])
    if type(value) is float and not times:
        return "<monotonic time>"
    return value


def state(p: CorrelationProcessor, times: bool = True) -> Any:
    tables = ["_parts", "_service_calls", "_service_clients"]
    seen: set[int] = set()
    return [(name, _dump(getattr(p, name), seen, times)) for name in tables]


ORIGIN = Origin(service_id="svc", media_unit_id="web", received_at=0, generation="2")


def sample(client_id: str, ts: int, *, call_id: str | None = "call-1", pc: str = "pc", **extra: Any) -> ClientSample:
    return ClientSample(origin=ORIGIN, client_id=client_id, timestamp=ts, call_id=call_id, **extra)


def audio(ssrc: int, pc: str, track_id: str, **extra: Any) -> Track:
    return Track(kind="audio", ssrc=ssrc, peer_connection_id=pc, track_id=track_id, **extra)


def sfu(ts: int, pads: int) -> SfuSample:
    return SfuSample(
        origin=ORIGIN,
        sfu_id="sfu-1",
        timestamp=ts,
        transports=[{"transportId": "t1"}],
        outbound_rtp_pads=[
            {"padId": f"o{n}", "streamId": f"s{n}", "sinkId": f"k{n}", "ssrc": n, "transportId": "t1"} for n in range(pads)
        ],
        inbound_rtp_pads=[{"padId": f"i{n}", "streamId": f"s{n}", "ssrc": n, "transportId": "t1"} for n in range(pads)],
        sctp_channels=[{"transportId": "t1", "streamId": "1", "channelId": "c"}],
    )


def script() -> list[Batch]:
    """A call that exercises every table: joins, tracks that come and go, SFU pads, a move, leaving."""
    a_out = audio(1, "pa", "a1", sfu_stream_id="s0")
    b_in = audio(1, "pb", "b-in", sfu_sink_id="k0")
    return [
        Batch(samples=[sample("alice", T0, room_id="r", user_id="ua", outbound_tracks=[a_out])]),
        Batch(samples=[sample("bob", T0, room_id="r", inbound_tracks=[b_in], outbound_tracks=[audio(2, "pb", "b1")])]),
        Batch(samples=[sfu(T0, 2)]),
        Batch(
            samples=[
                sample("alice", T0 + 1000, peer_connections=[PeerConnection("pa", label="main")], outbound_tracks=[a_out]),
                sample("bob", T0 + 1000, inbound_tracks=[b_in, audio(7, "pb", "b-in2")]),
            ]
        ),
        Batch(samples=[sfu(T0 + 1000, 1)]),
        Batch(samples=[sample("bob", T0 + 2000, call_id="call-2", outbound_tracks=[audio(3, "pb2", "b3")])]),  # moves
        Batch(samples=[sample("alice", T0 + 3000, events=[ClientEvent(name="CLIENT_LEFT")])]),
        Batch(samples=[sample("bob", T0 + 4000, call_id="call-2", closing=True)]),
    ]


async def test_a_refused_message_leaves_no_trace_in_correlation_wherever_it_is_refused() -> None:
    """Each step is refused three ways before it is accepted; the tables must be exactly as before."""
    p, down = correlation()
    reference, ref_down = correlation()
    for step, batch in enumerate(script()):
        before = state(p)
        down.error = RetryLater("full")  # (b) the next stage refuses
        with pytest.raises(RetryLater):
            await p.consume(batch)
        assert state(p) == before, f"step {step}: a refusal downstream left a trace"
        down.error = Refused("bad", "no", 400)
        with pytest.raises(Refused):
            await p.consume(batch)
        assert state(p) == before, f"step {step}: a Refused downstream left a trace"
        down.error = None

        class Sibling(Exception):
            pass

        # (c) the consume returned, then a sibling pipeline refused the message
        txn = transaction.Transaction()
        token = transaction._current.set(txn)
        try:
            await p.consume(batch)
        finally:
            transaction._current.reset(token)
        assert state(p) != before or step == len(script()), "the step changed nothing: the test proves nothing"
        txn.abort()
        assert state(p) == before, f"step {step}: an abort after consume returned left a trace"
        assert down.batches == []

        await p.consume(batch)  # accepted at last
        await reference.consume(batch)  # accepted the first time
        assert [r.payload for r in down.reports] == [r.payload for r in ref_down.reports], f"step {step}"
        down.batches.clear()
        ref_down.batches.clear()
    assert state(p, times=False) == state(reference, times=False)


async def test_an_exception_while_applying_leaves_no_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    p, _down = correlation()
    steps = script()
    await p.consume(steps[0])
    await p.consume(steps[1])
    before = state(p)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(p, "_match", broken)  # fails late: after clients, tracks and indexes changed
    with pytest.raises(RuntimeError):
        await p.consume(steps[3])
    assert state(p) == before
    monkeypatch.undo()
    await p.consume(steps[3])
    assert state(p) != before


async def test_a_refused_sweep_ends_nothing_and_the_next_sweep_ends_it_once() -> None:
    p, down = correlation(client_idle_timeout=0.001, call_empty_timeout=0.001, sfu_idle_timeout=0.001)
    for batch in script()[:3]:
        await p.consume(batch)
    before = state(p)
    down.error = RetryLater("full")
    import time

    with pytest.raises(RetryLater):
        await p._sweep_and_deliver(time.time() + 10)
    assert state(p) == before
    down.error = None
    await p._sweep_and_deliver(time.time() + 10)
    await p._sweep_and_deliver(time.time() + 20)
    ended = Counter(r.payload["name"] for r in down.reports)
    assert ended["CLIENT_LEFT"] == 2 and ended["CALL_ENDED"] == 1 and ended["SFU_LEFT"] == 1, ended
    assert not any(p.state_sizes().values()), p.state_sizes()


async def test_the_sweeper_retries_ends_the_pipeline_refused_and_gives_up_on_a_refusal_for_good() -> None:
    import asyncio

    p, down = correlation(client_idle_timeout=0.01, call_empty_timeout=0.01, sfu_idle_timeout=0.01, sweep_interval=0.01)
    await p.consume(script()[0])
    down.batches.clear()
    down.error = RetryLater("full")
    attempts = down.attempts
    await p.start()

    async def until(condition: Any) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached in time")

    try:
        await until(lambda: down.attempts >= attempts + 3)  # several sweeps refused: the client stays
        assert p.state_sizes()["clients"] == 1 and down.batches == []
        down.error = None
        await until(lambda: not any(p.state_sizes().values()))
        assert Counter(r.payload["name"] for r in down.reports) == Counter(
            {"CLIENT_LEFT": 1, "CALL_ENDED": 1, "PEER_CONNECTION_CLOSED": 1, "MEDIA_TRACK_REMOVED": 1}
        )
        await p.consume(script()[0])
        down.batches.clear()
        down.error = Refused("bad", "never")
        await until(lambda: not any(p.state_sizes().values()))  # ended, without its events
        assert down.batches == []
    finally:
        await p.shutdown()


@pytest.mark.parametrize(
    "bad",
    [
        {"events": [ClientEvent(name=5)]},  # type: ignore[arg-type]
        {"outbound_tracks": [Track(kind="audio", ssrc="x")]},  # type: ignore[arg-type]
        {"outbound_tracks": [Track(kind="audio", ssrc=1, peer_connection_id={"a": 1})]},  # type: ignore[arg-type]
        {"transports": [{"peerConnectionId": ["pc"]}]},
        {"user_id": 7},
        {"timestamp": -(2**63) - 1},
        {"sample_seq": "3"},
    ],
)
async def test_content_correlation_cannot_use_is_refused_with_400_before_anything_changes(bad: dict[str, Any]) -> None:
    p, _down = correlation()
    await p.consume(script()[0])
    before = state(p)
    fields = {"outbound_tracks": [audio(9, "pz", "z")], **bad}
    ts = fields.pop("timestamp", T0)
    with pytest.raises(Refused) as refused:
        await p.consume(Batch(samples=[sample("zed", ts, **fields)]))
    assert refused.value.status == 400 and refused.value.reason == "invalid_sample"
    assert state(p) == before


# -- over HTTP ---------------------------------------------------------------------------------------


def pipeline(processors: str = "[correlation]", **options: Any) -> str:
    rendered = ", ".join(f"{k}: {json.dumps(v)}" for k, v in {"sweep_interval": "50ms", **options}.items())
    return f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors: {{correlation: {{{rendered}}}, quality: {{}}, reports: {{}}}}
exporters: {{recording: {{}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: {processors}, exporters: [recording]}}}}}}
"""


def names(c: Any) -> Counter[str]:
    return Counter(r.payload["name"] for r in c.exporter().reports if r.type == "CALL_EVENT")


async def post(c: Any, http: Any, body: dict[str, Any], service: str = "svc") -> tuple[int, Any]:
    async with http.post(c.url(f"/rest/samples/{service}/web"), json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_a_malformed_event_is_refused_with_400_and_the_client_correlates_normally_afterwards(http) -> None:
    """Regression: ``customCallEvents: [{"name": 5}]`` used to raise after the client was created."""
    async with running_collector(pipeline("[correlation, reports]")) as c:
        bad = _samples.client_sample_v2("c-alice", ts=T0)
        bad["customCallEvents"] = [{"name": 5}]
        status, body = await post(c, http, {"clientSamples": [bad]})
        assert status == 400, body
        assert c.telemetry.get("samples_refused").value(body["error"]) == 1
        assert c.exporter().reports == []
        for n in range(2):
            status, body = await post(c, http, {"clientSamples": [_samples.client_sample_v2("c-alice", ts=T0 + n * 1000)]})
            assert status == 202, body
        got = names(c)
        for name in ("CALL_STARTED", "CLIENT_JOINED", "PEER_CONNECTION_OPENED", "MEDIA_TRACK_ADDED"):
            assert got[name] >= 1, got
        assert got["CALL_STARTED"] == 1 and got["CLIENT_JOINED"] == 1


def observations(c: Any) -> int:
    return sum(v.count for name in ("quality_round_trip_time", "quality_jitter") for v in c.telemetry.get(name).series().values())


async def test_the_retry_of_a_refused_sample_yields_what_a_first_accepted_attempt_would(http) -> None:
    first = [_samples.client_sample_v2("c-alice", ts=T0), _samples.client_sample_v2("c-bob", ts=T0)]
    second = [_samples.client_sample_v2("c-alice", ts=T0 + 1000)]

    def comparable(c: Any) -> list[tuple[str, Any]]:
        return [(r.type, r.payload) for r in c.exporter().reports]

    async with running_collector(pipeline("[correlation, quality, reports]")) as reference:
        for samples in (first, second):
            assert (await post(reference, http, {"clientSamples": samples}))[0] == 202
        expected = comparable(reference)
        expected_count = observations(reference)
        assert expected_count > 0

    async with running_collector(pipeline("[correlation, quality, reports]")) as c:
        recording = c.exporter()
        for samples in (first, second):
            recording.refuse = True
            for _ in range(2):
                status, _body = await post(c, http, {"clientSamples": samples})
                assert status == 503
            recording.refuse = False
            assert (await post(c, http, {"clientSamples": samples}))[0] == 202
        assert comparable(c) == expected
        assert names(c)["CLIENT_JOINED"] == 2 and names(c)["CALL_STARTED"] == 1
        assert observations(c) == expected_count  # quality observed the accepted attempts only


async def test_hostile_values_never_make_an_off_schema_report_and_are_counted(http) -> None:
    """The autouse fixture of conftest validates every recorded report against the 2.2.11 schemas.

    Each hostile message is refused by the receiver's decoding (400, with a reason) or accepted with
    the values it cannot represent left out of the reports and counted."""
    async with running_collector(pipeline("[correlation, reports]")) as c:
        dropped = c.telemetry.get("report_fields_dropped")
        s = _samples.client_sample_v2("c-ssrc", ts=T0)
        s["outboundAudioTracks"][0]["ssrc"] = 2**70
        status, body = await post(c, http, {"clientSamples": [s]})
        if status == 202:
            assert dropped.value("correlation", "CALL_EVENT", "SSRC") == 1  # its MEDIA_TRACK_ADDED
        else:
            assert status == 400 and body["error"], body
        s = _samples.client_sample_v2("c-time", ts=T0)
        s["customCallEvents"] = [
            {"name": "MUTE", "timestamp": -(2**63) - 1, "value": "1"},
            {"name": "X", "peerConnectionId": "pc-c-time", "timestamp": 2**70},
        ]
        status, body = await post(c, http, {"clientSamples": [s]})
        if status == 202:
            assert dropped.value("reports", "CALL_EVENT", "timestamp") == 2
            assert names(c)["MUTE"] == 1
        else:
            assert status == 400 and body["error"], body
        good = _samples.client_sample_v2("c-good", call_id="call-good", ts=T0)
        assert (await post(c, http, {"clientSamples": [good]}))[0] == 202
        assert any(r.payload.get("clientId") == "c-good" for r in c.exporter().reports if r.type == "CALL_EVENT")


async def test_lifecycle_and_client_events_with_unrepresentable_values_stay_on_schema() -> None:
    """What a decoder might let through, straight into correlation → reports."""
    from tests.conftest import assert_valid_report
    from webrtc_observer.processors.reports import ReportsConfig, ReportsProcessor

    down = Downstream()
    reports = ReportsProcessor(settings_for_tests("reports", "processor"), ReportsConfig(), down)
    p = CorrelationProcessor(settings_for_tests("correlation", "processor"), CorrelationConfig(), reports)
    hostile = sample(
        "h",
        T0,
        sample_seq=2**40,
        outbound_tracks=[audio(2**70, "pc", "t"), audio(-1, "pc", "t2")],
        events=[
            ClientEvent(name="MUTE", track_id=5, timestamp=-(2**63) - 1, value=1.5),  # type: ignore[arg-type]
            ClientEvent(name="X", attachments={"a": 1}),  # type: ignore[arg-type]
        ],
    )
    await p.consume(Batch(samples=[hostile]))
    assert down.reports
    for report in down.reports:
        assert_valid_report(report.type, report.payload)
    assert Counter(r.payload["name"] for r in down.reports if r.type == "CALL_EVENT")["MEDIA_TRACK_ADDED"] == 2


async def test_one_service_over_its_quota_gets_429_and_other_services_keep_correlating(http) -> None:
    async with running_collector(pipeline(max_calls=200, max_clients=1000)) as c:  # per service: 20 calls
        refused_at = None
        for n in range(100):  # bounded: the quota is 20
            sample = {"clientId": f"c{n}", "callId": f"call-{n}", "timestamp": T0}
            status, body = await post(c, http, {"clientSamples": [sample]}, service="greedy")
            if status == 429:
                assert body["error"] == "quota", body
                refused_at = n
                break
            assert status == 202, body
        assert refused_at == 20
        for n in range(5):  # more refusals are each counted once
            status, _ = await post(
                c, http, {"clientSamples": [{"clientId": f"x{n}", "callId": f"x{n}", "timestamp": T0}]}, "greedy"
            )
            assert status == 429
        assert c.telemetry.get("samples_refused").value("quota") == 6
        # an existing call of the greedy service still takes new samples and clients up to its quota
        status, _ = await post(
            c, http, {"clientSamples": [{"clientId": "c0", "callId": "call-0", "timestamp": T0 + 1}]}, "greedy"
        )
        assert status == 202
        status, _ = await post(c, http, {"clientSamples": [{"clientId": "polite", "callId": "p1", "timestamp": T0}]}, "polite")
        assert status == 202
        started = [r.payload for r in c.exporter().reports if r.payload.get("name") == "CALL_STARTED"]
        assert [p["serviceId"] for p in started].count("greedy") == 20
        assert any(p["serviceId"] == "polite" and p["callId"] == "p1" for p in started)


async def test_many_tiny_samples_from_one_service_do_not_stop_correlation_for_the_others() -> None:
    """100k new calls from one service (directly, as the receiver would hand them) against max_calls 1,000."""
    p, down = correlation(max_calls=1000)
    quota = 0
    for n in range(100_000):
        try:
            await p.consume(Batch(samples=[sample(f"c{n}", T0, call_id=f"call-{n}")]))
        except Refused as exc:
            assert exc.status == 429 and exc.reason == "quota"
            quota += 1
    assert quota == 100_000 - 100
    assert p.state_sizes()["calls"] == 100
    other = ClientSample(origin=Origin("other", "web", 0, "2"), client_id="o", timestamp=T0, call_id="o-call")
    await p.consume(Batch(samples=[other]))
    assert any(r.payload["name"] == "CALL_STARTED" and r.payload["serviceId"] == "other" for r in down.reports)


async def test_quality_reports_and_obfuscation_keep_nothing_of_a_refused_message() -> None:
    from webrtc_observer.processors.obfuscation import ObfuscationConfig, ObfuscationProcessor
    from webrtc_observer.processors.quality import QualityConfig, QualityProcessor
    from webrtc_observer.processors.reports import ReportsConfig, ReportsProcessor

    down = Downstream()
    settings = settings_for_tests("p", "processor")
    reports = ReportsProcessor(settings, ReportsConfig(), down)
    quality = QualityProcessor(settings, QualityConfig(), reports)
    obfuscation = ObfuscationProcessor(settings, ObfuscationConfig(salt="s3cret-salt"), quality)
    correlate = CorrelationProcessor(settings, CorrelationConfig(), obfuscation)
    track = audio(1, "pc", "t", stats={"roundTripTime": 0.05, "jitter": 0.01, "bytesSent": 1000})
    first = Batch(samples=[sample("alice", T0, user_id="u", outbound_tracks=[track])])

    def counted() -> tuple[float, float, float, int]:
        t = settings.telemetry
        rtt = sum(v.count for v in t.get("quality_round_trip_time").series().values())
        return t.get("obfuscated_values").value("p", "user_id"), rtt, sum(t.get("reports").samples().values()), quality.tracked

    before = counted()
    for error in (RetryLater("full"), Refused("bad", "no")):
        down.error = error
        with pytest.raises(type(error)):
            await correlate.consume(first)
        assert counted() == before
        assert correlate.state_sizes()["clients"] == 0
    down.error = None
    await correlate.consume(first)
    obfuscated, rtt, emitted, tracked = counted()
    assert (obfuscated, rtt, tracked) == (1, 1, 1) and emitted > 0
    assert {r.payload["name"] for r in down.reports if r.type == "CALL_EVENT"} >= {"CALL_STARTED", "CLIENT_JOINED"}


_HOSTILE: list[Any] = [None, 5, -1, 0, 2**31, 2**63, -(2**63) - 1, 2**70, 1.5, -0.0, 1e308, "", "x" * 300, "5", True]
_HOSTILE += [[], {}, [1, "a"], {"a": {"b": 1}}]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*path, i))
    return found


def _mutate(doc: Any, rng: Any) -> Any:
    import copy

    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(doc))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and rng.random() < 0.2:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(_HOSTILE))
    return doc


async def test_a_mutation_fuzz_through_the_processors_never_fails_and_never_breaks_a_call(
    http, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeded: about 1,500 mutated 2.x messages (client and SFU samples) against correlation, quality,
    reports. No processor fails (what the decoder lets through is refused with a reason or handled),
    every report is schema-valid (conftest), and a good client still correlates afterwards.

    (The receiver's own decoding failures are the hostile-input suite's business: here a 500 is allowed
    only when it did not come from a processor.)"""
    import random

    failures: list[BaseException] = []
    original = CorrelationProcessor.consume

    async def watched(self: CorrelationProcessor, batch: Batch) -> None:
        try:
            await original(self, batch)
        except (Refused, RetryLater):
            raise
        except Exception as exc:
            failures.append(exc)
            raise

    monkeypatch.setattr(CorrelationProcessor, "consume", watched)
    rng = random.Random(20261201)
    statuses: Counter[int] = Counter()
    async with running_collector(pipeline("[correlation, quality, reports]")) as c:
        for n in range(1500):
            ts = T0 + n * 1000
            base = {
                "clientSamples": [_samples.client_sample_v2(f"c-{n % 7}", ts=ts)],
                "sfuSamples": [_samples.sfu_sample_v2(ts=ts)],
            }
            status, _body = await post(c, http, _mutate(base, rng))
            statuses[status] += 1
            assert not failures, (n, failures)
        assert statuses[202] > 150 and statuses[400] > 100, statuses  # both kinds of case were exercised
        c.exporter().batches.clear()
        good = _samples.client_sample_v2("c-after", call_id="call-after", ts=T0)
        assert (await post(c, http, {"clientSamples": [good]}))[0] == 202
        assert names(c)["CALL_STARTED"] == 1 and names(c)["CLIENT_JOINED"] == 1


_SCALARS = [v for v in _HOSTILE if not isinstance(v, (list, dict))]


def _mutate_struct(value: Any, rng: Any) -> Any:
    """A copy of a decoded sample with one scalar, anywhere inside, replaced by a hostile scalar.

    The shape stays (lists stay lists, records stay records: the decoders build them); what a decoder
    may let through is a value of the wrong type or size, as ``customCallEvents: [{"name": 5}]`` was."""
    import msgspec

    if isinstance(value, msgspec.Struct):
        names = [f for f in value.__struct_fields__ if f != "origin"]
        name = rng.choice(names)
        return msgspec.structs.replace(value, **{name: _mutate_struct(getattr(value, name), rng)})
    if isinstance(value, list):
        if not value:
            return value
        i = rng.randrange(len(value))
        return [*value[:i], _mutate_struct(value[i], rng), *value[i + 1 :]]
    if isinstance(value, dict):
        if not value:
            return value
        key = rng.choice(list(value))
        return {**value, key: _mutate_struct(value[key], rng)}
    return rng.choice(_SCALARS)


async def test_processors_take_whatever_a_decoder_might_let_through(http) -> None:
    """Decoded samples with fields of any type or size, straight into correlation → quality → reports:
    each message is accepted with schema-valid reports or refused with a 400; nothing else escapes,
    and a refused message leaves the correlation tables as they were."""
    import random

    from tests.conftest import assert_valid_report
    from webrtc_observer.processors.quality import QualityConfig, QualityProcessor
    from webrtc_observer.processors.reports import ReportsConfig, ReportsProcessor

    async with running_collector(pipeline("[]")) as c:
        body = _samples.samples_v2(_samples.client_sample_v2("c-a"), _samples.client_sample_v2("c-b"))
        assert (await post(c, http, body))[0] == 202
        assert (await post(c, http, _samples.client_sample_v3("c-v3", "call-v3")))[0] == 202  # a 3.x sample
        seeds = c.exporter().samples
    assert len(seeds) == 4 and seeds[-1].origin.generation == "3"

    rng = random.Random(7)
    down = Downstream()
    settings = settings_for_tests("p", "processor")
    reports = ReportsProcessor(settings, ReportsConfig(), down)
    quality = QualityProcessor(settings, QualityConfig(), reports)
    p = CorrelationProcessor(settings, CorrelationConfig(), quality)
    outcomes: Counter[str] = Counter()
    for n in range(1500):
        seed = seeds[n % len(seeds)]
        mutated = seed
        for _ in range(rng.randint(1, 3)):
            mutated = _mutate_struct(mutated, rng)
        mutated = msgspec_replace_ts(mutated, T0 + n * 1000)
        before = state(p, times=False)
        try:
            await p.consume(Batch(samples=[mutated]))
        except Refused as exc:
            assert exc.status == 400, exc
            assert state(p, times=False) == before
            outcomes["refused"] += 1
            continue
        outcomes["accepted"] += 1
        for report in down.reports:
            assert_valid_report(report.type, report.payload)
        down.batches.clear()
    assert outcomes["accepted"] > 300 and outcomes["refused"] > 100, outcomes
    await p.consume(Batch(samples=[sample("after", T0, call_id="after-call")]))
    assert {r.payload["name"] for r in down.reports} >= {"CALL_STARTED", "CLIENT_JOINED"}


def msgspec_replace_ts(value: Any, ts: int) -> Any:
    """Keep samples in time order unless the mutation hit the timestamp itself."""
    import msgspec

    if type(value.timestamp) is int and value.timestamp == T0:
        return msgspec.structs.replace(value, timestamp=ts)
    return value
