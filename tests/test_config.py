"""Loading and validating the YAML configuration, through the library and through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from webrtc_observer.components import config_types
from webrtc_observer.config import ComponentId, ConfigError, load_text

REPO = Path(__file__).resolve().parents[1]

GOOD = """
receivers:
  observertc:
    endpoint: ${env:OBS_ENDPOINT:-127.0.0.1:7080}
    max_message_bytes: 512KiB
    websocket_heartbeat: 500ms
exporters:
  file/reports:
    path: ${env:OBS_DIR}/reports.jsonl
    rotation: {max_megabytes: 5}
  file/raw:
    path: "$${not-expanded}/raw.jsonl"
  debug:
    interval: 5m
service:
  shutdown_timeout: 3s
  pipelines:
    samples:
      receivers: [observertc]
      exporters: [file/reports, file/raw, debug]
"""


def load(text: str, env: dict[str, str] | None = None):
    return load_text(text, config_types(), env=env or {})


def test_a_good_config_resolves_to_typed_options():
    config = load(GOOD, {"OBS_DIR": "/var/lib/obs"})
    receiver = config.components["receivers"][ComponentId("observertc")]
    assert receiver.endpoint == "127.0.0.1:7080"
    assert receiver.max_message_bytes == 512 * 1024
    assert receiver.websocket_heartbeat == pytest.approx(0.5)
    reports = config.components["exporters"][ComponentId("file", "reports")]
    assert reports.path == "/var/lib/obs/reports.jsonl"
    assert reports.rotation.max_megabytes == 5 and reports.rotation.max_backups == 5  # default kept
    assert config.components["exporters"][ComponentId("file", "raw")].path == "${not-expanded}/raw.jsonl"
    assert config.components["exporters"][ComponentId("debug")].interval == 300
    assert config.shutdown_timeout == 3
    pipeline = config.pipelines["samples"]
    assert pipeline.exporters == [ComponentId("file", "reports"), ComponentId("file", "raw"), ComponentId("debug")]


def test_env_values_take_their_yaml_type_and_cannot_inject_structure():
    text = """
receivers:
  observertc: {max_message_bytes: "${env:SIZE}", endpoint: "${env:EP}"}
exporters: {debug: {}}
service: {pipelines: {p: {receivers: [observertc], exporters: [debug]}}}
"""
    config = load(text, {"SIZE": "2048", "EP": "127.0.0.1:9999"})
    receiver = config.components["receivers"][ComponentId("observertc")]
    assert receiver.max_message_bytes == 2048
    assert receiver.endpoint == "127.0.0.1:9999"
    with pytest.raises(ConfigError) as err:
        load(text, {"SIZE": "2048", "EP": "{a: 1}"})  # stays the text it is
    assert "receivers.observertc.endpoint: expected host:port, got '{a: 1}'" in str(err.value)


BAD = """
receivers:
  observertc:
    endpoint: "nowhere"
    max_message_bytes: lots
    websocket_heartbeat: 3 fortnights
    colour: blue
    cors: {allowed_origins: [app.example.com]}
  zeromq: {}
processors: {}
exporters:
  file:
    path: ${env:MISSING_DIR}/x.jsonl
    rotation: {max_megabytes: "ten"}
    sending_queue: {queue_size: 0}
  Bad Id!: {}
extensions: {}
service:
  pipelines:
    samples:
      receivers: [observertc]
      processors: [batch]
      exporters: [file, kafka/reports]
    empty:
      receivers: []
      exporters: []
"""

EXPECTED = [
    "receivers.observertc.endpoint: expected host:port",
    "receivers.observertc.max_message_bytes: expected a size",
    "receivers.observertc.websocket_heartbeat: expected a duration",
    "receivers.observertc.colour: unknown option",
    "receivers.observertc.cors.allowed_origins[0]: an origin looks like",
    "receivers.zeromq: unknown receiver type 'zeromq' (known: kafka, observertc)",
    "exporters.file.path: environment variable MISSING_DIR is not set",
    "exporters.file.rotation.max_megabytes: expected an integer",
    "exporters.file.sending_queue.queue_size: must be at least 1",
    "exporters.Bad Id!: 'Bad Id!' is not a component id",
    "extensions: unknown top-level section",
    "service.pipelines.samples.processors[0]: processor 'batch' is not defined under processors",
    "service.pipelines.samples.exporters[1]: exporter 'kafka/reports' is not defined under exporters",
    "service.pipelines.empty.receivers: a pipeline needs at least one receiver",
    "service.pipelines.empty.exporters: a pipeline needs at least one exporter",
]


def test_every_error_is_reported_at_once_with_its_yaml_path():
    with pytest.raises(ConfigError) as err:
        load(BAD)
    text = str(err.value)
    for expected in EXPECTED:
        assert expected in text, f"missing: {expected}\n--- got:\n{text}"


def test_queue_size_is_validated_when_other_file_options_are_fine():
    text = """
receivers: {observertc: {}}
exporters: {file: {sending_queue: {queue_size: 0}}}
service: {pipelines: {p: {receivers: [observertc], exporters: [file]}}}
"""
    with pytest.raises(ConfigError, match=r"exporters\.file\.sending_queue\.queue_size: must be at least 1"):
        load(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "service.pipelines: at least one pipeline is required"),
        ("receivers: [a, b]", "receivers: expected a mapping"),
        ("key: [unclosed", "is not valid YAML at line 1"),
        ("- just a list", "the top level must be a mapping"),
        (
            "service: {pipelines: {p: {receivers: [observertc, observertc], exporters: [debug]}}}\nreceivers: {observertc: {}}\nexporters: {debug: {}}",
            "listed twice",
        ),
    ],
)
def test_structural_errors(text, message):
    with pytest.raises(ConfigError) as err:
        load(text)
    assert message in str(err.value)


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webrtc_observer", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_cli_validate_accepts_the_embedded_default():
    result = _cli("validate", "--config", "collector.yaml")
    assert result.returncode == 0, result.stderr
    assert (
        "pipeline reports: observertc -> correlation -> quality -> issues -> summary -> reports -> file, debug, prometheus, liveview"
        in result.stdout
    )


def test_cli_validate_prints_every_error_and_exits_non_zero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = _cli("validate", "--config", str(bad))
    assert result.returncode == 1
    assert f"{len(EXPECTED)} configuration error(s)" in result.stderr
    for expected in EXPECTED:
        assert expected in result.stderr


def test_cli_run_refuses_a_bad_config_without_starting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = _cli("run", "--config", str(bad))
    assert result.returncode == 1 and "receivers.zeromq" in result.stderr


def test_cli_names_a_missing_file(tmp_path):
    result = _cli("validate", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1 and "cannot read config file" in result.stderr


@pytest.mark.parametrize(
    ("processors", "where"),
    [("[reports, correlation]", "after it"), ("[reports]", "not in the pipeline"), ("[quality, reports]", "not in the pipeline")],
)
def test_a_processor_order_that_cannot_work_is_a_config_error(processors: str, where: str) -> None:
    text = f"""
receivers: {{observertc: {{}}}}
processors: {{correlation: {{}}, reports: {{}}, quality: {{}}}}
exporters: {{debug: {{}}}}
service: {{pipelines: {{p: {{receivers: [observertc], processors: {processors}, exporters: [debug]}}}}}}
"""
    with pytest.raises(ConfigError) as exc:
        load(text)
    (issue,) = exc.value.issues
    assert issue.path.startswith(
        "service.pipelines.p.processors["
    ) and f"needs a correlation processor before it (correlation is {where})" in str(issue), issue


def test_a_processor_order_that_works_is_accepted() -> None:
    text = """
receivers: {observertc: {}}
processors: {correlation: {}, reports: {}, quality: {}}
exporters: {debug: {}}
service: {pipelines: {p: {receivers: [observertc], processors: [correlation, quality, reports], exporters: [debug]}}}
"""
    assert [str(p) for p in load(text).pipelines["p"].processors] == ["correlation", "quality", "reports"]
