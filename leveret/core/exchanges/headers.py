"""``headers``: routing by message headers against each binding's arguments (``x-match`` all, any,
all-with-x, any-with-x), with RabbitMQ's value comparison; and ``validate_binding_arguments``, the check
RabbitMQ makes of a binding's arguments before binding (only a headers binding's ``x-match`` is checked).
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Collection, Hashable
from typing import Any, ClassVar

from leveret.amqp.fields import LongInt, field_type

from .base import EMPTY_TABLE, NO_DESTINATIONS, Arguments, Binding, BindingKey, Exchange, Table
from .erlang import erlang_binary, erlang_term

_MISSING = object()

_X_MATCH_KINDS: dict[str, tuple[bool, bool]] = {  # x-match value -> (all must match, x- names count)
    "all": (True, False),
    "any": (False, False),
    "all-with-x": (True, True),
    "any-with-x": (False, True),
}

_PLAIN_TYPES = frozenset({str, int, bytes, bool, float, datetime.datetime})

# (header name, value, type of the value if == compares it like RabbitMQ, value is void: presence is enough)
_HeaderPattern = tuple[tuple[str, Any, type | None, bool], ...]


def _nested_equal(left: Any, right: Any) -> bool:
    """Equality inside a table or array: RabbitMQ compares these with their types and in order."""
    kind = type(left)
    if kind is not type(right):
        return False
    if kind is dict:
        return len(left) == len(right) and all(
            lk == rk and _nested_equal(lv, rv) for (lk, lv), (rk, rv) in zip(left.items(), right.items(), strict=False)
        )
    if kind is list:
        return len(left) == len(right) and all(_nested_equal(a, b) for a, b in zip(left, right, strict=False))
    if kind is decimal.Decimal:
        return bool(left.as_tuple() == right.as_tuple())
    return bool(left == right)


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def _as_number(value: Any) -> int | float | None:
    kind = type(value)
    if kind is int or kind is float or kind is LongInt:
        return value  # type: ignore[no-any-return]
    if kind is datetime.datetime:
        return int(value.timestamp())  # a timestamp is an integer to RabbitMQ
    return None


def _header_value_equal(expected: Any, actual: Any) -> bool:
    """RabbitMQ's top-level header comparison (Erlang ``==`` on the values, AMQP types ignored):
    1 equals 1.0 and a timestamp of the same seconds, a long string equals the same bytes, but a boolean
    equals only a boolean and a decimal only the same decimal (same scale and digits)."""
    kind = type(expected)
    if kind is type(actual):
        return bool(expected == actual) if kind in _PLAIN_TYPES else _nested_equal(expected, actual)
    left_number = _as_number(expected)
    if left_number is not None:
        right_number = _as_number(actual)
        return right_number is not None and left_number == right_number
    left_bytes = _as_bytes(expected)
    return left_bytes is not None and left_bytes == _as_bytes(actual)


def _compile_headers_binding(arguments: Arguments) -> tuple[bool, _HeaderPattern]:
    """(match all, pattern) for a headers binding. An unknown or missing x-match means all."""
    match_all, with_x = True, False
    for name, value in arguments:
        if name == "x-match" and isinstance(value, str):
            match_all, with_x = _X_MATCH_KINDS.get(value, (True, False))
    pattern = tuple(
        (name, value, type(value) if type(value) in _PLAIN_TYPES else None, value is None)
        for name, value in arguments
        if name != "x-match" and (with_x or not name.startswith("x-"))
    )
    return match_all, pattern


class HeadersExchange(Exchange):
    """Routes by message headers against each binding's arguments (``x-match``: all, any, all-with-x or
    any-with-x; default all). ``all``/``any`` ignore binding arguments named ``x-...``; the ``-with-x``
    kinds count them (except ``x-match`` itself). A void (None) argument matches a header of that name with
    any value. ``all`` with nothing to match routes every message; ``any`` with nothing routes none.
    The routing key is ignored.
    """

    type_name: ClassVar[str] = "headers"

    def _new_index(self) -> None:
        self._matchers: dict[BindingKey, tuple[Hashable, bool, _HeaderPattern]] = {}

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        if headers is None:
            headers = EMPTY_TABLE
        missing = _MISSING
        found: dict[Hashable, None] = {}
        for destination, match_all, pattern in self._matchers.values():
            if destination in found:
                continue
            # Inlined (this runs per binding per message): any stops at the first match, all at the first miss.
            for name, expected, plain_type, void in pattern:
                actual = headers.get(name, missing)
                if actual is missing:
                    matched = False
                elif type(actual) is plain_type:
                    matched = expected == actual
                else:
                    matched = void or _header_value_equal(expected, actual)
                if matched is not match_all:
                    break
            else:
                matched = match_all
            if matched:
                found[destination] = None
        return tuple(found) if found else NO_DESTINATIONS

    def _index_add(self, key: BindingKey, binding: Binding) -> None:
        match_all, pattern = _compile_headers_binding(binding.arguments)
        self._matchers[key] = (binding.destination, match_all, pattern)

    def _index_remove(self, key: BindingKey, binding: Binding) -> None:
        del self._matchers[key]


def validate_binding_arguments(exchange_type: str, arguments: Table | None) -> None:
    """Check a binding's arguments for an exchange of ``exchange_type`` as RabbitMQ does before binding.

    Raises ValueError with RabbitMQ's text (without the "PRECONDITION_FAILED - " prefix the AMQP adapter
    adds for reply code 406), e.g. 'Invalid x-match field value <<"foo">>; expected all, any, all-with-x,
    or any-with-x'. Only the headers exchange checks anything.
    """
    if exchange_type != "headers" or not arguments or "x-match" not in arguments:
        return
    value = arguments["x-match"]
    if isinstance(value, str):
        if value not in _X_MATCH_KINDS:
            raise ValueError(
                f"Invalid x-match field value {erlang_binary(value.encode('utf-8'))}; "
                "expected all, any, all-with-x, or any-with-x"
            )
        return
    raise ValueError(
        f"Invalid x-match field type {field_type(value)} (value {erlang_term(value)}); expected longstr"
    )
