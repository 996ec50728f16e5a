"""What the live view keeps per client: each id's text once, bounded lists in arrival order."""

from __future__ import annotations

import sys

from tests.test_liveview import SERVICE, T0, event, measured
from webrtc_observer.exporters.liveview import LiveView, LiveViewConfig
from webrtc_observer.model import Batch


def fresh(text: str) -> str:
    """``text`` as a new string object (as each decoded sample brings its ids)."""
    return "".join(list(text))


def test_ids_that_come_again_in_later_samples_are_kept_as_one_string() -> None:
    view = LiveView(LiveViewConfig())
    view.update(Batch(reports=[event("CALL_STARTED", "call-1"), event("CLIENT_JOINED", "call-1", "alice", user="u-a")]))
    for ts in (T0 + 1, T0 + 2):
        client, pc = fresh("alice"), fresh("pc-alice")
        q = measured("call-1", client, ts, peer_connection_id=pc, track_id=fresh("track-1"), rtt=0.05, frame_width=None)
        report = event("MEDIA_TRACK_ADDED", "call-1", client, ts, peerConnectionId=pc, mediaTrackId=fresh("track-1"))
        view.update(Batch(reports=[report], quality=[q]))
    call = view._calls[(SERVICE, "call-1")]
    kept = [value for value in call.events.texts if isinstance(value, str)]
    assert all(value is sys.intern(value) for value in kept)
    (track,) = call.clients["alice"].tracks.values()
    assert track.peer_connection_id is sys.intern("pc-alice") and track.track_id is sys.intern("track-1")
    detail = view.call(SERVICE, "call-1")
    assert detail is not None
    (shown,) = detail["clients"][0]["tracks"]
    assert shown["rttMs"] == 50.0 and shown["width"] is None and shown["trackId"] == "track-1"


def test_a_calls_events_keep_their_numbers_packed_not_the_reports_integers() -> None:
    view = LiveView(LiveViewConfig())
    view.update(Batch(reports=[event("CALL_STARTED", "call-1"), event("CLIENT_JOINED", "call-1", "alice")]))
    ts, ssrc = T0 + int("1000001"), int("3000000001")  # integers of their own, as decoded samples bring
    refs = sys.getrefcount(ssrc)
    added = event("MEDIA_TRACK_ADDED", "call-1", "alice", ts, peerConnectionId="pc", mediaTrackId="t-1", SSRC=ssrc)
    unknown = event("MEDIA_TRACK_REMOVED", "call-1", "alice", T0 + 2, peerConnectionId="pc", mediaTrackId="t-2")
    payload_refs = sys.getrefcount(ssrc)
    view.update(Batch(reports=[added, unknown]))
    assert sys.getrefcount(ssrc) == payload_refs > refs  # the view kept no reference to the report's SSRC
    detail = view.call(SERVICE, "call-1")
    assert detail is not None
    assert [(e["name"], e["timestamp"], e.get("trackId"), e.get("ssrc")) for e in detail["events"]] == [
        ("CALL_STARTED", T0, None, None),
        ("CLIENT_JOINED", T0, None, None),
        ("MEDIA_TRACK_ADDED", ts, "t-1", ssrc),
        ("MEDIA_TRACK_REMOVED", T0 + 2, "t-2", None),
    ]
    assert "trackId" not in detail["events"][1] and "ssrc" not in detail["events"][1]


def test_a_clients_events_share_who_sent_them_and_each_still_shows_its_own() -> None:
    view = LiveView(LiveViewConfig())
    reports = [event("CALL_STARTED", "call-1"), event("CLIENT_JOINED", "call-1", "alice", user="u-a")]
    reports += [event("MEDIA_TRACK_ADDED", "call-1", "alice", T0 + i, user="u-a", mediaTrackId=f"t-{i}") for i in (1, 2)]
    reports += [
        event("CLIENT_JOINED", "call-1", "bob", T0 + 3),
        event("MEDIA_TRACK_ADDED", "call-1", "alice", T0 + 4, user="u-b"),
    ]
    view.update(Batch(reports=reports))
    view.update(Batch(reports=[event("MEDIA_TRACK_ADDED", "call-1", "alice", T0 + 5, user="u-a")]))
    events = view._calls[(SERVICE, "call-1")].events
    texts_per_event = len(events.texts) // len(events)
    whos = [events.texts[i * texts_per_event + 1] for i in range(len(events))]
    assert texts_per_event == 4, "name, who, peer connection, track: room, client and user as one tuple"
    assert whos[1] is whos[2] is whos[3] is whos[6], "alice's events with the same user share one tuple"
    assert whos[4] is not whos[1] and whos[5] is not whos[1]
    detail = view.call(SERVICE, "call-1")
    assert detail is not None
    assert [(e["clientId"], e["userId"], e.get("trackId")) for e in detail["events"]] == [
        (None, None, None),
        ("alice", "u-a", None),
        ("alice", "u-a", "t-1"),
        ("alice", "u-a", "t-2"),
        ("bob", None, None),
        ("alice", "u-b", None),
        ("alice", "u-a", None),
    ]


def test_a_calls_events_and_departed_clients_keep_the_last_ones_in_order() -> None:
    view = LiveView(LiveViewConfig(max_call_events=3, max_clients_per_call=2))
    view.update(Batch(reports=[event("CALL_STARTED", "call-1"), *(event("CLIENT_JOINED", "call-1", p) for p in "ab")]))
    for i, (name, client) in enumerate(
        [("CLIENT_LEFT", "a"), ("CLIENT_JOINED", "c"), ("CLIENT_LEFT", "b"), ("CLIENT_LEFT", "c")]
    ):
        view.update(Batch(reports=[event(name, "call-1", client, T0 + i)]))
    detail = view.call(SERVICE, "call-1")
    assert detail is not None
    assert [(e["name"], e["clientId"]) for e in detail["events"]] == [
        ("CLIENT_JOINED", "c"),
        ("CLIENT_LEFT", "b"),
        ("CLIENT_LEFT", "c"),
    ]
    assert [c["clientId"] for c in detail["departed"]] == ["b", "c"]


async def test_a_call_page_shows_each_kept_event_whole_with_the_calls_ids(http) -> None:
    from tests.test_liveview import feed, get
    from webrtc_observer.testing import running_collector

    config = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
exporters: {liveview: {endpoint: "127.0.0.1:0", max_call_events: 4}}
service: {pipelines: {p: {receivers: [observertc], exporters: [liveview]}}}
"""
    async with running_collector(config) as c:
        await feed(
            c,
            event("CALL_STARTED", "c1", roomId="room-1"),
            event("CLIENT_JOINED", "c1", "alice", T0 + 1, user="u-a", roomId="room-1"),
            event("PEER_CONNECTION_OPENED", "c1", "alice", T0 + 2, peerConnectionId="pc-a"),
            event("MEDIA_TRACK_ADDED", "c1", "alice", T0 + 3, peerConnectionId="pc-a", mediaTrackId="t-1", SSRC=1234),
            event("CLIENT_JOINED", "c1", "bob", T0 + 4),
        )
        detail = await get(c, http, "/ui/api/call?service=svc&call=c1")
        base = {"serviceId": SERVICE, "callId": "c1", "roomId": None, "userId": None, "peerConnectionId": None}
        assert detail["events"] == [
            {**base, "timestamp": T0 + 1, "name": "CLIENT_JOINED", "clientId": "alice", "userId": "u-a", "roomId": "room-1"},
            {
                **base,
                "timestamp": T0 + 2,
                "name": "PEER_CONNECTION_OPENED",
                "clientId": "alice",
                "userId": "u-a",
                "peerConnectionId": "pc-a",
            },
            {
                **base,
                "timestamp": T0 + 3,
                "name": "MEDIA_TRACK_ADDED",
                "clientId": "alice",
                "userId": "u-a",
                "peerConnectionId": "pc-a",
                "trackId": "t-1",
                "ssrc": 1234,
            },
            {**base, "timestamp": T0 + 4, "name": "CLIENT_JOINED", "clientId": "bob"},
        ]
        front = await get(c, http, "/ui/api/state")
        assert [(e["name"], e["clientId"], e["callId"]) for e in front["events"][:2]] == [
            ("CLIENT_JOINED", "bob", "c1"),
            ("PEER_CONNECTION_OPENED", "alice", "c1"),
        ]


async def test_a_calls_issues_and_timeline_show_each_entry_whole(http) -> None:
    from tests.test_liveview import feed, get, joined, observer_event
    from webrtc_observer.testing import running_collector

    config = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
exporters: {liveview: {endpoint: "127.0.0.1:0"}}
service: {pipelines: {p: {receivers: [observertc], exporters: [liveview]}}}
"""
    raised = {"severity": "critical", "values": {"lossPercent": 12.5}, "startedAt": T0 + 10, "ssrc": 7, "trackId": "t-1"}
    async with running_collector(config) as c:
        await feed(c, *joined("c1", "alice", "bob"))
        await feed(
            c,
            observer_event("CLIENT_ISSUE", "c1", "high_loss", raised, clientId="alice", message="loss", ts=T0 + 20),
            observer_event("CLIENT_ISSUE", "c1", "ice_disconnected", {}, clientId="bob", message="ice", ts=T0 + 30),
            observer_event(
                "CLIENT_ISSUE_RESOLVED", "c1", "high_loss", {"ssrc": 7, "trackId": "t-1"}, clientId="alice", ts=T0 + 40
            ),
        )
        alice = {
            "raised": True,
            "type": "high_loss",
            "severity": "critical",
            "clientId": "alice",
            "userId": "user-alice",
            "peerConnectionId": None,
            "trackId": "t-1",
            "ssrc": 7,
            "message": "loss",
            "values": {"lossPercent": 12.5},
            "startedAt": T0 + 10,
            "endedAt": None,
        }
        bob = {
            **dict.fromkeys(("peerConnectionId", "trackId", "ssrc", "values", "endedAt")),
            "userId": "user-bob",
            "raised": True,
            "type": "ice_disconnected",
            "severity": "major",
            "clientId": "bob",
            "message": "ice",
        }
        resolved = {**alice, "raised": False, "severity": "major", "message": None, "values": None, "startedAt": None}
        detail = await get(c, http, "/ui/api/call?service=svc&call=c1")
        assert detail["issues"] == [{**bob, "timestamp": T0 + 30, "startedAt": T0 + 30}]  # started when raised
        assert detail["timeline"] == [
            {**alice, "timestamp": T0 + 20},
            {**bob, "timestamp": T0 + 30, "startedAt": None},
            {**resolved, "timestamp": T0 + 40},
        ]
        (call,) = (await get(c, http, "/ui/api/calls"))["calls"]
        assert call["issues"] == detail["issues"] and call["issueCount"] == 1


def test_a_kept_event_costs_less_than_a_tuple_of_its_values() -> None:
    """What a call keeps per event, measured with tracemalloc: its values' slots in one flat list."""
    import gc
    import tracemalloc

    events_per_call, calls = 400, 20
    view = LiveView(LiveViewConfig(max_call_events=events_per_call, max_calls=calls))
    batches = [
        Batch(
            reports=[
                event("CALL_STARTED", f"call-{n}"),
                event("CLIENT_JOINED", f"call-{n}", "alice", user="u-a"),
                *(
                    event("PEER_CONNECTION_OPENED", f"call-{n}", "alice", T0 + i, peerConnectionId="pc-a")
                    for i in range(events_per_call - 2)
                ),
            ]
        )
        for n in range(calls)
    ]
    view.update(batches.pop())  # the strings every call shares are interned once, before measuring
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for batch in batches:
            view.update(batch)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_event = kept / (len(batches) * events_per_call)
    assert per_event < 96, f"{per_event:.0f} bytes an event"  # a tuple of its 9 values alone is 112


def test_a_clients_series_takes_the_room_of_its_points_and_no_more() -> None:
    from array import array

    from webrtc_observer.exporters.liveview import _SERIES, _Ring

    ring = _Ring(20)
    for ts in range(20):
        ring.push(T0 + ts, [1.0] * len(_SERIES))
        for packed, item in ((ring.ts, 8), (ring.values, 4)):  # exact room, at first and after each growth
            assert sys.getsizeof(packed) == sys.getsizeof(array(packed.typecode)) + item * len(packed)
    assert len(ring.ts) == 20 and [ts for ts, _ in ring.points()] == [T0 + ts for ts in range(20)]
