"""Exchanges: bindings and routing for the four built-in exchange types, as RabbitMQ 3.x does them.

An exchange owns its bindings and keeps its own index over them, built for ``route()``, which runs once
for every published message:

- ``DirectExchange``: routing key -> precomputed tuple of destinations (one dict lookup per message).
- ``FanoutExchange``: one precomputed tuple of every bound destination.
- ``TopicExchange``: a trie of binding-key words, as RabbitMQ's ``rabbit_exchange_type_topic``, walked as
  a set of states word by word, plus a bounded cache (routing key -> destinations) cleared on bind/unbind.
- ``HeadersExchange``: one compiled matcher per binding, tried in turn.
- ``DelayedMessageExchange`` (``x-delayed-message``): the index of an inner exchange of its ``x-delayed-type``.

A destination is any hashable object (a queue, or an exchange for exchange-to-exchange bindings), compared
by its own ``==``/``hash``; ``route()`` returns each matching destination once, whatever number of bindings
lead to it. Following exchange-to-exchange bindings, alternate exchanges and CC/BCC headers is the caller's
job. Nothing here does I/O or knows about frames.

Binding identity is RabbitMQ's: (source, destination, routing key, arguments), where the arguments table is
compared regardless of key order and with AMQP types kept apart (``True`` is not ``1``).
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from leveret.amqp.codec import LongInt, field_type

from .errors import CommandInvalid, PreconditionFailed

Table = dict[str, Any]
Arguments = tuple[tuple[str, Any], ...]

__all__ = [
    "EXCHANGE_TYPES",
    "TOPIC_CACHE_SIZE",
    "Binding",
    "DelayedMessageExchange",
    "DirectExchange",
    "Exchange",
    "FanoutExchange",
    "HeadersExchange",
    "Table",
    "TopicExchange",
    "create_exchange",
    "topic_matches",
    "validate_binding_arguments",
]

TOPIC_CACHE_SIZE = 4096
"""How many routing keys a topic exchange remembers the destinations of."""

_NO_DESTINATIONS: tuple[Hashable, ...] = ()
_EMPTY_TABLE: Table = {}
_MISSING = object()


# --- bindings ------------------------------------------------------------------------------------


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

    def _identity(self) -> tuple[str, Hashable, str, Hashable]:
        return (self.source, self.destination, self.routing_key, _typed_arguments(self.arguments))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Binding):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


_BindingKey = tuple[Hashable, str, Hashable]  # (destination, routing key, typed arguments)


# --- the base class ------------------------------------------------------------------------------


class Exchange:
    """An exchange and its bindings. Subclasses: DirectExchange, FanoutExchange, TopicExchange,
    HeadersExchange; each keeps its own routing index up to date through ``_index_add``/``_index_remove``.

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
        self._bindings: dict[_BindingKey, Binding] = {}
        self._by_destination: dict[Hashable, dict[_BindingKey, Binding]] = {}
        self._new_index()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} bindings={len(self._bindings)}>"

    def bind(self, destination: Hashable, routing_key: str, arguments: Table | None = None) -> bool:
        """Add a binding. Returns False (and changes nothing) if an identical one already exists."""
        frozen = _freeze_arguments(arguments)
        key: _BindingKey = (destination, routing_key, _typed_arguments(frozen))
        if key in self._bindings:
            return False
        binding = Binding(self.name, destination, routing_key, frozen)
        self._bindings[key] = binding
        self._by_destination.setdefault(destination, {})[key] = binding
        self._index_add(key, binding)
        return True

    def unbind(self, destination: Hashable, routing_key: str, arguments: Table | None = None) -> bool:
        """Remove a binding. Returns False if there was no such binding."""
        key: _BindingKey = (destination, routing_key, _typed_arguments(_freeze_arguments(arguments)))
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

    def _index_add(self, key: _BindingKey, binding: Binding) -> None:
        raise NotImplementedError

    def _index_remove(self, key: _BindingKey, binding: Binding) -> None:
        raise NotImplementedError


def _count_up(counts: dict[Hashable, int], destination: Hashable) -> bool:
    """Count one more binding to ``destination``; True if it is the first."""
    previous = counts.get(destination, 0)
    counts[destination] = previous + 1
    return previous == 0


def _count_down(counts: dict[Hashable, int], destination: Hashable) -> bool:
    """Count one binding fewer to ``destination``; True if it was the last."""
    remaining = counts[destination] - 1
    if remaining:
        counts[destination] = remaining
        return False
    del counts[destination]
    return True


# --- direct --------------------------------------------------------------------------------------


class DirectExchange(Exchange):
    """Routes to the destinations whose binding key equals the routing key. Binding arguments are ignored."""

    type_name: ClassVar[str] = "direct"

    def _new_index(self) -> None:
        self._counts: dict[str, dict[Hashable, int]] = {}  # binding key -> destination -> number of bindings
        self._routes: dict[str, tuple[Hashable, ...]] = {}  # binding key -> destinations, built on demand

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        found = self._routes.get(routing_key)
        if found is not None:
            return found
        counts = self._counts.get(routing_key)
        if counts is None:
            return _NO_DESTINATIONS
        found = self._routes[routing_key] = tuple(counts)
        return found

    def _index_add(self, key: _BindingKey, binding: Binding) -> None:
        counts = self._counts.setdefault(binding.routing_key, {})
        if _count_up(counts, binding.destination):
            self._routes.pop(binding.routing_key, None)

    def _index_remove(self, key: _BindingKey, binding: Binding) -> None:
        counts = self._counts[binding.routing_key]
        if _count_down(counts, binding.destination):
            self._routes.pop(binding.routing_key, None)
            if not counts:
                del self._counts[binding.routing_key]


# --- fanout --------------------------------------------------------------------------------------


class FanoutExchange(Exchange):
    """Routes to every bound destination. Routing key and binding arguments are ignored."""

    type_name: ClassVar[str] = "fanout"

    def _new_index(self) -> None:
        self._counts: dict[Hashable, int] = {}
        self._route: tuple[Hashable, ...] | None = ()

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        found = self._route
        if found is None:
            found = self._route = tuple(self._counts)
        return found

    def _index_add(self, key: _BindingKey, binding: Binding) -> None:
        if _count_up(self._counts, binding.destination):
            self._route = None

    def _index_remove(self, key: _BindingKey, binding: Binding) -> None:
        if _count_down(self._counts, binding.destination):
            self._route = None


# --- topic ---------------------------------------------------------------------------------------


def _split_topic_key(key: str) -> list[str]:
    """Words of a routing or binding key, as RabbitMQ's split_topic_key: "" has no words, "a." is a, ""."""
    return key.split(".") if key else []


class _TrieNode:
    """One node of the binding-key trie. ``star`` and ``hash`` are the children for the words * and #."""

    __slots__ = ("children", "destinations", "hash", "is_hash", "star")

    def __init__(self, is_hash: bool) -> None:
        self.children: dict[str, _TrieNode] = {}
        self.star: _TrieNode | None = None
        self.hash: _TrieNode | None = None
        self.is_hash = is_hash  # reached through a # word: may swallow any number of further words
        self.destinations: dict[Hashable, int] = {}  # bindings ending here: destination -> count

    def child(self, word: str) -> _TrieNode | None:
        if word == "*":
            return self.star
        if word == "#":
            return self.hash
        return self.children.get(word)

    def add_child(self, word: str) -> _TrieNode:
        node = self.child(word)
        if node is not None:
            return node
        node = _TrieNode(is_hash=word == "#")
        if word == "*":
            self.star = node
        elif word == "#":
            self.hash = node
        else:
            self.children[word] = node
        return node

    def remove_child(self, word: str) -> None:
        if word == "*":
            self.star = None
        elif word == "#":
            self.hash = None
        else:
            del self.children[word]

    def is_empty(self) -> bool:
        return not (self.destinations or self.children or self.star or self.hash)


def _enter(states: dict[_TrieNode, None], node: _TrieNode | None) -> None:
    """Add ``node`` to ``states`` with the nodes reachable from it through # words matching nothing."""
    while node is not None and node not in states:
        states[node] = None
        node = node.hash


class TopicExchange(Exchange):
    """Routes by pattern: a binding key is dot-separated words where ``*`` matches exactly one word and
    ``#`` zero or more. Words may be empty ("a..b" is a, "", b) and the empty key has no words, so binding
    "#" matches routing key "" while "*" does not. Binding arguments are ignored.

    The destinations of the last ``TOPIC_CACHE_SIZE`` routing keys seen are cached; any bind or unbind
    clears the cache.
    """

    type_name: ClassVar[str] = "topic"
    cache_size: ClassVar[int] = TOPIC_CACHE_SIZE

    def _new_index(self) -> None:
        self._root = _TrieNode(is_hash=False)
        self._cache: dict[str, tuple[Hashable, ...]] = {}

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        found = self._cache.get(routing_key)
        if found is not None:
            return found
        found = self._match(routing_key)
        cache = self._cache
        if len(cache) >= self.cache_size:
            del cache[next(iter(cache))]  # the oldest entry
        cache[routing_key] = found
        return found

    def _match(self, routing_key: str) -> tuple[Hashable, ...]:
        states: dict[_TrieNode, None] = {}
        _enter(states, self._root)
        for word in _split_topic_key(routing_key):
            following: dict[_TrieNode, None] = {}
            for node in states:
                if node.is_hash:
                    _enter(following, node)
                child = node.children.get(word)
                if child is not None:
                    _enter(following, child)
                if node.star is not None:
                    _enter(following, node.star)
            if not following:
                return _NO_DESTINATIONS
            states = following
        found: dict[Hashable, None] = {}
        for node in states:
            if node.destinations:
                found.update(dict.fromkeys(node.destinations))
        return tuple(found)

    def _index_add(self, key: _BindingKey, binding: Binding) -> None:
        node = self._root
        for word in _split_topic_key(binding.routing_key):
            node = node.add_child(word)
        if _count_up(node.destinations, binding.destination):
            self._cache.clear()

    def _index_remove(self, key: _BindingKey, binding: Binding) -> None:
        path: list[tuple[_TrieNode, str]] = []
        node = self._root
        for word in _split_topic_key(binding.routing_key):
            path.append((node, word))
            following = node.child(word)
            assert following is not None, "a bound key is always in the trie"
            node = following
        if not _count_down(node.destinations, binding.destination):
            return
        self._cache.clear()
        for parent, word in reversed(path):
            if not node.is_empty():
                break
            parent.remove_child(word)
            node = parent


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether topic binding key ``pattern`` matches ``routing_key`` (a reference for one pair; exchanges
    use their trie). Same word rules as TopicExchange."""
    words = _split_topic_key(pattern)
    end = len(words)

    def closure(positions: Iterable[int]) -> set[int]:
        reached: set[int] = set()
        for position in positions:
            while position not in reached:
                reached.add(position)
                if position == end or words[position] != "#":
                    break
                position += 1
        return reached

    states = closure([0])
    for word in _split_topic_key(routing_key):
        following: list[int] = []
        for position in states:
            if position == end:
                continue
            expected = words[position]
            if expected == "#":
                following.append(position)
            elif expected in ("*", word):
                following.append(position + 1)
        if not following:
            return False
        states = closure(following)
    return end in states


# --- headers -------------------------------------------------------------------------------------

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
        self._matchers: dict[_BindingKey, tuple[Hashable, bool, _HeaderPattern]] = {}

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        if headers is None:
            headers = _EMPTY_TABLE
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
        return tuple(found) if found else _NO_DESTINATIONS

    def _index_add(self, key: _BindingKey, binding: Binding) -> None:
        match_all, pattern = _compile_headers_binding(binding.arguments)
        self._matchers[key] = (binding.destination, match_all, pattern)

    def _index_remove(self, key: _BindingKey, binding: Binding) -> None:
        del self._matchers[key]


# --- validation ----------------------------------------------------------------------------------


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
                f"Invalid x-match field value {_erlang_binary(value.encode('utf-8'))}; "
                "expected all, any, all-with-x, or any-with-x"
            )
        return
    raise ValueError(
        f"Invalid x-match field type {field_type(value)} (value {_erlang_term(value)}); expected longstr"
    )


def _erlang_term(value: Any) -> str:
    """A field value as RabbitMQ's error messages print it (Erlang ``~p``)."""
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _erlang_binary(value.encode("utf-8"))
    if isinstance(value, bytes | bytearray | memoryview):
        return _erlang_binary(bytes(value))
    if isinstance(value, decimal.Decimal):
        exponent = value.as_tuple().exponent
        scale = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        return f"{{{scale},{int(value.scaleb(scale))}}}"
    if isinstance(value, datetime.datetime):
        return str(int(value.timestamp()))
    if isinstance(value, dict):
        items = (
            f"{{{_erlang_binary(name.encode('utf-8'))},{field_type(item)},{_erlang_term(item)}}}"
            for name, item in value.items()
        )
        return "[" + ",".join(items) + "]"
    if isinstance(value, list | tuple):
        return "[" + ",".join(f"{{{field_type(item)},{_erlang_term(item)}}}" for item in value) + "]"
    return repr(value)


_ERLANG_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f"}
_ERLANG_ESCAPES.update({13: "\\r", 27: "\\e"})


def _erlang_binary(raw: bytes) -> str:
    """``~p`` of an Erlang binary: <<"text">> when every byte is printable Latin-1, else <<1,2,3>>."""
    if not raw:
        return "<<>>"
    if all(32 <= byte <= 126 or byte >= 160 or byte in _ERLANG_ESCAPES for byte in raw):
        return '<<"' + "".join(_ERLANG_ESCAPES.get(byte, chr(byte)) for byte in raw) + '">>'
    return "<<" + ",".join(str(byte) for byte in raw) + ">>"


# --- x-delayed-message ---------------------------------------------------------------------------


class DelayedMessageExchange(Exchange):
    """``x-delayed-message``, as RabbitMQ's rabbitmq_delayed_message_exchange plugin: bindings and routing are
    those of the type named by the required ``x-delayed-type`` argument (direct, fanout, topic or headers),
    whose index an inner exchange of that type keeps. Holding a message with an ``x-delay`` header until it
    is due is not done here (this module has no clock): ``VHost.route`` and ``Channel._route`` ask
    ``broker.delays`` (:mod:`leveret.core.delays`) first. Raises, as the plugin does, PreconditionFailed
    without a usable ``x-delayed-type`` and CommandInvalid for an unknown one."""

    type_name: ClassVar[str] = "x-delayed-message"

    def __init__(
        self,
        name: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Table | None = None,
    ) -> None:
        inner_type = delayed_inner_type(arguments)
        self.inner: Exchange = EXCHANGE_TYPES[inner_type](name, durable=durable, auto_delete=auto_delete,
                                                          internal=internal)
        super().__init__(name, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments)

    def bind(self, destination: Hashable, routing_key: str, arguments: Table | None = None) -> bool:
        """As the inner type's bind, with its binding validation (406 for a bad headers ``x-match``)."""
        try:
            validate_binding_arguments(self.inner.type_name, arguments)
        except ValueError as exc:
            raise PreconditionFailed(str(exc)) from None
        return super().bind(destination, routing_key, arguments)

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        return self.inner.route(routing_key, headers)

    def _index_add(self, key: _BindingKey, binding: Binding) -> None:
        self.inner._index_add(key, binding)

    def _index_remove(self, key: _BindingKey, binding: Binding) -> None:
        self.inner._index_remove(key, binding)


def delayed_inner_type(arguments: Table | None) -> str:
    """The exchange type an x-delayed-message exchange routes as (its ``x-delayed-type`` argument), checked
    with the plugin's errors."""
    value = (arguments or _EMPTY_TABLE).get("x-delayed-type")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise PreconditionFailed("Invalid argument, 'x-delayed-type' must be an existing exchange type")
    if value == DelayedMessageExchange.type_name:
        raise PreconditionFailed("Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'")
    if value not in EXCHANGE_TYPES:
        raise CommandInvalid(f"unknown exchange type '{value}'")
    return value


# --- registry ------------------------------------------------------------------------------------

EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    cls.type_name: cls
    for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange, DelayedMessageExchange)
}


def create_exchange(type_name: str, name: str, **kwargs: Any) -> Exchange:
    """A new exchange of the named type (``kwargs``: durable, auto_delete, internal, arguments).
    Raises KeyError for a type that is not in EXCHANGE_TYPES."""
    return EXCHANGE_TYPES[type_name](name, **kwargs)
