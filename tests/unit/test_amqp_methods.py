"""The AMQP adapter's method table (leveret/server/amqp.py ``METHODS``): every entry names a method of the
specification and a handler that takes exactly that method's arguments, and every method a client sends that
the adapter must answer has an entry. Socket-free: it reads the table and the specification only."""

from __future__ import annotations

import inspect

import pytest

import leveret
from leveret.amqp import spec
from leveret.server.amqp import METHODS

# Methods a client sends that are not in the table, and why.
NOT_IN_TABLE = {"basic.publish": "the parser's fast path, AMQPConnection.on_publish"}
SERVER_TO_CLIENT_ONLY = {
    "connection.start", "connection.secure", "connection.tune", "connection.open-ok", "connection.blocked",
    "connection.unblocked", "connection.update-secret-ok", "channel.open-ok",
    "exchange.declare-ok", "exchange.delete-ok", "exchange.bind-ok", "exchange.unbind-ok", "queue.declare-ok",
    "queue.bind-ok", "queue.unbind-ok", "queue.purge-ok", "queue.delete-ok", "basic.qos-ok", "basic.consume-ok",
    "basic.cancel-ok", "basic.return", "basic.deliver", "basic.get-ok", "basic.get-empty", "basic.recover-ok",
    "confirm.select-ok", "tx.select-ok", "tx.commit-ok", "tx.rollback-ok",
}


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.skipif(leveret.build() != "pure Python", reason="compiled: inspect.signature needs Python functions")
def test_each_handler_takes_the_channel_and_the_methods_arguments(name: str) -> None:
    method = spec.method(name)
    handler = METHODS[name]
    parameters = list(inspect.signature(handler).parameters)
    assert parameters[:2] == ["self", parameters[1]] and len(parameters) == 2 + len(method.arguments), (
        f"{name} has {len(method.arguments)} arguments, its handler {handler.__qualname__} takes {parameters[2:]}")
    assert handler.__name__ == name.replace(".", "_").replace("-", "_"), "a handler is named after its method"


def test_every_method_a_client_sends_has_a_handler() -> None:
    client_sends = {m.full_name for m in spec.METHODS} - SERVER_TO_CLIENT_ONLY - set(NOT_IN_TABLE)
    assert set(METHODS) == client_sends
