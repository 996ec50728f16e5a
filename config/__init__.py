"""Configuration: the YAML document, ``${env:...}`` expansion, typed component options and their errors.

Component modules declare their options as dataclasses using the types exported here; the runtime
loads a document with :func:`load_file` and gets typed configs back or one :class:`ConfigError`
listing every problem with its YAML path.
"""

from ._document import (
    CollectorConfig,
    ComponentId,
    LogsConfig,
    MemoryLimiterConfig,
    PipelineConfig,
    TelemetryConfig,
    load_file,
    load_text,
)
from ._errors import ConfigError, ConfigIssue
from ._units import ByteSize, Duration

__all__ = [
    "ByteSize",
    "CollectorConfig",
    "ComponentId",
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "LogsConfig",
    "MemoryLimiterConfig",
    "PipelineConfig",
    "TelemetryConfig",
    "load_file",
    "load_text",
]
