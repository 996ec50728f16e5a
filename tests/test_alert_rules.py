"""The Prometheus alert rules: the plain rules file, its promtool unit tests, and the chart's PrometheusRule.

``deploy/prometheus/webrtc-observer-rules.yaml`` (a link to the chart's ``files/rules.yaml``, which the
PrometheusRule template embeds) is checked with ``promtool check rules`` and unit-tested with ``promtool
test rules`` on ``webrtc-observer-rules.test.yaml``. Those unit tests are shown to bite: with every alert's
expression made to never fire, each alert's firing test fails; made to always fire, each quiet test fails.
Every metric and label the rules query is looked up in the scrape of a running collector with every
component that publishes them. ``helm template`` renders the same rules as a PrometheusRule.

promtool (Debian's ``prometheus`` package) and helm are external tools: a test needing one is skipped
when it is missing, except in CI (``CI`` set), where the missing tool is a failure (``.ci/run`` installs
both).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import _samples
from tests._kafka_broker import kafka_broker_fixture  # noqa: F401  (the kafka_broker fixture)
from tests.test_deploy import CHART, HELM_HOW, exported_series, helm, render, require_tool  # noqa: F401  (helm: a fixture)
from webrtc_observer.components import builtin_factories
from webrtc_observer.config import ComponentId
from webrtc_observer.exporters.prometheus import metric_name
from webrtc_observer.testing import running_collector

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "webrtc-observer-rules.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "webrtc-observer-rules.test.yaml"
CHART_RULES = CHART / "files" / "rules.yaml"
README = ROOT / "deploy" / "README.md"
PROMTOOL_HOW = "apt-get install prometheus (Debian's package has promtool); .ci/run installs it"

METRIC = re.compile(r"\b(observertc_[a-z_]+)")
SELECTOR = re.compile(r"\b(observertc_[a-z_]+|up)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
TARGET_LABELS = {"job", "instance"}
"""Labels Prometheus gives every scraped series."""


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", PROMTOOL_HOW)


@pytest.fixture(scope="module")
def groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=120)


# ==================================================================================================
# The rules file and its unit tests
# ==================================================================================================


def test_the_plain_rules_file_is_the_charts():
    assert RULES.is_file() and CHART_RULES.is_file()
    assert RULES.read_bytes() == CHART_RULES.read_bytes(), "deploy/prometheus/ and the chart must ship the same rules"


def test_promtool_check_rules(promtool, groups):
    result = run_promtool(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in groups)
    assert f"SUCCESS: {count} rules found" in result.stdout, result.stdout


def test_promtool_test_rules(unit_test_runs):
    returncode, output = unit_test_runs["as shipped"]
    assert returncode == 0, output
    assert "SUCCESS" in output


def test_every_alert_is_labelled_annotated_and_held(groups):
    names = [rule["alert"] for rule in alerts(groups)]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in alerts(groups):
        name = rule["alert"]
        assert name.startswith("WebRTCObserver"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description"} <= rule["annotations"].keys(), name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name} has no `for:` to hold it against flapping"


def _unit_tests() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES_TEST.read_text())["tests"]


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not(groups):
    document = yaml.safe_load(RULES_TEST.read_text())
    assert [(RULES_TEST.parent / f).resolve() for f in document["rule_files"]] == [RULES.resolve()]
    fires: dict[str, list[str]] = {}
    quiet: dict[str, list[str]] = {}
    for test in document["tests"]:
        for name in {case["alertname"] for case in test["alert_rule_test"]}:
            cases = [c for c in test["alert_rule_test"] if c["alertname"] == name]
            if any(c.get("exp_alerts") for c in cases):
                fires.setdefault(name, []).append(test["name"])
                for case in cases:
                    for expected in case.get("exp_alerts") or []:
                        assert expected.get("exp_annotations"), f"{test['name']}: check the annotations too"
            else:
                quiet.setdefault(name, []).append(test["name"])
    names = {rule["alert"] for rule in alerts(groups)}
    assert names - fires.keys() == set(), "alerts no test fires"
    assert names - quiet.keys() == set(), "alerts without a test where they stay quiet"
    assert fires.keys() | quiet.keys() <= names, "tests of alerts the rules do not have"


def _mutated(directory: Path, groups: list[dict[str, Any]], expression: str) -> Path:
    """The unit tests beside a copy of the rules whose every alert's expression is ``expression`` (with
    ``{expr}`` the original one)."""
    directory.mkdir()
    changed = yaml.safe_load(yaml.safe_dump(groups))
    for rule in alerts(changed):
        rule["expr"] = expression.format(expr=rule["expr"].strip())
    (directory / RULES.name).write_text(yaml.safe_dump({"groups": changed}, sort_keys=False))
    shutil.copy(RULES_TEST, directory / RULES_TEST.name)
    return directory / RULES_TEST.name


@pytest.fixture(scope="module")
def unit_test_runs(promtool, groups, tmp_path_factory) -> dict[str, tuple[int, str]]:
    """``promtool test rules`` on the unit tests with the rules as shipped, with alerts that never fire and
    with alerts that always fire: (exit code, output) of each. The three run at once."""
    tmp = tmp_path_factory.mktemp("rules")
    files = {
        "as shipped": RULES_TEST,
        "never firing": _mutated(tmp / "never", groups, "({expr}) and on () vector(0) > 1"),
        "always firing": _mutated(tmp / "always", groups, "({expr}) or vector(1)"),
    }
    processes = {
        name: subprocess.Popen(
            [promtool, "test", "rules", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for name, path in files.items()
    }
    results = {}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=300)
        results[name] = (process.returncode, output)
    return results


def _failed_tests(output: str) -> set[str]:
    return set(re.findall(r"^\s*name: (.*),\s*$", output, flags=re.MULTILINE))


def test_the_unit_tests_fail_when_an_alert_never_fires(unit_test_runs):
    returncode, output = unit_test_runs["never firing"]
    assert returncode != 0
    firing = {t["name"] for t in _unit_tests() if any(c.get("exp_alerts") for c in t["alert_rule_test"])}
    failed = _failed_tests(output)
    assert firing and firing <= failed, f"firing tests that pass without the alert: {sorted(firing - failed)}"


def test_the_unit_tests_fail_when_an_alert_always_fires(unit_test_runs):
    returncode, output = unit_test_runs["always firing"]
    assert returncode != 0
    quiet = {t["name"] for t in _unit_tests() if not any(c.get("exp_alerts") for c in t["alert_rule_test"])}
    failed = _failed_tests(output)
    assert quiet and quiet <= failed, f"quiet tests that pass whatever the alert does: {sorted(quiet - failed)}"


def test_deploy_readme_says_what_to_do_for_every_alert(groups):
    text = README.read_text()
    assert "\n## Alerts\n" in text
    section = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    missing = [rule["alert"] for rule in alerts(groups) if f"`{rule['alert']}`" not in section]
    assert not missing, f"deploy/README.md, Alerts, does not list {missing}"


# ==================================================================================================
# The metrics the rules query, in a running collector's scrape
# ==================================================================================================


def _collector_yaml(tmp: Path, bootstrap: str) -> str:
    """Every component that publishes the metrics the rules query: the ingest pipeline with every registered
    processor, and a kafka receiver (its input topic need not exist: its metrics are registered at once)."""
    registered = builtin_factories()["processors"]
    processors = [p for p in ("correlation", "quality", "issues", "summary", "reports") if p in registered]
    options = {"correlation": {"client_idle_timeout": "300ms", "call_empty_timeout": "200ms", "sweep_interval": "50ms"}}
    config: dict[str, Any] = {
        "receivers": {"observertc": {"endpoint": "127.0.0.1:0"}},
        "processors": {p: options.get(p, {}) for p in processors},
        "exporters": {"file": {"path": str(tmp / "reports.jsonl")}, "prometheus": {"endpoint": "127.0.0.1:0"}},
        "service": {
            "pipelines": {
                "reports": {"receivers": ["observertc"], "processors": processors, "exporters": ["file", "prometheus"]},
            }
        },
    }
    if "kafka" in builtin_factories()["receivers"]:
        config["receivers"]["kafka"] = {"brokers": [bootstrap], "topic": "absent-samples", "group_id": "rules-test"}
        config["service"]["pipelines"]["analysis"] = {"receivers": ["kafka"], "exporters": ["prometheus"]}
    return yaml.safe_dump(config)


async def _scrape(tmp: Path, bootstrap: str, http: aiohttp.ClientSession) -> tuple[str, dict[str, tuple[str, ...]]]:
    """/metrics after a call that ended and a refused sample; and each metric's label names."""
    async with running_collector(_collector_yaml(tmp, bootstrap)) as c:
        url = c.url("/rest/samples/svc/web-app")
        for step in range(2):
            ts = _samples.T0 + 5000 * step
            alice = _samples.client_sample_v2("c-alice", ts=ts)
            alice["inboundAudioTracks"][0].update(packetsReceived=500 + 250 * step, packetsLost=3 + 2 * step)
            async with http.post(url, json=_samples.samples_v2(alice)) as resp:
                assert resp.status == 202, await resp.text()
        async with http.post(url, json={"clientSamples": [{"clientId": "x", "timestamp": "now"}]}) as resp:
            assert resp.status == 400
        duration = c.telemetry.get("call_duration")
        deadline = asyncio.get_running_loop().time() + 10
        while not any(v.count for v in duration.series().values()):  # the call ends after its timeouts
            assert asyncio.get_running_loop().time() < deadline, "the call did not end"
            await asyncio.sleep(0.05)
        port = c.service.exporters[ComponentId("prometheus")].bound_port
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        labels = {metric_name("observertc", m.name, m.unit): m.labels for m in c.telemetry}
    return text, labels


async def test_the_rules_query_metrics_and_labels_the_collector_exports(groups, tmp_path, http, kafka_broker):
    text, labels = await _scrape(tmp_path, kafka_broker.bootstrap, http)
    exported = exported_series(text)
    values = {s.name for f in text_string_to_metric_families(text) for s in f.samples if s.value > 0}
    assert "observertc_samples_received_total" in values and "observertc_samples_refused_total" in values

    exprs = [rule["expr"] for rule in alerts(groups)]
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    missing = used - exported.keys()
    assert not missing, f"the rules query metrics the collector does not export: {sorted(missing)}"
    for expr in exprs:
        families = {exported[n] for n in METRIC.findall(expr)}
        available = {label for family in families for label in labels[family]} | TARGET_LABELS | {"le"}
        for metric, matchers in SELECTOR.findall(expr):
            selected = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            own = TARGET_LABELS if metric == "up" else set(labels[exported[metric]])
            assert selected <= own, f"{metric} has no label {selected - own}: {expr}"
        for grouping in GROUPING.findall(expr):
            names = {g.strip() for g in grouping.split(",") if g.strip()}
            assert names <= available, f"no metric of this rule has the labels {names - available}: {expr}"


# ==================================================================================================
# Helm: the PrometheusRule
# ==================================================================================================


def test_helm_renders_the_rules_as_a_prometheusrule(helm, groups):
    assert not [d for d in render(helm) if d["kind"] == "PrometheusRule"], "no PrometheusRule unless enabled"
    docs = render(helm, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=prom")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "obs"
    assert rule["spec"] == {"groups": groups}, "the PrometheusRule holds the rules file's groups, unchanged"
    assert "{{ $labels.job }}" in yaml.safe_dump(rule["spec"]), "the rules' templates reach Prometheus unrendered"
    helm("lint", "--strict", str(CHART), "--set", "prometheusRule.enabled=true")
    helm("lint", "--strict", str(CHART), "--set", "prometheusRule.enabled=true", "--set", "mode=scaleout")
