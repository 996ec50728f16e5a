"""The routing keys of a message, told from its bytes without decoding it.

With ``service.workers`` > 1 the samples of a room belong to one worker. A worker whose connection
received a message that belongs to another hands it over undecoded, so the message is decoded once,
by its owner. Telling the owner costs one pass of msgspec over the JSON that keeps only the few ids
routing needs (:func:`webrtc_observer.model.routing_key`): nothing else is built.

The keys must be those of the samples the full decoder would produce. Where that cannot be told
this cheaply (protobuf, gzip, legacy samples, a message the decoder would refuse), :func:`routing_keys`
returns None and the message is decoded where it arrived, as with one worker.
"""

from __future__ import annotations

from typing import Any

import msgspec

from webrtc_observer.model import Origin, client_routing_key, service_routing_key

from ._decoding import _GZIP_MAGIC, _TOP_LEVEL, _WRAPPER_START, Encoding, Route, _generation
from ._v2 import PLACEHOLDER
from ._v3 import _attached_identity

__all__ = ["routing_keys"]


class _ClientIds(msgspec.Struct):
    clientId: str
    callId: str | None = None
    roomId: str | None = None


class _SfuId(msgspec.Struct):
    sfuId: str


class _TurnId(msgspec.Struct):
    serverId: str


class _Wrapper(msgspec.Struct):
    clientSamples: list[_ClientIds] = []
    sfuSamples: list[_SfuId] = []
    turnSamples: list[_TurnId] = []


_wrapper = msgspec.json.Decoder(_Wrapper)
_text = msgspec.json.Decoder(str | None)
_any = msgspec.json.Decoder()


def routing_keys(
    data: bytes, origin: Origin, *, route: Route, encoding: Encoding | None, gzipped: bool | None
) -> list[str] | None:
    """The routing key of every sample in the message, or None when it is not told from the bytes."""
    if route != "samples" or encoding == "protobuf" or gzipped or data[:2] == _GZIP_MAGIC or data[:1] != b"{":
        return None
    try:
        if _WRAPPER_START.search(data, 0, 64):
            return _wrapper_keys(_wrapper.decode(data), origin.service_id)
        return _single_keys(data, origin)
    except (msgspec.DecodeError, ValueError):  # the decoder, where the message arrived, says what is wrong
        return None


def _wrapper_keys(wrapper: _Wrapper, service_id: str) -> list[str] | None:
    keys = []
    for c in wrapper.clientSamples:
        if c.clientId == PLACEHOLDER:
            return None
        room, call = (None if v == PLACEHOLDER else v for v in (c.roomId, c.callId))
        keys.append(client_routing_key(service_id, room, call, c.clientId))
    keys.extend(service_routing_key(service_id, s.sfuId) for s in wrapper.sfuSamples)
    keys.extend(service_routing_key(service_id, t.serverId) for t in wrapper.turnSamples)
    return keys


def _single_keys(data: bytes, origin: Origin) -> list[str] | None:
    """A single 2.x or 3.x ClientSample: its one key."""
    top = _TOP_LEVEL.decode(data)
    generation = _generation(top.keys(), origin.schema_version)
    if generation not in ("2", "3") or "clientId" not in top:
        return None
    client = _text.decode(top["clientId"])
    call = _text.decode(top["callId"]) if "callId" in top else None
    if not client or (generation == "2" and client == PLACEHOLDER):
        return None
    if generation == "2":
        room = _text.decode(top["roomId"]) if "roomId" in top else None
        room, call = (None if v == PLACEHOLDER else v for v in (room, call))
    else:  # 3.x carries the room in its attachments
        attachments: Any = _any.decode(top["attachments"]) if "attachments" in top else None
        room = _attached_identity(attachments)[0]
    return [client_routing_key(origin.service_id, room, call, client)]
