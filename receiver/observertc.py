"""Receiver ``observertc``: the ObserveRTC observer's HTTP and WebSocket endpoints on one port.

Routes (compatible with observer 0.x/1.0 clients):

- ``POST /rest/samples/{serviceId}/{mediaUnitId}`` and WebSocket ``GET /samples/{serviceId}/{mediaUnitId}``:
  a 2.x ``Samples`` wrapper, or a single 2.x/3.x ``ClientSample``; JSON (optionally gzip) or protobuf.
- ``POST``/WebSocket ``/pcsamples/{serviceUUID}/{mediaUnitId}``: legacy PeerConnectionSample v20200114.
- ``GET /health``: 200 while the collector runs with its pipelines started, else 503.

HTTP answers 202 once the pipeline took the samples, 4xx with a reason for bad input, 503 with
``Retry-After`` when the pipeline is full. On a WebSocket a bad frame is answered with an error message
and skipped; the connection and its good frames carry on.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from webrtc_observer.component import Consumer, Factory, Refused, RetryLater, Settings
from webrtc_observer.config import ByteSize, Duration
from webrtc_observer.http_server import endpoint_issues, serve
from webrtc_observer.model import Batch, Origin

from ._decoding import Encoding, RefusedInput, Route, decode

_PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf"})


@dataclass
class CorsConfig:
    allowed_origins: list[str] = field(default_factory=list)
    """Origins allowed to POST samples from a browser; ``*`` allows any. Empty: no CORS headers."""
    max_age: Duration = Duration(7200)

    def validate(self) -> list[tuple[str, str]]:
        return [
            (f"allowed_origins[{i}]", "an origin looks like https://app.example.com (scheme://host[:port]) or *")
            for i, o in enumerate(self.allowed_origins)
            if o != "*" and "://" not in o
        ]


@dataclass
class ObservertcReceiverConfig:
    endpoint: str = "0.0.0.0:7080"
    """host:port to listen on (the observer's port)."""
    max_message_bytes: ByteSize = ByteSize(4 * 1024 * 1024)
    """Largest HTTP body or WebSocket message, also after gunzip. Larger: HTTP 413, WebSocket close 1009."""
    websocket_heartbeat: Duration = Duration(30)
    """Ping idle WebSocket clients this often and drop those that do not answer; 0 disables."""
    allowed_service_ids: list[str] = field(default_factory=list)
    """If set, samples for other service ids are refused with 403."""
    cors: CorsConfig = field(default_factory=CorsConfig)

    def validate(self) -> list[tuple[str, str]]:
        issues = endpoint_issues(self.endpoint)
        if self.max_message_bytes < 1024:
            issues.append(("max_message_bytes", "must be at least 1KiB"))
        return issues


class ObservertcReceiver:
    def __init__(self, settings: Settings, config: ObservertcReceiverConfig, next_consumer: Consumer) -> None:
        self._settings = settings
        self._config = config
        self._next = next_consumer
        self._log = settings.logger
        self._runner: web.AppRunner | None = None
        self._sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._allowed_services = frozenset(config.allowed_service_ids)
        self._cors_any = "*" in config.cors.allowed_origins
        self._cors_origins = frozenset(config.cors.allowed_origins)
        receiver = str(settings.id)
        t = settings.telemetry
        self._accepted = t.counter("receiver_accepted_samples", "Samples accepted into the pipelines", ("receiver", "transport"))
        self._refused = t.counter("receiver_refused_messages", "Messages refused, by reason", ("receiver", "transport", "reason"))
        self._received = t.counter(
            "samples_received", "Samples received, by service and media unit", ("service_id", "media_unit_id")
        )
        self._refused_samples = t.counter("samples_refused", "Samples or messages refused, by reason", ("reason",))
        self._ws_open = t.gauge("receiver_websockets_open", "Open WebSocket connections", ("receiver",))
        self._label = receiver
        self._ws_open.set(0, receiver)
        self.bound_port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=self._config.max_message_bytes + 1, middlewares=[self._cors_middleware])
        app.router.add_get("/health", self._health)
        for route, prefix in (("samples", "/rest/samples"), ("pcsamples", "/pcsamples")):
            app.router.add_post(prefix + "/{service_id}/{media_unit_id}", self._make_post(route))
        app.router.add_get("/samples/{service_id}/{media_unit_id}", self._make_websocket("samples"))
        app.router.add_get("/pcsamples/{service_id}/{media_unit_id}", self._make_websocket("pcsamples"))
        app.router.add_route("OPTIONS", "/{tail:.*}", self._preflight)
        app.on_shutdown.append(self._close_websockets)
        # We inflate gzip ourselves, with the same size limit as WebSocket frames (a gzip bomb stops early).
        self._runner, host, self.bound_port = await serve(
            app,
            self._config.endpoint,
            shared=self._settings.worker.count > 1,
            shutdown_timeout=10.0,
            auto_decompress=False,
        )
        self._log.info("receiver listening", endpoint=f"{host}:{self.bound_port}")

    async def shutdown(self) -> None:
        """Stop accepting connections, close WebSockets, let in-flight requests finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _close_websockets(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"collector shutting down")

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        host = self._settings.host
        if not host.ready:
            return web.json_response({"status": "unavailable"}, status=503)
        problems = host.problems()
        if problems:
            return web.json_response({"status": "unhealthy", "problems": problems}, status=503)
        return web.json_response({"status": "ok"})

    def _make_post(self, route: Route) -> Any:
        async def handle(request: web.Request) -> web.Response:
            try:
                origin = self._origin(request)
                body = await self._read_body(request)
                encoding = self._encoding(request)
                gzipped = self._gzipped(request)
                decoded = decode(
                    body, origin, route=route, encoding=encoding, gzipped=gzipped, limit=self._config.max_message_bytes
                )
                await self._deliver(decoded.samples, origin, "http")
            except RefusedInput as exc:
                self._refuse("http", exc.reason)
                return _error(exc.status, exc.reason, exc.detail)
            except Refused as exc:
                self._refuse("http", exc.reason)
                return _error(exc.status, exc.reason, exc.detail)
            except RetryLater as exc:
                self._refuse("http", "pipeline_full")
                return _error(503, "pipeline_full", exc.reason, headers={"Retry-After": str(max(1, round(exc.retry_after)))})
            except Exception:  # a bug of ours must cost one request, never the process
                self._log.error("failed to handle a message", transport="http", exc_info=True)
                self._refuse("http", "internal_error")
                return _error(500, "internal_error", "the collector failed on this message; it was not accepted")
            return web.json_response({"accepted": len(decoded.samples)}, status=202)

        return handle

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._config.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RefusedInput("too_large", f"body of {request.content_length} bytes exceeds {limit}", status=413)
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise RefusedInput("too_large", f"body exceeds {limit} bytes", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _encoding(request: web.Request) -> Encoding | None:
        declared = request.query.get("format", "").lower()
        if declared in ("json", "protobuf"):
            return declared  # type: ignore[return-value]
        if declared:
            raise RefusedInput("unsupported_encoding", f"format={declared} (supported: json, protobuf)", status=415)
        if request.content_type in _PROTOBUF_TYPES:
            return "protobuf"
        if request.content_type == "application/json":
            return "json"
        return None  # octet-stream, text/plain...: tell from the bytes

    @staticmethod
    def _gzipped(request: web.Request) -> bool:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return False
        if encoding in ("gzip", "x-gzip"):
            return True
        raise RefusedInput("unsupported_encoding", f"Content-Encoding {encoding} (supported: gzip)", status=415)

    # -- WebSocket ----------------------------------------------------------------------------------
    def _make_websocket(self, route: Route) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                origin = self._origin(request)
                encoding = self._encoding(request)
            except RefusedInput as exc:
                self._refuse("websocket", exc.reason)
                return _error(exc.status, exc.reason, exc.detail)
            heartbeat = self._config.websocket_heartbeat or None
            ws = web.WebSocketResponse(max_msg_size=self._config.max_message_bytes, heartbeat=heartbeat, compress=False)
            await ws.prepare(request)
            self._sockets.add(ws)
            self._ws_open.add(1, self._label)
            try:
                await self._serve_websocket(ws, origin, route, encoding)
            finally:
                self._ws_open.add(-1, self._label)
            return ws

        return handle

    async def _serve_websocket(self, ws: web.WebSocketResponse, origin: Origin, route: Route, encoding: Encoding | None) -> None:
        limit = self._config.max_message_bytes
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = msg.data.encode()
                frame_encoding: Encoding | None = "json"
            elif msg.type == WSMsgType.BINARY:
                data, frame_encoding = msg.data, encoding
            else:  # ERROR: aiohttp has already closed with 1009 (too big) or 1002 (protocol error)
                too_big = getattr(ws.exception(), "code", None) == WSCloseCode.MESSAGE_TOO_BIG
                self._refuse("websocket", "too_large" if too_big else "websocket_protocol")
                break
            stamped = _restamp(origin)
            try:
                decoded = decode(data, stamped, route=route, encoding=frame_encoding, gzipped=None, limit=limit)
                await self._deliver(decoded.samples, stamped, "websocket")
            except (RefusedInput, Refused) as exc:
                self._refuse("websocket", exc.reason)
                await ws.send_bytes(orjson.dumps({"error": exc.reason, "detail": exc.detail}))
            except RetryLater as exc:
                self._refuse("websocket", "pipeline_full")
                await ws.send_bytes(orjson.dumps({"error": "pipeline_full", "detail": exc.reason, "retryAfter": exc.retry_after}))
            except Exception:  # a bug of ours must cost one frame, never the connection
                self._log.error("failed to handle a message", transport="websocket", exc_info=True)
                self._refuse("websocket", "internal_error")
                await ws.send_bytes(orjson.dumps({"error": "internal_error", "detail": "message not accepted"}))
            # A frame already buffered is read without yielding, and a pipeline that only queues never
            # yields either: give other connections and the exporters their turn after each frame.
            await asyncio.sleep(0)

    # -- common -------------------------------------------------------------------------------------
    def _origin(self, request: web.Request) -> Origin:
        service_id = request.match_info["service_id"]
        if self._allowed_services and service_id not in self._allowed_services:
            raise RefusedInput("unknown_service", f"service id {service_id!r} is not allowed here", status=403)
        return Origin(
            service_id=service_id,
            media_unit_id=request.match_info["media_unit_id"],
            received_at=_now_ms(),
            generation="2",
            schema_version=request.query.get("schemaVersion"),
        )

    async def _deliver(self, samples: list[Any], origin: Origin, transport: str) -> None:
        if samples:
            await self._next.consume(Batch(samples=samples))
        self._accepted.add(len(samples), self._label, transport)
        self._received.add(len(samples), origin.service_id, origin.media_unit_id)

    def _refuse(self, transport: str, reason: str) -> None:
        self._refused.add(1, self._label, transport, reason)
        self._refused_samples.add(1, reason)
        self._log.debug("refused input", transport=transport, reason=reason)

    # -- CORS ---------------------------------------------------------------------------------------
    def _allowed_origin(self, request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None or not self._cors_origins:
            return None
        if self._cors_any:
            return "*"
        return origin if origin in self._cors_origins else None

    @web.middleware
    async def _cors_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        allowed = self._allowed_origin(request)
        if allowed and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = allowed
            if allowed != "*":
                response.headers["Vary"] = "Origin"
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        allowed = self._allowed_origin(request)
        if allowed is None:
            return _error(403, "cors_origin", "origin not allowed" if request.headers.get("Origin") else "not a CORS preflight")
        requested = request.headers.get("Access-Control-Request-Headers", "")
        headers = {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": requested or "Content-Type, Content-Encoding",
            "Access-Control-Max-Age": str(int(self._config.cors.max_age)),
        }
        if allowed != "*":
            headers["Vary"] = "Origin"
        return web.Response(status=204, headers=headers)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _restamp(origin: Origin) -> Origin:
    """Each WebSocket message is received at its own time."""
    return msgspec.structs.replace(origin, received_at=_now_ms())


def _error(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": reason, "detail": detail}, status=status, headers=headers)


def _create(settings: Settings, config: ObservertcReceiverConfig, next_consumer: Consumer) -> ObservertcReceiver:
    return ObservertcReceiver(settings, config, next_consumer)


FACTORY = Factory(
    kind="receiver",
    type="observertc",
    config_type=ObservertcReceiverConfig,
    create=_create,
    description="ObserveRTC-compatible HTTP and WebSocket sample endpoints",
)
