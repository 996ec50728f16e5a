"""The ``summary`` processor: one CALL_SUMMARY per ended call, from the quality numbers, the lifecycle
events and the issues of the batches it sees.

The unit tests feed hand-built batches (TrackQuality lists, CALL_EVENT and OBSERVER_EVENT reports,
client samples) to the processor alone; the end-to-end test runs a real collector with the load
generator and checks every ended call got exactly one summary naming all its clients.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict
from typing import Any

import pytest

from tests.conftest import assert_valid_report
from webrtc_observer import transaction
from webrtc_observer.component import RetryLater
from webrtc_observer.components import config_types
from webrtc_observer.config import ConfigError, load_text
from webrtc_observer.loadgen import Scenario, run
from webrtc_observer.model import Batch, ClientSample, Origin, Report, TrackQuality
from webrtc_observer.processors._report_schemas import build
from webrtc_observer.processors.summary import RTT_BOUNDS_MS, SummaryConfig, SummaryProcessor
from webrtc_observer.state import encode
from webrtc_observer.testing import running_collector, settings_for_tests
from webrtc_observer.testing import testing_factories as factories_for_tests

SVC, MU, CALL, ROOM = "svc", "mu", "call-1", "room-1"
T0 = 1_700_000_000_000
P = 2  # the partition of the unit tests: stream time is the batches' time


class Downstream:
    """The next stage: keeps what it took, or refuses while ``error`` is set."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.error: Exception | None = None

    async def consume(self, batch: Batch) -> None:
        if self.error is not None:
            raise self.error
        await transaction.after_commit(lambda: self.batches.append(batch))

    @property
    def reports(self) -> list[Report]:
        return [r for b in self.batches for r in b.reports]

    def summaries(self) -> list[Report]:
        return [r for r in self.reports if r.type == "OBSERVER_EVENT" and r.payload["name"] == "CALL_SUMMARY"]


def processor(**options: Any) -> tuple[SummaryProcessor, Downstream, Any]:
    settings = settings_for_tests("summary", "processor")
    config = SummaryConfig(**options)
    assert config.validate() == []
    down = Downstream()
    return SummaryProcessor(settings, config, down, clock=lambda: 0.0), down, settings.telemetry


def event(name: str, ts: int, client: str | None = None, user: str | None = None, call: str = CALL) -> Report:
    fields: dict[str, Any] = {"serviceId": SVC, "mediaUnitId": MU, "timestamp": ts, "callId": call, "roomId": ROOM, "name": name}
    if client is not None:
        fields |= {"clientId": client, "userId": user}
    payload = build("CALL_EVENT", fields)
    assert payload is not None
    return Report(type="CALL_EVENT", payload=payload)


def issue(issue_type: str, client: str, severity: str, ts: int, resolved: bool = False, call: str = CALL) -> Report:
    attachments = {"severity": severity, "values": {}, "startedAt": ts}
    fields = {
        "serviceId": SVC,
        "mediaUnitId": MU,
        "timestamp": ts,
        "callId": call,
        "roomId": ROOM,
        "clientId": client,
        "name": "CLIENT_ISSUE_RESOLVED" if resolved else "CLIENT_ISSUE",
        "value": issue_type,
        "message": f"{issue_type} on {client}",
        "attachments": json.dumps(attachments),
    }
    payload = build("OBSERVER_EVENT", fields)
    assert payload is not None
    return Report(type="OBSERVER_EVENT", payload=payload)


def quality(
    client: str, ts: int, direction: str = "inbound", kind: str = "audio", call: str = CALL, **values: Any
) -> TrackQuality:
    return TrackQuality(
        service_id=SVC, media_unit_id=MU, call_id=call, client_id=client, peer_connection_id="pc", ssrc=1,
        kind=kind, direction=direction, timestamp=ts, **values,  # type: ignore[arg-type]
    )  # fmt: skip


def sample(client: str, ts: int, call: str = CALL, **extra: Any) -> ClientSample:
    origin = Origin(service_id=SVC, media_unit_id=MU, received_at=ts, generation="2")
    return ClientSample(origin=origin, client_id=client, timestamp=ts, call_id=call, room_id=ROOM, correlated=True, **extra)


def batch(t: int, reports: list[Report] = (), quality: list[TrackQuality] = (), samples: list[Any] = ()) -> Batch:  # type: ignore[assignment]
    return Batch(samples=list(samples), reports=list(reports), quality=list(quality), partition=P, time=t)


def attachments(report: Report) -> dict[str, Any]:
    return json.loads(report.payload["attachments"])


def by_client(report: Report) -> dict[str, dict[str, Any]]:
    return {c["clientId"]: c for c in attachments(report)["clients"]}


def script() -> list[Batch]:
    """A call of two clients, alice and bob, 30 s long: quality, a rejoin, issues, TURN for bob."""
    s = 1000
    relay = {"id": "L1", "candidateType": "relay", "peerConnectionId": "pc"}
    pair = {"candidatePairId": "CP1", "localCandidateId": "L1", "peerConnectionId": "pc", "state": "succeeded", "nominated": True}
    return [
        batch(
            T0,
            [event("CALL_STARTED", T0), event("CLIENT_JOINED", T0, "alice", "ua")],
            [quality("alice", T0, rtt=0.05)],
            [sample("alice", T0, user_id="ua")],
        ),
        batch(
            T0 + 2 * s,
            [event("CLIENT_JOINED", T0 + 2 * s, "bob", "ub")],
            [quality("bob", T0 + 2 * s, rtt=0.1)],
            [sample("bob", T0 + 2 * s, user_id="ub", local_candidates=[relay])],
        ),
        batch(
            T0 + 5 * s,
            [issue("high_loss", "alice", "major", T0 + 5 * s)],
            [
                # alice: 10 % lost of 100 expected, MOS 4.0, jitter 10 ms; 9000 bytes of audio in, 8000 out
                quality(
                    "alice", T0 + 5 * s, rtt=0.05, jitter=0.01, fraction_lost=0.1, packets_delta=90, bytes_delta=9000, mos=4.0
                ),
                quality("alice", T0 + 5 * s, direction="outbound", rtt=0.06, bytes_delta=8000),
                quality("alice", T0 + 5 * s, kind="video", rtt=0.05, bytes_delta=50_000, mos=3.0),
                quality(
                    "bob", T0 + 5 * s, rtt=0.1, jitter=0.02, fraction_lost=0.0, packets_delta=100, bytes_delta=10_000, mos=4.4
                ),
            ],
            [sample("alice", T0 + 5 * s), sample("bob", T0 + 5 * s, candidate_pairs=[pair])],
        ),
        batch(T0 + 10 * s, [event("CLIENT_LEFT", T0 + 10 * s, "bob", "ub")], [quality("bob", T0 + 10 * s, rtt=0.9)]),
        batch(
            T0 + 15 * s,
            [issue("high_loss", "alice", "major", T0 + 15 * s, resolved=True), issue("low_mos", "alice", "minor", T0 + 15 * s)],
            [quality("alice", T0 + 15 * s, rtt=0.05, fraction_lost=1.0, packets_delta=0, mos=2.0)],  # all lost
        ),
        batch(T0 + 20 * s, [event("CLIENT_JOINED", T0 + 20 * s, "bob", "ub")], [quality("bob", T0 + 20 * s, rtt=0.1)]),
        batch(T0 + 24 * s, [event("CLIENT_LEFT", T0 + 24 * s, "bob", "ub")]),
        batch(
            T0 + 30 * s,
            [event("CLIENT_LEFT", T0 + 30 * s, "alice", "ua"), event("CALL_ENDED", T0 + 30 * s)],
            [quality("alice", T0 + 30 * s, rtt=0.05)],
        ),
    ]


async def feed(p: SummaryProcessor, batches: list[Batch]) -> None:
    for b in batches:
        await p.consume(b)


# -- accumulation ----------------------------------------------------------------------------------


async def test_a_call_gets_one_summary_right_after_its_end_with_every_number() -> None:
    p, down, telemetry = processor()
    await feed(p, script())
    [summary] = down.summaries()
    last = down.batches[-1].reports
    assert [r.payload["name"] for r in last] == ["CLIENT_LEFT", "CALL_ENDED", "CALL_SUMMARY"]
    assert_valid_report("OBSERVER_EVENT", summary.payload)
    payload = summary.payload
    assert (payload["callId"], payload["roomId"], payload["serviceId"], payload["mediaUnitId"]) == (CALL, ROOM, SVC, MU)
    assert payload["timestamp"] == T0 + 30_000
    assert "2 participants" in payload["message"]

    a = attachments(summary)
    assert set(a) == {"durationSeconds", "peakParticipants", "totalParticipants", "clients"}
    assert (a["durationSeconds"], a["peakParticipants"], a["totalParticipants"]) == (30.0, 2, 2)
    clients = by_client(summary)
    assert list(clients) == ["alice", "bob"]
    alice, bob = clients["alice"], clients["bob"]
    assert set(alice) == {
        "clientId", "userId", "secondsInCall", "mos", "lossPercent", "rtt", "jitterMs", "bytes", "turnUsed", "issues",
        "worstSeverity",
    }  # fmt: skip
    assert alice["userId"] == "ua" and bob["userId"] == "ub"
    assert alice["secondsInCall"] == 30.0
    assert bob["secondsInCall"] == 8.0 + 4.0  # joined at 2 s, left at 10 s; again from 20 s to 24 s
    assert alice["mos"] == {"mean": 3.0, "min": 2.0}  # 4.0, 3.0 (video) and 2.0
    assert bob["mos"] == {"mean": 4.4, "min": 4.4}
    # alice: 10 of 100 lost, then an interval that lost everything counts as her mean (100): 110 of 200
    assert alice["lossPercent"] == 55.0
    assert bob["lossPercent"] == 0.0
    assert alice["rtt"]["meanMs"] == round((50 * 5 + 60) / 6, 1)
    assert alice["rtt"]["p95Ms"] <= 60.0 and alice["rtt"]["p95Ms"] >= 50.0
    assert bob["rtt"]["meanMs"] == 300.0  # 100, 100, 900, 100
    assert 750 < bob["rtt"]["p95Ms"] <= 900  # in the 750–1000 bucket, capped at the largest seen
    assert alice["jitterMs"] == 10.0 and bob["jitterMs"] == 20.0
    assert alice["bytes"] == {"audio": {"sent": 8000, "received": 9000}, "video": {"sent": 0, "received": 50_000}}
    assert bob["bytes"] == {"audio": {"sent": 0, "received": 10_000}, "video": {"sent": 0, "received": 0}}
    assert alice["turnUsed"] is False and bob["turnUsed"] is True
    assert alice["issues"] == {"high_loss": 1, "low_mos": 1} and alice["worstSeverity"] == "major"
    assert bob["issues"] == {} and bob["worstSeverity"] is None

    assert p.calls == 0
    assert telemetry.get("call_mos").series()[(SVC,)].count == 1
    assert telemetry.get("call_mos").series()[(SVC,)].sum == pytest.approx((4.0 + 3.0 + 2.0 + 4.4) / 4)
    assert telemetry.get("calls_with_issues").value(SVC) == 1


async def test_a_client_without_measurements_has_nulls_and_an_info_issue_is_not_a_call_with_issues() -> None:
    p, down, telemetry = processor()
    await feed(
        p,
        [
            batch(T0, [event("CALL_STARTED", T0), event("CLIENT_JOINED", T0, "carol")]),
            batch(T0 + 1000, [issue("turn_relay", "carol", "info", T0 + 1000)]),
            batch(T0 + 4000, [event("CLIENT_LEFT", T0 + 4000, "carol"), event("CALL_ENDED", T0 + 4000)]),
        ],
    )
    [summary] = down.summaries()
    assert_valid_report("OBSERVER_EVENT", summary.payload)
    carol = by_client(summary)["carol"]
    assert carol["mos"] == {"mean": None, "min": None} and carol["rtt"] == {"meanMs": None, "p95Ms": None}
    assert carol["lossPercent"] is None and carol["jitterMs"] is None and carol["userId"] is None
    assert carol["issues"] == {"turn_relay": 1} and carol["worstSeverity"] == "info"
    assert carol["secondsInCall"] == 4.0
    assert telemetry.get("calls_with_issues").value(SVC) == 0
    assert (SVC,) not in telemetry.get("call_mos").series()  # no MOS measured: no observation


async def test_data_before_the_lifecycle_events_and_an_issue_after_the_end_in_the_same_batch() -> None:
    p, down, _ = processor()
    # The quality comes first in a batch, its CALL_STARTED/CLIENT_JOINED after; the issues processor
    # may append its reports after CALL_ENDED.
    await feed(
        p,
        [
            batch(
                T0, [event("CALL_STARTED", T0 - 500), event("CLIENT_JOINED", T0 - 500, "dave")], [quality("dave", T0, mos=4.0)]
            ),
            batch(
                T0 + 6000,
                [
                    event("CLIENT_LEFT", T0 + 6000, "dave"),
                    event("CALL_ENDED", T0 + 6000),
                    issue("client_lost", "dave", "critical", T0 + 6000),
                ],
                [quality("dave", T0 + 6000, mos=3.0)],
            ),
        ],
    )
    [summary] = down.summaries()
    reports = down.batches[-1].reports
    assert [r.payload["name"] for r in reports] == ["CLIENT_LEFT", "CALL_ENDED", "CALL_SUMMARY", "CLIENT_ISSUE"]
    a = attachments(summary)
    assert a["durationSeconds"] == 6.5 and a["peakParticipants"] == 1
    dave = by_client(summary)["dave"]
    assert dave["secondsInCall"] == 6.5 and dave["mos"] == {"mean": 3.5, "min": 3.0}
    assert dave["issues"] == {"client_lost": 1} and dave["worstSeverity"] == "critical"


async def test_peak_participants_counts_clients_at_once_and_total_counts_each_client_once() -> None:
    p, down, _ = processor()
    await feed(
        p,
        [
            batch(T0, [event("CALL_STARTED", T0), event("CLIENT_JOINED", T0, "a"), event("CLIENT_JOINED", T0, "b")]),
            batch(T0 + 1000, [event("CLIENT_LEFT", T0 + 1000, "a"), event("CLIENT_JOINED", T0 + 1000, "c")]),
            batch(T0 + 2000, [event("CLIENT_JOINED", T0 + 2000, "a")]),  # a rejoins: three at once now
            batch(T0 + 3000, [event(n, T0 + 3000, c) for c in "abc" for n in ["CLIENT_LEFT"]] + [event("CALL_ENDED", T0 + 3000)]),
        ],
    )
    [summary] = down.summaries()
    a = attachments(summary)
    assert (a["peakParticipants"], a["totalParticipants"]) == (3, 3)
    assert {c: v["secondsInCall"] for c, v in by_client(summary).items()} == {"a": 2.0, "b": 3.0, "c": 2.0}


async def test_turn_is_used_only_when_a_used_pair_has_a_relay_local_candidate() -> None:
    p, down, _ = processor()
    relay = {"id": "R", "candidateType": "relay", "peerConnectionId": "pc"}
    host = {"id": "H", "candidateType": "host", "peerConnectionId": "pc"}
    pair_h = {"candidatePairId": "P1", "localCandidateId": "H", "peerConnectionId": "pc", "state": "succeeded", "nominated": True}
    pair_r_unused = {"candidatePairId": "P2", "localCandidateId": "R", "peerConnectionId": "pc", "state": "waiting"}
    selected_r = {"peerConnectionId": "pc", "selectedCandidatePairId": "P3"}
    pair_r = {"candidatePairId": "P3", "localCandidateId": "R", "peerConnectionId": "pc", "state": "succeeded"}
    await feed(
        p,
        [
            batch(T0, [event("CALL_STARTED", T0), *(event("CLIENT_JOINED", T0, c) for c in ("direct", "relayed"))]),
            batch(
                T0 + 1000,
                samples=[
                    sample("direct", T0 + 1000, local_candidates=[host, relay], candidate_pairs=[pair_h, pair_r_unused]),
                    sample("relayed", T0 + 1000, local_candidates=[relay]),
                ],
            ),
            # later samples carry no candidates: the relay id announced before is remembered
            batch(T0 + 2000, samples=[sample("relayed", T0 + 2000, transports=[selected_r], candidate_pairs=[pair_r])]),
            batch(T0 + 3000, [event("CALL_ENDED", T0 + 3000)]),
        ],
    )
    [summary] = down.summaries()
    clients = by_client(summary)
    assert clients["direct"]["turnUsed"] is False and clients["relayed"]["turnUsed"] is True
    assert clients["relayed"]["secondsInCall"] == 3.0  # still in at CALL_ENDED: counted until then


def test_the_rtt_percentile_comes_from_fixed_buckets() -> None:
    assert list(RTT_BOUNDS_MS) == sorted(RTT_BOUNDS_MS)


def test_a_clients_rtt_counts_are_packed_stop_at_their_maximum_and_checkpoint_as_numbers() -> None:
    from webrtc_observer.processors import summary

    client = summary._Client("u")
    assert sys.getsizeof(client.rtt_hist) <= 200, "30 counts of 4 bytes (a list of them took 296)"
    client.rtt_hist[0] = 2**32 - 2
    for _ in range(3):
        summary._accumulate(client, quality("alice", T0, rtt=0.001))  # 1 ms: the first bucket
    assert client.rtt_hist[0] == 2**32 - 1 and client.rtt_n == 3
    dumped = summary._dump_client("alice", client)
    assert dumped[15] == [2**32 - 1] + [0] * len(RTT_BOUNDS_MS)
    _, restored = summary._load_client(json.loads(json.dumps(dumped)))
    assert restored.rtt_hist == client.rtt_hist


async def test_a_clients_byte_counts_stop_at_64_bits_whatever_it_claims() -> None:
    p, down, _ = processor()
    huge = 2**70  # a client may claim any counter; the delta quality reports is as big
    await feed(
        p,
        [
            batch(T0, [event("CALL_STARTED", T0), event("CLIENT_JOINED", T0, "alice")]),
            batch(T0 + 1000, quality=[quality("alice", T0 + 1000, bytes_delta=huge), quality("alice", T0 + 1000, bytes_delta=5)]),
            batch(T0 + 2000, quality=[quality("alice", T0 + 2000, kind="video", direction="outbound", bytes_delta=7)]),
            batch(T0 + 3000, [event("CALL_ENDED", T0 + 3000)]),
        ],
    )
    [summary] = down.summaries()
    assert_valid_report("OBSERVER_EVENT", summary.payload)
    assert by_client(summary)["alice"]["bytes"] == {
        "audio": {"sent": 0, "received": 2**63 - 1},
        "video": {"sent": 7, "received": 0},
    }


def test_a_clients_candidate_ids_are_shared_by_its_copies_and_checkpoint_as_lists() -> None:
    from webrtc_observer.processors import summary

    client = summary._Client("u")
    assert client.relay_ids == () and client.used_locals == (), "no list of its own for a client without any"
    summary._turn(client, sample("alice", T0, local_candidates=[{"id": "R", "candidateType": "relay"}]))
    assert client.relay_ids == ("R",) and not client.turn
    copy = client.clone()
    assert copy.relay_ids is client.relay_ids
    summary._turn(copy, sample("alice", T0, local_candidates=[{"id": "R2", "candidateType": "relay"}]))
    assert client.relay_ids == ("R",) and copy.relay_ids == ("R", "R2"), "a copy's change leaves the original as it was"
    dumped = json.loads(json.dumps(summary._dump_client("alice", copy)))
    assert dumped[18:22] == [[0, 0, 0, 0], False, ["R", "R2"], []]
    _, restored = summary._load_client(dumped)
    assert restored.relay_ids == ("R", "R2") and restored.used_locals == () and restored.bytes.tolist() == [0, 0, 0, 0]


# -- bounds ------------------------------------------------------------------------------------------


async def test_calls_and_clients_past_their_caps_are_counted_and_idle_calls_forgotten() -> None:
    p, down, telemetry = processor(max_calls=1, max_clients_per_call=1, call_idle_timeout=60)
    await feed(
        p,
        [
            batch(T0, [event("CALL_STARTED", T0), event("CLIENT_JOINED", T0, "a"), event("CLIENT_JOINED", T0, "b")]),
            batch(T0 + 1000, [event("CALL_STARTED", T0 + 1000, call="other")], [quality("x", T0 + 1000, call="other", mos=4.0)]),
            batch(T0 + 2000, [event("CLIENT_LEFT", T0 + 2000, "b"), event("CLIENT_JOINED", T0 + 2000, "c")]),
            batch(T0 + 3000, [event("CALL_ENDED", T0 + 3000, call="other")]),  # not tracked: no summary
        ],
    )
    dropped = telemetry.get("summary_dropped")
    assert dropped.value("summary", "max_calls") == 1 and dropped.value("summary", "max_clients") == 2
    assert p.calls == 1 and not down.summaries()
    await p.consume(batch(T0 + 4000, [event("CALL_ENDED", T0 + 4000)]))
    [summary] = down.summaries()
    a = attachments(summary)
    assert [c["clientId"] for c in a["clients"]] == ["a"]
    assert (a["totalParticipants"], a["peakParticipants"], a["untrackedClients"]) == (3, 2, 2)
    assert_valid_report("OBSERVER_EVENT", summary.payload)

    await p.consume(batch(T0 + 5000, [event("CALL_STARTED", T0 + 5000, call="lost-end")]))
    await p.consume(batch(T0 + 5000 + 59_000))
    assert p.calls == 1
    await p.consume(batch(T0 + 5000 + 60_000))  # a tick: the call whose end never came is forgotten
    assert p.calls == 0 and dropped.value("summary", "idle") == 1


def test_config_is_checked_and_the_pipeline_order_too() -> None:
    assert {path for path, _ in SummaryConfig(max_calls=0, max_clients_per_call=-1, call_idle_timeout=0).validate()} == {
        "max_calls",
        "max_clients_per_call",
        "call_idle_timeout",
    }
    types = config_types(factories_for_tests())

    def yaml(processors: str) -> str:
        return f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors: {{correlation: {{}}, quality: {{}}, summary: {{max_clients_per_call: 50, call_idle_timeout: 10m}}}}
exporters: {{recording: {{}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: [{processors}], exporters: [recording]}}}}}}
"""

    loaded = load_text(yaml("correlation, quality, summary"), types)
    [options] = [o for cid, o in loaded.components["processors"].items() if cid.type == "summary"]
    assert (options.max_clients_per_call, options.call_idle_timeout) == (50, 600.0)
    with pytest.raises(ConfigError) as err:
        load_text(yaml("correlation, summary, quality"), types)
    assert [i.path for i in err.value.issues] == ["service.pipelines.p.processors[1]"]
    assert "needs a quality processor before it" in err.value.issues[0].message


# -- state: refused messages, checkpoints --------------------------------------------------------------


def dump(p: SummaryProcessor) -> Any:
    """Everything the processor keeps, as builtins (its own changelog form, with every call)."""
    from webrtc_observer.processors import summary

    return {
        partition: (part.clock, [summary._dump_call(call) for call in part.calls.values()])
        for partition, part in sorted(p._parts.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
        if part.clock or part.calls  # an empty table made for a partition on its first message is no state
    }


async def test_a_refused_message_leaves_no_trace_and_its_retry_gives_the_same_summary() -> None:
    records = script()
    reference, ref_down, _ = processor()
    await feed(reference, records)
    [want] = ref_down.summaries()

    for refused_at in range(len(records)):
        p, down, telemetry = processor()
        await feed(p, records[:refused_at])
        before = dump(p)
        down.error = RetryLater("downstream full", retry_after=1)
        with pytest.raises(RetryLater):
            await p.consume(records[refused_at])
        assert dump(p) == before, f"refused at {refused_at}"
        assert telemetry.get("call_mos").series() == {} and telemetry.get("calls_with_issues").value(SVC) == 0
        down.error = None
        await feed(p, records[refused_at:])
        [got] = down.summaries()
        assert (got.id, got.payload) == (want.id, want.payload), f"refused at {refused_at}"
        assert telemetry.get("call_mos").series()[(SVC,)].count == 1


async def test_a_sibling_refusing_after_consume_returned_also_undoes_it() -> None:
    p, down, _ = processor()
    records = script()
    await feed(p, records[:-1])
    before = dump(p)

    class Sibling:
        async def consume(self, b: Batch) -> None:
            await p.consume(b)
            raise RetryLater("a sibling pipeline is full", retry_after=1)

    with pytest.raises(RetryLater):
        await transaction.run(Sibling(), records[-1])
    assert dump(p) == before and p.calls == 1 and not down.summaries()


_CLOCK = encode(("clock", "", ""))


def apply(store: dict[bytes, bytes], changes: dict[bytes, bytes | None]) -> None:
    for key, value in changes.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


async def test_a_restored_processor_gives_the_same_summary_from_any_checkpoint() -> None:
    records = script()
    reference, ref_down, _ = processor()
    await feed(reference, records)
    [want] = ref_down.summaries()
    for cut in range(1, len(records)):
        first, down, _ = processor()
        store: dict[bytes, bytes] = {}
        for i, b in enumerate(records[:cut]):
            await first.consume(b)
            if i % 2 == 0 or i == cut - 1:
                apply(store, first.changes(P))
        restored, restored_down, _ = processor()
        restored.assign(P, store)
        assert dump(restored) == dump(first), f"cut {cut}"
        await feed(restored, records[cut:])
        [got] = down.summaries() + restored_down.summaries()
        assert (got.id, got.payload) == (want.id, want.payload), f"cut {cut}"
        assert restored.calls == 0
        final = restored.changes(P)
        assert all(final[key] is None for key in store if key != _CLOCK), f"cut {cut}"  # the call is tombstoned
    first.revoke(P)
    assert first.calls == 0


async def test_the_changelog_holds_one_entry_per_call_and_the_clock() -> None:
    from webrtc_observer.state import decode

    p, _, _ = processor()
    records = script()
    await feed(p, records[:2])
    entries = {tuple(decode(k)): v for k, v in p.changes(P).items()}
    assert set(entries) == {("call", SVC, CALL), ("clock", "", "")}
    assert decode(entries[("clock", "", "")]) == records[1].time
    assert p.changes(P) == {}  # nothing changed since
    await feed(p, records[2:])
    ended = {tuple(decode(k)): v for k, v in p.changes(P).items()}
    assert ended[("call", SVC, CALL)] is None  # the call ended: a tombstone
    assert decode(ended[("clock", "", "")]) == records[-1].time


# -- end to end ------------------------------------------------------------------------------------


def _pipeline() -> str:
    from webrtc_observer.components import builtin_factories

    issues = ", issues" if "issues" in builtin_factories()["processors"] else ""
    return f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors:
  correlation: {{client_idle_timeout: 1500ms, call_empty_timeout: 300ms, sfu_idle_timeout: 1500ms, sweep_interval: 50ms}}
  quality: {{}}
  {"issues: {}" if issues else ""}
  summary: {{}}
exporters: {{recording: {{}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: [correlation, quality{issues}, summary], exporters: [recording]}}}}}}
"""


async def test_every_ended_call_of_the_load_generator_has_exactly_one_summary_with_all_its_clients() -> None:
    sc = Scenario(
        calls=4, clients_per_call=3, topology="mixed", schema="mixed", impairments=["loss=0.1@0.3"], interval=0.2,
        duration=1.6, seed=11,
    )  # fmt: skip
    issues_detected = ", issues" in _pipeline()
    async with running_collector(_pipeline()) as c:
        result = await run(sc, c.url(), realtime=False, concurrency=4)
        assert result.ok
        assert sum("loss" in cl.impairments for cl in sc.clients) >= 2
        rec = c.exporter()

        def ended() -> list[Report]:
            return [r for r in rec.reports if r.type == "CALL_EVENT" and r.payload["name"] == "CALL_ENDED"]

        deadline = asyncio.get_running_loop().time() + 20
        while len(ended()) < len(sc.calls):
            assert asyncio.get_running_loop().time() < deadline, "not every call ended"
            await asyncio.sleep(0.05)
        reports = rec.reports
        summaries = defaultdict(list)
        for i, r in enumerate(reports):
            if r.type == "OBSERVER_EVENT" and r.payload["name"] == "CALL_SUMMARY":
                summaries[r.payload["callId"]].append(r)
                before = reports[i - 1]
                assert before.payload["name"] == "CALL_ENDED" and before.payload["callId"] == r.payload["callId"]
        measured = any(b.quality for b in rec.batches)  # the quality processor hands its numbers on
        raised: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in reports:
            if r.type == "OBSERVER_EVENT" and r.payload["name"] == "CLIENT_ISSUE":
                raised[r.payload["callId"], r.payload["clientId"]][r.payload["value"]] += 1
        for call in sc.calls:
            [summary] = summaries[call.call_id]
            assert_valid_report("OBSERVER_EVENT", summary.payload)
            a = attachments(summary)
            clients = by_client(summary)
            assert set(clients) == {cl.client_id for cl in call.clients}, call
            assert a["totalParticipants"] == len(call.clients) and 1 <= a["peakParticipants"] <= len(call.clients)
            assert a["durationSeconds"] > 0
            for cl in call.clients:
                mine = clients[cl.client_id]
                assert mine["userId"] == cl.user_id and mine["secondsInCall"] > 0
                assert mine["turnUsed"] is False  # the load generator's candidates are srflx and host
                assert mine["issues"] == dict(raised[call.call_id, cl.client_id]), (cl, mine)  # every issue raised
                if "loss" in cl.impairments and issues_detected:
                    assert mine["issues"].get("high_loss", 0) >= 1 and mine["worstSeverity"] is not None, (cl, mine)
                if measured:  # the summary holds the quality processor's numbers
                    assert mine["rtt"]["meanMs"] is not None and mine["jitterMs"] is not None, (cl, mine)
                    if cl.generation != "legacy":
                        received = mine["bytes"]["audio"]["received"] + mine["bytes"]["video"]["received"]
                        assert received > 0 and mine["mos"]["mean"] is not None and mine["lossPercent"] is not None, (cl, mine)
        assert c.telemetry.get("call_summaries").value("summary") == len(sc.calls)
        assert sum(v.count for v in c.telemetry.get("call_mos").series().values()) == (len(sc.calls) if measured else 0)


# -- a restart through the local checkpoint, with the real processors around it ----------------------


def _chain() -> tuple[Any, list[tuple[str, Any]], Downstream]:
    """correlation → quality → summary → Downstream, as the default pipeline chains them."""
    from webrtc_observer.processors.correlation import CorrelationConfig, CorrelationProcessor
    from webrtc_observer.processors.quality import QualityConfig, QualityProcessor

    down = Downstream()
    summary = SummaryProcessor(settings_for_tests("summary", "processor"), SummaryConfig(), down)
    quality = QualityProcessor(settings_for_tests("quality", "processor"), QualityConfig(), summary)
    correlation = CorrelationProcessor(settings_for_tests("correlation", "processor"), CorrelationConfig(), quality)
    return correlation, [("p/correlation", correlation), ("p/quality", quality), ("p/summary", summary)], down


def _measured_sample(client: str, peer: str, ssrc_out: int, ssrc_in: int, step: int, closing: bool = False) -> ClientSample:
    from webrtc_observer.model import Track

    now = int(__import__("time").time() * 1000)
    origin = Origin(service_id=SVC, media_unit_id=MU, received_at=now, generation="2")
    inbound = Track(
        kind="audio", ssrc=ssrc_in, peer_connection_id=f"pc-{client}", track_id=f"in-{client}",
        stats={
            "bytesReceived": 4000 * step, "packetsReceived": 50 * step - step, "packetsLost": step,
            "jitter": 0.004 + 0.001 * (step % 3), "roundTripTime": 0.04 + 0.01 * (step % 2),
        },
    )  # fmt: skip
    outbound = Track(
        kind="audio", ssrc=ssrc_out, peer_connection_id=f"pc-{client}", track_id=f"out-{client}",
        stats={"bytesSent": 4100 * step, "packetsSent": 50 * step, "roundTripTime": 0.05},
    )  # fmt: skip
    return ClientSample(
        origin=origin, client_id=client, timestamp=T0 + step * 1000, call_id=CALL, room_id=ROOM, user_id=f"user-{client}",
        inbound_tracks=[inbound], outbound_tracks=[outbound], closing=closing,
    )  # fmt: skip


def _steps(last: int) -> list[Batch]:
    return [
        Batch(
            samples=[
                _measured_sample("alice", "bob", 11, 22, step, closing=step == last),
                _measured_sample("bob", "alice", 22, 11, step, closing=step == last),
            ]
        )
        for step in range(1, last + 1)
    ]


async def test_a_collector_restarted_from_its_local_checkpoint_gives_the_summary_it_would_have_given(tmp_path) -> None:
    from webrtc_observer.component import Worker
    from webrtc_observer.logs import get_logger
    from webrtc_observer.state_store import LocalCheckpoint, LocalStore
    from webrtc_observer.telemetry import Telemetry

    steps = _steps(8)

    async def end(correlation: Any) -> None:  # every client left: the call ends call_empty_timeout later
        await correlation._sweep_and_deliver(__import__("time").time() + 3600)

    reference, _, ref_down = _chain()
    for b in steps:
        await reference.consume(b)
    await end(reference)
    [want] = ref_down.summaries()
    alice = by_client(want)["alice"]
    assert alice["secondsInCall"] == 7.0 and alice["mos"]["mean"] is not None and alice["lossPercent"] == 2.0
    assert alice["bytes"]["audio"] == {"sent": 4100 * 7, "received": 4000 * 7}  # the deltas after the first sample

    def cycle(processors: list[tuple[str, Any]]) -> LocalCheckpoint:
        return LocalCheckpoint(
            LocalStore(tmp_path, Worker(0, 1)), processors, interval=3600, flush=_no_flush, flush_timeout=1.0,
            telemetry=Telemetry(), log=get_logger(),
        )  # fmt: skip

    first, processors, down = _chain()
    checkpoints = cycle(processors)
    await checkpoints.start()
    for b in steps[:4]:
        await first.consume(b)
    assert await checkpoints.checkpoint()
    checkpoints.store.unlock()  # the process dies here: no shutdown, no last checkpoint

    second, processors, down_after = _chain()
    resumed = cycle(processors)
    await resumed.start()
    try:
        for b in steps[4:]:
            await second.consume(b)
        await end(second)
    finally:
        await resumed.shutdown()
    [got] = down.summaries() + down_after.summaries()
    assert attachments(got) == attachments(want)
    assert (got.id, got.payload) == (want.id, want.payload)


async def _no_flush(timeout: float) -> None:
    pass
