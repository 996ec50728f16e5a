"""The one way components listen on ``host:port``: the receiver, ``/metrics`` and the live view.

Every endpoint takes the same server options, flat on its component (as the OpenTelemetry
Collector's ``confighttp`` keeps them): :class:`ServerConfig`. :func:`serve` enforces them:

- ``read_header_timeout``: a connection whose request head has not fully arrived in time is closed
  (from the connection's start, and on keep-alive from the first byte of each next request);
- ``idle_timeout``: a keep-alive connection with no request in flight is closed;
- ``read_timeout`` bounds reading a request body (the handler applies it: :func:`body_deadline`);
- ``max_connections`` (WebSockets included): at the limit, the connection that has waited longest
  for a request head (or idled between requests) is dropped to make room; when none is waiting, the
  new one is refused;
- ``tls``: certificates are read at start and again on SIGHUP.

At start the soft limit of open files is raised to the hard limit where allowed, and no endpoint
may hold more than half of the descriptors left after a reserve, so a flood on one endpoint never
takes the descriptors the others (and the exporters' files and sockets) need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiohttp import web

from webrtc_observer.config import Duration
from webrtc_observer.telemetry import Metric, Telemetry

_FD_RESERVE = 64
"""File descriptors kept out of every endpoint's reach (log files, exporters, the broker, peers)."""

_log = logging.getLogger("webrtc_observer.http")


def endpoint_issues(endpoint: str, option: str = "endpoint") -> list[tuple[str, str]]:
    """Config issues of a ``host:port`` option (port 0 asks for a free port)."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return [(option, f"expected host:port, got {endpoint!r}")]
    return []


@dataclass
class TlsConfig:
    cert_file: str = ""
    """PEM certificate chain served to clients."""
    key_file: str = ""
    """PEM private key of ``cert_file``."""
    client_ca_file: str = ""
    """If set, clients must present a certificate signed by one of these CAs (mutual TLS)."""
    min_version: Literal["1.2", "1.3"] = "1.2"

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        for name in ("cert_file", "key_file"):
            path = getattr(self, name)
            if not path:
                issues.append((name, "required with tls"))
            elif not os.path.isfile(path):
                issues.append((name, f"file not found: {path}"))
        if self.client_ca_file and not os.path.isfile(self.client_ca_file):
            issues.append(("client_ca_file", f"file not found: {self.client_ca_file}"))
        if not issues:
            try:
                _tls_context(self)
            except (ssl.SSLError, OSError, ValueError) as exc:
                issues.append(("cert_file", f"cannot load the certificate and key: {exc}"))
        return issues


@dataclass
class ServerConfig:
    """The options of every HTTP endpoint; component configs inherit them."""

    endpoint: str = "127.0.0.1:0"
    """host:port to listen on."""
    read_header_timeout: Duration = Duration(10)
    """A connection whose request head has not arrived in this time is closed."""
    read_timeout: Duration = Duration(30)
    """Reading one request body may take this long; then 408 and the connection is closed."""
    idle_timeout: Duration = Duration(60)
    """A keep-alive connection with no request for this long is closed."""
    max_connections: int = 10000
    """Open connections at most (WebSockets included); see the module docs for what happens past it."""
    tls: TlsConfig | None = None
    """Serve HTTPS (and WSS) instead of plain HTTP."""

    def validate(self) -> list[tuple[str, str]]:
        issues = endpoint_issues(self.endpoint)
        if self.max_connections < 1:
            issues.append(("max_connections", "must be at least 1"))
        for name in ("read_header_timeout", "read_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                issues.append((name, "must be positive"))
        if self.tls is not None:
            issues += [(f"tls.{sub}", msg) for sub, msg in self.tls.validate()]
        return issues


# -- file descriptors ---------------------------------------------------------------------------------


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_budget(configured: int, open_files: int) -> int:
    """What ``max_connections`` amounts to with ``open_files`` descriptors: at most half of those left
    after the reserve, so that the other endpoints keep theirs."""
    return max(1, min(configured, (open_files - _FD_RESERVE) // 2))


# -- TLS ----------------------------------------------------------------------------------------------


def _tls_context(config: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if config.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.cert_file, config.key_file)
    if config.client_ca_file:
        context.load_verify_locations(config.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Certificates:
    """The TLS contexts of every endpoint of this process, reloaded together on SIGHUP."""

    def __init__(self) -> None:
        self._contexts: dict[int, tuple[ssl.SSLContext, TlsConfig]] = {}
        self._installed: asyncio.AbstractEventLoop | None = None

    def add(self, context: ssl.SSLContext, config: TlsConfig) -> None:
        self._contexts[id(context)] = (context, config)
        loop = asyncio.get_running_loop()
        if self._installed is not loop:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, self.reload)
                self._installed = loop

    def remove(self, context: ssl.SSLContext) -> None:
        self._contexts.pop(id(context), None)

    def reload(self) -> None:
        """New handshakes use the files as they are now; a file that fails to load keeps the old one."""
        for context, config in list(self._contexts.values()):
            try:
                context.load_cert_chain(config.cert_file, config.key_file)
                if config.client_ca_file:
                    context.load_verify_locations(config.client_ca_file)
            except (ssl.SSLError, OSError) as exc:
                _log.error("TLS certificate reload failed; keeping the previous one: %s (%s)", exc, config.cert_file)
            else:
                _log.info("TLS certificate reloaded: %s", config.cert_file)


_certificates = _Certificates()


# -- connections --------------------------------------------------------------------------------------


class _Connections:
    """The connections of one endpoint: counted, bounded, and timed until their request head arrives."""

    def __init__(self, limit: int, header_timeout: float, refused: Callable[[str], None]) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.open: set[_Guard] = set()
        self.waiting: dict[_Guard, None] = {}
        """Connections whose request head has not arrived yet, or idle between requests, oldest first."""
        self.refused = refused

    def admit(self, guard: _Guard) -> bool:
        if len(self.open) >= self.limit:
            if not self.waiting:
                self.refused("max_connections")
                return False
            oldest = next(iter(self.waiting))
            self.refused("evicted_slow_header")
            oldest.drop()
        self.open.add(guard)
        self.waiting[guard] = None
        return True

    def forget(self, guard: _Guard) -> None:
        self.open.discard(guard)
        self.waiting.pop(guard, None)

    async def response_prepared(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """aiohttp's ``on_response_prepare``: a keep-alive connection goes back to waiting for a head."""
        transport = request.transport
        if response.status != 101 and transport is not None:
            guard = transport.get_protocol()  # the connection's protocol is its guard
            if isinstance(guard, _Guard) and guard in self.open:
                guard.between_requests()


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: admission and the request-head deadline.

    States: ``head`` (timed: the head of a request is arriving), ``request`` (a head arrived: the
    handler runs; a WebSocket stays here), ``idle`` (its response was prepared: the timer starts again
    with the first byte of the next request).
    """

    __slots__ = ("_admitted", "_connections", "_inner", "_state", "_tail", "_timer", "transport")

    def __init__(self, inner: asyncio.Protocol, connections: _Connections) -> None:
        self._inner = inner
        self._connections = connections
        self.transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._admitted = False
        self._state = "head"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self._connections.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._admitted = True
        self._arm()
        self._inner.connection_made(transport)

    def _arm(self) -> None:
        self._state = "head"
        self._tail = b""
        self._timer = asyncio.get_running_loop().call_later(self._connections.header_timeout, self._header_late)

    def between_requests(self) -> None:
        if self._state == "request":
            self._state = "idle"
            self._connections.waiting[self] = None  # an idle keep-alive connection may be evicted too

    def _header_late(self) -> None:
        self._timer = None
        self._connections.refused("read_header_timeout")
        self.drop()

    def drop(self) -> None:
        transport = self.transport
        self._connections.forget(self)
        if transport is not None:
            transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._state == "idle":
            self._arm()
        if self._state == "head":
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._state = "request"
                self._connections.waiting.pop(self, None)
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._connections.forget(self)
        if self._admitted:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


# -- serving ------------------------------------------------------------------------------------------


@dataclass
class Listener:
    """A started endpoint: ``cleanup()`` stops listening, then lets aiohttp close its connections."""

    runner: web.AppRunner
    host: str
    port: int
    server: asyncio.AbstractServer
    connections: _Connections
    tls: ssl.SSLContext | None = None
    _closed: bool = field(default=False, repr=False)

    async def cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.close()
        if self.tls is not None:
            _certificates.remove(self.tls)
        await self.runner.cleanup()


def _refusals(telemetry: Telemetry | None, label: str) -> Callable[[str], None]:
    if telemetry is None:
        return lambda reason: None
    metric: Metric = telemetry.counter(
        "http_connections_refused", "Connections an endpoint refused or closed early, by reason", ("endpoint", "reason")
    )
    return lambda reason: metric.add(1, label, reason)


async def serve(
    app: web.Application,
    options: ServerConfig | str,
    *,
    shared: bool = False,
    port_offset: int = 0,
    telemetry: Telemetry | None = None,
    label: str = "",
    **runner_options: Any,
) -> tuple[Listener, str, int]:
    """Start ``app`` as ``options`` say; return the listener (to clean up), the host and the bound port.

    ``options`` is the component's :class:`ServerConfig` (or a bare ``host:port`` with the defaults).
    The port is the real one, also when 0 was asked for (tests and side-by-side instances).
    ``shared``: several worker processes listen on this port and the kernel spreads connections
    among them (SO_REUSEPORT). ``port_offset`` moves a fixed port (worker i of an endpoint that is
    not shared listens on port + i). ``telemetry``/``label``: where refused connections are counted.
    """
    config = options if isinstance(options, ServerConfig) else ServerConfig(endpoint=options)
    open_files = raise_open_files_limit()
    limit = connection_budget(config.max_connections, open_files)
    if limit < config.max_connections:
        _log.info("%s: max_connections %d lowered to %d (open files limit %d)", label, config.max_connections, limit, open_files)
    runner_options.setdefault("keepalive_timeout", float(config.idle_timeout))
    connections = _Connections(limit, float(config.read_header_timeout), _refusals(telemetry, label))
    app.on_response_prepare.append(connections.response_prepared)
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    host, _, port = config.endpoint.rpartition(":")
    number = int(port) + port_offset if int(port) else 0
    context = _tls_context(config.tls) if config.tls is not None else None
    handler_factory = runner.server
    assert handler_factory is not None
    factory = handler_factory

    def protocol() -> asyncio.Protocol:
        return _Guard(factory(), connections)

    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            protocol, host.strip("[]") or None, number, ssl=context, reuse_address=True, reuse_port=shared or None, backlog=512
        )
    except OSError:
        await runner.cleanup()
        raise
    if context is not None and config.tls is not None:
        _certificates.add(context, config.tls)
    sockets = list(server.sockets or ())
    bound = sockets[0].getsockname()[1] if sockets else int(port)
    return Listener(runner, host, bound, server, connections, context), host, bound


def body_deadline(config: ServerConfig) -> float:
    """Seconds a handler may spend reading one request body."""
    return float(config.read_timeout)


class _Health(Protocol):
    @property
    def ready(self) -> bool: ...

    def problems(self) -> dict[str, str]: ...


def health_handler(host: _Health) -> Callable[[web.Request], Any]:
    """``GET /health``: 200 ``{"status": "ok"}`` once every pipeline started; 503 while starting or
    stopping (``unavailable``) or while a component fails longer than the health threshold
    (``unhealthy``, with ``problems``). Served by the receiver and by the ``prometheus`` endpoint (the
    only endpoint of a tier without a receiver of its own, such as one that reads Kafka)."""

    async def health(request: web.Request) -> web.Response:
        if not host.ready:
            return web.json_response({"status": "unavailable"}, status=503)
        problems = host.problems()
        if problems:
            return web.json_response({"status": "unhealthy", "problems": problems}, status=503)
        return web.json_response({"status": "ok"})

    return health
