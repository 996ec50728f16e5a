"""Processor ``correlation``: which clients, peer connections and tracks form a call, and when it all ends.

For every client sample it settles the call (``call_id_mode``), tracks the entities of the call
(call → clients → peer connections → tracks; SFUs → transports → RTP pads → SCTP channels), emits each
lifecycle event exactly once as a ``CALL_EVENT``/``SFU_EVENT`` report, and tells inbound tracks which
client sends them (by SFU stream/sink ids, else by SSRC among the clients of the call).

Endings: a client leaves when it says so (a ``CLIENT_LEFT`` event or ``controls.close``) or after
``client_idle_timeout`` without samples; peer connections and tracks when they disappear from the
client's samples or idle out; a call ends ``call_empty_timeout`` after its last client left. End events
carry the time of the last sample seen.

A message is applied whole or not at all: every change to the tables is recorded in an undo journal
(:mod:`._undo`) and undone when the message is refused, here (bad content: ``Refused`` 400; a
service over its quota: ``Refused("quota")`` 429; the tables full: ``RetryLater``) or anywhere
downstream, also after ``consume`` returned. A retried message then yields exactly the events a first,
accepted attempt would have. Counters and histograms are updated when the message commits. The idle
sweep works the same way: if its events are refused, nothing ended and the next sweep tries again.

State is bounded by ``max_calls`` and ``max_clients``, and per service by ``max_calls_per_service`` and
``max_clients_per_service``; existing calls are never evicted, since ending them early would report
calls that did not end.

State is kept per input partition (:mod:`webrtc_observer.state`): every table and index (room → call,
SSRC → call, SFU stream → publisher, sink → stream) is scoped to the partition of the batch, so a
partition's calls can be checkpointed (:meth:`CorrelationProcessor.changes`: one entry per call, SFU and
room mapping, plus the partition's clock), dropped (``revoke``) and rebuilt on another member
(``assign``; the indexes are derived again from the calls and SFUs). Time is stream time: the latest
record or receive time seen in the partition. Partitions of a log end what idled out as their records
(and ticks) arrive, so a replay ends it at the same record; input without a partition (HTTP) is also
swept by the wall clock every ``sweep_interval``. Generated call ids are name-based UUIDs of the
service, room (or first client) and first sample's timestamp, so a replay derives the same ones.

Lifecycle payloads are built by the schema-coerced path of the other reports: a value the 2.2.11
schema cannot represent is left out and counted in ``report_fields_dropped{type, field}``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import orjson

from webrtc_observer import state, transaction
from webrtc_observer.component import Consumer, Factory, Refused, RetryLater, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch, ClientSample, PadLink, Report, SfuSample, Track
from webrtc_observer.state import LOCAL, Changes, Partition

from ._report_schemas import SCHEMA_VERSION, build
from ._undo import Journal, Recency

CallIdMode = Literal["auto", "room", "client"]
_LIFECYCLE = frozenset(
    {
        "CALL_STARTED",
        "CALL_ENDED",
        "CLIENT_JOINED",
        "CLIENT_LEFT",
        "PEER_CONNECTION_OPENED",
        "PEER_CONNECTION_CLOSED",
        "MEDIA_TRACK_ADDED",
        "MEDIA_TRACK_REMOVED",
    }
)


_DURATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
_PARTICIPANT_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 20.0, 50.0, 100.0, 500.0)
_LONG = (-(2**63), 2**63 - 1)
_FULL_RETRY_AFTER = 5.0
"""Retry-After (seconds) when ``max_calls``/``max_clients`` are reached: calls end at their own pace."""


@dataclass
class CorrelationConfig:
    call_id_mode: CallIdMode = "auto"
    """auto: the client's callId, else one call per (serviceId, roomId), else SSRC overlap (legacy P2P);
    room: always one generated call per (serviceId, roomId); client: the client's callId is required."""
    client_idle_timeout: Duration = Duration(60)
    """A client that sends nothing for this long has left."""
    media_idle_timeout: Duration = Duration(60)
    """A peer connection or track missing from a live client's samples for this long is gone."""
    call_empty_timeout: Duration = Duration(60)
    """A call ends this long after its last client left, unless someone joins again."""
    sfu_idle_timeout: Duration = Duration(60)
    """An SFU, transport, pad or SCTP channel not reported for this long is gone."""
    max_calls: int = 100_000
    max_clients: int = 1_000_000
    max_calls_per_service: int | None = None
    """Calls in progress per serviceId; default a tenth of ``max_calls``."""
    max_clients_per_service: int | None = None
    """Clients in calls per serviceId; default a tenth of ``max_clients``."""
    sweep_interval: Duration = Duration(1)
    """How often idle entities are looked for."""

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        for name in ("max_calls", "max_clients"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                issues.append((name, "must be a whole number, at least 1"))
        for name, total in (("max_calls_per_service", "max_calls"), ("max_clients_per_service", "max_clients")):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                issues.append((name, "must be a whole number, at least 1"))
            elif isinstance(getattr(self, total), int) and value > getattr(self, total):
                issues.append((name, f"must not exceed {total} ({getattr(self, total)})"))
        if self.sweep_interval <= 0:
            issues.append(("sweep_interval", "must be more than 0"))
        return issues

    def calls_per_service(self) -> int:
        return self.max_calls_per_service if self.max_calls_per_service is not None else max(1, self.max_calls // 10)

    def clients_per_service(self) -> int:
        if self.max_clients_per_service is not None:
            return self.max_clients_per_service
        return max(1, self.max_clients // 10)


# -- state -----------------------------------------------------------------------------------------


class _Track:
    __slots__ = ("direction", "key", "kind", "last_seen", "last_ts", "sfu_sink_id", "sfu_stream_id", "ssrcs", "track_id")

    def __init__(self, key: Any, direction: str, track: Track, ts: int, now: float) -> None:
        self.key = key
        self.direction = direction
        self.kind = track.kind
        self.track_id = track.track_id
        self.ssrcs: tuple[int, ...] = ()
        """In the order first seen (a track has one or two: a tuple costs a fraction of a set)."""
        self.sfu_stream_id = track.sfu_stream_id
        self.sfu_sink_id = track.sfu_sink_id
        self.last_ts = ts
        self.last_seen = now


class _PeerConnection:
    __slots__ = ("label", "last_seen", "last_ts", "pc_id", "tracks")

    def __init__(self, pc_id: str, ts: int, now: float) -> None:
        self.pc_id = pc_id
        self.label: str | None = None
        self.last_ts = ts
        self.last_seen = now
        self.tracks: dict[Any, _Track] = {}


class _Client:
    __slots__ = ("call", "client_id", "last_seen", "last_ts", "marker", "media_unit_id", "pcs", "seq", "user_id")

    def __init__(self, client_id: str, call: _Call, sample: ClientSample, now: float) -> None:
        self.client_id = client_id
        self.call = call
        self.media_unit_id = sample.origin.media_unit_id
        self.user_id = sample.user_id
        self.marker = sample.marker
        self.last_ts = sample.timestamp
        self.last_seen = now
        self.pcs: dict[str, _PeerConnection] = {}
        self.seq = 0


class _Call:
    __slots__ = (
        "call_id",
        "clients",
        "departed",
        "last_ts",
        "marker",
        "media_unit_id",
        "outbound_by_ssrc",
        "peak_clients",
        "room_id",
        "service_id",
        "started_ts",
    )

    def __init__(self, service_id: str, call_id: str, room_id: str | None, sample: ClientSample) -> None:
        self.service_id = service_id
        self.call_id = call_id
        self.room_id = room_id
        self.media_unit_id = sample.origin.media_unit_id
        self.marker = sample.marker
        self.started_ts = sample.timestamp
        self.last_ts = sample.timestamp
        self.clients: dict[str, _Client] = {}
        self.peak_clients = 0
        self.outbound_by_ssrc: dict[int, _Publisher] = {}
        """SSRC → the client sending it, kept after that client left: the last reports of its peers,
        at hang-up, still name their sender."""
        self.departed: dict[str, _Publisher] = {}
        """SFU stream id → publisher, for streams of clients who left: kept in the SFU stream index
        until the call ends, for the same reason."""


class _SfuEntity:
    __slots__ = ("fields", "index_keys", "last_seen", "last_ts")

    def __init__(self, fields: dict[str, Any], ts: int, now: float) -> None:
        self.fields = fields
        self.last_ts = ts
        self.last_seen = now
        self.index_keys: list[tuple[Any, ...]] = []
        """Keys this entity put into the processor's SFU indexes, removed with it."""


class _Sfu:
    __slots__ = ("entities", "last_seen", "last_ts", "marker", "media_unit_id", "service_id", "sfu_id")

    def __init__(self, sample: SfuSample, now: float) -> None:
        self.sfu_id = sample.sfu_id
        self.service_id = sample.origin.service_id
        self.media_unit_id = sample.origin.media_unit_id
        self.marker = sample.marker
        self.last_ts = sample.timestamp
        self.last_seen = now
        # kind ("transport", "inbound", "outbound", "sctp") → entity key → entity
        self.entities: dict[str, dict[Any, _SfuEntity]] = {"transport": {}, "inbound": {}, "outbound": {}, "sctp": {}}


@dataclass(frozen=True, slots=True)
class _Publisher:
    call_id: str
    client_id: str
    user_id: str | None
    pc_id: str
    track_id: str | None


class _Part:
    """The tables of one partition (:mod:`webrtc_observer.state`): every index is scoped to it."""

    __slots__ = (
        "calls",
        "clients",
        "clock",
        "clock_saved",
        "dirty",
        "empty_calls",
        "rooms",
        "sfu_outbound",
        "sfus",
        "sink_streams",
        "sinks",
        "ssrc_calls",
        "streams",
        "tracking",
    )

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], _Call] = {}
        self.rooms: dict[tuple[str, str], str] = {}
        # Ordered by last sample (oldest first), so the idle sweep stops at the first live one.
        self.clients: Recency[tuple[str, str], _Client] = Recency()
        self.empty_calls: Recency[tuple[str, str], float] = Recency()
        self.ssrc_calls: dict[tuple[str, int], str] = {}
        self.streams: dict[tuple[str, str], _Publisher] = {}
        self.sinks: dict[tuple[str, str], _Publisher] = {}
        self.sink_streams: dict[tuple[str, str], str] = {}
        self.sfu_outbound: dict[tuple[str, str, int], tuple[str, str | None, str | None, str | None]] = {}
        self.sfus: Recency[tuple[str, str], _Sfu] = Recency()
        self.clock = 0
        """Stream time (epoch ms): the latest record or receive time seen in the partition."""
        self.clock_saved = 0
        self.dirty: set[tuple[str, str, str]] = set()
        """("call" | "sfu" | "room", service, id) of entities changed since the last checkpoint."""
        self.tracking = False
        """Whether changes are recorded: from the first checkpoint (or ``assign``) on, so a partition
        nobody checkpoints (HTTP input without a state store) keeps no list of changes."""

    @property
    def now(self) -> float:
        return self.clock / 1000


# -- the processor ---------------------------------------------------------------------------------


class CorrelationProcessor:
    def __init__(self, settings: Settings, config: CorrelationConfig, next_consumer: Consumer) -> None:
        self._config = config
        self._next = next_consumer
        self._log = settings.logger
        self._parts: dict[Partition, _Part] = {LOCAL: _Part()}
        self._p = self._parts[LOCAL]
        """The partition of the message (or sweep) being applied; set by the entry points."""
        self._service_calls: dict[str, int] = {}
        self._service_clients: dict[str, int] = {}
        self._max_calls_per_service = config.calls_per_service()
        self._max_clients_per_service = config.clients_per_service()
        self._j = Journal()
        """The journal of the message (or sweep) being applied; set by the entry points."""
        self._sweeper: asyncio.Task[None] | None = None
        label = str(settings.id)
        t = settings.telemetry
        self._refused = t.counter(
            "correlation_refused_samples", "Client samples left uncorrelated, by reason", ("processor", "reason")
        )
        self._events = t.counter("call_events", "Lifecycle events emitted", ("processor", "name"))
        self._dropped = t.counter(
            "correlation_dropped_events",
            "Lifecycle events emitted with a minimal payload: a required field could not be represented",
            ("processor",),
        )
        self._fields_dropped = t.counter(
            "report_fields_dropped",
            "Report fields left out because the 2.2.11 schema cannot represent their value",
            ("processor", "type", "field"),
        )
        self._durations = t.histogram(
            "call_duration", "Duration of ended calls, first to last sample", ("service_id",), _DURATION_BUCKETS, unit="seconds"
        )
        self._participants = t.histogram(
            "call_participants", "Most clients at once in ended calls", ("service_id",), _PARTICIPANT_BUCKETS
        )
        t.gauge(
            "calls_active",
            "Calls in progress: at least one client in them",
            (),
            callback=lambda: {(): float(self._total("calls") - self._total("empty_calls"))},
        )
        t.gauge(
            "calls_ending",
            "Calls whose clients all left, waiting out call_empty_timeout before CALL_ENDED",
            (),
            callback=lambda: {(): float(self._total("empty_calls"))},
        )
        t.gauge("clients_active", "Clients in calls", (), callback=lambda: {(): float(self._total("clients"))})
        t.gauge("peer_connections_active", "Open peer connections", (), callback=lambda: {(): float(self._count_pcs())})
        t.gauge("sfus_active", "SFUs reporting", (), callback=lambda: {(): float(self._total("sfus"))})
        self._label = label

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name=f"correlation-sweep-{self._label}")

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._total("calls") or self._total("sfus"):
            # A restart is not the end of the calls: their end is not reported, only logged.
            self._log.info(
                "stopping with calls in progress",
                calls=self._total("calls"),
                clients=self._total("clients"),
                sfus=self._total("sfus"),
            )

    def state_sizes(self) -> dict[str, int]:
        """Entries in every table of every partition, for tests and diagnostics: all zero when no call
        is in progress."""
        tables = {
            "calls": "calls",
            "rooms": "rooms",
            "clients": "clients",
            "empty_calls": "empty_calls",
            "ssrc_index": "ssrc_calls",
            "sfu_streams": "streams",
            "sfu_sinks": "sinks",
            "sink_streams": "sink_streams",
            "sfu_outbound_pads": "sfu_outbound",
            "sfus": "sfus",
        }
        sizes = {name: self._total(table) for name, table in tables.items()}
        sizes["services_with_calls"] = len(self._service_calls)
        sizes["services_with_clients"] = len(self._service_clients)
        return sizes

    def _total(self, table: str) -> int:
        return sum(len(getattr(part, table)) for part in self._parts.values())

    def _count_pcs(self) -> int:
        return sum(len(c.pcs) for part in self._parts.values() for c in part.clients.values())

    # -- consume ------------------------------------------------------------------------------------
    async def consume(self, batch: Batch) -> None:
        txn = transaction.current()
        if txn is None:  # called directly (a unit test, a tool): the message is still all or nothing
            await transaction.run(self, batch)
            return
        out = self._apply(batch)  # changes nothing if it raises
        journal, self._j = self._j, Journal()
        txn.on_abort(journal.rollback)  # refused downstream, now or after we returned
        txn.on_commit(journal.commit)
        await self._next.consume(out)

    def _apply(self, batch: Batch) -> Batch:
        """Apply the message to the tables of its partition, recording every change in ``self._j``;
        the batch to hand on.

        Time is the partition's stream time, advanced by the batch. In a partition of a log (not
        :data:`LOCAL`), what idled out by then ends first, in the same message: the log's replay
        ends it at the same record, whoever replays it."""
        for sample in batch.samples:  # content at fault is refused before anything changes
            if isinstance(sample, ClientSample):
                _check_client(sample)
            elif isinstance(sample, SfuSample):
                _check_sfu(sample)
        events: list[Report] = []
        samples: list[Any] = []
        self._p = part = self._part(batch.partition)
        try:
            self._advance(part, state.stream_time(batch))
            now = part.now
            if batch.partition is not LOCAL:
                self._sweep_into(now, events)
            for sample in batch.samples:
                if isinstance(sample, ClientSample):
                    samples.append(self._client_sample(sample, now, events))
                elif isinstance(sample, SfuSample):
                    samples.append(self._sfu_sample(sample, now, events))
                else:
                    samples.append(sample)
        except BaseException:
            journal, self._j = self._j, Journal()
            journal.rollback()
            raise
        finally:
            self._p = self._parts[LOCAL]
        self._count_events(events)
        if not events and not samples:
            return batch
        return msgspec.structs.replace(batch, samples=samples, reports=[*batch.reports, *events])

    def _touch(self, kind: str, service: str, ident: str) -> None:
        """Mark an entity of the current partition changed (for :meth:`changes`), undone with the message."""
        key = (kind, service, ident)
        if self._p.tracking and key not in self._p.dirty:
            self._j.add(self._p.dirty, key)

    def _part(self, partition: Partition) -> _Part:
        part = self._parts.get(partition)
        if part is None:  # input of a partition nobody assigned (a receiver without assignments)
            part = self._parts[partition] = _Part()
        return part

    def _advance(self, part: _Part, ms: int | None) -> None:
        if ms is not None and ms > part.clock:
            self._j.attr(part, "clock", ms)

    def _count_events(self, events: list[Report]) -> None:
        if events:
            self._j.later(self._add_events, events)

    def _add_events(self, events: list[Report]) -> None:
        for report in events:
            self._events.add(1, self._label, report.payload.get("name"))

    def _count_later(self, counter: Any, *labels: str) -> None:
        self._j.later(counter.add, 1, *labels)

    def _bump(self, table: dict[str, int], service: str, delta: int) -> None:
        n = table.get(service, 0) + delta
        if n > 0:
            self._j.set(table, service, n)
        else:
            self._j.pop(table, service)

    # -- clients ------------------------------------------------------------------------------------
    def _settle_call_id(self, sample: ClientSample, known: _Client | None) -> tuple[str | None, str | None]:
        """(call id, refusal reason)."""
        service = sample.origin.service_id
        mode = self._config.call_id_mode
        if mode == "client":
            return (sample.call_id, None) if sample.call_id else (None, "missing_call_id")
        if mode == "room":
            if not sample.room_id:
                return None, "missing_room_id"
            return self._room_call(service, sample.room_id, sample.timestamp), None
        if sample.call_id:
            if sample.room_id and self._p.rooms.get((service, sample.room_id)) != sample.call_id:
                # the room's latest call
                self._j.set(self._p.rooms, (service, sample.room_id), sample.call_id)
                self._touch("room", service, sample.room_id)
            return sample.call_id, None
        if sample.room_id:
            return self._room_call(service, sample.room_id, sample.timestamp), None
        if known is not None:
            return known.call.call_id, None
        for ssrc in _ssrcs(sample):  # a P2P peer already in a call shares our SSRCs
            call_id = self._p.ssrc_calls.get((service, ssrc))
            if call_id is not None:
                return call_id, None
        if any(True for _ in _ssrcs(sample)):  # the first client of a P2P call names it
            return _derived_id("p2p", service, sample.client_id, sample.timestamp), None
        return None, "no_call_yet"  # no id and no media yet: wait for SSRCs

    def _room_call(self, service: str, room_id: str, sample_ts: int) -> str:
        key = (service, room_id)
        call_id = self._p.rooms.get(key)
        if call_id is None:
            call_id = _derived_id("room", service, room_id, sample_ts)
            self._j.set(self._p.rooms, key, call_id)
            self._touch("room", *key)
        return call_id

    def _client_sample(self, sample: ClientSample, now: float, events: list[Report]) -> ClientSample:
        j = self._j
        part = self._p
        service = sample.origin.service_id
        client_key = (service, sample.client_id)
        client = part.clients.get(client_key)
        call_id, reason = self._settle_call_id(sample, client)
        if call_id is None:
            self._count_later(self._refused, self._label, reason or "unknown")
            return sample
        if client is not None and client.call.call_id != call_id:
            self._remove_client(client, events, now)  # the client moved to another call
            client = None
        if client is None:
            if self._service_clients.get(service, 0) >= self._max_clients_per_service:
                raise Refused(
                    "quota", f"service {service!r} has {self._max_clients_per_service} clients (max_clients_per_service)", 429
                )
            if self._total("clients") >= self._config.max_clients:
                raise RetryLater("correlation: max_clients reached", retry_after=_FULL_RETRY_AFTER)
        ts = sample.timestamp
        call_key = (service, call_id)
        call = part.calls.get(call_key)
        if call is None:
            if self._service_calls.get(service, 0) >= self._max_calls_per_service:
                raise Refused(
                    "quota", f"service {service!r} has {self._max_calls_per_service} calls (max_calls_per_service)", 429
                )
            if self._total("calls") >= self._config.max_calls:
                raise RetryLater("correlation: max_calls reached", retry_after=_FULL_RETRY_AFTER)
            call = _Call(service, call_id, sample.room_id, sample)
            j.set(part.calls, call_key, call)
            self._bump(self._service_calls, service, 1)
            events.append(self._call_event("CALL_STARTED", call, None, ts))
        part.empty_calls.pop(call_key, j)
        if part.tracking:
            self._touch("call", service, call_id)
        joined = client is None
        if client is None:
            client = _Client(sample.client_id, call, sample, now)
            part.clients.set(client_key, client, j)
            self._bump(self._service_clients, service, 1)
            j.set(call.clients, sample.client_id, client)
            j.attr(call, "peak_clients", max(call.peak_clients, len(call.clients)))
        else:
            part.clients.move_to_end(client_key, j)
        j.stamp(client, now, client.last_ts if client.last_ts > ts else ts)
        if ts > call.last_ts:
            j.attr(call, "last_ts", ts)
        if sample.user_id:
            j.attr(client, "user_id", sample.user_id)
        j.attr(client, "seq", sample.sample_seq if sample.sample_seq is not None else client.seq + 1)
        if joined:
            events.append(self._call_event("CLIENT_JOINED", call, client, ts))

        inbound = self._update_media(client, sample, now, events)
        leaving = sample.closing
        kept_events = sample.events
        if kept_events:
            names = [_normalise(e.name) for e in kept_events]
            leaving = leaving or "CLIENT_LEFT" in names
            if not _LIFECYCLE.isdisjoint(names):
                kept_events = [e for e, name in zip(kept_events, names, strict=True) if name not in _LIFECYCLE]
        out = msgspec.structs.replace(
            sample,
            call_id=call_id,
            room_id=sample.room_id or call.room_id,
            user_id=sample.user_id or client.user_id,
            sample_seq=client.seq,
            correlated=True,
            inbound_tracks=inbound,
            events=kept_events,
        )
        if leaving:
            self._remove_client(client, events, now)
        return out

    def _update_media(self, client: _Client, sample: ClientSample, now: float, events: list[Report]) -> list[Track]:
        """Open/close peer connections and tracks; return the inbound tracks with their senders."""
        j = self._j
        part = self._p
        call = client.call
        service = call.service_id
        ts = sample.timestamp
        seen_pcs: dict[str, _PeerConnection] = {}  # the peer connections the sample names (opened if new)
        pcs_with_tracks: set[str] = set()
        seen_tracks: set[_Track] = set()

        for info in sample.peer_connections:
            pc = seen_pcs.get(info.peer_connection_id) or self._see_pc(client, info.peer_connection_id, seen_pcs, ts, now, events)
            if info.label:
                j.attr(pc, "label", info.label)
        for records in (sample.transports, sample.candidate_pairs, sample.data_channels):
            for rec in records:
                pc_id = rec.get("peerConnectionId")
                if pc_id is not None and pc_id not in seen_pcs:
                    self._see_pc(client, pc_id, seen_pcs, ts, now, events)

        for direction, tracks in (("out", sample.outbound_tracks), ("in", sample.inbound_tracks)):
            outbound = direction == "out"
            for track in tracks:
                pc_id = track.peer_connection_id
                if pc_id is None:
                    continue
                pc = seen_pcs.get(pc_id) or self._see_pc(client, pc_id, seen_pcs, ts, now, events)
                pcs_with_tracks.add(pc_id)
                ssrc = track.ssrc
                key = (direction, track.track_id or ssrc)
                state = pc.tracks.get(key)
                if state is None:
                    state = _Track(key, direction, track, ts, now)
                    j.keep(pc.tracks)
                    pc.tracks[key] = state
                    events.append(self._track_event("MEDIA_TRACK_ADDED", call, client, pc_id, state, ssrc, ts))
                seen_tracks.add(state)
                if ssrc not in state.ssrcs:
                    j.attr(state, "ssrcs", (*state.ssrcs, ssrc))
                    j.set(part.ssrc_calls, (service, ssrc), call.call_id)
                    if outbound:
                        sender = _Publisher(call.call_id, client.client_id, client.user_id, pc.pc_id, state.track_id)
                        j.set(call.outbound_by_ssrc, ssrc, sender)
                if outbound:
                    if track.sfu_stream_id:
                        j.attr(state, "sfu_stream_id", track.sfu_stream_id)
                        publisher = _Publisher(call.call_id, client.client_id, client.user_id, pc.pc_id, state.track_id)
                        if part.streams.get((service, track.sfu_stream_id)) != publisher:
                            j.set(part.streams, (service, track.sfu_stream_id), publisher)
                elif track.sfu_sink_id:
                    j.attr(state, "sfu_sink_id", track.sfu_sink_id)
                    subscriber = _Publisher(call.call_id, client.client_id, client.user_id, pc.pc_id, state.track_id)
                    if part.sinks.get((service, track.sfu_sink_id)) != subscriber:
                        j.set(part.sinks, (service, track.sfu_sink_id), subscriber)

        j.stamp_all([*seen_pcs.values(), *seen_tracks], now, ts)  # new ones have these times already

        # What disappeared: peer connections absent from a sample that describes peer connections;
        # tracks absent from their peer connection's tracks in this sample; anything idle too long.
        # A legacy sample describes a single peer connection, so it says nothing about the others.
        idle_limit = now - self._config.media_idle_timeout
        describes_all = bool(seen_pcs) and sample.origin.generation != "pcsample-v20200114"
        for pc_id, pc in list(client.pcs.items()):
            if (describes_all and pc_id not in seen_pcs) or pc.last_seen < idle_limit:
                self._close_pc(client, pc, events)
                continue
            listed = pc_id in pcs_with_tracks
            gone: list[_Track] = []
            for state in pc.tracks.values():
                if (listed and state not in seen_tracks) or state.last_seen < idle_limit:
                    gone.append(state)
            for state in gone:
                self._remove_track(client, pc, state, events)

        return [self._match(call, client, t) for t in sample.inbound_tracks]

    def _see_pc(
        self, client: _Client, pc_id: str, seen: dict[str, _PeerConnection], ts: int, now: float, events: list[Report]
    ) -> _PeerConnection:
        """The first mention of ``pc_id`` in a sample: the peer connection, opened if new; added to ``seen``."""
        pc = client.pcs.get(pc_id)
        if pc is None:
            pc = _PeerConnection(pc_id, ts, now)
            self._j.keep(client.pcs)
            client.pcs[pc_id] = pc
            events.append(self._call_event("PEER_CONNECTION_OPENED", client.call, client, ts, pc_id=pc_id))
        seen[pc_id] = pc
        return pc

    def _match(self, call: _Call, client: _Client, track: Track) -> Track:
        """Name the sender of an inbound track: by SFU sink/stream ids, else by SSRC within the call."""
        service = call.service_id
        sender: _Publisher | None = None
        if track.sfu_sink_id:
            stream_id = self._p.sink_streams.get((service, track.sfu_sink_id))
            if stream_id is not None:
                sender = self._p.streams.get((service, stream_id))
        if sender is None and track.sfu_stream_id:
            sender = self._p.streams.get((service, track.sfu_stream_id))
        if sender is None:
            found = call.outbound_by_ssrc.get(track.ssrc)
            if found is not None and found.client_id != client.client_id:
                owner = call.clients.get(found.client_id)  # its user id may have come after its first sample
                sender = found if owner is None or owner.user_id == found.user_id else _with_user(found, owner.user_id)
        if sender is None or sender.client_id == client.client_id:
            return track
        return msgspec.structs.replace(
            track,
            remote_client_id=sender.client_id,
            remote_user_id=sender.user_id,
            remote_peer_connection_id=sender.pc_id,
            remote_track_id=sender.track_id,
        )

    # -- removals -----------------------------------------------------------------------------------
    def _remove_track(
        self, client: _Client, pc: _PeerConnection, state: _Track, events: list[Report], leaving: bool = False
    ) -> None:
        """End a track. When its client is ``leaving``, who sends its SSRCs and SFU stream stays known
        until the call ends (its peers' last samples still name it)."""
        j = self._j
        call = client.call
        service = call.service_id
        j.keep(pc.tracks)
        del pc.tracks[state.key]
        for ssrc in state.ssrcs:
            if self._p.ssrc_calls.get((service, ssrc)) == call.call_id and not _has_ssrc(call, ssrc):
                j.pop(self._p.ssrc_calls, (service, ssrc))
            owner = call.outbound_by_ssrc.get(ssrc)
            if (
                not leaving
                and owner is not None
                and (owner.client_id, owner.pc_id, owner.track_id)
                == (
                    client.client_id,
                    pc.pc_id,
                    state.track_id,
                )
            ):
                j.pop(call.outbound_by_ssrc, ssrc)
        if state.sfu_stream_id:
            pub = self._p.streams.get((service, state.sfu_stream_id))
            if pub is not None and pub.client_id == client.client_id:
                if leaving:
                    j.set(call.departed, state.sfu_stream_id, pub)
                else:
                    j.pop(self._p.streams, (service, state.sfu_stream_id))
        if state.sfu_sink_id:
            sub = self._p.sinks.get((service, state.sfu_sink_id))
            if sub is not None and sub.client_id == client.client_id:
                j.pop(self._p.sinks, (service, state.sfu_sink_id))
        first_ssrc = min(state.ssrcs) if state.ssrcs else None
        events.append(self._track_event("MEDIA_TRACK_REMOVED", call, client, pc.pc_id, state, first_ssrc, state.last_ts))

    def _close_pc(self, client: _Client, pc: _PeerConnection, events: list[Report], leaving: bool = False) -> None:
        for track in list(pc.tracks.values()):
            self._remove_track(client, pc, track, events, leaving)
        self._j.keep(client.pcs)
        del client.pcs[pc.pc_id]
        events.append(self._call_event("PEER_CONNECTION_CLOSED", client.call, client, pc.last_ts, pc_id=pc.pc_id))

    def _remove_client(self, client: _Client, events: list[Report], now: float) -> None:
        call = client.call
        self._touch("call", call.service_id, call.call_id)
        for pc in list(client.pcs.values()):
            self._close_pc(client, pc, events, leaving=True)
        if self._p.clients.pop((call.service_id, client.client_id), self._j) is not None:
            self._bump(self._service_clients, call.service_id, -1)
        self._j.pop(call.clients, client.client_id)
        events.append(self._call_event("CLIENT_LEFT", call, client, client.last_ts))
        self._end_call_if_empty(call, now)

    def _end_call_if_empty(self, call: _Call, now: float) -> None:
        if not call.clients:
            key = (call.service_id, call.call_id)
            self._p.empty_calls.set(key, now, self._j)
            self._p.empty_calls.move_to_end(key, self._j)

    def _end_call(self, call: _Call, events: list[Report]) -> None:
        j = self._j
        key = (call.service_id, call.call_id)
        self._touch("call", *key)
        if j.pop(self._p.calls, key) is not None:
            self._bump(self._service_calls, call.service_id, -1)
        self._p.empty_calls.pop(key, j)
        if call.room_id and self._p.rooms.get((call.service_id, call.room_id)) == call.call_id:
            j.pop(self._p.rooms, (call.service_id, call.room_id))
            self._touch("room", call.service_id, call.room_id)
        for stream_id, publisher in call.departed.items():
            if self._p.streams.get((call.service_id, stream_id)) == publisher:
                j.pop(self._p.streams, (call.service_id, stream_id))
        events.append(self._call_event("CALL_ENDED", call, None, call.last_ts))
        duration, peak, service = max(0, call.last_ts - call.started_ts) / 1000, call.peak_clients, call.service_id

        def observe() -> None:
            self._durations.observe(duration, service)
            self._participants.observe(peak, service)

        j.later(observe)

    # -- SFUs ---------------------------------------------------------------------------------------
    def _sfu_sample(self, sample: SfuSample, now: float, events: list[Report]) -> SfuSample:
        j = self._j
        service = sample.origin.service_id
        key = (service, sample.sfu_id)
        sfu = self._p.sfus.get(key)
        ts = sample.timestamp
        self._touch("sfu", *key)
        if sfu is None:
            sfu = _Sfu(sample, now)
            self._p.sfus.set(key, sfu, j)
            events.append(self._sfu_event("SFU_JOINED", sfu, ts))
        else:
            self._p.sfus.move_to_end(key, j)
        j.stamp(sfu, now, max(sfu.last_ts, ts))

        def touch(kind: str, entity_key: Any, fields: dict[str, Any], added: str) -> _SfuEntity:
            table = sfu.entities[kind]
            entity = table.get(entity_key)
            if entity is None:
                entity = _SfuEntity(fields, ts, now)
                j.keep(table)
                table[entity_key] = entity
                events.append(self._sfu_event(added, sfu, ts, **fields))
            else:
                j.stamp(entity, now, ts)
            return entity

        for transport in sample.transports:
            touch("transport", transport["transportId"], {"transportId": transport["transportId"]}, "SFU_TRANSPORT_OPENED")
        for pad in sample.outbound_rtp_pads:
            entity = touch("outbound", pad["padId"], _pad_fields(pad), "SFU_RTP_PAD_ADDED")
            if not entity.index_keys and pad.get("streamId"):
                # sink → stream lets a subscriber's inbound track find its publisher; stream+SSRC lets
                # a cascaded SFU's inbound pad find this outbound pad.
                if pad.get("sinkId"):
                    j.set(self._p.sink_streams, (service, pad["sinkId"]), pad["streamId"])
                    j.append(entity.index_keys, (service, pad["sinkId"]))
                if "ssrc" in pad:
                    key3 = (service, pad["streamId"], pad["ssrc"])
                    found = (sample.sfu_id, pad.get("transportId"), pad.get("sinkId"), pad.get("padId"))
                    j.set(self._p.sfu_outbound, key3, found)
                    j.append(entity.index_keys, key3)
        for pad in sample.inbound_rtp_pads:
            touch("inbound", pad["padId"], _pad_fields(pad), "SFU_RTP_PAD_ADDED")
        for channel in sample.sctp_channels:
            channel_key = (channel.get("transportId"), channel.get("streamId"), channel.get("channelId"))
            fields = {"transportId": channel.get("transportId"), "sctpStreamId": channel.get("streamId")}
            touch("sctp", channel_key, fields, "SFU_SCTP_STREAM_ADDED")

        self._expire_sfu_entities(sfu, now - self._config.sfu_idle_timeout, events)
        links = self._pad_links(service, sample)
        return msgspec.structs.replace(sample, pad_links=links) if links else sample

    def _pad_links(self, service: str, sample: SfuSample) -> dict[str, PadLink]:
        links: dict[str, PadLink] = {}
        for pad in sample.inbound_rtp_pads:
            publisher = self._p.streams.get((service, pad.get("streamId", "")))
            remote = None
            if pad.get("internal"):  # cascaded SFUs: the pad receives another SFU's outbound pad
                remote = self._p.sfu_outbound.get((service, pad.get("streamId", ""), pad.get("ssrc", -1)))
            if publisher is None and remote is None:
                continue
            links[pad["padId"]] = PadLink(
                call_id=publisher.call_id if publisher else None,
                room_id=self._room_of(service, publisher.call_id) if publisher else None,
                client_id=publisher.client_id if publisher else None,
                track_id=publisher.track_id if publisher else None,
                remote_sfu_id=remote[0] if remote else None,
                remote_transport_id=remote[1] if remote else None,
                remote_sink_id=remote[2] if remote else None,
                remote_rtp_pad_id=remote[3] if remote else None,
            )
        for pad in sample.outbound_rtp_pads:
            subscriber = self._p.sinks.get((service, pad.get("sinkId", "")))
            call_id = pad.get("callId") or (subscriber.call_id if subscriber else None)
            if call_id is None:
                continue
            links[pad["padId"]] = PadLink(
                call_id=call_id,
                room_id=self._room_of(service, call_id),
                client_id=pad.get("clientId") or (subscriber.client_id if subscriber else None),
                track_id=pad.get("trackId") or (subscriber.track_id if subscriber else None),
            )
        return links

    def _room_of(self, service: str, call_id: str) -> str | None:
        call = self._p.calls.get((service, call_id))
        return call.room_id if call else None

    def _expire_sfu_entities(self, sfu: _Sfu, limit: float, events: list[Report]) -> None:
        removed = {"transport": "SFU_TRANSPORT_CLOSED", "inbound": "SFU_RTP_PAD_REMOVED", "outbound": "SFU_RTP_PAD_REMOVED"}
        removed["sctp"] = "SFU_SCTP_STREAM_REMOVED"
        for kind in ("sctp", "inbound", "outbound", "transport"):
            table = sfu.entities[kind]
            for entity_key, entity in list(table.items()):
                if entity.last_seen < limit:
                    self._j.keep(table)
                    del table[entity_key]
                    self._forget_pad(sfu, kind, entity)
                    events.append(self._sfu_event(removed[kind], sfu, entity.last_ts, **entity.fields))

    def _forget_pad(self, sfu: _Sfu, kind: str, entity: _SfuEntity) -> None:
        stream = entity.fields.get("mediaStreamId")
        pad_id = entity.fields.get("rtpPadId")
        for key in entity.index_keys:
            if len(key) == 2:
                if self._p.sink_streams.get(key) == stream:
                    self._j.pop(self._p.sink_streams, key)
            else:
                found = self._p.sfu_outbound.get(key)
                if found is not None and found[0] == sfu.sfu_id and found[3] == pad_id:
                    self._j.pop(self._p.sfu_outbound, key)

    def _remove_sfu(self, sfu: _Sfu, events: list[Report]) -> None:
        self._touch("sfu", sfu.service_id, sfu.sfu_id)
        self._expire_sfu_entities(sfu, float("inf"), events)
        self._p.sfus.pop((sfu.service_id, sfu.sfu_id), self._j)
        events.append(self._sfu_event("SFU_LEFT", sfu, sfu.last_ts))

    # -- idle sweep ---------------------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        """Sweeps :data:`LOCAL` state by the wall clock; partitions of a log sweep as their records come."""
        while True:
            await asyncio.sleep(self._config.sweep_interval)
            now = time.time()
            try:
                await self._sweep_and_deliver(now)
            except RetryLater:
                pass  # nothing ended: the next sweep finds the same ends and tries again
            except Refused as exc:  # refused for good: trying again would not help, end without the events
                ended = self.sweep(now)
                self._log.warning("idle sweep events refused downstream", reason=exc.reason, events=len(ended))
            except Exception:  # the sweeper must outlive a bad day downstream
                self._log.error("idle sweep failed", exc_info=True)

    async def _sweep_and_deliver(self, now: float) -> None:
        """End what idled out in :data:`LOCAL` state by ``now`` (epoch seconds), as one transaction:
        if the pipeline refuses the events, nothing ended."""
        try:
            events = self._sweep(now)
        except BaseException:
            journal, self._j = self._j, Journal()
            journal.rollback()
            raise
        journal, self._j = self._j, Journal()
        if not events:
            journal.commit()
            return
        await transaction.run(_Journaled(journal, self._next), Batch(reports=events))

    def sweep(self, now: float) -> list[Report]:
        """End what idled out in :data:`LOCAL` state by ``now`` (epoch seconds), for good; the events."""
        events = self._sweep(now)
        journal, self._j = self._j, Journal()
        journal.commit()
        return events

    def _sweep(self, now: float) -> list[Report]:
        part = self._p = self._parts[LOCAL]
        self._advance(part, int(now * 1000))
        events: list[Report] = []
        self._sweep_into(part.now, events)
        self._count_events(events)
        return events

    def _sweep_into(self, now: float, events: list[Report]) -> None:
        """End what idled out in the current partition by ``now`` (its stream time, seconds)."""
        client_limit = now - self._config.client_idle_timeout
        while (oldest := self._p.clients.first()) is not None:
            client = oldest[1]
            if client.last_seen >= client_limit:
                break
            self._remove_client(client, events, now)
        call_limit = now - self._config.call_empty_timeout
        while (entry := self._p.empty_calls.first()) is not None:
            key, since = entry
            if since >= call_limit:
                break
            call = self._p.calls.get(key)
            if call is None or call.clients:
                self._p.empty_calls.pop(key, self._j)
                continue
            self._end_call(call, events)
        sfu_limit = now - self._config.sfu_idle_timeout
        while (first := self._p.sfus.first()) is not None:
            sfu = first[1]
            if sfu.last_seen >= sfu_limit:
                break
            self._remove_sfu(sfu, events)

    # -- state that moves with its partition (webrtc_observer.state) --------------------------------
    def changes(self, partition: Partition) -> Changes:
        """Every call, SFU and room mapping changed since the last call, and the clock; see
        :class:`~webrtc_observer.state.Stateful`."""
        part = self._parts.get(partition)
        if part is None:
            return {}
        if not part.tracking:  # the first checkpoint of this partition: everything it holds
            part.tracking = True
            part.dirty.update(("call", *key) for key in part.calls)
            part.dirty.update(("sfu", *key) for key in part.sfus)
            part.dirty.update(("room", *key) for key in part.rooms)
        out: Changes = {}
        for kind, service, ident in sorted(part.dirty):
            key = state.encode((kind, service, ident))
            if kind == "call":
                call = part.calls.get((service, ident))
                since = part.empty_calls.get((service, ident))
                out[key] = None if call is None else state.encode(_dump_call(call, since))
            elif kind == "sfu":
                sfu = part.sfus.get((service, ident))
                out[key] = None if sfu is None else state.encode(_dump_sfu(sfu))
            else:
                call_id = part.rooms.get((service, ident))
                out[key] = None if call_id is None else state.encode(call_id)
        part.dirty.clear()
        if part.clock != part.clock_saved:
            out[state.CLOCK_KEY] = state.encode(part.clock)
            part.clock_saved = part.clock
        return out

    def assign(self, partition: Partition, entries: Mapping[bytes, bytes]) -> None:
        """Own ``partition`` from ``entries``: its calls, SFUs, rooms and clock; the indexes (SSRC →
        call, SFU stream → publisher, sink → stream...) are rebuilt from them."""
        self.revoke(partition)
        part = _Part()
        calls: list[tuple[_Call, float | None]] = []
        sfus: list[_Sfu] = []
        for key, value in state.decoded(entries):
            if key[0] == "clock":
                part.clock = part.clock_saved = int(value)
            elif key[0] == "call":
                calls.append(_load_call(value))
            elif key[0] == "sfu":
                sfus.append(_load_sfu(value))
            elif key[0] == "room":
                part.rooms[(key[1], key[2])] = value
        _rebuild(part, calls, sfus)
        part.tracking = True
        self._parts[partition] = part
        for call in part.calls.values():
            _adjust(self._service_calls, call.service_id, 1)
            _adjust(self._service_clients, call.service_id, len(call.clients))

    def revoke(self, partition: Partition) -> None:
        """Forget ``partition`` (another member owns it now); :data:`LOCAL` starts over empty."""
        part = self._parts.pop(partition, None)
        if partition is LOCAL:
            self._parts[LOCAL] = _Part()
            self._p = self._parts[LOCAL]
        if part is None:
            return
        for call in part.calls.values():
            _adjust(self._service_calls, call.service_id, -1)
            _adjust(self._service_clients, call.service_id, -len(call.clients))

    # -- reports ------------------------------------------------------------------------------------
    def _report(self, report_type: str, fields: dict[str, Any]) -> Report:
        dropped: list[str] = []
        payload = build(report_type, fields, dropped)
        if dropped:
            label = self._label

            def count() -> None:
                for field in dropped:
                    self._fields_dropped.add(1, label, report_type, field)

            self._j.later(count)
        if payload is None:  # cannot happen with checked samples; kept on schema all the same
            self._count_later(self._dropped, self._label)
            payload = build(report_type, {"serviceId": str(fields.get("serviceId")), "timestamp": 0, "name": fields["name"]})
        return Report(type=report_type, payload=payload, schema_version=SCHEMA_VERSION)

    def _call_event(
        self, name: str, call: _Call, client: _Client | None, ts: int, pc_id: str | None = None, **extra: Any
    ) -> Report:
        fields: dict[str, Any] = {
            "serviceId": call.service_id,
            "mediaUnitId": client.media_unit_id if client else call.media_unit_id,
            "timestamp": ts,
            "callId": call.call_id,
            "name": name,
            "roomId": call.room_id,
            "marker": client.marker if client else call.marker,
        }
        if client is not None:
            fields["clientId"] = client.client_id
            fields["userId"] = client.user_id
            fields["sampleSeq"] = client.seq
            fields["sampleTimestamp"] = client.last_ts
        if pc_id:
            fields["peerConnectionId"] = pc_id
        fields.update(extra)
        return self._report("CALL_EVENT", fields)

    def _track_event(
        self, name: str, call: _Call, client: _Client, pc_id: str, state: _Track, ssrc: int | None, ts: int
    ) -> Report:
        attachments = {"direction": "inbound" if state.direction == "in" else "outbound", "kind": state.kind}
        if state.sfu_stream_id:
            attachments["sfuStreamId"] = state.sfu_stream_id
        if state.sfu_sink_id:
            attachments["sfuSinkId"] = state.sfu_sink_id
        return self._call_event(
            name,
            call,
            client,
            ts,
            pc_id=pc_id,
            mediaTrackId=state.track_id,
            SSRC=ssrc,
            attachments=orjson.dumps(attachments).decode(),
        )

    def _sfu_event(self, name: str, sfu: _Sfu, ts: int, **fields: Any) -> Report:
        return self._report(
            "SFU_EVENT",
            {
                **fields,
                "serviceId": sfu.service_id,
                "mediaUnitId": sfu.media_unit_id,
                "timestamp": ts,
                "sfuId": sfu.sfu_id,
                "name": name,
                "marker": sfu.marker,
            },
        )


class _Journaled:
    """Hands a batch on inside the open transaction, keeping or undoing ``journal`` with it."""

    def __init__(self, journal: Journal, next_consumer: Consumer) -> None:
        self._journal = journal
        self._next = next_consumer

    async def consume(self, batch: Batch) -> None:
        txn = transaction.current()
        assert txn is not None
        txn.on_abort(self._journal.rollback)
        txn.on_commit(self._journal.commit)
        await self._next.consume(batch)


# -- state: ids, stream time, and the changelog form of calls and SFUs ------------------------------

_ID_NAMESPACE = uuid.UUID("0b5bd4a3-8b1e-5d7c-a6c4-3f0f2b9e4d21")
_STATE_VERSION = 1


def _derived_id(*parts: Any) -> str:
    """A generated call id, derived from its inputs (a name-based UUID), so a replay derives it again."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x00".join(str(p) for p in parts)))


def _publisher_fields(p: _Publisher) -> list[Any]:
    return [p.client_id, p.user_id, p.pc_id, p.track_id]


def _with_user(p: _Publisher, user_id: str | None) -> _Publisher:
    return _Publisher(p.call_id, p.client_id, user_id, p.pc_id, p.track_id)


def _has_ssrc(call: _Call, ssrc: int) -> bool:
    """Whether a track of the call still uses ``ssrc`` (a P2P peer's inbound track shares it)."""
    return any(ssrc in t.ssrcs for c in call.clients.values() for pc in c.pcs.values() for t in pc.tracks.values())


def _adjust(table: dict[str, int], service: str, delta: int) -> None:
    n = table.get(service, 0) + delta
    if n > 0:
        table[service] = n
    else:
        table.pop(service, None)


def _dump_call(call: _Call, empty_since: float | None) -> list[Any]:
    return [
        _STATE_VERSION,
        call.service_id,
        call.call_id,
        call.room_id,
        call.media_unit_id,
        call.marker,
        call.started_ts,
        call.last_ts,
        call.peak_clients,
        empty_since,
        [[ssrc, *_publisher_fields(p)] for ssrc, p in call.outbound_by_ssrc.items()],
        [[stream_id, *_publisher_fields(p)] for stream_id, p in call.departed.items()],
        [
            [
                c.client_id,
                c.media_unit_id,
                c.user_id,
                c.marker,
                c.last_ts,
                c.last_seen,
                c.seq,
                [
                    [
                        pc.pc_id,
                        pc.label,
                        pc.last_ts,
                        pc.last_seen,
                        [
                            [
                                list(t.key),
                                t.direction,
                                t.kind,
                                t.track_id,
                                sorted(t.ssrcs),
                                t.sfu_stream_id,
                                t.sfu_sink_id,
                                t.last_ts,
                                t.last_seen,
                            ]
                            for t in pc.tracks.values()
                        ],
                    ]
                    for pc in c.pcs.values()
                ],
            ]
            for c in call.clients.values()
        ],
    ]


def _load_call(value: list[Any]) -> tuple[_Call, float | None]:
    if value[0] != _STATE_VERSION:
        raise ValueError(f"correlation state version {value[0]} is not {_STATE_VERSION}")
    call = _Call.__new__(_Call)
    (_, call.service_id, call.call_id, call.room_id, call.media_unit_id, call.marker) = value[:6]
    call.started_ts, call.last_ts, call.peak_clients, empty_since = value[6:10]
    call.clients = {}
    call.outbound_by_ssrc = {ssrc: _Publisher(call.call_id, *fields) for ssrc, *fields in value[10]}
    call.departed = {stream_id: _Publisher(call.call_id, *fields) for stream_id, *fields in value[11]}
    for client_id, mu, user_id, marker, last_ts, last_seen, seq, pcs in value[12]:
        client = _Client.__new__(_Client)
        client.client_id, client.call, client.media_unit_id, client.user_id = client_id, call, mu, user_id
        client.marker, client.last_ts, client.last_seen, client.seq = marker, last_ts, last_seen, seq
        client.pcs = {}
        for pc_id, label, pc_ts, pc_seen, tracks in pcs:
            pc = _PeerConnection(pc_id, pc_ts, pc_seen)
            pc.label = label
            for key, direction, kind, track_id, ssrcs, stream, sink, t_ts, t_seen in tracks:
                track = _Track.__new__(_Track)
                track.key, track.direction, track.kind, track.track_id = tuple(key), direction, kind, track_id
                track.ssrcs, track.sfu_stream_id, track.sfu_sink_id = tuple(ssrcs), stream, sink
                track.last_ts, track.last_seen = t_ts, t_seen
                pc.tracks[track.key] = track
            client.pcs[pc_id] = pc
        call.clients[client_id] = client
    return call, empty_since


def _dump_sfu(sfu: _Sfu) -> list[Any]:
    return [
        _STATE_VERSION,
        sfu.service_id,
        sfu.sfu_id,
        sfu.media_unit_id,
        sfu.marker,
        sfu.last_ts,
        sfu.last_seen,
        {
            kind: [
                [list(key) if isinstance(key, tuple) else key, e.fields, e.last_ts, e.last_seen, [list(k) for k in e.index_keys]]
                for key, e in table.items()
            ]
            for kind, table in sfu.entities.items()
        },
    ]


def _load_sfu(value: list[Any]) -> _Sfu:
    if value[0] != _STATE_VERSION:
        raise ValueError(f"correlation state version {value[0]} is not {_STATE_VERSION}")
    sfu = _Sfu.__new__(_Sfu)
    (_, sfu.service_id, sfu.sfu_id, sfu.media_unit_id, sfu.marker, sfu.last_ts, sfu.last_seen) = value[:7]
    sfu.entities = {"transport": {}, "inbound": {}, "outbound": {}, "sctp": {}}
    for kind, rows in value[7].items():
        for key, fields, last_ts, last_seen, index_keys in rows:
            entity = _SfuEntity(fields, last_ts, last_seen)
            entity.index_keys = [tuple(k) for k in index_keys]
            sfu.entities[kind][tuple(key) if isinstance(key, list) else key] = entity
    return sfu


def _rebuild(part: _Part, calls: list[tuple[_Call, float | None]], sfus: list[_Sfu]) -> None:
    """Fill ``part`` with restored calls and SFUs and rebuild the indexes derived from them, in an
    order derived from the state alone (not from the order the store returned them in)."""
    j = Journal()  # restoring is not undone: the journal is dropped
    calls.sort(key=lambda cs: (cs[0].started_ts, cs[0].service_id, cs[0].call_id))
    clients: list[_Client] = []
    empty: list[tuple[float, tuple[str, str]]] = []
    for call, since in calls:
        service = call.service_id
        part.calls[(service, call.call_id)] = call
        if since is not None:
            empty.append((since, (service, call.call_id)))
        for stream_id, publisher in call.departed.items():
            part.streams[(service, stream_id)] = publisher
        for client in call.clients.values():
            clients.append(client)
            for pc in client.pcs.values():
                for track in pc.tracks.values():
                    for ssrc in sorted(track.ssrcs):
                        part.ssrc_calls[(service, ssrc)] = call.call_id
                    who = _Publisher(call.call_id, client.client_id, client.user_id, pc.pc_id, track.track_id)
                    if track.direction == "out" and track.sfu_stream_id:
                        part.streams[(service, track.sfu_stream_id)] = who
                    elif track.direction == "in" and track.sfu_sink_id:
                        part.sinks[(service, track.sfu_sink_id)] = who
    clients.sort(key=lambda c: (c.last_seen, c.call.service_id, c.client_id))
    for client in clients:
        part.clients.set((client.call.service_id, client.client_id), client, j)
    for since, key in sorted(empty):
        part.empty_calls.set(key, since, j)
    sfus.sort(key=lambda s: (s.last_seen, s.service_id, s.sfu_id))
    for sfu in sfus:
        part.sfus.set((sfu.service_id, sfu.sfu_id), sfu, j)
        for entity in sfu.entities["outbound"].values():
            for index_key in entity.index_keys:
                if len(index_key) == 2:
                    part.sink_streams[index_key] = entity.fields["mediaStreamId"]
                else:
                    found = (sfu.sfu_id, entity.fields.get("transportId"), entity.fields.get("mediaSinkId"))
                    part.sfu_outbound[index_key] = (*found, entity.fields.get("rtpPadId"))
    j.commit()


# -- checks: content that correlation cannot use is refused before anything changes --------------


def _bad(where: str, what: str) -> Refused:
    return Refused("invalid_sample", f"{where}: {what}")


def _id(value: Any, where: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if type(value) is not str:
        raise _bad(where, f"expected a string, got {type(value).__name__}")


_ANY: tuple[float, float] = (-math.inf, math.inf)


def _whole(value: Any, where: str, optional: bool = False, bounds: tuple[float, float] = _LONG) -> None:
    if value is None and optional:
        return
    if type(value) is not int:
        raise _bad(where, f"expected an integer, got {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:
        raise _bad(where, f"{value} is out of range")


def _scalar(value: Any, where: str) -> None:
    if value is not None and type(value) not in (str, int, float):
        raise _bad(where, f"expected a string or number, got {type(value).__name__}")


def _check_client(s: ClientSample) -> None:
    """Refuse (400) a sample correlation cannot use. The common, valid case costs one pass of type checks."""
    if not _valid_client(s):
        _explain_client(s)


def _valid_client(s: ClientSample) -> bool:
    """Whether every field correlation uses has its type (loops, no generators: the common case is
    many tracks and records; ``x is None or type(x) is str``: cheaper than ``type(x) in (str, NoneType)``)."""
    if not (
        type(s.client_id) is str
        and s.client_id
        and (s.call_id is None or type(s.call_id) is str)
        and (s.room_id is None or type(s.room_id) is str)
        and (s.user_id is None or type(s.user_id) is str)
        and (s.marker is None or type(s.marker) is str)
        and type(s.timestamp) is int
        and _LONG[0] <= s.timestamp <= _LONG[1]
        and (s.sample_seq is None or type(s.sample_seq) is int)
        and type(s.closing) is bool
    ):
        return False
    for ev in s.events:
        if type(ev.name) is not str:
            return False
    for tracks in (s.outbound_tracks, s.inbound_tracks):
        for t in tracks:
            if not (
                type(t.ssrc) is int
                and type(t.kind) is str
                and (t.peer_connection_id is None or type(t.peer_connection_id) is str)
                and (t.track_id is None or type(t.track_id) is str)
                and (t.sfu_stream_id is None or type(t.sfu_stream_id) is str)
                and (t.sfu_sink_id is None or type(t.sfu_sink_id) is str)
            ):
                return False
    for pc in s.peer_connections:
        if type(pc.peer_connection_id) is not str or not (pc.label is None or type(pc.label) is str):
            return False
    for records in (s.transports, s.candidate_pairs, s.data_channels):
        for rec in records:
            if type(rec) is not dict:
                return False
            pc_id = rec.get("peerConnectionId")
            if not (pc_id is None or type(pc_id) is str):
                return False
    return True


def _explain_client(s: ClientSample) -> None:
    """The field-by-field check, for the message of the refusal."""
    _id(s.client_id, "clientId", optional=False)
    if not s.client_id:
        raise _bad("clientId", "must not be empty")
    for name, value in (("callId", s.call_id), ("roomId", s.room_id), ("userId", s.user_id), ("marker", s.marker)):
        _id(value, name)
    _whole(s.timestamp, "timestamp")
    _whole(s.sample_seq, "sampleSeq", optional=True, bounds=_ANY)
    if type(s.closing) is not bool:
        raise _bad("controls.close", "expected a boolean")
    for i, ev in enumerate(s.events):
        _id(ev.name, f"events[{i}].name", optional=False)
    for i, pc in enumerate(s.peer_connections):
        _id(pc.peer_connection_id, f"peerConnections[{i}].peerConnectionId", optional=False)
        _id(pc.label, f"peerConnections[{i}].label")
    for attr, wire in (
        ("transports", "pcTransports"),
        ("candidate_pairs", "iceCandidatePairs"),
        ("data_channels", "dataChannels"),
    ):
        for i, rec in enumerate(getattr(s, attr)):
            if type(rec) is not dict:
                raise _bad(f"{wire}[{i}]", "expected an object")
            _id(rec.get("peerConnectionId"), f"{wire}[{i}].peerConnectionId")
    for wire, tracks in (("outboundTracks", s.outbound_tracks), ("inboundTracks", s.inbound_tracks)):
        for i, t in enumerate(tracks):
            where = f"{wire}[{i}]"
            _whole(t.ssrc, f"{where}.ssrc", bounds=_ANY)  # beyond 64 bits: left out of the reports, counted
            _id(t.kind, f"{where}.kind", optional=False)
            for name, value in (
                ("peerConnectionId", t.peer_connection_id),
                ("trackId", t.track_id),
                ("sfuStreamId", t.sfu_stream_id),
                ("sfuSinkId", t.sfu_sink_id),
            ):
                _id(value, f"{where}.{name}")
    raise _bad("clientSample", "a field has a type correlation cannot use")


def _check_sfu(s: SfuSample) -> None:
    _id(s.sfu_id, "sfuId", optional=False)
    _whole(s.timestamp, "timestamp")
    _id(s.marker, "marker")
    for i, rec in enumerate(s.transports):
        if not isinstance(rec, dict):
            raise _bad(f"sfuTransports[{i}]", "expected an object")
        _id(rec.get("transportId"), f"sfuTransports[{i}].transportId", optional=False)
    for wire, pads in (("inboundRtpPads", s.inbound_rtp_pads), ("outboundRtpPads", s.outbound_rtp_pads)):
        for i, pad in enumerate(pads):
            where = f"{wire}[{i}]"
            if not isinstance(pad, dict):
                raise _bad(where, "expected an object")
            _id(pad.get("padId"), f"{where}.padId", optional=False)
            for name in ("streamId", "sinkId", "transportId", "callId", "clientId", "trackId"):
                _id(pad.get(name), f"{where}.{name}")
            if "ssrc" in pad:
                _whole(pad["ssrc"], f"{where}.ssrc", bounds=_ANY)
    for i, channel in enumerate(s.sctp_channels):
        where = f"sctpChannels[{i}]"
        if not isinstance(channel, dict):
            raise _bad(where, "expected an object")
        for name in ("transportId", "streamId", "channelId"):
            _scalar(channel.get(name), f"{where}.{name}")


def _pad_fields(pad: dict[str, Any]) -> dict[str, Any]:
    return {
        "transportId": pad.get("transportId"),
        "rtpPadId": pad.get("padId"),
        "mediaStreamId": pad.get("streamId"),
        "mediaSinkId": pad.get("sinkId"),
    }


def _ssrcs(sample: ClientSample) -> Iterable[int]:
    for track in sample.outbound_tracks:
        yield track.ssrc
    for track in sample.inbound_tracks:
        yield track.ssrc


@functools.lru_cache(maxsize=1024)
def _normalise(name: str) -> str:
    """``client-left``, ``clientLeft`` and ``CLIENT_LEFT`` are one event name."""
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and name[i - 1].islower():
            out.append("_")
        out.append("_" if ch in "- " else ch)
    return "".join(out).upper()


def _create(settings: Settings, config: CorrelationConfig, next_consumer: Consumer) -> CorrelationProcessor:
    return CorrelationProcessor(settings, config, next_consumer)


FACTORY = Factory(
    kind="processor",
    type="correlation",
    config_type=CorrelationConfig,
    create=_create,
    description="calls, clients, peer connections and tracks; lifecycle events; track matching",
)
