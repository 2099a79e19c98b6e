"""``x-delayed-message`` (RabbitMQ's rabbitmq_delayed_message_exchange plugin) as an exchange type: bindings
and routing of the type named by its ``x-delayed-type`` argument. Holding messages until they are due is
:mod:`leveret.core.delays`'s job, not this module's."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import ClassVar

from ..errors import CommandInvalid, PreconditionFailed
from .base import EMPTY_TABLE, Binding, BindingKey, Exchange, Table
from .direct import DirectExchange
from .fanout import FanoutExchange
from .headers import HeadersExchange, validate_binding_arguments
from .topic import TopicExchange

INNER_TYPES: dict[str, type[Exchange]] = {
    cls.type_name: cls for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange)
}
"""The types an x-delayed-message exchange may route as."""


class DelayedMessageExchange(Exchange):
    """``x-delayed-message``, as RabbitMQ's rabbitmq_delayed_message_exchange plugin: bindings and routing are
    those of the type named by the required ``x-delayed-type`` argument (direct, fanout, topic or headers),
    whose index an inner exchange of that type keeps. Holding a message with an ``x-delay`` header until it
    is due is not done here (this module has no clock): the core's publish path asks ``broker.delays``
    (:mod:`leveret.core.delays`) first. Raises, as the plugin does, PreconditionFailed without a usable
    ``x-delayed-type`` and CommandInvalid for an unknown one."""

    type_name: ClassVar[str] = "x-delayed-message"

    def __init__(self, name: str, *, durable: bool = False, auto_delete: bool = False, internal: bool = False,
                 arguments: Table | None = None) -> None:
        """The flags as for every exchange (the inner one gets them too). Named, not ``**flags``: mypyc (setup.py)
        passes ``**flags`` on to a native ``__init__`` wrongly."""
        inner_type = INNER_TYPES[delayed_inner_type(arguments)]
        super().__init__(name, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments)
        self.inner: Exchange = inner_type(name, durable=self.durable, auto_delete=self.auto_delete,
                                          internal=self.internal)

    def bind(self, destination: Hashable, routing_key: str, arguments: Table | None = None) -> bool:
        """As the inner type's bind, with its binding validation (406 for a bad headers ``x-match``)."""
        try:
            validate_binding_arguments(self.inner.type_name, arguments)
        except ValueError as exc:
            raise PreconditionFailed(str(exc)) from None
        return super().bind(destination, routing_key, arguments)

    def route(self, routing_key: str, headers: Table | None) -> Collection[Hashable]:
        return self.inner.route(routing_key, headers)

    def _index_add(self, key: BindingKey, binding: Binding) -> None:
        self.inner.bind(binding.destination, binding.routing_key, binding.table())

    def _index_remove(self, key: BindingKey, binding: Binding) -> None:
        self.inner.unbind(binding.destination, binding.routing_key, binding.table())


def delayed_inner_type(arguments: Table | None) -> str:
    """The exchange type an x-delayed-message exchange routes as (its ``x-delayed-type`` argument), checked
    with the plugin's errors."""
    value = (arguments or EMPTY_TABLE).get("x-delayed-type")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise PreconditionFailed("Invalid argument, 'x-delayed-type' must be an existing exchange type")
    if value == DelayedMessageExchange.type_name:
        raise PreconditionFailed("Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'")
    if value not in INNER_TYPES:
        raise CommandInvalid(f"unknown exchange type '{value}'")
    return value
