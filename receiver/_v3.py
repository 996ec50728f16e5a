"""Schemas 3.x: one ``ClientSample`` as @observertc/client-monitor-js 4.x emits it, mapped onto the model.

3.x sends, per peer connection, one array per W3C stats type (``inboundRtps``, ``remoteOutboundRtps``,
``mediaPlayouts``, ...). The model is flat and merged like the 2.x ClientSample, with 2.x field names,
because reports are derived from it by copying fields. So this module

* merges the W3C objects of one RTP stream into one ``Track`` (inbound-rtp + its remote-outbound-rtp
  + its media-playout; outbound-rtp + its remote-inbound-rtp + its media-source);
* renames the few fields whose 2.x names differ (``id`` -> ``transportId``/``candidatePairId``,
  ``messagesSent`` -> ``messageSent``, ``qualityLimitationDurations.cpu`` ->
  ``qualityLimitationDurationCPU`` ...) and keeps only fields the 2.x record has;
* converts values whose 2.x type differs (W3C doubles such as ``lastPacketReceivedTimestamp`` or
  ``targetBitrate`` that 2.x declares ``long``/``int`` are truncated to ``int``; ``payloadType`` becomes
  a string), so a stats dict type-checks against the 2.x record;
* splits ``iceCandidates`` into local and remote candidates (see ``_is_local``).

All of that is data: ``_PLAN_SPECS`` names, per target, the 3.x list and record it reads, the 2.x record,
renames and an optional field whitelist; ``_layout()`` turns that into Structs and views once, from the two
Avro schemas.

The sample is read as the validated wire structs (:func:`~._wire_types.decode_typed`). One ``msgspec.convert``
copies, in C, every field any plan keeps of every record of every peer connection into Structs that
carry the 2.x names, and one ``to_builtins`` turns them into the stats dicts of the model. Python then
only merges a track's objects, drops what a kind does not keep and converts the few values whose 2.x
type differs. A field missing and a field sent as null read alike (None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, NamedTuple

import msgspec
import orjson

from webrtc_observer.model import (
    ClientEvent,
    ClientIssue,
    ClientSample,
    Extension,
    MediaKind,
    MetaItem,
    Origin,
    PeerConnection,
    Stats,
    Track,
)
from webrtc_observer.schemas import avro_schema

from ._wire_types import INT32_MAX, INT32_MIN, LONG_MAX, LONG_MIN, WireError, as_text, client_sample_v3, decode_typed

__all__ = ["client_sample_in_json", "decode_client_sample_v3", "sample_of_wire", "wire_sample_in_json"]

Conversion = Callable[[Any], Any]
MappedPeerConnection = dict[str, list[Stats] | None]
"""A peer connection's mapped records: 3.x list name -> one stats dict per record, None for no list."""


class _View(NamedTuple):
    """How one plan reads the mapped dicts of its 3.x list (one Struct serves every plan of a list)."""

    dropped: frozenset[str]
    """2.x names that other plans of the list keep and this one does not."""
    conversions: tuple[tuple[str, Conversion], ...]
    """(2.x name, conversion to its 2.x type) for the list's fields whose 2.x type differs."""


# --------------------------------------------------------------------------------------------
# Field maps
# --------------------------------------------------------------------------------------------

# Fields of the 2.x track records that are the Track's typed identity, not stats.
_TRACK_IDENTITY = frozenset({"trackId", "peerConnectionId", "remoteClientId", "sfuStreamId", "sfuSinkId", "ssrc"})

# What each auxiliary W3C object contributes to a track (2.x names; further limited to the fields the
# target record has, so e.g. width/height/frames only reach video and audioLevel only audio).
_REMOTE_OUTBOUND_FIELDS = (
    "packetsSent",
    "bytesSent",
    "remoteTimestamp",
    "reportsSent",
    "roundTripTime",
    "totalRoundTripTime",
    "roundTripTimeMeasurements",
)
_PLAYOUT_FIELDS = ("synthesizedSamplesDuration", "synthesizedSamplesEvents", "totalPlayoutDelay", "totalSamplesCount")
_REMOTE_INBOUND_FIELDS = (
    "packetsReceived",
    "packetsLost",
    "jitter",
    "roundTripTime",
    "totalRoundTripTime",
    "fractionLost",
    "roundTripTimeMeasurements",
)
# framesPerSecond is deliberately absent: for an outbound video track it comes from the outbound-rtp.
_MEDIA_SOURCE_TRACK_FIELDS = (
    "audioLevel",
    "totalAudioEnergy",
    "totalSamplesDuration",
    "echoReturnLoss",
    "echoReturnLossEnhancement",
    "width",
    "height",
    "frames",
)
# outbound-rtp ``qualityLimitationDurations{...}`` -> flat 2.x fields (video only in 2.x).
_QUALITY_LIMITATION_DURATIONS = (
    ("none", "qualityLimitationDurationNone"),
    ("cpu", "qualityLimitationDurationCPU"),
    ("bandwidth", "qualityLimitationDurationBandwidth"),
    ("other", "qualityLimitationDurationOther"),
)

# plan name: (3.x list of the peer connection, its record, 2.x record, {3.x name: 2.x name}, only these
# 2.x fields or None for all)
_PLAN_SPECS: dict[str, tuple[str, str, str, dict[str, str], tuple[str, ...] | None]] = {
    "inbound-rtp/audio": ("inboundRtps", "InboundRtpStats", "InboundAudioTrack", {}, None),
    "inbound-rtp/video": ("inboundRtps", "InboundRtpStats", "InboundVideoTrack", {}, None),
    "remote-outbound-rtp/audio": (
        "remoteOutboundRtps",
        "RemoteOutboundRtpStats",
        "InboundAudioTrack",
        {},
        _REMOTE_OUTBOUND_FIELDS,
    ),
    "remote-outbound-rtp/video": (
        "remoteOutboundRtps",
        "RemoteOutboundRtpStats",
        "InboundVideoTrack",
        {},
        _REMOTE_OUTBOUND_FIELDS,
    ),
    "media-playout/audio": ("mediaPlayouts", "MediaPlayoutStats", "InboundAudioTrack", {}, _PLAYOUT_FIELDS),
    "outbound-rtp/audio": ("outboundRtps", "OutboundRtpStats", "OutboundAudioTrack", {}, None),
    "outbound-rtp/video": ("outboundRtps", "OutboundRtpStats", "OutboundVideoTrack", {}, None),
    "remote-inbound-rtp/audio": (
        "remoteInboundRtps",
        "RemoteInboundRtpStats",
        "OutboundAudioTrack",
        {},
        _REMOTE_INBOUND_FIELDS,
    ),
    "remote-inbound-rtp/video": (
        "remoteInboundRtps",
        "RemoteInboundRtpStats",
        "OutboundVideoTrack",
        {},
        _REMOTE_INBOUND_FIELDS,
    ),
    "media-source/audio": ("mediaSources", "MediaSourceStats", "OutboundAudioTrack", {}, _MEDIA_SOURCE_TRACK_FIELDS),
    "media-source/video": ("mediaSources", "MediaSourceStats", "OutboundVideoTrack", {}, _MEDIA_SOURCE_TRACK_FIELDS),
    "transport": ("iceTransports", "IceTransportStats", "PeerConnectionTransport", {"id": "transportId"}, None),
    "candidate-pair": (
        "iceCandidatePairs",
        "IceCandidatePairStats",
        "IceCandidatePair",
        {"id": "candidatePairId"},
        None,
    ),
    "local-candidate": ("iceCandidates", "IceCandidateStats", "IceLocalCandidate", {}, None),
    "remote-candidate": ("iceCandidates", "IceCandidateStats", "IceRemoteCandidate", {}, None),
    "data-channel": (
        "dataChannels",
        "DataChannelStats",
        "DataChannel",
        {"messagesSent": "messageSent", "messagesReceived": "messageReceived"},
        None,
    ),
    "codec": ("codecs", "CodecStats", "MediaCodecStats", {}, None),
    "certificate": ("certificates", "CertificateStats", "Certificate", {}, None),
    "media-source": ("mediaSources", "MediaSourceStats", "MediaSourceStat", {}, None),
}

# The same candidate-pair state arrives spelled per codec: W3C "in-progress" from JSON clients, the
# Avro symbol "inProgress", the protobuf enum name "INPROGRESS"/"SUCCEEDED". 2.x carries the W3C string.
_PAIR_STATES = {
    "inProgress": "in-progress",
    "NEW": "new",
    "FROZEN": "frozen",
    "INPROGRESS": "in-progress",
    "WAITING": "waiting",
    "FAILED": "failed",
    "SUCCEEDED": "succeeded",
    "CANCELLED": "cancelled",
}

# Identity the 3.x sample lacks but client apps commonly put in ``attachments``.
_ATTACHED_IDENTITY = ("roomId", "userId", "marker")

_INTEGRAL = frozenset({"int", "long"})
_FRACTIONAL = frozenset({"float", "double"})


# --------------------------------------------------------------------------------------------
# Plans, computed once from the Avro schemas
# --------------------------------------------------------------------------------------------


def _record_field_types(schema: Any, out: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Every named record in ``schema``: ``{record name: {field: primitive type}}``.

    The primitive is the non-null branch of a union; enums count as ``string``; records, arrays and
    maps as ``complex``.
    """
    if isinstance(schema, list):
        for item in schema:
            _record_field_types(item, out)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            out[schema["name"]] = {f["name"]: _primitive(f["type"]) for f in schema["fields"]}
            for f in schema["fields"]:
                _record_field_types(f["type"], out)
        elif schema.get("type") == "array":
            _record_field_types(schema["items"], out)
        elif schema.get("type") == "map":
            _record_field_types(schema["values"], out)
    return out


def _primitive(avro: Any) -> str:
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        return _primitive(branches[0]) if len(branches) == 1 else "complex"
    if isinstance(avro, dict):
        return "string" if avro["type"] == "enum" else "complex"
    return avro if isinstance(avro, str) else "complex"


def _conversion(src: str, dst: str) -> Conversion | None:
    """How to turn a validated 3.x value into the 2.x field's type (None: already right)."""
    if dst in _INTEGRAL and src in _FRACTIONAL:
        # W3C doubles 2.x declares long/int: timestamps in ms, targetBitrate, qpSum
        return _to_int32 if dst == "int" else _to_long
    if dst in _FRACTIONAL and src in _INTEGRAL:
        return float
    if dst == "string" and (src in _INTEGRAL or src in _FRACTIONAL):
        return str  # MediaCodecStats.payloadType
    return None


@cache
def v2_record_fields() -> dict[str, dict[str, str]]:
    """The 2.x ClientSample records' fields and primitive types (also handy for tests)."""
    return _record_field_types(avro_schema("v2_2_11", "Samples.avsc"), {})


def _plan_fields(
    v3_fields: dict[str, str], target: dict[str, str], renames: dict[str, str], only: tuple[str, ...] | None, track: bool
) -> dict[str, tuple[str, Conversion | None]]:
    """The 3.x fields one plan keeps: {3.x name: (2.x name, conversion or None)}, in 3.x order."""
    kept: dict[str, tuple[str, Conversion | None]] = {}
    for src, src_type in v3_fields.items():
        dst = renames.get(src, src)
        if dst not in target or dst == "peerConnectionId":
            continue
        if track and dst in _TRACK_IDENTITY:
            continue
        if only is not None and dst not in only:
            continue
        kept[src] = (dst, _conversion(src_type, target[dst]))
    return kept


@cache
def _layout() -> tuple[Any, dict[str, _View]]:
    """The type wire peer connections convert to (a list of Structs, from their attributes), and every
    plan's view.

    Per 3.x list, one Struct holds the fields of all the plans that read it (the record's own, and the
    part of an auxiliary object a track takes), encoded under their 2.x names: first those copied as
    they are, in name order, then the renamed or converted ones, in 3.x order. A plan's dict is then
    that Struct's, less the fields the plan drops: the same fields, in the same order, as if the plan
    had its own Struct. A field must map alike in every plan of its list, or this raises.
    """
    v2 = v2_record_fields()
    v3 = _record_field_types(avro_schema("v3_5_0", "ClientSample.avsc"), {})
    lists: dict[str, dict[str, tuple[str, Conversion | None]]] = {}
    kept_by_plan: dict[str, set[str]] = {}
    for name, (list_name, v3_record, v2_record, renames, only) in _PLAN_SPECS.items():
        kept = _plan_fields(v3[v3_record], v2[v2_record], renames, only, v2_record.endswith("Track"))
        fields = lists.setdefault(list_name, {})
        for src, mapping in kept.items():
            if fields.setdefault(src, mapping) != mapping:
                raise ValueError(f"{list_name}.{src} maps to {fields[src]} in one plan and {mapping} in {name}")
        kept_by_plan[name] = {dst for dst, _ in kept.values()}
    for list_name, fields in lists.items():  # back to 3.x order, whichever plan named a field first
        v3_record = next(spec[1] for spec in _PLAN_SPECS.values() if spec[0] == list_name)
        lists[list_name] = {src: fields[src] for src in v3[v3_record] if src in fields}
    structs: dict[str, Any] = {list_name: _mapped_struct(list_name, fields) for list_name, fields in lists.items()}
    peer_connection: Any = msgspec.defstruct(
        "_MappedPeerConnection",
        [(list_name, list[struct] | None, None) for list_name, struct in structs.items()],  # type: ignore[valid-type]
        gc=False,
    )
    views = {}
    for name, (list_name, *_) in _PLAN_SPECS.items():
        fields = lists[list_name]
        views[name] = _View(
            dropped=frozenset(dst for dst, _ in fields.values()) - kept_by_plan[name],
            conversions=tuple((dst, conv) for dst, conv in fields.values() if conv is not None),
        )
    return list[peer_connection], views


def _mapped_struct(list_name: str, fields: dict[str, tuple[str, Conversion | None]]) -> type[msgspec.Struct]:
    """A Struct of ``fields`` ({3.x name: (2.x name, conversion)}), as-is ones first, by name."""
    as_is = sorted(src for src, (dst, conv) in fields.items() if dst == src and conv is None)
    others = [src for src in fields if src not in as_is]
    return msgspec.defstruct(
        f"_Mapped_{list_name}",
        [(src, Any, None) for src in as_is + others],
        rename={src: fields[src][0] for src in others},
        omit_defaults=True,
        gc=False,
    )


@cache
def _quality_limitation_fields() -> dict[str, tuple[tuple[str, str], ...]]:
    """Per kind, the qualityLimitationDurations keys the 2.x outbound track record has (video only)."""
    v2 = v2_record_fields()
    return {
        kind: tuple(p for p in _QUALITY_LIMITATION_DURATIONS if p[1] in v2[record])
        for kind, record in (("audio", "OutboundAudioTrack"), ("video", "OutboundVideoTrack"))
    }


def _mapped_peer_connections(pcs: Sequence[Any]) -> list[MappedPeerConnection]:
    """Every record of the wire peer connections ``pcs`` as dicts of the fields its plans keep, 2.x names.

    One ``convert`` and one ``to_builtins`` for the whole sample; fields missing or null are left out.
    The dicts are fresh: the caller may change them.
    """
    peer_connections, _ = _layout()
    return msgspec.to_builtins(msgspec.convert(pcs, peer_connections, from_attributes=True))


def _as_record(stats: Stats, view: _View) -> Stats:
    """``stats`` (a mapped dict) made the record ``view`` describes, in place: dropped fields removed,
    values converted to their 2.x type."""
    dropped = view.dropped
    if dropped and not stats.keys().isdisjoint(dropped):
        for name in dropped:
            stats.pop(name, None)
    if view.conversions:
        _convert(stats, view)
    return stats


def _convert(stats: Stats, view: _View) -> None:
    """The values of ``stats`` whose 2.x type differs converted to it, in place."""
    for name, conv in view.conversions:
        value = stats.get(name)
        if value is not None:
            stats[name] = conv(value)


def _merge(stats: Stats, part: Stats, view: _View) -> None:
    """Add to a track's ``stats`` the fields of ``part`` (an auxiliary object's mapped dict) that ``view`` keeps.

    ``part`` keeps its fields (another track or record may read them). Its values are converted in
    place, or, when it has fields ``view`` drops, in a copy without them.
    """
    dropped = view.dropped
    if dropped and not part.keys().isdisjoint(dropped):
        part = {name: value for name, value in part.items() if name not in dropped}
    if view.conversions:
        _convert(part, view)
    stats.update(part)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_client_sample_v3(obj: Any, origin: Origin) -> ClientSample:
    """Validate a 3.x ClientSample (JSON text or parsed) and map it onto the model; ``WireError`` for bad input."""
    return _sample_of(decode_typed(obj, client_sample_v3()), origin)


def client_sample_in_json(data: bytes, origin: Origin, max_string: int | None = None) -> tuple[ClientSample, bool]:
    """:func:`decode_client_sample_v3` of JSON text; the flag says whether no id of the sample is longer
    than ``max_string``.

    With ``max_string`` the text is decoded with every id bounded to that length first; if that fails
    (a longer id, or bad input the unbounded decoding then names) it is decoded again, unbounded.
    """
    if max_string is not None:
        try:
            c = decode_typed(data, client_sample_v3(max_string))
        except WireError:
            pass
        else:
            return sample_of_wire(c, origin, max_string)
    return decode_client_sample_v3(data, origin), False


def wire_sample_in_json(data: bytes, max_string: int | None, marking: tuple[str, ...]) -> Any:
    """JSON text decoded as a wire 3.x ClientSample, every id at most ``max_string`` long (if given),
    with the top-level keys named in ``marking`` kept unparsed (see :func:`~._wire_types.client_sample_v3`).

    ``WireError`` for text that is no such sample, ``msgspec.DecodeError`` for text that is not JSON."""
    return decode_typed(data, client_sample_v3(max_string, marking))


def sample_of_wire(c: Any, origin: Origin, max_string: int | None) -> tuple[ClientSample, bool]:
    """The model of the wire ClientSample ``c``, decoded with its ids bounded to ``max_string`` (or
    unbounded: None); the flag says whether no id of the sample is longer than ``max_string``."""
    sample = _sample_of(c, origin)
    return sample, max_string is not None and _attached_ids_within(sample, max_string)


def _sample_of(c: Any, origin: Origin) -> ClientSample:
    """The model of a validated wire ClientSample (a generated Struct: its fields are the schema's)."""
    client_id = c.clientId
    if not client_id:
        raise WireError("clientId is required")
    try:
        return _client_sample(c, client_id, origin)
    except (ValueError, OverflowError) as exc:  # int() of a NaN/infinite double
        if isinstance(exc, WireError):
            raise
        raise WireError(f"invalid number: {exc}") from None


def _attached_ids_within(sample: ClientSample, max_length: int) -> bool:
    """Are the ids the sample takes from free-form attachments and payloads (which decoding does not
    bound) at most ``max_length`` long? Its other ids are wire strings."""
    ids = [sample.room_id, sample.user_id, sample.marker]
    for e in sample.events:
        ids += (e.peer_connection_id, e.track_id)
    ids += (i.track_id for i in sample.issues)
    return all(value is None or len(value) <= max_length for value in ids)


def _client_sample(c: Any, client_id: str, origin: Origin) -> ClientSample:
    attachments = c.attachments
    room_id, user_id, marker = _attached_identity(attachments)
    sample = ClientSample(
        origin=origin,
        client_id=client_id,
        timestamp=_to_long(c.timestamp),
        call_id=c.callId,
        room_id=room_id,
        user_id=user_id,
        marker=marker,
        score=c.score,
        attachments=_json_text(attachments),
    )  # the list fields start as fresh empty lists (msgspec copies ``[]`` defaults)
    pcs = c.peerConnections
    if pcs:
        _, views = _layout()
        for pc_index, (pc, mapped) in enumerate(zip(pcs, _mapped_peer_connections(pcs), strict=True)):
            _peer_connection(pc, mapped, pc_index, sample, views)
    sample.events = [_event(e) for e in c.clientEvents or ()]
    sample.issues = [_issue(i) for i in c.clientIssues or ()]
    sample.meta = [
        MetaItem(
            type=m.type,
            payload=m.payload,
            peer_connection_id=m.peerConnectionId,
            track_id=m.trackId,
            ssrc=m.ssrc,
            timestamp=_int_or_none(m.timestamp),
        )
        for m in c.clientMetaItems or ()
    ]
    sample.extensions = [Extension(type=x.type, payload=_json_text(x.payload) or "") for x in c.extensionStats or ()]
    return sample


def _peer_connection(pc: Any, mapped: MappedPeerConnection, pc_index: int, sample: ClientSample, views: dict[str, _View]) -> None:
    """Add the records of the wire peer connection ``pc`` to ``sample``; ``mapped`` holds their stats dicts."""
    pc_id: str = pc.peerConnectionId
    sample.peer_connections.append(
        PeerConnection(peer_connection_id=pc_id, score=pc.score, attachments=_json_text(pc.attachments))
    )
    decoded_codecs: set[str] = set()
    encoded_codecs: set[str] = set()
    if pc.inboundRtps:
        _inbound_tracks(pc, mapped, pc_index, sample, views, decoded_codecs)
    if pc.outboundRtps:
        _outbound_tracks(pc, mapped, pc_index, sample, views, encoded_codecs)

    transports = pc.iceTransports or ()
    _extend(sample.transports, mapped["iceTransports"], views["transport"], pc_id)

    pairs = pc.iceCandidatePairs or ()
    mapped_pairs = mapped["iceCandidatePairs"]
    if mapped_pairs:
        _extend(sample.candidate_pairs, mapped_pairs, views["candidate-pair"], pc_id)
        for out in mapped_pairs:
            state = out.get("state")
            if state is not None:
                out["state"] = _PAIR_STATES.get(state, state)

    candidates = pc.iceCandidates
    if candidates:
        _candidates(candidates, mapped["iceCandidates"] or [], pairs, transports, pc_id, sample, views)

    _extend(sample.data_channels, mapped["dataChannels"], views["data-channel"], pc_id)
    _extend(sample.certificates, mapped["certificates"], views["certificate"], pc_id)
    _extend(sample.media_sources, mapped["mediaSources"], views["media-source"], pc_id)

    codecs = pc.codecs
    mapped_codecs = mapped["codecs"]
    if codecs and mapped_codecs:
        _extend(sample.codecs, mapped_codecs, views["codec"], pc_id)
        for codec, out in zip(codecs, mapped_codecs, strict=True):
            # W3C dropped RTCCodecStats.codecType; tell it from which RTP streams use the codec.
            codec_id = codec.id
            if codec_id in decoded_codecs:
                if codec_id not in encoded_codecs:
                    out["codecType"] = "decode"
            elif codec_id in encoded_codecs:
                out["codecType"] = "encode"


def _inbound_tracks(
    pc: Any,
    mapped: MappedPeerConnection,
    pc_index: int,
    sample: ClientSample,
    views: dict[str, _View],
    decoded_codecs: set[str],
) -> None:
    """One ``Track`` per inbound-rtp, with its remote-outbound-rtp and (audio) its media-playout."""
    pc_id: str = pc.peerConnectionId
    remote_outbounds = list(zip(pc.remoteOutboundRtps or (), mapped["remoteOutboundRtps"] or (), strict=True))
    ro_by_id = {r.id: part for r, part in remote_outbounds}
    ro_by_local_id = {r.localId: part for r, part in remote_outbounds if r.localId is not None}
    ro_by_ssrc = {r.ssrc: part for r, part in remote_outbounds}
    playouts = {p.id: part for p, part in zip(pc.mediaPlayouts or (), mapped["mediaPlayouts"] or (), strict=True)}
    for rtp, stats in zip(pc.inboundRtps, mapped["inboundRtps"] or (), strict=True):
        kind = _kind(rtp, pc_index, "inboundRtps", pc)
        _as_record(stats, views["inbound-rtp/" + kind])
        remote = ro_by_id.get(rtp.remoteId)
        if remote is None:
            remote = ro_by_local_id.get(rtp.id)
            if remote is None:
                remote = ro_by_ssrc.get(rtp.ssrc)
        if remote is not None:
            _merge(stats, remote, views["remote-outbound-rtp/" + kind])
        if kind == "audio" and rtp.playoutId is not None:
            playout = playouts.get(rtp.playoutId)
            if playout is not None:
                _merge(stats, playout, views["media-playout/audio"])
        if rtp.codecId is not None:
            decoded_codecs.add(rtp.codecId)
        sample.inbound_tracks.append(
            Track(kind=kind, ssrc=rtp.ssrc, peer_connection_id=pc_id, track_id=rtp.trackIdentifier, stats=stats)
        )


def _outbound_tracks(
    pc: Any,
    mapped: MappedPeerConnection,
    pc_index: int,
    sample: ClientSample,
    views: dict[str, _View],
    encoded_codecs: set[str],
) -> None:
    """One ``Track`` per outbound-rtp, with its quality limitation, remote-inbound-rtp and media-source."""
    pc_id: str = pc.peerConnectionId
    remote_inbounds = list(zip(pc.remoteInboundRtps or (), mapped["remoteInboundRtps"] or (), strict=True))
    ri_by_local_id = {r.localId: part for r, part in remote_inbounds if r.localId is not None}
    ri_by_id = {r.id: part for r, part in remote_inbounds}
    ri_by_ssrc = {r.ssrc: part for r, part in remote_inbounds}
    sources = {s.id: (s, part) for s, part in zip(pc.mediaSources or (), mapped["mediaSources"] or (), strict=True)}
    quality_limitation = _quality_limitation_fields()
    for rtp, stats in zip(pc.outboundRtps, mapped["outboundRtps"] or (), strict=True):
        kind = _kind(rtp, pc_index, "outboundRtps", pc)
        _as_record(stats, views["outbound-rtp/" + kind])
        durations = rtp.qualityLimitationDurations
        if durations is not None and quality_limitation[kind]:
            for key, name in quality_limitation[kind]:
                duration = getattr(durations, key)
                if duration is not None:  # a browser may leave one out
                    stats[name] = duration
        remote = ri_by_local_id.get(rtp.id)
        if remote is None:
            remote = ri_by_id.get(rtp.remoteId)
            if remote is None:
                remote = ri_by_ssrc.get(rtp.ssrc)
        if remote is not None:
            _merge(stats, remote, views["remote-inbound-rtp/" + kind])
        track_id = None
        source = sources.get(rtp.mediaSourceId)
        if source is not None:
            _merge(stats, source[1], views["media-source/" + kind])
            track_id = source[0].trackIdentifier
        if rtp.codecId is not None:
            encoded_codecs.add(rtp.codecId)
        sample.outbound_tracks.append(Track(kind=kind, ssrc=rtp.ssrc, peer_connection_id=pc_id, track_id=track_id, stats=stats))


def _extend(into: list[Stats], records: list[Stats] | None, view: _View, pc_id: str) -> None:
    """Add the mapped ``records`` to ``into`` as records of ``view``, each naming its peer connection."""
    if records:
        if view.dropped or view.conversions:
            for stats in records:
                _as_record(stats, view)
        for stats in records:
            stats["peerConnectionId"] = pc_id
        into.extend(records)


def _kind(rtp: Any, pc_index: int, field: str, pc: Any) -> MediaKind:
    kind = rtp.kind
    if kind == "audio" or kind == "video":
        return kind
    at = f"$.peerConnections[{pc_index}].{field}[{getattr(pc, field).index(rtp)}].kind"
    raise WireError(f"kind must be 'audio' or 'video', got {kind!r} - at `{at}`")


def _candidates(
    candidates: Sequence[Any],
    mapped: list[Stats],
    pairs: Sequence[Any],
    transports: Sequence[Any],
    pc_id: str,
    sample: ClientSample,
    views: dict[str, _View],
) -> None:
    """Each 3.x ``iceCandidates`` entry (its mapped dict in ``mapped``) as a local or a remote candidate."""
    # A transport's selected pair is itself one of ``pairs``, so its local candidate is covered here;
    # a selected pair the client did not send names no candidate we could look up.
    local_ids = {p.localCandidateId for p in pairs if p.localCandidateId is not None}
    remote_ids = {p.remoteCandidateId for p in pairs if p.remoteCandidateId is not None}
    local_ufrags = {t.iceLocalUsernameFragment for t in transports if t.iceLocalUsernameFragment is not None}
    local_view = views["local-candidate"]
    remote_view = views["remote-candidate"]
    for cand, stats in zip(candidates, mapped, strict=True):
        if _is_local(cand, local_ids, remote_ids, local_ufrags):
            _as_record(stats, local_view)["peerConnectionId"] = pc_id
            sample.local_candidates.append(stats)
        else:
            _as_record(stats, remote_view)["peerConnectionId"] = pc_id
            sample.remote_candidates.append(stats)


def _is_local(cand: Any, local_ids: set[str], remote_ids: set[str], local_ufrags: set[str]) -> bool:
    """Is this 3.x ``iceCandidates`` entry one of our own candidates?

    1. A candidate pair names it: ``localCandidateId`` -> local, ``remoteCandidateId`` -> remote
       (named as both, which a browser never does: local).
    2. It has ``url`` or ``relayProtocol``: W3C defines both for local candidates only.
    3. It has ``usernameFragment``: equal to a transport's ``iceLocalUsernameFragment`` -> local; if the
       transports do name their local ufrag and this is not one of them -> remote.
    4. Otherwise local. ``candidateType`` says nothing about the side (host/srflx/prflx/relay occur on
       both), so it is not used.
    """
    cand_id = cand.id
    if cand_id in local_ids:
        return True
    if cand_id in remote_ids:
        return False
    if cand.url is not None or cand.relayProtocol is not None:
        return True
    ufrag = cand.usernameFragment
    if ufrag is not None and local_ufrags:
        return ufrag in local_ufrags
    return True


def _event(e: Any) -> ClientEvent:
    payload = e.payload
    pc_id = track_id = None
    if isinstance(payload, dict):
        pc_id = _text_or_none(payload.get("peerConnectionId"))
        track_id = _text_or_none(payload.get("trackId"))
    return ClientEvent(
        name=e.type,
        value=_json_text(payload),
        peer_connection_id=pc_id,
        track_id=track_id,
        timestamp=_int_or_none(e.timestamp),
    )


def _issue(i: Any) -> ClientIssue:
    payload = i.payload
    return ClientIssue(
        name=i.type,
        message=i.key,
        track_id=_text_or_none(payload.get("trackId")) if isinstance(payload, dict) else None,
        attachments=_json_text(payload),
        timestamp=_int_or_none(i.timestamp),
    )


def _attached_identity(attachments: Any) -> tuple[str | None, str | None, str | None]:
    """roomId/userId/marker from the sample's attachments (an object, or a JSON object as text)."""
    if isinstance(attachments, str):
        if not attachments.startswith("{"):
            return None, None, None
        try:
            attachments = orjson.loads(attachments)
        except orjson.JSONDecodeError:
            return None, None, None
    if not isinstance(attachments, dict):
        return None, None, None
    room_id, user_id, marker = (_scalar_text(attachments.get(k)) for k in _ATTACHED_IDENTITY)
    return room_id, user_id, marker


def _json_text(value: Any) -> str | None:
    """3.5 sends attachments/payloads as objects, earlier 3.x (and protobuf) as JSON text: keep text."""
    return as_text(value)


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: Any) -> int | None:
    return None if value is None else _to_long(value)


def _to_long(value: Any) -> int:
    """A W3C double where 2.x has an Avro ``long``, truncated; past 64 bits it cannot be represented."""
    number = int(value)  # ValueError/OverflowError for NaN and infinities, turned into WireError above
    if not LONG_MIN <= number <= LONG_MAX:
        raise WireError(f"{value} is out of range for a long")
    return number


def _to_int32(value: Any) -> int:
    number = int(value)
    if not INT32_MIN <= number <= INT32_MAX:
        raise WireError(f"{value} is out of range for an int")
    return number
