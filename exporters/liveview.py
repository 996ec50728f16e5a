"""Exporter ``liveview``: a small built-in web page showing what is happening now.

``GET /ui`` is a single HTML page (no build step, no framework) that polls ``GET /ui/api/state`` every
second: active calls with their clients, per-client quality (RTT, loss, bitrate, MOS estimate)
updating live, recent call events, and the collector's own counters and exporter health. The state is
built from the reports that reach this exporter, so put it after ``reports`` in a pipeline. Everything
it keeps is bounded: ``max_calls`` calls (older ones are dropped from the view first), the last
``max_events`` events.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from webrtc_observer import auth
from webrtc_observer.component import Factory, Settings
from webrtc_observer.http_server import Listener, ServerConfig, serve
from webrtc_observer.model import Batch
from webrtc_observer.processors import _emodel
from webrtc_observer.telemetry import Histogram, Telemetry
from webrtc_observer.transaction import after_commit

_TRACK_TYPES = {
    "INBOUND_AUDIO_TRACK": ("inbound", "audio"),
    "INBOUND_VIDEO_TRACK": ("inbound", "video"),
    "OUTBOUND_AUDIO_TRACK": ("outbound", "audio"),
    "OUTBOUND_VIDEO_TRACK": ("outbound", "video"),
}
_SHOWN_EVENTS = frozenset(
    {"CALL_STARTED", "CALL_ENDED", "CLIENT_JOINED", "CLIENT_LEFT", "PEER_CONNECTION_OPENED", "PEER_CONNECTION_CLOSED"}
)
_COUNTERS = ("samples_received", "samples_refused", "reports", "exporter_sent_records", "exporter_send_failed_records")


@dataclass
class LiveViewConfig(ServerConfig):
    endpoint: str = "0.0.0.0:7081"
    """host:port serving /ui."""
    max_calls: int = 500
    max_events: int = 200
    auth: auth.AuthConfig | None = None
    """Who may open the page: ``bearer_tokens`` (``?accessToken=`` in the page's URL) or ``basic``."""

    def validate(self) -> list[tuple[str, str]]:
        issues = super().validate()
        issues += auth.scrape_auth_issues(self.auth, "the live view shows every service")
        for name in ("max_calls", "max_events"):
            if getattr(self, name) < 1:
                issues.append((name, "must be at least 1"))
        return issues


class _ClientView:
    __slots__ = ("bitrate_in", "bitrate_out", "client_id", "last", "loss", "mos", "previous", "rtt", "updated", "user_id")

    def __init__(self, client_id: str, user_id: str | None) -> None:
        self.client_id = client_id
        self.user_id = user_id
        self.rtt: float | None = None
        self.loss: float | None = None
        self.bitrate_in: float | None = None
        self.bitrate_out: float | None = None
        self.mos: float | None = None
        self.updated = 0
        # (direction, ssrc) → (timestamp ms, bytes, packets received, packets lost) of the previous report
        self.previous: dict[tuple[str, int], tuple[int, float, float, float]] = {}
        self.last: dict[str, float] = {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "userId": self.user_id,
            "rttMs": None if self.rtt is None else round(self.rtt * 1000),
            "lossPercent": None if self.loss is None else round(self.loss * 100, 2),
            "inboundKbps": None if self.bitrate_in is None else round(self.bitrate_in / 1000),
            "outboundKbps": None if self.bitrate_out is None else round(self.bitrate_out / 1000),
            "mos": None if self.mos is None else round(self.mos, 2),
            "updated": self.updated,
        }


class _CallView:
    __slots__ = ("call_id", "clients", "room_id", "service_id", "started")

    def __init__(self, payload: dict[str, Any]) -> None:
        self.call_id = payload["callId"]
        self.service_id = payload["serviceId"]
        self.room_id = payload.get("roomId")
        self.started = payload["timestamp"]
        self.clients: dict[str, _ClientView] = {}


class LiveView:
    """What the page shows, built from reports."""

    def __init__(self, max_calls: int, max_events: int) -> None:
        self._calls: OrderedDict[tuple[str, str], _CallView] = OrderedDict()
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._max_calls = max_calls

    def update(self, batch: Batch) -> None:
        for report in batch.reports:
            payload = report.payload
            if report.type == "CALL_EVENT":
                self._event(payload)
            elif report.type in _TRACK_TYPES:
                self._track(payload, *_TRACK_TYPES[report.type])

    def _call(self, payload: dict[str, Any]) -> _CallView | None:
        call_id = payload.get("callId")
        if call_id is None:
            return None
        key = (payload["serviceId"], call_id)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _CallView(payload)
            while len(self._calls) > self._max_calls:
                self._calls.popitem(last=False)
        return call

    def _event(self, payload: dict[str, Any]) -> None:
        name = payload["name"]
        if name in _SHOWN_EVENTS:
            self._events.appendleft(
                {
                    k: payload.get(k)
                    for k in ("timestamp", "name", "serviceId", "callId", "clientId", "userId", "peerConnectionId")
                }
            )
        if name == "CALL_ENDED":
            self._calls.pop((payload["serviceId"], payload.get("callId") or ""), None)
            return
        call = self._call(payload)
        if call is None:
            return
        client_id = payload.get("clientId")
        if name == "CLIENT_JOINED" and client_id:
            call.clients.setdefault(client_id, _ClientView(client_id, payload.get("userId")))
        elif name == "CLIENT_LEFT" and client_id:
            call.clients.pop(client_id, None)

    def _track(self, payload: dict[str, Any], direction: str, kind: str) -> None:
        call = self._call(payload)
        client_id = payload.get("clientId")
        if call is None or client_id is None:
            return
        client = call.clients.get(client_id)
        if client is None:
            client = call.clients[client_id] = _ClientView(client_id, payload.get("userId"))
        ts = payload["timestamp"]
        client.updated = ts
        if payload.get("roundTripTime") is not None:
            client.rtt = float(payload["roundTripTime"])
        key = (direction, payload["ssrc"])
        counters = (
            ts,
            float(payload.get("bytesReceived" if direction == "inbound" else "bytesSent") or 0),
            float(payload.get("packetsReceived") or 0),
            float(payload.get("packetsLost") or 0),
        )
        previous = client.previous.get(key)
        client.previous[key] = counters
        if previous is None or ts <= previous[0]:
            return
        seconds = (ts - previous[0]) / 1000
        bitrate = max(0.0, counters[1] - previous[1]) * 8 / seconds
        client.last[key[0] + ":" + str(key[1])] = bitrate
        total_in = sum(v for k, v in client.last.items() if k.startswith("inbound"))
        total_out = sum(v for k, v in client.last.items() if k.startswith("outbound"))
        client.bitrate_in, client.bitrate_out = total_in or client.bitrate_in, total_out or client.bitrate_out
        if direction == "inbound":
            received, lost = counters[2] - previous[2], counters[3] - previous[3]
            if received + lost > 0 and lost >= 0:
                client.loss = lost / (received + lost)
            if kind == "audio" and client.rtt is not None and client.loss is not None:
                jitter = float(payload.get("jitter") or 0)
                client.mos = _emodel.audio_mos(client.rtt, 2 * jitter, client.loss)

    def state(self, telemetry: Telemetry, problems: dict[str, str]) -> dict[str, Any]:
        calls = [
            {
                "serviceId": c.service_id,
                "callId": c.call_id,
                "roomId": c.room_id,
                "started": c.started,
                "clients": [cl.as_dict() for cl in c.clients.values()],
            }
            for c in reversed(self._calls.values())
        ]
        counters = {}
        for name in _COUNTERS:
            metric = telemetry.get(name)
            if metric is not None and not isinstance(metric, Histogram):
                counters[name] = metric.total()
        return {
            "now": int(time.time() * 1000),
            "calls": calls,
            "events": list(self._events),
            "counters": counters,
            "health": {"status": "unhealthy" if problems else "ok", "problems": problems},
        }


class LiveViewExporter:
    def __init__(self, settings: Settings, config: LiveViewConfig) -> None:
        self._settings = settings
        self._config = config
        self._view = LiveView(config.max_calls, config.max_events)
        self._runner: Listener | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        authenticator = auth.Authenticator(self._config.auth) if self._config.auth is not None else None
        app = web.Application(middlewares=[_security_headers, auth.middleware(authenticator)])
        app.router.add_get("/", self._redirect)
        app.router.add_get("/ui", self._page)
        app.router.add_get("/ui/api/state", self._state)
        # One page per worker process (worker i on port + i): each shows the calls it handles.
        self._runner, host, self.bound_port = await serve(
            app,
            self._config,
            port_offset=self._settings.worker.index,
            telemetry=self._settings.telemetry,
            label=str(self._settings.id),
        )
        self._settings.logger.info("live view", url=f"http://{host}:{self.bound_port}/ui")

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui")

    async def _page(self, request: web.Request) -> web.Response:
        html, policy = _page()
        return web.Response(text=html, content_type="text/html", headers={"Content-Security-Policy": policy})

    async def _state(self, request: web.Request) -> web.Response:
        state = self._view.state(self._settings.telemetry, self._settings.host.problems())
        return web.json_response(state, headers={"Cache-Control": "no-store"})

    async def consume(self, batch: Batch) -> None:
        if batch.reports:
            await after_commit(lambda: self._view.update(batch))

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@functools.cache
def _page() -> tuple[str, str]:
    """The page and its Content-Security-Policy: itself only, its inline script and style by hash."""
    html = resources.files("webrtc_observer.exporters").joinpath("liveview.html").read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for match in _INLINE.finditer(html):
        digest = base64.b64encode(hashlib.sha256(match.group(2).encode()).digest()).decode()
        hashes[match.group(1)].append(f"'sha256-{digest}'")
    script, style = " ".join(hashes["script"]) or "'none'", " ".join(hashes["style"]) or "'none'"
    policy = (
        f"default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; img-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return html, policy


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer (the page, the API, errors and 401s) says: no framing, no sniffing, no foreign content."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        for name, value in _SECURITY_HEADERS.items():
            exc.headers.setdefault(name, value)
        raise
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _create(settings: Settings, config: LiveViewConfig, _next: None) -> LiveViewExporter:
    return LiveViewExporter(settings, config)


FACTORY = Factory(
    kind="exporter", type="liveview", config_type=LiveViewConfig, create=_create, description="a live web page at /ui"
)
