"""Correlation state that moves with its partition: checkpoint, restore, stream time, deterministic ids.

A processor is fed a script of messages in one partition. At every step its changes are applied to a
store (latest value per key, tombstones drop keys), as a changelog would hold them; a fresh processor
restored from that store and fed the rest of the script must emit exactly what the original emits
(same report ids, same payloads) and end with the same tables.
"""

from __future__ import annotations

from typing import Any

from tests.test_atomic_samples import T0, correlation, sample, script, state
from webrtc_observer.model import Batch, Report
from webrtc_observer.state import LOCAL, decode

PARTITION = 3


def in_partition(batches: list[Batch], start: int = T0) -> list[Batch]:
    """The script as records of one partition: record time one second apart, then ticks that run
    stream time on until every client, call and SFU idled out."""
    out = [Batch(samples=b.samples, reports=b.reports, partition=PARTITION, time=start + i * 1000) for i, b in enumerate(batches)]
    last = start + len(batches) * 1000
    out += [Batch(partition=PARTITION, time=last + s * 1000) for s in (1, 5, 30, 61, 62, 125, 200)]
    return out


def apply(store: dict[bytes, bytes], changes: dict[bytes, bytes | None]) -> None:
    for key, value in changes.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


def reports(batches: list[Batch]) -> list[Report]:
    return [r for b in batches for r in b.reports]


OPTIONS: dict[str, Any] = {"client_idle_timeout": 60, "call_empty_timeout": 60, "sfu_idle_timeout": 60}


async def test_a_restored_processor_continues_exactly_where_the_checkpoint_was_taken() -> None:
    records = in_partition(script())
    reference, ref_down = correlation(**OPTIONS)
    for batch in records:
        await reference.consume(batch)
    want = [(r.id, r.type, r.payload) for r in ref_down.reports]
    names = [r.payload["name"] for r in ref_down.reports]
    assert names.count("CALL_STARTED") == 2 and names.count("CALL_ENDED") == 2 and "SFU_LEFT" in names, names
    assert not any(reference.state_sizes().values()), reference.state_sizes()

    for cut in range(1, len(records)):
        first, down = correlation(**OPTIONS)
        store: dict[bytes, bytes] = {}
        for i, batch in enumerate(records[:cut]):
            await first.consume(batch)
            if i % 2 == 0 or i == cut - 1:  # checkpoints now and then, always at the cut
                apply(store, first.changes(PARTITION))
        restored, restored_down = correlation(**OPTIONS)
        restored.assign(PARTITION, store)
        assert restored.state_sizes() == first.state_sizes(), f"cut {cut}"
        assert state(restored) == state(first), f"cut {cut}"
        for batch in records[cut:]:
            await restored.consume(batch)
        got = [(r.id, r.type, r.payload) for r in down.reports + restored_down.reports]
        assert got == want, f"cut {cut}"
        assert not any(restored.state_sizes().values()), (cut, restored.state_sizes())
        assert restored.changes(PARTITION) != {}, "the ended calls are tombstoned"


async def test_the_changelog_holds_one_entry_per_call_sfu_room_and_the_clock_and_tombstones_ended_ones() -> None:
    p, _ = correlation(**OPTIONS)
    records = in_partition(script())
    for batch in records[:3]:
        await p.consume(batch)
    first = {decode(k)[0]: decode(v) for k, v in p.changes(PARTITION).items() if v is not None}
    assert set(first) == {"call", "sfu", "room", "clock"}
    assert first["clock"] == records[2].time
    assert p.changes(PARTITION) == {}, "nothing changed since"
    for batch in records[3:]:
        await p.consume(batch)
    ended = p.changes(PARTITION)
    calls = [decode(k) for k, v in ended.items() if decode(k)[0] == "call"]
    assert calls and all(ended[k] is None for k in ended if decode(k)[0] in ("call", "sfu", "room"))


async def test_stream_time_alone_ends_clients_and_calls_in_a_partition() -> None:
    p, down = correlation(**OPTIONS)
    await p.consume(Batch(samples=[sample("alice", T0, room_id="r")], partition=0, time=T0))
    p.sweep(10**10)  # the wall-clock sweep is for LOCAL state only
    await p.consume(Batch(partition=0, time=T0 + 59_000))
    assert [r.payload["name"] for r in down.reports] == ["CALL_STARTED", "CLIENT_JOINED"]
    await p.consume(Batch(partition=0, time=T0 + 60_001))
    assert [r.payload["name"] for r in down.reports][-1] == "CLIENT_LEFT"
    await p.consume(Batch(partition=0, time=T0 + 120_002))
    assert [r.payload["name"] for r in down.reports][-1] == "CALL_ENDED"
    assert not any(p.state_sizes().values())


async def test_ids_derive_from_the_input_and_a_rejoin_gets_new_ones() -> None:
    def room_script() -> list[Batch]:
        return [
            Batch(samples=[sample("alice", T0, call_id=None, room_id="r")], partition=0, time=T0),
            Batch(samples=[sample("alice", T0 + 1000, call_id=None, room_id="r", closing=True)], partition=0, time=T0 + 1000),
            Batch(samples=[sample("alice", T0 + 2000, call_id=None, room_id="r")], partition=0, time=T0 + 2000),
        ]

    runs = []
    for _ in range(2):
        p, down = correlation(**OPTIONS)
        for batch in room_script():
            await p.consume(batch)
        runs.append([(r.id, r.payload["name"], r.payload["callId"]) for r in down.reports])
    assert runs[0] == runs[1], "the same input gives the same call ids and report ids"
    joined = [rid for rid, name, _ in runs[0] if name == "CLIENT_JOINED"]
    assert len(joined) == 2 and joined[0] != joined[1]
    ids = [rid for rid, _, _ in runs[0]]
    assert len(set(ids)) == len(ids), "two different reports never share an id"


async def test_revoke_forgets_a_partition_and_local_state_is_kept_apart() -> None:
    p, _ = correlation(**OPTIONS)
    await p.consume(Batch(samples=[sample("alice", T0, room_id="r")], partition=1, time=T0))
    await p.consume(Batch(samples=[sample("bob", T0, room_id="r")]))  # LOCAL: another room's state
    assert p.state_sizes()["calls"] == 2 and p.state_sizes()["services_with_calls"] == 1
    p.revoke(1)
    assert p.state_sizes()["calls"] == 1 and p.state_sizes()["clients"] == 1
    p.revoke(LOCAL)
    assert not any(p.state_sizes().values())


def test_a_report_id_is_the_rfc_4122_name_based_uuid_of_the_report() -> None:
    import hashlib
    import uuid

    import msgspec

    from webrtc_observer.model import REPORT_ID_NAMESPACE

    payload = {"callId": "c", "name": "CLIENT_JOINED", "timestamp": 1}
    report = Report(type="CALL_EVENT", payload=payload)
    body = msgspec.msgpack.Encoder(order="sorted").encode(("CALL_EVENT", "2.2.11", payload))
    want = uuid.UUID(bytes=hashlib.sha1(REPORT_ID_NAMESPACE.bytes + body).digest()[:16], version=5)
    assert report.id == str(want) and want.version == 5
    assert Report(type="CALL_EVENT", payload=dict(reversed(payload.items()))).id == report.id, "key order does not matter"
    assert Report(type="CALL_EVENT", payload={**payload, "timestamp": 2}).id != report.id
    decoded = msgspec.json.decode(msgspec.json.encode(report), type=Report)
    assert decoded.id == report.id


def test_a_report_id_is_the_uuid5_text_whatever_the_digest() -> None:
    """The id sets the version and variant digits on the digest's hex text: check every value of the
    digit the variant replaces, against ``uuid.UUID``."""
    import hashlib
    import uuid

    import msgspec

    from webrtc_observer.model import REPORT_ID_NAMESPACE, report_id

    encoder = msgspec.msgpack.Encoder(order="sorted")
    variant_digits = set()
    for i in range(200):
        payload = {"callId": "c", "timestamp": i}
        digest = hashlib.sha1(REPORT_ID_NAMESPACE.bytes + encoder.encode(("CALL_EVENT", "2.2.11", payload))).digest()
        variant_digits.add(digest[8] >> 4)
        assert report_id("CALL_EVENT", "2.2.11", payload) == str(uuid.UUID(bytes=digest[:16], version=5))
    assert variant_digits == set(range(16))


async def test_inbound_tracks_still_name_a_sender_that_left_moments_before() -> None:
    from tests.test_atomic_samples import audio

    p, down = correlation(**OPTIONS)
    alice_out = audio(11, "pa", "a-mic", sfu_stream_id="stream-a")
    await p.consume(Batch(samples=[sample("alice", T0, room_id="r", outbound_tracks=[alice_out])], partition=0, time=T0))
    await p.consume(Batch(samples=[sample("bob", T0, room_id="r", outbound_tracks=[audio(12, "pb", "b-mic")])], partition=0))
    await p.consume(Batch(samples=[sample("alice", T0 + 1000, room_id="r", closing=True)], partition=0))
    # bob's last samples, at hang-up: by SSRC (P2P) and by SFU stream id
    by_ssrc = audio(11, "pb", "b-in")
    by_stream = audio(99, "pb", "b-in-sfu", sfu_stream_id="stream-a")
    await p.consume(Batch(samples=[sample("bob", T0 + 1500, room_id="r", inbound_tracks=[by_ssrc, by_stream])], partition=0))
    inbound = down.batches[-1].samples[0].inbound_tracks
    assert [(t.remote_client_id, t.remote_track_id) for t in inbound] == [("alice", "a-mic"), ("alice", "a-mic")]
    await p.consume(Batch(partition=0, time=T0 + 100_000))  # bob idles out
    await p.consume(Batch(partition=0, time=T0 + 200_000))  # the call ends: nothing of alice is kept
    assert not any(p.state_sizes().values()), p.state_sizes()


async def test_calls_active_counts_calls_with_clients_and_calls_ending_the_rest() -> None:
    from tests.test_atomic_samples import Downstream
    from webrtc_observer.processors.correlation import CorrelationConfig, CorrelationProcessor
    from webrtc_observer.testing import settings_for_tests

    settings = settings_for_tests("correlation", "processor")
    p = CorrelationProcessor(settings, CorrelationConfig(**OPTIONS), Downstream())
    await p.consume(Batch(samples=[sample("alice", T0, room_id="r1", call_id=None)], partition=0, time=T0))
    await p.consume(Batch(samples=[sample("bob", T0, room_id="r2", call_id=None, closing=True)], partition=0))

    def gauge(name: str) -> float:
        metric = settings.telemetry.get(name)
        assert metric is not None
        return metric.total()

    assert (gauge("calls_active"), gauge("calls_ending")) == (1, 1)


async def test_a_partition_nobody_checkpoints_keeps_no_list_of_changes_and_its_first_checkpoint_has_everything() -> None:
    p, _ = correlation(**OPTIONS)
    for batch in script()[:3]:  # LOCAL input, as from HTTP
        await p.consume(batch)
    assert not p._parts[LOCAL].dirty
    first = {decode(k)[0] for k, v in p.changes(LOCAL).items() if v is not None}
    assert first == {"call", "sfu", "room"}  # (these samples carry no receive time: the clock is still 0)
    assert p.changes(LOCAL) == {}
    await p.consume(script()[3])
    assert {decode(k)[0] for k in p.changes(LOCAL)} >= {"call"}
