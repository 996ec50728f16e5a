"""The collector as a real process (``webrtc-observer run``) for tests, and free loopback ports."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CollectorProcess:
    """``webrtc-observer run --config CONFIG`` from the repository root, its output in ``log``.

    ``port`` is the receiver's: the config (or the environment) must make it listen there.
    """

    def __init__(self, log: Path, config: str | Path, port: int, env: Mapping[str, str] | None = None) -> None:
        self.port = port
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webrtc_observer", "run", "--config", str(config)],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 20) -> None:
        """Until ``GET /health`` answers 200; fails at once, with the log, if the process exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                async with http.get(self.url("/health")) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"collector not ready:\n{self.log.read_text()}")

    def close_log(self) -> None:
        self._log_file.close()
