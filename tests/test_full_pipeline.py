"""Issue 4's "done when": one YAML pipeline observertc → correlation → quality → reports →
[kafka, prometheus, otlp, file]; the same reports reach Kafka and the file across a broker outage,
/metrics passes promtool, and OTLP arrives."""

from __future__ import annotations

import asyncio
import json

from tests._kafka_broker import kafka_broker_fixture  # noqa: F401  (the kafka_broker fixture)
from tests.conftest import assert_valid_report
from tests.test_correlation import client, post
from tests.test_otlp_exporter import http_sink  # noqa: F401  (an OTLP/HTTP server fixture)
from tests.test_prometheus_exporter import promtool_check
from webrtc_observer.config import ComponentId
from webrtc_observer.testing import running_collector


async def test_the_same_reports_reach_kafka_and_the_file_across_a_broker_outage(tmp_path, http, kafka_broker, http_sink):
    sink, otlp_endpoint = http_sink
    out = tmp_path / "reports.jsonl"
    yaml_text = f"""
receivers: {{observertc: {{endpoint: "127.0.0.1:0"}}}}
processors: {{correlation: {{}}, quality: {{}}, reports: {{}}}}
exporters:
  kafka: {{brokers: ["{kafka_broker.bootstrap}"], timeout: 2s, retry_on_failure: {{initial_interval: 100ms, max_interval: 500ms}}}}
  prometheus: {{endpoint: "127.0.0.1:0"}}
  otlp: {{protocol: http/protobuf, endpoint: "{otlp_endpoint}", interval: 300ms}}
  file: {{path: "{out}"}}
service:
  pipelines:
    reports:
      receivers: [observertc]
      processors: [correlation, quality, reports]
      exporters: [kafka, prometheus, otlp, file]
"""
    async with running_collector(yaml_text) as c:
        for tick in range(3):
            ts = 1_700_000_000_000 + tick * 1000
            await post(
                c,
                http,
                client("alice", call_id="c1", out=(1,), inb=(2,), ts=ts),
                client("bob", call_id="c1", out=(2,), inb=(1,), ts=ts),
            )
        kafka_broker.freeze()  # the broker stops answering mid-stream
        for tick in range(3, 6):
            ts = 1_700_000_000_000 + tick * 1000
            await post(
                c,
                http,
                client("alice", call_id="c1", out=(1,), inb=(2,), ts=ts),
                client("bob", call_id="c1", out=(2,), inb=(1,), ts=ts),
            )
        await asyncio.sleep(0.5)
        kafka_broker.thaw()
        port = c.service.exporters[ComponentId("prometheus")].bound_port
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            promtool_check(await resp.text())
        deadline = asyncio.get_running_loop().time() + 20
        while c.telemetry.get("exporter_queue_size").value("kafka") > 0 or not sink.requests:
            assert asyncio.get_running_loop().time() < deadline, "kafka queue did not drain / no OTLP export"
            await asyncio.sleep(0.1)
    in_file = [json.loads(line) for line in out.read_text().splitlines()]
    in_kafka = [json.loads(m.value) for m in await asyncio.to_thread(kafka_broker.read, "reports", len(in_file), 20.0)]
    assert len(in_file) > 6 * 2  # every sample gave at least one report
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, in_kafka)) == sorted(map(key, in_file))  # the same reports, none lost, none twice
    for record in in_file:
        assert_valid_report(record["type"], record["payload"])
    assert "observertc.samples_received" in sink.metrics()
