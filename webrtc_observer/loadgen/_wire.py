"""Wire encodings of the scenario's messages: JSON, gzip'd JSON and protobuf.

Protobuf is written by hand from the shipped ``.proto`` files (parsed by the receiver's
``parse_proto``), so the load generator needs neither ``protoc`` nor generated classes. The input is
the JSON shape of a message, as the ObserveRTC clients send it; the encoder follows the
conventions of their protobuf senders:

- ``bytes`` fields (the 3.x ids) carry a UUID as its 16 raw bytes, anything else as UTF-8;
- ``string`` fields given an object or a list (3.x ``attachments`` and event ``payload``) carry it as
  JSON text;
- enums are written by number, their names matched case-insensitively without ``-``/``_``
  (``in-progress`` is ``INPROGRESS``);
- keys the schema does not know, and ``None`` values, are left out; repeated scalars are not packed
  (decoders must accept both forms).

The encoder is checked against ``protoc``-generated classes in ``tests/test_loadgen.py``.
"""

from __future__ import annotations

import gzip
import re
import struct
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import orjson

from webrtc_observer.receiver._protobuf import FieldSchema, MessageSchema, message_schema

__all__ = ["FORMATS", "Encoded", "Format", "encode_body", "encode_protobuf", "protobuf_schema"]

Format = Literal["json", "protobuf", "gzip"]
FORMATS: tuple[Format, ...] = ("json", "protobuf", "gzip")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MASK64 = 0xFFFFFFFFFFFFFFFF
_pack_d = struct.Struct("<d").pack
_pack_f = struct.Struct("<f").pack
_pack_I = struct.Struct("<I").pack
_pack_i = struct.Struct("<i").pack
_pack_Q = struct.Struct("<Q").pack
_pack_q = struct.Struct("<q").pack


@dataclass(frozen=True, slots=True)
class Encoded:
    """One message ready to send: the bytes, and how to label them over HTTP and WebSocket."""

    data: bytes
    format: Format

    @property
    def content_type(self) -> str:
        return "application/x-protobuf" if self.format == "protobuf" else "application/json"

    @property
    def content_encoding(self) -> str | None:
        return "gzip" if self.format == "gzip" else None

    @property
    def text(self) -> bool:
        """Send as a WebSocket text frame (plain JSON); otherwise a binary frame."""
        return self.format == "json"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if self.format == "gzip":
            headers["Content-Encoding"] = "gzip"
        return headers


def encode_body(body: dict[str, Any], generation: str, fmt: Format) -> Encoded:
    """Encode a message body of ``generation`` (``2``: a ``Samples`` wrapper, ``3``: a ClientSample,
    ``legacy``: a PeerConnectionSample). Legacy samples are JSON only, so ``protobuf`` falls back to
    JSON for them."""
    if fmt == "protobuf" and generation != "legacy":
        return Encoded(encode_protobuf(body, protobuf_schema(generation)), "protobuf")
    data = orjson.dumps(body)
    if fmt == "gzip":
        return Encoded(gzip.compress(data, compresslevel=5, mtime=0), "gzip")
    return Encoded(data, "json")


def protobuf_schema(generation: str) -> MessageSchema:
    if generation == "3":
        return message_schema("v3_5_0", "ProtobufClientSampleV3.proto", "ClientSample")
    return message_schema("v2_2_11", "ProtobufSamples.proto", "Samples")


def encode_protobuf(obj: dict[str, Any], schema: MessageSchema) -> bytes:
    """Serialize the JSON-shaped ``obj`` as the protobuf message ``schema``."""
    out = bytearray()
    _message(obj, schema, out)
    return bytes(out)


# --------------------------------------------------------------------------------------------------


@cache
def _fields(schema: MessageSchema) -> dict[str, FieldSchema]:
    return {f.name: f for f in schema.fields.values()}


@cache
def _enum_numbers(field: FieldSchema) -> dict[str, int]:
    assert field.enum_values is not None
    return {_enum_key(name): number for number, name in field.enum_values.items()}


def _enum_key(name: str) -> str:
    return name.replace("-", "").replace("_", "").upper()


def _varint(value: int, out: bytearray) -> None:
    value &= _MASK64
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _message(obj: dict[str, Any], schema: MessageSchema, out: bytearray) -> None:
    fields = _fields(schema)
    for name, value in obj.items():
        field = fields.get(name)
        if field is None or value is None:
            continue
        if field.repeated:
            if not isinstance(value, list):
                raise ValueError(f"{schema.name}.{name}: expected a list, got {type(value).__name__}")
            for item in value:
                _field(field, item, out)
        else:
            _field(field, value, out)


def _field(field: FieldSchema, value: Any, out: bytearray) -> None:
    number = field.number
    if field.message is not None:
        inner = bytearray()
        _message(value, field.message, inner)
        _varint(number << 3 | 2, out)
        _varint(len(inner), out)
        out += inner
        return
    if field.enum_values is not None:
        if isinstance(value, str):
            value = _enum_numbers(field)[_enum_key(value)]
        _varint(number << 3, out)
        _varint(int(value), out)
        return
    kind = field.type
    if kind in ("string", "bytes"):
        if kind == "bytes" and isinstance(value, str) and _UUID.match(value):
            raw = uuid.UUID(value).bytes
        elif isinstance(value, (dict, list)):
            raw = orjson.dumps(value)
        elif isinstance(value, bytes):
            raw = value
        else:
            raw = str(value).encode()
        _varint(number << 3 | 2, out)
        _varint(len(raw), out)
        out += raw
    elif kind == "double":
        _varint(number << 3 | 1, out)
        out += _pack_d(float(value))
    elif kind == "float":
        _varint(number << 3 | 5, out)
        out += _pack_f(float(value))
    elif kind == "bool":
        _varint(number << 3, out)
        out.append(1 if value else 0)
    elif kind in ("sint32", "sint64"):
        v = int(value)
        _varint(number << 3, out)
        _varint((v << 1) ^ (v >> 63), out)
    elif kind in ("fixed32", "sfixed32"):
        _varint(number << 3 | 5, out)
        out += (_pack_I if kind == "fixed32" else _pack_i)(int(value))
    elif kind in ("fixed64", "sfixed64"):
        _varint(number << 3 | 1, out)
        out += (_pack_Q if kind == "fixed64" else _pack_q)(int(value))
    else:  # int32, int64, uint32, uint64
        _varint(number << 3, out)
        _varint(int(value), out)
