"""Schemas 2.x (observer 1.0 era): the ``Samples`` wrapper and the ``ClientSample``/``SfuSample`` in it."""

from __future__ import annotations

from typing import Any

from webrtc_observer.model import (
    ClientEvent,
    ClientIssue,
    ClientSample,
    Extension,
    MetaItem,
    Origin,
    Sample,
    SfuSample,
    Track,
    TurnSample,
)

from ._wire_types import WireError, as_text, client_sample_v2, samples_v2, validate

# Client fields that describe the client itself, with the observer's CallMetaType for each.
_SINGLE_META = (("engine", "ENGINE"), ("platform", "PLATFORM"), ("browser", "BROWSER"), ("os", "OPERATION_SYSTEM"))
_LIST_META = (
    ("mediaConstraints", "MEDIA_CONSTRAINT"),
    ("mediaDevices", "MEDIA_DEVICE"),
    ("userMediaErrors", "USER_MEDIA_ERROR"),
    ("iceServers", "ICE_SERVER"),
    ("localSDPs", "LOCAL_SDP"),
)


def decode_samples(obj: Any, origin: Origin) -> list[Sample]:
    """A ``Samples`` wrapper: its samples (with ``controls.close`` on each client sample's ``closing``)."""
    return samples_of(validate(obj, samples_v2()), origin)


def wrapper_in_json(data: bytes, max_string: int | None = None) -> tuple[dict[str, Any] | None, bool]:
    """``data`` decoded as a ``Samples`` wrapper, if it is one: one pass for what most 2.x clients send.

    None when the JSON object has none of the wrapper's keys (it is another kind of sample). Raises
    ``msgspec.DecodeError`` for bytes that are not JSON and ``WireError`` for a wrapper that breaks
    the schema; JSON that is not an object also raises ``WireError``.

    With ``max_string`` it is decoded with every string bounded to that length first; the second
    value says whether that held (else it was decoded again, unbounded: a long string, or an error
    that decode names).
    """
    if max_string is not None:
        try:
            return validate(data, samples_v2(max_string)) or None, True
        except WireError:
            pass
    return validate(data, samples_v2()) or None, False


def samples_of(wrapper: dict[str, Any], origin: Origin) -> list[Sample]:
    """The samples of a validated wrapper; ``controls.close`` sets each client sample's ``closing``."""
    closing = bool((wrapper.get("controls") or {}).get("close"))
    samples: list[Sample] = [client_sample(c, origin, closing) for c in wrapper.get("clientSamples", ())]
    samples.extend(_sfu_sample(s, origin) for s in wrapper.get("sfuSamples", ()))
    samples.extend(_turn_sample(t, origin) for t in wrapper.get("turnSamples", ()))
    return samples


def decode_client_sample(obj: Any, origin: Origin) -> ClientSample:
    """A single 2.x ClientSample sent on its own."""
    return client_sample(validate(obj, client_sample_v2()), origin, False)


def _tracks(records: list[dict[str, Any]], kind: str) -> list[Track]:
    tracks = []
    for rec in records:
        # The record is ours (fresh from validation): take the identity out and keep the rest as stats.
        pop = rec.pop
        tracks.append(
            Track(
                kind=kind,  # type: ignore[arg-type]
                ssrc=pop("ssrc"),
                peer_connection_id=pop("peerConnectionId", None),
                track_id=pop("trackId", None),
                sfu_stream_id=pop("sfuStreamId", None),
                sfu_sink_id=pop("sfuSinkId", None),
                remote_client_id=pop("remoteClientId", None),
                stats=rec,
            )
        )
    return tracks


PLACEHOLDER = "NULL"
"""What client-monitor-js 3.x puts in ids the application has not set (also read by ``_routing``)."""


def client_sample(c: dict[str, Any], origin: Origin, closing: bool) -> ClientSample:
    """Map a validated 2.x ClientSample dict onto the model (also used by the legacy decoder's tests)."""
    if c["clientId"] == PLACEHOLDER:
        raise WireError('clientId is "NULL", client-monitor-js\'s placeholder: set clientId before sending')
    for key in ("callId", "roomId", "userId"):
        if c.get(key) == PLACEHOLDER:
            c = {k: v for k, v in c.items() if k != key}
    meta = [MetaItem(type=t, payload=c[k]) for k, t in _SINGLE_META if k in c]
    for key, meta_type in _LIST_META:
        meta.extend(MetaItem(type=meta_type, payload=v) for v in c.get(key, ()))
    for item in meta:
        if item.type == "MEDIA_DEVICE" and isinstance(item.payload, dict) and "deviceId" in item.payload:
            payload = dict(item.payload)
            device_id = payload.pop("deviceId")
            payload.setdefault("id", device_id)  # client-monitor-js 3.x names it as MediaDeviceInfo does
            item.payload = payload
    return ClientSample(
        origin=origin,
        client_id=c["clientId"],
        timestamp=c["timestamp"],
        call_id=c.get("callId"),
        room_id=c.get("roomId"),
        user_id=c.get("userId"),
        marker=c.get("marker"),
        sample_seq=c.get("sampleSeq"),
        time_zone_offset_hours=c.get("timeZoneOffsetInHours"),
        inbound_tracks=_tracks(c.get("inboundAudioTracks", []), "audio") + _tracks(c.get("inboundVideoTracks", []), "video"),
        outbound_tracks=_tracks(c.get("outboundAudioTracks", []), "audio") + _tracks(c.get("outboundVideoTracks", []), "video"),
        transports=c.get("pcTransports", []),
        candidate_pairs=c.get("iceCandidatePairs", []),
        local_candidates=c.get("iceLocalCandidates", []),
        remote_candidates=c.get("iceRemoteCandidates", []),
        data_channels=c.get("dataChannels", []),
        codecs=c.get("codecs", []),
        certificates=c.get("certificates", []),
        media_sources=c.get("mediaSources", []),
        meta=meta,
        events=[
            ClientEvent(
                name=e["name"],
                value=e.get("value"),
                message=e.get("message"),
                peer_connection_id=e.get("peerConnectionId"),
                track_id=e.get("mediaTrackId"),
                attachments=as_text(e.get("attachments")),
                timestamp=e.get("timestamp"),
            )
            for e in c.get("customCallEvents", ())
        ],
        issues=[
            ClientIssue(
                name=e["name"],
                message=e.get("message"),
                track_id=e.get("mediaTrackId"),
                attachments=as_text(e.get("attachments")),
                timestamp=e.get("timestamp"),
            )
            for e in c.get("customObserverEvents", ())
        ],
        extensions=[Extension(type=x["type"], payload=as_text(x["payload"]) or "") for x in c.get("extensionStats", ())],
        closing=closing,
    )


def _sfu_sample(s: dict[str, Any], origin: Origin) -> SfuSample:
    return SfuSample(
        origin=origin,
        sfu_id=s["sfuId"],
        timestamp=s["timestamp"],
        marker=s.get("marker"),
        time_zone_offset_hours=s.get("timeZoneOffsetInHours"),
        transports=s.get("transports", []),
        inbound_rtp_pads=s.get("inboundRtpPads", []),
        outbound_rtp_pads=s.get("outboundRtpPads", []),
        sctp_channels=s.get("sctpChannels", []),
        events=s.get("customSfuEvents", []),
        extensions=[Extension(type=x["type"], payload=as_text(x["payload"]) or "") for x in s.get("extensionStats", ())],
    )


def _turn_sample(t: dict[str, Any], origin: Origin) -> TurnSample:
    if "serverId" not in t:
        raise WireError("Object missing required field `serverId` - at `$.turnSamples[...]`")
    return TurnSample(
        origin=origin, server_id=t["serverId"], allocations=t.get("allocations", []), sessions=t.get("sessions", [])
    )
