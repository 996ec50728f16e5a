"""Processor ``reports``: derives the ObserveRTC 2.2.11 reports (the observer 1.0 ``ReportType``s) from samples.

Per correlated ``ClientSample``: one track report per inbound/outbound track, one report per transport,
candidate pair and data channel, ``CALL_META_DATA`` for meta items and for codec, certificate, ICE
candidate and media source records (only when they changed), ``CLIENT_EXTENSION_DATA``, ``CALL_EVENT``
per client event and ``OBSERVER_EVENT`` per client issue. Per ``SfuSample``: transport, RTP pad, SCTP
stream, extension and event reports, with the call found by the correlation processor (``pad_links``).
Client samples the correlation processor has not settled (``correlated=False``) give no reports;
TURN samples never do. Reports already in the batch (lifecycle events from upstream) pass through.

Every payload is built by :func:`_report_schemas.build`, so it validates against its Avro schema; one
that cannot (a required field missing) is dropped and counted.

The meta cache remembers, per (serviceId, clientId), fingerprints of the meta reports already sent, so
that a meta item the client repeats unchanged is not reported again. It is bounded (clients, LRU; items
per client, oldest first), forgets a client on its ``CLIENT_LEFT`` event, and is only updated once the
message commits: a batch refused with ``RetryLater`` is resent by the client and must then carry its
meta reports again. A fingerprint is a 64-bit BLAKE2b digest of the item (type, peer connection,
payload as sorted JSON), the same in every process.

The cache is kept per input partition (:mod:`webrtc_observer.state`): a batch of partition ``p``
(``Batch.partition``) consults and updates the clients of ``p`` only, and the processor implements
:class:`~webrtc_observer.state.Stateful`, one entry per client: key the msgpack of
``("client", serviceId, clientId)``, value its fingerprints (oldest first) and its place in the LRU
order; a tombstone when the client is forgotten (``CLIENT_LEFT``, or evicted by ``max_clients``). So
after a failover the member that takes the partition over does not send the meta of its clients
again. ``max_clients`` bounds all partitions together; past it, the least recently used client of the
partition being updated goes. Every batch handed on keeps the incoming ``partition`` and ``time``; a
batch that yields nothing (a tick too) is not handed on.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec
import orjson

from webrtc_observer import state, transaction
from webrtc_observer.component import Consumer, Factory, Settings
from webrtc_observer.model import Batch, ClientSample, PadLink, Report, SfuSample, Stats
from webrtc_observer.state import LOCAL, Changes, Partition
from webrtc_observer.telemetry import Adder

from ._report_schemas import REPORT_TYPES, SCHEMA_VERSION, build, required_of


@dataclass
class ReportsConfig:
    NEEDS_UPSTREAM: ClassVar[tuple[str, ...]] = ("correlation",)
    """Reports are derived from correlated samples only: validate requires correlation before this."""

    include: list[str] = field(default_factory=list)
    """Report types to emit; empty means all 18."""
    exclude: list[str] = field(default_factory=list)
    """Report types not to emit (applied after ``include``)."""
    forward_samples: bool = False
    """Keep the samples in the outgoing batch, next to the reports."""
    max_clients: int = 100_000
    """Clients whose already-sent meta items are remembered (least recently used are forgotten)."""
    max_meta_items_per_client: int = 1000
    """Meta item fingerprints remembered per client (oldest are forgotten)."""

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        valid = ", ".join(REPORT_TYPES)
        for option, names in (("include", self.include), ("exclude", self.exclude)):
            for i, name in enumerate(names):
                if name not in REPORT_TYPES:
                    issues.append((f"{option}[{i}]", f"unknown report type {name!r} (valid: {valid})"))
        if self.max_clients < 1:
            issues.append(("max_clients", "must be at least 1"))
        if self.max_meta_items_per_client < 1:
            issues.append(("max_meta_items_per_client", "must be at least 1"))
        return issues

    def enabled_types(self) -> frozenset[str]:
        chosen = set(self.include) if self.include else set(REPORT_TYPES)
        return frozenset(t for t in chosen - set(self.exclude) if t in REPORT_TYPES)


_TRACK_TYPES = (
    ("inbound_tracks", "audio", "INBOUND_AUDIO_TRACK"),
    ("inbound_tracks", "video", "INBOUND_VIDEO_TRACK"),
    ("outbound_tracks", "audio", "OUTBOUND_AUDIO_TRACK"),
    ("outbound_tracks", "video", "OUTBOUND_VIDEO_TRACK"),
)
# ClientSample stats lists reported as CALL_META_DATA, with the observer's CallMetaType of each.
_META_RECORDS = (
    ("codecs", "CODEC"),
    ("certificates", "CERTIFICATE"),
    ("local_candidates", "ICE_LOCAL_CANDIDATE"),
    ("remote_candidates", "ICE_REMOTE_CANDIDATE"),
    ("media_sources", "MEDIA_SOURCE"),
)
# PadLink attribute -> SFU RTP pad report field (fields a pad report lacks are dropped by build()).
_PAD_LINK_FIELDS = (
    ("call_id", "callId"),
    ("client_id", "clientId"),
    ("track_id", "trackId"),
    ("remote_sfu_id", "remoteSfuId"),
    ("remote_transport_id", "remoteTransportId"),
    ("remote_sink_id", "remoteSinkId"),
    ("remote_rtp_pad_id", "remoteRtpPadId"),
)

ClientKey = tuple[str, str]


def _json_text(payload: Any) -> str | None:
    """A meta payload as compact JSON text with sorted keys (stable, so equal content fingerprints equal)."""
    if payload is None or isinstance(payload, str):
        return payload
    try:
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError):  # e.g. an integer beyond 64 bits, non-str keys
        import json

        return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)


_fingerprint_encoder = msgspec.msgpack.Encoder()


def _fingerprint(meta_type: str, pc_id: str | None, text: str | None) -> bytes:
    """A meta item's fingerprint, 8 bytes: the same in every process (unlike ``hash``, salted per process)."""
    try:
        data = _fingerprint_encoder.encode((meta_type, pc_id, text))
    except (TypeError, OverflowError):  # a peer connection id that is no JSON scalar msgpack takes
        data = _fingerprint_encoder.encode((meta_type, repr(pc_id), text))
    return hashlib.blake2b(data, digest_size=8).digest()


_FP = 8
"""Bytes of a fingerprint."""


def _find(fps: bytearray, fp: bytes) -> int:
    """Where fingerprint ``fp`` is in the packed ``fps`` (:attr:`_Known.fps`), or -1."""
    at = fps.find(fp)
    while at > 0 and at % _FP:  # a match across two fingerprints: look on
        at = fps.find(fp, at + 1)
    return at


def _unpacked(fps: bytearray) -> list[int]:
    """The packed fingerprints as the integers a checkpoint keeps (the big-endian value of each)."""
    return list(struct.unpack(f">{len(fps) // _FP}Q", fps))


def _packed(fps: Iterable[int]) -> bytearray:
    """The fingerprints of a checkpoint (:func:`_unpacked`), packed."""
    values = list(fps)
    return bytearray(struct.pack(f">{len(values)}Q", *values))


class _Known:
    """The fingerprints sent to one client, packed one after the other, oldest first (8 bytes each,
    where a dict of integers took about 80), and its place in its partition's LRU order (``order``:
    higher is more recent)."""

    __slots__ = ("fps", "order")

    def __init__(self, order: int, fps: bytearray | None = None) -> None:
        self.order = order
        self.fps = bytearray() if fps is None else fps


class _Part:
    """The meta cache of one partition."""

    __slots__ = ("clients", "dirty", "journaled", "next_order")

    def __init__(self) -> None:
        self.clients: OrderedDict[ClientKey, _Known] = OrderedDict()
        """Least recently used first."""
        self.next_order = 0
        self.dirty: set[ClientKey] = set()
        """Clients changed or forgotten since the last :meth:`ReportsProcessor.changes`."""
        self.journaled = False
        """Whether ``dirty`` is kept: from the first ``assign`` or ``changes`` of the partition on, so
        that a partition nobody checkpoints (HTTP input without ``workers``) keeps no list of keys."""

    def use(self, key: ClientKey, known: _Known) -> None:
        self.clients.move_to_end(key)
        known.order = self.next_order
        self.next_order += 1
        if self.journaled:
            self.dirty.add(key)


class _MetaCache:
    """Fingerprints of the meta reports sent, per partition and client, bounded on both levels."""

    def __init__(self, max_clients: int, max_items: int) -> None:
        self._parts: dict[Partition, _Part] = {LOCAL: _Part()}
        self._total = 0
        self._max_clients = max_clients
        self._max_items = max_items

    def __len__(self) -> int:
        """Clients remembered, all partitions together."""
        return self._total

    def part(self, partition: Partition) -> _Part:
        part = self._parts.get(partition)
        if part is None:  # input of a partition nobody assigned (a receiver without assignments)
            part = self._parts[partition] = _Part()
        return part

    def known(self, partition: Partition, key: ClientKey) -> bytearray | None:
        """The client's fingerprints, or None; read only (:meth:`touch` marks them used, at commit)."""
        part = self._parts.get(partition)
        known = None if part is None else part.clients.get(key)
        return None if known is None else known.fps

    def touch(self, partition: Partition, seen: list[tuple[ClientKey, bytes]]) -> None:
        """Mark fingerprints seen again (and their clients) as the most recently used."""
        part = self.part(partition)
        clients = part.clients
        for key, fp in seen:
            known = clients.get(key)
            if known is None:
                continue
            part.use(key, known)
            fps = known.fps
            at = _find(fps, fp)
            if at >= 0:
                del fps[at : at + _FP]  # keep it among the newest, last to be forgotten
                fps += fp

    def commit(self, partition: Partition, staged: dict[ClientKey, dict[bytes, None]]) -> None:
        part = self.part(partition)
        clients = part.clients
        for key, fingerprints in staged.items():
            known = clients.get(key)
            if known is None:
                known = clients[key] = _Known(0)
                self._total += 1
                if self._total > self._max_clients and len(clients) > 1:
                    self._drop(part, next(iter(clients)))
            part.use(key, known)
            fps = known.fps
            for fp in fingerprints:
                if _find(fps, fp) < 0:
                    fps += fp
            excess = len(fps) // _FP - self._max_items
            if excess > 0:
                del fps[: excess * _FP]

    def forget(self, partition: Partition, keys: Iterable[ClientKey]) -> None:
        part = self.part(partition)
        for key in keys:
            if key in part.clients:
                self._drop(part, key)

    def _drop(self, part: _Part, key: ClientKey) -> None:
        del part.clients[key]
        if part.journaled:
            part.dirty.add(key)
        self._total -= 1

    # -- state that moves with its partition (webrtc_observer.state) ----------------------------
    def changes(self, partition: Partition) -> Changes:
        part = self._parts.get(partition)
        if part is None:
            return {}
        out: Changes = {}
        if not part.journaled:  # the first checkpoint of a partition that was not assigned: all of it
            part.journaled = True
            part.dirty.update(part.clients)
        for service, client_id in sorted(part.dirty):
            known = part.clients.get((service, client_id))
            key = state.encode(("client", service, client_id))
            out[key] = None if known is None else state.encode([_STATE_VERSION, known.order, _unpacked(known.fps)])
        part.dirty.clear()
        return out

    def assign(self, partition: Partition, entries: Mapping[bytes, bytes]) -> None:
        self.revoke(partition)
        part = _Part()
        part.journaled = True
        restored: list[tuple[int, ClientKey, _Known]] = []
        for key, value in state.decoded(entries):
            if key[0] != "client":
                continue
            version, order, fps = value
            if version != _STATE_VERSION:
                raise ValueError(f"reports state version {version} is not {_STATE_VERSION}")
            restored.append((order, (key[1], key[2]), _Known(order, _packed(fps))))
        restored.sort(key=lambda entry: (entry[0], entry[1]))
        for _, key, known in restored:
            part.clients[key] = known
        part.next_order = restored[-1][0] + 1 if restored else 0
        self._parts[partition] = part
        self._total += len(part.clients)

    def revoke(self, partition: Partition) -> None:
        part = self._parts.pop(partition, None)
        if partition is LOCAL:
            self._parts[LOCAL] = _Part()
        if part is not None:
            self._total -= len(part.clients)


_STATE_VERSION = 1


class _Derivation:
    """What one batch produces: the reports, what to count, meta fingerprints to remember or forget.

    Counting and remembering wait until the next stage took the batch (``_commit``): a refused batch is
    sent again by the client and must then give the same reports, and be counted once.
    """

    __slots__ = (
        "counts",
        "dropped",
        "forget",
        "invalid",
        "partition",
        "refused",
        "reports",
        "seen",
        "staged",
        "uncorrelated",
    )

    def __init__(self, partition: Partition = LOCAL) -> None:
        self.partition = partition
        self.reports: list[Report] = []
        self.counts: dict[str, int] = {}
        self.invalid: dict[str, int] = {}
        self.uncorrelated = 0
        self.staged: dict[ClientKey, dict[bytes, None]] = {}
        self.forget: list[ClientKey] = []
        self.seen: list[tuple[ClientKey, bytes]] = []
        self.dropped: dict[tuple[str, str], int] = {}
        self.refused: list[str] = []
        """Scratch for :func:`build`: the fields it refused in the report being built, until counted."""


class ReportsProcessor:
    def __init__(self, settings: Settings, config: ReportsConfig, next_consumer: Consumer) -> None:
        self._next = next_consumer
        self._log = settings.logger
        self._label = str(settings.id)
        self._forward_samples = config.forward_samples
        self._enabled = config.enabled_types()
        self._track_types = {(attr, kind): t for attr, kind, t in _TRACK_TYPES if t in self._enabled}
        self._meta = _MetaCache(config.max_clients, config.max_meta_items_per_client)
        t = settings.telemetry
        self._reports = t.counter("reports", "Reports emitted, by report type", ("type",))
        self._reports_of: dict[str, Adder] = {}
        """The ``reports`` series of each report type emitted so far (at most the 18 types)."""
        self._uncorrelated = t.counter(
            "reports_uncorrelated_samples", "Client samples without a settled call, so without reports", ("processor",)
        )
        self._invalid = t.counter(
            "reports_dropped_invalid", "Reports dropped because a required field was missing or invalid", ("processor", "type")
        )
        self._fields_dropped = t.counter(
            "report_fields_dropped",
            "Report fields left out because the 2.2.11 schema cannot represent their value",
            ("processor", "type", "field"),
        )
        self._meta_clients = t.gauge("reports_meta_cache_clients", "Clients in the meta-report cache", ("processor",))
        self._meta_clients.set(0, self._label)

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        """Nothing is buffered: every batch is handed on within ``consume``."""

    async def consume(self, batch: Batch) -> None:
        d = self.derive(batch)
        if not d.reports and not (self._forward_samples and batch.samples):
            await transaction.after_commit(lambda: self._commit(d))
            return
        out = msgspec.structs.replace(batch, samples=batch.samples if self._forward_samples else [], reports=d.reports)
        await self._next.consume(out)  # RetryLater propagates: the sender resends, the cache stays as it was
        # Remember and count when the message commits: a sibling pipeline may still refuse it.
        await transaction.after_commit(lambda: self._commit(d))

    def _commit(self, d: _Derivation) -> None:
        if d.seen:
            self._meta.touch(d.partition, d.seen)
        if d.staged:
            self._meta.commit(d.partition, d.staged)
        if d.forget:
            self._meta.forget(d.partition, d.forget)
        if d.staged or d.forget:
            self._meta_clients.set(len(self._meta), self._label)
        for report_type, n in d.counts.items():
            series = self._reports_of.get(report_type)
            if series is None:
                series = self._reports_of[report_type] = self._reports.adder(report_type)
            series.add(n)
        for report_type, n in d.invalid.items():
            self._invalid.add(n, self._label, report_type)
        if d.uncorrelated:
            self._uncorrelated.add(d.uncorrelated, self._label)
        for (report_type, field_name), n in d.dropped.items():
            self._fields_dropped.add(n, self._label, report_type, field_name)

    # -- state that moves with its partition (webrtc_observer.state) --------------------------------
    def changes(self, partition: Partition) -> Changes:
        """The clients whose meta memory changed (or that were forgotten) in ``partition`` since the
        last call; see :class:`~webrtc_observer.state.Stateful`."""
        return self._meta.changes(partition)

    def assign(self, partition: Partition, entries: Mapping[bytes, bytes]) -> None:
        """Own ``partition`` from ``entries``: what meta each of its clients was already sent."""
        self._meta.assign(partition, entries)
        self._meta_clients.set(len(self._meta), self._label)

    def revoke(self, partition: Partition) -> None:
        """Forget ``partition`` (another member owns it now); :data:`LOCAL` starts over empty."""
        self._meta.revoke(partition)
        self._meta_clients.set(len(self._meta), self._label)

    # -- derivation ---------------------------------------------------------------------------------
    def derive(self, batch: Batch) -> _Derivation:
        """The reports of one batch; nothing is remembered or counted until ``_commit``."""
        d = _Derivation(batch.partition)
        enabled = self._enabled
        for report in batch.reports:
            if report.type == "CALL_EVENT" and report.payload.get("name") == "CLIENT_LEFT":
                service_id, client_id = report.payload.get("serviceId"), report.payload.get("clientId")
                if service_id is not None and client_id is not None:
                    d.forget.append((service_id, client_id))
        # A client that leaves in this message leaves after its last reports: its CLIENT_LEFT and the
        # closes that came with it follow the reports derived from its last sample.
        leaving = set(d.forget)
        departures: list[Report] = []
        for report in batch.reports:
            if report.type not in enabled:
                continue
            if leaving and _departs(report, leaving):
                departures.append(report)
            else:
                d.reports.append(report)
            d.counts[report.type] = d.counts.get(report.type, 0) + 1
        for sample in batch.samples:
            if isinstance(sample, ClientSample):
                if sample.correlated:
                    self._client(sample, d)
                else:
                    d.uncorrelated += 1
            elif isinstance(sample, SfuSample):
                self._sfu(sample, d)
        d.reports.extend(departures)
        return d

    def _emit(self, d: _Derivation, report_type: str, fields: dict[str, Any]) -> None:
        refused = d.refused
        payload = build(report_type, fields, refused)
        if refused:  # fields left out, or the whole report (build names at least one field then)
            self._count_refused(d, report_type, fields, payload is None)
        if payload is not None:
            d.reports.append(Report(report_type, payload, SCHEMA_VERSION))
            d.counts[report_type] = d.counts.get(report_type, 0) + 1

    def _count_refused(self, d: _Derivation, report_type: str, fields: dict[str, Any], invalid: bool) -> None:
        """Count the fields build() refused (``d.refused``, emptied), and the report if it is ``invalid``."""
        for field_name in d.refused:
            d.dropped[(report_type, field_name)] = d.dropped.get((report_type, field_name), 0) + 1
        d.refused.clear()
        if invalid:
            d.invalid[report_type] = d.invalid.get(report_type, 0) + 1
            self._log.debug(
                "report dropped: required fields missing or invalid",
                type=report_type,
                missing=",".join(sorted(f for f in required_of(report_type) if fields.get(f) is None)) or "-",
            )

    def _client(self, s: ClientSample, d: _Derivation) -> None:
        enabled = self._enabled
        origin = s.origin
        base: dict[str, Any] = {
            "serviceId": origin.service_id,
            "mediaUnitId": origin.media_unit_id,
            "marker": s.marker,
            "timestamp": s.timestamp,
            "callId": s.call_id,
            "roomId": s.room_id,
            "clientId": s.client_id,
            "userId": s.user_id,
            "sampleSeq": s.sample_seq,
        }
        labels = _pc_labels(s)

        for (attr, kind), report_type in self._track_types.items():
            for track in getattr(s, attr):
                if track.kind != kind:
                    continue
                pc_id = track.peer_connection_id
                self._emit(
                    d,
                    report_type,
                    {
                        **track.stats,
                        **base,
                        "peerConnectionId": pc_id,
                        "label": labels.get(pc_id) if labels else None,
                        "trackId": track.track_id,
                        "sfuStreamId": track.sfu_stream_id,
                        "sfuSinkId": track.sfu_sink_id,
                        "remoteTrackId": track.remote_track_id,
                        "remoteUserId": track.remote_user_id,
                        "remoteClientId": track.remote_client_id,
                        "remotePeerConnectionId": track.remote_peer_connection_id,
                        "ssrc": track.ssrc,
                    },
                )

        for report_type, records in (
            ("PEER_CONNECTION_TRANSPORT", s.transports),
            ("ICE_CANDIDATE_PAIR", s.candidate_pairs),
        ):
            if records and report_type in enabled:
                for rec in records:
                    fields = {**rec, **base}
                    label = labels.get(rec.get("peerConnectionId")) if labels else None  # type: ignore[arg-type]
                    if label is not None:
                        fields["label"] = label
                    self._emit(d, report_type, fields)

        if s.data_channels and "PEER_CONNECTION_DATA_CHANNEL" in enabled:
            for rec in s.data_channels:
                fields = {**rec, **base, "peerConnectionLabel": labels.get(rec.get("peerConnectionId")) if labels else None}  # type: ignore[arg-type]
                if "messageSent" in rec:
                    fields["messagesSent"] = rec["messageSent"]
                if "messageReceived" in rec:
                    fields["messagesReceived"] = rec["messageReceived"]
                self._emit(d, "PEER_CONNECTION_DATA_CHANNEL", fields)

        if "CALL_META_DATA" in enabled:
            self._client_meta(s, base, d)

        if s.extensions and "CLIENT_EXTENSION_DATA" in enabled:
            for ext in s.extensions:
                self._emit(d, "CLIENT_EXTENSION_DATA", {**base, "extensionType": ext.type, "payload": ext.payload})

        if s.events and "CALL_EVENT" in enabled:
            for ev in s.events:
                fields = {
                    **base,
                    "name": ev.name,
                    "value": ev.value,
                    "message": ev.message,
                    "peerConnectionId": ev.peer_connection_id,
                    "mediaTrackId": ev.track_id,
                    "attachments": ev.attachments,
                    "sampleTimestamp": s.timestamp,
                }
                if ev.timestamp is not None:
                    if _is_long(ev.timestamp):
                        fields["timestamp"] = ev.timestamp
                    else:  # left out (the sample's time stands in) and counted
                        d.dropped[("CALL_EVENT", "timestamp")] = d.dropped.get(("CALL_EVENT", "timestamp"), 0) + 1
                self._emit(d, "CALL_EVENT", fields)

        if s.issues and "OBSERVER_EVENT" in enabled:
            for issue in s.issues:
                fields = {
                    **base,
                    "name": issue.name,
                    "message": issue.message,
                    "attachments": issue.attachments,
                    "sampleTimestamp": s.timestamp,
                }
                if issue.timestamp is not None:
                    if _is_long(issue.timestamp):
                        fields["timestamp"] = issue.timestamp
                    else:
                        d.dropped[("OBSERVER_EVENT", "timestamp")] = d.dropped.get(("OBSERVER_EVENT", "timestamp"), 0) + 1
                self._emit(d, "OBSERVER_EVENT", fields)

    def _meta_items(self, s: ClientSample) -> Iterator[tuple[str, str | None, Any, int | None]]:
        """(type, peerConnectionId, payload, timestamp) of every meta item and meta-like stats record."""
        for item in s.meta:
            yield item.type, item.peer_connection_id, item.payload, item.timestamp
        for attr, meta_type in _META_RECORDS:
            records: list[Stats] = getattr(s, attr)
            for rec in records:
                yield meta_type, rec.get("peerConnectionId"), rec, None

    def _client_meta(self, s: ClientSample, base: dict[str, Any], d: _Derivation) -> None:
        if not (s.meta or s.codecs or s.certificates or s.local_candidates or s.remote_candidates or s.media_sources):
            return
        key = (s.origin.service_id, s.client_id)
        known = self._meta.known(d.partition, key)
        staged = d.staged.get(key)
        for meta_type, pc_id, payload, timestamp in self._meta_items(s):
            text = _json_text(payload)
            fp = _fingerprint(meta_type, pc_id, text)
            if known is not None and _find(known, fp) >= 0:
                d.seen.append((key, fp))  # seen again: kept among the newest when the message commits
                continue
            if staged is None:
                staged = d.staged[key] = {}
            elif fp in staged:
                continue
            staged[fp] = None
            fields = {
                **base,
                "peerConnectionId": pc_id,
                "type": meta_type,
                "payload": text,
                "sampleTimestamp": s.timestamp,
            }
            if timestamp is not None:
                if _is_long(timestamp):
                    fields["timestamp"] = timestamp
                else:
                    d.dropped[("CALL_META_DATA", "timestamp")] = d.dropped.get(("CALL_META_DATA", "timestamp"), 0) + 1
            self._emit(d, "CALL_META_DATA", fields)

    def _sfu(self, s: SfuSample, d: _Derivation) -> None:
        enabled = self._enabled
        origin = s.origin
        base: dict[str, Any] = {
            "serviceId": origin.service_id,
            "mediaUnitId": origin.media_unit_id,
            "sfuId": s.sfu_id,
            "marker": s.marker,
            "timestamp": s.timestamp,
        }
        links = s.pad_links
        by_transport = _links_by_transport(s) if links else {}

        if s.transports and "SFU_TRANSPORT" in enabled:
            for rec in s.transports:
                if rec.get("noReport"):
                    continue
                fields = {**rec, **base}
                _add_call(fields, by_transport.get(rec.get("transportId")))  # type: ignore[arg-type]
                self._emit(d, "SFU_TRANSPORT", fields)

        if s.inbound_rtp_pads and "SFU_INBOUND_RTP_PAD" in enabled:
            for rec in s.inbound_rtp_pads:
                if rec.get("noReport"):
                    continue
                fields = {**rec, **base, "sfuStreamId": rec.get("streamId"), "rtpPadId": rec.get("padId")}
                if links:
                    _add_pad_link(fields, links.get(rec.get("padId")))  # type: ignore[arg-type]
                self._emit(d, "SFU_INBOUND_RTP_PAD", fields)

        if s.outbound_rtp_pads and "SFU_OUTBOUND_RTP_PAD" in enabled:
            for rec in s.outbound_rtp_pads:
                if rec.get("noReport"):
                    continue
                fields = {
                    **rec,
                    **base,
                    "sfuStreamId": rec.get("streamId"),
                    "sfuSinkId": rec.get("sinkId"),
                    "rtpPadId": rec.get("padId"),
                }
                if links:
                    _add_pad_link(fields, links.get(rec.get("padId")))  # type: ignore[arg-type]
                self._emit(d, "SFU_OUTBOUND_RTP_PAD", fields)

        if s.sctp_channels and "SFU_SCTP_STREAM" in enabled:
            for rec in s.sctp_channels:
                if rec.get("noReport"):
                    continue
                fields = {**rec, **base}
                _add_call(fields, by_transport.get(rec.get("transportId")))  # type: ignore[arg-type]
                self._emit(d, "SFU_SCTP_STREAM", fields)

        if s.extensions and "SFU_EXTENSION_DATA" in enabled:
            for ext in s.extensions:
                self._emit(d, "SFU_EXTENSION_DATA", {**base, "extensionType": ext.type, "payload": ext.payload})

        if s.events and "SFU_EVENT" in enabled:
            for ev in s.events:
                fields = {
                    **ev,
                    **base,
                    # 2.x CustomSfuEvent says sfuStreamId/sfuSinkId where the report says mediaStreamId/mediaSinkId.
                    "mediaStreamId": ev.get("mediaStreamId", ev.get("sfuStreamId")),
                    "mediaSinkId": ev.get("mediaSinkId", ev.get("sfuSinkId")),
                }
                if ev.get("timestamp") is not None:
                    if _is_long(ev["timestamp"]):
                        fields["timestamp"] = ev["timestamp"]
                    else:
                        fields["timestamp"] = s.timestamp
                        d.dropped[("SFU_EVENT", "timestamp")] = d.dropped.get(("SFU_EVENT", "timestamp"), 0) + 1
                if ev.get("callId") is None and links:
                    link = links.get(ev.get("rtpPadId")) or by_transport.get(ev.get("transportId"))  # type: ignore[arg-type]
                    if link is not None:
                        fields["callId"] = link.call_id
                self._emit(d, "SFU_EVENT", fields)


def _is_long(value: Any) -> bool:
    """An Avro long: an int (not a bool) in the signed 64-bit range."""
    return type(value) is int and -(2**63) <= value < 2**63


def _pc_labels(s: ClientSample) -> dict[str, str]:
    """peerConnectionId -> label: what the client says of the peer connection, else the label a 2.x
    transport or candidate pair record of it carries."""
    labels = {pc.peer_connection_id: pc.label for pc in s.peer_connections if pc.label is not None}
    for records in (s.transports, s.candidate_pairs):
        for rec in records:
            label = rec.get("label")
            if label is not None:
                labels.setdefault(rec.get("peerConnectionId"), label)  # type: ignore[arg-type]
    return labels


def _links_by_transport(s: SfuSample) -> dict[str, PadLink]:
    """transportId -> the link of one of its pads that names a call."""
    out: dict[str, PadLink] = {}
    links = s.pad_links
    for pads in (s.inbound_rtp_pads, s.outbound_rtp_pads):
        for pad in pads:
            transport_id = pad.get("transportId")
            if transport_id is None or transport_id in out:
                continue
            link = links.get(pad.get("padId"))  # type: ignore[arg-type]
            if link is not None and link.call_id is not None:
                out[transport_id] = link
    return out


def _add_call(fields: dict[str, Any], link: PadLink | None) -> None:
    if link is not None:
        fields["callId"] = link.call_id
        if link.room_id is not None:
            fields["roomId"] = link.room_id


def _add_pad_link(fields: dict[str, Any], link: PadLink | None) -> None:
    if link is not None:
        for attr, name in _PAD_LINK_FIELDS:
            value = getattr(link, attr)
            if value is not None:
                fields[name] = value


_DEPARTURE_EVENTS = frozenset({"CLIENT_LEFT", "PEER_CONNECTION_CLOSED", "MEDIA_TRACK_REMOVED"})


def _departs(report: Report, leaving: set[tuple[Any, Any]]) -> bool:
    """Whether ``report`` is the leave of a client in ``leaving``, or a close that came with it."""
    if report.type != "CALL_EVENT":
        return False
    payload = report.payload
    return payload.get("name") in _DEPARTURE_EVENTS and (payload.get("serviceId"), payload.get("clientId")) in leaving


def _create(settings: Settings, config: ReportsConfig, next_consumer: Consumer) -> ReportsProcessor:
    return ReportsProcessor(settings, config, next_consumer)


FACTORY = Factory(
    kind="processor",
    type="reports",
    config_type=ReportsConfig,
    create=_create,
    description="derives the ObserveRTC 2.2.11 reports from correlated samples",
)
