"""The live view: its JSON API over HTTP (search, filters, paging, worst-first order, ended calls, left
clients gone, counts, bounds), fed with hand-built batches and through the real pipeline. The page
itself is tested in Chromium (tests/test_liveview_browser.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_correlation import client, post, wait_until
from webrtc_observer import testing
from webrtc_observer.components import config_types
from webrtc_observer.config import ComponentId, ConfigError, load_text
from webrtc_observer.model import Batch, Report, TrackQuality
from webrtc_observer.processors._report_schemas import build
from webrtc_observer.testing import running_collector

T0 = 1_700_000_000_000
SERVICE = "svc"

PIPELINE = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
processors:
  correlation: {client_idle_timeout: 300ms, call_empty_timeout: 200ms, sweep_interval: 50ms}
  quality: {}
  reports: {}
exporters:
  recording: {}
  liveview: {endpoint: "127.0.0.1:0", max_events: 5}
service:
  pipelines:
    p: {receivers: [observertc], processors: [correlation, quality, reports], exporters: [recording, liveview]}
"""

# The view alone, fed batches by hand (as the pipeline hands them on).
BARE = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
exporters:
  liveview: {endpoint: "127.0.0.1:0", max_calls: %(calls)d, max_points: %(points)d, max_ended_calls: 3, max_clients_per_call: 4}
service: {pipelines: {p: {receivers: [observertc], exporters: [liveview]}}}
"""


def bare(calls: int = 500, points: int = 120) -> str:
    return BARE % {"calls": calls, "points": points}


def ui_url(c, path: str) -> str:
    return f"http://127.0.0.1:{c.service.exporters[ComponentId('liveview')].bound_port}{path}"


async def get(c, http, path: str, status: int = 200) -> Any:
    async with http.get(ui_url(c, path)) as resp:
        body = await resp.json()
        assert resp.status == status, body
        assert resp.headers["Cache-Control"] == "no-store" and resp.headers["X-Frame-Options"] == "DENY"
        return body


async def state(c, http) -> dict:
    return await get(c, http, "/ui/api/state")


async def feed(c, *reports: Report, quality: tuple[TrackQuality, ...] = ()) -> None:
    await c.service.exporters[ComponentId("liveview")].consume(Batch(reports=list(reports), quality=list(quality)))


def event(name: str, call: str, client_id: str | None = None, ts: int = T0, user: str | None = None, **extra: Any) -> Report:
    fields = {"serviceId": extra.pop("service", SERVICE), "callId": call, "name": name, "timestamp": ts}
    fields |= {"clientId": client_id, "userId": user, **extra}
    return Report(type="CALL_EVENT", payload=build("CALL_EVENT", fields))


def observer_event(name: str, call: str, value: str | None, attachments: dict[str, Any], **fields: Any) -> Report:
    payload = build(
        "OBSERVER_EVENT",
        {
            "serviceId": fields.pop("service", SERVICE),
            "callId": call,
            "name": name,
            "value": value,
            "attachments": json.dumps(attachments),
            "timestamp": fields.pop("ts", T0),
            **fields,
        },
    )
    assert payload is not None
    return Report(type="OBSERVER_EVENT", payload=payload)


def issue(call: str, client_id: str, kind: str, severity: str, raised: bool = True, ts: int = T0, **values: Any) -> Report:
    name = "CLIENT_ISSUE" if raised else "CLIENT_ISSUE_RESOLVED"
    attachments = {"severity": severity, "values": values, "startedAt": ts}
    return observer_event(name, call, kind, attachments, clientId=client_id, message=f"{kind} on {client_id}", ts=ts)


def measured(call: str, client_id: str, ts: int, service: str = SERVICE, **values: Any) -> TrackQuality:
    """An inbound audio track's measurement as the quality processor makes it."""
    fields = {"direction": "inbound", "kind": "audio", "ssrc": 1, "peer_connection_id": f"pc-{client_id}", **values}
    return TrackQuality(service_id=service, media_unit_id="web", call_id=call, client_id=client_id, timestamp=ts, **fields)


def joined(call: str, *people: str, service: str = SERVICE, room: str | None = None) -> list[Report]:
    out = [event("CALL_STARTED", call, service=service, roomId=room)]
    return out + [event("CLIENT_JOINED", call, p, user=f"user-{p}", service=service, roomId=room) for p in people]


async def test_numbers_are_the_quality_processors_and_left_clients_stay_gone(http):
    async with running_collector(bare()) as c:
        await feed(c, *joined("c1", "alice", "bob"))
        q = measured("c1", "alice", T0 + 1000, rtt=0.08, jitter=0.012, fraction_lost=0.0909, bitrate=64_000.0, mos=3.91)
        out = measured("c1", "alice", T0 + 1000, direction="outbound", ssrc=2, bitrate=32_000.0, rtt=0.09)
        await feed(c, quality=(q, out, measured("c1", "bob", T0 + 1000, mos=4.3)))
        page = await get(c, http, "/ui/api/calls")
        (call,) = page["calls"]
        alice = next(cl for cl in call["clients"] if cl["clientId"] == "alice")
        # The processor's values, in display units; the RTT is the worst of the client's tracks.
        assert alice == {
            "clientId": "alice",
            "userId": "user-alice",
            "joined": T0,
            "left": None,
            "updated": T0 + 1000,
            "recentMos": 3.91,
            "rttMs": 90.0,
            "lossPercent": 9.09,
            "jitterMs": 12.0,
            "inKbps": 64.0,
            "outKbps": 32.0,
            "mos": 3.91,
            "fps": None,
            "width": None,
            "height": None,
        }
        assert call["mos"] == 3.91 and call["score"] == 3.91 and call["status"] == "active"

        # A 3.x client's CLIENT_LEFT, then the measurements and track reports of its last sample.
        await feed(c, event("CLIENT_LEFT", "c1", "alice", T0 + 2000))
        track = build(
            "INBOUND_AUDIO_TRACK",
            {
                "serviceId": SERVICE,
                "mediaUnitId": "web",
                "callId": "c1",
                "clientId": "alice",
                "sampleSeq": 3,
                "timestamp": T0 + 2000,
                "ssrc": 1,
                "peerConnectionId": "pc-alice",
            },
        )
        await feed(c, Report(type="INBOUND_AUDIO_TRACK", payload=track), quality=(measured("c1", "alice", T0 + 2000, mos=2.0),))
        (call,) = (await get(c, http, "/ui/api/calls"))["calls"]
        assert [cl["clientId"] for cl in call["clients"]] == ["bob"] and call["clientCount"] == 1
        s = await state(c, http)
        assert s["counts"]["clients"] == 1 and s["counts"]["activeCalls"] == 1
        left = next(e for e in s["events"] if e["name"] == "CLIENT_LEFT")
        assert left["userId"] == "user-alice"  # the event names the user, though the report did not
        detail = await get(c, http, "/ui/api/call?service=svc&call=c1")
        (gone,) = detail["departed"]
        assert gone["clientId"] == "alice" and gone["left"] == T0 + 2000 and gone["series"]["t"] == [T0 + 1000]

        # The leave and the last sample in one batch: the last point lands, the client still goes.
        await feed(
            c,
            event("CLIENT_LEFT", "c1", "bob", T0 + 3000, user="user-bob"),
            quality=(measured("c1", "bob", T0 + 3000, mos=4.1),),
        )
        s = await state(c, http)
        assert s["counts"] | {"dropped": None} == {
            "activeCalls": 0,
            "endingCalls": 1,
            "clients": 0,
            "endedCalls": 0,
            "openIssues": 0,
            "dropped": None,
        }
        assert (await get(c, http, "/ui/api/calls"))["total"] == 0
        waiting = await get(c, http, "/ui/api/calls?status=ending")
        assert [x["callId"] for x in waiting["calls"]] == ["c1"] and waiting["calls"][0]["status"] == "ending"
        detail = await get(c, http, "/ui/api/call?service=svc&call=c1")
        bob = next(d for d in detail["departed"] if d["clientId"] == "bob")
        assert bob["series"]["t"] == [T0 + 1000, T0 + 3000] and bob["series"]["mos"] == [4.3, 4.1]

        # A new CLIENT_JOINED brings a client back.
        await feed(c, event("CLIENT_JOINED", "c1", "alice", T0 + 4000, user="user-alice"))
        (call,) = (await get(c, http, "/ui/api/calls"))["calls"]
        assert [cl["clientId"] for cl in call["clients"]] == ["alice"]


async def test_worst_first_with_issues_search_filters_and_paging(http):
    async with running_collector(bare()) as c:
        reports: list[Report] = []
        quality: list[TrackQuality] = []
        for n in range(60):
            call, service = f"call-{n:02d}", "svc" if n % 2 == 0 else "other"
            reports += joined(call, f"a{n}", f"b{n}", service=service, room=f"room-{n}")
            quality += [measured(call, f"a{n}", T0 + 1000, service=service, mos=4.2 + (n % 3) / 100)]
        quality.append(measured("call-07", "a7", T0 + 1000, service="other", mos=2.5, ssrc=9))
        await feed(c, *reports, quality=tuple(quality))
        await feed(
            c,
            issue("call-10", "b10", "high_loss", "critical", lossPercent=12.0),
            issue("call-20", "a20", "turn_relay", "info"),
        )
        page = await get(c, http, "/ui/api/calls?status=all&limit=100")
        assert page["total"] == 60
        order = [x["callId"] for x in page["calls"]]
        assert order[:2] == ["call-07", "call-10"]  # MOS 2.5, then 4.2 less a critical issue
        scores = [x["score"] for x in page["calls"]]
        assert scores == sorted(scores)
        worst = page["calls"][1]
        assert worst["score"] == 2.71 and worst["issueCount"] == 1
        (open_issue,) = worst["issues"]
        assert open_issue["type"] == "high_loss" and open_issue["severity"] == "critical"
        assert open_issue["userId"] == "user-b10" and open_issue["values"] == {"lossPercent": 12.0}
        assert page["services"] == ["other", "svc"] and page["issueTypes"] == ["high_loss", "turn_relay"]
        # An informational issue does not lower the score.
        assert next(x for x in page["calls"] if x["callId"] == "call-20")["score"] == 4.22

        # Paging: bounded pages, in the same order.
        first = await get(c, http, "/ui/api/calls?limit=25")
        third = await get(c, http, "/ui/api/calls?limit=25&offset=50")
        assert len(first["calls"]) == 25 and len(third["calls"]) == 10 and first["total"] == 60
        assert [x["callId"] for x in first["calls"] + third["calls"]] == order[:25] + order[50:]
        for bad, parameter in (("limit=0", "limit"), ("limit=101", "limit"), ("offset=-1", "offset"), ("limit=x", "limit")):
            body = await get(c, http, f"/ui/api/calls?{bad}", status=400)
            assert body["parameter"] == parameter and body["error"]
        assert (await get(c, http, "/ui/api/calls?status=gone", status=400))["parameter"] == "status"

        # Search by call, room, user and client id (case-insensitive, substring), filters.
        async def found(query: str) -> list[str]:
            return [x["callId"] for x in (await get(c, http, f"/ui/api/calls?{query}"))["calls"]]

        assert await found("q=CALL-33") == ["call-33"]
        assert await found("q=room-41") == ["call-41"]
        assert await found("q=user-b12") == ["call-12"]
        assert await found("q=a59") == ["call-59"]
        assert await found("q=nobody") == []
        assert (await get(c, http, "/ui/api/calls?service=other"))["total"] == 30
        assert await found("issue=high_loss") == ["call-10"]
        assert await found("issue=high_loss&service=other") == []

        # Resolved: the issue leaves the call (and its score), stays in the timeline.
        await feed(c, issue("call-10", "b10", "high_loss", "critical", raised=False, ts=T0 + 5000))
        detail = await get(c, http, "/ui/api/call?service=svc&call=call-10")
        assert detail["issues"] == [] and detail["score"] == 4.21
        assert [(i["raised"], i["type"], i["userId"]) for i in detail["timeline"]] == [
            (True, "high_loss", "user-b10"),
            (False, "high_loss", "user-b10"),
        ]
        assert await found("issue=high_loss") == ["call-10"]  # it did have one
        await get(c, http, "/ui/api/call?service=svc&call=nope", status=404)
        assert (await get(c, http, "/ui/api/call?service=svc", status=400))["parameter"] == "call"


async def test_ended_calls_keep_their_summary_and_do_not_come_back(http):
    async with running_collector(bare()) as c:
        for n in range(5):
            call = f"e{n}"
            await feed(c, *joined(call, f"x{n}"), quality=(measured(call, f"x{n}", T0 + 1000, mos=3.0 + n / 10),))
            summary = {
                "durationSeconds": 30 + n,
                "peakParticipants": 1,
                "totalParticipants": 1,
                "clients": [
                    {"clientId": f"x{n}", "userId": f"user-x{n}", "mos": {"mean": 3.9, "min": 3.0}, "worstSeverity": "major"}
                ],
            }
            await feed(
                c,
                event("CLIENT_LEFT", call, f"x{n}", T0 + 2000),
                event("CALL_ENDED", call, ts=T0 + 2000),
                observer_event("CALL_SUMMARY", call, None, summary, ts=T0 + 2000),
            )
        s = await state(c, http)
        assert s["counts"]["activeCalls"] == 0 and s["counts"]["endingCalls"] == 0
        assert s["counts"]["endedCalls"] == 3 and s["counts"]["dropped"]["endedCalls"] == 2  # max_ended_calls: 3
        ended = await get(c, http, "/ui/api/ended")
        assert [x["callId"] for x in ended["calls"]] == ["e4", "e3", "e2"]  # newest first
        assert ended["calls"][0]["summary"]["durationSeconds"] == 34 and ended["calls"][0]["status"] == "ended"
        assert [x["callId"] for x in (await get(c, http, "/ui/api/ended?q=user-x3"))["calls"]] == ["e3"]
        detail = await get(c, http, "/ui/api/call?service=svc&call=e4")
        assert detail["status"] == "ended" and detail["summary"]["clients"][0]["userId"] == "user-x4"
        (x4,) = detail["departed"]
        assert x4["series"]["mos"] == [3.4]
        assert [e["name"] for e in detail["events"]] == ["CALL_STARTED", "CLIENT_JOINED", "CLIENT_LEFT", "CALL_ENDED"]
        # Late measurements of an ended call do not bring it back; CALL_STARTED starts it anew.
        await feed(c, quality=(measured("e4", "x4", T0 + 3000, mos=1.0),))
        assert (await get(c, http, "/ui/api/calls?status=all"))["total"] == 0
        await feed(c, *joined("e4", "x4"))
        assert [x["callId"] for x in (await get(c, http, "/ui/api/calls"))["calls"]] == ["e4"]


async def test_everything_is_bounded(http):
    async with running_collector(bare(calls=3, points=4)) as c:
        for n in range(5):
            await feed(c, *joined(f"b{n}", "p1", "p2", "p3", "p4", "p5"))  # max_clients_per_call: 4
        s = await state(c, http)
        assert s["counts"]["activeCalls"] == 3 and s["counts"]["clients"] == 12
        assert s["counts"]["dropped"]["calls"] == 2 and s["counts"]["dropped"]["clients"] == 5
        assert [x["callId"] for x in (await get(c, http, "/ui/api/calls"))["calls"]] == ["b2", "b3", "b4"]
        await feed(c, quality=tuple(measured("b4", "p1", T0 + i * 1000, mos=4.0) for i in range(1, 10)))
        (p1,) = [cl for cl in (await get(c, http, "/ui/api/call?service=svc&call=b4"))["clients"] if cl["clientId"] == "p1"]
        assert p1["series"]["t"] == [T0 + i * 1000 for i in range(6, 10)]
        assert len(s["events"]) <= 200


async def test_a_series_keeps_its_last_max_points_as_it_grows_to_them_and_wraps(http):
    """A client's series takes room as points come (it starts with a few) and keeps the last max_points."""
    async with running_collector(bare(points=20)) as c:
        await feed(c, *joined("g1", "p1"))

        async def series() -> list[int]:
            detail = await get(c, http, "/ui/api/call?service=svc&call=g1")
            return next(cl for cl in detail["clients"] if cl["clientId"] == "p1")["series"]["t"]

        await feed(c, quality=tuple(measured("g1", "p1", T0 + i * 1000, mos=4.0) for i in range(1, 12)))
        assert await series() == [T0 + i * 1000 for i in range(1, 12)]  # past the first room, not wrapped
        await feed(c, quality=tuple(measured("g1", "p1", T0 + i * 1000, mos=4.0) for i in range(12, 51)))
        assert await series() == [T0 + i * 1000 for i in range(31, 51)]


async def test_the_real_pipeline_counts_calls_with_clients_and_ends_them(http):
    async with running_collector(PIPELINE) as c:
        async with http.get(ui_url(c, "/ui")) as resp:
            assert resp.status == 200 and "webrtc-observer" in await resp.text()
        for tick in range(3):
            alice = client("alice", call_id="c1", out=(1,), inb=(2,), ts=T0 + tick * 1000)
            alice["inboundAudioTracks"][0].update(
                roundTripTime=0.08,
                jitter=0.01,
                bytesReceived=10_000 + tick * 8_000,
                packetsReceived=100 + 50 * tick,
                packetsLost=tick * 5,
            )
            bob = client("bob", call_id="c1", out=(2,), inb=(1,), ts=T0 + tick * 1000)
            await post(c, http, alice, bob)
        s = await state(c, http)
        assert s["counts"]["activeCalls"] == 1 and s["counts"]["clients"] == 2
        assert s["counters"]["samples_received"] == 6 and s["health"]["status"] == "ok"
        assert len(s["events"]) == 5  # max_events
        (call,) = (await get(c, http, "/ui/api/calls"))["calls"]
        a = next(cl for cl in call["clients"] if cl["clientId"] == "alice")
        # What the quality processor measured for alice's inbound track in the last interval.
        measures = [q for b in c.exporter().batches for q in b.quality if q.client_id == "alice" and q.direction == "inbound"]
        last = measures[-1]
        assert a["rttMs"] == round(last.rtt * 1000, 2) and a["inKbps"] == round(last.bitrate / 1000, 2) == 64
        assert a["lossPercent"] == round(last.fraction_lost * 100, 2) == 9.09 and a["mos"] == round(last.mos, 2)
        # Both leave: the call waits out call_empty_timeout apart from the active ones, then ends.
        await post(c, http, client("alice", call_id="c1", ts=T0 + 5000), client("bob", call_id="c1", ts=T0 + 5000), close=True)
        await wait_until(lambda: c.telemetry.get("calls_active").value() + c.telemetry.get("calls_ending").value() == 0)
        s = await state(c, http)
        assert s["counts"]["activeCalls"] == 0 and s["counts"]["endingCalls"] == 0 and s["counts"]["endedCalls"] == 1
        assert s["events"][0]["name"] == "CALL_ENDED"
        assert {e["userId"] for e in s["events"] if e["name"] == "CLIENT_LEFT"} <= {"user-alice", "user-bob"}


@pytest.mark.parametrize(
    ("option", "value"), [("max_points", 0), ("max_points", 10_001), ("max_calls", -1), ("score_samples", 0)]
)
def test_bad_bounds_are_config_errors_naming_the_option(option: str, value: int) -> None:
    text = bare().replace("max_ended_calls: 3", f"max_ended_calls: 3, {option}: {value}")
    with pytest.raises(ConfigError, match=rf"exporters\.liveview\.{option}: must be"):
        load_text(text, config_types(testing.testing_factories()))


async def test_a_call_page_names_its_sfus_tracks_and_senders(http):
    async with running_collector(bare()) as c:
        await feed(c, *joined("s1", "alice", "bob"))
        base = {"serviceId": SERVICE, "mediaUnitId": "sfu", "sfuId": "sfu-1", "transportId": "t1", "timestamp": T0 + 1000}
        pads = [
            build(
                "SFU_INBOUND_RTP_PAD",
                {**base, "rtpPadId": "in-1", "sfuStreamId": "st-1", "ssrc": 1, "callId": "s1", "clientId": "alice"},
            ),
            build(
                "SFU_OUTBOUND_RTP_PAD",
                {
                    **base,
                    "rtpPadId": "out-1",
                    "sfuStreamId": "st-1",
                    "sfuSinkId": "sk-1",
                    "ssrc": 2,
                    "callId": "s1",
                    "clientId": "bob",
                },
            ),
            build("SFU_INBOUND_RTP_PAD", {**base, "rtpPadId": "in-9", "sfuStreamId": "st-9", "ssrc": 9}),  # no call: not shown
        ]
        # Who a track is and who sends it come with its measurement, as the quality processor makes it.
        identity = {"track_id": "t-bob-in", "remote_client_id": "alice", "remote_user_id": "user-alice"}
        await feed(
            c,
            *[
                Report(type=t, payload=p)
                for t, p in zip(("SFU_INBOUND_RTP_PAD", "SFU_OUTBOUND_RTP_PAD", "SFU_INBOUND_RTP_PAD"), pads, strict=True)
            ],
            event("PEER_CONNECTION_OPENED", "s1", "bob", T0 + 500, peerConnectionId="pc-bob"),
            quality=(
                measured(
                    "s1", "bob", T0 + 1000, kind="video", ssrc=2, fps=24.0, frame_width=640, frame_height=360, mos=3.2, **identity
                ),
            ),
        )
        detail = await get(c, http, "/ui/api/call?service=svc&call=s1")
        (sfu,) = detail["sfus"]
        assert sfu == {
            "sfuId": "sfu-1",
            "inboundPads": ["in-1"],
            "outboundPads": ["out-1"],
            "clients": ["alice", "bob"],
            "updated": T0 + 1000,
        }
        bob = next(cl for cl in detail["clients"] if cl["clientId"] == "bob")
        assert bob["peerConnections"] == [{"peerConnectionId": "pc-bob", "opened": T0 + 500, "closed": None}]
        (video,) = bob["tracks"]
        assert video["trackId"] == "t-bob-in" and video["remoteUserId"] == "user-alice" and video["kind"] == "video"
        assert (video["fps"], video["width"], video["height"], video["mos"]) == (24.0, 640, 360, 3.2)
        assert (bob["fps"], bob["width"], bob["height"], bob["mos"]) == (24.0, 640, 360, 3.2)
        assert [e["userId"] for e in detail["events"] if e["name"] == "PEER_CONNECTION_OPENED"] == ["user-bob"]


FIXTURES = Path(__file__).resolve().parent / "fixtures"
CAPTURE_PIPELINE = PIPELINE.replace("client_idle_timeout: 300ms", "client_idle_timeout: 30s")


@pytest.mark.parametrize("capture", ["browser-cm4-ws.json", "browser-cm3-rest.json"])
async def test_a_real_browser_call_leaves_no_client_behind(http, capture: str):
    """A real two-client call (client-monitor-js 4.x over WebSocket, 3.11 over REST), replayed in order:
    a 3.x client's CLIENT_LEFT comes in its last sample, with that sample's tracks."""
    recorded = json.loads((FIXTURES / capture).read_text())
    async with running_collector(CAPTURE_PIPELINE) as c:
        sockets: dict[str, Any] = {}
        try:
            for message in recorded["messages"]:
                if message["transport"] == "http":
                    headers = {"Content-Type": message["contentType"]}
                    async with http.post(c.url(message["path"]), data=message["body"], headers=headers) as resp:
                        assert resp.status == 202, await resp.text()
                else:
                    who = json.loads(message["body"])["clientId"]
                    if who not in sockets:
                        sockets[who] = await http.ws_connect(c.url(message["path"], scheme="ws"))
                    await sockets[who].send_str(message["body"])
        finally:
            for ws in sockets.values():
                await ws.close()
        view = c.exporter("liveview").view
        await wait_until(lambda: view.state(c.telemetry, {})["counts"]["endedCalls"] == 1, timeout=10)
        s = await state(c, http)
        assert s["counts"] | {"dropped": None} == {
            "activeCalls": 0,
            "endingCalls": 0,
            "clients": 0,
            "endedCalls": 1,
            "openIssues": 0,
            "dropped": None,
        }
        assert (await get(c, http, "/ui/api/calls?status=all"))["total"] == 0
        (ended,) = (await get(c, http, "/ui/api/ended"))["calls"]
        detail = await get(c, http, f"/ui/api/call?service={ended['serviceId']}&call={ended['callId']}")
        assert detail["clients"] == [] and sorted(d["clientId"] for d in detail["departed"]) == ["alice", "bob"]
        for departed in detail["departed"]:
            # Real numbers on its charts: the quality processor's, from the real stats.
            assert departed["left"] is not None and len(departed["series"]["t"]) >= 3, departed["clientId"]
            assert any(v is not None and v > 0 for v in departed["series"]["inKbps"]), departed["clientId"]
            assert any(v is not None for v in departed["series"]["rttMs"]), departed["clientId"]
        names = [e["name"] for e in detail["events"]]
        assert names.count("CLIENT_JOINED") == 2 and names.count("CLIENT_LEFT") == 2 and names[-1] == "CALL_ENDED"


async def test_a_leave_and_a_rejoin_in_one_batch_keep_the_client(http):
    async with running_collector(bare()) as c:
        await feed(c, *joined("r1", "alice", "bob"))
        await feed(
            c,
            event("CLIENT_LEFT", "r1", "alice", T0 + 1000),
            event("CLIENT_JOINED", "r1", "alice", T0 + 1500, user="user-alice"),
            quality=(measured("r1", "alice", T0 + 1600, mos=4.0),),
        )
        (call,) = (await get(c, http, "/ui/api/calls"))["calls"]
        assert sorted(cl["clientId"] for cl in call["clients"]) == ["alice", "bob"]
        alice = next(cl for cl in call["clients"] if cl["clientId"] == "alice")
        assert alice["joined"] == T0 + 1500 and alice["mos"] == 4.0


async def test_a_samples_measurements_come_before_the_events_it_carries(http):
    """A call the view has not seen (or dropped) comes into view with its sample's measurements, where the
    sample's track reports are: the sample's own events that follow land on it."""
    async with running_collector(bare()) as c:
        track = {"serviceId": SERVICE, "mediaUnitId": "web", "callId": "m1", "clientId": "alice", "sampleSeq": 1}
        track |= {"timestamp": T0, "ssrc": 1, "peerConnectionId": "pc-alice"}
        await feed(
            c,
            Report(type="INBOUND_AUDIO_TRACK", payload=build("INBOUND_AUDIO_TRACK", track)),
            event("MEDIA_TRACK_ADDED", "m1", "alice", T0, peerConnectionId="pc-alice"),
            quality=(measured("m1", "alice", T0, mos=4.0, room_id="room-m1", user_id="user-alice"),),
        )
        detail = await get(c, http, "/ui/api/call?service=svc&call=m1")
        assert detail["roomId"] == "room-m1" and [e["name"] for e in detail["events"]] == ["MEDIA_TRACK_ADDED"]
        (alice,) = detail["clients"]
        assert alice["userId"] == "user-alice" and [t["ssrc"] for t in alice["tracks"]] == [1]


async def test_without_a_quality_processor_the_view_says_once_why_it_shows_no_tracks(http, caplog):
    unmeasured = PIPELINE.replace("processors: [correlation, quality, reports]", "processors: [correlation, reports]")
    for config, warned in ((unmeasured, 1), (PIPELINE, 0)):
        caplog.clear()
        async with running_collector(config) as c:
            for tick in range(3):
                alice = client("alice", call_id="c1", out=(1,), inb=(2,), ts=T0 + tick * 1000)
                await post(c, http, alice, client("bob", call_id="c1", out=(2,), inb=(1,), ts=T0 + tick * 1000))
            (call,) = (await get(c, http, "/ui/api/calls"))["calls"]
            assert {cl["clientId"] for cl in call["clients"]} == {"alice", "bob"}  # calls and clients either way
        said = [r for r in caplog.records if "without quality measurements" in r.getMessage()]
        assert len(said) == warned, config
