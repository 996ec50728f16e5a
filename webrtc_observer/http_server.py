"""The one way components listen on ``host:port``: the receiver, ``/metrics`` and the live view."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def endpoint_issues(endpoint: str, option: str = "endpoint") -> list[tuple[str, str]]:
    """Config issues of a ``host:port`` option (port 0 asks for a free port)."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return [(option, f"expected host:port, got {endpoint!r}")]
    return []


async def serve(
    app: web.Application, endpoint: str, *, shared: bool = False, port_offset: int = 0, **runner_options: Any
) -> tuple[web.AppRunner, str, int]:
    """Start ``app`` on ``endpoint``; return the runner (to clean up), the host and the bound port.

    The port is the real one, also when 0 was asked for (tests and side-by-side instances).
    ``shared``: several worker processes listen on this port and the kernel spreads connections
    among them (SO_REUSEPORT). ``port_offset`` moves a fixed port (worker i of an endpoint that is
    not shared listens on port + i).
    """
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    host, _, port = endpoint.rpartition(":")
    number = int(port) + port_offset if int(port) else 0
    site = web.TCPSite(runner, host.strip("[]"), number, reuse_address=True, reuse_port=shared or None)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = getattr(site._server, "sockets", None) or []
    return runner, host, sockets[0].getsockname()[1] if sockets else int(port)
