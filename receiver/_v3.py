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

All of that is data: ``_PLAN_SPECS`` names, per target, the 3.x record, the 2.x record, renames and an
optional field whitelist; ``_plans()`` turns that into per-target lookups once, from the two Avro schemas.
Mapping a record is then one pass over the fields it carries plus a check of the few renamed/converted ones.

The sample is read as the validated wire structs (:func:`~._wire_types.decode_typed`), never turned
into dicts whole: only the fields a 2.x record keeps become the stats dicts of the model. A field
missing and a field sent as null read alike (None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

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

__all__ = ["decode_client_sample_v3"]

Conversion = Callable[[Any], Any]
Plan = tuple[type[msgspec.Struct], tuple[tuple[str, str, Conversion | None], ...]]
"""(a Struct of the 3.x fields copied as they are, (3.x name, 2.x name, conversion or None) for the rest).

Most fields keep name and type, so msgspec picks them out of a wire record in C (``convert`` to the
Struct from its attributes, then ``to_builtins``); the few renamed or converted ones are read one by one.
"""

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

# plan name: (3.x record, 2.x record, {3.x name: 2.x name}, only these 2.x fields or None for all)
_PLAN_SPECS: dict[str, tuple[str, str, dict[str, str], tuple[str, ...] | None]] = {
    "inbound-rtp/audio": ("InboundRtpStats", "InboundAudioTrack", {}, None),
    "inbound-rtp/video": ("InboundRtpStats", "InboundVideoTrack", {}, None),
    "remote-outbound-rtp/audio": ("RemoteOutboundRtpStats", "InboundAudioTrack", {}, _REMOTE_OUTBOUND_FIELDS),
    "remote-outbound-rtp/video": ("RemoteOutboundRtpStats", "InboundVideoTrack", {}, _REMOTE_OUTBOUND_FIELDS),
    "media-playout/audio": ("MediaPlayoutStats", "InboundAudioTrack", {}, _PLAYOUT_FIELDS),
    "outbound-rtp/audio": ("OutboundRtpStats", "OutboundAudioTrack", {}, None),
    "outbound-rtp/video": ("OutboundRtpStats", "OutboundVideoTrack", {}, None),
    "remote-inbound-rtp/audio": ("RemoteInboundRtpStats", "OutboundAudioTrack", {}, _REMOTE_INBOUND_FIELDS),
    "remote-inbound-rtp/video": ("RemoteInboundRtpStats", "OutboundVideoTrack", {}, _REMOTE_INBOUND_FIELDS),
    "media-source/audio": ("MediaSourceStats", "OutboundAudioTrack", {}, _MEDIA_SOURCE_TRACK_FIELDS),
    "media-source/video": ("MediaSourceStats", "OutboundVideoTrack", {}, _MEDIA_SOURCE_TRACK_FIELDS),
    "transport": ("IceTransportStats", "PeerConnectionTransport", {"id": "transportId"}, None),
    "candidate-pair": ("IceCandidatePairStats", "IceCandidatePair", {"id": "candidatePairId"}, None),
    "local-candidate": ("IceCandidateStats", "IceLocalCandidate", {}, None),
    "remote-candidate": ("IceCandidateStats", "IceRemoteCandidate", {}, None),
    "data-channel": (
        "DataChannelStats",
        "DataChannel",
        {"messagesSent": "messageSent", "messagesReceived": "messageReceived"},
        None,
    ),
    "codec": ("CodecStats", "MediaCodecStats", {}, None),
    "certificate": ("CertificateStats", "Certificate", {}, None),
    "media-source": ("MediaSourceStats", "MediaSourceStat", {}, None),
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


@cache
def _plans() -> dict[str, Plan]:
    v2 = v2_record_fields()
    v3 = _record_field_types(avro_schema("v3_5_0", "ClientSample.avsc"), {})
    plans: dict[str, Plan] = {}
    for name, (v3_record, v2_record, renames, only) in _PLAN_SPECS.items():
        target = v2[v2_record]
        keep: set[str] = set()
        special: list[tuple[str, str, Conversion | None]] = []
        for src, src_type in v3[v3_record].items():
            dst = renames.get(src, src)
            if dst not in target or dst == "peerConnectionId":
                continue
            if v2_record.endswith("Track") and dst in _TRACK_IDENTITY:
                continue
            if only is not None and dst not in only:
                continue
            conv = _conversion(src_type, target[dst])
            if dst == src and conv is None:
                keep.add(src)
            else:
                special.append((src, dst, conv))
        picker = msgspec.defstruct(
            f"_Keep{name.replace('/', '_').replace('-', '_')}",
            [(field, Any, None) for field in sorted(keep)],
            omit_defaults=True,
            gc=False,
        )
        plans[name] = (picker, tuple(special))
    return plans


@cache
def _quality_limitation_fields() -> dict[str, tuple[tuple[str, str], ...]]:
    """Per kind, the qualityLimitationDurations keys the 2.x outbound track record has (video only)."""
    v2 = v2_record_fields()
    return {
        kind: tuple(p for p in _QUALITY_LIMITATION_DURATIONS if p[1] in v2[record])
        for kind, record in (("audio", "OutboundAudioTrack"), ("video", "OutboundVideoTrack"))
    }


def _mapped(rec: Any, plan: Plan) -> Stats:
    """The fields of the wire record ``rec`` that ``plan`` knows, renamed and converted to their 2.x type."""
    picker, special = plan
    out: Stats = msgspec.to_builtins(msgspec.convert(rec, picker, from_attributes=True))
    for src, dst, conv in special:
        value = getattr(rec, src)
        if value is not None:
            out[dst] = value if conv is None else conv(value)
    return out


def _with_pc(rec: Any, plan: Plan, pc_id: str) -> Stats:
    out = _mapped(rec, plan)
    out["peerConnectionId"] = pc_id
    return out


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_client_sample_v3(obj: Any, origin: Origin) -> ClientSample:
    """Validate a 3.x ClientSample (JSON text or parsed) and map it onto the model; ``WireError`` for bad input."""
    c: Any = decode_typed(obj, client_sample_v3())  # a generated Struct: its fields are the schema's
    client_id = c.clientId
    if not client_id:
        raise WireError("clientId is required")
    try:
        return _client_sample(c, client_id, origin)
    except (ValueError, OverflowError) as exc:  # int() of a NaN/infinite double
        if isinstance(exc, WireError):
            raise
        raise WireError(f"invalid number: {exc}") from None


def _client_sample(c: Any, client_id: str, origin: Origin) -> ClientSample:
    plans = _plans()
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
    for pc_index, pc in enumerate(c.peerConnections or ()):
        _peer_connection(pc, pc_index, sample, plans)
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


def _peer_connection(pc: Any, pc_index: int, sample: ClientSample, plans: dict[str, Plan]) -> None:
    pc_id: str = pc.peerConnectionId
    sample.peer_connections.append(
        PeerConnection(peer_connection_id=pc_id, score=pc.score, attachments=_json_text(pc.attachments))
    )
    decoded_codecs: set[str] = set()
    encoded_codecs: set[str] = set()

    inbound_rtps = pc.inboundRtps
    if inbound_rtps:
        remote_outbounds = pc.remoteOutboundRtps or ()
        ro_by_id = {r.id: r for r in remote_outbounds}
        ro_by_local_id = {r.localId: r for r in remote_outbounds if r.localId is not None}
        ro_by_ssrc = {r.ssrc: r for r in remote_outbounds}
        playouts = {p.id: p for p in pc.mediaPlayouts or ()}
        for rtp in inbound_rtps:
            kind = _kind(rtp, pc_index, "inboundRtps", pc)
            stats = _mapped(rtp, plans["inbound-rtp/" + kind])
            remote = ro_by_id.get(rtp.remoteId) or ro_by_local_id.get(rtp.id) or ro_by_ssrc.get(rtp.ssrc)
            if remote is not None:
                stats.update(_mapped(remote, plans["remote-outbound-rtp/" + kind]))
            if kind == "audio" and rtp.playoutId is not None:
                playout = playouts.get(rtp.playoutId)
                if playout is not None:
                    stats.update(_mapped(playout, plans["media-playout/audio"]))
            if rtp.codecId is not None:
                decoded_codecs.add(rtp.codecId)
            sample.inbound_tracks.append(
                Track(kind=kind, ssrc=rtp.ssrc, peer_connection_id=pc_id, track_id=rtp.trackIdentifier, stats=stats)
            )

    outbound_rtps = pc.outboundRtps
    if outbound_rtps:
        remote_inbounds = pc.remoteInboundRtps or ()
        ri_by_local_id = {r.localId: r for r in remote_inbounds if r.localId is not None}
        ri_by_id = {r.id: r for r in remote_inbounds}
        ri_by_ssrc = {r.ssrc: r for r in remote_inbounds}
        sources = {s.id: s for s in pc.mediaSources or ()}
        quality_limitation = _quality_limitation_fields()
        for rtp in outbound_rtps:
            kind = _kind(rtp, pc_index, "outboundRtps", pc)
            stats = _mapped(rtp, plans["outbound-rtp/" + kind])
            durations = rtp.qualityLimitationDurations
            if durations is not None:
                for key, name in quality_limitation[kind]:
                    duration = getattr(durations, key)
                    if duration is not None:  # a browser may leave one out
                        stats[name] = duration
            remote = ri_by_local_id.get(rtp.id) or ri_by_id.get(rtp.remoteId) or ri_by_ssrc.get(rtp.ssrc)
            if remote is not None:
                stats.update(_mapped(remote, plans["remote-inbound-rtp/" + kind]))
            track_id = None
            source = sources.get(rtp.mediaSourceId)
            if source is not None:
                stats.update(_mapped(source, plans["media-source/" + kind]))
                track_id = source.trackIdentifier
            if rtp.codecId is not None:
                encoded_codecs.add(rtp.codecId)
            sample.outbound_tracks.append(
                Track(kind=kind, ssrc=rtp.ssrc, peer_connection_id=pc_id, track_id=track_id, stats=stats)
            )

    transports = pc.iceTransports or ()
    if transports:
        plan = plans["transport"]
        sample.transports.extend(_with_pc(t, plan, pc_id) for t in transports)

    pairs = pc.iceCandidatePairs or ()
    if pairs:
        plan = plans["candidate-pair"]
        for pair in pairs:
            out = _with_pc(pair, plan, pc_id)
            state = out.get("state")
            if state is not None:
                out["state"] = _PAIR_STATES.get(state, state)
            sample.candidate_pairs.append(out)

    candidates = pc.iceCandidates
    if candidates:
        _candidates(candidates, pairs, transports, pc_id, sample, plans)

    _extend(sample.data_channels, pc.dataChannels, plans["data-channel"], pc_id)
    _extend(sample.certificates, pc.certificates, plans["certificate"], pc_id)
    _extend(sample.media_sources, pc.mediaSources, plans["media-source"], pc_id)

    codecs = pc.codecs
    if codecs:
        plan = plans["codec"]
        for codec in codecs:
            out = _with_pc(codec, plan, pc_id)
            # W3C dropped RTCCodecStats.codecType; tell it from which RTP streams use the codec.
            codec_id = codec.id
            if codec_id in decoded_codecs:
                if codec_id not in encoded_codecs:
                    out["codecType"] = "decode"
            elif codec_id in encoded_codecs:
                out["codecType"] = "encode"
            sample.codecs.append(out)


def _extend(into: list[Stats], records: Sequence[Any] | None, plan: Plan, pc_id: str) -> None:
    if records:
        into.extend(_with_pc(r, plan, pc_id) for r in records)


def _kind(rtp: Any, pc_index: int, field: str, pc: Any) -> MediaKind:
    kind = rtp.kind
    if kind == "audio" or kind == "video":
        return kind
    at = f"$.peerConnections[{pc_index}].{field}[{getattr(pc, field).index(rtp)}].kind"
    raise WireError(f"kind must be 'audio' or 'video', got {kind!r} - at `{at}`")


def _candidates(
    candidates: Sequence[Any],
    pairs: Sequence[Any],
    transports: Sequence[Any],
    pc_id: str,
    sample: ClientSample,
    plans: dict[str, Plan],
) -> None:
    # A transport's selected pair is itself one of ``pairs``, so its local candidate is covered here;
    # a selected pair the client did not send names no candidate we could look up.
    local_ids = {p.localCandidateId for p in pairs if p.localCandidateId is not None}
    remote_ids = {p.remoteCandidateId for p in pairs if p.remoteCandidateId is not None}
    local_ufrags = {t.iceLocalUsernameFragment for t in transports if t.iceLocalUsernameFragment is not None}
    local_plan = plans["local-candidate"]
    remote_plan = plans["remote-candidate"]
    for cand in candidates:
        if _is_local(cand, local_ids, remote_ids, local_ufrags):
            sample.local_candidates.append(_with_pc(cand, local_plan, pc_id))
        else:
            sample.remote_candidates.append(_with_pc(cand, remote_plan, pc_id))


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
