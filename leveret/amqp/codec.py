"""Encoding and decoding of AMQP 0-9-1 values: field tables, method arguments, content properties, frames.

Every decoder takes ``(buffer, offset)`` and returns ``(value, new_offset)``. Malformed input raises
:class:`CodecError` and nothing else; the connection turns it into a connection close (501 FRAME_ERROR,
as RabbitMQ does for arguments it cannot decode; 503 COMMAND_INVALID for an unknown method). Nothing
here does I/O.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import spec

Table = dict[str, Any]

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
_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_HEAD = struct.Struct(">HH")
_CONTENT_HEAD = struct.Struct(">HHQ")


class CodecError(ValueError):
    """Bytes that do not decode as the specification says; ``reply_code`` is the AMQP code to close with."""

    def __init__(self, text: str, reply_code: int = spec.FRAME_ERROR) -> None:
        super().__init__(text)
        self.reply_code = reply_code


def _need(buf: bytes, offset: int, size: int) -> None:
    if offset + size > len(buf):
        raise CodecError(f"value runs past the end of the frame (needs {size} bytes at offset {offset})")


# --- strings ---------------------------------------------------------------------------------------


def decode_shortstr(buf: bytes, offset: int) -> tuple[str, int]:
    _need(buf, offset, 1)
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
    _need(buf, offset, 4)
    (size,) = _I.unpack_from(buf, offset)
    end = offset + 4 + size
    if end > len(buf):
        raise CodecError("long string runs past the end of the frame")
    return bytes(buf[offset + 4 : end]), end


def encode_longstr(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _I.pack(len(raw)) + raw


# --- field tables ----------------------------------------------------------------------------------


def _decode_text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _simple(st: struct.Struct) -> Callable[[bytes, int], tuple[Any, int]]:
    size = st.size

    def decode(buf: bytes, offset: int) -> tuple[Any, int]:
        _need(buf, offset, size)
        return st.unpack_from(buf, offset)[0], offset + size

    return decode


_simple_q = _simple(_q)


class LongInt(int):
    """An integer that is encoded as a 64-bit field ('l') even when it is small: what RabbitMQ sends for
    x-death counts, and what Java clients read as a Long. Decoding 'l' gives one, so it round-trips."""

    def __repr__(self) -> str:
        return f"LongInt({int(self)})"

    def __str__(self) -> str:
        return int.__repr__(self)


def field_type(value: Any) -> str:
    """RabbitMQ's name for the AMQP field type a decoded value arrives as, for error texts: ints are
    ``signedint`` unless they need 64 bits or were a 64-bit field (:class:`LongInt`)."""
    if value is None:
        return "void"
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
    _need(buf, offset, 1)
    return buf[offset] != 0, offset + 1


def _decode_decimal(buf: bytes, offset: int) -> tuple[Any, int]:
    _need(buf, offset, 5)
    scale = buf[offset]
    (value,) = _i.unpack_from(buf, offset + 1)
    return decimal.Decimal(value).scaleb(-scale), offset + 5


def _decode_longstr_field(buf: bytes, offset: int) -> tuple[Any, int]:
    raw, offset = decode_longstr_bytes(buf, offset)
    return _decode_text(raw), offset


def _decode_timestamp(buf: bytes, offset: int) -> tuple[Any, int]:
    _need(buf, offset, 8)
    (seconds,) = _Q.unpack_from(buf, offset)
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC), offset + 8
    except (OverflowError, OSError, ValueError):
        raise CodecError(f"timestamp {seconds} out of range") from None


def _decode_void(buf: bytes, offset: int) -> tuple[Any, int]:
    return None, offset


def _decode_array(buf: bytes, offset: int, depth: int) -> tuple[Any, int]:
    _need(buf, offset, 4)
    (size,) = _I.unpack_from(buf, offset)
    offset += 4
    end = offset + size
    if end > len(buf):
        raise CodecError("array runs past the end of the frame")
    items = []
    while offset < end:
        value, offset = _decode_value(buf, offset, depth)
        items.append(value)
    if offset != end:
        raise CodecError("array contents overrun its declared size")
    return items, offset


# Tables and arrays nest; deeper than this is refused (CodecError) rather than exhausting the Python stack.
MAX_NESTING = 128
_TAG_TABLE = ord("F")
_TAG_ARRAY = ord("A")

_FIELD_DECODERS: dict[int, Callable[[bytes, int], tuple[Any, int]]] = {
    ord("t"): _decode_bool,
    ord("b"): _simple(_b),
    ord("B"): _simple(_B),
    ord("s"): _simple(_h),
    ord("u"): _simple(_H),
    ord("I"): _simple(_i),
    ord("i"): _simple(_I),
    ord("l"): lambda buf, offset: (LongInt(_simple_q(buf, offset)[0]), offset + 8),
    ord("L"): _simple(_Q),
    ord("f"): _simple(_f),
    ord("d"): _simple(_d),
    ord("D"): _decode_decimal,
    ord("S"): _decode_longstr_field,
    ord("x"): decode_longstr_bytes,
    ord("T"): _decode_timestamp,
    ord("V"): _decode_void,
}


def decode_field_value(buf: bytes, offset: int) -> tuple[Any, int]:
    """One tagged field value (tag byte, then the value)."""
    return _decode_value(buf, offset, 0)


def _decode_value(buf: bytes, offset: int, depth: int) -> tuple[Any, int]:
    _need(buf, offset, 1)
    tag = buf[offset]
    if tag in (_TAG_TABLE, _TAG_ARRAY):
        if depth >= MAX_NESTING:
            raise CodecError(f"tables and arrays nested deeper than {MAX_NESTING} levels")
        if tag == _TAG_TABLE:
            return _decode_table(buf, offset + 1, depth + 1)
        return _decode_array(buf, offset + 1, depth + 1)
    decoder = _FIELD_DECODERS.get(tag)
    if decoder is None:
        raise CodecError(f"unknown field type {chr(tag)!r} in table")
    return decoder(buf, offset + 1)


def decode_table(buf: bytes, offset: int) -> tuple[Table, int]:
    """A field table: a long size, then (shortstr name, tagged value) pairs."""
    return _decode_table(buf, offset, 0)


def _decode_table(buf: bytes, offset: int, depth: int) -> tuple[Table, int]:
    _need(buf, offset, 4)
    (size,) = _I.unpack_from(buf, offset)
    offset += 4
    end = offset + size
    if end > len(buf):
        raise CodecError("table runs past the end of the frame")
    table: Table = {}
    while offset < end:
        key, offset = decode_shortstr(buf, offset)
        table[key], offset = _decode_value(buf, offset, depth)
    if offset != end:
        raise CodecError("table contents overrun its declared size")
    return table, offset


def encode_field_value(value: Any) -> bytes:
    """Tag and encode one Python value: bool t, int I or l, float d, Decimal D, str S, bytes x,
    list A, dict F, None V, datetime T."""
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -(2**31) <= value < 2**31 and type(value) is not LongInt:
            return b"I" + _i.pack(value)
        if -(2**63) <= value < 2**63:
            return b"l" + _q.pack(value)
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


# --- method arguments ------------------------------------------------------------------------------


def _decode_octet(buf: bytes, offset: int) -> tuple[Any, int]:
    _need(buf, offset, 1)
    return buf[offset], offset + 1


def _decode_timestamp_int(buf: bytes, offset: int) -> tuple[Any, int]:
    _need(buf, offset, 8)
    return _Q.unpack_from(buf, offset)[0], offset + 8


_ARG_DECODERS: dict[str, Callable[[bytes, int], tuple[Any, int]]] = {
    spec.OCTET: _decode_octet,
    spec.SHORT: _simple(_H),
    spec.LONG: _simple(_I),
    spec.LONGLONG: _simple(_Q),
    spec.SHORTSTR: decode_shortstr,
    spec.LONGSTR: decode_longstr_bytes,
    spec.TABLE: decode_table,
    spec.TIMESTAMP: _decode_timestamp_int,
}


def _encode_arg(kind: str, value: Any) -> bytes:
    try:
        if kind == spec.SHORTSTR:
            return encode_shortstr(value)
        if kind == spec.LONGSTR:
            return encode_longstr(value)
        if kind == spec.TABLE:
            return encode_table(value)
        if kind == spec.OCTET:
            return _B.pack(value)
        if kind == spec.SHORT:
            return _H.pack(value)
        if kind == spec.LONG:
            return _I.pack(value)
        return _Q.pack(value)  # longlong, timestamp
    except struct.error as exc:  # a number out of the domain's range
        raise CodecError(f"cannot encode {value!r} as {kind}: {exc}") from None


def decode_arguments(method: spec.MethodSpec, buf: bytes, offset: int) -> tuple[tuple[Any, ...], int]:
    """The arguments of ``method`` from ``buf`` at ``offset`` (after the class and method ids)."""
    values: list[Any] = []
    bit = 8
    bits = 0
    for _name, kind in method.arguments:
        if kind == spec.BIT:
            if bit == 8:
                _need(buf, offset, 1)
                bits = buf[offset]
                offset += 1
                bit = 0
            values.append(bool(bits & (1 << bit)))
            bit += 1
            continue
        bit = 8
        try:
            value, offset = _ARG_DECODERS[kind](buf, offset)
        except struct.error:
            raise CodecError(f"{method.full_name}: truncated argument") from None
        values.append(value)
    return tuple(values), offset


def encode_arguments(method: spec.MethodSpec, args: Sequence[Any]) -> bytes:
    """Encode ``args`` (one per argument of ``method``, in order) without the class and method ids."""
    if len(args) != len(method.arguments):
        raise CodecError(f"{method.full_name} takes {len(method.arguments)} arguments, got {len(args)}")
    parts: list[bytes] = []
    bits = 0
    bit = -1
    for (_name, kind), value in zip(method.arguments, args, strict=True):
        if kind == spec.BIT:
            if bit == -1 or bit == 8:
                if bit != -1:
                    parts.append(bytes((bits,)))
                bits = 0
                bit = 0
            if value:
                bits |= 1 << bit
            bit += 1
            continue
        if bit != -1:
            parts.append(bytes((bits,)))
            bit = -1
        parts.append(_encode_arg(kind, value))
    if bit != -1:
        parts.append(bytes((bits,)))
    return b"".join(parts)


def encode_method_payload(method: spec.MethodSpec, args: Sequence[Any]) -> bytes:
    return _METHOD_HEAD.pack(method.class_id, method.method_id) + encode_arguments(method, args)


def decode_method_payload(payload: bytes) -> tuple[spec.MethodSpec, tuple[Any, ...]]:
    """A method frame's payload: the spec of the method and its decoded arguments.

    Raises CodecError with 503 COMMAND_INVALID for an unknown class or method, 501 FRAME_ERROR for
    arguments that do not decode or bytes left over (RabbitMQ's "cannot decode")."""
    if len(payload) < 4:
        raise CodecError("method frame too short", spec.FRAME_ERROR)
    class_id, method_id = _METHOD_HEAD.unpack_from(payload, 0)
    method = spec.METHODS_BY_KEY.get((class_id << 16) | method_id)
    if method is None:
        raise CodecError(f"unknown method {class_id}/{method_id}", spec.COMMAND_INVALID)
    args, offset = decode_arguments(method, payload, 4)
    if offset != len(payload):
        raise CodecError(f"{method.full_name}: {len(payload) - offset} bytes left after the arguments")
    return method, args


# --- content properties ----------------------------------------------------------------------------


_PROPERTY_NAMES = tuple(name for name, _ in spec.BASIC_PROPERTIES)


def decode_properties(raw: bytes) -> dict[str, Any]:
    """The basic properties from their wire form (flags then values), as a dict of the present ones."""
    flags, offset = _read_flags(raw)
    props: dict[str, Any] = {}
    for index, (name, kind) in enumerate(spec.BASIC_PROPERTIES):
        if flags & (1 << (15 - index)):
            props[name], offset = _ARG_DECODERS[kind](raw, offset)
    if offset != len(raw):
        raise CodecError("content header has bytes left after its properties")
    return props


def _read_flags(raw: bytes) -> tuple[int, int]:
    _need(raw, 0, 2)
    (flags,) = _H.unpack_from(raw, 0)
    if flags & 0x3:  # continuation bit or the unused 15th flag: class basic defines neither
        raise CodecError("content header property flags name properties class basic does not have")
    return flags, 2


def encode_properties(props: Mapping[str, Any]) -> bytes:
    """The wire form of basic properties (flags then values); absent or None ones are left out."""
    flags = 0
    parts = []
    for index, (name, kind) in enumerate(spec.BASIC_PROPERTIES):
        value = props.get(name)
        if value is None:
            continue
        flags |= 1 << (15 - index)
        parts.append(_encode_arg(kind, value))
    return _H.pack(flags) + b"".join(parts)


def property_value(raw: bytes, name: str) -> Any:
    """One property from the wire form without building a dict; None when absent."""
    flags, offset = _read_flags(raw)
    for index, (pname, kind) in enumerate(spec.BASIC_PROPERTIES):
        if not flags & (1 << (15 - index)):
            continue
        value, offset = _ARG_DECODERS[kind](raw, offset)
        if pname == name:
            return value
    return None


# --- frames ----------------------------------------------------------------------------------------


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(frame_type, channel, len(payload)) + payload + b"\xce"


def method_frame(channel: int, method: spec.MethodSpec, args: Sequence[Any] = ()) -> bytes:
    return frame(spec.FRAME_METHOD, channel, encode_method_payload(method, args))


def content_frames(channel: int, properties: bytes, body: bytes, frame_max: int) -> list[bytes]:
    """The header frame and body frames of one content, bodies cut to fit ``frame_max``."""
    frames = [frame(spec.FRAME_HEADER, channel, _CONTENT_HEAD.pack(spec.CLASS_BASIC, 0, len(body)) + properties)]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        frames.append(frame(spec.FRAME_BODY, channel, body[start : start + chunk]))
    return frames


HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
