"""AMQP 0-9-1 values: the field types of tables and arrays, the value domains of method arguments, and the
basic content properties. What the core may import from the protocol (stdlib only; nothing else of
:mod:`leveret.amqp`): :mod:`leveret.amqp.codec` builds methods and frames from these.

Every decoder takes ``(buffer, offset)`` and returns ``(value, new_offset)``. Malformed input raises
:class:`CodecError` and nothing else; the connection turns it into a connection close (501 FRAME_ERROR,
as RabbitMQ does for arguments it cannot decode). Decoded values keep their wire type where Python would lose
it (:class:`LongInt`, :class:`Int8` ..., :class:`Float32`, :class:`RawField`), so a table the broker
re-encodes is the table it received. Nothing here does I/O.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Table = dict[str, Any]

# Domain types of method arguments and properties (the specification's domains, by their spec names).
BIT = "bit"
OCTET = "octet"
SHORT = "short"
LONG = "long"
LONGLONG = "longlong"
SHORTSTR = "shortstr"
LONGSTR = "longstr"
TABLE = "table"
TIMESTAMP = "timestamp"

# Content properties of class basic, in flag order (bit 15 first).
BASIC_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("content_type", SHORTSTR),
    ("content_encoding", SHORTSTR),
    ("headers", TABLE),
    ("delivery_mode", OCTET),
    ("priority", OCTET),
    ("correlation_id", SHORTSTR),
    ("reply_to", SHORTSTR),
    ("expiration", SHORTSTR),
    ("message_id", SHORTSTR),
    ("timestamp", TIMESTAMP),
    ("type", SHORTSTR),
    ("user_id", SHORTSTR),
    ("app_id", SHORTSTR),
    ("cluster_id", SHORTSTR),
)

# Field value type tags in tables and arrays, as RabbitMQ's clients send them.
FIELD_TYPES = "tbBsuIilLfdDSxATFV"

_B = struct.Struct(">B")
_b = struct.Struct(">b")
_H = struct.Struct(">H")
_h = struct.Struct(">h")
_I = struct.Struct(">I")
_i = struct.Struct(">i")
_Q = struct.Struct(">Q")
_q = struct.Struct(">q")
_f = struct.Struct(">f")
_d = struct.Struct(">d")


class CodecError(ValueError):
    """Bytes that do not decode as the specification says; ``reply_code`` is the AMQP code to close with
    (501 FRAME_ERROR unless told otherwise)."""

    def __init__(self, text: str, reply_code: int = 501) -> None:
        super().__init__(text)
        self.reply_code = reply_code


def need(buf: bytes, offset: int, size: int) -> None:
    """Raise CodecError unless ``size`` bytes are left in ``buf`` from ``offset``."""
    if offset + size > len(buf):
        raise CodecError(f"value runs past the end of the frame (needs {size} bytes at offset {offset})")


# --- strings ---------------------------------------------------------------------------------------


def decode_shortstr(buf: bytes, offset: int) -> tuple[str, int]:
    need(buf, offset, 1)
    size = buf[offset]
    end = offset + 1 + size
    if end > len(buf):
        raise CodecError("short string runs past the end of the frame")
    try:
        return buf[offset + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise CodecError(f"short string is not valid UTF-8: {exc}") from None


def encode_shortstr(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) > 255:
        raise CodecError(f"short string too long ({len(raw)} bytes, at most 255)")
    return bytes((len(raw),)) + raw


def decode_longstr_bytes(buf: bytes, offset: int) -> tuple[bytes, int]:
    need(buf, offset, 4)
    (size,) = _I.unpack_from(buf, offset)
    end = offset + 4 + size
    if end > len(buf):
        raise CodecError("long string runs past the end of the frame")
    return bytes(buf[offset + 4 : end]), end


def encode_longstr(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _I.pack(len(raw)) + raw


# --- field tables ----------------------------------------------------------------------------------


def _simple(st: struct.Struct) -> Callable[[bytes, int], tuple[Any, int]]:
    size = st.size

    def decode(buf: bytes, offset: int) -> tuple[Any, int]:
        need(buf, offset, size)
        return st.unpack_from(buf, offset)[0], offset + size

    return decode


class LongInt(int):
    """An integer that is encoded as a 64-bit field ('l') even when it is small: what RabbitMQ sends for
    x-death counts, and what Java clients read as a Long. Decoding 'l' gives one, so it round-trips."""

    field_tag = b"l"

    def __repr__(self) -> str:
        return f"LongInt({int(self)})"

    def __str__(self) -> str:
        return int.__repr__(self)


def _sized_int(name: str, tag: bytes, doc: str) -> type[int]:
    return type(name, (int,), {"__slots__": (), "__doc__": doc, "field_tag": tag,
                               "__repr__": lambda self: f"{name}({int(self)})", "__str__": int.__repr__})


# The other integer widths decode to int subclasses that remember their tag, so that a table the broker
# re-encodes (dead-lettering adds x-death) keeps every value's type, as RabbitMQ does. They are ints in every
# other respect (equal to, and hashing as, the plain int).
Int8 = _sized_int("Int8", b"b", "A signed 8-bit field ('b').")
UInt8 = _sized_int("UInt8", b"B", "An unsigned 8-bit field ('B').")
Int16 = _sized_int("Int16", b"s", "A signed 16-bit field ('s').")
UInt16 = _sized_int("UInt16", b"u", "An unsigned 16-bit field ('u').")
UInt32 = _sized_int("UInt32", b"i", "An unsigned 32-bit field ('i').")
UInt64 = _sized_int("UInt64", b"L", "An unsigned 64-bit field ('L').")


class Float32(float):
    """A single-precision field ('f'): re-encoded as 'f' (a plain float is encoded as a double, 'd')."""

    __slots__ = ()
    field_tag = b"f"

    def __repr__(self) -> str:
        return f"Float32({float(self)!r})"


class RawField:
    """A field value no Python type holds losslessly, carried as its wire bytes: a timestamp ('T') outside
    datetime's range (a client that put milliseconds where seconds belong), a long string ('S') that is not
    UTF-8, a table or array nested deeper than :data:`MAX_NESTING` levels. RabbitMQ accepts and carries such
    values; so does Leveret: they compare by their bytes and encode back to exactly the bytes they came from.

    ``tag`` is the field type (one byte), ``raw`` the value's bytes after the tag."""

    __slots__ = ("raw", "tag")

    def __init__(self, tag: bytes, raw: bytes) -> None:
        self.tag = tag
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawField) and other.tag == self.tag and other.raw == self.raw

    def __hash__(self) -> int:
        return hash((self.tag, self.raw))

    def __repr__(self) -> str:
        return f"RawField({self.tag!r}, {self.raw!r})"

    @property
    def plain(self) -> Any:
        """The nearest plain value, for display (JSON): a timestamp's integer, a string's bytes with
        undecodable ones replaced, a deep table's or array's description."""
        if self.tag == b"T":
            return _Q.unpack(self.raw)[0]
        if self.tag == b"S":
            return self.raw[4:].decode("utf-8", "replace")
        kind = "table" if self.tag == b"F" else "array"
        return f"<{kind} nested deeper than {MAX_NESTING} levels, {len(self.raw) - 4} bytes>"


_RAW_TYPE_NAMES = {b"T": "timestamp", b"S": "longstr", b"F": "table", b"A": "array"}


_WIDTH_NAMES = {b"b": "byte", b"B": "unsignedbyte", b"s": "short", b"u": "unsignedshort", b"i": "unsignedint",
                b"l": "long", b"L": "long", b"f": "float"}


def field_type(value: Any) -> str:
    """RabbitMQ's name for the AMQP field type a decoded value arrives as, for error texts: a decoded value's
    own type (``byte``, ``unsignedint``, ``float`` ...); plain ints are ``signedint`` unless they need 64 bits."""
    if value is None:
        return "void"
    tag = getattr(type(value), "field_tag", None)
    if tag is not None:
        return _WIDTH_NAMES[tag]
    if isinstance(value, RawField):
        return _RAW_TYPE_NAMES.get(value.tag, "binary")
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, LongInt) or (isinstance(value, int) and not -(2**31) <= value < 2**31):
        return "long"
    if isinstance(value, int):
        return "signedint"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, bytes | bytearray | memoryview):
        return "binary"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _decode_bool(buf: bytes, offset: int) -> tuple[Any, int]:
    need(buf, offset, 1)
    return buf[offset] != 0, offset + 1


def _decode_decimal(buf: bytes, offset: int) -> tuple[Any, int]:
    need(buf, offset, 5)
    scale = buf[offset]
    (value,) = _i.unpack_from(buf, offset + 1)
    return decimal.Decimal(value).scaleb(-scale), offset + 5


def _decode_longstr_field(buf: bytes, offset: int) -> tuple[Any, int]:
    start = offset
    raw, offset = decode_longstr_bytes(buf, offset)
    try:
        return raw.decode("utf-8"), offset
    except UnicodeDecodeError:
        return RawField(b"S", bytes(buf[start:offset])), offset


def _decode_timestamp(buf: bytes, offset: int) -> tuple[Any, int]:
    need(buf, offset, 8)
    (seconds,) = _Q.unpack_from(buf, offset)
    if seconds > _MAX_DATETIME_SECONDS:
        return RawField(b"T", bytes(buf[offset : offset + 8])), offset + 8
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC), offset + 8


_MAX_DATETIME_SECONDS = int(datetime.datetime.max.replace(tzinfo=datetime.UTC).timestamp())


def _decode_void(buf: bytes, offset: int) -> tuple[Any, int]:
    return None, offset


# Tables and arrays nest. They are decoded with an explicit stack (no recursion), so any depth that fits in a
# frame decodes; one nested deeper than this is carried as a RawField (validated, not built), so that nothing
# downstream (re-encoding, comparison, JSON) recurses deeper than this either.
MAX_NESTING = 128
_TAG_TABLE = ord("F")
_TAG_ARRAY = ord("A")


def _typed(cls: type, st: struct.Struct) -> Callable[[bytes, int], tuple[Any, int]]:
    size = st.size

    def decode(buf: bytes, offset: int) -> tuple[Any, int]:
        need(buf, offset, size)
        return cls(st.unpack_from(buf, offset)[0]), offset + size

    return decode


_FIELD_DECODERS: dict[int, Callable[[bytes, int], tuple[Any, int]]] = {
    ord("t"): _decode_bool,
    ord("b"): _typed(Int8, _b),
    ord("B"): _typed(UInt8, _B),
    ord("s"): _typed(Int16, _h),
    ord("u"): _typed(UInt16, _H),
    ord("I"): _simple(_i),
    ord("i"): _typed(UInt32, _I),
    ord("l"): _typed(LongInt, _q),
    ord("L"): _typed(UInt64, _Q),
    ord("f"): _typed(Float32, _f),
    ord("d"): _simple(_d),
    ord("D"): _decode_decimal,
    ord("S"): _decode_longstr_field,
    ord("x"): decode_longstr_bytes,
    ord("T"): _decode_timestamp,
    ord("V"): _decode_void,
}


def decode_field_value(buf: bytes, offset: int) -> tuple[Any, int]:
    """One tagged field value (tag byte, then the value)."""
    need(buf, offset, 1)
    tag = buf[offset]
    if tag in (_TAG_TABLE, _TAG_ARRAY):
        return _decode_nested(buf, offset + 1, tag, 1)
    decoder = _FIELD_DECODERS.get(tag)
    if decoder is None:
        raise CodecError(f"unknown field type {chr(tag)!r} in table")
    return decoder(buf, offset + 1)


def decode_table(buf: bytes, offset: int) -> tuple[Table, int]:
    """A field table: a long size, then (shortstr name, tagged value) pairs."""
    return _decode_nested(buf, offset, _TAG_TABLE, 0)  # type: ignore[no-any-return]


def _open(buf: bytes, offset: int, tag: int) -> tuple[Any, int, int]:
    """A new empty table or array whose size field is at ``offset``: (container, start of contents, end)."""
    need(buf, offset, 4)
    (size,) = _I.unpack_from(buf, offset)
    end = offset + 4 + size
    if end > len(buf):
        raise CodecError(("table" if tag == _TAG_TABLE else "array") + " runs past the end of the frame")
    return ({} if tag == _TAG_TABLE else []), offset + 4, end


def _decode_nested(buf: bytes, offset: int, tag: int, depth: int) -> tuple[Any, int]:
    """The table or array (``tag``) whose size field is at ``offset``, and everything in it, without
    recursion. ``depth`` is its own nesting level (the outermost table of a method argument is 0)."""
    root, offset, end = _open(buf, offset, tag)
    container: Any = root
    is_table = tag == _TAG_TABLE
    parents: list[tuple[Any, int, bool]] = []  # the containers being filled around ``container``
    carried = 0  # len(parents) + 1 when a container was carried raw: everything deeper is only checked
    decoders = _FIELD_DECODERS
    size = len(buf)
    key = ""
    while True:
        if offset < end:
            if is_table:
                key_end = offset + 1 + buf[offset]
                if key_end > size:
                    raise CodecError("short string runs past the end of the frame")
                try:
                    key = buf[offset + 1 : key_end].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CodecError(f"short string is not valid UTF-8: {exc}") from None
                offset = key_end
                need(buf, offset, 1)
            vtag = buf[offset]
            decoder = decoders.get(vtag)
            if decoder is not None:
                value, offset = decoder(buf, offset + 1)
            elif vtag in (_TAG_TABLE, _TAG_ARRAY):
                start = offset
                value, offset, child_end = _open(buf, offset + 1, vtag)
                parents.append((container, end, is_table))
                if not carried and depth + len(parents) > MAX_NESTING:  # keep the bytes, check the contents
                    carried = len(parents)
                    raw = RawField(bytes((vtag,)), bytes(buf[start + 1 : child_end]))
                    if is_table:
                        container[key] = raw
                    else:
                        container.append(raw)
                elif is_table:
                    container[key] = value
                else:
                    container.append(value)
                container, end, is_table = value, child_end, vtag == _TAG_TABLE
                continue
            else:
                raise CodecError(f"unknown field type {chr(vtag)!r} in table")
            if is_table:
                container[key] = value
            else:
                container.append(value)
            continue
        if offset != end:
            raise CodecError(("table" if is_table else "array") + " contents overrun its declared size")
        if not parents:
            return root, offset
        container, end, is_table = parents.pop()
        if len(parents) < carried:  # left the container that was carried raw
            carried = 0


def encode_field_value(value: Any) -> bytes:
    """Tag and encode one Python value: bool t, int I or l, float d, Decimal D, str S, bytes x,
    list A, dict F, None V, datetime T; the codec's own types (:class:`LongInt`, :class:`Int8` ...,
    :class:`Float32`, :class:`RawField`) as the field type they were decoded from."""
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    tag = getattr(type(value), "field_tag", None)
    if tag is not None:
        return _encode_tagged(tag, value)
    if isinstance(value, RawField):
        return value.tag + value.raw
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + _i.pack(value)
        if -(2**63) <= value < 2**63:
            return b"l" + _q.pack(value)
        if 0 <= value < 2**64:
            return b"L" + _Q.pack(value)
        raise CodecError(f"integer {value} does not fit a field table")
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b"S" + _I.pack(len(raw)) + raw
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return b"x" + _I.pack(len(raw)) + raw
    if isinstance(value, float):
        return b"d" + _d.pack(value)
    if isinstance(value, Mapping):
        return b"F" + encode_table(value)
    if isinstance(value, (list, tuple)):
        return b"A" + encode_array(value)
    if value is None:
        return b"V"
    if isinstance(value, datetime.datetime):
        seconds = int(value.timestamp())
        if not 0 <= seconds < 2**64:
            raise CodecError(f"datetime {value} is before the epoch: a timestamp cannot hold it")
        return b"T" + _Q.pack(seconds)
    if isinstance(value, decimal.Decimal):
        return b"D" + _encode_decimal(value)
    raise CodecError(f"cannot encode {type(value).__name__} in a field table")


_TAGGED = {b"b": _b, b"B": _B, b"s": _h, b"u": _H, b"i": _I, b"l": _q, b"L": _Q, b"f": _f}


def _encode_tagged(tag: bytes, value: Any) -> bytes:
    try:
        return tag + _TAGGED[tag].pack(value)
    except struct.error:  # a subclass built with a value its width cannot hold: let the plain rules choose
        return encode_field_value(float(value) if isinstance(value, float) else int(value))


def _encode_decimal(value: decimal.Decimal) -> bytes:
    # Exact arithmetic on the digits: Decimal.normalize() would round to the context's precision.
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise CodecError("cannot encode a non-finite decimal")
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    scale = -exponent
    if scale < 0:
        unscaled *= 10**-scale
        scale = 0
    while scale > 0 and unscaled % 10 == 0 and (scale > 255 or not -(2**31) <= unscaled < 2**31):
        unscaled //= 10  # trailing zeros of the fraction: drop them only when needed to fit
        scale -= 1
    if scale > 255 or not -(2**31) <= unscaled < 2**31:
        raise CodecError(f"decimal {value} does not fit a field table")
    return bytes((scale,)) + _i.pack(unscaled)


def encode_table(table: Mapping[str, Any] | None) -> bytes:
    if not table:
        return b"\x00\x00\x00\x00"
    parts = []
    for key, value in table.items():
        parts.append(encode_shortstr(key))
        parts.append(encode_field_value(value))
    body = b"".join(parts)
    return _I.pack(len(body)) + body


def encode_array(items: Sequence[Any]) -> bytes:
    body = b"".join(encode_field_value(v) for v in items)
    return _I.pack(len(body)) + body


# --- value domains (method arguments and properties) ---------------------------------------------


def _decode_octet(buf: bytes, offset: int) -> tuple[Any, int]:
    need(buf, offset, 1)
    return buf[offset], offset + 1


def _decode_timestamp_int(buf: bytes, offset: int) -> tuple[Any, int]:
    need(buf, offset, 8)
    return _Q.unpack_from(buf, offset)[0], offset + 8


DOMAIN_DECODERS: dict[str, Callable[[bytes, int], tuple[Any, int]]] = {  # every domain but bit (packed)
    OCTET: _decode_octet,
    SHORT: _simple(_H),
    LONG: _simple(_I),
    LONGLONG: _simple(_Q),
    SHORTSTR: decode_shortstr,
    LONGSTR: decode_longstr_bytes,
    TABLE: decode_table,
    TIMESTAMP: _decode_timestamp_int,
}


def encode_domain(kind: str, value: Any) -> bytes:
    """One value of domain ``kind`` (not bit: bits are packed by the caller)."""
    try:
        if kind == SHORTSTR:
            return encode_shortstr(value)
        if kind == LONGSTR:
            return encode_longstr(value)
        if kind == TABLE:
            return encode_table(value)
        if kind == OCTET:
            return _B.pack(value)
        if kind == SHORT:
            return _H.pack(value)
        if kind == LONG:
            return _I.pack(value)
        return _Q.pack(value)  # longlong, timestamp
    except struct.error as exc:  # a number out of the domain's range
        raise CodecError(f"cannot encode {value!r} as {kind}: {exc}") from None


# --- content properties ----------------------------------------------------------------------------


def decode_properties(raw: bytes) -> dict[str, Any]:
    """The basic properties from their wire form (flags then values), as a dict of the present ones."""
    flags, offset = _read_flags(raw)
    props: dict[str, Any] = {}
    for index, (name, kind) in enumerate(BASIC_PROPERTIES):
        if flags & (1 << (15 - index)):
            props[name], offset = DOMAIN_DECODERS[kind](raw, offset)
    if offset != len(raw):
        raise CodecError("content header has bytes left after its properties")
    return props


def _read_flags(raw: bytes) -> tuple[int, int]:
    need(raw, 0, 2)
    (flags,) = _H.unpack_from(raw, 0)
    if flags & 0x3:  # continuation bit or the unused 15th flag: class basic defines neither
        raise CodecError("content header property flags name properties class basic does not have")
    return flags, 2


def encode_properties(props: Mapping[str, Any]) -> bytes:
    """The wire form of basic properties (flags then values); absent or None ones are left out."""
    flags = 0
    parts = []
    for index, (name, kind) in enumerate(BASIC_PROPERTIES):
        value = props.get(name)
        if value is None:
            continue
        flags |= 1 << (15 - index)
        parts.append(encode_domain(kind, value))
    return _H.pack(flags) + b"".join(parts)


def property_value(raw: bytes, name: str) -> Any:
    """One property from the wire form without building a dict; None when absent."""
    flags, offset = _read_flags(raw)
    for index, (pname, kind) in enumerate(BASIC_PROPERTIES):
        if not flags & (1 << (15 - index)):
            continue
        value, offset = DOMAIN_DECODERS[kind](raw, offset)
        if pname == name:
            return value
    return None
