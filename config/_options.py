"""Typed options: a component's config is a dataclass; this turns YAML into it, collecting every error.

Supported field types: ``str``, ``int``, ``float``, ``bool``, :class:`Duration`, :class:`ByteSize`,
``Literal[...]``, ``X | None``, ``list[X]``, ``dict[str, X]`` and nested dataclasses. Unknown keys are
errors. After decoding, a dataclass may check cross-field rules in ``validate()``, which yields
``(relative_path, message)`` pairs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

from ._errors import ConfigIssue, join
from ._units import ByteSize, Duration

_MISSING = object()


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(value: Any, cls: type, path: str, issues: list[ConfigIssue]) -> Any:
    """Decode ``value`` (parsed YAML) as ``cls``; problems go to ``issues``; returns None if unusable."""
    result = _convert(value, cls, path, issues)
    return None if result is _MISSING else result


def _convert(value: Any, tp: Any, path: str, issues: list[ConfigIssue]) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(members) == 1:
            return _convert(value, members[0], path, issues)
        for member in members:  # first member that takes the value without complaint
            trial: list[ConfigIssue] = []
            converted = _convert(value, member, path, trial)
            if not trial:
                return converted
        issues.append(ConfigIssue(path, f"expected one of {', '.join(_type_name(m) for m in members)}, got {value!r}"))
        return _MISSING
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed:
            return value
        issues.append(ConfigIssue(path, f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}"))
        return _MISSING
    if origin is list:
        if not isinstance(value, list):
            issues.append(ConfigIssue(path, f"expected a list, got {_kind(value)}"))
            return _MISSING
        (item_type,) = get_args(tp)
        items = [_convert(v, item_type, join(path, i), issues) for i, v in enumerate(value)]
        return [i for i in items if i is not _MISSING]
    if origin is dict:
        if not isinstance(value, dict):
            issues.append(ConfigIssue(path, f"expected a mapping, got {_kind(value)}"))
            return _MISSING
        _, value_type = get_args(tp)
        out = {}
        for k, v in value.items():
            converted = _convert(v, value_type, join(path, str(k)), issues)
            if converted is not _MISSING:
                out[str(k)] = converted
        return out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(value, tp, path, issues)
    if tp in (Duration, ByteSize):
        try:
            return tp.parse(value)
        except ValueError as exc:
            issues.append(ConfigIssue(path, str(exc)))
            return _MISSING
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `salt: 12345678` or a digits-only ${env:...} is text where text is expected
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    issues.append(ConfigIssue(path, f"expected {_type_name(tp)}, got {_kind(value)} {value!r}"))
    return _MISSING


def _dataclass(value: Any, cls: type, path: str, issues: list[ConfigIssue]) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        issues.append(ConfigIssue(path, f"expected a mapping of options, got {_kind(value)}"))
        return _MISSING
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    ok = True
    renamed = getattr(cls, "RENAMED_OPTIONS", {})  # old option name -> hint naming the new one
    for key in value:
        if key not in fields:
            hint = renamed.get(key)
            message = f"no longer an option: {hint}" if hint else f"unknown option (valid: {', '.join(fields)})"
            issues.append(ConfigIssue(join(path, str(key)), message))
            ok = False
    for name, field in fields.items():
        if name in value:
            converted = _convert(value[name], hints[name], join(path, name), issues)
            if converted is _MISSING:
                ok = False
            else:
                kwargs[name] = converted
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            issues.append(ConfigIssue(join(path, name), "required option is missing"))
            ok = False
    required_missing = any(
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in kwargs
        for n, f in fields.items()
    )
    if required_missing:
        return _MISSING
    # Cross-field checks run even when some options were wrong (those keep their defaults here), so one
    # pass reports everything; a check on an option that already failed is not repeated.
    instance = cls(**kwargs)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        reported = {i.path for i in issues}
        found = [ConfigIssue(join(path, sub) if sub else path, msg) for sub, msg in validate()]
        found = [i for i in found if i.path not in reported]
        if found:
            issues.extend(found)
            ok = False
    return instance if ok else _MISSING


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )
