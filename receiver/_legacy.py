"""Legacy PeerConnectionSample v20200114 (ObserveRTC observer 0.x, "observer.js"/WebExtrApp, 2020-2021).

One JSON object per websocket message on ``/pcsamples/{serviceUUID}/{mediaUnitId}``, describing **one**
peer connection. :func:`decode_pc_sample` maps it onto the flat internal model (the 2.x ClientSample
shape): per-SSRC merged tracks, ICE records and meta items, with stats keyed by the 2.x field names so
that report derivation can copy them.

Notes on the wire, read from the old observer's Jackson DTO and from webextrapp's StatsMap, which
differ from ``schema.md``:

* Enums: schema.md lists the Java constant names (``AUDIO``, ``IN_PROGRESS``...), but the browser sent the
  raw W3C strings (``audio``, ``in-progress``, ``udp``) and the DTO parsed the lower-case forms. Both are
  accepted here, case-insensitively; ``UNKNOWN``/empty means "absent".
* ``deviceList`` and ``clientDetails`` (added 2021-01) and ``tracks[].frameWidth/frameHeight`` (0.8.0) are in
  the DTO but not in schema.md; they are decoded.
* webextrapp concatenates the ICE stats of every receiver's and sender's ``getStats()``, so candidate
  pairs and candidates repeat; they are de-duplicated by id. The same holds for RTP stats, merged per SSRC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import msgspec

from webrtc_observer.model import ClientSample, Extension, MediaKind, MetaItem, Origin, PeerConnection, Stats, Track
from webrtc_observer.schemas import avro_schema

from ._wire_types import INT32_MAX, INT32_MIN, LONG_MAX, LONG_MIN, Long, WireError, validate

__all__ = ["PeerConnectionSample", "decode_pc_sample"]


# --------------------------------------------------------------------------------------------------
# Wire types (schema.md tables + the DTO-only fields). Every field optional, unknown fields ignored,
# enums as str (normalised after validation).
# --------------------------------------------------------------------------------------------------


class ICECandidatePair(msgspec.Struct, kw_only=True, omit_defaults=True):
    availableOutgoingBitrate: float | None = None  # "integer" in schema.md; 2.x is double
    bytesReceived: Long | None = None
    bytesSent: Long | None = None
    consentRequestsSent: Long | None = None
    currentRoundTripTime: float | None = None
    id: str | None = None
    localCandidateId: str | None = None
    nominated: bool | None = None
    priority: float | None = None  # a 64-bit unsigned pair priority can exceed int64; unused anyway
    remoteCandidateId: str | None = None
    requestsReceived: Long | None = None
    requestsSent: Long | None = None
    responsesReceived: Long | None = None
    responsesSent: Long | None = None
    state: str | None = None
    totalRoundTripTime: float | None = None
    transportId: str | None = None
    writable: bool | None = None


class ICELocalCandidate(msgspec.Struct, kw_only=True, omit_defaults=True):
    candidateType: str | None = None
    deleted: bool | None = None
    id: str | None = None
    ip: str | None = None
    isRemote: bool | None = None
    networkType: str | None = None
    port: Long | None = None
    priority: Long | None = None
    protocol: str | None = None
    transportId: str | None = None


class ICERemoteCandidate(msgspec.Struct, kw_only=True, omit_defaults=True):
    candidateType: str | None = None
    deleted: bool | None = None
    id: str | None = None
    ip: str | None = None
    isRemote: bool | None = None
    port: Long | None = None
    priority: Long | None = None
    protocol: str | None = None
    transportId: str | None = None


class ICEStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    candidatePairs: list[ICECandidatePair] | None = None
    localCandidates: list[ICELocalCandidate] | None = None
    remoteCandidates: list[ICERemoteCandidate] | None = None


class InboundRTPStreamStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    bytesReceived: Long | None = None
    codecId: str | None = None
    decoderImplementation: str | None = None
    estimatedPlayoutTimestamp: float | None = None
    fecPacketsDiscarded: Long | None = None
    fecPacketsReceived: Long | None = None
    firCount: Long | None = None
    framesDecoded: Long | None = None
    headerBytesReceived: Long | None = None
    id: str | None = None
    isRemote: bool | None = None
    jitter: float | None = None
    keyFramesDecoded: Long | None = None
    lastPacketReceivedTimestamp: float | None = None
    mediaType: str | None = None
    nackCount: Long | None = None
    packetsLost: Long | None = None
    packetsReceived: Long | None = None
    pliCount: Long | None = None
    qpSum: float | None = None
    ssrc: Long | None = None
    totalDecodeTime: float | None = None
    totalInterFrameDelay: float | None = None
    totalSquaredInterFrameDelay: float | None = None
    trackId: str | None = None
    transportId: str | None = None


class OutboundRTPStreamStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    bytesSent: Long | None = None
    codecId: str | None = None
    encoderImplementation: str | None = None
    firCount: Long | None = None
    framesEncoded: Long | None = None
    headerBytesSent: Long | None = None
    id: str | None = None
    isRemote: bool | None = None
    keyFramesEncoded: Long | None = None
    mediaSourceId: str | None = None
    mediaType: str | None = None
    nackCount: Long | None = None
    packetsSent: Long | None = None
    pliCount: Long | None = None
    qpSum: float | None = None
    qualityLimitationReason: str | None = None
    qualityLimitationResolutionChanges: Long | None = None
    remoteId: str | None = None
    retransmittedBytesSent: Long | None = None
    retransmittedPacketsSent: Long | None = None
    ssrc: Long | None = None
    totalEncodedBytesTarget: Long | None = None
    totalEncodeTime: float | None = None
    totalPacketSendDelay: float | None = None
    trackId: str | None = None
    transportId: str | None = None


class RemoteInboundRTPStreamStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    codecId: str | None = None
    id: str | None = None
    jitter: float | None = None
    localId: str | None = None
    mediaType: str | None = None
    packetsLost: Long | None = None
    roundTripTime: float | None = None
    ssrc: Long | None = None
    transportId: str | None = None


class MediaSourceStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    audioLevel: float | None = None
    framesPerSecond: float | None = None
    height: float | None = None
    id: str | None = None
    mediaType: str | None = None
    totalAudioEnergy: float | None = None
    totalSamplesDuration: float | None = None
    trackId: str | None = None
    width: float | None = None


class RTCTrackStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    concealedSamples: Long | None = None
    concealmentEvents: Long | None = None
    detached: bool | None = None
    ended: bool | None = None
    frameHeight: Long | None = None  # DTO only (observer 0.8.0)
    framesDecoded: Long | None = None
    framesDropped: Long | None = None
    framesReceived: Long | None = None
    frameWidth: Long | None = None  # DTO only (observer 0.8.0)
    hugeFramesSent: Long | None = None
    id: str | None = None
    insertedSamplesForDeceleration: Long | None = None
    jitterBufferDelay: float | None = None
    jitterBufferEmittedCount: Long | None = None
    mediaSourceId: str | None = None
    mediaType: str | None = None
    remoteSource: bool | None = None
    removedSamplesForAcceleration: Long | None = None
    samplesDuration: float | None = None
    silentConcealedSamples: Long | None = None
    totalSamplesReceived: Long | None = None
    trackIdentifier: str | None = None  # not in v20200114; the MediaStreamTrack id, if an integration sends it


class RTCStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    inboundRTPStats: list[InboundRTPStreamStats] | None = None
    mediaSources: list[MediaSourceStats] | None = None
    outboundRTPStats: list[OutboundRTPStreamStats] | None = None
    remoteInboundRTPStats: list[RemoteInboundRTPStreamStats] | None = None
    tracks: list[RTCTrackStats] | None = None


class ExtensionStat(msgspec.Struct, kw_only=True, omit_defaults=True):
    extensionType: str | None = None
    payload: str | dict[str, Any] | None = None  # a string on the wire; an object is taken and re-encoded


class UserMediaError(msgspec.Struct, kw_only=True, omit_defaults=True):
    message: str | None = None


class MediaDeviceInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    deviceId: str | None = None
    groupId: str | None = None
    kind: str | None = None
    label: str | None = None


class BrowserDetails(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    version: str | None = None


class OSDetails(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    version: str | None = None
    versionName: str | None = None


class PlatformDetails(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str | None = None
    vendor: str | None = None
    model: str | None = None


class EngineDetails(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    version: str | None = None


class ClientDetails(msgspec.Struct, kw_only=True, omit_defaults=True):
    browser: BrowserDetails | None = None
    os: OSDetails | None = None
    platform: PlatformDetails | None = None
    engine: EngineDetails | None = None


class PeerConnectionSample(msgspec.Struct, kw_only=True, omit_defaults=True):
    browserId: str | None = None
    iceStats: ICEStats | None = None
    peerConnectionId: str | None = None
    receiverStats: RTCStats | None = None
    senderStats: RTCStats | None = None
    timeZoneOffsetInMinute: Long | None = None
    timestamp: Long | None = None
    callId: str | None = None
    userId: str | None = None
    extensions: list[ExtensionStat] | None = None
    userMediaErrors: list[UserMediaError] | None = None
    deviceList: list[MediaDeviceInfo] | None = None
    clientDetails: ClientDetails | None = None
    marker: str | None = None


# --------------------------------------------------------------------------------------------------
# Field maps: legacy field name -> 2.x field name, per source record. A target only lands in a record
# whose 2.x Avro type has that field (e.g. framesDecoded only in InboundVideoTrack), see _allowed().
# --------------------------------------------------------------------------------------------------


def _same(*names: str) -> dict[str, str]:
    return {n: n for n in names}


# inbound-rtp -> Inbound{Audio,Video}Track
_INBOUND_RTP = _same(
    "packetsReceived", "packetsLost", "jitter", "lastPacketReceivedTimestamp", "headerBytesReceived",
    "fecPacketsReceived", "fecPacketsDiscarded", "bytesReceived", "nackCount", "estimatedPlayoutTimestamp",
    "decoderImplementation", "framesDecoded", "keyFramesDecoded", "qpSum", "totalDecodeTime",
    "totalInterFrameDelay", "totalSquaredInterFrameDelay", "firCount", "pliCount",
)  # fmt: skip
# legacy receiver "track" stats -> Inbound{Audio,Video}Track (inbound-rtp wins where both have a field)
_RECEIVER_TRACK = {
    **_same(
        "jitterBufferDelay", "jitterBufferEmittedCount", "totalSamplesReceived", "concealedSamples",
        "silentConcealedSamples", "concealmentEvents", "insertedSamplesForDeceleration",
        "removedSamplesForAcceleration", "framesDecoded", "framesDropped", "framesReceived", "frameWidth",
        "frameHeight",
    ),
    "samplesDuration": "totalSamplesDuration",
}  # fmt: skip
# outbound-rtp with isRemote=true (Firefox <= 68: the remote sender report about our inbound stream)
_REMOTE_VIEW_OF_INBOUND = _same("packetsSent", "bytesSent")

# outbound-rtp -> Outbound{Audio,Video}Track
_OUTBOUND_RTP = _same(
    "packetsSent", "bytesSent", "headerBytesSent", "retransmittedPacketsSent", "retransmittedBytesSent",
    "totalEncodedBytesTarget", "totalPacketSendDelay", "nackCount", "encoderImplementation", "framesEncoded",
    "keyFramesEncoded", "qpSum", "totalEncodeTime", "qualityLimitationReason",
    "qualityLimitationResolutionChanges", "firCount", "pliCount",
)  # fmt: skip
# remote-inbound-rtp of the same SSRC -> Outbound{Audio,Video}Track
_REMOTE_INBOUND = _same("packetsLost", "jitter", "roundTripTime")
# inbound-rtp with isRemote=true (Firefox <= 68: the receiver report about our outbound stream)
_REMOTE_VIEW_OF_OUTBOUND = _same("packetsReceived", "packetsLost", "jitter")
# media-source of the outbound-rtp -> Outbound{Audio,Video}Track. The legacy sample has no encoded
# framesPerSecond on outbound-rtp, so the source's frame rate stands in for it.
_MEDIA_SOURCE = _same("audioLevel", "totalAudioEnergy", "totalSamplesDuration", "framesPerSecond", "width", "height")
# legacy sender "track" stats -> Outbound{Audio,Video}Track
_SENDER_TRACK = _same("hugeFramesSent", "frameWidth", "frameHeight")

# media-source -> MediaSourceStat (ClientSample.media_sources)
_MEDIA_SOURCE_STAT = {**_MEDIA_SOURCE, "trackId": "trackIdentifier", "mediaType": "kind"}
# candidate-pair -> IceCandidatePair (priority and writable have no 2.x field)
_CANDIDATE_PAIR = {
    "id": "candidatePairId",
    **_same(
        "transportId", "localCandidateId", "remoteCandidateId", "state", "nominated", "bytesSent",
        "bytesReceived", "totalRoundTripTime", "currentRoundTripTime", "availableOutgoingBitrate",
        "requestsReceived", "requestsSent", "responsesReceived", "responsesSent", "consentRequestsSent",
    ),
}  # fmt: skip
# local-/remote-candidate -> IceLocalCandidate/IceRemoteCandidate (deleted, isRemote, networkType and
# transportId have no 2.x field)
_CANDIDATE = {"ip": "address", **_same("id", "port", "protocol", "candidateType", "priority")}

# clientDetails sub-object -> CallMetaType
_CLIENT_DETAILS_META = (
    ("browser", "BROWSER"),
    ("os", "OPERATION_SYSTEM"),
    ("platform", "PLATFORM"),
    ("engine", "ENGINE"),
)
# deviceList entry -> 2.x MediaDevice payload
_MEDIA_DEVICE = {"deviceId": "id", "kind": "kind", "label": "label"}

# The identity fields of a 2.x track record are Track attributes, not stats (as in the 2.x decoder).
_TRACK_IDENTITY = frozenset({"trackId", "peerConnectionId", "remoteClientId", "sfuStreamId", "sfuSinkId", "ssrc"})


def _enum(value: Any) -> str | None:
    """Legacy enums arrive as W3C strings or Java constant names; ``unknown``/empty mean absent."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    return None if text in ("", "unknown") else text


def _ice_state(value: Any) -> str | None:
    text = _enum(value)
    if text in ("in_progress", "inprogress"):
        return "in-progress"
    return text


def _device_kind(value: Any) -> str | None:
    text = _enum(value)
    return text.replace("_", "") if text else None  # AUDIO_INPUT -> audioinput


# 2.x field name -> normaliser, applied to every mapped value of that name.
_NORMALISERS: dict[str, Callable[[Any], Any]] = {
    "state": _ice_state,
    "protocol": _enum,
    "candidateType": _enum,
    "qualityLimitationReason": _enum,
    "kind": _enum,
}


# --------------------------------------------------------------------------------------------------
# 2.x field sets and types, read once from Samples.avsc.
# --------------------------------------------------------------------------------------------------

_INT_TYPES = frozenset({"int", "long"})
_INT32 = "int32"  # the coercion target of an Avro int (``int`` stands for a long)
_FLOAT_TYPES = frozenset({"float", "double"})


@cache
def _avro_records() -> dict[str, dict[str, Any]]:
    """Every record of the 2.x Samples schema: name -> {field name -> coercion target}.

    The target is ``int`` (a long), ``_INT32``, ``float``, ``str``, ``bool`` or a frozenset of enum symbols.
    """
    records: dict[str, dict[str, Any]] = {}

    def leaf(t: Any) -> Any:
        if isinstance(t, list):
            members = [m for m in t if m != "null"]
            return leaf(members[0]) if len(members) == 1 else None
        if isinstance(t, dict):
            if t["type"] == "enum":
                return frozenset(t["symbols"])
            if t["type"] in ("record", "array", "map"):
                walk(t)
                return None
            return leaf(t["type"])
        if t == "int":
            return _INT32
        if t in _INT_TYPES:
            return int
        if t in _FLOAT_TYPES:
            return float
        return {"string": str, "boolean": bool}.get(t)

    def walk(t: Any) -> None:
        if isinstance(t, list):
            for member in t:
                walk(member)
        elif isinstance(t, dict):
            if t["type"] == "record":
                records[t["name"]] = {f["name"]: leaf(f["type"]) for f in t["fields"]}
            elif t["type"] == "array":
                walk(t["items"])
            elif t["type"] == "map":
                walk(t["values"])

    walk(avro_schema("v2_2_11", "Samples.avsc"))
    return records


@cache
def _allowed(record: str) -> dict[str, Any]:
    """The stats fields (and their coercion targets) of a 2.x record; track identity fields excluded."""
    fields = _avro_records()[record]
    if record.endswith("Track"):
        return {name: t for name, t in fields.items() if name not in _TRACK_IDENTITY}
    return fields


def _coerce(value: Any, target: Any) -> Any:
    """Fit a validated legacy value to the 2.x type (e.g. legacy double ``qpSum`` -> 2.x long).

    None (the field is left out) where the value has no 2.x representation.
    """
    if target is _INT32:
        value = _coerce(value, int)
        return value if value is not None and INT32_MIN <= value <= INT32_MAX else None
    if target is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float):
            value = round(value) if math.isfinite(value) else None
        return value if value is not None and LONG_MIN <= value <= LONG_MAX else None
    if target is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None
    if target is str:
        return value if isinstance(value, str) else None
    if target is bool:
        return value if isinstance(value, bool) else None
    if isinstance(target, frozenset):
        return value if value in target else None
    return None


def _put(stats: Stats, source: Mapping[str, Any] | None, field_map: Mapping[str, str], allowed: Mapping[str, Any]) -> None:
    """Copy ``source``'s mapped fields into ``stats`` where the 2.x record has them; earlier sources win."""
    if not source:
        return
    for legacy, target in field_map.items():
        if target in stats or target not in allowed or legacy not in source:
            continue
        value = source[legacy]
        normalise = _NORMALISERS.get(target)
        if normalise is not None:
            value = normalise(value)
        value = _coerce(value, allowed[target])
        if value is not None:
            stats[target] = value


_Source = tuple[Mapping[str, Any] | None, Mapping[str, str]]
"""A stats object (or None) and the field map to read it with."""


def _record(record: str, sources: Iterable[_Source], **identity: Any) -> Stats:
    """A 2.x ``record`` built from ``sources`` in priority order, starting with the ``identity`` fields."""
    allowed = _allowed(record)
    stats: Stats = {k: v for k, v in identity.items() if v is not None}
    for source, field_map in sources:
        _put(stats, source, field_map, allowed)
    return stats


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def decode_pc_sample(obj: Any, origin: Origin) -> ClientSample:
    """Decode one PeerConnectionSample v20200114 (parsed, or its JSON text) into a :class:`ClientSample`.

    Raises :class:`WireError` when ``obj`` does not have the v20200114 shape (the message names the path)
    or has no ``peerConnectionId`` and is not a user-media-error report.
    """
    s = validate(obj, PeerConnectionSample)
    pc_id = s.get("peerConnectionId") or None
    browser_id = s.get("browserId") or None
    errors = [e["message"] for e in s.get("userMediaErrors", ()) if e.get("message")]
    if pc_id is None and not errors:
        # The old observer dropped such samples too, unless they carried userMediaErrors.
        raise WireError("peerConnectionId is required - at `$.peerConnectionId`")

    # The legacy client had no client id: the browser fingerprint identified a browser across its peer
    # connections. Without it, the peer connection stands in (one client per peer connection).
    client_id = browser_id or pc_id or "unknown"
    minutes = s.get("timeZoneOffsetInMinute")
    call_id = s.get("callId") or None
    sample = ClientSample(
        origin=origin,
        client_id=client_id,
        timestamp=s.get("timestamp", origin.received_at),
        # callId is the app's *call name* within a service (the old observer's "callName"), not a
        # collector-generated call UUID. Keep it as call_id, as the client sent it, and also expose it as
        # room_id: the correlation stage groups clients by room when it has to assign calls itself, which
        # is how the old observer treated callName (several PCs with the same name = one call).
        call_id=call_id,
        room_id=call_id,
        user_id=s.get("userId") or None,
        marker=s.get("marker"),
        # JS getTimezoneOffset(): minutes, UTC minus local (CET = -60). Kept with that sign.
        time_zone_offset_hours=minutes // 60 if minutes is not None and minutes % 60 == 0 else None,
        browser_id=browser_id,
        meta=_meta(s, errors),
        extensions=_extensions(s.get("extensions", ())),
    )
    if pc_id is None:
        # A user-media-error report (getUserMedia failed before any peer connection existed): meta only;
        # any stats in it cannot be attached to a peer connection and are ignored.
        return sample

    receiver = s.get("receiverStats") or {}
    sender = s.get("senderStats") or {}
    tracks = _by_id(_entries("tracks", receiver, sender))
    media_sources = _by_id(_entries("mediaSources", sender, receiver))
    sample.peer_connections = [PeerConnection(peer_connection_id=pc_id)]
    sample.inbound_tracks = _inbound_tracks(pc_id, receiver, sender, tracks)
    sample.outbound_tracks = _outbound_tracks(pc_id, receiver, sender, tracks, media_sources)
    sample.media_sources = [
        _record("MediaSourceStat", [(src, _MEDIA_SOURCE_STAT)], peerConnectionId=pc_id) for src in media_sources.values()
    ]
    ice = s.get("iceStats") or {}
    sample.candidate_pairs = [
        _record("IceCandidatePair", [(pair, _CANDIDATE_PAIR)], peerConnectionId=pc_id)
        for pair in _by_id(ice.get("candidatePairs", ())).values()
    ]
    sample.local_candidates = [
        _record("IceLocalCandidate", [(c, _CANDIDATE)], peerConnectionId=pc_id)
        for c in _by_id(ice.get("localCandidates", ()), keep_anonymous=True).values()
    ]
    sample.remote_candidates = [
        _record("IceRemoteCandidate", [(c, _CANDIDATE)], peerConnectionId=pc_id)
        for c in _by_id(ice.get("remoteCandidates", ()), keep_anonymous=True).values()
    ]
    return sample


def _entries(key: str, *buckets: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The ``key`` list of each RTCStats bucket in turn (receiverStats and senderStats have one shape)."""
    for bucket in buckets:
        yield from bucket.get(key, ())


def _merge_into(into: dict[str, Any], entry: Mapping[str, Any]) -> None:
    for k, v in entry.items():
        if k == "mediaType":
            v = _enum(v)
        if v is not None and k not in into:
            into[k] = v


def _by_id(entries: Iterable[Mapping[str, Any]], keep_anonymous: bool = False) -> dict[Any, dict[str, Any]]:
    """De-duplicate stats objects by ``id`` (first non-null value of each field wins)."""
    merged: dict[Any, dict[str, Any]] = {}
    for n, entry in enumerate(entries):
        key = entry.get("id")
        if key is None:
            if not keep_anonymous:
                continue
            key = ("anonymous", n)
        _merge_into(merged.setdefault(key, {}), entry)
    return merged


def _by_ssrc(entries: Iterable[Mapping[str, Any]], remote: bool) -> dict[int, dict[str, Any]]:
    """Group RTP stats by SSRC, keeping entries whose ``isRemote`` (absent = false) equals ``remote``."""
    merged: dict[int, dict[str, Any]] = {}
    for entry in entries:
        ssrc = entry.get("ssrc")
        if ssrc is None or bool(entry.get("isRemote")) != remote:
            continue
        _merge_into(merged.setdefault(ssrc, {}), entry)
    return merged


_KIND_HINT = re.compile(r"audio|video", re.IGNORECASE)


def _kind(*records: Mapping[str, Any] | None) -> MediaKind | None:
    """The media kind: the first ``mediaType`` that says audio/video, else a hint in the stats ids
    (Chrome's ``RTCInboundRTPAudioStream_...``, ``RTCCodec_video_...``, ``RTCAudioSource_...``)."""
    for rec in records:
        if rec and rec.get("mediaType") in ("audio", "video"):
            return rec["mediaType"]
    hints = {
        m.group(0).lower()
        for rec in records
        if rec
        for key in ("id", "codecId", "mediaSourceId")
        if isinstance(rec.get(key), str)
        for m in _KIND_HINT.finditer(rec[key])
    }
    return hints.pop() if len(hints) == 1 else None  # type: ignore[return-value]


def _inbound_tracks(
    pc_id: str, receiver: Mapping[str, Any], sender: Mapping[str, Any], tracks: Mapping[Any, dict[str, Any]]
) -> list[Track]:
    inbound = _by_ssrc(_entries("inboundRTPStats", receiver, sender), remote=False)
    remote_views = _by_ssrc(_entries("outboundRTPStats", receiver, sender), remote=True)
    result = []
    for ssrc, rtp in inbound.items():
        track = tracks.get(rtp.get("trackId"))
        kind = _kind(rtp, track)
        if kind is None:
            continue  # neither the stats nor the track say audio or video: nothing to report it as
        record = "InboundAudioTrack" if kind == "audio" else "InboundVideoTrack"
        stats = _record(
            record,
            [(rtp, _INBOUND_RTP), (track, _RECEIVER_TRACK), (remote_views.get(ssrc), _REMOTE_VIEW_OF_INBOUND)],
        )
        result.append(
            Track(
                kind=kind,
                ssrc=ssrc,
                peer_connection_id=pc_id,
                # The legacy trackId is the id of the W3C "track" stats object, not the MediaStreamTrack id;
                # it is the best id this generation has unless the track entry names the track itself.
                track_id=(track or {}).get("trackIdentifier") or rtp.get("trackId"),
                stats=stats,
            )
        )
    return result


def _outbound_tracks(
    pc_id: str,
    receiver: Mapping[str, Any],
    sender: Mapping[str, Any],
    tracks: Mapping[Any, dict[str, Any]],
    media_sources: Mapping[Any, dict[str, Any]],
) -> list[Track]:
    outbound = _by_ssrc(_entries("outboundRTPStats", sender, receiver), remote=False)
    remote_inbound = _by_ssrc(_entries("remoteInboundRTPStats", sender, receiver), remote=False)
    remote_views = _by_ssrc(_entries("inboundRTPStats", sender, receiver), remote=True)
    result = []
    for ssrc, rtp in outbound.items():
        track = tracks.get(rtp.get("trackId"))
        source = media_sources.get(rtp.get("mediaSourceId") or (track or {}).get("mediaSourceId"))
        kind = _kind(rtp, track, source, remote_inbound.get(ssrc))
        if kind is None:
            continue
        record = "OutboundAudioTrack" if kind == "audio" else "OutboundVideoTrack"
        stats = _record(
            record,
            [
                (rtp, _OUTBOUND_RTP),
                (remote_inbound.get(ssrc), _REMOTE_INBOUND),
                (remote_views.get(ssrc), _REMOTE_VIEW_OF_OUTBOUND),
                (source, _MEDIA_SOURCE),
                (track, _SENDER_TRACK),
            ],
        )
        result.append(
            Track(
                kind=kind,
                ssrc=ssrc,
                peer_connection_id=pc_id,
                # media-source.trackId is the MediaStreamTrack id (webextrapp filled it from
                # trackIdentifier); outbound-rtp.trackId is only the "track" stats object id.
                track_id=(source or {}).get("trackId") or (track or {}).get("trackIdentifier") or rtp.get("trackId"),
                stats=stats,
            )
        )
    return result


def _meta(s: Mapping[str, Any], errors: list[str]) -> list[MetaItem]:
    details = s.get("clientDetails") or {}
    meta = [MetaItem(type=t, payload=details[key]) for key, t in _CLIENT_DETAILS_META if details.get(key)]
    for device in s.get("deviceList", ()):
        payload = {
            target: value
            for legacy, target in _MEDIA_DEVICE.items()
            if (value := (_device_kind(device.get(legacy)) if legacy == "kind" else device.get(legacy))) is not None
        }
        if payload:
            meta.append(MetaItem(type="MEDIA_DEVICE", payload=payload))
    meta.extend(MetaItem(type="USER_MEDIA_ERROR", payload=message) for message in errors)
    return meta


def _extensions(extensions: Iterable[Mapping[str, Any]]) -> list[Extension]:
    result = []
    for ext in extensions:
        payload = ext.get("payload")
        if isinstance(payload, dict):
            payload = msgspec.json.encode(payload).decode()
        if ext.get("extensionType") is None and payload is None:
            continue
        # extensionType is a required string in the 2.x extension report; UNKNOWN is the legacy "absent".
        result.append(Extension(type=ext.get("extensionType") or "UNKNOWN", payload=payload or ""))
    return result
