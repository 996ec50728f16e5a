"""The 18 ObserveRTC 2.2.11 report types: their Avro schemas, and building payloads that conform to them.

A report payload is a flat Avro record of primitives (string, int, long, double, boolean), most of them
nullable. :func:`build` turns a loose mapping (sample stats plus identity) into a payload that validates
against the type's schema: it keeps only the schema's fields, coerces each value to its Avro type, drops
what is ``None`` or cannot be coerced, and gives up (``None``) when a required field is missing or bad.

The schemas are read once; per type a plan ``field -> (kind, optional)`` is precomputed, so building is a
single pass over the given fields with no schema walking.

API::

    REPORT_TYPES                      # report type -> schema file, e.g. "CALL_EVENT" -> "CallEventReport.avsc"
    SCHEMA_VERSION                    # "2.2.11", the ``schemaVersion`` of every report built here
    schema(report_type)               # the Avro schema as parsed JSON (a dict)
    record_name(report_type)          # the record's full name, e.g. "org.observertc.schemas.reports.SfuEventReport"
    fields_of(report_type)            # the field names, in schema order
    required_of(report_type)          # the fields a payload must have
    build(report_type, fields)        # a conforming payload (the type's ReportRecord), or None
    parsed_schema(report_type)        # fastavro's parsed schema (imports fastavro lazily)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Any

import msgspec

from webrtc_observer.model import Payload, ReportRecord
from webrtc_observer.schemas import REPORTS_VERSION, avro_schema

__all__ = [
    "REPORT_TYPES",
    "SCHEMA_VERSION",
    "build",
    "fields_of",
    "parsed_schema",
    "record_name",
    "required_of",
    "schema",
]

SCHEMA_VERSION = REPORTS_VERSION
_SCHEMA_DIR = "v2_2_11"

REPORT_TYPES: Mapping[str, str] = {
    "OBSERVER_EVENT": "ObserverEventReport.avsc",
    "CALL_EVENT": "CallEventReport.avsc",
    "CALL_META_DATA": "CallMetaReport.avsc",
    "CLIENT_EXTENSION_DATA": "ClientExtensionReport.avsc",
    "PEER_CONNECTION_TRANSPORT": "PeerConnectionTransportReport.avsc",
    "ICE_CANDIDATE_PAIR": "IceCandidatePairReport.avsc",
    "PEER_CONNECTION_DATA_CHANNEL": "ClientDataChannelReport.avsc",
    "INBOUND_AUDIO_TRACK": "InboundAudioTrackReport.avsc",
    "INBOUND_VIDEO_TRACK": "InboundVideoTrackReport.avsc",
    "OUTBOUND_AUDIO_TRACK": "OutboundAudioTrackReport.avsc",
    "OUTBOUND_VIDEO_TRACK": "OutboundVideoTrackReport.avsc",
    "SFU_EVENT": "SfuEventReport.avsc",
    "SFU_META_DATA": "SfuMetaReport.avsc",
    "SFU_EXTENSION_DATA": "SfuExtensionReport.avsc",
    "SFU_TRANSPORT": "SFUTransportReport.avsc",
    "SFU_INBOUND_RTP_PAD": "SfuInboundRtpPadReport.avsc",
    "SFU_OUTBOUND_RTP_PAD": "SfuOutboundRtpPadReport.avsc",
    "SFU_SCTP_STREAM": "SfuSctpStreamReport.avsc",
}
"""Report type (the observer's ``ReportType``) -> its Avro schema file in ``schemas/v2_2_11``."""

# Field kinds of a plan. Small ints so that the fallback dispatches with a few comparisons, not calls.
_STRING, _INTEGER, _DOUBLE, _BOOLEAN, _ENUM, _BYTES = range(6)
_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_DOUBLE_MAX = sys.float_info.max
_PRIMITIVES: dict[str, tuple[int, Any]] = {
    "string": (_STRING, None),
    "int": (_INTEGER, _INT_RANGE),
    "long": (_INTEGER, _LONG_RANGE),
    "float": (_DOUBLE, None),
    "double": (_DOUBLE, None),
    "boolean": (_BOOLEAN, None),
    "bytes": (_BYTES, None),
}

_Field = tuple[int, bool, Any]
"""(kind, optional, detail): detail is the (min, max) of an int/long, the symbols of an enum, else None."""


class _Plan:
    """What build() needs of one report type, computed once."""

    __slots__ = ("fields", "names", "required", "struct")

    def __init__(self, report_type: str, doc: Mapping[str, Any]) -> None:
        self.fields: dict[str, _Field] = {f["name"]: _field_plan(report_type, f) for f in doc["fields"]}
        self.names = tuple(self.fields)
        self.required = frozenset(name for name, (_, optional, _) in self.fields.items() if not optional)
        self.struct = _fast_struct(doc["name"], self.fields)


def _field_plan(report_type: str, field: Mapping[str, Any]) -> _Field:
    avro = field["type"]
    optional = "default" in field
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        if len(branches) != 1:
            raise ValueError(f"{report_type}.{field['name']}: unions of several types are not supported: {avro}")
        optional = optional or "null" in avro
        avro = branches[0]
    if isinstance(avro, dict):
        if avro.get("type") == "enum":
            return _ENUM, optional, frozenset(avro["symbols"])
        avro = avro.get("type")
    primitive = _PRIMITIVES.get(avro)
    if primitive is None:
        raise ValueError(f"{report_type}.{field['name']}: Avro type {avro!r} is not supported in a report")
    return primitive[0], optional, primitive[1]


def _fast_struct(name: str, fields: Mapping[str, _Field]) -> type[ReportRecord] | None:
    """A msgspec Struct that accepts exactly the values build() keeps unchanged (or int -> float).

    ``msgspec.convert`` checks and picks a whole payload in C; anything it refuses (a float for an int,
    a bool for a number, a number for a string, a missing required field...) falls back to the
    field-by-field coercion, which decides. Enums and bytes always take the fallback.
    """
    spec: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field_name, (kind, optional, detail) in fields.items():
        if kind == _STRING:
            tp: Any = str
        elif kind == _INTEGER:
            tp = Annotated[int, msgspec.Meta(ge=detail[0], le=detail[1])]
        elif kind == _DOUBLE:  # the bounds refuse NaN and infinities
            tp = Annotated[float, msgspec.Meta(ge=-_DOUBLE_MAX, le=_DOUBLE_MAX)]
        elif kind == _BOOLEAN:
            tp = bool
        else:
            return None
        spec.append((field_name, tp | None, None) if optional else (field_name, tp))
    return msgspec.defstruct(name, spec, bases=(ReportRecord,), kw_only=True, omit_defaults=True, gc=False)  # type: ignore[return-value]


_plans: dict[str, _Plan] = {}
"""Report type -> its plan, made on first use (build() reads it directly: cheaper than a call)."""


def _plan(report_type: str) -> _Plan:
    plan = _plans.get(report_type)
    if plan is None:
        plan = _plans[report_type] = _Plan(report_type, schema(report_type))
    return plan


def _known(report_type: str) -> str:
    try:
        return REPORT_TYPES[report_type]
    except KeyError:
        raise KeyError(f"unknown report type {report_type!r} (valid: {', '.join(REPORT_TYPES)})") from None


def schema(report_type: str) -> dict[str, Any]:
    """The report type's Avro schema, as parsed JSON (shared: do not modify)."""
    return avro_schema(_SCHEMA_DIR, _known(report_type))


def record_name(report_type: str) -> str:
    """The full name of the report's Avro record (note: CallEventReport's namespace ends in ``.reports.reports``)."""
    doc = schema(report_type)
    namespace = doc.get("namespace")
    return f"{namespace}.{doc['name']}" if namespace else doc["name"]


def fields_of(report_type: str) -> tuple[str, ...]:
    """The report's field names, in schema order."""
    return _plan(report_type).names


def required_of(report_type: str) -> frozenset[str]:
    """The fields without a default (not nullable): a payload without any of them is invalid."""
    return _plan(report_type).required


def build(report_type: str, fields: Mapping[str, Any], dropped: list[str] | None = None) -> Payload | None:
    """A payload of ``report_type`` made from ``fields``, or None if a required field is missing or invalid.

    The payload is the type's :class:`~webrtc_observer.model.ReportRecord` (a dict only for a schema
    with enum or bytes fields, which 2.2.11 has none of).

    Fields the schema does not have are left out, as are ``None`` values. Values are coerced to the
    field's Avro type:

    * int/long: ints as they are, floats rounded; bools, non-finite floats and out-of-range values are
      refused (32-bit range for int, 64-bit for long);
    * double/float: ints become floats; bools and non-finite floats are refused;
    * string: str as it is, numbers as their decimal text, bools as ``"true"``/``"false"``;
    * boolean: only bools;
    * enum: only one of the symbols (no report schema of 2.2.11 has one, but a future version may);
    * bytes: bytes as they are, str as UTF-8.

    A refused value is dropped if the field is nullable, and makes the whole payload invalid if not;
    the names of refused fields are appended to ``dropped`` when given (for counting).
    Raises ``KeyError`` for an unknown report type.
    """
    plan = _plans.get(report_type) or _plan(report_type)
    if plan.struct is None:
        return _coerced(plan, fields, dropped)
    try:
        return msgspec.convert(fields, plan.struct)
    except msgspec.ValidationError:
        coerced = _coerced(plan, fields, dropped)
    return None if coerced is None else plan.struct(**coerced)  # coerced values are valid: no second check


def _coerced(plan: _Plan, fields: Mapping[str, Any], dropped: list[str] | None = None) -> dict[str, Any] | None:
    """build() field by field: the rules in full, for payloads the fast path refused."""
    spec = plan.fields
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        entry = spec.get(name)
        if entry is None:
            continue
        kind = entry[0]
        vtype = type(value)
        if kind == _STRING:
            if vtype is not str:
                value = _to_str(value)
        elif kind == _INTEGER:
            if vtype is not int:
                value = _to_int(value)
            if value is not None:
                low, high = entry[2]
                if not low <= value <= high:
                    value = None
        elif kind == _DOUBLE:
            value = _to_float(value)
        elif kind == _BOOLEAN:
            if vtype is not bool:
                value = None
        elif kind == _ENUM:
            if vtype is not str or value not in entry[2]:
                value = None
        elif kind == _BYTES:
            value = _to_bytes(value)
        if value is None:
            if dropped is not None:
                dropped.append(name)
            if not entry[1]:
                return None
            continue
        out[name] = value
    if plan.required and not plan.required.issubset(out.keys()):
        if dropped is not None:
            dropped.extend(sorted(plan.required - out.keys()))
        return None
    return {name: out[name] for name in plan.names if name in out}  # schema order, as the fast path gives


def _to_str(value: Any) -> str | None:
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else None
    return None


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return round(value) if math.isfinite(value) else None
    return None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:  # an int beyond the double range
        return None
    return result if math.isfinite(result) else None


def _to_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return None


@cache
def parsed_schema(report_type: str) -> Any:
    """fastavro's parsed schema of the report, for ``fastavro.validation.validate`` or a writer.

    fastavro is imported here, on first use: it is needed by tests and Avro encoders only.
    """
    from fastavro import parse_schema

    return parse_schema(schema(report_type))
