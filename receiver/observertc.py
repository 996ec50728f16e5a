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
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from aiohttp import ClientPayloadError, WSCloseCode, WSMsgType, web

from webrtc_observer.auth import ANYONE, AuthConfig, Authenticator, AuthError, Principal, forbidden
from webrtc_observer.component import Consumer, Factory, Forwarder, Refused, RetryLater, Settings, Undecoded
from webrtc_observer.config import ByteSize, Duration
from webrtc_observer.http_server import Listener, ServerConfig, health_handler, serve
from webrtc_observer.model import Batch, ClientSample, Origin, Sample

from ._decoding import Encoding, RefusedInput, Route, decode
from ._inflight import Busy, Hold, Inflight
from ._limits import LimitsConfig
from ._routing import routing_keys

_TRACEBACKS_PER_MINUTE = 5  # beyond that internal errors are only counted (receiver_internal_errors)
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
class ObservertcReceiverConfig(ServerConfig):
    endpoint: str = "0.0.0.0:7080"
    """host:port to listen on (the observer's port)."""
    max_inflight_bytes: ByteSize = ByteSize(256 * 1024 * 1024)
    """Bytes of request bodies and WebSocket messages being read or waiting for the pipelines; past
    it, 503 with Retry-After (reason ``inflight_bytes``)."""
    max_message_bytes: ByteSize = ByteSize(4 * 1024 * 1024)
    """Largest HTTP body or WebSocket message, also after gunzip. Larger: HTTP 413, WebSocket close 1009."""
    websocket_heartbeat: Duration = Duration(30)
    """Ping idle WebSocket clients this often and drop those that do not answer; 0 disables."""
    websocket_backpressure_timeout: Duration = Duration(10)
    """How long a WebSocket frame waits while the pipelines are full (an exporter's queue, the memory
    limiter, ``max_inflight_bytes``). The connection is not read meanwhile, so TCP slows its client
    down; past it the frame is refused (``pipeline_full``...). 0: refuse at once."""
    allowed_service_ids: list[str] = field(default_factory=list)
    """If set, samples for other service ids are refused with 403."""
    cors: CorsConfig = field(default_factory=CorsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Bounds on the shape of a sample (id lengths, records, events, meta items, samples per message)."""
    auth: AuthConfig | None = None
    """Who may send samples: ``bearer_tokens`` and/or ``jwt`` (README: Running it on the internet)."""

    def validate(self) -> list[tuple[str, str]]:
        issues = super().validate()
        if self.max_inflight_bytes < self.max_message_bytes:
            issues.append(("max_inflight_bytes", "must be at least max_message_bytes"))
        if self.auth is not None and self.auth.basic is not None:
            issues.append(
                ("auth.basic", "the receiver takes bearer_tokens or jwt (browsers cannot send basic credentials on a WebSocket)")
            )
        if self.max_message_bytes < 1024:
            issues.append(("max_message_bytes", "must be at least 1KiB"))
        return issues

    def warnings(self) -> list[tuple[str, str]]:
        """Not errors, but worth saying (``validate`` and the start-up log print them)."""
        if self.auth is None and not _loopback(self.endpoint):
            return [
                ("auth", f"no auth while listening on {self.endpoint}: anyone who reaches it can send samples for any service")
            ]
        return []


def _loopback(endpoint: str) -> bool:
    host = endpoint.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class ObservertcReceiver:
    def __init__(self, settings: Settings, config: ObservertcReceiverConfig, next_consumer: Consumer) -> None:
        self._settings = settings
        self._config = config
        self._next = next_consumer
        self._forwarder = next_consumer if isinstance(next_consumer, Forwarder) else None
        if self._forwarder is not None:
            self._forwarder.take_forwarded(self._take_undecoded)
        self._log = settings.logger
        self._runner: Listener | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        """The open WebSocket connections (each handler adds its own and removes it when it ends)."""
        self._websocket_handlers: set[Any] = set()
        """The WebSocket routes' handlers: they answer CORS and errors themselves (see ``_middleware``)."""
        self._allowed_services = frozenset(config.allowed_service_ids)
        self._cors_any = "*" in config.cors.allowed_origins
        self._cors_origins = frozenset(config.cors.allowed_origins)
        self._auth = Authenticator(config.auth) if config.auth is not None else None
        receiver = str(settings.id)
        t = settings.telemetry
        self._accepted = t.counter("receiver_accepted_samples", "Samples accepted into the pipelines", ("receiver", "transport"))
        self._refused = t.counter("receiver_refused_messages", "Messages refused, by reason", ("receiver", "transport", "reason"))
        self._received = t.counter(
            "samples_received", "Samples received, by service and media unit", ("service_id", "media_unit_id")
        )
        self._refused_samples = t.counter("samples_refused", "Samples or messages refused, by reason", ("reason",))
        self._ws_open = t.gauge("receiver_websockets_open", "Open WebSocket connections", ("receiver",))
        self._backpressure = t.counter(
            "receiver_backpressure_waits",
            "WebSocket frames that waited for room in the pipelines (websocket_backpressure_timeout)",
            ("receiver",),
        )
        self._label = receiver
        self._inflight = Inflight(config.max_inflight_bytes)
        self._ws_open.set(0, receiver)
        self.bound_port: int | None = None
        self._internal_errors = t.counter(
            "receiver_internal_errors", "Messages the receiver failed on (bugs), by transport", ("receiver", "transport")
        )
        self._tracebacks_logged: list[float] = []  # when the last tracebacks were logged (a sliding minute)

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=self._config.max_message_bytes + 1, middlewares=[self._middleware])
        app.router.add_get("/health", health_handler(self._settings.host))
        routes: tuple[tuple[Route, str], ...] = (("samples", "/rest/samples"), ("pcsamples", "/pcsamples"))
        for route, prefix in routes:
            app.router.add_post(prefix + "/{service_id}/{media_unit_id}", self._make_post(route))
        for route, path in (("samples", "/samples"), ("pcsamples", "/pcsamples")):
            handler = self._make_websocket(route)
            self._websocket_handlers.add(handler)
            app.router.add_get(path + "/{service_id}/{media_unit_id}", handler)
        for prefix in ("/rest/samples", "/pcsamples", "/samples"):  # CORS preflights of the sample routes
            app.router.add_route("OPTIONS", prefix + "/{tail:.*}", self._preflight)
        app.on_shutdown.append(self._close_websockets)
        # We inflate gzip ourselves, with the same size limit as WebSocket frames (a gzip bomb stops early).
        self._runner, host, self.bound_port = await serve(
            app,
            self._config,
            shared=self._settings.worker.count > 1,
            telemetry=self._settings.telemetry,
            label=str(self._settings.id),
            shutdown_timeout=10.0,
            auto_decompress=False,
        )
        self._log.info("receiver listening", endpoint=f"{host}:{self.bound_port}")
        for option, message in self._config.warnings():
            self._log.warning(message, option=option)

    async def shutdown(self) -> None:
        """Stop accepting connections, close WebSockets, let in-flight requests finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _close_websockets(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"collector shutting down")

    # -- HTTP ---------------------------------------------------------------------------------------
    def _make_post(self, route: Route) -> Any:
        async def handle(request: web.Request) -> web.Response:
            hold = Hold(self._inflight)
            try:
                principal = self._authorize(request)
                origin = self._origin(request)
                self._admit()
                body = await self._read_body(request, hold)
                message = Undecoded(body, origin, route, self._encoding(request), self._gzipped(request))
                taken = await self._take(message, principal, "http")
            except (AuthError, RefusedInput, Refused) as exc:
                self._refuse("http", exc.reason)
                return _refusal(exc)
            except RetryLater as exc:
                code = exc.code or "pipeline_full"
                self._refuse("http", code)
                return _error(503, code, exc.reason, headers={"Retry-After": str(max(1, round(exc.retry_after)))})
            except _ClientGone:
                self._refuse("http", "client_disconnected")
                return _error(400, "client_disconnected", "the client closed the connection before its body arrived")
            except Exception:  # a bug of ours must cost one request, never the process
                self._internal_error("http")
                self._refuse("http", "internal_error")
                return _error(500, "internal_error", "the collector failed on this message; it was not accepted")
            finally:
                hold.release()
            return web.json_response({"accepted": taken}, status=202)

        return handle

    def _admit(self) -> None:
        """Refuse new input while the memory limiter says so."""
        if self._settings.host.memory_pressure():
            raise Busy("memory_limit", "the collector is above its memory limit (service.memory_limiter)", retry_after=5.0)

    async def _read_body(self, request: web.Request, hold: Hold) -> bytes:
        """The body, held against ``max_inflight_bytes`` as it arrives, within ``read_timeout``."""
        limit = self._config.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RefusedInput("too_large", f"body of {request.content_length} bytes exceeds {limit}", status=413)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(float(self._config.read_timeout)):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise RefusedInput("too_large", f"body exceeds {limit} bytes", status=413)
                    hold.take(len(chunk))
                    chunks.append(chunk)
        except TimeoutError:
            raise RefusedInput(
                "read_timeout", f"the body did not arrive within {self._config.read_timeout}s", status=408
            ) from None
        except (ConnectionError, ClientPayloadError):
            raise _ClientGone from None
        if request.content_length is not None and size < request.content_length:
            raise _ClientGone
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
            """One WebSocket connection, its frames read in this coroutine: it is what stays alive for
            the connection's life (with aiohttp's request and connection), so it calls nothing that
            lasts as long but ``ws.receive()``."""
            opened = await self._open_websocket(request)
            if not isinstance(opened, tuple):  # refused
                return opened
            ws, origin, encoding, principal = opened
            del opened  # the connection's frame keeps only what it reads
            self._sockets.add(ws)
            self._ws_open.add(1, self._label)
            try:
                while True:
                    msg = await ws.receive()
                    if msg.type in _CLOSING:
                        break
                    go_on = await self._frame(ws, msg, origin, route, encoding, principal)
                    del msg  # nothing of a frame stays alive while the next one is awaited
                    if not go_on:
                        break
                    # Frames already buffered are read without yielding, and a pipeline that only queues
                    # never yields either: give other connections and the exporters their turn after each
                    # frame. (Every 8 frames instead saved little and, with hundreds of busy sockets, made
                    # each turn of the loop so long that an exporter's send timed out.)
                    await asyncio.sleep(0)
            finally:
                self._ws_open.add(-1, self._label)
                self._sockets.discard(ws)
            return ws

        return handle

    async def _open_websocket(
        self, request: web.Request
    ) -> web.StreamResponse | tuple[web.WebSocketResponse, Origin, Encoding | None, Principal]:
        """The upgraded connection and what its frames are taken as (origin, encoding, principal); or
        the refusal to answer, with the JSON body and CORS headers of every other route's."""
        try:
            self._check_ws_origin(request)
            principal = self._authorize(request)
            origin = self._origin(request)
            encoding = self._encoding(request)
        except (AuthError, RefusedInput) as exc:
            self._refuse("websocket", exc.reason)
            return self._with_cors(request, _refusal(exc))
        heartbeat = self._config.websocket_heartbeat or None
        ws = web.WebSocketResponse(max_msg_size=self._config.max_message_bytes, heartbeat=heartbeat, compress=False)
        try:
            await ws.prepare(request)
        except web.HTTPException as exc:  # not a WebSocket handshake
            if not _ours(exc):
                raise
            return self._with_cors(request, _json_error(exc))
        return ws, origin, encoding, principal

    async def _frame(
        self, ws: web.WebSocketResponse, msg: Any, origin: Origin, route: Route, encoding: Encoding | None, principal: Principal
    ) -> bool:
        """Handle one WebSocket frame; False when the connection is to be closed."""
        if principal.expired():
            self._refuse("websocket", "unauthenticated")
            await ws.send_bytes(orjson.dumps({"error": "unauthenticated", "detail": "access token expired"}))
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"access token expired")
            return False
        if msg.type == WSMsgType.TEXT:
            data = msg.data.encode()
            frame_encoding: Encoding | None = "json"
        elif msg.type == WSMsgType.BINARY:
            data, frame_encoding = msg.data, encoding
        else:  # ERROR: aiohttp has already closed with 1009 (too big) or 1002 (protocol error)
            too_big = getattr(ws.exception(), "code", None) == WSCloseCode.MESSAGE_TOO_BIG
            self._refuse("websocket", "too_large" if too_big else "websocket_protocol")
            return False
        hold = Hold(self._inflight)
        try:
            await self._take_when_room(Undecoded(data, _restamp(origin), route, frame_encoding), principal, hold)
        except (RefusedInput, Refused, AuthError) as exc:
            self._refuse("websocket", exc.reason)
            await ws.send_bytes(orjson.dumps({"error": exc.reason, "detail": exc.detail}))
        except RetryLater as exc:
            code = exc.code or "pipeline_full"
            self._refuse("websocket", code)
            await ws.send_bytes(orjson.dumps({"error": code, "detail": exc.reason, "retryAfter": exc.retry_after}))
        except Exception:  # a bug of ours must cost one frame, never the connection
            self._internal_error("websocket")
            self._refuse("websocket", "internal_error")
            await ws.send_bytes(orjson.dumps({"error": "internal_error", "detail": "message not accepted"}))
        finally:
            hold.release()
        return True

    async def _take_when_room(self, message: Undecoded, principal: Principal, hold: Hold) -> None:
        """Take a WebSocket frame, waiting while the pipelines are full (``websocket_backpressure_timeout``).

        While an exporter's queue is congested the frame waits before any work is done for it. If a
        stage still refuses it (RetryLater), the attempt was undone whole
        (:mod:`webrtc_observer.transaction`) and it is tried again after a pause, so the attempt that
        is taken yields what a first one would have. The frames after it wait unread meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self._config.websocket_backpressure_timeout)
        host = self._settings.host
        delay = 0.005
        waited = False
        while True:
            if host.congested():
                waited = self._waiting(waited)
                try:
                    async with asyncio.timeout_at(deadline):
                        await host.room()
                except TimeoutError:
                    raise Busy("pipeline_full", "the exporters' sending queues stayed full") from None
            try:
                self._admit()
                if not hold.size:
                    hold.take(len(message.data))
                await self._take(message, principal, "websocket")
                return
            except RetryLater:
                remaining = deadline - loop.time()
                if remaining <= 0 or self._runner is None:  # waited long enough, or shutting down
                    raise
            waited = self._waiting(waited)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.25)

    def _waiting(self, already: bool) -> bool:
        """Count a frame that waits for room (once)."""
        if not already:
            self._backpressure.add(1, self._label)
        return True

    # -- authentication -----------------------------------------------------------------------------
    def _authorize(self, request: web.Request) -> Principal:
        """The request's principal, allowed the path's service id; AuthError (401/403) otherwise."""
        if self._auth is None:
            return ANYONE
        principal = self._auth.authenticate(request)
        service_id = request.match_info["service_id"]
        if not principal.allows(service_id):
            raise forbidden(f"the access token is not allowed service id {service_id[:64]!r}")
        return principal

    def _check_ws_origin(self, request: web.Request) -> None:
        """A browser's WebSocket from a page outside ``cors.allowed_origins`` (when narrowed): 403."""
        origin = request.headers.get("Origin")
        if origin is None or self._cors_any or not self._cors_origins or origin in self._cors_origins:
            return
        raise AuthError(403, "cors_origin", "WebSocket from an origin that cors.allowed_origins does not list")

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

    async def _take(self, message: Undecoded, principal: Principal, transport: str) -> int:
        """Decode one message and hand its samples on; the samples taken. With ``service.workers``, a
        message whose samples another worker owns goes to it undecoded (it decodes and answers)."""
        owner = self._owner(message, principal)
        if owner is not None:
            forwarder, index = owner
            taken = await forwarder.forward(index, message)
        else:
            taken = await self._decode_and_hand_on(message, principal)
        self._accepted.add(taken, self._label, transport)
        self._received.add(taken, message.origin.service_id, message.origin.media_unit_id)
        return taken

    def _owner(self, message: Undecoded, principal: Principal) -> tuple[Forwarder, int] | None:
        """The other worker that owns every sample of ``message``, told from its bytes; None: decode here.
        A token bound to a client or call is checked against the decoded samples, so here."""
        if self._forwarder is None or not _unrestricted(principal):
            return None
        keys = routing_keys(
            message.data,
            message.origin,
            route=message.route,  # type: ignore[arg-type]
            encoding=message.encoding,  # type: ignore[arg-type]
            gzipped=message.gzipped,
        )
        index = self._forwarder.owner(keys) if keys else None
        return None if index is None else (self._forwarder, index)

    async def _take_undecoded(self, message: Undecoded) -> int:
        """A message a peer worker read and handed over, its samples this worker's: decode and hand on.
        The peer counts it and answers its client."""
        hold = Hold(self._inflight)
        try:
            self._admit()
            hold.take(len(message.data))
            return await self._decode_and_hand_on(message, ANYONE)  # the peer only hands over unrestricted input
        except RefusedInput as exc:
            raise Refused(exc.reason, exc.detail, exc.status) from None
        finally:
            hold.release()

    async def _decode_and_hand_on(self, message: Undecoded, principal: Principal) -> int:
        """Decode ``message``, check its samples against ``principal`` and hand them on; how many."""
        samples = self._decode(message)
        _check_samples(principal, samples)
        if samples:
            await self._next.consume(Batch(samples=samples))
        return len(samples)

    def _decode(self, message: Undecoded) -> list[Sample]:
        return decode(
            message.data,
            message.origin,
            route=message.route,  # type: ignore[arg-type]
            encoding=message.encoding,  # type: ignore[arg-type]
            gzipped=message.gzipped,
            limit=self._config.max_message_bytes,
            limits=self._config.limits,
        ).samples

    def _internal_error(self, transport: str) -> None:
        """Count a failure of ours; log its traceback at most a few times a minute (call from ``except``)."""
        self._internal_errors.add(1, self._label, transport)
        now = time.monotonic()
        recent = [t for t in self._tracebacks_logged if now - t < 60.0]
        if len(recent) < _TRACEBACKS_PER_MINUTE:
            recent.append(now)
            self._log.error("failed to handle a message", transport=transport, exc_info=True)
        self._tracebacks_logged = recent

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
    def _middleware(self, request: web.Request, handler: Any) -> Awaitable[web.StreamResponse]:
        """CORS headers and JSON errors (:meth:`_answered`) around every route's handler but the
        WebSocket ones, which answer both themselves: their handler is awaited as it is, so nothing of
        this middleware stays alive as long as a connection."""
        if request.match_info.handler in self._websocket_handlers:
            return handler(request)
        return self._answered(request, handler)

    async def _answered(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The handler's response, or the JSON error of an HTTP error aiohttp raised; with the CORS
        headers when the request's origin is allowed."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if not _ours(exc):
                raise
            response = _json_error(exc)
        return self._with_cors(request, response)

    def _with_cors(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
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


def _unrestricted(principal: Principal) -> bool:
    """The principal may send any sample of the path's service (no token, or one bound to nothing)."""
    return not principal.bound and principal.service_ids is None


def _check_samples(principal: Principal, samples: list[Sample]) -> None:
    """Every sample of a message must be allowed the principal, or none is taken (403). A client
    sample that names no call or room gets the token's (a refused message is dropped whole, so
    filling in as we go changes nothing that is kept).

    A token bound to a client, call or room (a browser's JWT) sends only that client's samples; SFU
    and TURN samples need a token that is not bound (a static token, or a JWT with only serviceId)."""
    if _unrestricted(principal):
        return
    for sample in samples:
        service_id = sample.origin.service_id
        if isinstance(sample, ClientSample):
            if not principal.allows(service_id, sample.client_id, sample.call_id, sample.room_id):
                raise forbidden("the access token is not allowed to send for this client, call or room")
            # The token decides the call and room a sample that names none goes into.
            if sample.call_id is None and principal.call_id is not None:
                sample.call_id = principal.call_id
            if sample.room_id is None and principal.room_id is not None:
                sample.room_id = principal.room_id
        elif principal.bound:
            raise forbidden("an access token bound to a client cannot send SFU or TURN samples")
        elif not principal.allows(service_id):
            raise forbidden("the access token is not allowed this service id")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _restamp(origin: Origin) -> Origin:
    """Each WebSocket message is received at its own time."""
    return msgspec.structs.replace(origin, received_at=_now_ms())


class _ClientGone(Exception):
    """The client closed its connection before its whole body arrived: not an error of anyone's here."""


def _refusal(exc: AuthError | RefusedInput | Refused) -> web.Response:
    """The answer to input refused for good: its status, reason and detail (and auth's headers)."""
    return _error(exc.status, exc.reason, exc.detail, headers=exc.headers if isinstance(exc, AuthError) else None)


_CLOSING = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
"""What ``ws.receive()`` gives once the connection is closing: the end of its frames."""
_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


def _ours(exc: web.HTTPException) -> bool:
    """An error to answer with our JSON body: an HTTP error (400 and above) not already JSON."""
    return exc.status >= 400 and exc.content_type != "application/json"


def _json_error(exc: web.HTTPException) -> web.Response:
    """Errors aiohttp raises itself (no route, wrong method, body over client_max_size, not a
    WebSocket handshake) as the same JSON body as ours, ``{"error", "detail"}``."""
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return _error(exc.status, _REASONS.get(exc.status, "http_error"), exc.reason, headers or None)


def _error(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    response = web.json_response({"error": reason, "detail": detail}, status=status, headers=headers)
    if status == 408:  # what is left of that body would be read as the next request
        response.force_close()
    return response


def _create(settings: Settings, config: ObservertcReceiverConfig, next_consumer: Consumer) -> ObservertcReceiver:
    return ObservertcReceiver(settings, config, next_consumer)


FACTORY = Factory(
    kind="receiver",
    type="observertc",
    config_type=ObservertcReceiverConfig,
    create=_create,
    description="ObserveRTC-compatible HTTP and WebSocket sample endpoints",
)
