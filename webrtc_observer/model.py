"""The internal data model: what flows between receivers, processors and exporters.

Every wire generation (PeerConnectionSample v20200114, schemas 2.x, schemas 3.x) is decoded into these
types by the receiver, so processors never see a wire format.

A client sample is flat, like the 2.x ClientSample: one list per kind of stats record, each record
naming its peer connection. Identity (who, where, when) is typed. Measurements are kept as ``Stats`` mappings keyed by the ObserveRTC
2.x field names (``packetsLost``, ``roundTripTime`` ...), which are also the field names of the reports
derived from them; a mapping is both cheaper than a class per W3C stats type and what report derivation
needs.
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

Stats = dict[str, Any]
"""One stats object with 2.x field names; values are str, int, float or bool, never None."""

MediaKind = Literal["audio", "video"]
SchemaGeneration = Literal["pcsample-v20200114", "2", "3"]


class Origin(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """Where and when a sample entered the collector (set by the receiver, not by the client)."""

    service_id: str
    media_unit_id: str
    received_at: int
    """Epoch milliseconds of receipt."""
    generation: SchemaGeneration
    schema_version: str | None = None
    """The version the client declared (``?schemaVersion=``), if any."""


class Track(msgspec.Struct, gc=False, omit_defaults=True):
    """An inbound or outbound RTP stream of a peer connection, merged per SSRC as in the 2.x schema.

    ``stats`` holds the inbound-rtp/outbound-rtp, remote-*-rtp, media-source and media-playout fields
    of the 2.x InboundAudioTrack/InboundVideoTrack/OutboundAudioTrack/OutboundVideoTrack records.
    """

    kind: MediaKind
    ssrc: int
    peer_connection_id: str | None = None
    track_id: str | None = None
    sfu_stream_id: str | None = None
    sfu_sink_id: str | None = None
    remote_client_id: str | None = None
    remote_user_id: str | None = None
    remote_peer_connection_id: str | None = None
    remote_track_id: str | None = None
    """``remote_*``: for inbound tracks, the sender, as found by the correlation processor."""
    stats: Stats = {}


class PeerConnection(msgspec.Struct, gc=False, omit_defaults=True):
    """What a client says about one RTCPeerConnection itself (3.x sends it; 2.x only names its id)."""

    peer_connection_id: str
    label: str | None = None
    score: float | None = None
    attachments: str | None = None


class MetaItem(msgspec.Struct, gc=False, omit_defaults=True):
    """A fact about the client that changes rarely: browser, OS, devices, codecs, SDP, ICE servers...

    ``type`` uses the observer's CallMetaType names (``BROWSER``, ``MEDIA_DEVICE``, ``ICE_SERVER``, ...)
    for 2.x and legacy samples and the client's own type names for 3.x ``clientMetaItems``.
    """

    type: str
    payload: Any = None
    peer_connection_id: str | None = None
    track_id: str | None = None
    ssrc: int | None = None
    timestamp: int | None = None


class ClientEvent(msgspec.Struct, gc=False, omit_defaults=True):
    """Something the client says happened: a custom call event (2.x), a clientEvent (3.x)."""

    name: str
    value: str | None = None
    message: str | None = None
    peer_connection_id: str | None = None
    track_id: str | None = None
    attachments: str | None = None
    timestamp: int | None = None


class ClientIssue(msgspec.Struct, gc=False, omit_defaults=True):
    """Something the client detected as wrong: customObserverEvents (2.x), clientIssues (3.x)."""

    name: str
    message: str | None = None
    track_id: str | None = None
    attachments: str | None = None
    timestamp: int | None = None


class Extension(msgspec.Struct, gc=False, omit_defaults=True):
    """Application-defined stats forwarded intact (extensionStats, legacy extensions)."""

    type: str
    payload: str


class ClientSample(msgspec.Struct, gc=False, omit_defaults=True):
    """One snapshot of one client (a browser tab or app instance) at ``timestamp``."""

    origin: Origin
    client_id: str
    timestamp: int
    """Client wall-clock epoch milliseconds."""
    call_id: str | None = None
    room_id: str | None = None
    user_id: str | None = None
    marker: str | None = None
    sample_seq: int | None = None
    time_zone_offset_hours: int | None = None
    peer_connections: list[PeerConnection] = []
    """Peer connections the client described; every id used below is also implied to exist."""
    inbound_tracks: list[Track] = []
    outbound_tracks: list[Track] = []
    transports: list[Stats] = []
    """2.x PeerConnectionTransport records (W3C transport + selected pair ids), with peerConnectionId."""
    candidate_pairs: list[Stats] = []
    local_candidates: list[Stats] = []
    remote_candidates: list[Stats] = []
    data_channels: list[Stats] = []
    codecs: list[Stats] = []
    certificates: list[Stats] = []
    media_sources: list[Stats] = []
    """Stats records keep their 2.x field names and carry ``peerConnectionId`` where the wire said it."""
    meta: list[MetaItem] = []
    events: list[ClientEvent] = []
    issues: list[ClientIssue] = []
    extensions: list[Extension] = []
    score: float | None = None
    attachments: str | None = None
    browser_id: str | None = None
    """Legacy samples only: the browser fingerprint that identifies a client across peer connections."""
    closing: bool = False
    """The client said it is leaving (2.x ``controls.close`` on its last message)."""
    correlated: bool = False
    """Set by the correlation processor once ``call_id`` and ``sample_seq`` are settled."""


class PadLink(msgspec.Struct, gc=False, omit_defaults=True):
    """What the correlation processor found about one SFU RTP pad: the call and client it serves."""

    call_id: str | None = None
    room_id: str | None = None
    client_id: str | None = None
    track_id: str | None = None
    remote_sfu_id: str | None = None
    remote_transport_id: str | None = None
    remote_sink_id: str | None = None
    remote_rtp_pad_id: str | None = None


class SfuSample(msgspec.Struct, gc=False, omit_defaults=True):
    """One snapshot of one SFU instance. Stats records keep the 2.x SfuSample field names."""

    origin: Origin
    sfu_id: str
    timestamp: int
    marker: str | None = None
    time_zone_offset_hours: int | None = None
    transports: list[Stats] = []
    inbound_rtp_pads: list[Stats] = []
    outbound_rtp_pads: list[Stats] = []
    sctp_channels: list[Stats] = []
    events: list[Stats] = []
    extensions: list[Extension] = []
    pad_links: dict[str, PadLink] = {}
    """padId → link, filled by the correlation processor."""


class TurnSample(msgspec.Struct, gc=False, omit_defaults=True):
    """A TURN server snapshot; carried through but not correlated (the observer never did either)."""

    origin: Origin
    server_id: str
    allocations: list[Stats] = []
    sessions: list[Stats] = []


Sample = ClientSample | SfuSample | TurnSample


def shared(value: Any) -> Any:
    """``value``; a string as the one interned copy of its text (anything else as it is)."""
    return sys.intern(value) if value.__class__ is str else value


def share_ids(samples: Iterable[Sample]) -> None:
    """Make the ids of the client samples the one interned copy of each text, in place.

    Every sample brings its client's ids anew, as new strings. What the processors and the live view
    keep of them (a client's, call's, room's and user's ids, its peer connections' and tracks') is then
    each text once, however many samples and processors it came through. Called where samples enter
    the process: the receiver's decoding, the ``kafka`` receiver and the hand-over between workers.
    """
    intern = sys.intern  # inline, not through shared(): this runs for every sample
    for sample in samples:
        if not isinstance(sample, ClientSample):
            continue
        if sample.client_id.__class__ is str:
            sample.client_id = intern(sample.client_id)
        if sample.call_id.__class__ is str:
            sample.call_id = intern(sample.call_id)
        if sample.room_id.__class__ is str:
            sample.room_id = intern(sample.room_id)
        if sample.user_id.__class__ is str:
            sample.user_id = intern(sample.user_id)
        for tracks in (sample.inbound_tracks, sample.outbound_tracks):
            for track in tracks:
                if track.peer_connection_id.__class__ is str:
                    track.peer_connection_id = intern(track.peer_connection_id)
                if track.track_id.__class__ is str:
                    track.track_id = intern(track.track_id)


def routing_key(sample: Sample) -> str:
    """The key that keeps every sample of a room (or call) together: ``serviceId`` NUL ``roomId``, else
    the call id, else the client id; SFU samples by SFU id, TURN samples by server id.

    ``service.workers`` hashes it to pick a worker; the ``kafka`` exporter (``encoding: samples``) uses
    it as the record key, so one partition holds all of a room's samples."""
    if isinstance(sample, ClientSample):
        return client_routing_key(sample.origin.service_id, sample.room_id, sample.call_id, sample.client_id)
    return service_routing_key(sample.origin.service_id, sample.sfu_id if isinstance(sample, SfuSample) else sample.server_id)


def client_routing_key(service_id: str, room_id: str | None, call_id: str | None, client_id: str) -> str:
    """:func:`routing_key` of a client sample with these ids (also told from a message's bytes before it
    is decoded, so a worker can hand it to its owner undecoded)."""
    return service_routing_key(service_id, room_id or call_id or client_id)


def service_routing_key(service_id: str, key: str) -> str:
    """:func:`routing_key` of what ``key`` (a room, call, client, SFU or TURN server id) names in a service."""
    return f"{service_id}\x00{key}"


class ReportRecord(msgspec.Struct, gc=False, omit_defaults=True, kw_only=True):
    """A report payload typed by its Avro schema: one subclass per report type (``processors._report_schemas``).

    It encodes (JSON, msgpack) as the record, absent fields left out, and reads like the dict it
    encodes to: ``payload["callId"]``, ``payload.get("label")``, ``"label" in payload``, ``dict(payload)``.
    A field that is None is absent.
    """

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self, name, None)
        return default if value is None else value

    def __getitem__(self, name: str) -> Any:
        value = getattr(self, name, None)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and getattr(self, name, None) is not None

    def keys(self) -> list[str]:
        return [name for name in self.__struct_fields__ if getattr(self, name) is not None]

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


Payload = ReportRecord | dict[str, Any]


class Report(msgspec.Struct, gc=False, rename={"schema_version": "schemaVersion"}):
    """One ObserveRTC report: ``type`` is the report type (``CALL_EVENT``...), ``payload`` its record.

    Encoded by msgspec, a report is its envelope ``{"type", "payload", "schemaVersion", "id"}``.
    ``id`` is derived from the rest (:func:`report_id`), so consumers can drop duplicates.
    """

    type: str
    payload: Any
    """A :class:`ReportRecord` (as the reports processor builds them) or a plain dict of the same fields."""
    schema_version: str = "2.2.11"
    id: str | None = None
    """Set from the content when left out: see :func:`report_id`."""

    def __post_init__(self) -> None:
        if self.id is None:
            self.id = report_id(self.type, self.schema_version, self.payload)

    def envelope(self) -> dict[str, Any]:
        """The report as plain builtins: ``{"type", "schemaVersion", "payload", "id"}``."""
        payload = self.payload if isinstance(self.payload, dict) else msgspec.to_builtins(self.payload)
        return {"type": self.type, "schemaVersion": self.schema_version, "payload": payload, "id": self.id}


REPORT_ID_NAMESPACE = uuid.UUID("6f1c1b9e-3c52-5b8e-9a57-0e6d2f4b7a10")
_id_encode_into = msgspec.msgpack.Encoder(order="sorted").encode_into
_id_buffers: list[bytearray] = []
"""Encoding buffers for :func:`report_id`, reused: encoding into one that already has the room spares
growing a new ``bytes`` to the payload's size on every call. One is taken out while in use, so threads
never share one."""
_ID_BUFFER_KEPT = 1 << 16
"""A buffer that grew beyond this (a huge payload) is not kept."""


def report_id(report_type: str, schema_version: str, payload: Any) -> str:
    """The report's deterministic id: a name-based UUID (version 5) of its type, schema version and
    payload, which hold its call or SFU, event name, entity, sample timestamp and sequence.

    The same report derived again (a replay after a failover) gets the same id; two reports that
    differ in anything get different ids (a client that rejoins: a new CLIENT_JOINED timestamp).
    Payload keys are hashed in sorted order, so a dict payload and its record hash alike.
    """
    try:
        buffer = _id_buffers.pop()
    except IndexError:  # the first call, or one in another thread while a buffer is in use
        buffer = bytearray()
    _id_encode_into((report_type, schema_version, payload), buffer)
    h = _namespaced.copy()
    h.update(buffer)
    if len(buffer) <= _ID_BUFFER_KEPT:
        _id_buffers.append(buffer)
    x = h.hexdigest()  # the UUID is its first 32 digits, but for the version (digit 13) and variant (digit 17)
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT_DIGIT[x[16]]}{x[17:20]}-{x[20:32]}"  # as str(uuid.UUID)


_namespaced = hashlib.sha1(REPORT_ID_NAMESPACE.bytes)
_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 0b11] for digit in "0123456789abcdef"}
"""Hex digit -> the same digit with its two high bits set to ``10``, the RFC 4122 variant."""


class TrackQuality(msgspec.Struct, gc=False, omit_defaults=True, kw_only=True):
    """What the ``quality`` processor measured on one track of one client sample.

    The quality processor adds one per measured track to the batch it hands on
    (:attr:`Batch.quality`), so every later stage (issue detection, call summaries, the live view)
    works from the same numbers as the ``observertc_quality_*`` histograms; the live view also learns
    from it which tracks a client has and who sends them. A value that could not be
    measured in this sample is None. Interval values (``*_delta``, rates, fraction lost) cover the time
    since the track's previous sample.
    """

    service_id: str
    media_unit_id: str
    call_id: str | None
    client_id: str
    peer_connection_id: str
    ssrc: int
    kind: MediaKind
    direction: Literal["inbound", "outbound"]
    timestamp: int
    """The sample's timestamp (epoch ms)."""
    track_id: str | None = None
    room_id: str | None = None
    user_id: str | None = None
    """``room_id``, ``user_id``: the client sample's, as correlated."""
    remote_client_id: str | None = None
    remote_user_id: str | None = None
    """``remote_*``: the track's sender, for inbound tracks (as the correlation processor found it)."""
    rtt: float | None = None
    """Round-trip time, seconds."""
    jitter: float | None = None
    """Seconds."""
    fraction_lost: float | None = None
    """0..1: inbound over the interval; outbound as the far end reported it."""
    bitrate: float | None = None
    """Payload bits per second over the interval."""
    mos: float | None = None
    """1..4.5, inbound tracks only (E-model for audio, bits per pixel for video)."""
    fps: float | None = None
    frame_width: int | None = None
    frame_height: int | None = None
    packets_delta: int | None = None
    """Packets received (inbound) or sent (outbound) in the interval."""
    bytes_delta: int | None = None
    """Payload bytes received or sent in the interval."""
    frames_delta: int | None = None
    """Video frames decoded (inbound) or encoded (outbound) in the interval."""
    interval: float | None = None
    """Seconds since the track's previous sample, when the deltas exist."""
    quality_limitation: str | None = None
    """Outbound video: the sender's ``qualityLimitationReason`` (``cpu``, ``bandwidth``...), if not ``none``."""


class Batch(msgspec.Struct, gc=False, omit_defaults=True):
    """The unit handed from one pipeline stage to the next.

    A receiver puts the samples of one message in a batch; a report-deriving processor adds reports.
    Stages must not mutate a batch they received: a fan-out hands the same batch to several pipelines.
    """

    samples: list[Sample] = []
    reports: list[Report] = []
    partition: int | None = None
    """The input partition the batch came from (a Kafka partition); None for input without one.
    Stateful processors keep their state per partition (:mod:`webrtc_observer.state`)."""
    time: int | None = None
    """Stream time of the batch (epoch ms): the record timestamp of a partitioned log. A batch with
    no samples and a time is a tick: it only advances the partition's clock."""
    quality: list[TrackQuality] = []
    """What the ``quality`` processor measured on the batch's client samples, for later stages."""

    def __len__(self) -> int:
        return len(self.samples) + len(self.reports)
