"""Exchange routing: direct, fanout, topic and headers, with RabbitMQ 3.10's answers as the expected values.

The topic and headers tables were checked against RabbitMQ 3.10.8 (pika and py-amqp clients: bind, publish,
basic.get from each queue).
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Hashable
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import leveret
from leveret.core.exchanges import (
    EXCHANGE_TYPES,
    Binding,
    DelayedMessageExchange,
    DirectExchange,
    Exchange,
    FanoutExchange,
    HeadersExchange,
    TopicExchange,
    create_exchange,
    topic_matches,
    validate_binding_arguments,
)


class Queue:
    """A stand-in destination, hashed by identity like the broker's queues."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"


def routed(exchange: Exchange, routing_key: str = "", headers: dict[str, Any] | None = None) -> list[Hashable]:
    result = list(exchange.route(routing_key, headers))
    assert len(result) == len(set(result)), "each destination at most once"
    return result


# --- registry and common behaviour ----------------------------------------------------------------


def make(type_name: str) -> Exchange:
    """An exchange named "x" of that type (an x-delayed-message one routes as direct)."""
    arguments = {"x-delayed-type": "direct"} if type_name == "x-delayed-message" else None
    return create_exchange(type_name, "x", arguments=arguments)


def test_registry() -> None:
    expected_types: dict[str, type[Exchange]] = {
        "direct": DirectExchange,
        "fanout": FanoutExchange,
        "topic": TopicExchange,
        "headers": HeadersExchange,
        "x-delayed-message": DelayedMessageExchange,  # routes as its x-delayed-type: tests/test_delayed.py
    }
    assert expected_types == EXCHANGE_TYPES
    exchange = create_exchange("topic", "logs", durable=True, arguments={"alternate-exchange": "ae"})
    assert isinstance(exchange, TopicExchange)
    assert (exchange.name, exchange.type_name, exchange.durable) == ("logs", "topic", True)
    assert (exchange.auto_delete, exchange.internal) == (False, False)
    assert exchange.arguments == {"alternate-exchange": "ae"}
    with pytest.raises(KeyError):
        create_exchange("x-consistent-hash", "nope")


@pytest.mark.parametrize("type_name", sorted(EXCHANGE_TYPES))
def test_bind_is_idempotent_and_unbind_reports_absence(type_name: str) -> None:
    exchange = make(type_name)
    q = Queue("q")
    assert not exchange.has_bindings()
    assert exchange.bind(q, "k", {"a": 1, "b": 2})
    assert not exchange.bind(q, "k", {"b": 2, "a": 1})  # the same table in another order: same binding
    assert exchange.bind(q, "k", {"a": True, "b": 2})  # True is not 1
    assert exchange.bind(q, "k")
    assert not exchange.bind(q, "k", {})  # no arguments and an empty table are the same
    assert exchange.binding_count() == 3
    assert exchange.bindings() == [
        Binding("x", q, "k", (("a", 1), ("b", 2))),
        Binding("x", q, "k", (("a", True), ("b", 2))),
        Binding("x", q, "k", ()),
    ]
    assert not exchange.unbind(q, "other")
    assert not exchange.unbind(Queue("q"), "k")
    assert exchange.unbind(q, "k", {"a": 1, "b": 2})
    assert not exchange.unbind(q, "k", {"a": 1, "b": 2})
    assert exchange.binding_count() == 2
    assert exchange.unbind(q, "k", {"b": 2, "a": True})
    assert exchange.unbind(q, "k", None)
    assert not exchange.has_bindings()
    assert exchange.bindings() == []


@pytest.mark.parametrize("type_name", sorted(EXCHANGE_TYPES))
def test_unbind_all(type_name: str) -> None:
    exchange = make(type_name)
    q1, q2 = Queue("q1"), Queue("q2")
    exchange.bind(q1, "a")
    exchange.bind(q2, "a")
    exchange.bind(q1, "b", {"x-match": "any"})
    removed = exchange.unbind_all(q1)
    assert removed == [Binding("x", q1, "a", ()), Binding("x", q1, "b", (("x-match", "any"),))]
    assert exchange.bindings() == [Binding("x", q2, "a", ())]
    assert q1 not in routed(exchange, "a")
    assert q1 not in routed(exchange, "b")
    assert exchange.unbind_all(q1) == []
    assert exchange.unbind_all(q2) == [Binding("x", q2, "a", ())]
    assert not exchange.has_bindings()
    assert routed(exchange, "a") == []


def test_binding_value_semantics() -> None:
    q = Queue("q")
    nested = Binding("x", q, "k", (("a", {"n": [1, 2]}),))
    assert nested == Binding("x", q, "k", (("a", {"n": [1, 2]}),))
    assert hash(nested) == hash(Binding("x", q, "k", (("a", {"n": [1, 2]}),)))
    assert nested != Binding("x", q, "k", (("a", {"n": [1, True]}),))
    assert Binding("x", q, "k", (("a", 1),)) != Binding("x", q, "k", (("a", True),))
    assert Binding("x", q, "k", (("a", 1),)) != Binding("x", q, "k", (("a", 1.0),))
    assert nested.table() == {"a": {"n": [1, 2]}}
    assert len({nested, Binding("x", q, "k", (("a", {"n": [1, 2]}),))}) == 1


def test_exchange_to_exchange_destination() -> None:
    source, target = FanoutExchange("src"), TopicExchange("dst")
    assert source.bind(target, "")
    assert routed(source) == [target]
    assert source.unbind_all(target) == [Binding("src", target, "", ())]


# --- direct -----------------------------------------------------------------------------------------


def test_direct_routes_on_exact_key() -> None:
    exchange = DirectExchange("d")
    q1, q2, q3 = Queue("q1"), Queue("q2"), Queue("q3")
    exchange.bind(q1, "a")
    exchange.bind(q2, "a")
    exchange.bind(q3, "b")
    exchange.bind(q3, "")
    assert set(routed(exchange, "a")) == {q1, q2}
    assert routed(exchange, "b") == [q3]
    assert routed(exchange, "") == [q3]
    assert routed(exchange, "A") == []
    assert routed(exchange, "a.b") == []
    assert routed(exchange, "*") == []


def test_direct_several_bindings_of_one_queue_route_once() -> None:
    exchange = DirectExchange("d")
    q = Queue("q")
    exchange.bind(q, "a")
    exchange.bind(q, "a", {"x": 1})
    exchange.bind(q, "a", {"x": 2})
    assert routed(exchange, "a") == [q]
    exchange.unbind(q, "a")
    exchange.unbind(q, "a", {"x": 1})
    assert routed(exchange, "a") == [q]
    exchange.unbind(q, "a", {"x": 2})
    assert routed(exchange, "a") == []


def test_direct_route_sees_changes_after_being_cached() -> None:
    exchange = DirectExchange("d")
    q1, q2 = Queue("q1"), Queue("q2")
    exchange.bind(q1, "a")
    assert routed(exchange, "a") == [q1]
    exchange.bind(q2, "a")
    assert set(routed(exchange, "a")) == {q1, q2}
    exchange.unbind(q1, "a")
    assert routed(exchange, "a") == [q2]
    exchange.unbind_all(q2)
    assert routed(exchange, "a") == []


def test_direct_ignores_headers_and_arguments() -> None:
    exchange = DirectExchange("d")
    q = Queue("q")
    exchange.bind(q, "a", {"x-match": "any", "h": 1})
    assert routed(exchange, "a", {"h": 2}) == [q]


# --- fanout -----------------------------------------------------------------------------------------


def test_fanout_routes_to_every_destination_once() -> None:
    exchange = FanoutExchange("f")
    q1, q2 = Queue("q1"), Queue("q2")
    assert routed(exchange, "anything") == []
    exchange.bind(q1, "")
    exchange.bind(q1, "other key")
    exchange.bind(q2, "", {"x": 1})
    assert set(routed(exchange, "whatever", {"h": 1})) == {q1, q2}
    assert exchange.route("a", None) is exchange.route("b", None)  # precomputed
    exchange.unbind(q1, "")
    assert set(routed(exchange)) == {q1, q2}
    exchange.unbind(q1, "other key")
    assert routed(exchange) == [q2]
    exchange.unbind_all(q2)
    assert routed(exchange) == []


# --- topic ------------------------------------------------------------------------------------------

TOPIC_KEYS = ["", ".", "..", "a", "a.", ".a", "a..b", "a.b", "a.a.b", "a.b.a", "*", "#", "a.*", "b.a", "a.b.b.b"]

# binding key -> the keys of TOPIC_KEYS it matches, as RabbitMQ 3.10.8 routed them.
TOPIC_RABBITMQ = [
    ("", [""]),
    ("#", TOPIC_KEYS),
    ("*", ["a", "*", "#"]),
    (".", ["."]),
    ("#.#", TOPIC_KEYS),
    ("*.#", [k for k in TOPIC_KEYS if k != ""]),
    ("#.*", [k for k in TOPIC_KEYS if k != ""]),
    ("a.#.b", ["a..b", "a.b", "a.a.b", "a.b.b.b"]),
    ("#.a.#", ["a", "a.", ".a", "a..b", "a.b", "a.a.b", "a.b.a", "a.*", "b.a", "a.b.b.b"]),
    ("a.#", ["a", "a.", "a..b", "a.b", "a.a.b", "a.b.a", "a.*", "a.b.b.b"]),
    ("#.a", ["a", ".a", "a.b.a", "b.a"]),
    ("a.*", ["a.", "a.b", "a.*"]),
    ("*.*", [".", "a.", ".a", "a.b", "a.*", "b.a"]),
    ("a.*.#.b", ["a..b", "a.a.b", "a.b.b.b"]),
    ("#.*.*", [".", "..", "a.", ".a", "a..b", "a.b", "a.a.b", "a.b.a", "a.*", "b.a", "a.b.b.b"]),
    ("a..b", ["a..b"]),
    ("a.", ["a."]),
    (".a", [".a"]),
    ("#.b.#.a", ["a.b.a", "b.a"]),
    ("*.#.*", [".", "..", "a.", ".a", "a..b", "a.b", "a.a.b", "a.b.a", "a.*", "b.a", "a.b.b.b"]),
    ("a.#.#.b", ["a..b", "a.b", "a.a.b", "a.b.b.b"]),
    ("..", [".."]),
    ("#.", [".", "..", "a."]),
    (".#", [".", "..", ".a"]),
    ("*.", [".", "a."]),
]


@pytest.mark.parametrize(("pattern", "matching"), TOPIC_RABBITMQ)
def test_topic_matches_like_rabbitmq(pattern: str, matching: list[str]) -> None:
    exchange = TopicExchange("t")
    q = Queue(pattern)
    exchange.bind(q, pattern)
    for key in TOPIC_KEYS:
        expected = key in matching
        assert topic_matches(pattern, key) is expected, (pattern, key)
        assert routed(exchange, key) == ([q] if expected else []), (pattern, key)


def test_topic_all_patterns_in_one_exchange() -> None:
    exchange = TopicExchange("t")
    queues = {pattern: Queue(pattern) for pattern, _ in TOPIC_RABBITMQ}
    for pattern, q in queues.items():
        exchange.bind(q, pattern)
    for key in TOPIC_KEYS:
        expected = {queues[pattern] for pattern, matching in TOPIC_RABBITMQ if key in matching}
        assert set(routed(exchange, key)) == expected, key


def test_topic_destination_routed_once_through_several_patterns() -> None:
    exchange = TopicExchange("t")
    q = Queue("q")
    for pattern in ("#", "a.#", "*.b", "a.b", "#.#.b"):
        exchange.bind(q, pattern)
    exchange.bind(q, "a.b", {"x": 1})
    assert routed(exchange, "a.b") == [q]


def test_topic_cache_is_invalidated_by_bind_and_unbind() -> None:
    exchange = TopicExchange("t")
    q1, q2 = Queue("q1"), Queue("q2")
    exchange.bind(q1, "a.*")
    assert routed(exchange, "a.b") == [q1]
    assert routed(exchange, "a.b") == [q1]  # from the cache
    exchange.bind(q2, "#.b")
    assert set(routed(exchange, "a.b")) == {q1, q2}
    exchange.unbind(q1, "a.*")
    assert routed(exchange, "a.b") == [q2]
    assert routed(exchange, "x.b") == [q2]
    exchange.unbind_all(q2)
    assert routed(exchange, "a.b") == []
    assert routed(exchange, "x.b") == []
    exchange.bind(q1, "x.b")
    assert routed(exchange, "x.b") == [q1]


@pytest.mark.skipif(leveret.build() != "pure Python", reason="compiled: no Python subclass of a compiled exchange")
def test_topic_cache_is_bounded() -> None:
    class SmallCache(TopicExchange):
        cache_size = 8

    exchange = SmallCache("t")
    q = Queue("q")
    exchange.bind(q, "k.*")
    for i in range(100):
        assert routed(exchange, f"k.{i}") == [q]
        assert len(exchange._cache) <= 8
    assert routed(exchange, "k.0") == [q]
    assert len(TopicExchange("t2")._cache) == 0 and TopicExchange.cache_size == 4096


def test_topic_trie_is_pruned_after_unbind() -> None:
    exchange = TopicExchange("t")
    q1, q2 = Queue("q1"), Queue("q2")
    exchange.bind(q1, "a.*.#.b")
    exchange.bind(q2, "a.*.c")
    exchange.bind(q2, "")
    exchange.unbind(q1, "a.*.#.b")
    assert routed(exchange, "a.x.c") == [q2]
    assert routed(exchange, "a.x.b") == []
    exchange.unbind(q2, "a.*.c")
    exchange.unbind(q2, "")
    root = exchange._root
    assert not root.children and root.star is None and root.hash is None and not root.destinations


def test_topic_many_hashes_stay_fast() -> None:
    exchange = TopicExchange("t")
    q = Queue("q")
    exchange.bind(q, ".".join(["#"] * 30 + ["z"]))
    exchange.bind(q, ".".join(["#", "*"] * 15 + ["y"]))
    assert routed(exchange, ".".join(["a"] * 100)) == []
    assert routed(exchange, ".".join(["a"] * 100 + ["z"])) == [q]


# An independent reference: a recursive matcher over word lists.
def reference_match(pattern: str, key: str) -> bool:
    pattern_words = tuple(pattern.split(".")) if pattern else ()
    key_words = tuple(key.split(".")) if key else ()

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(pattern_words):
            return j == len(key_words)
        word = pattern_words[i]
        if word == "#":
            return match(i + 1, j) or (j < len(key_words) and match(i, j + 1))
        return j < len(key_words) and word in ("*", key_words[j]) and match(i + 1, j + 1)

    return match(0, 0)


pattern_keys = st.lists(st.sampled_from(["a", "b", "", "*", "#"]), max_size=5).map(".".join)
routing_keys = st.lists(st.sampled_from(["a", "b", ""]), max_size=6).map(".".join) | st.sampled_from(["*", "#", "a.*"])


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(pattern_keys, max_size=12), keys=st.lists(routing_keys, min_size=1, max_size=10))
def test_topic_route_agrees_with_reference(patterns: list[str], keys: list[str]) -> None:
    exchange = TopicExchange("t")
    for pattern in patterns:
        exchange.bind(pattern, pattern)  # the pattern string is the destination
    for key in keys:
        expected = {pattern for pattern in patterns if reference_match(pattern, key)}
        assert set(routed(exchange, key)) == expected
        assert set(routed(exchange, key)) == expected  # again, from the cache
        for pattern in patterns:
            assert topic_matches(pattern, key) is (pattern in expected)


operations = st.lists(
    st.tuples(
        st.sampled_from(["bind", "unbind", "route", "unbind_all"]), st.integers(0, 3), pattern_keys, routing_keys
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_topic_bind_unbind_route_sequence(ops: list[tuple[str, int, str, str]]) -> None:
    exchange = TopicExchange("t")
    queues = [Queue(f"q{i}") for i in range(4)]
    model: set[tuple[int, str]] = set()
    for op, index, pattern, key in ops:
        if op == "bind":
            assert exchange.bind(queues[index], pattern) is ((index, pattern) not in model)
            model.add((index, pattern))
        elif op == "unbind":
            assert exchange.unbind(queues[index], pattern) is ((index, pattern) in model)
            model.discard((index, pattern))
        elif op == "unbind_all":
            removed = exchange.unbind_all(queues[index])
            assert {b.routing_key for b in removed} == {p for i, p in model if i == index}
            model = {(i, p) for i, p in model if i != index}
        expected = {queues[i] for i, p in model if reference_match(p, key)}
        assert set(routed(exchange, key)) == expected
        assert exchange.binding_count() == len(model)


# --- headers ----------------------------------------------------------------------------------------

TIMESTAMP_1000 = datetime.datetime(1970, 1, 1, 0, 16, 40, tzinfo=datetime.UTC)
D = decimal.Decimal

# (binding arguments, message headers, routed?) as RabbitMQ 3.10.8 answered.
HEADERS_RABBITMQ: list[tuple[dict[str, Any], dict[str, Any] | None, bool]] = [
    ({}, {}, True),
    ({}, None, True),
    ({}, {"a": 1}, True),
    ({"x-match": "all"}, {}, True),
    ({"x-match": "any"}, {}, False),
    ({"x-match": "any"}, {"a": 1}, False),
    ({"x-match": "any"}, {"x-match": "any"}, False),
    ({"a": 1, "b": 2}, {"a": 1}, False),
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),
    ({"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3}, True),
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}, False),
    ({"a": 1, "b": 2}, None, False),
    ({"x-match": "any", "a": 1, "b": 2}, {"a": 1}, True),
    ({"x-match": "any", "a": 1, "b": 2}, {"b": 2, "c": 1}, True),
    ({"x-match": "any", "a": 1, "b": 2}, {"a": 2, "b": 1}, False),
    ({"x-match": "any", "a": 1, "b": 2}, {}, False),
    # x- arguments: ignored by all/any, counted by the -with-x kinds; x-match itself never counts
    ({"x-match": "all", "x-foo": "1"}, {}, True),
    ({"x-match": "all", "x-foo": "1"}, {"x-foo": "2"}, True),
    ({"x-match": "any", "x-foo": 1}, {"x-foo": 1}, False),
    ({"x-match": "all-with-x", "x-foo": "1"}, {"x-foo": "1"}, True),
    ({"x-match": "all-with-x", "x-foo": "1"}, {}, False),
    ({"x-match": "all-with-x"}, {}, True),
    ({"x-match": "all-with-x"}, {"x-match": "other"}, True),
    ({"x-match": "any-with-x", "x-foo": "1"}, {"x-foo": "1"}, True),
    ({"x-match": "any-with-x", "x-foo": "1"}, {"x-match": "any-with-x"}, False),
    ({"x-match": "any-with-x"}, {"x-match": "any-with-x"}, False),
    ({"X-a": 1}, {}, False),  # only a lower-case x- prefix is special
    ({"X-a": 1}, {"X-a": 1}, True),
    # void (None) arguments: presence of the header is enough
    ({"a": None}, {"a": 5}, True),
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {}, False),
    ({"a": None}, {"b": 1}, False),
    ({"x-match": "any", "a": None, "b": 2}, {"a": 5}, True),
    ({"x-match": "any", "a": None, "b": 2}, {"b": 3}, False),
    ({"a": 1}, {"a": None}, False),
    # value comparison
    ({"a": True}, {"a": 1}, False),
    ({"a": True}, {"a": True}, True),
    ({"a": True}, {"a": "true"}, False),
    ({"a": False}, {"a": 0}, False),
    ({"a": 1}, {"a": True}, False),
    ({"a": 1}, {"a": 1.0}, True),
    ({"a": 1.0}, {"a": 1}, True),
    ({"a": 1}, {"a": 1.5}, False),
    ({"a": 1}, {"a": "1"}, False),
    ({"a": 1}, {"a": D("1")}, False),
    ({"a": 1}, {"a": 2**40}, False),
    ({"a": 1000}, {"a": TIMESTAMP_1000}, True),
    ({"a": TIMESTAMP_1000}, {"a": 1000}, True),
    ({"a": TIMESTAMP_1000}, {"a": 1000.0}, True),
    ({"a": TIMESTAMP_1000}, {"a": TIMESTAMP_1000}, True),
    ({"a": "v"}, {"a": b"v"}, True),
    ({"a": b"v"}, {"a": "v"}, True),
    ({"a": "v"}, {"a": "V"}, False),
    ({"a": D("1.0")}, {"a": D("1")}, False),
    ({"a": D("1.0")}, {"a": D("1.0")}, True),
    ({"a": D("1.0")}, {"a": 1}, False),
    ({"a": D("1.0")}, {"a": 1.0}, False),
    ({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}}, False),
    ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "y": 2}}, True),
    ({"a": {"x": 1}}, {"a": {"x": 1.0}}, False),
    ({"a": {"x": 1}}, {"a": {"x": True}}, False),
    ({"a": [1, 2]}, {"a": [1, 2]}, True),
    ({"a": [1, 2]}, {"a": [2, 1]}, False),
    ({"a": [1]}, {"a": [1.0]}, False),
    ({"a": [1]}, {"a": [True]}, False),
    ({"a": [True]}, {"a": [1]}, False),
]


@pytest.mark.parametrize(("arguments", "headers", "expected"), HEADERS_RABBITMQ)
def test_headers_matches_like_rabbitmq(
    arguments: dict[str, Any], headers: dict[str, Any] | None, expected: bool
) -> None:
    validate_binding_arguments("headers", arguments)
    exchange = HeadersExchange("h")
    q = Queue("q")
    exchange.bind(q, "ignored", arguments)
    assert routed(exchange, "any key", headers) == ([q] if expected else [])


def test_headers_destination_routed_once_and_unbind() -> None:
    exchange = HeadersExchange("h")
    q1, q2 = Queue("q1"), Queue("q2")
    exchange.bind(q1, "", {"a": 1})
    exchange.bind(q1, "", {"x-match": "any", "a": 1, "b": 2})
    exchange.bind(q1, "other", {"a": 1})
    exchange.bind(q2, "", {"b": 2})
    assert routed(exchange, "", {"a": 1}) == [q1]
    assert set(routed(exchange, "", {"a": 1, "b": 2})) == {q1, q2}
    exchange.unbind(q1, "", {"a": 1})
    exchange.unbind(q1, "other", {"a": 1})
    assert routed(exchange, "", {"a": 1}) == [q1]
    exchange.unbind(q1, "", {"b": 2, "a": 1, "x-match": "any"})
    assert routed(exchange, "", {"a": 1}) == []


def test_headers_unknown_x_match_routes_as_all() -> None:
    exchange = HeadersExchange("h")
    q = Queue("q")
    exchange.bind(q, "", {"x-match": "ANY", "a": 1, "b": 2})  # legacy: not validated, treated as all
    assert routed(exchange, "", {"a": 1}) == []
    assert routed(exchange, "", {"a": 1, "b": 2}) == [q]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("foo", 'Invalid x-match field value <<"foo">>; expected all, any, all-with-x, or any-with-x'),
        ("ALL", 'Invalid x-match field value <<"ALL">>; expected all, any, all-with-x, or any-with-x'),
        (1, "Invalid x-match field type signedint (value 1); expected longstr"),
        (True, "Invalid x-match field type bool (value true); expected longstr"),
        (None, "Invalid x-match field type void (value undefined); expected longstr"),
        ({"a": 1}, 'Invalid x-match field type table (value [{<<"a">>,signedint,1}]); expected longstr'),
        (b"\x01\x02", "Invalid x-match field type binary (value <<1,2>>); expected longstr"),
    ],
)
def test_invalid_x_match_is_refused_with_rabbitmq_text(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_binding_arguments("headers", {"x-match": value, "a": 1})
    assert str(caught.value) == message


def test_valid_binding_arguments() -> None:
    for kind in ("all", "any", "all-with-x", "any-with-x"):
        validate_binding_arguments("headers", {"x-match": kind})
    validate_binding_arguments("headers", {})
    validate_binding_arguments("headers", {"a": 1})
    for other in ("direct", "fanout", "topic"):
        validate_binding_arguments(other, {"x-match": "foo"})  # only headers exchanges look at x-match
