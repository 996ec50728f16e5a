"""The collector's YAML document: components keyed by ``type[/name]`` and the pipelines that wire them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ._errors import ConfigError, ConfigIssue, join
from ._expand import expand
from ._options import decode
from ._units import ByteSize, Duration

KINDS = ("receivers", "processors", "exporters")
_ID = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)(?:/(?P<name>[A-Za-z0-9_.\-]+))?$")


@dataclass(frozen=True, slots=True)
class ComponentId:
    """``type[/name]``: the name lets two instances of one type coexist (``kafka/reports``)."""

    type: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> ComponentId:
        match = _ID.match(text) if isinstance(text, str) else None
        if not match:
            raise ValueError(f"{text!r} is not a component id of the form type[/name] (e.g. kafka/reports)")
        return cls(match.group("type"), match.group("name") or "")

    def __str__(self) -> str:
        return f"{self.type}/{self.name}" if self.name else self.type


@dataclass(frozen=True)
class PipelineConfig:
    receivers: list[ComponentId]
    processors: list[ComponentId]
    exporters: list[ComponentId]


@dataclass
class LogsConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass
class MetricsConfig:
    max_series: int = 2000
    """Label sets kept per metric; past it, updates land in the metric's ``_overflow_`` series."""
    max_samples: int = 10_000
    """Exposed sample lines that label sets with client-derived labels may use, all metrics together;
    past it, new label sets land in their metric's ``_overflow_`` series."""

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        for name in ("max_series", "max_samples"):
            if getattr(self, name) < 1:
                errors.append((name, "must be at least 1"))
        return errors


@dataclass
class TelemetryConfig:
    logs: LogsConfig = field(default_factory=LogsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


@dataclass
class _PipelineOptions:
    receivers: list[str] = field(default_factory=list)
    processors: list[str] = field(default_factory=list)
    exporters: list[str] = field(default_factory=list)


@dataclass
class HealthConfig:
    exporter_failure_threshold: Duration = Duration(60.0)
    """``GET /health`` turns unhealthy when an exporter has been failing for longer than this."""


@dataclass
class MemoryLimiterConfig:
    limit: ByteSize = ByteSize(0)
    """Resident memory the process must not pass because of input (e.g. 1GiB). Required."""
    spike_limit: ByteSize | None = None
    """Headroom below ``limit`` at which refusing starts; default a fifth of ``limit``."""
    check_interval: Duration = Duration(1.0)

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        if self.limit <= 0:
            issues.append(("limit", "required: the memory the process must not pass (e.g. 1GiB)"))
        elif self.spike_limit is not None and not 0 <= self.spike_limit < self.limit:
            issues.append(("spike_limit", "must be below limit"))
        if self.check_interval <= 0:
            issues.append(("check_interval", "must be positive"))
        return issues

    @property
    def soft_limit(self) -> int:
        spike = self.spike_limit if self.spike_limit is not None else self.limit // 5
        return int(self.limit - spike)


@dataclass
class StateConfig:
    """``service.state``: each process checkpoints its processors' state to a local file and resumes
    from it when it starts again (see :mod:`webrtc_observer.state_store`)."""

    directory: str | None = None
    """Where every process keeps ``worker-<i>.state``. Default: with ``workers`` > 1 a directory of
    the supervisor's run (a restarted worker resumes, a new run starts empty); with one process no
    checkpoint at all."""
    checkpoint_interval: Duration = Duration(5.0)
    """How often the state is written; what changed since the last checkpoint is lost with the process."""

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        if self.checkpoint_interval <= 0:
            issues.append(("checkpoint_interval", "must be more than 0"))
        if self.directory is not None:
            if not self.directory.strip():
                issues.append(("directory", "must not be empty: leave it out for the default"))
            elif Path(self.directory).exists() and not Path(self.directory).is_dir():
                issues.append(("directory", f"{self.directory} exists and is not a directory"))
        return issues


@dataclass
class _ServiceOptions:
    pipelines: dict[str, _PipelineOptions] = field(default_factory=dict)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    shutdown_timeout: Duration = Duration(30.0)
    """How long draining may take on SIGTERM before the rest is abandoned (and counted)."""
    workers: int = 1
    """Processes running the pipelines; every sample of a call is handled by one of them."""
    memory_limiter: MemoryLimiterConfig | None = None
    """Refuse new data (503) from ``limit - spike_limit`` of resident memory on."""
    state: StateConfig = field(default_factory=StateConfig)
    """Checkpoints of the processors' state, so that a restarted process resumes its calls."""


@dataclass
class CollectorConfig:
    """A resolved, validated configuration: each component's typed config, and the pipelines."""

    components: dict[str, dict[ComponentId, Any]]
    """kind (``receivers``...) → id → typed config instance."""
    pipelines: dict[str, PipelineConfig]
    telemetry: TelemetryConfig
    shutdown_timeout: float
    source: str = "<memory>"
    health: HealthConfig = field(default_factory=HealthConfig)
    workers: int = 1
    memory_limiter: MemoryLimiterConfig | None = None
    state: StateConfig = field(default_factory=StateConfig)


def load_file(
    path: str | Path, config_types: Mapping[str, Mapping[str, type]], env: Mapping[str, str] | None = None
) -> CollectorConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read config file {path}: {exc.strerror}")]) from None
    return load_text(text, config_types, source=str(path), env=env)


def load_text(
    text: str, config_types: Mapping[str, Mapping[str, type]], *, source: str = "<memory>", env: Mapping[str, str] | None = None
) -> CollectorConfig:
    """Parse, expand and validate a whole document; raise :class:`ConfigError` listing every problem.

    ``config_types`` maps each kind to its known component types and their config classes.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([ConfigIssue("", f"{source} is not valid YAML{where}: {getattr(exc, 'problem', exc)}")]) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([ConfigIssue("", f"{source}: the top level must be a mapping")])

    issues: list[ConfigIssue] = []
    document = expand(document, issues, env=env)
    for key in document:
        if key not in (*KINDS, "service"):
            issues.append(ConfigIssue(str(key), f"unknown top-level section (valid: {', '.join((*KINDS, 'service'))})"))

    components: dict[str, dict[ComponentId, Any]] = {}
    defined: dict[str, set[ComponentId]] = {}
    for kind in KINDS:
        defined[kind] = set()
        components[kind] = _components(kind, document.get(kind), config_types.get(kind, {}), issues, defined[kind])

    service = decode(document.get("service"), _ServiceOptions, "service", issues)
    pipelines: dict[str, PipelineConfig] = {}
    if service is not None:
        if not service.pipelines:
            issues.append(ConfigIssue("service.pipelines", "at least one pipeline is required"))
        for name, options in service.pipelines.items():
            pipelines[name] = _pipeline(name, options, defined, issues)
            _check_order(name, pipelines[name], config_types.get("processors", {}), issues)

    if service is not None and service.workers != 1:
        _check_workers(service.workers, components, issues)

    if issues:
        raise ConfigError(issues)
    assert service is not None
    return CollectorConfig(
        components,
        pipelines,
        service.telemetry,
        float(service.shutdown_timeout),
        source,
        service.health,
        service.workers,
        service.memory_limiter,
        service.state,
    )


def _check_order(name: str, pipeline: PipelineConfig, known: Mapping[str, type], issues: list[ConfigIssue]) -> None:
    """Each processor's config class may declare ``NEEDS_UPSTREAM``: what must come before it in the
    pipeline (reports need correlated samples, for instance). A processor provides its own type, and
    what its config class lists in ``PROVIDES`` (a stand-in for another processor)."""
    before: set[str] = set()
    for i, cid in enumerate(pipeline.processors):
        for needed in getattr(known.get(cid.type), "NEEDS_UPSTREAM", ()):
            if needed not in before:
                where = "after it" if any(p.type == needed for p in pipeline.processors[i:]) else "not in the pipeline"
                issues.append(
                    ConfigIssue(
                        f"service.pipelines.{name}.processors[{i}]",
                        f"processor '{cid}' needs a {needed} processor before it ({needed} is {where})",
                    )
                )
        before.update((cid.type, *getattr(known.get(cid.type), "PROVIDES", ())))


MAX_WORKERS = 64


def _check_workers(workers: int, components: dict[str, dict[ComponentId, Any]], issues: list[ConfigIssue]) -> None:
    if not 1 <= workers <= MAX_WORKERS:
        issues.append(ConfigIssue("service.workers", f"must be between 1 and {MAX_WORKERS}, got {workers}"))
        return
    # Workers share each receiver's port; a port picked at random would differ in every process.
    for cid, options in components["receivers"].items():
        endpoint = getattr(options, "endpoint", None)
        if isinstance(endpoint, str) and endpoint.endswith(":0"):
            issues.append(ConfigIssue(f"receivers.{cid}.endpoint", "port 0 cannot be shared by several workers; give a port"))


def _components(
    kind: str, section: Any, known: Mapping[str, type], issues: list[ConfigIssue], defined: set[ComponentId]
) -> dict[ComponentId, Any]:
    """Typed configs of the valid components; ``defined`` gets every well-formed id, valid or not."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        issues.append(ConfigIssue(kind, "expected a mapping of component id to options"))
        return {}
    out: dict[ComponentId, Any] = {}
    for key, options in section.items():
        path = join(kind, str(key))
        try:
            cid = ComponentId.parse(key)
        except ValueError as exc:
            issues.append(ConfigIssue(path, str(exc)))
            continue
        defined.add(cid)
        config_type = known.get(cid.type)
        if config_type is None:
            known_names = ", ".join(sorted(known)) or "none"
            issues.append(ConfigIssue(path, f"unknown {kind[:-1]} type '{cid.type}' (known: {known_names})"))
            continue
        config = decode(options, config_type, path, issues)
        if config is not None:
            out[cid] = config
    return out


def _pipeline(
    name: str, options: _PipelineOptions, defined: dict[str, set[ComponentId]], issues: list[ConfigIssue]
) -> PipelineConfig:
    base = join("service.pipelines", name)
    resolved: dict[str, list[ComponentId]] = {}
    for kind in KINDS:
        ids = []
        for i, text in enumerate(getattr(options, kind)):
            path = join(join(base, kind), i)
            try:
                cid = ComponentId.parse(text)
            except ValueError as exc:
                issues.append(ConfigIssue(path, str(exc)))
                continue
            if cid in ids:
                issues.append(ConfigIssue(path, f"{kind[:-1]} '{cid}' is listed twice"))
            elif cid not in defined[kind]:
                issues.append(ConfigIssue(path, f"{kind[:-1]} '{cid}' is not defined under {kind}"))
            ids.append(cid)
        resolved[kind] = ids
    for kind in ("receivers", "exporters"):
        if not getattr(options, kind):
            issues.append(ConfigIssue(join(base, kind), f"a pipeline needs at least one {kind[:-1]}"))
    return PipelineConfig(**resolved)
