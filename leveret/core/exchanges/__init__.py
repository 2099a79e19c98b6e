"""Exchanges: bindings and routing for the built-in exchange types, as RabbitMQ 3.x does them.

An exchange owns its bindings and keeps its own index over them, built for ``route()``, which runs once
for every published message. One module per idea:

- ``base``: ``Binding`` (RabbitMQ's binding identity) and ``Exchange``, which keeps the bindings and calls
  its subclass's index hooks.
- ``direct``: ``DirectExchange``, routing key -> precomputed tuple of destinations (one dict lookup).
- ``fanout``: ``FanoutExchange``, one precomputed tuple of every bound destination.
- ``topic``: ``TopicExchange``, a trie of binding-key words as RabbitMQ's ``rabbit_exchange_type_topic``,
  walked as a set of states word by word, plus a bounded cache cleared on bind/unbind; ``topic_matches``.
- ``headers``: ``HeadersExchange``, one compiled matcher per binding, tried in turn; and
  ``validate_binding_arguments`` (a headers binding's ``x-match``).
- ``delayed``: ``DelayedMessageExchange`` (``x-delayed-message``), the index of an inner exchange of its
  ``x-delayed-type``.
- ``erlang``: field values as RabbitMQ's error texts print them (Erlang ``~p``).

``route()`` returns each matching destination once, whatever number of bindings lead to it. Following
exchange-to-exchange bindings, alternate exchanges and CC/BCC headers is the caller's job. Nothing here does
I/O or knows about frames. The default exchange ("") is the core's (``leveret.core.broker``), not here.
"""

from __future__ import annotations

from typing import Any

from .base import Binding, Exchange, Table
from .delayed import INNER_TYPES, DelayedMessageExchange, delayed_inner_type
from .direct import DirectExchange
from .fanout import FanoutExchange
from .headers import HeadersExchange, validate_binding_arguments
from .topic import TOPIC_CACHE_SIZE, TopicExchange, topic_matches

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
    "delayed_inner_type",
    "topic_matches",
    "validate_binding_arguments",
]

EXCHANGE_TYPES: dict[str, type[Exchange]] = {**INNER_TYPES, DelayedMessageExchange.type_name: DelayedMessageExchange}
"""Every exchange type by its name, as exchange.declare's ``type`` names it."""


def create_exchange(type_name: str, name: str, **kwargs: Any) -> Exchange:
    """A new exchange of the named type (``kwargs``: durable, auto_delete, internal, arguments).
    Raises KeyError for a type that is not in EXCHANGE_TYPES."""
    return EXCHANGE_TYPES[type_name](name, **kwargs)
