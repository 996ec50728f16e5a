"""Call correlation through the real server: calls, lifecycle events, track matching, bounded state."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import tracemalloc
from collections import Counter
from typing import Any

import pytest

from tests import _samples
from webrtc_observer import model
from webrtc_observer.config import ComponentId
from webrtc_observer.testing import running_collector

T0 = _samples.T0


def pipeline(**options: Any) -> str:
    opts = {"client_idle_timeout": "300ms", "call_empty_timeout": "300ms", "sfu_idle_timeout": "300ms", "sweep_interval": "50ms"}
    opts.update(options)
    rendered = ", ".join(f"{k}: {json.dumps(v)}" for k, v in opts.items())
    return f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors: {{correlation: {{{rendered}}}}}
exporters: {{recording: {{}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: [correlation], exporters: [recording]}}}}}}
"""


def client(
    client_id: str,
    *,
    call_id: str | None = None,
    room_id: str | None = None,
    pc: str | None = None,
    out: tuple[int, ...] = (),
    inb: tuple[int, ...] = (),
    ts: int = T0,
    stream: dict[int, str] | None = None,
    sink: dict[int, str] | None = None,
    events: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A 2.x ClientSample with one peer connection: outbound/inbound audio tracks by SSRC."""
    pc = pc or f"pc-{client_id}"
    sample: dict[str, Any] = {"clientId": client_id, "userId": f"user-{client_id}", "timestamp": ts}
    if call_id:
        sample["callId"] = call_id
    if room_id:
        sample["roomId"] = room_id
    sample["outboundAudioTracks"] = [
        {
            "peerConnectionId": pc,
            "trackId": f"{client_id}-out-{s}",
            "ssrc": s,
            "packetsSent": 100,
            **({"sfuStreamId": stream[s]} if stream and s in stream else {}),
        }
        for s in out
    ]
    sample["inboundAudioTracks"] = [
        {
            "peerConnectionId": pc,
            "trackId": f"{client_id}-in-{s}",
            "ssrc": s,
            "packetsLost": 1,
            **({"sfuSinkId": sink[s]} if sink and s in sink else {}),
        }
        for s in inb
    ]
    if events:
        sample["customCallEvents"] = [{"name": e, "timestamp": ts} for e in events]
    return sample


async def post(
    c,
    http,
    *client_samples: dict[str, Any],
    sfu: tuple[dict[str, Any], ...] = (),
    close: bool = False,
    path: str = "/rest/samples/svc/web",
) -> None:
    body: dict[str, Any] = {"clientSamples": list(client_samples)}
    if sfu:
        body["sfuSamples"] = list(sfu)
    if close:
        body["controls"] = {"close": True}
    async with http.post(c.url(path), json=body) as resp:
        assert resp.status == 202, await resp.text()


def events(c, name: str | None = None) -> list[dict[str, Any]]:
    found = [r.payload for r in c.exporter().reports if r.type in ("CALL_EVENT", "SFU_EVENT")]
    return [e for e in found if name is None or e["name"] == name]


def names(c) -> Counter[str]:
    return Counter(e["name"] for e in events(c))


def correlated(c, client_id: str) -> list[Any]:
    return [s for s in c.exporter().client_samples if s.client_id == client_id and s.correlated]


def processor(c):
    return next(p for _, pid, p in c.service.processors if pid == ComponentId("correlation"))


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_p2p_call_lifecycle_and_ssrc_matching(http):
    async with running_collector(pipeline()) as c:
        for tick in range(3):  # repeated samples must not repeat events
            ts = T0 + tick * 1000
            await post(
                c,
                http,
                client("alice", call_id="call-p2p", out=(100,), inb=(200,), ts=ts),
                client("bob", call_id="call-p2p", out=(200,), inb=(100,), ts=ts),
            )
        assert names(c) == {"CALL_STARTED": 1, "CLIENT_JOINED": 2, "PEER_CONNECTION_OPENED": 2, "MEDIA_TRACK_ADDED": 4}
        (started,) = events(c, "CALL_STARTED")
        assert started["callId"] == "call-p2p" and started["timestamp"] == T0 and started["serviceId"] == "svc"
        added = {(e["clientId"], e["SSRC"]): json.loads(e["attachments"]) for e in events(c, "MEDIA_TRACK_ADDED")}
        assert added[("alice", 100)] == {"direction": "outbound", "kind": "audio"}
        # The first sample of each cannot know the other yet; from the second on, both are matched.
        alice_in = correlated(c, "alice")[-1].inbound_tracks[0]
        assert (
            alice_in.remote_client_id,
            alice_in.remote_user_id,
            alice_in.remote_peer_connection_id,
            alice_in.remote_track_id,
        ) == (
            "bob",
            "user-bob",
            "pc-bob",
            "bob-out-200",
        )
        assert correlated(c, "bob")[-1].inbound_tracks[0].remote_client_id == "alice"
        assert [s.sample_seq for s in correlated(c, "alice")] == [1, 2, 3]  # generated when absent

        # Alice hangs up explicitly; Bob idles out; the call ends after the empty timeout.
        await post(c, http, client("alice", call_id="call-p2p", out=(100,), inb=(200,), ts=T0 + 5000), close=True)
        left = events(c, "CLIENT_LEFT")
        assert [e["clientId"] for e in left] == ["alice"] and left[0]["timestamp"] == T0 + 5000
        await wait_until(lambda: names(c)["CALL_ENDED"] == 1)
        assert names(c) == {
            "CALL_STARTED": 1,
            "CLIENT_JOINED": 2,
            "PEER_CONNECTION_OPENED": 2,
            "MEDIA_TRACK_ADDED": 4,
            "MEDIA_TRACK_REMOVED": 4,
            "PEER_CONNECTION_CLOSED": 2,
            "CLIENT_LEFT": 2,
            "CALL_ENDED": 1,
        }
        bob_left = next(e for e in events(c, "CLIENT_LEFT") if e["clientId"] == "bob")
        assert bob_left["timestamp"] == T0 + 2000  # the last sample Bob sent
        assert events(c, "CALL_ENDED")[0]["timestamp"] == T0 + 5000
        assert not any(processor(c).state_sizes().values())


async def test_three_party_mesh_matches_each_inbound_track_to_its_sender(http):
    async with running_collector(pipeline()) as c:
        # Each pair has its own peer connection; SSRC = 10*sender + receiver.
        people = ["a", "b", "c"]
        idx = {"a": 1, "b": 2, "c": 3}

        def mesh_sample(me: str, ts: int) -> dict[str, Any]:
            sample = client(me, room_id="mesh-room", ts=ts)
            sample["outboundAudioTracks"], sample["inboundAudioTracks"] = [], []
            for other in people:
                if other == me:
                    continue
                pc = f"pc-{me}-{other}"
                sample["outboundAudioTracks"].append(
                    {"peerConnectionId": pc, "trackId": f"{me}-mic", "ssrc": 10 * idx[me] + idx[other]}
                )
                sample["inboundAudioTracks"].append({"peerConnectionId": pc, "ssrc": 10 * idx[other] + idx[me]})
            return sample

        for tick in range(2):
            await post(c, http, *(mesh_sample(p, T0 + tick * 1000) for p in people))
        assert names(c) == {"CALL_STARTED": 1, "CLIENT_JOINED": 3, "PEER_CONNECTION_OPENED": 6, "MEDIA_TRACK_ADDED": 12}
        call_ids = {e["callId"] for e in events(c)}
        assert len(call_ids) == 1 and next(iter(call_ids)) != "mesh-room"  # generated, stable for the room
        for me in people:
            last = correlated(c, me)[-1]
            assert last.room_id == "mesh-room"
            senders = {t.ssrc: (t.remote_client_id, t.remote_peer_connection_id) for t in last.inbound_tracks}
            for other in people:
                if other != me:
                    assert senders[10 * idx[other] + idx[me]] == (other, f"pc-{other}-{me}")


def sfu_sample(ts: int, pads: list[tuple[str, str, str | None, int]]) -> dict[str, Any]:
    """pads: (direction, stream id, sink id or None, ssrc)."""
    inbound = [
        {"transportId": "t-in", "streamId": st, "padId": f"in-{st}", "ssrc": ssrc, "mediaType": "audio", "packetsReceived": 10}
        for d, st, _, ssrc in pads
        if d == "in"
    ]
    outbound = [
        {
            "transportId": "t-out",
            "streamId": st,
            "sinkId": sk,
            "padId": f"out-{sk}",
            "ssrc": ssrc,
            "mediaType": "audio",
            "packetsSent": 10,
        }
        for d, st, sk, ssrc in pads
        if d == "out"
    ]
    return {
        "sfuId": "sfu-1",
        "timestamp": ts,
        "transports": [{"transportId": "t-in"}, {"transportId": "t-out"}],
        "inboundRtpPads": inbound,
        "outboundRtpPads": outbound,
    }


async def test_sfu_call_links_pads_and_tracks_by_stream_and_sink_ids(http):
    async with running_collector(pipeline(sfu_idle_timeout="400ms")) as c:
        # Alice publishes stream s-a through the SFU; Bob and Carol each get it through their own sink.
        # SSRCs are rewritten by the SFU, so only the ids can link them (sfuStreamId is set, never null).
        pads = [("in", "s-a", None, 1000), ("out", "s-a", "k-bob", 2000), ("out", "s-a", "k-carol", 3000)]
        for tick in range(2):
            ts = T0 + tick * 1000
            await post(
                c,
                http,
                client("alice", call_id="sfu-call", out=(1000,), stream={1000: "s-a"}, ts=ts),
                client("bob", call_id="sfu-call", inb=(2000,), sink={2000: "k-bob"}, ts=ts),
                client("carol", call_id="sfu-call", inb=(3000,), sink={3000: "k-carol"}, ts=ts),
                sfu=(sfu_sample(ts, pads),),
            )
        for who in ("bob", "carol"):
            track = correlated(c, who)[-1].inbound_tracks[0]
            assert (track.remote_client_id, track.remote_track_id, track.remote_peer_connection_id) == (
                "alice",
                "alice-out-1000",
                "pc-alice",
            )
        sfu = [s for s in c.exporter().samples if getattr(s, "sfu_id", None) == "sfu-1"][-1]
        assert sfu.pad_links["in-s-a"].client_id == "alice" and sfu.pad_links["in-s-a"].call_id == "sfu-call"
        assert sfu.pad_links["out-k-bob"].client_id == "bob"
        assert names(c)["SFU_JOINED"] == 1 and names(c)["SFU_TRANSPORT_OPENED"] == 2 and names(c)["SFU_RTP_PAD_ADDED"] == 3
        # The SFU stops reporting: its pads, transports and itself are gone, each once.
        await wait_until(lambda: names(c)["SFU_LEFT"] == 1)
        assert names(c)["SFU_RTP_PAD_REMOVED"] == 3 and names(c)["SFU_TRANSPORT_CLOSED"] == 2
        pad_removed = {e["rtpPadId"] for e in events(c, "SFU_RTP_PAD_REMOVED")}
        assert pad_removed == {"in-s-a", "out-k-bob", "out-k-carol"}
        await wait_until(lambda: names(c)["CALL_ENDED"] == 1)
        assert not any(processor(c).state_sizes().values())


async def test_legacy_peer_connections_without_call_id_join_by_ssrc_overlap(http):
    async with running_collector(pipeline()) as c:

        def legacy(pc_id: str, browser: str, out_ssrc: int, in_ssrc: int) -> dict[str, Any]:
            sample = _samples.pc_sample_legacy(pc_id=pc_id, call_id="unused")
            del sample["callId"]
            sample["browserId"] = browser
            sample["receiverStats"]["inboundRTPStats"][0]["ssrc"] = in_ssrc
            sample["senderStats"]["outboundRTPStats"][0]["ssrc"] = out_ssrc
            sample["senderStats"]["remoteInboundRTPStats"][0]["ssrc"] = out_ssrc
            return sample

        async def send(sample: dict[str, Any]) -> None:
            async with http.post(c.url("/pcsamples/6a1e0d1b-5d3c-4c8b-9a59-8d5d2f8c1a11/mu"), json=sample) as resp:
                assert resp.status == 202

        await send(legacy("pc-1", "browser-1", out_ssrc=111, in_ssrc=222))
        await send(legacy("pc-2", "browser-2", out_ssrc=222, in_ssrc=111))
        await send(legacy("pc-9", "browser-9", out_ssrc=999, in_ssrc=998))  # someone else's call
        starts = events(c, "CALL_STARTED")
        joined = {e["clientId"]: e["callId"] for e in events(c, "CLIENT_JOINED")}
        assert len(starts) == 2
        assert joined["browser-1"] == joined["browser-2"] != joined["browser-9"]
        await send(legacy("pc-2", "browser-2", out_ssrc=222, in_ssrc=111))
        last = correlated(c, "browser-2")[-1]
        assert last.inbound_tracks[0].remote_client_id == "browser-1"  # the 2020 way, without a callId


async def test_a_room_whose_call_id_changes(http):
    async with running_collector(pipeline()) as c:
        await post(
            c,
            http,
            client("alice", call_id="first", room_id="r", out=(1,)),
            client("bob", call_id="first", room_id="r", out=(2,)),
        )
        # The application starts a new call in the same room: clients move over one by one.
        await post(c, http, client("alice", call_id="second", room_id="r", out=(1,), ts=T0 + 1000))
        assert [(e["clientId"], e["callId"]) for e in events(c, "CLIENT_LEFT")] == [("alice", "first")]
        # A newcomer without a callId goes to the room's latest call.
        await post(c, http, client("carol", room_id="r", out=(3,), ts=T0 + 1000))
        joined = [(e["clientId"], e["callId"]) for e in events(c, "CLIENT_JOINED")]
        assert joined == [("alice", "first"), ("bob", "first"), ("alice", "second"), ("carol", "second")]
        await post(c, http, client("bob", call_id="second", room_id="r", out=(2,), ts=T0 + 2000))
        await wait_until(lambda: [e["callId"] for e in events(c, "CALL_ENDED")] == ["first"])
        assert [e["callId"] for e in events(c, "CALL_STARTED")] == ["first", "second"]


async def test_client_left_event_leaves_once_and_is_not_repeated_as_a_client_event(http):
    async with running_collector(pipeline(client_idle_timeout="10s", call_empty_timeout="10s")) as c:
        await post(c, http, client("alice", call_id="c1", out=(1,)))
        await post(c, http, client("alice", call_id="c1", out=(1,), ts=T0 + 1000, events=("CLIENT_LEFT", "MUTED")))
        assert names(c)["CLIENT_LEFT"] == 1
        last = correlated(c, "alice")[-1]
        assert [e.name for e in last.events] == ["MUTED"]  # lifecycle names come from correlation only
        assert names(c)["CALL_ENDED"] == 0  # not before call_empty_timeout
        # Coming back is a new join.
        await post(c, http, client("alice", call_id="c1", out=(1,), ts=T0 + 2000))
        assert names(c)["CLIENT_JOINED"] == 2


async def test_peer_connections_and_tracks_that_disappear_are_closed(http):
    async with running_collector(pipeline(client_idle_timeout="10s")) as c:
        await post(c, http, client("alice", call_id="c1", pc="pc-old", out=(1, 2)))
        # An ICE restart / page renegotiation: a new peer connection replaces the old one; track 2 is gone.
        await post(c, http, client("alice", call_id="c1", pc="pc-new", out=(1,), ts=T0 + 1000))
        assert [e["peerConnectionId"] for e in events(c, "PEER_CONNECTION_CLOSED")] == ["pc-old"]
        assert sorted(e["SSRC"] for e in events(c, "MEDIA_TRACK_REMOVED")) == [1, 2]
        assert [e["peerConnectionId"] for e in events(c, "PEER_CONNECTION_OPENED")] == ["pc-old", "pc-new"]
        await post(
            c,
            http,
            client("alice", call_id="c1", pc="pc-new", out=(), ts=T0 + 2000),
            client("alice", call_id="c1", pc="pc-new", out=(1,), ts=T0 + 3000),
        )
        assert names(c)["CLIENT_LEFT"] == 0


async def test_a_client_restart_mid_call(http):
    async with running_collector(pipeline()) as c:
        await post(c, http, client("alice", call_id="c1", out=(1,), inb=(2,)), client("bob", call_id="c1", out=(2,), inb=(1,)))
        # Bob reloads the page: a new client id, new SSRCs; the old Bob idles out, the call goes on.
        for tick in range(1, 8):
            ts = T0 + tick * 100
            await post(
                c,
                http,
                client("alice", call_id="c1", out=(1,), inb=(3,), ts=ts),
                client("bob-2", call_id="c1", out=(3,), inb=(1,), ts=ts),
            )
            await asyncio.sleep(0.1)
        assert [e["clientId"] for e in events(c, "CLIENT_LEFT")] == ["bob"]
        assert names(c)["CALL_ENDED"] == 0 and names(c)["CALL_STARTED"] == 1
        assert correlated(c, "alice")[-1].inbound_tracks[0].remote_client_id == "bob-2"


async def test_room_mode_generates_call_ids_and_ignores_the_clients(http):
    async with running_collector(pipeline(call_id_mode="room")) as c:
        await post(
            c,
            http,
            client("alice", call_id="mine", room_id="r1", out=(1,)),
            client("bob", call_id="theirs", room_id="r1", out=(2,)),
        )
        await post(c, http, client("carol", call_id="x", out=(3,)))  # no room: refused in room mode
        call_ids = {e["callId"] for e in events(c, "CLIENT_JOINED")}
        assert len(call_ids) == 1 and call_ids.isdisjoint({"mine", "theirs"})
        assert c.telemetry.get("correlation_refused_samples").value("correlation", "missing_room_id") == 1
        assert not correlated(c, "carol")


async def test_client_mode_requires_a_call_id(http):
    async with running_collector(pipeline(call_id_mode="client")) as c:
        await post(c, http, client("alice", room_id="r1", out=(1,)), client("bob", call_id="c9", out=(2,)))
        assert [e["clientId"] for e in events(c, "CLIENT_JOINED")] == ["bob"]
        assert c.telemetry.get("correlation_refused_samples").value("correlation", "missing_call_id") == 1
        uncorrelated = [s for s in c.exporter().client_samples if s.client_id == "alice"]
        assert uncorrelated and not uncorrelated[0].correlated  # passed on, marked, never reported


async def test_every_sample_generation_is_correlated(http):
    async with running_collector(pipeline()) as c:
        async with http.post(c.url("/rest/samples/svc/mu"), json=_samples.client_sample_v3("v3-client", "call-v3")) as resp:
            assert resp.status == 202
        async with http.post(
            c.url("/pcsamples/6a1e0d1b-5d3c-4c8b-9a59-8d5d2f8c1a11/mu"), json=_samples.pc_sample_legacy()
        ) as resp:
            assert resp.status == 202
        joined = {e["clientId"]: e["callId"] for e in events(c, "CLIENT_JOINED")}
        assert joined == {"v3-client": "call-v3", "browser-fp-1": "standup"}
        v3_tracks = {e["SSRC"] for e in events(c, "MEDIA_TRACK_ADDED") if e["clientId"] == "v3-client"}
        assert 1234567890 in v3_tracks


async def test_state_is_bounded(http):
    """Full tables refuse the message cleanly (503 + Retry-After), never a silent 202 without reports."""
    config = pipeline(max_calls=2, max_clients=3, max_calls_per_service=2, max_clients_per_service=3, client_idle_timeout="10s")
    async with running_collector(config) as c:
        await post(c, http, client("a", call_id="c1", out=(1,)))
        await post(c, http, client("b", call_id="c2", out=(2,)), path="/rest/samples/svc2/web")
        body = {"clientSamples": [client("x", call_id="c3", out=(3,))]}  # svc3 is under its quota
        async with http.post(c.url("/rest/samples/svc3/web"), json=body) as resp:
            assert resp.status == 503 and "Retry-After" in resp.headers, await resp.text()
        await post(c, http, client("c", call_id="c1", out=(4,)))
        body = {"clientSamples": [client("d", call_id="c1", out=(5,))]}
        async with http.post(c.url("/rest/samples/svc/web"), json=body) as resp:
            assert resp.status == 503 and "Retry-After" in resp.headers, await resp.text()
        assert processor(c).state_sizes()["clients"] == 3
        assert c.telemetry.get("calls_active").value() == 2 and c.telemetry.get("clients_active").value() == 3
        assert {e["clientId"] for e in events(c, "CLIENT_JOINED")} == {"a", "b", "c"}
        assert not events(c, "CALL_STARTED")[2:], "no call beyond max_calls"


async def test_many_calls_leave_no_state_and_no_memory_behind(http):
    async with running_collector(pipeline(call_empty_timeout="100ms")) as c:
        proc = processor(c)

        async def run_calls(first: int, count: int) -> None:
            for n in range(first, first + count):
                a, b = f"a{n}", f"b{n}"
                ssrc = 10 * n
                await post(
                    c,
                    http,
                    client(a, room_id=f"room-{n}", out=(ssrc,), inb=(ssrc + 1,)),
                    client(b, room_id=f"room-{n}", out=(ssrc + 1,), inb=(ssrc,)),
                )
                await post(
                    c, http, client(a, room_id=f"room-{n}", ts=T0 + 1), client(b, room_id=f"room-{n}", ts=T0 + 1), close=True
                )

        await run_calls(0, 30)  # warm up caches and code paths
        await wait_until(lambda: proc.state_sizes()["calls"] == 0)
        c.exporter().batches.clear()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await run_calls(30, 200)  # tracemalloc makes every call slow: 200 is enough to show a leak
        await wait_until(lambda: proc.state_sizes()["calls"] == 0)
        c.exporter().batches.clear()
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        # The ids are interned as they are decoded (model.share_ids): the interpreter's table of
        # interned strings is sized by how many live at once and may grow here once, by a megabyte or
        # two, when earlier tests left it near a resize. That table is not state.
        not_interning = [tracemalloc.Filter(False, model.__file__, lineno=n) for n in _lines_of(model.share_ids)]
        left = sum(
            s.size_diff for s in after.filter_traces(not_interning).compare_to(before.filter_traces(not_interning), "filename")
        )
        assert names(c) == Counter()  # cleared above; the counts below come from telemetry
        ended = c.telemetry.get("call_events").value("correlation", "CALL_ENDED")
        assert ended == 230
        assert not any(proc.state_sizes().values()), proc.state_sizes()
        assert left < 128 * 1024, f"{left / 1024:.0f} KiB left behind by 200 ended calls"


def _lines_of(function: Any) -> range:
    """The line numbers of ``function``'s source."""
    lines, first = inspect.getsourcelines(function)
    return range(first, first + len(lines))


@pytest.mark.parametrize(
    "bad",
    [
        {"max_calls": 0},
        {"call_id_mode": "master"},
        {"client_idle_timeout": "soon"},
        {"max_calls_per_service": 0},
        {"max_clients_per_service": 2_000_000},
    ],
)
def test_config_errors_name_their_path(bad):
    from webrtc_observer.components import config_types
    from webrtc_observer.config import ConfigError, load_text

    with pytest.raises(ConfigError) as err:
        load_text(pipeline(**bad), config_types())
    (key,) = bad
    assert f"processors.correlation.{key}" in str(err.value)
