"""2.x meta items through the real receiver and the reports processor: what clients really send."""

from __future__ import annotations

from tests.conftest import assert_valid_report
from tests.test_correlation import client, post
from webrtc_observer.testing import running_collector

YAML = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
processors: {correlation: {}, reports: {}}
exporters: {recording: {}}
service: {pipelines: {p: {receivers: [observertc], processors: [correlation, reports], exporters: [recording]}}}
"""


async def test_a_media_device_keeps_its_id_whether_it_is_sent_as_id_or_as_device_id(http):
    sample = client("alice", call_id="c1", out=(1,))
    sample["mediaDevices"] = [
        {"deviceId": "mic-from-client-monitor-3", "kind": "audioinput", "label": "Mic"},  # client-monitor-js 3.x
        {"id": "cam-from-the-schema", "kind": "videoinput", "label": "Cam"},
    ]
    async with running_collector(YAML) as c:
        await post(c, http, sample)
        meta = [r for r in c.exporter().reports if r.type == "CALL_META_DATA" and r.payload["type"] == "MEDIA_DEVICE"]
    for report in meta:
        assert_valid_report(report.type, report.payload)
    payloads = sorted(report.payload["payload"] for report in meta)
    assert len(payloads) == 2 and '"mic-from-client-monitor-3"' in payloads[1] and '"cam-from-the-schema"' in payloads[0]
    assert all('"id"' in p and "deviceId" not in p for p in payloads), payloads
