"""The HTTP endpoints under hostile clients: slow headers, stalled bodies, idle connections, floods.

The flood and stalled-body tests run the collector as its own process (with a low open-files limit),
so descriptors and resident memory are the collector's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from webrtc_observer.testing import running_collector

from ._process import free_port
from ._samples import client_sample_v2 as client_sample
from .conftest import receiver_yaml


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _wait(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _http(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """The raw answer to ``request``; empty when the connection was refused or closed first."""
    chunks = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except (TimeoutError, ConnectionError):
        pass
    return b"".join(chunks)


def _post_sample(port: int, client: str) -> int:
    body = __import__("json").dumps(client_sample(client_id=client, call_id="call-1")).encode()
    head = (
        f"POST /rest/samples/svc/web HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = _http(port, head + body)
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def _scrape(port: int) -> tuple[int, str]:
    answer = _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer.partition(b"\r\n\r\n")[2].decode(errors="replace")


@pytest.fixture
def collector_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """A collector process limited to 256 open files, with short timeouts."""
    port, metrics = free_port(), free_port()
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"""
receivers:
  observertc:
    endpoint: 127.0.0.1:{port}
    read_header_timeout: 3s
    read_timeout: 60s
processors:
  correlation: {{}}
  reports: {{}}
exporters:
  prometheus:
    endpoint: 127.0.0.1:{metrics}
service:
  pipelines:
    reports:
      receivers: [observertc]
      processors: [correlation, reports]
      exporters: [prometheus]
"""
    )

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = subprocess.Popen(
        [sys.executable, "-m", "webrtc_observer", "run", "--config", str(config)],
        preexec_fn=limit_files,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: _scrape(metrics)[0] == 200 if proc.poll() is None else True, 20, "the collector to serve /metrics")
        assert proc.poll() is None, "the collector exited at start"
        yield proc, port, metrics
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_slow_header_flood_does_not_lock_out_legitimate_clients(collector_process) -> None:
    proc, port, metrics = collector_process
    attackers: list[socket.socket] = []
    try:
        # 1,100 trickling connections: far more than the collector has descriptors (256).
        for _ in range(1100):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            attackers.append(s)
        time.sleep(0.3)  # the connections are accepted (or refused) by the collector
        for s in attackers:
            with contextlib.suppress(OSError):
                s.send(b"POST /rest/samples/svc/web HTTP/1.1\r\nHost: x\r\n")
        # While they hold their connections open, legitimate requests and scrapes succeed.
        statuses = [_post_sample(port, f"client-{i}") for i in range(10)]
        assert statuses == [202] * 10
        status, body = _scrape(metrics)
        assert status == 200
        assert 'observertc_http_connections_refused_total{endpoint="observertc"' in body
        assert proc.poll() is None
        # Each trickling connection is closed once its head is late.
        _wait(lambda: 'reason="read_header_timeout"' in _scrape(metrics)[1], 10, "header timeouts to be counted")
    finally:
        for s in attackers:
            s.close()


def test_stalled_bodies_are_released_and_memory_returns(collector_process) -> None:
    proc, port, metrics = collector_process
    baseline = _rss(proc.pid)
    size = 4 * 1024 * 1024
    attackers = []
    try:
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(
                f"POST /rest/samples/svc/web HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {size}\r\n\r\n".encode()
            )
            s.sendall(b"[" + b" " * (size - 2))  # all but the last byte, then stall
            attackers.append(s)
        _wait(lambda: _rss(proc.pid) > baseline + 60 * 1024 * 1024, 20, "the stalled bodies to be held")
        assert _post_sample(port, "legit") == 202
    finally:
        for s in attackers:
            s.close()
    _wait(lambda: _rss(proc.pid) < baseline + 40 * 1024 * 1024, 20, "resident memory to come back down")
    _wait(lambda: 'reason="client_disconnected"' in _scrape(metrics)[1], 10, "the disconnects to be counted")
    assert proc.poll() is None


YAML = receiver_yaml(
    """\
    max_message_bytes: 64KiB
    max_inflight_bytes: 64KiB
    idle_timeout: 300ms
    read_timeout: 1s
    max_connections: 3"""
)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_idle_keepalive_connection_is_closed() -> None:
    async with running_collector(YAML) as c:
        reader, writer = await _open(c.port())
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), 5)  # returns at EOF: the collector closed it
        assert time.monotonic() - started < 3
        assert b"HTTP/" not in rest.partition(b"\r\n\r\n")[2]
        writer.close()


async def test_inflight_bytes_refused_with_503_and_body_read_timeout() -> None:
    async with running_collector(YAML) as c:
        port = c.port()
        # One client holds 60 KiB of a body and stalls.
        _, stalled = await _open(port)
        stalled.write(b"POST /rest/samples/svc/web HTTP/1.1\r\nHost: x\r\nContent-Length: 65000\r\n\r\n" + b" " * 61440)
        await stalled.drain()
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http:
            async with http.post(c.url("/rest/samples/svc/web"), data=b" " * 8192) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"] == "inflight_bytes"
                assert int(resp.headers["Retry-After"]) >= 1
            # The stalled body runs out of read_timeout: 408, and its bytes are released.
            await asyncio.sleep(1.2)
            async with http.post(c.url("/rest/samples/svc/web"), json=client_sample(client_id="a", call_id="c")) as resp:
                assert resp.status == 202
        stalled.close()
        refused = c.telemetry.get("receiver_refused_messages")
        assert refused is not None
        assert refused.value("observertc", "http", "inflight_bytes") == 1
        assert refused.value("observertc", "http", "read_timeout") == 1


async def test_max_connections_refuses_past_the_limit() -> None:
    async with running_collector(YAML) as c:
        port = c.port()
        held = []
        for _ in range(3):  # three connections that have sent a whole head are in service
            reader, writer = await _open(port)
            writer.write(b"POST /rest/samples/svc/web HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            await writer.drain()
            held.append((reader, writer))
        await asyncio.sleep(0.2)
        reader, writer = await _open(port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
        metric = c.telemetry.get("http_connections_refused")
        assert metric is not None and metric.value("observertc", "max_connections") >= 1
        for _, w in held:
            w.close()


async def test_memory_limiter_refuses_above_its_limit() -> None:
    yaml = YAML + "  memory_limiter:\n    limit: 2MiB\n    check_interval: 100ms\n"
    async with running_collector(yaml) as c:
        async with aiohttp.ClientSession() as http:
            async with http.post(c.url("/rest/samples/svc/web"), json=client_sample(client_id="a", call_id="c")) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"] == "memory_limit"
                assert "Retry-After" in resp.headers
        refusing = c.telemetry.get("memory_limiter_refusing")
        assert refusing is not None and refusing.value() == 1.0


def test_open_files_budget_leaves_room_for_the_other_endpoints() -> None:
    from webrtc_observer.http_server import connection_budget

    assert connection_budget(10_000, 256) == 96
    assert connection_budget(50, 65536) == 50


def test_server_options_are_checked(tmp_path: Path) -> None:
    from webrtc_observer.components import config_types
    from webrtc_observer.config import ConfigError, load_text

    text = """
receivers:
  observertc:
    endpoint: 127.0.0.1:0
    max_connections: 0
    read_timeout: 0s
    tls: {cert_file: /nonexistent.pem}
exporters:
  debug: {}
service:
  memory_limiter: {limit: 0}
  pipelines:
    p: {receivers: [observertc], exporters: [debug]}
"""
    with pytest.raises(ConfigError) as caught:
        load_text(text, config_types())
    paths = {issue.path for issue in caught.value.issues}
    assert {
        "receivers.observertc.max_connections",
        "receivers.observertc.read_timeout",
        "receivers.observertc.tls.cert_file",
        "receivers.observertc.tls.key_file",
        "service.memory_limiter.limit",
    } <= paths
    assert os.path.exists(tmp_path)


KEEPALIVE_YAML = receiver_yaml(
    """\
    read_header_timeout: 500ms
    idle_timeout: 10s"""
)


async def test_the_head_of_every_keepalive_request_is_timed_not_only_the_first() -> None:
    async with running_collector(KEEPALIVE_YAML) as c:
        reader, writer = await _open(c.port())
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        await reader.readexactly(16)  # {"status": "ok"}
        # Idle between requests for longer than read_header_timeout: still open (idle_timeout is 10s).
        await asyncio.sleep(1.0)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        await reader.readexactly(16)
        # The next head trickles: closed after read_header_timeout, long before idle_timeout.
        started = time.monotonic()
        writer.write(b"GET /health HTTP/1.1\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - started < 3
        metric = c.telemetry.get("http_connections_refused")
        assert metric is not None and metric.value("observertc", "read_header_timeout") == 1
        writer.close()
