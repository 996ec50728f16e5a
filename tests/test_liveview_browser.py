"""The live view in headless Chromium, fed by the load generator: four healthy calls and one whose
clients lose 12 % of their packets. The overview must list the impaired call first with its
``high_loss`` issue, and the call's page must plot its loss, above the zero line, in the loss chart.

Screenshots of both pages are saved in the test's tmp dir and copied to ``tests/artifacts/``.
Chromium (Debian's) is driven by playwright-core through ``e2e/drive.mjs``; without them the test is
skipped outside CI and fails in CI, as the other browser tests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests._browser import CHROMIUM, IN_CI, NODE_MODULES, drive
from tests.test_correlation import wait_until
from webrtc_observer.config import ComponentId
from webrtc_observer.loadgen import Scenario, run
from webrtc_observer.testing import running_collector

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SERVICE = "demo"
LOSS = 0.12

PIPELINE = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
processors:
  correlation: {client_idle_timeout: 6s, call_empty_timeout: 1s, sweep_interval: 100ms}
  quality: {}
  issues: {}
  summary: {}
  reports: {}
exporters:
  liveview: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    p: {receivers: [observertc], processors: [correlation, quality, issues, summary, reports], exporters: [liveview]}
"""


@pytest.fixture(scope="module", autouse=True)
def _browser_ready() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium ({CHROMIUM}; apt-get install chromium)")
    if shutil.which("node") is None:
        missing.append("Node.js")
    if not (NODE_MODULES / "playwright-core" / "package.json").exists():
        missing.append("e2e/node_modules/playwright-core (run `npm ci` in e2e/)")
    if missing:
        message = "LIVE VIEW BROWSER TEST NOT RUN: missing " + "; ".join(missing) + " (.ci/run installs them)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def scenarios(start_ms: int) -> tuple[Scenario, Scenario]:
    healthy = Scenario(
        calls=4,
        clients_per_call=3,
        topology="mesh",
        schema="mixed",
        interval=1,
        duration=None,
        seed=21,
        start_ms=start_ms,
        service_id=SERVICE,
    )
    impaired = Scenario(
        calls=1,
        clients_per_call=3,
        topology="mesh",
        schema="mixed",
        impairments=[f"loss={LOSS}"],
        interval=1,
        duration=None,
        seed=22,
        start_ms=start_ms,
        service_id=SERVICE,
    )
    return healthy, impaired


def first_call_id(scenario: Scenario) -> str:
    return next(t.call_id for t in scenario.ticks() if t.call_id is not None)


async def test_the_impaired_call_comes_first_with_its_issue_and_loss_chart(tmp_path: Path, http: Any) -> None:
    start_ms = int(time.time() * 1000)
    call_id = first_call_id(scenarios(start_ms)[1])  # the same seed gives the same ids
    overview_png, call_png = tmp_path / "liveview-overview.png", tmp_path / "liveview-call.png"
    first = "document.querySelector('#calls .call')"
    overview_ready = (
        f"{first} !== null && {first}.dataset.call === '{call_id}'"
        f" && {first}.querySelector('.issue[data-issue=\"high_loss\"]') !== null"
        " && document.querySelectorAll('#calls .call').length === 5"
    )
    overview_extract = """({
        calls: [...document.querySelectorAll('#calls .call')].map(c => ({call: c.dataset.call, score: Number(c.dataset.score),
            issues: [...c.querySelectorAll('.issue')].map(i => i.dataset.issue), rows: c.querySelectorAll('tr[data-client]').length})),
        counters: Object.fromEntries([...document.querySelectorAll('[data-counter]')].map(d => [d.dataset.counter, d.querySelector('b').textContent])),
        events: [...document.querySelectorAll('#events li')].map(li => li.textContent).slice(0, 10),
    })"""
    chart = "document.querySelector('.chart[data-metric=\"lossPercent\"]')"
    lines = f"[...({chart}?.querySelectorAll('g[data-client]') ?? [])]"
    call_ready = (
        f"{lines}.length === 3 && {lines}.filter(g => g.dataset.values.split(' ').filter(Boolean).length >= 4).length >= 2"
        " && document.querySelector('#open-issues .issue[data-issue=\"high_loss\"]') !== null"
    )
    call_extract = f"""({{
        title: document.getElementById('call-title')?.textContent,
        participants: [...document.querySelectorAll('#participants tr[data-client]')].map(r => r.dataset.client),
        charts: [...document.querySelectorAll('.chart')].map(c => c.dataset.metric),
        loss: {lines}.map(g => ({{client: g.dataset.client, values: g.dataset.values.split(' ').filter(Boolean).map(Number),
            ys: [...g.querySelectorAll('polyline')].flatMap(p => p.getAttribute('points').split(' ').map(xy => Number(xy.split(',')[1])))}})),
        zeroY: (() => {{ const t = [...{chart}.querySelectorAll('text')].find(t => t.textContent === '0');
            return t ? Number(t.getAttribute('y')) - 3 : null; }})(),
        timeline: [...document.querySelectorAll('#timeline li')].map(li => li.dataset.issue),
        tracks: document.querySelectorAll('#tracks tr[data-track]').length,
        events: [...document.querySelectorAll('#call-events li')].map(li => li.dataset.event),
    }})"""
    stop = asyncio.Event()
    async with running_collector(PIPELINE) as c:
        exporter = c.service.exporters[ComponentId("liveview")]
        ui = f"http://127.0.0.1:{exporter.bound_port}/ui"
        loads = [asyncio.create_task(run(s, c.url(), stop=stop)) for s in scenarios(start_ms)]
        try:
            tabs = [
                {
                    "name": "overview",
                    "url": ui,
                    "waitFor": overview_ready,
                    "waitTimeoutMs": 40000,
                    "extract": overview_extract,
                    "screenshot": str(overview_png),
                },
                {
                    "name": "call",
                    "url": f"{ui}#/call?service={SERVICE}&call={call_id}",
                    "waitFor": call_ready,
                    "waitTimeoutMs": 40000,
                    "extract": call_extract,
                    "screenshot": str(call_png),
                },
            ]
            # One page a browser run: a full-page screenshot of a tab in the background can come out torn.
            result: dict[str, Any] = {"tabs": {}}
            for tab in tabs:
                result["tabs"] |= (await drive({"timeoutMs": 60000, "tabs": [tab]}, tmp_path, timeout=120))["tabs"]
            async with http.get(ui.replace("/ui", "/ui/api/calls?limit=100")) as resp:
                api = await resp.json()
        finally:
            stop.set()
            await asyncio.gather(*loads)
        ARTIFACTS.mkdir(exist_ok=True)
        for png in (overview_png, call_png):
            if png.exists():
                shutil.copy(png, ARTIFACTS / png.name)
        (ARTIFACTS / "liveview-browser.json").write_text(json.dumps(result, indent=1))
        # Every client said goodbye or went idle: no call is counted active any more.
        await wait_until(lambda: exporter.view.state(c.telemetry, {})["counts"]["activeCalls"] == 0, timeout=30)
    overview, call = result["tabs"]["overview"], result["tabs"]["call"]
    assert not overview.get("error") and not overview.get("pageErrors"), (overview.get("error"), overview.get("extract"))
    assert not call.get("error") and not call.get("pageErrors"), (call.get("error"), call.get("extract"))
    assert overview_png.stat().st_size > 10_000 and call_png.stat().st_size > 10_000

    shown = overview["extract"]
    calls = shown["calls"]
    assert calls[0]["call"] == call_id and "high_loss" in calls[0]["issues"]
    assert [x["score"] for x in calls] == sorted(x["score"] for x in calls)
    assert all(x["rows"] == 3 for x in calls), calls
    assert int(shown["counters"]["calls"]) == 5 and int(shown["counters"]["clients"]) == 15

    detail = call["extract"]
    assert call_id in detail["title"] and len(detail["participants"]) == 3
    assert detail["charts"] == ["rttMs", "lossPercent", "jitterMs", "inKbps", "outKbps", "mos", "fps", "height"]
    plotted = [line for line in detail["loss"] if line["values"]]
    assert len(plotted) >= 2, detail["loss"]
    for line in plotted:
        # A lossy network (12 % each way): the loss plotted is far above a healthy one's, above the zero line.
        assert min(line["values"]) > 5, line
        assert detail["zeroY"] is not None and min(line["ys"]) < detail["zeroY"] - 10, line
    assert "high_loss" in detail["timeline"] and detail["tracks"] >= 6
    assert "CLIENT_JOINED" in detail["events"]

    # The API agrees with the page: the healthy calls score better and lose far less.
    impaired = next(x for x in api["calls"] if x["callId"] == call_id)
    healthy = [x for x in api["calls"] if x["callId"] != call_id]
    assert len(healthy) == 4 and all(x["score"] > impaired["score"] + 1 for x in healthy), api["calls"]
    for x in healthy:
        assert all((cl["lossPercent"] or 0) < 10 for cl in x["clients"]), x
