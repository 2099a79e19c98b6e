"""Field values as RabbitMQ's error messages print them (Erlang's ``~p``), for reply texts that match
RabbitMQ's byte for byte, e.g. ``Invalid x-match field value <<"foo">>``."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

from leveret.amqp.fields import field_type


def erlang_term(value: Any) -> str:
    """A field value as RabbitMQ's error messages print it (Erlang ``~p``)."""
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return erlang_binary(value.encode("utf-8"))
    if isinstance(value, bytes | bytearray | memoryview):
        return erlang_binary(bytes(value))
    if isinstance(value, decimal.Decimal):
        exponent = value.as_tuple().exponent
        scale = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        return f"{{{scale},{int(value.scaleb(scale))}}}"
    if isinstance(value, datetime.datetime):
        return str(int(value.timestamp()))
    if isinstance(value, dict):
        items = (
            f"{{{erlang_binary(name.encode('utf-8'))},{field_type(item)},{erlang_term(item)}}}"
            for name, item in value.items()
        )
        return "[" + ",".join(items) + "]"
    if isinstance(value, list | tuple):
        return "[" + ",".join(f"{{{field_type(item)},{erlang_term(item)}}}" for item in value) + "]"
    return repr(value)


_ERLANG_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f"}
_ERLANG_ESCAPES.update({13: "\\r", 27: "\\e"})


def erlang_binary(raw: bytes) -> str:
    """``~p`` of an Erlang binary: <<"text">> when every byte is printable Latin-1, else <<1,2,3>>."""
    if not raw:
        return "<<>>"
    if all(32 <= byte <= 126 or byte >= 160 or byte in _ERLANG_ESCAPES for byte in raw):
        return '<<"' + "".join(_ERLANG_ESCAPES.get(byte, chr(byte)) for byte in raw) + '">>'
    return "<<" + ",".join(str(byte) for byte in raw) + ">>"
