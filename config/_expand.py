"""``${env:VAR}`` and ``${env:VAR:-default}`` expansion in YAML values (never in keys or structure).

Expansion happens after parsing, value by value, so an environment variable can never inject YAML
structure. A value that is exactly one reference takes the YAML scalar type of what it expands to
(``port: ${env:PORT}`` gives an int); a reference inside a longer string stays text. ``$$`` is a
literal ``$``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from ._errors import ConfigIssue, join

_REFERENCE = re.compile(r"\$\$|\$\{(?:(?P<scheme>[a-zA-Z]+):)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand(node: Any, issues: list[ConfigIssue], path: str = "", env: Mapping[str, str] | None = None) -> Any:
    env = os.environ if env is None else env
    if isinstance(node, dict):
        return {k: expand(v, issues, join(path, str(k)), env) for k, v in node.items()}
    if isinstance(node, list):
        return [expand(v, issues, join(path, i), env) for i, v in enumerate(node)]
    if isinstance(node, str) and "$" in node:
        return _expand_string(node, issues, path, env)
    return node


def _expand_string(text: str, issues: list[ConfigIssue], path: str, env: Mapping[str, str]) -> Any:
    whole = _REFERENCE.fullmatch(text)

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        scheme = match.group("scheme") or "env"
        name = match.group("name")
        if scheme != "env":
            issues.append(ConfigIssue(path, f"unsupported reference scheme '{scheme}' in {match.group(0)} (only env)"))
            return ""
        value = env.get(name)
        if value is None or (value == "" and match.group("default") is not None):
            if match.group("default") is None:
                issues.append(ConfigIssue(path, f"environment variable {name} is not set and {match.group(0)} has no default"))
                return ""
            value = match.group("default")
        return value

    expanded = _REFERENCE.sub(substitute, text)
    if whole and whole.group(0) != "$$":
        return _scalar(expanded)
    return expanded


def _scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text
