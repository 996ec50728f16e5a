"""Option value types with units: durations (``500ms``, ``3s``, ``5m``) and sizes (``4MiB``)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3, "GiB": 1024**3}


class Duration(float):
    """Seconds. Written in YAML as ``500ms``, ``3s``, ``5m``, ``1h`` (a bare number means seconds)."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError(f"expected a duration like 500ms, 3s or 5m, got {value!r}")
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return cls(value)
        if isinstance(value, str):
            match = _DURATION.match(value)
            if match:
                return cls(float(match.group(1)) * _DURATION_UNITS[match.group(2)])
        raise ValueError(f"expected a duration like 500ms, 3s or 5m, got {value!r}")


class ByteSize(int):
    """Bytes. Written in YAML as a number or with a unit: ``512KiB``, ``4MiB``, ``1MB``."""

    @classmethod
    def parse(cls, value: object) -> ByteSize:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(value)
        if isinstance(value, str):
            match = _SIZE.match(value)
            if match:
                return cls(int(match.group(1)) * _SIZE_UNITS[match.group(2)])
        raise ValueError(f"expected a size like 1048576, 512KiB or 4MiB, got {value!r}")
