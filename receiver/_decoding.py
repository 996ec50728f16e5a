"""From bytes on the wire to model samples: inflate, pick the encoding, detect the sample generation.

One function serves HTTP bodies and WebSocket frames alike, so both transports accept exactly the same
inputs and refuse bad ones with the same reasons.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import KeysView
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from webrtc_observer.model import Origin, Sample, share_ids

from ._wire_types import WireError

if TYPE_CHECKING:
    from ._limits import LimitsConfig

Encoding = Literal["json", "protobuf"]
Route = Literal["samples", "pcsamples"]

_WRAPPER_KEYS = frozenset({"clientSamples", "sfuSamples", "turnSamples", "controls"})
_V3_KEYS = frozenset(
    {"peerConnections", "clientEvents", "clientIssues", "clientMetaItems", "scoreReasons", "score", "attachments"}
)
_LEGACY_KEYS = frozenset({"peerConnectionId", "iceStats", "receiverStats", "senderStats", "browserId"})
_GZIP_MAGIC = b"\x1f\x8b"


class RefusedInput(Exception):
    """Input we will not take. ``reason`` is short, safe to show a client, and a metrics label."""

    def __init__(self, reason: str, detail: str, status: int = 400) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class Decoded:
    samples: list[Sample]
    strings_within: int | None = None
    """Every id of the samples is known to be at most this long (the decoder bounded them; a 2.x
    wrapper's decoder bounds every string)."""


def inflate(data: bytes, limit: int) -> bytes:
    """Gunzip ``data``, refusing output larger than ``limit`` bytes without producing all of it."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise RefusedInput("bad_gzip", f"body is not valid gzip ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise RefusedInput("too_large", f"inflated body exceeds {limit} bytes", status=413)
    if not inflater.eof:
        raise RefusedInput("bad_gzip", "gzip body is truncated")
    return out


def decode(
    data: bytes,
    origin: Origin,
    *,
    route: Route,
    encoding: Encoding | None,
    gzipped: bool | None,
    limit: int,
    limits: LimitsConfig | None = None,
) -> Decoded:
    """Decode one message. ``encoding``/``gzipped`` None means: tell from the bytes.

    With ``limits``, a message whose samples exceed them is refused (reason ``limits``).
    """
    if gzipped or (gzipped is None and data[:2] == _GZIP_MAGIC):
        data = inflate(data, limit)
    if not data.strip():
        raise RefusedInput("empty", "message is empty")
    if encoding is None:
        encoding = _sniff(data)
    bound = None if limits is None else limits.max_id_length
    try:
        decoded = _decode_json(data, origin, route, bound) if encoding == "json" else _decode_protobuf(data, origin, route)
    except WireError as exc:
        raise RefusedInput("invalid_sample", str(exc)) from None
    except msgspec.DecodeError as exc:  # invalid UTF-8, broken JSON text found while validating
        raise RefusedInput("bad_json", f"body is not JSON ({exc})") from None
    except RecursionError:
        raise RefusedInput("too_deep", "the message nests deeper than the decoder follows") from None
    if limits is not None:
        from ._limits import check

        check(decoded.samples, limits, strings_checked=decoded.strings_within == limits.max_id_length)
    share_ids(decoded.samples)
    return decoded


def _sniff(data: bytes) -> Encoding:
    """JSON or protobuf, when nobody said. A protobuf message often starts with 0x0a (field 1), which is
    also a newline: whitespace-led bytes are JSON only if they also end like a JSON document."""
    if data[:1] in (b"{", b"["):
        return "json"
    stripped = data.strip()
    if stripped[:1] in (b"{", b"[") and stripped[-1:] in (b"}", b"]"):
        return "json"
    return "protobuf"


_WRAPPER_START = re.compile(rb'^\s*\{\s*"(?:clientSamples|sfuSamples|turnSamples)"')
# Top-level keys only: nested values stay unparsed, so telling the generation costs one quick scan.
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _decode_json(data: bytes, origin: Origin, route: Route, max_string: int | None = None) -> Decoded:
    """``max_string``: the strings' bound to check while decoding, where the decoder can (2.x wrappers)."""
    if route == "samples" and _WRAPPER_START.search(data, 0, 64):
        # What 2.x clients send, in one pass; anything else (or a wrapper with other keys first) is
        # told apart below.
        from . import _v2

        try:
            wrapper, bounded = _v2.wrapper_in_json(data, max_string)
        except msgspec.DecodeError as exc:
            raise RefusedInput("bad_json", f"body is not JSON ({exc})") from None
        except WireError:
            wrapper = None  # not an object, or a broken wrapper: the checks below say which, precisely
        if wrapper is not None:
            samples = _v2.samples_of(wrapper, _with(origin, "2"))
            return Decoded(samples, max_string if bounded else None)
    if route == "samples" and _V3_HINT in data:
        told = _told_client_sample_v3(data, origin, max_string)
        if told is not None:
            return told
    try:
        top = _TOP_LEVEL.decode(data)
    except msgspec.ValidationError:
        kind = "an array" if data.lstrip()[:1] == b"[" else "a scalar"
        raise RefusedInput("invalid_sample", f"expected a JSON object, got {kind}") from None
    except msgspec.DecodeError as exc:
        raise RefusedInput("bad_json", f"body is not JSON ({exc})") from None
    # The wire types decode straight from the bytes: no intermediate dicts to convert.
    return _decode(data, top.keys(), origin, route, max_string)


_V3_HINT = b'"peerConnections"'
"""Text without it is not tried as a 3.x ClientSample first: a 2.x sample would only fail the attempt.
A hint, not a test: text with it that is no 3.x sample, and a 3.x sample without peer connections,
are told from their top-level keys as any other message."""

# The top-level keys that tell a 3.x ClientSample from the other generations, once it decoded as one.
_TELLING_KEYS = tuple(sorted(_WRAPPER_KEYS | _V3_KEYS))
_MARKED_KEYS = tuple(sorted(_WRAPPER_KEYS))
"""Keys a 3.x ClientSample does not have, so its decoding keeps them (unparsed) for :func:`_generation`."""


def _told_client_sample_v3(data: bytes, origin: Origin, max_string: int | None) -> Decoded | None:
    """``data`` as a 3.x ClientSample, when decoding it as one (every id within ``max_string``) succeeds
    and the keys it then is known to have make it one (see :func:`_generation`); None otherwise, and the
    caller tells what ``data`` is from its top-level keys, as for any other message.

    The keys known are those of a wrapper that were sent and those of a 3.x sample that have a value:
    more keys of the 3.x sample (sent as null) cannot make it another generation, so this tells alike.
    """
    from . import _v3

    declared = origin.schema_version
    if declared and declared.startswith("2"):
        return None  # told 2.x whatever its keys
    try:
        wire = _v3.wire_sample_in_json(data, max_string, _MARKED_KEYS)
    except (WireError, msgspec.DecodeError, RecursionError):
        return None
    known = {key for key in _TELLING_KEYS if getattr(wire, key) is not None}
    if _generation(known, declared) != "3":
        return None
    sample, bounded = _v3.sample_of_wire(wire, _with(origin, "3"), max_string)
    return Decoded([sample], max_string if bounded else None)


def _decode(
    wire: dict[str, Any] | bytes, keys: KeysView[str], origin: Origin, route: Route, max_string: int | None = None
) -> Decoded:
    """``wire`` is a parsed object or the JSON text of one; ``keys`` its top-level keys; ``max_string``
    the strings' bound to check while decoding JSON text, where the decoder can (3.x)."""
    from . import _legacy, _v2, _v3

    if route == "pcsamples":
        return Decoded([_legacy.decode_pc_sample(wire, _with(origin, "pcsample-v20200114"))])
    generation = _generation(keys, origin.schema_version)
    if generation == "wrapper":
        samples = _v2.decode_samples(wire, _with(origin, "2"))
        return Decoded(samples)
    if generation == "3":
        if isinstance(wire, bytes):
            sample, bounded = _v3.client_sample_in_json(wire, _with(origin, "3"), max_string)
            return Decoded([sample], max_string if bounded else None)
        return Decoded([_v3.decode_client_sample_v3(wire, _with(origin, "3"))])
    if generation == "2":
        return Decoded([_v2.decode_client_sample(wire, _with(origin, "2"))])
    if generation == "legacy":
        return Decoded([_legacy.decode_pc_sample(wire, _with(origin, "pcsample-v20200114"))])
    raise RefusedInput(
        "unknown_schema",
        f"not a Samples wrapper, a ClientSample (schema 2.x or 3.x) or a PeerConnectionSample; top-level keys: {sorted(keys)[:8]}",
    )


def _generation(keys: AbstractSet[str], declared: str | None) -> str | None:
    if not _WRAPPER_KEYS.isdisjoint(keys):
        return "wrapper"
    if declared:
        if declared.startswith("3"):
            return "3"
        if declared.startswith("2"):
            return "2"
    if not _V3_KEYS.isdisjoint(keys):
        return "3"
    if "clientId" in keys:
        return "2"
    if not _LEGACY_KEYS.isdisjoint(keys):
        return "legacy"
    return None


def _decode_protobuf(data: bytes, origin: Origin, route: Route) -> Decoded:
    from . import _protobuf, _v2, _v3

    if route == "pcsamples":
        raise RefusedInput("unsupported_encoding", "PeerConnectionSample v20200114 is JSON only", status=415)
    try:
        declared_v3 = bool(origin.schema_version and origin.schema_version.startswith("3"))
        # A 3.x ClientSample uses fields up to 11 (7 is its timestamp); the 2.x Samples wrapper only 1-4.
        if declared_v3 or max(_protobuf.top_level_field_numbers(data), default=0) > 4:
            obj = _protobuf.decode(data, _protobuf.message_schema("v3_5_0", "ProtobufClientSampleV3.proto", "ClientSample"))
            return Decoded([_v3.decode_client_sample_v3(obj, _with(origin, "3"))])
        try:
            obj = _protobuf.decode(data, _protobuf.message_schema("v2_2_11", "ProtobufSamples.proto", "Samples"))
        except _protobuf.ProtobufError:
            # @observertc/samples-encoder writes the proto3 variant (enums and byte ids where the
            # proto2 file has strings): same field numbers, other wire types.
            obj = _protobuf.decode(data, _proto3_samples())
    except _protobuf.ProtobufError as exc:
        raise RefusedInput("bad_protobuf", str(exc)) from None
    samples = _v2.decode_samples(obj, _with(origin, "2"))
    return Decoded(samples)


@cache
def _proto3_samples() -> Any:
    """The proto3 ``Samples``, with enum symbols in the lower case JSON clients use (``UDP`` → ``udp``).

    Parsed afresh (not the shared cached schema), so lower-casing changes nothing anyone else sees.
    """
    from webrtc_observer.schemas import schema_text

    from . import _protobuf

    schemas = _protobuf.parse_proto(schema_text("v2_2_11", "ProtobufSamplesV3Optional.proto"))
    for message in schemas.values():
        for f in message.fields.values():
            if f.enum_values is not None:
                # In place: the message's decoding table holds this very dict.
                f.enum_values.update({k: v.lower() for k, v in f.enum_values.items()})
    return schemas["org.observertc.schemas.protobuf.Samples"]


def _with(origin: Origin, generation: str) -> Origin:
    return msgspec.structs.replace(origin, generation=generation)
