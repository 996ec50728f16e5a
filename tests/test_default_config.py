"""The default ``collector.yaml``: it validates, and so does every example block it keeps commented out.

An example block is a run of comment lines that starts with ``# name:`` (an option or component) and
continues with lines indented under it. Each block is uncommented on its own (its component added to
the pipeline when it is an exporter or processor) and the result must load as a valid config.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from webrtc_observer.components import config_types
from webrtc_observer.config import load_text

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "collector.yaml").read_text()
ENV = {"OBSERVER_TOKEN": "t" * 32, "OBSERVER_JWT_SECRET": "s" * 32, "OBSERVER_SALT": "p" * 32}

_START = re.compile(r"^(?P<indent> *)# (?P<name>[a-z_]+):( |$)")


def example_blocks(text: str) -> list[tuple[str, list[int]]]:
    """(name, line numbers) of every commented-out example."""
    lines = text.splitlines()
    blocks: list[tuple[str, list[int]]] = []
    i = 0
    while i < len(lines):
        m = _START.match(lines[i])
        if m is None:
            i += 1
            continue
        indent = len(m["indent"])
        block = [i]
        i += 1
        while i < len(lines) and lines[i].startswith(" " * indent + "#   "):
            block.append(i)
            i += 1
        blocks.append((m["name"], block))
    return blocks


def uncomment(text: str, block: list[int]) -> str:
    lines = text.splitlines()
    for n in block:
        lines[n] = lines[n].replace("# ", "", 1)
    return "\n".join(lines) + "\n"


def test_the_default_config_validates() -> None:
    load_text(TEXT, config_types(), env=ENV)


def test_the_default_config_has_examples() -> None:
    assert {name for name, _ in example_blocks(TEXT)} >= {"auth", "obfuscation", "kafka", "otlp"}


@pytest.mark.parametrize(("name", "block"), example_blocks(TEXT), ids=[name for name, _ in example_blocks(TEXT)])
def test_every_commented_example_validates_once_uncommented(name: str, block: list[int]) -> None:
    text = uncomment(TEXT, block)
    config = load_text(text, config_types(), env=ENV)
    if name in {c.type for c in config.components["exporters"]}:
        text = text.replace(
            "exporters: [file, debug, prometheus, liveview]", f"exporters: [file, debug, prometheus, liveview, {name}]"
        )
    elif name in {c.type for c in config.components["processors"]}:
        text = text.replace(
            "processors: [correlation, quality, issues, summary, reports]",
            f"processors: [{name}, correlation, quality, issues, summary, reports]",
        )
    config = load_text(text, config_types(), env=ENV)
    wired = [c.type for p in config.pipelines.values() for c in (*p.processors, *p.exporters)]
    assert name in wired or name == "auth", f"{name} was not added to the pipeline: the test's replace missed"
