"""A small, pure-Python, schema-driven protobuf decoder for the ObserveRTC sample schemas.

Why not the ``protobuf`` package: the collector only ever *decodes* a handful of known messages,
and it wants the result shaped exactly like the JSON the same clients send (camelCase names from
the .proto, nested dicts, lists for repeated fields, ids as strings), so that one code path
handles both encodings. Generated classes would add a runtime dependency, a build step and a
second conversion. Instead we parse the shipped .proto text once (``message_schema``) into
lookup tables and walk the wire format directly (``decode``).

Decoding rules (see ``decode``): integers become ``int`` (zigzag for ``sint*``), ``double`` and
``float`` become ``float``, enums their symbol name (an unknown number stays an ``int``),
``string`` a ``str`` (invalid UTF-8 is an error), ``bytes`` a ``str`` (see ``_bytes_to_str``).
Fields absent on the wire are absent from the result: proto3 defaults are *not* filled in, as a
JSON client would simply have left those keys out. Unknown field numbers are skipped.

Every failure raises ``ProtobufError`` (a ``ValueError``) with a short reason meant to be shown
to the sender, e.g. as the body of an HTTP 400.
"""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import Any

__all__ = [
    "FieldSchema",
    "MessageSchema",
    "ProtobufError",
    "decode",
    "message_schema",
    "parse_proto",
    "top_level_field_numbers",
]

#: Nesting limit for sub-messages. The ObserveRTC schemas nest 4 deep; anything far deeper is a
#: malicious or broken payload, and this keeps us well clear of Python's own recursion limit.
MAX_DEPTH = 64


class ProtobufError(ValueError):
    """The payload (or a .proto file) is not valid; ``str(err)`` is a short human-readable reason."""


# --------------------------------------------------------------------------------------------
# Schema model
# --------------------------------------------------------------------------------------------

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5

# Decoding kinds: what to do with a field's value once its tag matched. The hot loop compares
# against these as *literal* ints (a module-global lookup per comparison costs measurably), so
# the numbering is part of the code: 0-3 are the length-delimited kinds.
_K_STRING, _K_MESSAGE, _K_BYTES, _K_PACKED = 0, 1, 2, 3
_K_F64, _K_F32 = 4, 5
_K_INT, _K_BOOL, _K_ENUM, _K_SINT = 6, 7, 8, 9

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF


def _to_int32(v: int) -> int:
    v &= _MASK32
    return v - 0x100000000 if v & 0x80000000 else v


def _to_int64(v: int) -> int:
    v &= _MASK64
    return v - 0x10000000000000000 if v & 0x8000000000000000 else v


def _to_uint32(v: int) -> int:
    return v & _MASK32


def _to_uint64(v: int) -> int:
    return v & _MASK64


def _zigzag32(v: int) -> int:
    v &= _MASK32
    return (v >> 1) ^ -(v & 1)


def _zigzag64(v: int) -> int:
    v &= _MASK64
    return (v >> 1) ^ -(v & 1)


_unpack_d = struct.Struct("<d").unpack_from
_unpack_f = struct.Struct("<f").unpack_from
_unpack_q = struct.Struct("<q").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from
_unpack_i = struct.Struct("<i").unpack_from
_unpack_I = struct.Struct("<I").unpack_from

# scalar type -> (wire type, kind, extra). For _K_INT/_K_SINT ``extra`` normalises a raw varint
# (only called when the raw value is >= 2**31, i.e. negative or unusually large); for
# _K_F64/_K_F32 it is the struct unpacker.
_SCALARS: dict[str, tuple[int, int, Any]] = {
    "double": (_I64, _K_F64, _unpack_d),
    "float": (_I32, _K_F32, _unpack_f),
    "int32": (_VARINT, _K_INT, _to_int32),
    "int64": (_VARINT, _K_INT, _to_int64),
    "uint32": (_VARINT, _K_INT, _to_uint32),
    "uint64": (_VARINT, _K_INT, _to_uint64),
    "sint32": (_VARINT, _K_SINT, _zigzag32),
    "sint64": (_VARINT, _K_SINT, _zigzag64),
    "fixed32": (_I32, _K_F32, _unpack_I),
    "fixed64": (_I64, _K_F64, _unpack_Q),
    "sfixed32": (_I32, _K_F32, _unpack_i),
    "sfixed64": (_I64, _K_F64, _unpack_q),
    "bool": (_VARINT, _K_BOOL, None),
    "string": (_LEN, _K_STRING, None),
    "bytes": (_LEN, _K_BYTES, None),
}

_WIRE_NAMES = {_VARINT: "varint", _I64: "64-bit", _LEN: "length-delimited", _SGROUP: "group", _I32: "32-bit"}


@dataclass(eq=False)
class FieldSchema:
    """One field of a message: enough to decode it and to explain a mismatch."""

    name: str
    number: int
    type: str  # scalar type name, or the fully qualified message / enum name
    repeated: bool
    message: MessageSchema | None = None  # set for message-typed fields
    enum_values: dict[int, str] | None = None  # set for enum-typed fields


@dataclass(eq=False)
class MessageSchema:
    """A parsed message type.

    ``fields`` (number -> FieldSchema) is for people and tests; ``decode`` uses ``_by_tag``, a
    dict from the complete wire tag (``number << 3 | wire_type``) to a tuple
    ``(name, kind, repeated, extra)``. Keying on the whole tag means one dict lookup both finds
    the field and checks its wire type; a miss falls to the slow path, which tells an unknown
    field (skipped) from a wrong wire type (error). Repeated numeric fields get a second key for
    the packed (length-delimited) form.
    """

    full_name: str  # e.g. org.observertc.schemas.protobuf.Samples.ClientSample
    name: str  # without the package, as used in error messages: Samples.ClientSample
    fields: dict[int, FieldSchema] = field(default_factory=dict, repr=False)
    _by_tag: dict[int, tuple[str, int, bool, Any]] = field(default_factory=dict, repr=False)

    def _build(self) -> None:
        """Fill ``_by_tag`` from ``fields``; called once all message schemas exist (recursion-safe)."""
        table: dict[int, tuple[str, int, bool, Any]] = {}
        for f in self.fields.values():
            extra: Any
            if f.message is not None:
                wire, kind, extra = _LEN, _K_MESSAGE, f.message
            elif f.enum_values is not None:
                wire, kind, extra = _VARINT, _K_ENUM, f.enum_values
            else:
                wire, kind, extra = _SCALARS[f.type]
            table[f.number << 3 | wire] = (f.name, kind, f.repeated, extra)
            if f.repeated and wire != _LEN:
                table[f.number << 3 | _LEN] = (f.name, _K_PACKED, True, (kind, extra))
        self._by_tag = table


# --------------------------------------------------------------------------------------------
# .proto parser
# --------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<num>-?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|inf|nan)(?![\w.]))
  | (?P<ident>\.?[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)
  | (?P<sym>[{}\[\]()<>;=,:])
    """,
    re.VERBOSE | re.DOTALL,
)

_LABELS = frozenset({"optional", "required", "repeated"})


def _tokenize(text: str) -> list[tuple[str, int]]:
    """Split .proto text into tokens (value, line), dropping whitespace and comments."""
    tokens: list[tuple[str, int]] = []
    pos, line, n = 0, 1, len(text)
    while pos < n:
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise ProtobufError(f"proto syntax: unexpected character {text[pos]!r} at line {line}")
        value = m.group()
        if m.lastgroup != "ws":
            tokens.append((value, line))
        line += value.count("\n")
        pos = m.end()
    return tokens


class _Parser:
    """Recursive-descent parser for the subset of the proto2/proto3 language the schemas use.

    Understood: ``syntax``, ``package``, nested ``message`` and ``enum`` blocks (``allow_alias``
    included), labels or none, ``oneof`` (its fields decode as ordinary optional fields, as in
    JSON). Skipped as irrelevant to decoding: ``import``, ``option``, ``service``, ``reserved``,
    ``extensions`` and field options in ``[...]`` (``packed`` included: the decoder accepts both
    encodings anyway). Rejected with a clear error: ``map<>``, groups and ``extend``. None of
    the skipped or rejected constructs occur in the shipped schemas.
    """

    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0
        self.package = ""
        self.known: set[str] = set()
        # full name -> [(label, type, name, number)] / {number: symbol}
        self.messages: dict[str, list[tuple[str, str, str, int]]] = {}
        self.enums: dict[str, dict[int, str]] = {}

    # -- token helpers
    def _peek(self) -> str:
        return self.toks[self.i][0] if self.i < len(self.toks) else ""

    def _next(self) -> str:
        if self.i >= len(self.toks):
            raise ProtobufError("proto syntax: unexpected end of file")
        tok = self.toks[self.i][0]
        self.i += 1
        return tok

    def _fail(self, what: str) -> ProtobufError:
        line = self.toks[min(self.i, len(self.toks) - 1)][1] if self.toks else 0
        return ProtobufError(f"proto syntax: {what} at line {line}")

    def _expect(self, tok: str) -> None:
        if self._next() != tok:
            self.i -= 1
            raise self._fail(f"expected {tok!r}, got {self._peek()!r}")

    def _skip_statement(self) -> None:
        """Skip to the end of a ``;`` statement, or over a ``{...}`` block."""
        depth = 0
        while True:
            tok = self._next()
            if tok == "{":
                depth += 1
            elif tok == "}":
                depth -= 1
                if depth == 0:
                    return
            elif tok == ";" and depth == 0:
                return

    def _int(self, tok: str) -> int:
        try:
            return int(tok, 0)
        except ValueError:
            raise self._fail(f"expected an integer, got {tok!r}") from None

    # -- grammar
    def parse(self) -> None:
        while self.i < len(self.toks):
            tok = self._next()
            if tok == "syntax" or tok == "edition":
                self._expect("=")
                value = self._next().strip("\"'")
                if value not in ("proto2", "proto3"):
                    raise self._fail(f"unsupported syntax {value!r}")
                self._expect(";")
            elif tok == "package":
                self.package = self._next()
                self._expect(";")
            elif tok in ("import", "option", "service"):
                self._skip_statement()  # nothing in them matters for decoding local messages
            elif tok == "message":
                self._message(self.package)
            elif tok == "enum":
                self._enum(self.package)
            elif tok == ";":
                continue
            else:
                raise self._fail(f"unsupported top-level statement {tok!r}")
        # Every defined name and every namespace above one, for scope lookups in resolve().
        self.known = set(self.messages) | set(self.enums)
        for name in list(self.known):
            while "." in name:
                name = name.rpartition(".")[0]
                self.known.add(name)

    def _message(self, scope: str) -> None:
        name = self._next()
        full = f"{scope}.{name}" if scope else name
        if full in self.messages or full in self.enums:
            raise self._fail(f"duplicate type {full}")
        fields: list[tuple[str, str, str, int]] = []
        self.messages[full] = fields
        self._expect("{")
        self._body(full, fields, in_oneof=False)

    def _body(self, full: str, fields: list[tuple[str, str, str, int]], in_oneof: bool) -> None:
        while True:
            tok = self._next()
            if tok == "}":
                return
            if tok == ";":
                continue
            if not in_oneof:
                if tok == "message":
                    self._message(full)
                    continue
                if tok == "enum":
                    self._enum(full)
                    continue
                if tok == "oneof":
                    self._next()  # the oneof's name
                    self._expect("{")
                    self._body(full, fields, in_oneof=True)
                    continue
                if tok == "reserved":
                    self._skip_statement()
                    continue
            if tok == "option" or tok == "extensions":
                self._skip_statement()  # extension fields are simply unknown fields on the wire
                continue
            if tok == "extend" or (tok == "map" and self._peek() == "<"):
                raise self._fail(f"{tok!r} is not supported")
            label = ""
            if tok in _LABELS:
                label, tok = tok, self._next()
            ftype, fname = tok, self._next()
            self._expect("=")
            number = self._int(self._next())
            if not 1 <= number <= 0x1FFFFFFF:
                raise self._fail(f"field number {number} out of range")
            if self._peek() == "[":
                while self._next() != "]":
                    pass
            if self._peek() == "{":
                raise self._fail("'group' is not supported")
            self._expect(";")
            fields.append((label, ftype, fname, number))

    def _enum(self, scope: str) -> None:
        name = self._next()
        full = f"{scope}.{name}" if scope else name
        values: dict[int, str] = {}
        self.enums[full] = values
        self._expect("{")
        while True:
            tok = self._next()
            if tok == "}":
                return
            if tok == ";":
                continue
            if tok in ("option", "reserved"):
                self._skip_statement()
                continue
            self._expect("=")
            number = self._int(self._next())
            if self._peek() == "[":
                while self._next() != "]":
                    pass
            self._expect(";")
            values.setdefault(number, tok)  # with allow_alias the first name is canonical

    # -- type resolution
    def resolve(self, ref: str, scope: str) -> str:
        """Resolve a type reference as protoc does: innermost scope outwards, on the first name part.

        ``Foo.Bar`` used inside ``pkg.A.B`` tries ``pkg.A.B.Foo``, ``pkg.A.Foo``, ``pkg.Foo``,
        ``Foo``; the first scope where ``Foo`` exists wins, and ``.Bar`` must then exist under it
        (protoc does not backtrack to an outer ``Foo``). A leading dot means fully qualified.
        """
        types = self.messages.keys() | self.enums.keys()
        if ref.startswith("."):
            if ref[1:] in types:
                return ref[1:]
            raise ProtobufError(f"proto: unknown type {ref} (in {scope})")
        first, _, rest = ref.partition(".")
        s = scope
        while True:
            base = f"{s}.{first}" if s else first
            if base in self.known:
                full = f"{base}.{rest}" if rest else base
                if full in types:
                    return full
                raise ProtobufError(f"proto: unknown type {ref} (in {scope}; {base} has no {rest})")
            if not s:
                raise ProtobufError(f"proto: unknown type {ref} (in {scope})")
            s = s.rpartition(".")[0]


def parse_proto(text: str) -> dict[str, MessageSchema]:
    """Parse .proto text into schemas for all its messages, keyed by fully qualified name."""
    p = _Parser(text)
    p.parse()
    prefix = p.package + "." if p.package else ""
    schemas = {
        full: MessageSchema(full_name=full, name=full[len(prefix) :] if full.startswith(prefix) else full) for full in p.messages
    }
    for full, raw_fields in p.messages.items():
        schema = schemas[full]
        for label, ftype, fname, number in raw_fields:
            if number in schema.fields:
                raise ProtobufError(f"proto: field number {number} used twice in {full}")
            fs = FieldSchema(name=fname, number=number, type=ftype, repeated=label == "repeated")
            if ftype not in _SCALARS:
                fs.type = p.resolve(ftype, full)
                if fs.type in schemas:
                    fs.message = schemas[fs.type]
                else:
                    fs.enum_values = p.enums[fs.type]
            schema.fields[number] = fs
    for schema in schemas.values():
        schema._build()
    return schemas


@cache
def message_schema(version_dir: str, proto_file: str, message: str) -> MessageSchema:
    """The schema of ``message`` in one of the shipped .proto files, parsed once and cached.

    ``message`` may be fully qualified (``org.observertc.schemas.protobuf.Samples``) or relative to
    the file's package (``Samples``, ``Samples.ClientSample``).
    """
    for full, schema in _parse_file(version_dir, proto_file).items():
        if full == message or schema.name == message:
            return schema
    raise ProtobufError(f"proto: no message {message} in {version_dir}/{proto_file}")


@cache
def _parse_file(version_dir: str, proto_file: str) -> dict[str, MessageSchema]:
    from webrtc_observer.schemas import schema_text

    return parse_proto(schema_text(version_dir, proto_file))


# --------------------------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a varint starting at ``pos``; returns (value, new pos). Values are cut to 64 bits."""
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise ProtobufError(f"truncated varint at byte {start}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError(f"varint longer than 10 bytes at byte {start}")


def _skip(buf: bytes, pos: int, end: int, tag: int, depth: int) -> int:
    """Skip the value of a field with ``tag`` whose tag ended at ``pos``; returns the new pos."""
    wire = tag & 7
    if wire == _VARINT:
        return _varint(buf, pos, end)[1]
    if wire == _I64:
        new = pos + 8
    elif wire == _I32:
        new = pos + 4
    elif wire == _LEN:
        n, pos = _varint(buf, pos, end)
        new = pos + n
    elif wire == _SGROUP:
        if depth >= MAX_DEPTH:
            raise ProtobufError(f"groups nested deeper than {MAX_DEPTH} at byte {pos}")
        while True:
            if pos >= end:
                raise ProtobufError(f"unterminated group (field {tag >> 3}) at byte {pos}")
            inner, pos = _varint(buf, pos, end)
            if inner & 7 == _EGROUP:
                if inner >> 3 != tag >> 3:
                    raise ProtobufError(f"mismatched end of group {tag >> 3} at byte {pos}")
                return pos
            if inner >> 3 == 0:
                raise ProtobufError(f"invalid field number 0 at byte {pos}")
            pos = _skip(buf, pos, end, inner, depth + 1)
    elif wire == _EGROUP:
        raise ProtobufError(f"unexpected end of group (field {tag >> 3}) at byte {pos}")
    else:
        raise ProtobufError(f"invalid wire type {wire} (field {tag >> 3}) at byte {pos}")
    if new > end:
        raise ProtobufError(f"truncated {_WIRE_NAMES[wire]} value of field {tag >> 3} at byte {pos}")
    return new


def _unexpected_tag(schema: MessageSchema, tag: int, pos: int) -> None:
    """Slow path for a tag not in the table: fine if the field is unknown, an error otherwise."""
    number, wire = tag >> 3, tag & 7
    if number == 0:
        raise ProtobufError(f"invalid field number 0 at byte {pos}")
    f = schema.fields.get(number)
    if f is None:
        return
    expected = "message" if f.message is not None else "enum" if f.enum_values is not None else f.type
    raise ProtobufError(f"field {number} of {schema.name}: wire type {wire} does not match {expected}")


def _bytes_to_str(raw: bytes) -> str:
    """Render a ``bytes`` id the way the JSON clients send it.

    The ObserveRTC proto3 schemas declare ids as ``bytes``: clients put a UUID there as its 16
    raw bytes and any other id as UTF-8. So: valid UTF-8 is text, exactly 16 bytes is a UUID,
    anything else is hex. One refinement: about 1 in 16,000 random UUIDs is also valid UTF-8
    (and would turn into garbage text, breaking correlation on busy systems), so 16 bytes that
    are not plain printable ASCII but carry the RFC 4122 variant bits are read as a UUID.
    Printable-ASCII 16-character ids never carry those bits, so they stay text.
    """
    if len(raw) == 16 and not (raw.isascii() and raw.decode("ascii").isprintable()) and raw[8] & 0xC0 == 0x80:
        return str(uuid.UUID(bytes=raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if len(raw) == 16:
            return str(uuid.UUID(bytes=raw))
        return raw.hex()


def _merge(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge a repeated occurrence of a singular sub-message, as protobuf does."""
    for key, value in new.items():
        prev = old.get(key)
        if isinstance(prev, list):
            prev.extend(value)
        elif isinstance(prev, dict):
            _merge(prev, value)
        else:
            old[key] = value


def _decode_message(buf: bytes, pos: int, end: int, schema: MessageSchema, depth: int) -> dict[str, Any]:
    """Decode ``buf[pos:end]`` as ``schema``.

    This is the hot loop, so it is written flat: locals only, literal kind numbers (see
    ``_K_*``), and the one-byte varint (tags, lengths, small counters) handled inline.
    Every read is bounded by ``end``, never by ``len(buf)``, so a sub-message cannot read
    its parent's bytes.
    """
    if depth > MAX_DEPTH:
        raise ProtobufError(f"messages nested deeper than {MAX_DEPTH} at byte {pos}")
    get = schema._by_tag.get
    out: dict[str, Any] = {}
    while pos < end:
        tag = buf[pos]
        pos += 1
        if tag >= 0x80:  # two-byte tags (fields 16-2047) inline, longer ones in _varint
            if pos < end and buf[pos] < 0x80:
                tag = (tag & 0x7F) | buf[pos] << 7
                pos += 1
            else:
                tag, pos = _varint(buf, pos - 1, end)
        entry = get(tag)
        if entry is None:
            _unexpected_tag(schema, tag, pos)
            pos = _skip(buf, pos, end, tag, depth)
            continue
        name, kind, repeated, extra = entry

        if kind < 4:  # string, message, bytes, packed: length-delimited
            if pos >= end:
                raise ProtobufError(f"truncated varint at byte {pos}")
            n = buf[pos]
            pos += 1
            if n >= 0x80:
                if pos < end and buf[pos] < 0x80:
                    n = (n & 0x7F) | buf[pos] << 7
                    pos += 1
                else:
                    n, pos = _varint(buf, pos - 1, end)
            stop = pos + n
            if stop > end:
                raise ProtobufError(f"truncated field {tag >> 3} of {schema.name}: length {n} at byte {pos} runs past byte {end}")
            if kind == 0:
                try:
                    value: Any = buf[pos:stop].decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtobufError(f"field {tag >> 3} of {schema.name}: invalid UTF-8 at byte {pos}") from None
            elif kind == 1:
                value = _decode_message(buf, pos, stop, extra, depth + 1)
                if not repeated and name in out:
                    _merge(out[name], value)  # a singular message sent twice is merged
                    pos = stop
                    continue
            elif kind == 2:
                value = _bytes_to_str(buf[pos:stop])
            else:
                value = _decode_packed(buf, pos, stop, extra, tag, schema)
                lst = out.get(name)
                if lst is None:
                    out[name] = value
                else:
                    lst.extend(value)
                pos = stop
                continue
            pos = stop
        elif kind < 6:  # 64-bit, 32-bit: extra is the struct unpacker
            stop = pos + (8 if kind == 4 else 4)
            if stop > end:
                raise ProtobufError(f"truncated field {tag >> 3} of {schema.name} at byte {pos}")
            value = extra(buf, pos)[0]
            pos = stop
        else:  # varint kinds
            if pos >= end:
                raise ProtobufError(f"truncated varint at byte {pos}")
            value = buf[pos]
            pos += 1
            if value >= 0x80:  # counters, ssrcs, timestamps: usually 2-6 bytes, so loop inline
                start = pos - 1
                value &= 0x7F
                shift = 7
                while True:
                    if pos >= end:
                        raise ProtobufError(f"truncated varint at byte {start}")
                    b = buf[pos]
                    pos += 1
                    value |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift >= 70:
                        raise ProtobufError(f"varint longer than 10 bytes at byte {start}")
                value &= 0xFFFFFFFFFFFFFFFF
            if kind == 6:
                if value > 0x7FFFFFFF:  # negative, or beyond int32: normalise per type
                    value = extra(value)
            elif kind == 7:
                value = value != 0
            elif kind == 8:
                value = _to_int32(value)
                value = extra.get(value, value)
            else:
                value = extra(value)

        if repeated:
            lst = out.get(name)
            if lst is None:
                out[name] = [value]
            else:
                lst.append(value)
        else:
            out[name] = value
    return out


def _decode_packed(buf: bytes, pos: int, end: int, spec: tuple[int, Any], tag: int, schema: MessageSchema) -> list[Any]:
    """Decode a packed run of numeric values (the default encoding of repeated scalars in proto3)."""
    kind, extra = spec
    if kind in (_K_F64, _K_F32):
        size = 8 if kind == _K_F64 else 4
        if (end - pos) % size:
            raise ProtobufError(f"field {tag >> 3} of {schema.name}: packed length {end - pos} is not a multiple of {size}")
        return [extra(buf, p)[0] for p in range(pos, end, size)]
    values: list[Any] = []
    append = values.append
    while pos < end:
        v, pos = _varint(buf, pos, end)
        if kind == _K_INT:
            if v > 0x7FFFFFFF:
                v = extra(v)
        elif kind == _K_BOOL:
            v = v != 0
        elif kind == _K_ENUM:
            v = _to_int32(v)
            v = extra.get(v, v)
        else:
            v = extra(v)
        append(v)
    return values


def decode(data: bytes | bytearray | memoryview, schema: MessageSchema) -> dict[str, Any]:
    """Decode one serialized message into a JSON-shaped dict (see the module docstring)."""
    buf = data if type(data) is bytes else bytes(data)
    try:
        return _decode_message(buf, 0, len(buf), schema, 0)
    except RecursionError:
        raise ProtobufError("message nested too deeply") from None


def top_level_field_numbers(data: bytes | bytearray | memoryview) -> set[int]:
    """The field numbers present at the top level of ``data``, without decoding any values.

    Lets a caller sniff which schema a payload was written with: a 2.x ``Samples`` only uses
    fields 1-4 (all length-delimited), a 3.x ``ClientSample`` normally has field 7
    (``timestamp``, a double) and 9/10 (``callId``/``clientId``). A 3.x sample carrying only
    fields 1-4 (events, issues, meta items, extension stats) is indistinguishable from a
    ``Samples`` by this test, as all of those are length-delimited too. Raises
    ``ProtobufError`` if the top level is not well-formed protobuf.
    """
    buf = data if type(data) is bytes else bytes(data)
    pos, end = 0, len(buf)
    numbers: set[int] = set()
    while pos < end:
        start = pos
        tag, pos = _varint(buf, pos, end)
        if tag >> 3 == 0:
            raise ProtobufError(f"invalid field number 0 at byte {start}")
        if tag & 7 == _EGROUP:
            raise ProtobufError(f"unexpected end of group at byte {start}")
        pos = _skip(buf, pos, end, tag, 0)
        numbers.add(tag >> 3)
    return numbers
