"""The live view: its state API over HTTP while calls come and go (the page itself is tested in Chromium)."""

from __future__ import annotations

from tests.test_correlation import client, post, wait_until
from webrtc_observer.config import ComponentId
from webrtc_observer.testing import running_collector

PIPELINE = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
processors:
  correlation: {client_idle_timeout: 300ms, call_empty_timeout: 200ms, sweep_interval: 50ms}
  reports: {}
exporters:
  recording: {}
  liveview: {endpoint: "127.0.0.1:0", max_events: 5}
service:
  pipelines:
    p: {receivers: [observertc], processors: [correlation, reports], exporters: [recording, liveview]}
"""


def ui_url(c, path: str) -> str:
    return f"http://127.0.0.1:{c.service.exporters[ComponentId('liveview')].bound_port}{path}"


async def state(c, http) -> dict:
    async with http.get(ui_url(c, "/ui/api/state")) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_state_follows_calls_clients_and_quality(http):
    async with running_collector(PIPELINE) as c:
        async with http.get(ui_url(c, "/ui")) as resp:
            assert resp.status == 200 and "webrtc-observer" in await resp.text()
        for tick in range(2):
            alice = client("alice", call_id="c1", out=(1,), inb=(2,), ts=1_700_000_000_000 + tick * 1000)
            track = alice["inboundAudioTracks"][0]
            track.update(
                roundTripTime=0.08,
                jitter=0.01,
                bytesReceived=10_000 + tick * 8_000,
                packetsReceived=100 + 50 * tick,
                packetsLost=tick * 5,
            )
            bob = client("bob", call_id="c1", out=(2,), inb=(1,), ts=1_700_000_000_000 + tick * 1000)
            await post(c, http, alice, bob)
        s = await state(c, http)
        (call,) = s["calls"]
        assert call["callId"] == "c1" and {cl["clientId"] for cl in call["clients"]} == {"alice", "bob"}
        a = next(cl for cl in call["clients"] if cl["clientId"] == "alice")
        assert a["rttMs"] == 80 and a["inboundKbps"] == 64 and a["lossPercent"] == 9.09
        assert 1 <= a["mos"] <= 4.5
        assert s["counters"]["samples_received"] == 4
        assert s["health"]["status"] == "ok"
        assert len(s["events"]) == 5  # bounded
        await wait_until(lambda: c.telemetry.get("calls_active").value() + c.telemetry.get("calls_ending").value() == 0)
        s = await state(c, http)
        assert s["calls"] == [] and s["events"][0]["name"] == "CALL_ENDED"
