"""What every exchange type shares: ``Binding`` (RabbitMQ's binding identity) and the ``Exchange`` base class
that keeps the bindings and calls its subclass's index hooks on bind/unbind.

A destination is any hashable object (a queue, or an exchange for exchange-to-exchange bindings), compared
by its own ``==``/``hash``. Binding identity is RabbitMQ's: (source, destination, routing key, arguments),
where the arguments table is compared regardless of key order and with AMQP types kept apart (``True`` is
not ``1``).
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

Table = dict[str, Any]
Arguments = tuple[tuple[str, Any], ...]
BindingKey = tuple[Hashable, str, Hashable]
"""How an exchange keys its bindings: (destination, routing key, typed arguments)."""

NO_DESTINATIONS: tuple[Hashable, ...] = ()
"""The one empty route result (shared, never changed)."""

EMPTY_TABLE: Table = {}
"""An empty headers table to read from (shared, never changed)."""


def _freeze_arguments(arguments: Table | None) -> Arguments:
    """The arguments table as a tuple of (name, value) pairs sorted by name (RabbitMQ sorts them too)."""
    if not arguments:
        return ()
    return tuple(sorted(arguments.items()))


def _typed(value: Any) -> Hashable:
    """A hashable stand-in for a field value that keeps AMQP types apart: True vs 1, 1 vs 1.0, "a" vs b"a".
    Nested tables keep their order, as in RabbitMQ (only the top level of a binding's table is sorted)."""
    if value is None:
        return ("V",)
    kind = type(value)
    if kind is bool:
        return ("t", value)
    if kind is int:
        return ("I", value)
    if kind is str:
        return ("S", value)
    if kind is float:
        return ("d", value)
    if isinstance(value, bytes | bytearray | memoryview):
        return ("x", bytes(value))
    if isinstance(value, dict):
        return ("F", tuple((name, _typed(item)) for name, item in value.items()))
    if isinstance(value, list | tuple):
        return ("A", tuple(_typed(item) for item in value))
    if isinstance(value, decimal.Decimal):
        return ("D", value.as_tuple())
    if isinstance(value, datetime.datetime):
        return ("T", value)
    try:
        hash(value)
    except TypeError:
        return ("?", kind.__qualname__, repr(value))
    return ("?", kind.__qualname__, value)


def _typed_arguments(arguments: Arguments) -> Hashable:
    if not arguments:
        return ()
    return tuple((name, _typed(value)) for name, value in arguments)


@dataclass(frozen=True, slots=True)
class Binding:
    """One binding: messages published to exchange ``source`` may go to ``destination``.

    ``arguments`` is the binding's arguments table as (name, value) pairs sorted by name; ``table()`` gives
    it back as a dict. Two bindings are equal when source, destination, routing key and arguments are,
    with argument values compared by AMQP type as well as by value (so a table holding unhashable values
    such as nested tables can still be hashed).
    """

    source: str
    destination: Hashable
    routing_key: str
    arguments: Arguments

    def table(self) -> Table:
        """The arguments as a new dict."""
        return dict(self.arguments)

    def identity(self) -> tuple[str, Hashable, str, Hashable]:
        """What equality and hashing compare: source, destination, routing key and the typed arguments."""
        return (self.source, self.destination, self.routing_key, _typed_arguments(self.arguments))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Binding):
            return NotImplemented
        return self.identity() == other.identity()

    def __hash__(self) -> int:
        return hash(self.identity())


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (setup.py): vhost.py's DefaultExchange subclasses it
class Exchange:
    """An exchange and its bindings. Subclasses: DirectExchange, FanoutExchange, TopicExchange,
    HeadersExchange, DelayedMessageExchange; each keeps its own routing index up to date through
    ``_index_add``/``_index_remove``.

    ``bind``/``unbind`` do not validate arguments: call ``validate_binding_arguments`` first (a headers
    binding with an unknown ``x-match`` routes as ``all``, as RabbitMQ does for such legacy bindings).
    """

    type_name: ClassVar[str] = ""

    def __init__(
        self,
        name: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Table | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments: Table = dict(arguments) if arguments else {}
        self.dedup: Any = None  # x-message-deduplication: its DedupWindow (core/dedup.py), set by the vhost
        self._bindings: dict[BindingKey, Binding] = {}
        self._by_destination: dict[Hashable, dict[BindingKey, Binding]] = {}
        self._new_index()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} bindings={len(self._bindings)}>"

    def bind(self, destination: Hashable, routing_key: str, arguments: Table | None = None) -> bool:
        """Add a binding. Returns False (and changes nothing) if an identical one already exists."""
        frozen = _freeze_arguments(arguments)
        key: BindingKey = (destination, routing_key, _typed_arguments(frozen))
        if key in self._bindings:
            return False
        binding = Binding(self.name, destination, routing_key, frozen)
        self._bindings[key] = binding
        self._by_destination.setdefault(destination, {})[key] = binding
        self._index_add(key, binding)
        return True

    def unbind(self, destination: Hashable, routing_key: str, arguments: Table | None = None) -> bool:
        """Remove a binding. Returns False if there was no such binding."""
        key: BindingKey = (destination, routing_key, _typed_arguments(_freeze_arguments(arguments)))
        binding = self._bindings.pop(key, None)
        if binding is None:
            return False
        of_destination = self._by_destination[destination]
        del of_destination[key]
        if not of_destination:
            del self._by_destination[destination]
        self._index_remove(key, binding)
        return True

    def has_binding(self, destination: Hashable, routing_key: str, arguments: Table | None = None) -> bool:
        """True if this exact binding exists."""
        return (destination, routing_key, _typed_arguments(_freeze_arguments(arguments))) in self._bindings

    def unbind_all(self, destination: Hashable) -> list[Binding]:
        """Remove every binding to ``destination`` (it is being deleted) and return them."""
        of_destination = self._by_destination.pop(destination, None)
        if not of_destination:
            return []
        for key, binding in of_destination.items():
            del self._bindings[key]
            self._index_remove(key, binding)
        return list(of_destination.values())

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        """The destinations, each once, that a message with this routing key and headers goes to.
        The returned collection belongs to the exchange and must not be changed."""
        raise NotImplementedError

    def bindings(self) -> list[Binding]:
        """Every binding of this exchange, oldest first."""
        return list(self._bindings.values())

    def has_bindings(self) -> bool:
        return bool(self._bindings)

    def binding_count(self) -> int:
        return len(self._bindings)

    def destinations(self) -> list[Hashable]:
        """Every destination bound to this exchange, once each."""
        return list(self._by_destination)

    def _new_index(self) -> None:
        """Set up the subclass's empty routing index (called by ``__init__``)."""

    def _index_add(self, key: BindingKey, binding: Binding) -> None:
        raise NotImplementedError

    def _index_remove(self, key: BindingKey, binding: Binding) -> None:
        raise NotImplementedError


def count_up(counts: dict[Hashable, int], destination: Hashable) -> bool:
    """Count one more binding to ``destination``; True if it is the first."""
    previous = counts.get(destination, 0)
    counts[destination] = previous + 1
    return previous == 0


def count_down(counts: dict[Hashable, int], destination: Hashable) -> bool:
    """Count one binding fewer to ``destination``; True if it was the last."""
    remaining = counts[destination] - 1
    if remaining:
        counts[destination] = remaining
        return False
    del counts[destination]
    return True
