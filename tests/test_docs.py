"""The README's configuration reference stays in step with the code."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from webrtc_observer.components import builtin_factories
from webrtc_observer.exporterhelper import QueuedExporterConfig
from webrtc_observer.http_server import ServerConfig

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _option_paths(cls: type, prefix: str = "") -> list[str]:
    paths = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            paths += _option_paths(tp, f"{prefix}{field.name}.")
        else:
            paths.append(prefix + field.name)
    return paths


def _section(kind: str, type_name: str) -> str:
    match = re.search(rf"^### {kind} `{type_name}`\n(.*?)(?=^### |^## )", README, re.S | re.M)
    assert match, f"README has no section '### {kind} `{type_name}`'"
    return match.group(1)


CASES = [(kind, t, f) for kind, by_type in builtin_factories().items() for t, f in by_type.items()]


def _shared_section(title: str) -> str:
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^### |^## )", README, re.S | re.M)
    assert match, f"README has no section '### {title}'"
    return match.group(1)


# Options that several components inherit are documented once; each component's section links there.
SHARED = [
    (ServerConfig, "Server options of every HTTP endpoint", "#server-options-of-every-http-endpoint"),  # endpoint: per component
    (QueuedExporterConfig, "Exporter `kafka`", "kafka"),
]


@pytest.mark.parametrize(("kind", "type_name", "factory"), CASES, ids=[f"{k}/{t}" for k, t, _ in CASES])
def test_every_option_is_documented(kind, type_name, factory):
    section = _section(kind[:-1].capitalize(), type_name)
    elsewhere: dict[str, str] = {}
    for base, title, link in SHARED:
        if issubclass(factory.config_type, base) and title not in section:
            assert link in section, f"the README section of {kind}.{type_name} does not point to '{title}'"
            for path in _option_paths(base):
                elsewhere[path] = title
    for path in _option_paths(factory.config_type):
        if path in elsewhere and f"| `{path}` |" not in section:
            where = _shared_section(elsewhere[path])
            assert f"| `{path}` |" in where, f"README section '{elsewhere[path]}' does not document {path}"
        else:
            assert f"| `{path}` |" in section, f"README does not document {kind}.{type_name}.{path}"


def test_every_metric_of_every_component_is_in_the_telemetry_table(tmp_path):
    """Build a collector with one of each component (not started) and look each registered metric up
    in "The collector's own telemetry"."""
    from webrtc_observer.components import config_types
    from webrtc_observer.config import load_text
    from webrtc_observer.service import Service

    yaml_text = f"""
receivers:
  observertc: {{endpoint: "127.0.0.1:0"}}
  kafka: {{brokers: ["127.0.0.1:1"], topic: samples, group_id: g}}
processors:
  obfuscation: {{salt: "0123456789abcdef0123456789abcdef"}}
  correlation: {{}}
  quality: {{}}
  issues: {{}}
  summary: {{}}
  reports: {{}}
exporters:
  file: {{path: "{tmp_path}/reports.jsonl"}}
  debug: {{}}
  prometheus: {{endpoint: "127.0.0.1:0"}}
  liveview: {{endpoint: "127.0.0.1:0"}}
  otlp: {{endpoint: "http://127.0.0.1:1", protocol: http/protobuf}}
  kafka: {{brokers: ["127.0.0.1:1"]}}
service:
  state: {{directory: "{tmp_path}/state"}}
  pipelines:
    all:
      receivers: [observertc, kafka]
      processors: [obfuscation, correlation, quality, issues, summary, reports]
      exporters: [file, debug, prometheus, liveview, otlp, kafka]
"""
    config = load_text(yaml_text, config_types())
    used = {cid.type for components in config.components.values() for cid in components}
    assert used == {t for by_type in builtin_factories().values() for t in by_type}, "one of each component type"
    service = Service(config, builtin_factories())
    table = README[README.index("## The collector's own telemetry") :]
    table = table[: table.index("\n\n", table.index("| metric | labels |"))]
    documented = set(re.findall(r"`([a-z_]+)`", table))
    missing = sorted(m.name for m in service.telemetry if m.name not in documented)
    assert not missing, f"metrics missing from the README's telemetry table: {missing}"
