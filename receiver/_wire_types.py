"""Wire types generated from the ObserveRTC Avro schemas, used to validate what clients send.

msgspec checks every field's type in C and names the offending path (``$.clientSamples[0].inboundAudioTracks[2]
.ssrc``), which is both faster and more precise than walking dicts by hand. Conversion is lenient where
browsers are: integral floats are taken for ints, enums accept any string (a new browser value must not
cost a whole sample), and ``attachments``/``payload`` accept a JSON string or an object, because 3.x changed
one into the other. Unknown fields are ignored.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, TypeVar, Union

import msgspec

from webrtc_observer.schemas import avro_schema

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
Int32 = Annotated[int, msgspec.Meta(ge=INT32_MIN, le=INT32_MAX)]
"""An Avro ``int``: a value past 32 bits is refused where it is decoded (msgspec names the path)."""
Long = Annotated[int, msgspec.Meta(ge=LONG_MIN, le=LONG_MAX)]
"""An Avro ``long``: JSON integers are unbounded, a value past 64 bits is refused where it is decoded."""

_PRIMITIVES: dict[str, Any] = {
    "string": str,
    "bytes": str,
    "int": Int32,
    "long": Long,
    "float": float,
    "double": float,
    "boolean": bool,
}

# Fields whose type changed across 3.x minor versions (JSON string, then an Avro map).
_FREE_FORM_FIELDS = frozenset({"attachments", "payload"})
_PROTO3_OMITTABLE = frozenset({"int", "long", "float", "double", "boolean"})
_ALWAYS_REQUIRED = frozenset({"ssrc", "timestamp"})
# Fields that clients send under a name the schema does not have, kept so the decoder can map them:
# client-monitor-js 3.x sends a MediaDevice's id as ``deviceId`` (the MediaDeviceInfo name).
# Fields that hold an id but are not named so (the model's track ids).
_ID_TEXTS = frozenset({"trackIdentifier"})
_SPOKEN_ALIASES: dict[str, tuple[tuple[str, Any], ...]] = {"MediaDevice": (("deviceId", str),)}


class _Builder:
    def __init__(self, prefix: str, raw_stats: bool = False, max_string: int | None = None, ids_only: bool = False) -> None:
        self._prefix = prefix
        self._raw_stats = raw_stats
        self._bounded: Any = str if max_string is None else Annotated[str, msgspec.Meta(max_length=max_string)]
        self._ids_only = ids_only
        self._records: dict[str, type[msgspec.Struct]] = {}
        self._field = ""

    def _str(self) -> Any:
        """A string of the field being built: bounded, unless only ids are and it is none."""
        if self._ids_only and not (self._field.lower().endswith("id") or self._field in _ID_TEXTS):
            return str
        return self._bounded

    def type_of(self, avro: Any) -> Any:
        if isinstance(avro, str):
            if avro == "string" and self._field and not self._field.lower().endswith("id"):
                # Browsers' libraries send numbers where 2.x says string (codec payloadType from
                # client-monitor-js 3.x); the reports stage renders them as text. Ids stay strict.
                return self._str() | int | float
            if avro in ("string", "bytes"):
                return self._str()
            if self._raw_stats and avro in ("int", "long"):
                # 3.x carries getStats() values as the browser reports them: a W3C timestamp or
                # counter the schema calls long may arrive fractional. The mapping rounds it.
                return (Int32 if avro == "int" else Long) | float
            if avro in _PRIMITIVES:
                return _PRIMITIVES[avro]
            return self._records[avro]  # a named record defined earlier in the file
        if isinstance(avro, list):
            members = [m for m in avro if m != "null"]
            types = [self.type_of(m) for m in members]
            inner = types[0] if len(types) == 1 else Union[tuple(types)]  # noqa: UP007
            return inner | None if "null" in avro else inner
        kind = avro["type"]
        if kind == "record":
            return self._record(avro)
        if kind == "enum":
            return self._str()
        if kind == "array":
            return list[self.type_of(avro["items"])]  # type: ignore[misc]
        if kind == "map":
            return dict[str, self.type_of(avro["values"])]  # type: ignore[misc]
        return self.type_of(kind)

    def _record(self, avro: dict[str, Any]) -> type[msgspec.Struct]:
        fields: list[tuple[Any, ...]] = []
        for field in avro["fields"]:
            name = field["name"]
            self._field = name
            ftype = self.type_of(field["type"])
            self._field = ""
            if name in _FREE_FORM_FIELDS:
                ftype = Any  # a JSON string, an object, or (client-monitor-js 4.x) a bare value
            optional = isinstance(field["type"], list) and "null" in field["type"]
            # proto3 leaves zero numbers and false out of the wire: only identities stay required.
            if not optional and field["type"] in _PROTO3_OMITTABLE and name not in _ALWAYS_REQUIRED:
                optional = True
            if optional or name in _FREE_FORM_FIELDS:
                fields.append((name, ftype, None))
            else:
                fields.append((name, ftype))
        known = {f[0] for f in fields}
        fields += [(name, ftype | None, None) for name, ftype in _SPOKEN_ALIASES.get(avro["name"], ()) if name not in known]
        # msgspec wants required fields before optional ones.
        fields.sort(key=lambda f: len(f) == 3)
        struct = msgspec.defstruct(
            f"{self._prefix}{avro['name']}",
            fields,
            kw_only=True,
            omit_defaults=True,
        )
        self._records[avro["name"]] = struct
        return struct


def _build(
    version_dir: str,
    filename: str,
    prefix: str,
    raw_stats: bool = False,
    max_string: int | None = None,
    ids_only: bool = False,
) -> type[msgspec.Struct]:
    return _Builder(prefix, raw_stats, max_string, ids_only).type_of(avro_schema(version_dir, filename))


@cache
def samples_v2(max_string: int | None = None) -> type[msgspec.Struct]:
    """The 2.x ``Samples`` wrapper (clientSamples, sfuSamples, turnSamples, controls).

    With ``max_string``, every string of it (ids, enums, any text but the free-form attachments and
    payloads) is refused past that many characters: decoding then also tells that none is longer.
    """
    return _build("v2_2_11", "Samples.avsc", "V2", max_string=max_string)


@cache
def client_sample_v2() -> type[msgspec.Struct]:
    wrapper = samples_v2()
    return _item_type(wrapper, "clientSamples")


@cache
def client_sample_v3(max_string: int | None = None, marking: tuple[str, ...] = ()) -> type[msgspec.Struct]:
    """The 3.x ``ClientSample``.

    With ``max_string``, every id of it (a field named ``...id``/``...Id``, and ``trackIdentifier``) is
    refused past that many characters; other text, such as a certificate or a candidate's URL, is not.

    With ``marking``, top-level keys of these names (the schema has none of them) are kept too, as
    their unparsed JSON (``msgspec.Raw``, a null included), so that whether they were sent can be told.
    """
    sample = _build("v3_5_0", "ClientSample.avsc", "V3", raw_stats=True, max_string=max_string, ids_only=True)
    if not marking:
        return sample
    return msgspec.defstruct(
        f"{sample.__name__}Marked",
        [(name, msgspec.Raw, None) for name in marking],
        bases=(sample,),
        kw_only=True,
        omit_defaults=True,
    )


def _item_type(struct: type[msgspec.Struct], field: str) -> type[msgspec.Struct]:
    hints = msgspec.structs.fields(struct)
    for f in hints:
        if f.name == field:
            list_type = next(a for a in f.type.__args__ if a is not type(None))
            return list_type.__args__[0]
    raise KeyError(field)


S = TypeVar("S", bound=msgspec.Struct)


class WireError(ValueError):
    """Input that does not have the shape its schema requires; the message names the path."""


def decode_typed(wire: Any, wire_type: type[S]) -> S:
    """Check ``wire`` (a parsed object, or JSON text) against ``wire_type``; return it as that Struct
    (unknown fields dropped, a missing field and a null alike None)."""
    try:
        if isinstance(wire, bytes):
            return _json_decoder(wire_type).decode(wire)
        return msgspec.convert(wire, wire_type, strict=False)
    except msgspec.ValidationError as exc:
        raise WireError(str(exc)) from None


def validate(wire: Any, wire_type: type[msgspec.Struct]) -> dict[str, Any]:
    """:func:`decode_typed`, returned as builtins with unknown fields and nulls dropped."""
    return msgspec.to_builtins(decode_typed(wire, wire_type))


@cache
def _json_decoder(wire_type: type[S]) -> msgspec.json.Decoder[S]:
    return msgspec.json.Decoder(wire_type, strict=False)


def as_text(value: Any) -> str | None:
    """2.x carries attachments and payloads as JSON strings; accept an object and render it as one.

    Any JSON the decoder took renders back (integers of any size included); ``WireError`` otherwise.
    """
    if value is None or isinstance(value, str):
        return value
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise WireError(f"attachments/payload cannot be rendered as JSON text ({exc})") from None
