"""Socket-free checks of the exchanges package's layout and of what only the split introduced. The routing
rules themselves (topic # and * corner cases as RabbitMQ routes them, the topic cache bound, headers x-match
all/any/all-with-x/any-with-x, binding validation) are tested in tests/test_exchanges.py, also without sockets."""

from __future__ import annotations

import importlib

import pytest

import leveret.core.exchanges as exchanges
from leveret.core.exchanges import EXCHANGE_TYPES, DelayedMessageExchange, create_exchange

# What leveret/core/exchanges.py exported before it became a package: every name stays importable.
PUBLIC = ["EXCHANGE_TYPES", "TOPIC_CACHE_SIZE", "Binding", "DelayedMessageExchange", "DirectExchange", "Exchange",
          "FanoutExchange", "HeadersExchange", "Table", "TopicExchange", "create_exchange", "delayed_inner_type",
          "topic_matches", "validate_binding_arguments"]


def test_every_name_is_importable_from_the_package() -> None:
    assert sorted(exchanges.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(exchanges, name) is not None


@pytest.mark.parametrize(("type_name", "module"), [
    ("direct", "direct"), ("fanout", "fanout"), ("topic", "topic"), ("headers", "headers"),
    ("x-delayed-message", "delayed")])
def test_one_module_per_exchange_type(type_name: str, module: str) -> None:
    cls = EXCHANGE_TYPES[type_name]
    assert cls.__module__ == f"leveret.core.exchanges.{module}"
    assert getattr(importlib.import_module(cls.__module__), cls.__name__) is cls


@pytest.mark.parametrize("inner", ["direct", "fanout", "topic", "headers"])
def test_delayed_exchange_keeps_its_inner_index_in_step(inner: str) -> None:
    exchange = create_exchange("x-delayed-message", "d", durable=True, auto_delete=True, internal=True,
                               arguments={"x-delayed-type": inner})
    assert isinstance(exchange, DelayedMessageExchange) and exchange.inner.type_name == inner
    assert (exchange.inner.durable, exchange.inner.auto_delete, exchange.inner.internal) == (True, True, True)
    assert exchange.arguments == {"x-delayed-type": inner} and exchange.inner.arguments == {}
    exchange.bind("q1", "k", {"h": 1})
    exchange.bind("q1", "k.#", {"h": 1})
    exchange.bind("q2", "k", {"h": 1})
    assert exchange.inner.binding_count() == exchange.binding_count() == 3
    assert set(exchange.route("k", {"h": 1})) == {"q1", "q2"}
    assert len(exchange.unbind_all("q1")) == 2
    assert exchange.inner.binding_count() == exchange.binding_count() == 1
    assert list(exchange.route("k", {"h": 1})) == ["q2"]
    assert exchange.unbind("q2", "k", {"h": 1}) and not exchange.unbind("q2", "k", {"h": 1})
    assert exchange.inner.binding_count() == 0 and list(exchange.route("k", {"h": 1})) == []
