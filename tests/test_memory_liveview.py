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
    kept = [value for e in call.events for value in e if isinstance(value, str)]
    assert all(value is sys.intern(value) for value in kept)
    (track,) = call.clients["alice"].tracks.values()
    assert track.peer_connection_id is sys.intern("pc-alice") and track.track_id is sys.intern("track-1")
    detail = view.call(SERVICE, "call-1")
    assert detail is not None
    (shown,) = detail["clients"][0]["tracks"]
    assert shown["rttMs"] == 50.0 and shown["width"] is None and shown["trackId"] == "track-1"


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
