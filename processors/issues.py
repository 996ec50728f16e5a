"""Processor ``issues``: what is going wrong for whom, as it starts and as it ends.

Placed after ``correlation`` and ``quality``, it reads each client sample with the quality the
``quality`` processor measured on its tracks (:attr:`Batch.quality <webrtc_observer.model.Batch>`),
the lifecycle events of ``correlation`` (``CLIENT_JOINED``, ``CLIENT_LEFT``, ``CALL_ENDED``) and the
sample itself (transports, candidates, client issues, meta), and keeps, per client, the conditions
its detectors found. A condition is *raised* once it held for ``min_samples`` consecutive samples of
the client, and *resolved* once it has been clear for as many (or at once when what it is about,
the track, the peer connection or the client, is gone). Each raise and each resolve is one
``OBSERVER_EVENT`` report (2.2.11 schema): ``name`` ``CLIENT_ISSUE`` or ``CLIENT_ISSUE_RESOLVED``,
``value`` the issue type, ``message`` a sentence, ``attachments`` a JSON object::

    {"severity": "major", "values": {"fractionLost": 0.12, "worst": 0.15, "threshold": 0.05},
     "startedAt": 1700000000000, "endedAt": 1700000020000, "peerConnectionId": "...",
     "trackId": "...", "ssrc": 1234, "direction": "inbound", "kind": "audio"}

(``endedAt`` on resolves only; ``peerConnectionId``, ``trackId``, ``ssrc`` where the issue is about
one; ``remoteClientId``, the other end of a P2P or mesh peer connection, on its loss, RTT and jitter.) The issue reports of a client that leaves come before its ``CLIENT_LEFT`` in the batch: its
open issues are resolved there.

Detectors (type: what raises it, per what):

* ``low_mos``: the E-model MOS of an inbound audio track below ``threshold`` (3.5). Per track.
* ``high_loss``: packet loss above ``threshold`` (0.05): the packet-weighted loss of the peer
  connection's inbound tracks over the interval, or the loss the far end reports for an outbound
  track, whichever is worse. Per peer connection.
* ``high_rtt``: the round-trip time of a peer connection's tracks (their own, else its candidate
  pair's) above ``threshold`` seconds (0.4). Per peer connection.
* ``high_jitter``: the jitter of a peer connection's tracks above ``threshold`` seconds (0.05).
* ``frozen_video``: an inbound video track whose packets keep arriving while no frame is decoded
  (``frames_delta`` 0, or a frame rate of 0). Per track.
* ``no_media``: an inbound track that received no packet over the interval. Per track.
* ``ice_failed``, ``ice_disconnected``, ``dtls_failed``: a transport's ``iceState`` / ``dtlsState``.
  Per peer connection.
* ``turn_relay`` (informational) and ``tcp_transport``: the local candidate of the peer connection's
  selected candidate pair is a relay candidate; its protocol (or the relay's) is TCP or TLS.
* ``quality_limited_cpu``, ``quality_limited_bandwidth``: an outbound video track whose sender says
  it is limited (``qualityLimitationReason``). Per track.
* ``client_issue``: an issue the client reported itself (3.x ``clientIssues``, 2.x
  ``customObserverEvents``), unless its name is in ``ignored_client_issues`` (client-monitor-js 3.x
  sends its CPU information as a ``CALL_META_DATA`` customObserverEvent). Per client and issue name
  (and track).
* ``rejoin``: a client joins a call it had already joined (a second ``CLIENT_JOINED``). Per client.
* ``user_media_error``: a ``USER_MEDIA_ERROR`` meta item (getUserMedia failed). Per client.
* ``client_lost``: a client that stopped sending without leaving for ``threshold`` (3) of its sample
  intervals (the largest of its last spacings between samples, in stream time), which is raised
  long before ``correlation``'s ``client_idle_timeout`` ends it; resolved when it sends again or
  leaves.

The last four are events rather than states: they are raised by the sample that shows them and
resolved by the client's next sample that does not (``min_samples`` 1).

State is kept per input partition (:mod:`webrtc_observer.state`), one entry per client (key the
msgpack of ``("client", service_id, client_id)``), one per call that clients joined (``("call",
service_id, call_id)``: who joined, for ``rejoin``, until ``CALL_ENDED``) and the partition's clock
(``("clock", "", "")``). Time is stream time (the highest ``Batch.time`` or sample receive time of the
partition); input without a partition is also swept by the wall clock every ``sweep_interval``, for
``client_lost``. A message changes the state whole or not at all: changes are journaled
(:mod:`._undo`) and undone if the message is refused anywhere; counters and gauges change when it
commits. Output is deterministic: the same input gives the same reports, in the same order.

Bounded: ``max_clients`` clients followed at once (past it, new clients are not followed), at most
``max_conditions_per_client`` conditions per client, ``max_calls`` calls whose joins are
remembered and ``max_clients_per_call`` clients per call; what does not fit is counted in
``issues_dropped{processor, reason}``. A client not heard from for ``client_idle_timeout`` is
forgotten, its open issues resolved.

Metrics: ``issues{type, severity}`` (a counter of raised issues) and ``issues_active{type}``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgspec
import orjson

from webrtc_observer import state, transaction
from webrtc_observer.component import Consumer, Factory, Refused, RetryLater, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch, ClientSample, Report, TrackQuality
from webrtc_observer.state import LOCAL, Changes, Partition

from ._report_schemas import SCHEMA_VERSION, build
from ._undo import Journal

Severity = Literal["critical", "major", "minor", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "major", "minor", "info")
RAISED, RESOLVED = "CLIENT_ISSUE", "CLIENT_ISSUE_RESOLVED"


@dataclass(frozen=True)
class Detector:
    """The settings of one detector, defaults filled in."""

    enabled: bool
    threshold: float | None
    min_samples: int
    severity: Severity


DEFAULTS: Mapping[str, Detector] = {
    "low_mos": Detector(True, 3.5, 2, "major"),
    "high_loss": Detector(True, 0.05, 2, "major"),
    "high_rtt": Detector(True, 0.4, 2, "major"),
    "high_jitter": Detector(True, 0.05, 2, "minor"),
    "frozen_video": Detector(True, None, 2, "major"),
    "no_media": Detector(True, None, 2, "major"),
    "ice_failed": Detector(True, None, 2, "critical"),
    "ice_disconnected": Detector(True, None, 2, "major"),
    "dtls_failed": Detector(True, None, 2, "critical"),
    "turn_relay": Detector(True, None, 2, "info"),
    "tcp_transport": Detector(True, None, 2, "minor"),
    "quality_limited_cpu": Detector(True, None, 2, "minor"),
    "quality_limited_bandwidth": Detector(True, None, 2, "minor"),
    "client_issue": Detector(True, None, 1, "minor"),
    "rejoin": Detector(True, None, 1, "minor"),
    "user_media_error": Detector(True, None, 1, "major"),
    "client_lost": Detector(True, 3.0, 1, "critical"),
}
"""Issue type → its default settings. ``threshold``: MOS (low_mos), a fraction 0..1 (high_loss),
seconds (high_rtt, high_jitter), sample intervals (client_lost); the others take none."""

_THRESHOLD_RANGES: Mapping[str, tuple[float, float, str]] = {
    "low_mos": (1.0, 4.5, "a MOS between 1 and 4.5"),
    "high_loss": (0.0, 1.0, "a fraction between 0 and 1 (0.05 is 5 %)"),
    "high_rtt": (0.0, 60.0, "seconds, more than 0"),
    "high_jitter": (0.0, 60.0, "seconds, more than 0"),
    "client_lost": (1.0, 1000.0, "a number of sample intervals, at least 1"),
}

_NOTHING: frozenset[str] = frozenset()
_CLIENT_SCOPE = frozenset({"client_issue", "rejoin", "user_media_error"})
_TRACK_SCOPE = frozenset({"low_mos", "frozen_video", "no_media", "quality_limited_cpu", "quality_limited_bandwidth"})
_MIN_SPACING_MS = 100
"""Spacings between a client's samples shorter than this (several messages of one tick) are no interval."""
_SPACINGS = 3
"""How many of a client's last sample spacings ``client_lost`` takes the largest of."""


@dataclass
class DetectorConfig:
    enabled: bool = True
    threshold: float | None = None
    """Default: the detector's own (see the README)."""
    min_samples: int | None = None
    """Consecutive samples the condition must hold to be raised, and be clear to be resolved."""
    severity: Severity | None = None


@dataclass
class IssuesConfig:
    NEEDS_UPSTREAM: ClassVar[tuple[str, ...]] = ("correlation", "quality")
    """Issues come from correlated samples and the quality processor's measurements."""

    detectors: dict[str, DetectorConfig] = field(default_factory=dict)
    """Issue type → settings; a type left out keeps its defaults."""
    ignored_client_issues: list[str] = field(default_factory=lambda: ["CALL_META_DATA"])
    """Names of client-reported events that are no issue: client-monitor-js 3.x sends its CPU_INFO meta
    as a ``CALL_META_DATA`` customObserverEvent."""
    client_idle_timeout: Duration = Duration(300)
    """A client without samples (or a CLIENT_LEFT) for this long is forgotten, its open issues resolved."""
    max_clients: int = 100_000
    max_conditions_per_client: int = 64
    max_calls: int = 100_000
    max_clients_per_call: int = 1000
    sweep_interval: Duration = Duration(1)
    """How often lost and idle clients are looked for (stream time in partitions, the wall clock otherwise)."""

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        for name, options in self.detectors.items():
            if name not in DEFAULTS:
                issues.append((f"detectors.{name}", f"unknown issue type (valid: {', '.join(DEFAULTS)})"))
                continue
            if options.min_samples is not None and options.min_samples < 1:
                issues.append((f"detectors.{name}.min_samples", "must be at least 1"))
            if options.threshold is not None:
                bounds = _THRESHOLD_RANGES.get(name)
                if bounds is None:
                    issues.append((f"detectors.{name}.threshold", "this detector takes no threshold"))
                elif not bounds[0] <= options.threshold <= bounds[1] or (bounds[0] == 0.0 and options.threshold <= 0):
                    issues.append((f"detectors.{name}.threshold", f"must be {bounds[2]}, got {options.threshold}"))
        for name in ("max_clients", "max_conditions_per_client", "max_calls", "max_clients_per_call"):
            if getattr(self, name) < 1:
                issues.append((name, "must be at least 1"))
        for name in ("client_idle_timeout", "sweep_interval"):
            if getattr(self, name) <= 0:
                issues.append((name, "must be longer than 0"))
        return issues

    def resolved(self) -> dict[str, Detector]:
        """Every detector's settings, the configured ones over the defaults."""
        out = dict(DEFAULTS)
        for name, options in self.detectors.items():
            default = DEFAULTS.get(name)
            if default is None:
                continue
            out[name] = Detector(
                options.enabled,
                default.threshold if options.threshold is None else options.threshold,
                default.min_samples if options.min_samples is None else options.min_samples,
                default.severity if options.severity is None else options.severity,
            )
        return out


# -- state -----------------------------------------------------------------------------------------

Key = tuple[str, str, int, str]
"""(issue type, peer connection id or "", ssrc or -1, detail or ""): one condition of one client."""
_CLIENT_LOST: Key = ("client_lost", "", -1, "")
"""The key of a client's ``client_lost`` condition (one tuple for every client)."""


class _Cond:
    """One condition of one client: its streak, whether it is raised, and what it saw."""

    __slots__ = ("active", "clears", "ended", "hits", "info", "started", "worst")

    def __init__(self) -> None:
        self.hits = 0
        """Consecutive samples in which it held."""
        self.clears = 0
        """Consecutive samples in which it was clear, while raised."""
        self.active = False
        self.started = 0
        """Timestamp of the first sample of the streak (epoch ms)."""
        self.ended = 0
        """Timestamp of the first clear sample, while raised."""
        self.worst: float | None = None
        self.info: dict[str, Any] = {}
        """What the last sample in which it held said: values, track id, direction, kind."""

    def copy(self) -> _Cond:
        c = _Cond.__new__(_Cond)
        c.hits = self.hits
        c.clears = self.clears
        c.active = self.active
        c.started = self.started
        c.ended = self.ended
        c.worst = self.worst
        c.info = self.info
        return c

    def dump(self) -> list[Any]:
        return [self.hits, self.clears, self.active, self.started, self.ended, self.worst, self.info]

    @classmethod
    def load(cls, value: list[Any]) -> _Cond:
        c = cls()
        c.hits, c.clears, c.active, c.started, c.ended, c.worst, c.info = value
        return c


class _Client:
    """One followed client: who it is, when it was last heard from, and its conditions."""

    __slots__ = ("call_id", "conds", "last_ts", "marker", "media_unit_id", "room_id", "seen", "seq", "spacings", "user_id")

    def __init__(self, call_id: str, media_unit_id: str) -> None:
        self.call_id = call_id
        self.media_unit_id = media_unit_id
        self.room_id: str | None = None
        self.user_id: str | None = None
        self.marker: str | None = None
        self.seq: int | None = None
        self.last_ts = 0
        """The timestamp of its last sample (its own clock, epoch ms)."""
        self.seen = 0
        """Stream time of its last sample (epoch ms)."""
        self.spacings: list[int] = []
        """Its last spacings between samples, in stream time (ms)."""
        self.conds: dict[Key, _Cond] = {}

    def copy(self) -> _Client:
        c = _Client.__new__(_Client)
        c.call_id = self.call_id
        c.media_unit_id = self.media_unit_id
        c.room_id = self.room_id
        c.user_id = self.user_id
        c.marker = self.marker
        c.seq = self.seq
        c.last_ts = self.last_ts
        c.seen = self.seen
        c.spacings = self.spacings[:]
        c.conds = {k: v.copy() for k, v in self.conds.items()} if self.conds else {}
        return c

    def spacing(self) -> int | None:
        return max(self.spacings) if self.spacings else None

    def dump(self) -> list[Any]:
        conds = [[*key, *cond.dump()] for key, cond in sorted(self.conds.items())]
        meta = [self.call_id, self.media_unit_id, self.room_id, self.user_id, self.marker, self.seq]
        return [_STATE_VERSION, *meta, self.last_ts, self.seen, self.spacings, conds]

    @classmethod
    def load(cls, value: list[Any]) -> _Client:
        if value[0] != _STATE_VERSION:
            raise ValueError(f"issues state version {value[0]} is not {_STATE_VERSION}")
        _, call_id, media_unit_id, room_id, user_id, marker, seq, last_ts, seen, spacings, conds = value
        c = cls(call_id, media_unit_id)
        c.room_id, c.user_id, c.marker, c.seq = room_id, user_id, marker, seq
        c.last_ts, c.seen, c.spacings = int(last_ts), int(seen), [int(s) for s in spacings]
        for entry in conds:
            c.conds[(entry[0], entry[1], int(entry[2]), entry[3])] = _Cond.load(entry[4:])
        return c


class _Part:
    """The clients and calls of one partition."""

    __slots__ = ("calls", "clients", "clock", "dirty", "journaled", "saved", "scanned")

    def __init__(self) -> None:
        self.clients: dict[tuple[str, str], _Client] = {}
        self.calls: dict[tuple[str, str], list[str]] = {}
        """(service, call id) → the clients that joined it, in order."""
        self.clock = 0
        self.scanned = 0
        """Stream time of the last look for lost and idle clients."""
        self.saved = (0, 0)
        self.dirty: set[tuple[str, str, str]] = set()
        self.journaled = False


_STATE_VERSION = 1


# -- what one sample shows ---------------------------------------------------------------------------


class _Findings:
    """The conditions one client sample shows: held (with what they saw), clear, and what is present.

    Clear conditions are only kept for the issue types ``watched`` (those the client has conditions
    of): that a condition the client does not have is clear changes nothing. What is present (the
    peer connections and tracks of the sample) is only looked at for conditions the sample neither
    held nor cleared, so it is worked out when first asked for.
    """

    __slots__ = ("_pcs", "_sample", "_tracks", "clear", "held", "watched")

    def __init__(self, sample: ClientSample, watched: AbstractSet[str]) -> None:
        self.held: dict[Key, tuple[float | None, dict[str, Any]]] = {}
        self.clear: set[Key] = set()
        self.watched = watched
        self._sample = sample
        self._pcs: set[str] | None = None
        self._tracks: set[tuple[str, int]] | None = None

    def hold(self, key: Key, value: float | None, info: dict[str, Any]) -> None:
        self.held[key] = (value, info)

    @property
    def tracks(self) -> set[tuple[str, int]]:
        """(peer connection id, SSRC) of the sample's tracks."""
        if self._tracks is None:
            s = self._sample
            self._tracks = {
                (t.peer_connection_id or "", t.ssrc) for tracks in (s.inbound_tracks, s.outbound_tracks) for t in tracks
            }
        return self._tracks

    @property
    def pcs(self) -> set[str]:
        """The peer connections the sample describes: of its tracks, transports and peer connections."""
        if self._pcs is None:
            s = self._sample
            self._pcs = {pc for pc, _ in self.tracks}
            self._pcs.update(t.get("peerConnectionId") or "" for t in s.transports)
            self._pcs.update(pc.peer_connection_id for pc in s.peer_connections)
        return self._pcs


def _lower(value: Any) -> str:
    return value.lower() if isinstance(value, str) else ""


@functools.lru_cache(maxsize=1024)
def _normalise(name: str) -> str:
    """``user-media-error``, ``userMediaError`` and ``USER_MEDIA_ERROR`` are one name."""
    out = []
    for i, ch in enumerate(name):
        if ch in "-. ":
            out.append("_")
        elif ch.isupper() and i and name[i - 1].islower():
            out.append("_" + ch)
        else:
            out.append(ch.upper())
    return "".join(out).upper()


def _selected_local_candidates(sample: ClientSample) -> dict[str, dict[str, Any]]:
    """peer connection id → the local candidate of its selected candidate pair, where the sample says."""
    if not sample.candidate_pairs or not sample.local_candidates:
        return {}
    selected = {
        (t.get("peerConnectionId") or "", t.get("selectedCandidatePairId"))
        for t in sample.transports
        if t.get("selectedCandidatePairId")
    }
    locals_by_id = {(c.get("peerConnectionId") or "", c.get("id")): c for c in sample.local_candidates if c.get("id")}
    best: dict[str, tuple[tuple[bool, bool], dict[str, Any]]] = {}
    for pair in sample.candidate_pairs:
        pc = pair.get("peerConnectionId") or ""
        local = locals_by_id.get((pc, pair.get("localCandidateId")))
        if local is None:
            continue
        rank = (
            (pc, pair.get("candidatePairId")) in selected,
            pair.get("nominated") is True and _lower(pair.get("state")) == "succeeded",
        )
        if rank == (False, False):
            continue
        if pc not in best or rank > best[pc][0]:
            best[pc] = (rank, local)
    return {pc: local for pc, (_, local) in best.items()}


_LIMITATIONS = (("cpu", "quality_limited_cpu"), ("bandwidth", "quality_limited_bandwidth"))
_ICE_STATES = (("ice_failed", "failed"), ("ice_disconnected", "disconnected"))


def _where(q: TrackQuality) -> dict[str, Any]:
    where: dict[str, Any] = {"direction": q.direction, "kind": q.kind, "ssrc": q.ssrc}
    if q.track_id:
        where["trackId"] = q.track_id
    return where


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _find(
    sample: ClientSample,
    quality: list[TrackQuality],
    rejoined: bool,
    detectors: dict[str, Detector],
    ignored: frozenset[str] = frozenset(),
    enabled: frozenset[str] | None = None,
    watched: AbstractSet[str] | None = None,
) -> _Findings:
    """What ``sample`` shows. Details (``info``) are only built for conditions that hold; clear ones
    are only kept for the issue types ``watched`` (default: every enabled type)."""
    on = frozenset(name for name, d in detectors.items() if d.enabled) if enabled is None else enabled
    f = _Findings(sample, on if watched is None else watched)
    if quality:
        _link_conditions(f, sample, quality, detectors, on)
        _track_conditions(f, quality, detectors, on)
    if sample.transports:
        _transport_conditions(f, sample, on)
    if ("turn_relay" in on or "tcp_transport" in on) and sample.candidate_pairs and sample.local_candidates:
        _candidate_conditions(f, sample, on)
    _event_conditions(f, sample, rejoined, ignored, on)
    return f


def _link_conditions(
    f: _Findings, sample: ClientSample, quality: list[TrackQuality], detectors: dict[str, Detector], on: frozenset[str]
) -> None:
    """Per peer connection: loss, RTT and jitter over its tracks, in one pass over them."""
    per_pc: dict[str, list[TrackQuality]] = {}
    for q in quality:
        group = per_pc.get(q.peer_connection_id)
        if group is None:
            per_pc[q.peer_connection_id] = [q]
        else:
            group.append(q)
    loss_limit = detectors["high_loss"].threshold or 0.0
    for pc, qs in per_pc.items():
        lost = expected = 0.0
        loss: float | None = None
        loss_from: TrackQuality | None = None  # the outbound track whose far end reports it; None: inbound
        rtt: float | None = None  # the highest RTT of its tracks, of track rtt_from
        rtt_from = qs[0]
        jitter: float | None = None  # likewise
        jitter_from = qs[0]
        for q in qs:
            fraction, q_rtt, q_jitter = q.fraction_lost, q.rtt, q.jitter
            if fraction is not None:
                if q.direction == "inbound":
                    if q.packets_delta is not None and fraction < 1.0:
                        got = float(q.packets_delta)
                        n = got / (1.0 - fraction)
                        lost += n - got
                        expected += n
                elif loss is None or fraction > loss:
                    loss, loss_from = fraction, q
            if q_rtt is not None and (rtt is None or q_rtt > rtt):
                rtt, rtt_from = q_rtt, q
            if q_jitter is not None and (jitter is None or q_jitter > jitter):
                jitter, jitter_from = q_jitter, q
        if expected > 0:
            inbound_loss = lost / expected
            if loss is None or inbound_loss >= loss:
                loss, loss_from = inbound_loss, None
        if "high_loss" in on and loss is not None:
            if loss > loss_limit:
                where = {"direction": "inbound"} if loss_from is None else _outbound(loss_from)
                f.hold(("high_loss", pc, -1, ""), loss, {"values": {"fractionLost": _round(loss), **where}, **_peer(sample, pc)})
            elif "high_loss" in f.watched:
                f.clear.add(("high_loss", pc, -1, ""))
        if "high_rtt" in on and rtt is not None:
            _link_metric(f, sample, detectors, "high_rtt", pc, rtt_from, rtt, "roundTripTime")
        if "high_jitter" in on and jitter is not None:
            _link_metric(f, sample, detectors, "high_jitter", pc, jitter_from, jitter, "jitter")


def _link_metric(
    f: _Findings,
    sample: ClientSample,
    detectors: dict[str, Detector],
    issue_type: str,
    pc: str,
    worst: TrackQuality,
    value: float,
    metric: str,
) -> None:
    """``high_rtt`` or ``high_jitter`` of a peer connection, from ``worst``, its track with the highest ``value``."""
    if value > (detectors[issue_type].threshold or 0.0):
        values = {metric: _round(value), "direction": worst.direction, "kind": worst.kind, "ssrc": worst.ssrc}
        f.hold((issue_type, pc, -1, ""), value, {"values": values, **_peer(sample, pc)})
    elif issue_type in f.watched:
        f.clear.add((issue_type, pc, -1, ""))


def _outbound(q: TrackQuality) -> dict[str, Any]:
    return {"direction": "outbound", "kind": q.kind, "ssrc": q.ssrc}


def _peer(sample: ClientSample, pc: str) -> dict[str, str]:
    """The remote client of a P2P or mesh peer connection (correlation names the sender of its inbound
    tracks), for the issues of the peer connection to name it: when its inbound tracks name exactly one."""
    remotes = {t.remote_client_id for t in sample.inbound_tracks if t.remote_client_id and (t.peer_connection_id or "") == pc}
    return {"remoteClientId": next(iter(remotes))} if len(remotes) == 1 else {}


def _track_conditions(f: _Findings, quality: list[TrackQuality], detectors: dict[str, Detector], on: frozenset[str]) -> None:
    """Per track: MOS, no media, frozen video (inbound); quality limitations (outbound video)."""
    mos_limit = detectors["low_mos"].threshold or 0.0
    watched, clear = f.watched, f.clear
    for q in quality:
        pc, ssrc = q.peer_connection_id, q.ssrc
        if q.direction == "inbound":
            if q.kind == "audio" and "low_mos" in on and q.mos is not None:
                if q.mos < mos_limit:
                    f.hold(("low_mos", pc, ssrc, ""), q.mos, {**_where(q), "values": {"mos": _round(q.mos, 3)}})
                elif "low_mos" in watched:
                    clear.add(("low_mos", pc, ssrc, ""))
            if "no_media" in on and q.packets_delta is not None:
                if q.packets_delta == 0:
                    f.hold(("no_media", pc, ssrc, ""), None, {**_where(q), "values": {"packets": 0}})
                elif "no_media" in watched:
                    clear.add(("no_media", pc, ssrc, ""))
            if q.kind == "video" and "frozen_video" in on and q.packets_delta is not None:
                if q.packets_delta > 0 and (q.frames_delta == 0 or (q.frames_delta is None and q.fps == 0)):
                    values = {"packets": q.packets_delta, "frames": q.frames_delta, "fps": _round(q.fps, 2)}
                    f.hold(("frozen_video", pc, ssrc, ""), None, {**_where(q), "values": values})
                elif (q.packets_delta == 0 or q.frames_delta is not None or q.fps is not None) and "frozen_video" in watched:
                    clear.add(("frozen_video", pc, ssrc, ""))
        elif q.kind == "video":
            for reason, name in _LIMITATIONS:
                if name in on:
                    if q.quality_limitation == reason:
                        f.hold((name, pc, ssrc, ""), None, {**_where(q), "values": {"qualityLimitationReason": reason}})
                    elif name in watched:
                        clear.add((name, pc, ssrc, ""))


def _transport_conditions(f: _Findings, sample: ClientSample, on: frozenset[str]) -> None:
    """ICE and DTLS states of the transports."""
    watched, clear = f.watched, f.clear
    for transport in sample.transports:
        pc = transport.get("peerConnectionId") or ""
        ice, dtls = _lower(transport.get("iceState")), _lower(transport.get("dtlsState"))
        if ice:
            for name, bad in _ICE_STATES:
                if name not in on:
                    continue
                if ice == bad:
                    f.hold((name, pc, -1, ""), None, {"values": {"iceState": ice}})
                elif name in watched:
                    clear.add((name, pc, -1, ""))
        if dtls and "dtls_failed" in on:
            if dtls == "failed":
                f.hold(("dtls_failed", pc, -1, ""), None, {"values": {"dtlsState": dtls}})
            elif "dtls_failed" in watched:
                clear.add(("dtls_failed", pc, -1, ""))


def _candidate_conditions(f: _Findings, sample: ClientSample, on: frozenset[str]) -> None:
    """The selected candidate pair: TURN relay, TCP."""
    for pc, local in _selected_local_candidates(sample).items():
        kind, protocol, relay_protocol = (
            _lower(local.get("candidateType")),
            _lower(local.get("protocol")),
            _lower(local.get("relayProtocol")),
        )
        values = {"candidateType": kind, "protocol": protocol}
        if relay_protocol:
            values["relayProtocol"] = relay_protocol
        if "turn_relay" in on:
            if kind == "relay":
                f.hold(("turn_relay", pc, -1, ""), None, {"values": values})
            elif "turn_relay" in f.watched:
                f.clear.add(("turn_relay", pc, -1, ""))
        if "tcp_transport" in on and protocol:
            if protocol == "tcp" or (kind == "relay" and relay_protocol in ("tcp", "tls")):
                f.hold(("tcp_transport", pc, -1, ""), None, {"values": values})
            elif "tcp_transport" in f.watched:
                f.clear.add(("tcp_transport", pc, -1, ""))


def _event_conditions(f: _Findings, sample: ClientSample, rejoined: bool, ignored: frozenset[str], on: frozenset[str]) -> None:
    """Events: what the client reported, a rejoin, getUserMedia errors."""
    if "client_issue" in on:
        for issue in sample.issues:
            if not isinstance(issue.name, str) or _normalise(issue.name) in ignored:
                continue
            detail = f"{issue.name}\x00{issue.track_id or ''}"
            values = {"name": issue.name}
            if issue.message:
                values["message"] = issue.message
            info: dict[str, Any] = {"values": values}
            if issue.track_id:
                info["trackId"] = issue.track_id
            f.hold(("client_issue", "", -1, detail), None, info)
    if "rejoin" in on and rejoined:
        f.hold(("rejoin", "", -1, ""), None, {"values": {}})
    if "user_media_error" in on and sample.meta:
        error = None  # the last one
        for m in sample.meta:
            if isinstance(m.type, str) and _normalise(m.type) == "USER_MEDIA_ERROR":
                error = m
        if error is not None:
            payload = error.payload
            text = payload if isinstance(payload, str) else orjson.dumps(payload).decode() if payload is not None else ""
            f.hold(("user_media_error", "", -1, ""), None, {"values": {"error": text[:500]}})


# -- messages ----------------------------------------------------------------------------------------

_TITLES = {
    "low_mos": "Low audio quality (MOS)",
    "high_loss": "High packet loss",
    "high_rtt": "High round-trip time",
    "high_jitter": "High jitter",
    "frozen_video": "Frozen video",
    "no_media": "No media received",
    "ice_failed": "ICE failed",
    "ice_disconnected": "ICE disconnected",
    "dtls_failed": "DTLS failed",
    "turn_relay": "Media relayed through TURN",
    "tcp_transport": "Media over TCP",
    "quality_limited_cpu": "Outbound video limited by CPU",
    "quality_limited_bandwidth": "Outbound video limited by bandwidth",
    "client_issue": "Issue reported by the client",
    "rejoin": "Client rejoined the call",
    "user_media_error": "Camera or microphone error",
    "client_lost": "Client lost: no samples and no goodbye",
}


def _message(issue_type: str, cond: _Cond, resolved: bool, threshold: float | None) -> str:
    title = _TITLES[issue_type]
    info = cond.info
    where = ""
    if info.get("kind") and issue_type in _TRACK_SCOPE:
        where = f" on an {info.get('direction', '')} {info['kind']} track"
    value = cond.worst if resolved else (info.get("values") or {}).get(_METRIC.get(issue_type, ""))
    detail = ""
    if issue_type in _METRIC and value is not None:
        shown = _format(issue_type, value)
        limit = f", threshold {_format(issue_type, threshold)}" if threshold is not None else ""
        detail = f" ({'worst ' if resolved else ''}{shown}{limit})"
    elif issue_type == "client_issue":
        detail = f": {(info.get('values') or {}).get('name', '')}"
    if resolved:
        seconds = max(0, cond.ended - cond.started) / 1000
        return f"{title}{where} ended after {seconds:g} s{detail}"
    return f"{title}{where}{detail}"


_METRIC = {"low_mos": "mos", "high_loss": "fractionLost", "high_rtt": "roundTripTime", "high_jitter": "jitter"}


def _format(issue_type: str, value: float | None) -> str:
    if value is None:
        return ""
    if issue_type == "high_loss":
        return f"{value * 100:.1f} %"
    if issue_type in ("high_rtt", "high_jitter"):
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f}"


# -- the processor -----------------------------------------------------------------------------------


class IssuesProcessor:
    def __init__(self, settings: Settings, config: IssuesConfig, next_consumer: Consumer) -> None:
        self._next = next_consumer
        self._config = config
        self._detectors = config.resolved()
        self._ignored = frozenset(_normalise(name) for name in config.ignored_client_issues)
        self._enabled = frozenset(name for name, d in self._detectors.items() if d.enabled)
        self._idle_ms = int(float(config.client_idle_timeout) * 1000)
        self._sweep_ms = max(1, int(float(config.sweep_interval) * 1000))
        self._log = settings.logger
        self._label = str(settings.id)
        self._parts: dict[Partition, _Part] = {LOCAL: _Part()}
        self._clients = 0
        """Clients followed, all partitions together."""
        self._calls = 0
        self._j = Journal()
        self._active: Counter[str] = Counter()
        """Issue type → issues raised and not resolved, all partitions (changed at commit)."""
        self._sweeper: asyncio.Task[None] | None = None
        t = settings.telemetry
        self._raised = t.counter("issues", "Issues raised, by type and severity", ("type", "severity"))
        t.gauge(
            "issues_active",
            "Issues raised and not resolved yet, by type",
            ("type",),
            callback=lambda: {(k,): float(v) for k, v in sorted(self._active.items())},
        )
        self._dropped = t.counter(
            "issues_dropped",
            "Clients, conditions or joins the issues processor could not follow, by reason",
            ("processor", "reason"),
        )
        self._fields_dropped = t.counter(
            "report_fields_dropped",
            "Report fields left out because the 2.2.11 schema cannot represent their value",
            ("processor", "type", "field"),
        )

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._detectors["client_lost"].enabled or self._idle_ms:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name=f"issues-sweep-{self._label}")

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    @property
    def followed(self) -> int:
        """Clients followed now, all partitions together."""
        return self._clients

    def active(self) -> dict[str, int]:
        """Issue type → issues raised and not resolved (as committed)."""
        return {k: v for k, v in self._active.items() if v}

    # -- consume ----------------------------------------------------------------------------------
    async def consume(self, batch: Batch) -> None:
        txn = transaction.current()
        if txn is None:  # called directly (a unit test, a tool): still all or nothing
            await transaction.run(self, batch)
            return
        try:
            out = self._apply(batch, None)
        except BaseException:
            journal, self._j = self._j, Journal()
            journal.rollback()
            raise
        journal, self._j = self._j, Journal()
        txn.on_abort(journal.rollback)
        txn.on_commit(journal.commit)
        await self._next.consume(out)

    async def _sweep_forever(self) -> None:
        """Looks for lost and idle clients of :data:`LOCAL` input by the wall clock."""
        while True:
            await asyncio.sleep(float(self._config.sweep_interval))
            try:
                await self.sweep(time.time())
            except (RetryLater, Refused):
                pass  # nothing changed: the next sweep finds the same and tries again
            except Exception:  # the sweeper must outlive a bad day downstream
                self._log.error("issues sweep failed", exc_info=True)

    async def sweep(self, now: float) -> None:
        """Raise ``client_lost`` (and forget idle clients) in :data:`LOCAL` state at ``now`` (epoch
        seconds), handing the reports on as one transaction."""
        await transaction.run(_Sweep(self, int(now * 1000)), Batch())

    def _apply(self, batch: Batch, wall_ms: int | None) -> Batch:
        """Apply the batch to its partition's state (journaled in ``self._j``); the batch to hand on."""
        j = self._j
        part = self._part(batch.partition)
        t = state.stream_time(batch)
        if wall_ms is not None and (t is None or wall_ms > t):
            t = wall_ms
        if t is not None and t > part.clock:
            j.attr(part, "clock", t)
        now = part.clock
        qualities: dict[tuple[str, str, int], list[TrackQuality]] = {}
        for q in batch.quality:
            sample_key = (q.service_id, q.client_id, q.timestamp)
            group = qualities.get(sample_key)
            if group is None:
                qualities[sample_key] = [q]
            else:
                group.append(q)
        joined, ended = self._lifecycle(part, batch.reports)
        per_client: dict[tuple[str, str], list[Report]] = {}
        for sample in batch.samples:
            if isinstance(sample, ClientSample) and sample.call_id:
                key = (sample.origin.service_id, sample.client_id)
                quality = qualities.get((key[0], key[1], sample.timestamp), [])
                out = self._sample(part, sample, quality, key in joined, now)
                if out:
                    per_client.setdefault(key, []).extend(out)
        if now - part.scanned >= self._sweep_ms or (not batch.samples and not batch.reports):
            j.attr(part, "scanned", now)
            for key, found in self._scan(part, now):
                per_client.setdefault(key, []).extend(found)
        reports: list[Report] = []
        for report in batch.reports:
            if report.type == "CALL_EVENT" and report.payload.get("name") == "CLIENT_LEFT":
                key = (str(report.payload.get("serviceId")), str(report.payload.get("clientId")))
                reports.extend(per_client.pop(key, ()))
                reports.extend(self._leave(part, key, report))
            reports.append(report)
        for _, rest in per_client.items():
            reports.extend(rest)
        for key in ended:
            self._end_call(part, key)
        if len(reports) == len(batch.reports):
            return batch
        return msgspec.structs.replace(batch, reports=reports)

    # -- lifecycle events: joins (rejoin) and ended calls -------------------------------------------
    def _lifecycle(self, part: _Part, reports: list[Report]) -> tuple[set[tuple[str, str]], list[tuple[str, str]]]:
        """The clients that rejoined their call in this batch, and the calls that ended."""
        rejoined: set[tuple[str, str]] = set()
        ended: list[tuple[str, str]] = []
        j = self._j
        for report in reports:
            if report.type != "CALL_EVENT":
                continue
            payload = report.payload
            name = payload.get("name")
            if name == "CLIENT_JOINED":
                service, call_id, client_id = payload.get("serviceId"), payload.get("callId"), payload.get("clientId")
                if not (service and call_id and client_id):
                    continue
                key = (service, call_id)
                members = part.calls.get(key)
                if members is None:
                    if self._calls >= self._config.max_calls:
                        self._count_dropped("max_calls")
                        continue
                    members = []
                    j.set(part.calls, key, members)
                    j.attr(self, "_calls", self._calls + 1)
                if client_id in members:
                    rejoined.add((service, client_id))
                elif len(members) >= self._config.max_clients_per_call:
                    self._count_dropped("max_clients_per_call")
                else:
                    j.append(members, client_id)
                self._touch(part, "call", key)
            elif name == "CALL_ENDED":
                service, call_id = payload.get("serviceId"), payload.get("callId")
                if service and call_id:
                    ended.append((service, call_id))
        return rejoined, ended

    def _end_call(self, part: _Part, key: tuple[str, str]) -> None:
        if self._j.pop(part.calls, key) is not None:
            self._j.attr(self, "_calls", self._calls - 1)
            self._touch(part, "call", key)

    # -- one client sample --------------------------------------------------------------------------
    def _sample(self, part: _Part, sample: ClientSample, quality: list[TrackQuality], rejoined: bool, now: int) -> list[Report]:
        j = self._j
        service = sample.origin.service_id
        key = (service, sample.client_id)
        assert sample.call_id is not None
        old = part.clients.get(key)
        out: list[Report] = []
        legacy = sample.origin.generation == "pcsample-v20200114"
        if (
            old is not None
            and old.call_id == sample.call_id
            and (sample.timestamp < old.last_ts or (sample.timestamp == old.last_ts and not legacy))
        ):
            return out  # resent or reordered: already seen (a 2020 client sends one sample per peer connection)
        if old is None:
            if self._clients >= self._config.max_clients:
                self._count_dropped("max_clients")
                return out
            client = _Client(sample.call_id, sample.origin.media_unit_id)
            j.attr(self, "_clients", self._clients + 1)
        else:
            client = old.copy()
            if client.call_id != sample.call_id:  # moved to another call: the old call's issues end
                out.extend(self._resolve_all(client, key, old.last_ts))
                client.call_id = sample.call_id
            gap = now - client.seen
            if gap >= _MIN_SPACING_MS:
                spacings = client.spacings  # the copy's own list
                spacings.append(gap)
                del spacings[:-_SPACINGS]
        client.media_unit_id = sample.origin.media_unit_id
        client.room_id = sample.room_id or client.room_id
        client.user_id = sample.user_id or client.user_id
        client.marker = sample.marker
        client.seq = sample.sample_seq
        client.last_ts = max(client.last_ts, sample.timestamp)
        client.seen = now
        lost = client.conds.get(_CLIENT_LOST)
        if lost is not None:  # it sends again
            lost.ended = sample.timestamp
            out.extend(self._resolved(client, key, _CLIENT_LOST, lost, sample.timestamp))
        # a clear condition matters only if the client has it
        watched = {cond_key[0] for cond_key in client.conds} if client.conds else _NOTHING
        findings = _find(sample, quality, rejoined, self._detectors, self._ignored, self._enabled, watched)
        ts = sample.timestamp
        for cond_key, (value, info) in sorted(findings.held.items()):
            cond = client.conds.get(cond_key)
            if cond is None:
                if len(client.conds) >= self._config.max_conditions_per_client:
                    self._count_dropped("max_conditions_per_client")
                    continue
                cond = client.conds[cond_key] = _Cond()
            detector = self._detectors[cond_key[0]]
            if cond.hits == 0:
                cond.started = ts
            cond.hits += 1
            cond.clears = 0
            cond.info = info
            if value is not None:
                below = cond_key[0] == "low_mos"
                if cond.worst is None or (value < cond.worst if below else value > cond.worst):
                    cond.worst = value
            if not cond.active and cond.hits >= detector.min_samples:
                cond.active = True
                out.append(self._report(RAISED, client, key, cond_key, cond, ts))
        for cond_key in sorted(client.conds):
            if cond_key in findings.held or cond_key[0] == "client_lost":
                continue
            cond = client.conds[cond_key]
            issue_type, pc, ssrc, _ = cond_key
            if cond_key in findings.clear or issue_type in _CLIENT_SCOPE:
                state_now = "clear"
            elif (
                (issue_type in _TRACK_SCOPE and (pc, ssrc) in findings.tracks)
                or (issue_type not in _TRACK_SCOPE and pc in findings.pcs)
                or (legacy and pc not in findings.pcs)  # a 2020 sample is about one peer connection
            ):
                continue  # not measured in this sample: no change
            else:
                state_now = "gone"
            if not cond.active:
                del client.conds[cond_key]
                continue
            if cond.clears == 0:
                cond.ended = ts
            cond.clears += 1
            if state_now == "gone" or cond.clears >= self._detectors[issue_type].min_samples:
                out.extend(self._resolved(client, key, cond_key, cond, ts))
        j.set(part.clients, key, client)
        if part.journaled:
            self._touch(part, "client", key)
        return out

    def _resolved(self, client: _Client, key: tuple[str, str], cond_key: Key, cond: _Cond, ts: int) -> list[Report]:
        """Resolve and forget one condition; its report if it was raised."""
        del client.conds[cond_key]
        if not cond.active:
            return []
        return [self._report(RESOLVED, client, key, cond_key, cond, ts)]

    def _resolve_all(self, client: _Client, key: tuple[str, str], ts: int) -> list[Report]:
        out: list[Report] = []
        for cond_key in sorted(client.conds):
            cond = client.conds[cond_key]
            if cond.active and cond.clears == 0:
                cond.ended = ts
            out.extend(self._resolved(client, key, cond_key, cond, ts))
        return out

    def _leave(self, part: _Part, key: tuple[str, str], left: Report) -> list[Report]:
        """The client leaves (its CLIENT_LEFT): resolve its open issues, then forget it."""
        client = part.clients.get(key)
        if client is None:
            return []
        call_id = left.payload.get("callId")
        if call_id is not None and call_id != client.call_id:
            return []  # it left another call (it moved): its issues are of the new one
        ts = left.payload.get("timestamp")
        ts = ts if isinstance(ts, int) else client.last_ts
        estimated = client.last_ts + max(0, part.clock - client.seen)  # the client's clock now
        copy = client.copy()
        out = self._resolve_all(copy, key, max(ts, estimated))
        self._forget(part, key)
        return out

    def _forget(self, part: _Part, key: tuple[str, str]) -> None:
        if self._j.pop(part.clients, key) is not None:
            self._j.attr(self, "_clients", self._clients - 1)
            self._touch(part, "client", key)

    def _scan(self, part: _Part, now: int) -> list[tuple[tuple[str, str], list[Report]]]:
        """Clients of ``part`` lost by ``now`` (stream time, ms), or idle past ``client_idle_timeout``."""
        found: list[tuple[tuple[str, str], list[Report]]] = []
        detector = self._detectors["client_lost"]
        factor = detector.threshold or 3.0
        for key, client in part.clients.items():
            silent = now - client.seen
            if silent >= self._idle_ms:
                found.append((key, []))
                continue
            spacing = client.spacing()
            if not detector.enabled or spacing is None or _CLIENT_LOST in client.conds or silent <= factor * spacing:
                continue
            found.append((key, []))
        out: list[tuple[tuple[str, str], list[Report]]] = []
        for key, _ in sorted(found):
            client = part.clients[key]
            silent = now - client.seen
            estimated = client.last_ts + silent  # the client's clock now
            if silent >= self._idle_ms:
                copy = client.copy()
                out.append((key, self._resolve_all(copy, key, estimated)))
                self._forget(part, key)
                continue
            copy = client.copy()
            cond = copy.conds[_CLIENT_LOST] = _Cond()
            cond.hits, cond.active, cond.started = 1, True, client.last_ts
            cond.info = {
                "values": {"silentSeconds": round(silent / 1000, 3), "intervalSeconds": round((client.spacing() or 0) / 1000, 3)}
            }
            out.append((key, [self._report(RAISED, copy, key, _CLIENT_LOST, cond, estimated)]))
            self._j.set(part.clients, key, copy)
            self._touch(part, "client", key)
        return out

    # -- reports ------------------------------------------------------------------------------------
    def _report(self, name: str, client: _Client, key: tuple[str, str], cond_key: Key, cond: _Cond, ts: int) -> Report:
        issue_type, pc, ssrc, _ = cond_key
        detector = self._detectors[issue_type]
        resolved = name == RESOLVED
        values = dict(cond.info.get("values") or {})
        if cond.worst is not None and issue_type in _METRIC:
            values["worst"] = _round(cond.worst, 4)
        if detector.threshold is not None:
            values["threshold"] = detector.threshold
        attachments: dict[str, Any] = {"severity": detector.severity, "values": values, "startedAt": cond.started}
        if resolved:
            attachments["endedAt"] = cond.ended
        if pc:
            attachments["peerConnectionId"] = pc
        for field_name in ("trackId", "direction", "kind", "remoteClientId"):
            if cond.info.get(field_name):
                attachments[field_name] = cond.info[field_name]
        if ssrc >= 0:
            attachments["ssrc"] = ssrc
        fields = {
            "serviceId": key[0],
            "mediaUnitId": client.media_unit_id,
            "marker": client.marker,
            "timestamp": ts,
            "callId": client.call_id,
            "roomId": client.room_id,
            "clientId": key[1],
            "userId": client.user_id,
            "peerConnectionId": pc or None,
            "sampleTimestamp": client.last_ts,
            "sampleSeq": client.seq,
            "name": name,
            "message": _message(issue_type, cond, resolved, detector.threshold),
            "value": issue_type,
            "attachments": orjson.dumps(attachments, option=orjson.OPT_SORT_KEYS).decode(),
        }
        dropped: list[str] = []
        payload = build("OBSERVER_EVENT", fields, dropped)
        if payload is None:  # cannot happen: every required field is a str or int here
            payload = build(
                "OBSERVER_EVENT", {"serviceId": str(key[0]), "timestamp": 0, "callId": str(client.call_id), "name": name}
            )
        if dropped:
            label = self._label

            def count() -> None:
                for f in dropped:
                    self._fields_dropped.add(1, label, "OBSERVER_EVENT", f)

            self._j.later(count)
        severity = detector.severity

        def counted() -> None:
            if resolved:
                self._active[issue_type] -= 1
            else:
                self._active[issue_type] += 1
                self._raised.add(1, issue_type, severity)

        self._j.later(counted)
        return Report(type="OBSERVER_EVENT", payload=payload, schema_version=SCHEMA_VERSION)

    def _count_dropped(self, reason: str) -> None:
        self._j.later(lambda: self._dropped.add(1, self._label, reason))

    # -- state that moves with its partition (webrtc_observer.state) ------------------------------
    def _part(self, partition: Partition) -> _Part:
        part = self._parts.get(partition)
        if part is None:  # input of a partition nobody assigned
            part = self._parts[partition] = _Part()
        return part

    def _touch(self, part: _Part, kind: str, key: tuple[str, str]) -> None:
        entry = (kind, key[0], key[1])
        if part.journaled and entry not in part.dirty:
            self._j.add(part.dirty, entry)

    def changes(self, partition: Partition) -> Changes:
        """Every client and call changed or forgotten in ``partition`` since the last call, and its
        clock; see :class:`~webrtc_observer.state.Stateful`."""
        part = self._parts.get(partition)
        if part is None:
            return {}
        if not part.journaled:
            part.journaled = True
            part.dirty.update(("client", *k) for k in part.clients)
            part.dirty.update(("call", *k) for k in part.calls)
        out: Changes = {}
        for kind, service, ident in sorted(part.dirty):
            key = state.encode((kind, service, ident))
            if kind == "client":
                client = part.clients.get((service, ident))
                out[key] = None if client is None else state.encode(client.dump())
            else:
                members = part.calls.get((service, ident))
                out[key] = None if members is None else state.encode(members)
        part.dirty.clear()
        if (part.clock, part.scanned) != part.saved:
            out[state.CLOCK_KEY] = state.encode([part.clock, part.scanned])
            part.saved = (part.clock, part.scanned)
        return out

    def assign(self, partition: Partition, entries: Mapping[bytes, bytes]) -> None:
        """Own ``partition`` from ``entries``: its clients, calls and clock."""
        self.revoke(partition)
        part = _Part()
        part.journaled = True
        for key, value in state.decoded(dict(sorted(entries.items()))):
            if key[0] == "clock":
                part.clock, part.scanned = int(value[0]), int(value[1])
                part.saved = (part.clock, part.scanned)
            elif key[0] == "client":
                part.clients[(key[1], key[2])] = _Client.load(value)
            elif key[0] == "call":
                part.calls[(key[1], key[2])] = [str(c) for c in value]
        self._parts[partition] = part
        self._clients += len(part.clients)
        self._calls += len(part.calls)
        self._active.update(_active_types(part.clients.values()))

    def revoke(self, partition: Partition) -> None:
        """Forget ``partition`` (another member owns it now); :data:`LOCAL` starts over empty."""
        part = self._parts.pop(partition, None)
        if partition is LOCAL:
            self._parts[LOCAL] = _Part()
        if part is None:
            return
        self._clients -= len(part.clients)
        self._calls -= len(part.calls)
        self._active.subtract(_active_types(part.clients.values()))


def _active_types(clients: Iterable[_Client]) -> Counter[str]:
    return Counter(key[0] for c in clients for key, cond in c.conds.items() if cond.active)


class _Sweep:
    """Applies a wall-clock sweep of :data:`LOCAL` state inside the open transaction."""

    def __init__(self, processor: IssuesProcessor, now_ms: int) -> None:
        self._p = processor
        self._now = now_ms

    async def consume(self, batch: Batch) -> None:
        p = self._p
        txn = transaction.current()
        assert txn is not None
        try:
            out = p._apply(batch, self._now)
        except BaseException:
            journal, p._j = p._j, Journal()
            journal.rollback()
            raise
        journal, p._j = p._j, Journal()
        txn.on_abort(journal.rollback)
        txn.on_commit(journal.commit)
        if out.reports:
            await p._next.consume(out)


def _create(settings: Settings, config: IssuesConfig, next_consumer: Consumer) -> IssuesProcessor:
    return IssuesProcessor(settings, config, next_consumer)


FACTORY = Factory(
    kind="processor",
    type="issues",
    config_type=IssuesConfig,
    create=_create,
    description="issues per client, track and peer connection (loss, RTT, MOS, frozen video, ICE, TURN, lost clients...) as OBSERVER_EVENT reports",
)
