"""End to end in a real browser: the ObserveRTC client libraries in Chromium, a real WebRTC call, the
real collector, and what comes out in Kafka (or the recording exporter when no Kafka is available).

Two RTCPeerConnections in one page make a P2P call on loopback with fake audio and video; one
ClientMonitor per peer connection ("alice" and "bob", one call id) sends its samples to the collector:

* client-monitor-js 4.0.3 (schema 3.x) as JSON text frames over a WebSocket;
* client-monitor-js 3.11.1 (schema 2.x) as ``Samples`` wrappers POSTed cross-origin as JSON (a CORS
  preflight); bob's samples also go, as protobuf from @observertc/samples-encoder, to a second
  service id, whose call events must equal the JSON ones.

They found two collector bugs, now fixed and kept as tests: numeric ``codecs[].payloadType`` refused
in 2.x JSON, and samples-encoder's proto3 protobuf refused.

The page is served by a separate static server, so the collector is on another origin. The live view
exporter's page at ``/ui`` is checked in Chromium during a call, and its screenshot is kept in
``test-artifacts/liveview.png``. Pages, bundling and the Playwright driver live in ``e2e/``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests._browser import ARTIFACTS, collector, drive, ensure_bundle, kafka_sink, require_browser, static_site, tab_value
from tests.conftest import REPORT_SCHEMA_FILES, assert_valid_report
from tests.test_correlation import wait_until
from webrtc_observer.config import ComponentId
from webrtc_observer.testing import RunningCollector

# kafka-python 3.0 loads its protocol schemas with deprecated importlib.resources calls.
pytestmark = pytest.mark.filterwarnings(
    "ignore:read_text is deprecated:DeprecationWarning", "ignore:open_text is deprecated:DeprecationWarning"
)

PEOPLE = ("alice", "bob")
OTHER = {"alice": "bob", "bob": "alice"}
SERVICE, MEDIA_UNIT = "e2e", "web"
TOPIC = "reports"
TRACK_DIRECTIONS = {("inbound", "audio"), ("inbound", "video"), ("outbound", "audio"), ("outbound", "video")}


@pytest.fixture(scope="module", autouse=True)
def _browser_ready() -> None:
    require_browser()
    ensure_bundle()
    ARTIFACTS.mkdir(exist_ok=True)


@contextmanager
def kafka_if_available() -> Iterator[Any]:
    """A fresh tansu broker when the Kafka path works here, else None (the recording exporter is read)."""
    if kafka_sink() is not None:
        yield None
        return
    from tests._kafka_broker import Broker, broker_binary

    b = Broker(broker_binary())
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker() -> Iterator[Any]:
    with kafka_if_available() as b:
        yield b


def pipeline(page_origin: str, broker: Any) -> str:
    kafka = f'  kafka: {{brokers: ["{broker.bootstrap}"], topic: {TOPIC}, shutdown_timeout: 5s}}\n' if broker else ""
    exporters = ["recording", "liveview", *(["kafka"] if broker else [])]
    return f"""
receivers:
  observertc:
    endpoint: 127.0.0.1:0
    cors: {{allowed_origins: ["{page_origin}"]}}
processors:
  correlation: {{client_idle_timeout: 30s, media_idle_timeout: 5s, call_empty_timeout: 1s, sweep_interval: 100ms}}
  quality: {{}}
  reports: {{}}
exporters:
  recording: {{}}
  liveview: {{endpoint: "127.0.0.1:0"}}
{kafka}service:
  pipelines:
    reports:
      receivers: [observertc]
      processors: [correlation, quality, reports]
      exporters: {json.dumps(exporters)}
"""


def call_events(c: RunningCollector, call_id: str, name: str, service: str = SERVICE) -> list[dict[str, Any]]:
    return [
        r.payload
        for r in c.exporter().reports
        if r.type == "CALL_EVENT"
        and r.payload["serviceId"] == service
        and r.payload.get("callId") == call_id
        and r.payload["name"] == name
    ]


async def output(c: RunningCollector, broker: Any) -> list[dict[str, Any]]:
    """What left the collector as report envelopes: read back from Kafka (after the collector has
    flushed and stopped) when there is a broker, else what the recording exporter got."""
    recorded = [r.envelope() for r in c.exporter().reports]
    if broker is None:
        return recorded
    messages = await asyncio.to_thread(broker.read, TOPIC, len(recorded), 20.0)
    envelopes = [json.loads(m.value) for m in messages]
    for m, e in zip(messages, envelopes, strict=True):
        assert m.headers.get("report-type") == e["type"].encode() and m.key == e["payload"]["callId"].encode()
    # Both exporters got the same reports (no outage here, so at-least-once means exactly once).
    canonical = Counter(json.dumps(e, sort_keys=True) for e in envelopes)
    assert canonical == Counter(json.dumps(e, sort_keys=True) for e in recorded)
    return envelopes


def check_call(envelopes: list[dict[str, Any]], call_id: str, service: str = SERVICE) -> dict[str, Any]:
    """The assertions every browser call must pass; returns a summary for the artifacts."""
    for e in envelopes:
        assert e["type"] in REPORT_SCHEMA_FILES and e["schemaVersion"] == "2.2.11"
        assert_valid_report(e["type"], e["payload"])
    envelopes = [e for e in envelopes if e["payload"]["serviceId"] == service]
    mine = [e for e in envelopes if e["payload"].get("callId") == call_id]
    assert mine and all(e["payload"].get("mediaUnitId") == MEDIA_UNIT for e in mine)
    strays = [e for e in envelopes if e["payload"].get("callId") != call_id]
    assert not strays, f"reports outside the call: {Counter(e['type'] for e in strays)}"

    events = [e["payload"] for e in mine if e["type"] == "CALL_EVENT"]
    by_name = Counter(p["name"] for p in events)
    assert by_name["CALL_STARTED"] == 1 and by_name["CALL_ENDED"] == 1, by_name
    for name in ("CLIENT_JOINED", "CLIENT_LEFT"):
        assert Counter(p["clientId"] for p in events if p["name"] == name) == {"alice": 1, "bob": 1}, name
    for who in PEOPLE:
        # Exactly once, although the libraries send CLIENT_JOINED, PEER_CONNECTION_OPENED, MEDIA_TRACK_ADDED... too.
        assert sum(p["name"] == "PEER_CONNECTION_OPENED" and p["clientId"] == who for p in events) == 1
        assert sum(p["name"] == "MEDIA_TRACK_ADDED" and p["clientId"] == who for p in events) == 4
        added = {
            (a["direction"], a["kind"])
            for p in events
            if p["name"] == "MEDIA_TRACK_ADDED" and p["clientId"] == who
            for a in [json.loads(p["attachments"])]
        }
        assert added >= TRACK_DIRECTIONS, f"{who}: tracks added {added}"

    # Every inbound track is matched to the other client's outbound track of the same kind and SSRC.
    tracks: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for e in mine:
        if e["type"].endswith("_TRACK"):
            direction, kind, _ = e["type"].lower().split("_")
            tracks.setdefault((e["payload"]["clientId"], direction, kind), []).append(e["payload"])
    for who in PEOPLE:
        for kind in ("audio", "video"):
            inbound = tracks.get((who, "inbound", kind), [])
            outbound = {(t["trackId"], t["ssrc"]) for t in tracks.get((OTHER[who], "outbound", kind), [])}
            assert inbound and outbound, f"{who} {kind}: no inbound or no outbound track reports"
            matched = [t for t in inbound if t.get("remoteClientId") is not None]
            assert matched, f"{who} {kind}: no inbound report names its sender"
            assert all(t["remoteClientId"] == OTHER[who] for t in matched)
            assert all((t["remoteTrackId"], t["ssrc"]) in outbound for t in matched), f"{who} {kind}: wrong track"
            assert all(t.get("remotePeerConnectionId") for t in matched)
            # Unmatched only while the sender is not there: before its first sample, after it left.
            senders_first = min(t["timestamp"] for t in tracks[(OTHER[who], "outbound", kind)])
            (sender_left,) = [p["timestamp"] for p in events if p["name"] == "CLIENT_LEFT" and p["clientId"] == OTHER[who]]
            unmatched = [t["timestamp"] for t in inbound if t.get("remoteClientId") is None]
            assert all(ts <= senders_first or ts >= sender_left for ts in unmatched), f"{who} {kind}: unmatched at {unmatched}"
    return {"reports": dict(Counter(e["type"] for e in mine)), "events": dict(by_name)}


def save(name: str, data: Any) -> None:
    (ARTIFACTS / name).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


async def test_client_monitor_4_sends_over_websocket_and_the_call_reaches_kafka(tmp_path: Path, broker: Any) -> None:
    call_id = f"e2e-cm4-{uuid.uuid4()}"
    async with static_site() as site:
        async with collector(pipeline(site, broker)) as c:
            args = {"collector": c.url(), "callId": call_id, "durationMs": 5000, "lingerMs": 1500}
            result = await drive(
                {"tabs": [{"name": "call", "url": f"{site}/cm4-ws.html", "call": {"fn": "run", "args": args}}]}, tmp_path
            )
            page = tab_value(result, "call")
            # No client idles out within a test (client_idle_timeout 30s): both said that they left.
            await wait_until(lambda: len(call_events(c, call_id, "CALL_ENDED")) == 1, timeout=5)
        envelopes = await output(c, broker)

    save("cm4-page.json", {"page": page, "chromium": result["chromiumVersion"], "sink": "kafka" if broker else kafka_sink()})
    # What the library sends: schema 3.0.0 ClientSamples with peerConnections; the event hands over
    # {clientMonitor, sample}, which cannot be JSON.stringify-ed itself (circular).
    assert page["schemaVersion"] == "3.0.0"
    assert page["eventArgKeys"] == ["clientMonitor", "sample"]
    assert page["shape"]["clientId"] == "string" and page["shape"]["callId"] == "string"
    assert "peerConnections" in page["shape"] and "inboundRtps" in page["peerConnectionShape"]
    counters = [p["packetsReceived"] for p in page["counters"] if p["packetsReceived"] is not None]
    assert counters == sorted(counters) and counters[-1] > counters[0]  # full cumulative counters, not deltas
    for who in PEOPLE:
        assert page["sent"][who] >= 4
        assert page["answers"][who] == [], f"the collector refused frames of {who}: {page['answers'][who]}"
        assert page["closes"][who]["code"] == 1000
        assert page["clientEventTypes"][who].count("CLIENT_JOINED") == 1
        assert "CLIENT_LEFT" in page["lastSampleEventTypes"][who]

    summary = check_call(envelopes, call_id)
    save("cm4-reports.json", summary)


PROTOBUF_SERVICE = "e2e-pb"


async def _cm3_call(broker: Any, tmp_path: Path) -> dict[str, Any]:
    call_id = f"e2e-cm3-{uuid.uuid4()}"
    async with static_site() as site:
        other_origin = site.replace("127.0.0.1", "localhost")  # same server, an origin the collector does not allow
        async with collector(pipeline(site, broker)) as c:
            args = {"collector": c.url(), "callId": call_id, "durationMs": 5000, "lingerMs": 1500}
            args |= {"protobufService": PROTOBUF_SERVICE, "protobufFor": ["bob"]}
            probe = {"fn": "probe", "args": {"collector": c.url()}}
            spec = {
                "tabs": [
                    {"name": "call", "url": f"{site}/cm3-rest.html", "call": {"fn": "run", "args": args}},
                    {"name": "allowed", "url": f"{site}/cm3-rest.html", "call": probe},
                    {"name": "refused", "url": f"{other_origin}/cm3-rest.html", "call": probe},
                ]
            }
            result = await drive(spec, tmp_path)
            page = tab_value(result, "call")
            # No client idles out within a test (client_idle_timeout 30s): both said that they left.
            await wait_until(lambda: len(call_events(c, call_id, "CALL_ENDED")) == 1, timeout=5)
            if call_events(c, call_id, "CALL_STARTED", PROTOBUF_SERVICE):
                await wait_until(lambda: len(call_events(c, call_id, "CALL_ENDED", PROTOBUF_SERVICE)) == 1, timeout=5)
        envelopes = await output(c, broker)
    save("cm3-page.json", {"page": page, "chromium": result["chromiumVersion"], "sink": "kafka" if broker else kafka_sink()})
    return {"call_id": call_id, "page": page, "result": result, "envelopes": envelopes}


@pytest.fixture(scope="module")
def cm3_call(_browser_ready: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One call with client-monitor-js 3.11.1, shared by the tests below (a browser call takes ~12 s)."""
    with kafka_if_available() as broker:
        return asyncio.run(_cm3_call(broker, tmp_path_factory.mktemp("cm3")))


def test_client_monitor_3_posts_cross_origin_and_the_call_reaches_kafka(cm3_call: dict[str, Any]) -> None:
    page, result = cm3_call["page"], cm3_call["result"]
    # CORS is real: the page's origin may POST (a preflighted application/json), another origin may not.
    assert tab_value(result, "allowed").startswith("status ")
    assert tab_value(result, "refused") == "blocked: TypeError"
    # What the library hands over: {clientSample, elapsedSinceLastSampleInMs}, a bare 2.x ClientSample
    # whose ids are the placeholder "NULL"; the page wraps it in Samples and sets the ids.
    assert page["eventArgKeys"] == ["clientSample", "elapsedSinceLastSampleInMs"]
    assert page["placeholders"] == {"clientId": "NULL", "callId": "NULL", "roomId": "NULL"}
    assert {"inboundAudioTracks", "inboundVideoTracks", "outboundAudioTracks", "outboundVideoTracks"} <= set(page["shape"])
    # 3.11.1's leave() does nothing: no CLIENT_LEFT after it (alice says goodbye with controls.close).
    assert "CLIENT_LEFT" not in page["lastSampleAfterLeave"]
    assert page["fetchErrors"] == []
    for who in PEOPLE:
        posts = page["posts"][who]
        assert len(posts) >= 4
        assert page["customCallEvents"][who].count("CLIENT_JOINED") == 1
        assert all(p["status"] == 202 and json.loads(p["body"]) == {"accepted": 1} for p in posts), posts

    summary = check_call(cm3_call["envelopes"], cm3_call["call_id"])
    save("cm3-reports.json", summary)


def test_every_json_sample_of_client_monitor_3_is_accepted(cm3_call: dict[str, Any]) -> None:
    for who in PEOPLE:
        assert [p["status"] for p in cm3_call["page"]["posts"][who]] == [202] * len(cm3_call["page"]["posts"][who])
    # The first sample is the only one with browser, OS, codecs and certificates: its meta must arrive.
    meta = [e for e in cm3_call["envelopes"] if e["type"] == "CALL_META_DATA" and e["payload"]["serviceId"] == SERVICE]
    assert {e["payload"]["clientId"] for e in meta} == set(PEOPLE)


def test_samples_encoder_protobuf_gives_the_same_call_events_as_json(cm3_call: dict[str, Any]) -> None:
    posts = cm3_call["page"]["protobufPosts"]["bob"]
    assert posts and [p["status"] for p in posts] == [202] * len(posts), posts[:2]

    def bob_events(service: str) -> Counter[tuple[Any, ...]]:
        return Counter(
            (p["name"], p.get("SSRC"), p.get("attachments") if p["name"].startswith("MEDIA_TRACK") else None)
            for e in cm3_call["envelopes"]
            if e["type"] == "CALL_EVENT"
            for p in [e["payload"]]
            if p["serviceId"] == service and p.get("clientId") == "bob"
        )

    assert bob_events(PROTOBUF_SERVICE) == bob_events(SERVICE)


async def test_liveview_page_shows_the_live_call(tmp_path: Path, broker: Any) -> None:
    call_id = f"e2e-live-{uuid.uuid4()}"
    screenshot = ARTIFACTS / "liveview.png"
    screenshot.unlink(missing_ok=True)
    rows = "[...document.querySelectorAll('#calls tr[data-client]')]"
    both_with_quality = (
        f"document.querySelector('[data-call=\"{call_id}\"]') !== null && {rows}.length === 2"
        f" && {rows}.every(r => /^\\d+ ms$/.test(r.cells[1].textContent)"
        " && /^[\\d,]+ kbps$/.test(r.cells[3].textContent) && /^[\\d,]+ kbps$/.test(r.cells[4].textContent))"
    )
    extract = f"""({{
        calls: [...document.querySelectorAll('#calls .call')].map(c => c.dataset.call),
        title: document.querySelector('[data-call="{call_id}"] .call-title')?.textContent,
        rows: {rows}.map(r => ({{client: r.dataset.client, cells: [...r.cells].map(td => td.textContent)}})),
        health: document.getElementById('health').textContent,
        counters: Object.fromEntries([...document.querySelectorAll('[data-counter]')].map(d => [d.dataset.counter, d.querySelector('b').textContent])),
        events: [...document.querySelectorAll('#events li')].map(li => li.textContent),
    }})"""
    async with static_site() as site:
        async with collector(pipeline(site, broker)) as c:
            ui = f"http://127.0.0.1:{c.service.exporters[ComponentId('liveview')].bound_port}/ui"
            args = {"collector": c.url(), "callId": call_id, "durationMs": 9000, "lingerMs": 500}
            spec = {
                "tabs": [
                    {"name": "call", "url": f"{site}/cm4-ws.html", "call": {"fn": "run", "args": args}},
                    # Opened once the call runs; waits (within the call) until both clients show RTT and bitrates.
                    {
                        "name": "ui",
                        "url": ui,
                        "delayMs": 2000,
                        "waitFor": both_with_quality,
                        "waitTimeoutMs": 8000,
                        "extract": extract,
                        "screenshot": str(screenshot),
                    },
                ]
            }
            result = await drive(spec, tmp_path)
            tab_value(result, "call")
    ui_tab = result["tabs"]["ui"]
    shown = ui_tab.get("extract")
    save("liveview-dom.json", shown)
    assert not ui_tab.get("error"), f"the live view did not show the call: {ui_tab.get('error')}\n{shown}"
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, ui_tab.get("screenshot")
    assert shown["calls"] == [call_id]
    assert f"{SERVICE}" in shown["title"] and "2 client(s)" in shown["title"]
    assert sorted(r["client"] for r in shown["rows"]) == ["alice", "bob"]
    for row in shown["rows"]:
        name, rtt, _loss, inbound, outbound, _mos = row["cells"]
        assert name == row["client"]
        assert rtt.endswith(" ms") and 0 <= int(rtt.split()[0]) < 1000
        assert inbound.endswith(" kbps") and outbound.endswith(" kbps"), row
    assert shown["health"] == "healthy"
    assert int(shown["counters"]["samples_received"].replace(",", "")) > 0
    assert any("CLIENT_JOINED" in e for e in shown["events"]) and any("CALL_STARTED" in e for e in shown["events"])
