"""Encoding and decoding of AMQP 0-9-1 methods and frames: method arguments, method payloads, content
header and body frames. Values (field tables, argument domains, basic properties) are
:mod:`leveret.amqp.fields`'s; the names the connection, the server and the task layer use from there are
re-exported here, so ``codec`` is their one import for the wire format.

Every decoder takes ``(buffer, offset)`` and returns ``(value, new_offset)``. Malformed input raises
:class:`CodecError` and nothing else; the connection turns it into a connection close (501 FRAME_ERROR,
as RabbitMQ does for arguments it cannot decode; 503 COMMAND_INVALID for an unknown method). Nothing
here does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from . import spec
from .fields import (  # noqa: F401  re-exported: the connection, the server and the task layer use them as codec.*
    DOMAIN_DECODERS,
    MAX_NESTING,
    CodecError,
    Float32,
    Int8,
    Int16,
    LongInt,
    RawField,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    decode_field_value,
    decode_properties,
    decode_shortstr,
    decode_table,
    encode_domain,
    encode_field_value,
    encode_properties,
    encode_shortstr,
    encode_table,
    field_type,
    need,
    property_value,
)

_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_HEAD = struct.Struct(">HH")


# --- method arguments ------------------------------------------------------------------------------


def decode_arguments(method: spec.MethodSpec, buf: bytes, offset: int) -> tuple[tuple[Any, ...], int]:
    """The arguments of ``method`` from ``buf`` at ``offset`` (after the class and method ids)."""
    values: list[Any] = []
    bit = 8
    bits = 0
    for _name, kind in method.arguments:
        if kind == spec.BIT:
            if bit == 8:
                need(buf, offset, 1)
                bits = buf[offset]
                offset += 1
                bit = 0
            values.append(bool(bits & (1 << bit)))
            bit += 1
            continue
        bit = 8
        try:
            value, offset = DOMAIN_DECODERS[kind](buf, offset)
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
        parts.append(encode_domain(kind, value))
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


# --- frames ----------------------------------------------------------------------------------------


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(frame_type, channel, len(payload)) + payload + b"\xce"


def method_frame(channel: int, method: spec.MethodSpec, args: Sequence[Any] = ()) -> bytes:
    return frame(spec.FRAME_METHOD, channel, encode_method_payload(method, args))


_HEADER_FRAME_HEAD = struct.Struct(">BHIHHQ")  # frame type, channel, size; class, weight, body size


def append_content(parts: list[bytes], channel: int, properties: bytes, body: bytes, chunk: int) -> None:
    """Append the header frame and the body frames of one content to ``parts``, three pieces a frame and the
    body not copied (join them for one write); bodies cut at ``chunk`` bytes (frame_max - 8)."""
    parts.append(_HEADER_FRAME_HEAD.pack(spec.FRAME_HEADER, channel, 12 + len(properties), spec.CLASS_BASIC, 0,
                                         len(body)))
    parts.append(properties)
    parts.append(b"\xce")
    for start in range(0, len(body), chunk):
        piece = body[start : start + chunk]
        parts.append(_FRAME_HEAD.pack(spec.FRAME_BODY, channel, len(piece)))
        parts.append(piece)
        parts.append(b"\xce")


def content_frames(channel: int, properties: bytes, body: bytes, frame_max: int) -> list[bytes]:
    """The header frame and body frames of one content, bodies cut to fit ``frame_max``."""
    parts: list[bytes] = []
    append_content(parts, channel, properties, body, frame_max - 8)
    return [b"".join(parts[i : i + 3]) for i in range(0, len(parts), 3)]


HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
