"""Exporter ``liveview``: a built-in web page for watching calls as they happen, and a JSON API.

``GET /ui`` is a single HTML page (no framework, no build step, no CDN; its charts are plain SVG drawn
by its own script) that polls the API below. It shows:

* the calls, worst first by a quality score, with their open issues; search by call, room, user or
  client id, filter by service and issue type, paged;
* a page per call: participants with their peer connections and tracks, the SFUs that carry the
  call, charts of the last minutes per client (RTT, loss, jitter, bitrate in and out, MOS, fps,
  resolution), the issues timeline and the lifecycle events (with user ids);
* the last ended calls with their ``CALL_SUMMARY``, so a call that just failed can still be read;
* the collector's own counters and exporter health.

Where the numbers come from: every measurement shown is the ``quality`` processor's
(:attr:`Batch.quality <webrtc_observer.model.Batch.quality>`, the same values as the
``observertc_quality_*`` histograms), never computed here. Per client, a point of a chart is the
worst of its tracks in that sample (highest RTT, fraction lost and jitter; lowest MOS, fps and frame
height; audio MOS before video MOS) and bitrates are summed per direction. The tracks shown, and who
they are (track id, peer connection, SSRC, kind, direction, the sender of an inbound track, the
client's room and user), come from those same measurements: one ``TrackQuality`` per track and
sample, which carries them. The track reports (``INBOUND_AUDIO_TRACK``...) are not read, so without
a ``quality`` processor in the pipeline the page shows calls, clients, lifecycle, issues and SFUs,
but no tracks and no charts. Issues are the ``issues`` processor's ``CLIENT_ISSUE`` /
``CLIENT_ISSUE_RESOLVED`` reports, summaries the ``summary`` processor's ``CALL_SUMMARY``, lifecycle
the correlation processor's ``CALL_EVENT`` reports, SFUs the ``reports`` processor's SFU pad reports.
So list this exporter in a pipeline after ``quality`` and ``reports`` (after ``issues`` and
``summary`` for those parts).

A batch's measurements are applied where its first track report is (the ``reports`` processor puts
a sample's track reports before the events the sample carries, so a call the view had not seen, or
had dropped, is in view for them), else after its other reports; leaves, ends and summaries after
them. A track is added to its client in the order of a sample's track reports (inbound before
outbound, audio before video), as is a peer connection first named by a track.

A call's **quality score** (0..4.5, lower is worse): the lowest *recent MOS* of its clients (the
lowest MOS of each client's last ``score_samples`` samples; 4.5 when none is known; once all left,
of the departed as they left), less 1.5 per open critical issue, 1 per major and 0.5 per minor one. A call is *active* while it has a client; a call
whose clients all left is *ending* (waiting out the correlation processor's ``call_empty_timeout``)
and is counted apart; at ``CALL_ENDED`` it moves to the ended calls.

Clients that left: at ``CLIENT_LEFT`` a client leaves the view, and no later report or measurement
of it brings it back until a new ``CLIENT_JOINED`` (a client's last sample may be measured after its
leave was reported). Measurements that come in the same batch as the leave still land on its charts.

The API (JSON, ``Cache-Control: no-store``; bad parameters give 400 with ``{"error", "parameter"}``):

* ``GET /ui/api/state``: counts (active and ending calls, clients, ended calls, what was dropped for
  the bounds), the collector's counters and health, the recent events.
* ``GET /ui/api/calls?q=&service=&issue=&status=active|ending|all&offset=0&limit=25``: one page of
  calls, worst first, with ``total``; plus the services and issue types present, for the filters.
  ``issue`` matches calls that raised an issue of that type while in view.
* ``GET /ui/api/call?service=&call=``: one live or ended call, in full (404 when not in view).
* ``GET /ui/api/ended?q=&service=&offset=0&limit=25``: the ended calls, newest first, with summaries.

``limit`` is at most 100. Everything kept is bounded (see :class:`LiveViewConfig`): calls in view,
clients per call (the present and the departed), tracks per client, points per client series,
events, issues per call, ended calls. What a bound turned away is counted in ``/ui/api/state``.

The view is updated only when the message's transaction commits
(:func:`~webrtc_observer.transaction.after_commit`): a refused, retried message shows once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
import struct
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from webrtc_observer import auth
from webrtc_observer.component import Factory, Settings
from webrtc_observer.http_server import Listener, ServerConfig, serve
from webrtc_observer.model import Batch, Report, TrackQuality
from webrtc_observer.model import shared as _shared  # the ids of the model are interned already
from webrtc_observer.telemetry import Histogram, Telemetry
from webrtc_observer.transaction import after_commit

_SFU_PAD_TYPES = frozenset({"SFU_INBOUND_RTP_PAD", "SFU_OUTBOUND_RTP_PAD"})
_TRACK_TYPES = frozenset({"INBOUND_AUDIO_TRACK", "INBOUND_VIDEO_TRACK", "OUTBOUND_AUDIO_TRACK", "OUTBOUND_VIDEO_TRACK"})
"""Not read (a track's measurement says who it is), but a batch's measurements are applied where its
first one is: the ``reports`` processor puts a sample's track reports before the events it carries."""
_LIFECYCLE = frozenset(
    {"CALL_STARTED", "CALL_ENDED", "CLIENT_JOINED", "CLIENT_LEFT", "PEER_CONNECTION_OPENED", "PEER_CONNECTION_CLOSED"}
)
_ISSUE_RAISED, _ISSUE_RESOLVED, _SUMMARY = "CLIENT_ISSUE", "CLIENT_ISSUE_RESOLVED", "CALL_SUMMARY"
_COUNTERS = ("samples_received", "samples_refused", "reports", "exporter_sent_records", "exporter_send_failed_records")
_SEVERITY_PENALTY = {"critical": 1.5, "major": 1.0, "minor": 0.5, "info": 0.0}
_SEVERITY_RANK = {"critical": 3, "major": 2, "minor": 1, "info": 0}
_MAX_LIMIT = 100
_MAX_ATTACHMENTS = 64 * 1024
"""Attachments longer than this are not parsed (an issue's values are small)."""
_MAX_ID = 256
"""Ids and search text are cut to this many characters."""

# One point of a client's series: values in these units, NaN when not measured.
_SERIES = ("rttMs", "lossPercent", "jitterMs", "inKbps", "outKbps", "mos", "fps", "width", "height")
_RTT, _LOSS, _JITTER, _IN, _OUT, _MOS, _FPS, _WIDTH, _HEIGHT = range(len(_SERIES))
_NAN = float("nan")
_FIRST_POINTS = 8
"""Points a client's series has room for at first (it grows to ``max_points`` as they come)."""


@dataclass
class LiveViewConfig(ServerConfig):
    endpoint: str = "0.0.0.0:7081"
    """host:port serving /ui."""
    max_calls: int = 500
    """Live calls in view; past it the one updated longest ago is dropped (counted)."""
    max_clients_per_call: int = 50
    """Clients kept per call, present and departed each; more are not shown (counted)."""
    max_tracks_per_client: int = 32
    """Tracks kept per client; more are not shown (counted)."""
    max_points: int = 120
    """Points per client series (one per sample: 10 minutes at a 5 s sample interval)."""
    max_events: int = 200
    """Recent events shown on the front page."""
    max_call_events: int = 100
    """Lifecycle events kept per call."""
    max_call_issues: int = 100
    """Issue raises and resolves kept per call (and open issues at most this many)."""
    max_ended_calls: int = 50
    """Ended calls kept, with their summaries; the oldest is dropped first."""
    score_samples: int = 3
    """A client's recent MOS is the lowest of its last this many samples."""
    auth: auth.AuthConfig | None = None
    """Who may open the page: ``bearer_tokens`` (``?accessToken=`` in the page's URL) or ``basic``."""

    def validate(self) -> list[tuple[str, str]]:
        issues = super().validate()
        issues += auth.scrape_auth_issues(self.auth, "the live view shows every service")
        for name in (
            "max_calls",
            "max_clients_per_call",
            "max_tracks_per_client",
            "max_points",
            "max_events",
            "max_call_events",
            "max_call_issues",
            "max_ended_calls",
            "score_samples",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                issues.append((name, f"must be a whole number of at least 1, got {value!r}"))
        if isinstance(self.max_points, int) and self.max_points > 10_000:
            issues.append(("max_points", f"must be at most 10000, got {self.max_points}"))
        return issues


class BadParameter(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


# --------------------------------------------------------------------------------------------------
# What is kept
# --------------------------------------------------------------------------------------------------


_Event = tuple[Any, ...]
"""An event as kept: one tuple, the names its values have in the page's JSON first (a few shapes,
shared), then the values (see :func:`_event` and :func:`_event_dict`)."""


def _event(keys: tuple[str, ...], *values: Any) -> _Event:
    """An event to keep: ``keys`` name ``values`` (strings kept as :func:`_shared` copies)."""
    return (keys, *map(_shared, values))


def _event_dict(event: _Event) -> dict[str, Any]:
    """An event as the page's JSON shows it."""
    return dict(zip(event[0], event[1:], strict=True))


_UNKNOWN_NUMBER = -(2**63)
"""What :class:`_CallEvents` keeps for a timestamp or SSRC that is None (or no 64-bit integer)."""

_TRACK_EVENTS = frozenset({"MEDIA_TRACK_ADDED", "MEDIA_TRACK_REMOVED"})
"""The names of the call events that carry a track id and SSRC (:data:`_TRACK_EVENT_KEYS`)."""


def _packable(value: Any) -> int:
    """``value`` as :class:`_CallEvents` keeps a number: itself if a 64-bit integer, else
    :data:`_UNKNOWN_NUMBER` (reports are validated against the schemas, where both are ``long``)."""
    if value.__class__ is int and _UNKNOWN_NUMBER < value < 2**63:
        return value
    return _UNKNOWN_NUMBER


class _CallEvents:
    """A call's last lifecycle events, packed: an event's timestamp and SSRC as two 64-bit integers
    of :attr:`numbers`, its name, who sent it (room, client and user id, one tuple shared by the
    events of a client in a row), peer connection and track id as four references of :attr:`texts`
    (strings kept as :func:`_shared` copies). About 50 bytes an event, where a tuple an event with
    its own integer objects took 90 to 140; the service and call id are the call's."""

    __slots__ = ("numbers", "texts")

    _TEXTS = 4
    _RECENT = 16
    """How many of the last events are searched for a ``who`` tuple to share (events are rare, and
    a client's come together: its join, peer connections and tracks)."""

    def __init__(self) -> None:
        self.numbers = array("q")
        self.texts: list[Any] = []

    def __len__(self) -> int:
        return len(self.numbers) // 2

    def add(self, values: tuple[Any, ...], track_id: Any, ssrc: Any, limit: int) -> None:
        """Keep an event (``values`` in the order of :data:`_EVENT_KEYS`), the first ones dropped past
        ``limit``."""
        ts, name, _service_id, _call_id, room_id, client_id, user_id, pc_id = values
        self.numbers.extend((_packable(ts), _packable(ssrc)))
        self.texts.extend((_shared(name), self._who(room_id, client_id, user_id), _shared(pc_id), _shared(track_id)))
        if len(self.numbers) > 2 * limit:
            del self.numbers[: len(self.numbers) - 2 * limit]
            del self.texts[: len(self.texts) - self._TEXTS * limit]

    def _who(self, room_id: Any, client_id: Any, user_id: Any) -> tuple[Any, Any, Any]:
        """The ``(room, client, user)`` tuple of a recent event with the same three, else a new one."""
        texts, who = self.texts, (room_id, client_id, user_id)
        for i in range(len(texts) - self._TEXTS + 1, max(0, len(texts) - self._RECENT * self._TEXTS), -self._TEXTS):
            if texts[i] == who:
                return texts[i]
        return (_shared(room_id), _shared(client_id), _shared(user_id))

    def dicts(self, service_id: str, call_id: str) -> list[dict[str, Any]]:
        """The events as the page's JSON shows them, oldest first."""
        out = []
        numbers, texts = self.numbers, self.texts
        for i in range(len(numbers) // 2):
            ts, ssrc = numbers[2 * i], numbers[2 * i + 1]
            name, (room_id, client_id, user_id), pc_id, track_id = texts[self._TEXTS * i : self._TEXTS * (i + 1)]
            event = {
                "timestamp": None if ts == _UNKNOWN_NUMBER else ts,
                "name": name,
                "serviceId": service_id,
                "callId": call_id,
                "roomId": room_id,
                "clientId": client_id,
                "userId": user_id,
                "peerConnectionId": pc_id,
            }
            if name in _TRACK_EVENTS:
                event["trackId"] = track_id
                event["ssrc"] = None if ssrc == _UNKNOWN_NUMBER else ssrc
            out.append(event)
        return out


_EVENT_KEYS = ("timestamp", "name", "serviceId", "callId", "roomId", "clientId", "userId", "peerConnectionId")
_TRACK_EVENT_KEYS = (*_EVENT_KEYS, "trackId", "ssrc")
_ISSUE_EVENT_KEYS = (
    "timestamp",
    "name",
    "issue",
    "severity",
    "serviceId",
    "callId",
    "roomId",
    "clientId",
    "userId",
    "peerConnectionId",
)


_ISSUE_KEYS = (
    "timestamp",
    "raised",
    "type",
    "severity",
    "clientId",
    "userId",
    "peerConnectionId",
    "trackId",
    "ssrc",
    "message",
    "values",
    "startedAt",
    "endedAt",
)
"""The names of an issue entry's values, as the page's JSON shows them (:func:`_issue_dict`)."""
_SEVERITY, _VALUES, _STARTED_AT = (_ISSUE_KEYS.index(k) for k in ("severity", "values", "startedAt"))

_Issue = tuple[Any, ...]
"""An issue raise or resolve as kept: its values in the order of ``_ISSUE_KEYS``, but for ``values``
the attachments' JSON text they are in when they are a dict (the report's string costs less than the
dict, its keys and numbers; :func:`_issue_dict` reads them back)."""


def _issue_dict(issue: _Issue) -> dict[str, Any]:
    shown = dict(zip(_ISSUE_KEYS, issue, strict=True))
    attachments = issue[_VALUES]
    if attachments is not None:
        shown["values"] = json.loads(attachments)["values"]
    return shown


class _Ring:
    """The last ``capacity`` points of a client: timestamps (int64) and values (float32, NaN = none).

    Room for points is allocated as they come (doubling, up to ``capacity``), so a short-lived client
    costs a few points; the ring wraps only once it holds ``capacity``."""

    __slots__ = ("capacity", "count", "start", "ts", "values")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = 0
        self.start = 0
        self.ts = array("q")
        self.values = array("f")
        self._grow(min(capacity, _FIRST_POINTS))

    def _grow(self, points: int) -> None:
        # Concatenated, not extended: the new arrays are of their exact size (``extend`` leaves room).
        self.ts = self.ts + array("q", bytes(8 * points))
        self.values = self.values + array("f", [_NAN]) * (points * len(_SERIES))

    def last_ts(self) -> int | None:
        return self.ts[(self.start + self.count - 1) % len(self.ts)] if self.count else None

    def push(self, ts: int, point: list[float]) -> None:
        width = len(_SERIES)
        if self.count == len(self.ts) < self.capacity:  # full but not at capacity: not wrapped yet
            self._grow(min(self.count, self.capacity - self.count))
        if self.count < len(self.ts):
            i = (self.start + self.count) % len(self.ts)
            self.count += 1
        else:
            i = self.start
            self.start = (self.start + 1) % len(self.ts)
        self.ts[i] = ts
        self.values[i * width : (i + 1) * width] = array("f", point)

    def merge_last(self, point: list[float]) -> None:
        """Fold more tracks of the last point's sample into it (a sample split over batches)."""
        width = len(_SERIES)
        i = (self.start + self.count - 1) % len(self.ts)
        old = self.values[i * width : (i + 1) * width]
        self.values[i * width : (i + 1) * width] = array("f", _combine(list(old), point))

    def points(self) -> Iterator[tuple[int, list[float]]]:
        width = len(_SERIES)
        for k in range(self.count):
            i = (self.start + k) % len(self.ts)
            yield self.ts[i], list(self.values[i * width : (i + 1) * width])

    def last(self, n: int) -> list[list[float]]:
        width = len(_SERIES)
        out = []
        for k in range(max(0, self.count - n), self.count):
            i = (self.start + k) % len(self.ts)
            out.append(list(self.values[i * width : (i + 1) * width]))
        return out

    def last_value(self, n: int, index: int, lowest: bool) -> float | None:
        """The lowest (or highest) value of one measure over the last ``n`` points."""
        width = len(_SERIES)
        found: float | None = None
        for k in range(max(0, self.count - n), self.count):
            v = self.values[((self.start + k) % len(self.ts)) * width + index]
            if v == v and (found is None or (v < found if lowest else v > found)):  # v == v: not NaN
                found = v
        return found


def _combine(a: list[float], b: list[float]) -> list[float]:
    """Two partial points of one sample: worst of each measure, bitrates summed."""
    out = list(a)
    for i in (_RTT, _LOSS, _JITTER):
        out[i] = _worst_high(a[i], b[i])
    for i in (_IN, _OUT):
        out[i] = b[i] if math.isnan(a[i]) else a[i] if math.isnan(b[i]) else a[i] + b[i]
    for i in (_MOS, _FPS):
        out[i] = _worst_low(a[i], b[i])
    if not math.isnan(b[_HEIGHT]) and (math.isnan(a[_HEIGHT]) or b[_HEIGHT] < a[_HEIGHT]):
        out[_WIDTH], out[_HEIGHT] = b[_WIDTH], b[_HEIGHT]
    return out


def _worst_high(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)


def _worst_low(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else min(a, b)


def _point(tracks: Iterable[TrackQuality]) -> list[float]:
    """One client sample's point from the quality processor's measurements of its tracks: as
    :func:`_worst_high` and :func:`_worst_low` would fold them (``x != x``: x is NaN, nothing yet)."""
    rtt = loss = jitter = kbps_in = kbps_out = fps = width = height = audio_mos = video_mos = _NAN
    for q in tracks:
        inbound = q.direction == "inbound"
        if q.rtt is not None:
            value = q.rtt * 1000
            if rtt != rtt or value > rtt:
                rtt = value
        if q.bitrate is not None:
            if inbound:
                kbps_in = q.bitrate / 1000 if kbps_in != kbps_in else kbps_in + q.bitrate / 1000
            else:
                kbps_out = q.bitrate / 1000 if kbps_out != kbps_out else kbps_out + q.bitrate / 1000
        if not inbound:
            continue
        if q.fraction_lost is not None:
            value = q.fraction_lost * 100
            if loss != loss or value > loss:
                loss = value
        if q.jitter is not None:
            value = q.jitter * 1000
            if jitter != jitter or value > jitter:
                jitter = value
        if q.mos is not None:
            if q.kind == "audio":
                if audio_mos != audio_mos or q.mos < audio_mos:
                    audio_mos = q.mos
            elif video_mos != video_mos or q.mos < video_mos:
                video_mos = q.mos
        if q.kind == "video":
            if q.fps is not None and (fps != fps or q.fps < fps):
                fps = q.fps
            if q.frame_height is not None and (height != height or q.frame_height < height):
                width = _NAN if q.frame_width is None else float(q.frame_width)
                height = float(q.frame_height)
    mos = video_mos if audio_mos != audio_mos else audio_mos
    return [rtt, loss, jitter, kbps_in, kbps_out, mos, fps, width, height]


def _track_order(q: TrackQuality) -> tuple[bool, bool]:
    return q.direction != "inbound", q.kind != "audio"


def _num(value: float | None, digits: int = 2) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def _point_dict(p: list[float]) -> dict[str, float | None]:
    return {name: _num(p[i], 0 if name in ("width", "height") else 2) for i, name in enumerate(_SERIES)}


class _TrackView:
    """A track as shown: who it is, and the numbers of its latest measurement (:func:`_measured`)."""

    __slots__ = (
        "direction",
        "kind",
        "limitation",
        "measured",
        "peer_connection_id",
        "remote_client_id",
        "remote_user_id",
        "ssrc",
        "track_id",
        "updated",
    )

    def __init__(self, peer_connection_id: str, direction: str, kind: str, ssrc: int) -> None:
        self.peer_connection_id = _shared(peer_connection_id)
        self.direction = _shared(direction)
        self.kind = _shared(kind)
        self.ssrc = ssrc
        self.track_id: str | None = None
        self.remote_client_id: str | None = None
        self.remote_user_id: str | None = None
        self.measured: bytes | None = None
        self.limitation: str | None = None
        self.updated = 0

    def measure(self, q: TrackQuality) -> None:
        """Keep the numbers of ``q``, the track's latest measurement."""
        self.measured = _measured(q)
        limitation = q.quality_limitation
        self.limitation = None if limitation is None else _shared(limitation)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "peerConnectionId": self.peer_connection_id,
            "direction": self.direction,
            "kind": self.kind,
            "ssrc": self.ssrc,
            "trackId": self.track_id,
            "remoteClientId": self.remote_client_id,
            "remoteUserId": self.remote_user_id,
            "updated": self.updated,
        }
        if self.measured is not None:  # v != v: v is NaN, not measured
            rtt, lost, jitter, bitrate, mos, fps, width, height = _MEASURED.unpack(self.measured)
            out |= {
                "rttMs": None if rtt != rtt else round(rtt * 1000, 1),
                "lossPercent": None if lost != lost else round(lost * 100, 2),
                "jitterMs": None if jitter != jitter else round(jitter * 1000, 1),
                "kbps": None if bitrate != bitrate else round(bitrate / 1000, 1),
                "mos": None if mos != mos else round(mos, 2),
                "fps": None if fps != fps else round(fps, 1),
                "width": None if width != width else int(width),
                "height": None if height != height else int(height),
                "qualityLimitation": self.limitation,
            }
        return out


_MEASURED = struct.Struct("8d")


def _measured(q: TrackQuality) -> bytes:
    """The numbers a track shows from its measurement ``q``, packed as 8 doubles (NaN for None): RTT,
    fraction lost, jitter, bitrate, MOS, fps, frame width and height (one bytes object costs less than
    an array). The quality processor's values are finite, so NaN says "not measured" only."""
    values = (q.rtt, q.fraction_lost, q.jitter, q.bitrate, q.mos, q.fps, q.frame_width, q.frame_height)
    return _MEASURED.pack(*[_NAN if v is None else v for v in values])


class _ClientView:
    __slots__ = ("client_id", "joined", "left", "peer_connections", "series", "tracks", "updated", "user_id")

    def __init__(self, client_id: str, user_id: str | None, joined: int | None, points: int) -> None:
        self.client_id = client_id
        self.user_id = user_id
        self.joined = joined
        self.left: int | None = None
        self.updated = 0
        self.series = _Ring(points)
        # peer connection id → [opened, closed]
        self.peer_connections: dict[str, list[int | None]] = {}
        self.tracks: dict[tuple[str, str, int], _TrackView] = {}

    def recent_mos(self, samples: int) -> float | None:
        return self.series.last_value(samples, _MOS, lowest=True)

    def latest(self) -> dict[str, float | None]:
        points = self.series.last(1)
        return _point_dict(points[0] if points else [_NAN] * len(_SERIES))

    def brief(self, samples: int) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "userId": self.user_id,
            "joined": self.joined,
            "left": self.left,
            "updated": self.updated,
            "recentMos": _num(self.recent_mos(samples)),
            **self.latest(),
        }

    def detail(self, samples: int) -> dict[str, Any]:
        series: dict[str, list[Any]] = {"t": []}
        for name in _SERIES:
            series[name] = []
        for ts, p in self.series.points():
            series["t"].append(ts)
            for i, name in enumerate(_SERIES):
                series[name].append(_num(p[i], 0 if name in ("width", "height") else 2))
        return {
            **self.brief(samples),
            "peerConnections": [
                {"peerConnectionId": pc, "opened": times[0], "closed": times[1]} for pc, times in self.peer_connections.items()
            ],
            "tracks": [t.as_dict() for t in self.tracks.values()],
            "series": series,
        }


class _CallView:
    __slots__ = (
        "call_id",
        "clients",
        "departed",
        "ended",
        "events",
        "issue_counts",
        "issues",
        "left",
        "room_id",
        "service_id",
        "sfus",
        "started",
        "summary",
        "timeline",
        "updated",
        "users",
    )

    def __init__(self, service_id: str, call_id: str, room_id: str | None, started: int, cfg: LiveViewConfig) -> None:
        self.service_id = service_id
        self.call_id = call_id
        self.room_id = room_id
        self.started = started
        self.updated = started
        self.ended: int | None = None
        self.clients: dict[str, _ClientView] = {}
        self.departed: dict[str, _ClientView] = {}
        """Clients that left, the last to leave last (:func:`_keep_last`)."""
        self.left: dict[str, int] = {}
        """Clients that left (client id → when): nothing re-adds them but a CLIENT_JOINED."""
        self.users: dict[str, str] = {}
        """client id → user id, of everyone seen in the call (for the events)."""
        self.events = _CallEvents()
        """The last ``max_call_events`` lifecycle events."""
        self.timeline: list[_Issue] = []
        """The last ``max_call_issues`` issue raises and resolves."""
        self.issues: dict[tuple[Any, ...], _Issue] = {}
        self.issue_counts: dict[str, int] = {}
        self.sfus: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] | None = None

    def user(self, client_id: str | None) -> str | None:
        return None if client_id is None else self.users.get(client_id)

    def score(self, samples: int) -> tuple[float, float | None]:
        """(quality score, lowest recent MOS of the clients or None)."""
        # Once everyone left (an ending or ended call): how it was when they left.
        clients = self.clients.values() if self.clients else self.departed.values()
        values = [m for c in clients if (m := c.recent_mos(samples)) is not None]
        mos = min(values) if values else None
        penalty = sum(_SEVERITY_PENALTY.get(i[_SEVERITY], 0.0) for i in self.issues.values())
        return max(0.0, (4.5 if mos is None else mos) - penalty), mos

    def status(self) -> str:
        return "ended" if self.ended is not None else "active" if self.clients else "ending"

    def matches(self, q: str) -> bool:
        if q in self.call_id.lower() or (self.room_id is not None and q in self.room_id.lower()):
            return True
        return any(q in client_id.lower() or q in user_id.lower() for client_id, user_id in self._people())

    def _people(self) -> Iterator[tuple[str, str]]:
        for client_id in (*self.clients, *self.departed):
            yield client_id, self.users.get(client_id) or ""

    def brief(self, cfg: LiveViewConfig, max_clients: int = 12) -> dict[str, Any]:
        score, mos = self.score(cfg.score_samples)
        clients = sorted(self.clients.values(), key=lambda c: (_sort_mos(c.recent_mos(cfg.score_samples)), c.client_id))
        open_issues = sorted(self.issues.values(), key=lambda i: (-_SEVERITY_RANK.get(i[_SEVERITY], 0), i[_STARTED_AT] or 0))
        return {
            "serviceId": self.service_id,
            "callId": self.call_id,
            "roomId": self.room_id,
            "status": self.status(),
            "started": self.started,
            "ended": self.ended,
            "updated": self.updated,
            "score": round(score, 2),
            "mos": _num(mos),
            "clientCount": len(self.clients),
            "clients": [c.brief(cfg.score_samples) for c in clients[:max_clients]],
            "issues": [_issue_dict(i) for i in open_issues[:20]],
            "issueCount": len(self.issues),
            "issueCounts": dict(sorted(self.issue_counts.items())),
        }

    def detail(self, cfg: LiveViewConfig) -> dict[str, Any]:
        return {
            **self.brief(cfg, max_clients=0),
            "clients": [c.detail(cfg.score_samples) for c in self.clients.values()],
            "departed": [c.detail(cfg.score_samples) for c in self.departed.values()],
            "sfus": list(self.sfus.values()),
            "issues": [_issue_dict(i) for i in self.issues.values()],
            "timeline": [_issue_dict(i) for i in self.timeline],
            "events": self.events.dicts(self.service_id, self.call_id),
            "summary": self.summary,
        }


def _append_bounded(items: list[Any], item: Any, limit: int) -> None:
    """Append ``item``, the first items dropped past ``limit`` (a list costs less than a deque that
    holds few items; the limits are small)."""
    items.append(item)
    if len(items) > limit:
        del items[: len(items) - limit]


def _keep_last(table: dict[Any, Any], key: Any, value: Any, limit: int) -> int:
    """Set ``table[key]`` as its last entry, the first ones dropped past ``limit``; how many were."""
    table.pop(key, None)
    table[key] = value
    dropped = len(table) - limit
    for _ in range(dropped):
        del table[next(iter(table))]
    return max(dropped, 0)


def _sort_mos(mos: float | None) -> float:
    return 5.0 if mos is None else mos


def _attachments(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or len(text) > _MAX_ATTACHMENTS:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------------------------------


class LiveView:
    """What the page shows, built from the reports and quality measurements of committed batches (the
    tracks and their identity from the measurements only)."""

    def __init__(self, config: LiveViewConfig) -> None:
        self._cfg = config
        self._calls: OrderedDict[tuple[str, str], _CallView] = OrderedDict()
        """Live calls, least recently updated first."""
        self._ended: OrderedDict[tuple[str, str], _CallView] = OrderedDict()
        self._events: deque[_Event] = deque(maxlen=config.max_events)
        self.dropped = {"calls": 0, "clients": 0, "tracks": 0, "endedCalls": 0, "issues": 0}

    # -- update -------------------------------------------------------------------------------------
    def update(self, batch: Batch) -> None:
        # Leaves, ends and summaries are applied after the batch's measurements, so the numbers of a
        # client's last sample land on its charts whatever order the reports came in.
        later: list[Report] = []
        measured = batch.quality
        touched: list[tuple[str, str]] = []
        for report in batch.reports:
            rtype = report.type
            if rtype == "CALL_EVENT":
                payload = report.payload
                name = payload.get("name")
                if name in ("CLIENT_LEFT", "CALL_ENDED"):
                    later.append(report)
                    continue
                if later and name in ("CLIENT_JOINED", "CALL_STARTED"):
                    later = self._rejoin(later, payload)
                self._event(payload)
            elif rtype == "OBSERVER_EVENT":
                payload = report.payload
                name = payload.get("name")
                if name in (_ISSUE_RAISED, _ISSUE_RESOLVED):
                    self._issue(payload, name == _ISSUE_RAISED)
                elif name == _SUMMARY:
                    later.append(report)
            elif rtype in _SFU_PAD_TYPES:
                self._sfu_pad(report.payload, rtype)
            elif measured and rtype in _TRACK_TYPES:
                # Where the samples' own reports begin: the calls, clients and tracks they measure are
                # in view for the events that follow (a call the view had not seen, or dropped).
                touched = self._quality(measured)
                measured = []
        if measured:
            self._quality(measured)
        for key in touched:  # the measured calls are the most recently updated, whatever came after
            if key in self._calls:
                self._calls.move_to_end(key)
        for report in later:
            if report.type == "CALL_EVENT":
                self._event(report.payload)
            else:
                self._summary(report.payload)

    def _rejoin(self, later: list[Report], payload: Any) -> list[Report]:
        """A join after a leave (or a start after an end) in the same batch: apply the leave first."""
        key = (payload.get("serviceId"), payload.get("callId"), payload.get("clientId"))
        keep = []
        for report in later:
            p = report.payload
            same_call = report.type == "CALL_EVENT" and (p.get("serviceId"), p.get("callId")) == key[:2]
            if same_call and (p.get("name") == "CALL_ENDED" or p.get("clientId") == key[2]):
                self._event(p)
            else:
                keep.append(report)
        return keep

    def _live(self, service_id: str, call_id: str | None, room_id: str | None, ts: int, create: bool) -> _CallView | None:
        """The live call; created when ``create`` (never for a call that ended, but by CALL_STARTED)."""
        if call_id is None:
            return None
        key = (service_id, call_id)
        call = self._calls.get(key)
        if call is not None:
            self._calls.move_to_end(key)
            call.updated = max(call.updated, ts)
            if room_id is not None and call.room_id is None:
                call.room_id = room_id
            return call
        if not create:
            return None
        call = self._calls[key] = _CallView(service_id, call_id, room_id, ts, self._cfg)
        while len(self._calls) > self._cfg.max_calls:
            self._calls.popitem(last=False)
            self.dropped["calls"] += 1
        return call

    def _known(self, payload: Any, create: bool = True) -> _CallView | None:
        service_id, call_id = payload.get("serviceId"), payload.get("callId")
        if service_id is None or call_id is None:
            return None
        create = create and (service_id, call_id) not in self._ended
        return self._live(service_id, call_id, payload.get("roomId"), payload.get("timestamp") or 0, create)

    def _client(self, call: _CallView, client_id: str, user_id: str | None, ts: int, join: bool) -> _ClientView | None:
        """The present client; ``join`` (a CLIENT_JOINED) brings back one that left."""
        if user_id and call.users.get(client_id) != user_id:
            call.users[_shared(client_id)] = _shared(user_id)
        client = call.clients.get(client_id)
        if client is not None:
            if user_id and not client.user_id:
                client.user_id = _shared(user_id)
            return client
        if client_id in call.left and not join:
            return None
        call.left.pop(client_id, None)
        client = call.departed.pop(client_id, None)
        if client is not None:
            client.left = None
            client.joined = ts
        elif len(call.clients) >= self._cfg.max_clients_per_call:
            self.dropped["clients"] += 1
            return None
        else:
            client = _ClientView(
                _shared(client_id), _shared(user_id or call.users.get(client_id)), ts if join else None, self._cfg.max_points
            )
        call.clients[client.client_id] = client
        return client

    def _event(self, payload: Any) -> None:
        name = payload.get("name")
        service_id, call_id, client_id = payload.get("serviceId"), payload.get("callId"), payload.get("clientId")
        ts = payload.get("timestamp") or 0
        if name == "CALL_ENDED":
            call = self._calls.pop((service_id, call_id), None) if call_id is not None else None
            if call is not None:
                self._end(call, ts)
            self._record(call, payload)
            return
        if name == "CALL_STARTED" and service_id is not None and call_id is not None:
            self._ended.pop((service_id, call_id), None)  # the same call id used again: a new call
        call = self._known(payload, create=name in ("CALL_STARTED", "CLIENT_JOINED"))
        if call is not None and client_id is not None:
            user_id = payload.get("userId")
            if name == "CLIENT_LEFT":
                self._leave(call, client_id, user_id, ts)
            else:
                client = self._client(call, client_id, user_id, ts, join=name == "CLIENT_JOINED")
                pc_id = payload.get("peerConnectionId")
                if client is not None and pc_id is not None and name in ("PEER_CONNECTION_OPENED", "PEER_CONNECTION_CLOSED"):
                    times = client.peer_connections.get(pc_id)
                    if times is None and len(client.peer_connections) < self._cfg.max_tracks_per_client:
                        times = client.peer_connections[_shared(pc_id)] = [None, None]
                    if times is not None:
                        times[0 if name == "PEER_CONNECTION_OPENED" else 1] = ts
        self._record(call, payload)

    def _record(self, call: _CallView | None, payload: Any) -> None:
        name = payload.get("name")
        client_id = payload.get("clientId")
        ts, room_id, pc_id = payload.get("timestamp"), payload.get("roomId"), payload.get("peerConnectionId")
        user_id = payload.get("userId") or (call.user(client_id) if call is not None else None)
        values = (ts, name, payload.get("serviceId"), payload.get("callId"), room_id, client_id, user_id, pc_id)
        track = name in _TRACK_EVENTS
        track_id, ssrc = (payload.get("mediaTrackId"), payload.get("SSRC")) if track else (None, None)
        if call is not None:
            call.events.add(values, track_id, ssrc, self._cfg.max_call_events)
        if name in _LIFECYCLE:
            event = _event(_TRACK_EVENT_KEYS, *values, track_id, ssrc) if track else _event(_EVENT_KEYS, *values)
            self._events.appendleft(event)

    def _leave(self, call: _CallView, client_id: str, user_id: str | None, ts: int) -> None:
        client_id = _shared(client_id)
        if user_id:
            call.users[client_id] = _shared(user_id)
        _keep_last(call.left, client_id, ts, 4 * self._cfg.max_clients_per_call)
        client = call.clients.pop(client_id, None)
        if client is not None:
            client.left = ts
            _keep_last(call.departed, client_id, client, self._cfg.max_clients_per_call)
        # Its issues end with it (the issues processor resolves them before the leave).
        for key in [k for k in call.issues if k[0] == client_id]:
            del call.issues[key]

    def _end(self, call: _CallView, ts: int) -> None:
        call.ended = ts
        for client_id in list(call.clients):
            self._leave(call, client_id, None, ts)
        call.issues.clear()
        self.dropped["endedCalls"] += _keep_last(self._ended, (call.service_id, call.call_id), call, self._cfg.max_ended_calls)

    def _track(self, client: _ClientView, pc_id: str, direction: str, kind: str, ssrc: int) -> _TrackView | None:
        key = (pc_id, direction, ssrc)
        track = client.tracks.get(key)
        if track is None:
            if len(client.tracks) >= self._cfg.max_tracks_per_client:
                self.dropped["tracks"] += 1
                return None
            track = _TrackView(pc_id, direction, kind, ssrc)
            client.tracks[(track.peer_connection_id, track.direction, ssrc)] = track
            if pc_id not in client.peer_connections and len(client.peer_connections) < self._cfg.max_tracks_per_client:
                client.peer_connections[track.peer_connection_id] = [None, None]
        return track

    def _quality(self, measured: list[TrackQuality]) -> list[tuple[str, str]]:
        """The quality processor's measurements, one group per client sample: its numbers, and who the
        call, client and tracks are (room, user, track id, the sender of an inbound track). Returns
        the calls found, in order."""
        touched: list[tuple[str, str]] = []
        groups: dict[tuple[str, str | None, str, int], list[TrackQuality]] = {}
        for q in measured:
            key = (q.service_id, q.call_id, q.client_id, q.timestamp)
            group = groups.get(key)
            if group is None:
                groups[key] = [q]
            else:
                group.append(q)
        for (service_id, call_id, client_id, ts), tracks in groups.items():
            if call_id is None:
                continue
            first = tracks[0]
            call = self._live(service_id, call_id, first.room_id, ts, create=(service_id, call_id) not in self._ended)
            if call is None:
                continue
            touched.append((service_id, call_id))
            client = self._client(call, client_id, first.user_id, ts, join=False)
            if client is None:
                continue
            if ts > client.updated:
                client.updated = ts
            known = client.tracks
            new: list[TrackQuality] = []
            for q in tracks:
                track = known.get((q.peer_connection_id, q.direction, q.ssrc))
                if track is None:
                    new.append(q)
                else:
                    self._track_update(call, track, q, ts)
            if new:  # added in the order of the sample's track reports: inbound first, audio first
                new.sort(key=_track_order)
                for q in new:
                    track = self._track(client, q.peer_connection_id, q.direction, q.kind, q.ssrc)
                    if track is not None:
                        self._track_update(call, track, q, ts)
            point = _point(tracks)
            last = client.series.last_ts()
            if last is None or ts > last:
                client.series.push(ts, point)
            elif ts == last:
                client.series.merge_last(point)
        return touched

    @staticmethod
    def _track_update(call: _CallView, track: _TrackView, q: TrackQuality, ts: int) -> None:
        track.measure(q)
        track.updated = ts
        if q.track_id is not None and q.track_id != track.track_id:
            track.track_id = _shared(q.track_id)
        remote = q.remote_client_id
        if remote:
            if q.direction == "inbound" and remote != track.remote_client_id:
                track.remote_client_id = _shared(remote)
            if q.remote_user_id and remote not in call.users:
                call.users[_shared(remote)] = _shared(q.remote_user_id)
        if q.remote_user_id and q.direction == "inbound" and q.remote_user_id != track.remote_user_id:
            track.remote_user_id = _shared(q.remote_user_id)

    def _issue(self, payload: Any, raised: bool) -> None:
        call = self._known(payload)
        if call is None:
            return
        text = payload.get("attachments")
        attachments = _attachments(text)
        client_id = _shared(payload.get("clientId"))
        issue_type = _shared(str(payload.get("value") or "client_issue")[:_MAX_ID])
        severity = attachments.get("severity")
        if severity not in _SEVERITY_RANK:
            severity = "major"
        severity = _shared(severity)
        pc_id = _shared(attachments.get("peerConnectionId") or payload.get("peerConnectionId"))
        track_id = _shared(attachments.get("trackId"))
        key = (client_id, issue_type, pc_id, track_id, attachments.get("ssrc"))
        user_id = _shared(payload.get("userId") or call.user(client_id))
        ts = payload.get("timestamp") or 0
        values = attachments.get("values")
        started_at = attachments.get("startedAt")
        entry = (  # in the order of _ISSUE_KEYS
            ts,
            raised,
            issue_type,
            severity,
            client_id,
            user_id,
            pc_id,
            track_id,
            attachments.get("ssrc"),
            payload.get("message"),
            text if isinstance(values, dict) else None,
            started_at,
            attachments.get("endedAt"),
        )
        _append_bounded(call.timeline, entry, self._cfg.max_call_issues)
        self._events.appendleft(
            _event(
                _ISSUE_EVENT_KEYS,
                ts,
                payload.get("name"),
                issue_type,
                severity,
                call.service_id,
                call.call_id,
                call.room_id,
                client_id,
                user_id,
                pc_id,
            )
        )
        if raised:
            call.issue_counts[issue_type] = call.issue_counts.get(issue_type, 0) + 1
            if client_id is not None and client_id in call.left and client_id not in call.clients:
                return  # raised about a client that already left: in the timeline only
            if key not in call.issues and len(call.issues) >= self._cfg.max_call_issues:
                self.dropped["issues"] += 1
                return
            # neither is changed later
            call.issues[key] = entry if started_at else (*entry[:_STARTED_AT], ts, *entry[_STARTED_AT + 1 :])
        elif call.issues.pop(key, None) is None:
            for k in [k for k in call.issues if k[0] == client_id and k[1] == issue_type][:1]:
                del call.issues[k]

    def _summary(self, payload: Any) -> None:
        service_id, call_id = payload.get("serviceId"), payload.get("callId")
        call = self._ended.get((service_id, call_id)) or self._calls.get((service_id, call_id))
        if call is None:
            return
        attachments = _attachments(payload.get("attachments"))
        call.summary = {"timestamp": payload.get("timestamp"), "message": payload.get("message"), **attachments}

    def _sfu_pad(self, payload: Any, rtype: str) -> None:
        sfu_id = payload.get("sfuId")
        call = self._known(payload, create=False)
        if call is None or sfu_id is None:
            return
        sfu = call.sfus.get(sfu_id)
        if sfu is None:
            if len(call.sfus) >= 16:
                return
            sfu = call.sfus[sfu_id] = {"sfuId": sfu_id, "inboundPads": [], "outboundPads": [], "clients": [], "updated": 0}
        pads = sfu["inboundPads" if rtype == "SFU_INBOUND_RTP_PAD" else "outboundPads"]
        pad = payload.get("rtpPadId")
        if pad is not None and pad not in pads and len(pads) < 4 * self._cfg.max_tracks_per_client:
            pads.append(pad)
        client_id = payload.get("clientId")
        if client_id is not None and client_id not in sfu["clients"] and len(sfu["clients"]) < self._cfg.max_clients_per_call:
            sfu["clients"].append(client_id)
        sfu["updated"] = max(sfu["updated"], payload.get("timestamp") or 0)

    # -- queries ------------------------------------------------------------------------------------
    def state(self, telemetry: Telemetry, problems: dict[str, str]) -> dict[str, Any]:
        counters = {}
        for name in _COUNTERS:
            metric = telemetry.get(name)
            if metric is not None and not isinstance(metric, Histogram):
                counters[name] = metric.total()
        active = sum(1 for c in self._calls.values() if c.clients)
        return {
            "now": int(time.time() * 1000),
            "counts": {
                "activeCalls": active,
                "endingCalls": len(self._calls) - active,
                "clients": sum(len(c.clients) for c in self._calls.values()),
                "endedCalls": len(self._ended),
                "openIssues": sum(len(c.issues) for c in self._calls.values()),
                "dropped": dict(self.dropped),
            },
            "events": [_event_dict(e) for e in self._events],
            "counters": counters,
            "health": {"status": "unhealthy" if problems else "ok", "problems": problems},
        }

    def calls(self, query: dict[str, str]) -> dict[str, Any]:
        status = query.get("status", "active")
        if status not in ("active", "ending", "all"):
            raise BadParameter("status", f"must be active, ending or all, got {status[:40]!r}")
        offset, limit = _paging(query)
        services = sorted({c.service_id for c in self._calls.values()})
        issue_types = sorted({t for c in self._calls.values() for t in c.issue_counts})
        chosen = [
            c for c in self._filtered(self._calls.values(), query) if status == "all" or (status == "active") == bool(c.clients)
        ]
        samples = self._cfg.score_samples
        ranked = sorted(chosen, key=lambda c: (round(c.score(samples)[0], 6), c.service_id, c.call_id))
        return {
            "total": len(ranked),
            "offset": offset,
            "limit": limit,
            "calls": [c.brief(self._cfg) for c in ranked[offset : offset + limit]],
            "services": services,
            "issueTypes": issue_types,
        }

    def ended(self, query: dict[str, str]) -> dict[str, Any]:
        offset, limit = _paging(query)
        chosen = list(self._filtered(reversed(self._ended.values()), query))
        page = [{**c.brief(self._cfg, max_clients=0), "summary": c.summary} for c in chosen[offset : offset + limit]]
        return {"total": len(chosen), "offset": offset, "limit": limit, "calls": page}

    def call(self, service_id: str, call_id: str) -> dict[str, Any] | None:
        call = self._calls.get((service_id, call_id)) or self._ended.get((service_id, call_id))
        return None if call is None else call.detail(self._cfg)

    def _filtered(self, calls: Iterable[_CallView], query: dict[str, str]) -> Iterator[_CallView]:
        q = query.get("q", "").strip().lower()[:_MAX_ID]
        service = query.get("service") or None
        issue = query.get("issue") or None
        for c in calls:
            if service is not None and c.service_id != service:
                continue
            if issue is not None and issue not in c.issue_counts:
                continue
            if q and not c.matches(q):
                continue
            yield c


def _paging(query: dict[str, str]) -> tuple[int, int]:
    def whole(name: str, default: int, low: int, high: int) -> int:
        text = query.get(name)
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise BadParameter(name, f"must be a whole number, got {text[:40]!r}") from None
        if not low <= value <= high:
            raise BadParameter(name, f"must be between {low} and {high}, got {value}")
        return value

    return whole("offset", 0, 0, 1_000_000), whole("limit", 25, 1, _MAX_LIMIT)


class LiveViewExporter:
    def __init__(self, settings: Settings, config: LiveViewConfig) -> None:
        self._settings = settings
        self._config = config
        self._view = LiveView(config)
        self._runner: Listener | None = None
        self._measured = False
        """Whether a batch with quality measurements came (until then, one without is looked at)."""
        self.bound_port: int | None = None

    @property
    def view(self) -> LiveView:
        return self._view

    async def start(self) -> None:
        authenticator = auth.Authenticator(self._config.auth) if self._config.auth is not None else None
        app = web.Application(middlewares=[_security_headers, auth.middleware(authenticator)])
        app.router.add_get("/", self._redirect)
        app.router.add_get("/ui", self._page)
        app.router.add_get("/favicon.ico", self._no_icon)
        app.router.add_get("/ui/api/state", self._state)
        app.router.add_get("/ui/api/calls", self._calls)
        app.router.add_get("/ui/api/call", self._call)
        app.router.add_get("/ui/api/ended", self._ended)
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

    async def _no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _state(self, request: web.Request) -> web.Response:
        return _json(self._view.state(self._settings.telemetry, self._settings.host.problems()))

    async def _calls(self, request: web.Request) -> web.Response:
        try:
            return _json(self._view.calls(dict(request.query)))
        except BadParameter as exc:
            return _json({"error": str(exc), "parameter": exc.parameter}, status=400)

    async def _ended(self, request: web.Request) -> web.Response:
        try:
            return _json(self._view.ended(dict(request.query)))
        except BadParameter as exc:
            return _json({"error": str(exc), "parameter": exc.parameter}, status=400)

    async def _call(self, request: web.Request) -> web.Response:
        service_id, call_id = request.query.get("service"), request.query.get("call")
        for name, value in (("service", service_id), ("call", call_id)):
            if not value:
                return _json({"error": f"the {name} parameter is required", "parameter": name}, status=400)
        assert service_id is not None and call_id is not None
        found = self._view.call(service_id, call_id)
        if found is None:
            return _json({"error": "no such call in view (it may have ended long ago)", "parameter": "call"}, status=404)
        return _json(found)

    async def consume(self, batch: Batch) -> None:
        if batch.quality:
            self._measured = True
        elif not self._measured and any(r.type in _TRACK_TYPES for r in batch.reports):
            self._measured = True  # said once
            self._settings.logger.warning(
                "track reports come without quality measurements: the live view shows tracks and charts"
                " only with a quality processor before it in the pipeline"
            )
        if batch.reports or batch.quality:
            await after_commit(lambda: self._view.update(batch))

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


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
