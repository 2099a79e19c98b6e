"""Tagged JSON: argument tables and policy definitions as canonical JSON text, for the stores.

JSON has no type for bytes, Decimal, datetime, tuples, maps with non-str keys, nan/inf, or the AMQP field values
that keep their wire type (a 64-bit int, a value carried as its raw bytes); such a value is written as a JSON
object whose only key is a tag (``{"$bytes": "<base64>"}``). Keys of real dicts that start with "$" get one
more "$" on the way in (and lose it on the way out), so a user key can never be taken for a tag.
:func:`encode_value` sorts keys, so equal tables encode equal (a binding is identified by its arguments).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from typing import Any

# Header and argument values that keep their AMQP field type: message types, so the store takes them from the core
# (it imports nothing of amqp/).
from leveret.core.message import LongInt, RawField
from leveret.core.storage import StoreError

_T_BYTES = "$bytes"  # base64
_T_BYTEARRAY = "$bytearray"  # base64
_T_DECIMAL = "$decimal"  # str(Decimal): exact, keeps the exponent ("1.50" stays "1.50")
_T_DATETIME = "$datetime"  # isoformat(), with the UTC offset when aware
_T_DATE = "$date"
_T_TUPLE = "$tuple"
_T_MAP = "$map"  # a dict whose keys are not all str: [[key, value], ...]
_T_FLOAT = "$float"  # nan, inf, -inf (JSON has no literal for them)
_T_LONG = "$long"  # an int that was a 64-bit field (codec.LongInt), so it keeps its wire type
_T_RAW = "$raw"  # a field value the codec carries as its wire bytes (codec.RawField): [tag, base64]
_TAGS = frozenset((_T_RAW, _T_LONG, _T_BYTES, _T_BYTEARRAY, _T_DECIMAL, _T_DATETIME, _T_DATE, _T_TUPLE, _T_MAP,
                   _T_FLOAT))


def _to_json(value: Any) -> Any:
    if type(value) is LongInt:
        return {_T_LONG: int(value)}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {_T_FLOAT: repr(value)}
        return value
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {("$" + k if k.startswith("$") else k): _to_json(v) for k, v in value.items()}
        return {_T_MAP: [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, tuple):
        return {_T_TUPLE: [_to_json(v) for v in value]}
    if isinstance(value, bytes):
        return {_T_BYTES: base64.b64encode(value).decode("ascii")}
    if isinstance(value, (bytearray, memoryview)):
        return {_T_BYTEARRAY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, decimal.Decimal):
        return {_T_DECIMAL: str(value)}
    if isinstance(value, datetime.datetime):
        return {_T_DATETIME: value.isoformat()}
    if isinstance(value, datetime.date):
        return {_T_DATE: value.isoformat()}
    if isinstance(value, RawField):
        return {_T_RAW: [value.tag.decode("latin-1"), base64.b64encode(value.raw).decode("ascii")]}
    raise StoreError(f"cannot store a value of type {type(value).__name__} in an argument table: {value!r}")


def _from_json_object(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, payload),) = obj.items()
        if key in _TAGS:
            if key == _T_LONG:
                return LongInt(payload)
            if key == _T_BYTES:
                return base64.b64decode(payload)
            if key == _T_DECIMAL:
                return decimal.Decimal(payload)
            if key == _T_DATETIME:
                return datetime.datetime.fromisoformat(payload)
            if key == _T_TUPLE:
                return tuple(payload)
            if key == _T_MAP:
                return {(tuple(k) if isinstance(k, list) else k): v for k, v in payload}
            if key == _T_FLOAT:
                return float(payload)
            if key == _T_RAW:
                return RawField(payload[0].encode("latin-1"), base64.b64decode(payload[1]))
            if key == _T_BYTEARRAY:
                return bytearray(base64.b64decode(payload))
            return datetime.date.fromisoformat(payload)
    if any(k.startswith("$") for k in obj):
        return {(k[1:] if k.startswith("$") else k): v for k, v in obj.items()}
    return obj


def encode_value(value: Any) -> str:
    """Canonical tagged JSON for an argument table (or any nesting of None, bool, int, float, str, bytes,
    bytearray, Decimal, datetime, date, dict, list, tuple). Keys are sorted, so equal tables encode equal
    (bindings are identified by their arguments)."""
    return json.dumps(_to_json(value), sort_keys=True, separators=(",", ":"))


def decode_value(text: str) -> Any:
    """The inverse of :func:`encode_value`."""
    return json.loads(text, object_hook=_from_json_object)

