"""The exchange class with real clients: declare (four types, passive, equivalence, reserved names, unknown
type), delete (if-unused, missing), exchange-to-exchange bind/unbind, internal exchanges, routing end to end.

Tests taking ``broker_port`` run against Leveret and against RabbitMQ (skipped when it is absent).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import aio_pika
import aiormq
import kombu
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from amqphelp import closed_with


def bodies(ch: BlockingChannel, queue: str) -> list[bytes]:
    """Every message ready in ``queue``, taken with basic.get (auto-ack)."""
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def confirm_channel(conn: BlockingConnection) -> BlockingChannel:
    """Publishes on this channel return after the broker routed them (RabbitMQ enqueues asynchronously)."""
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


# --- declare ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_declare_each_type_then_passive(conn: BlockingConnection, unique: str, kind: str) -> None:
    ch = conn.channel()
    ok = ch.exchange_declare(unique, kind, auto_delete=True)
    assert ok.method.NAME == "Exchange.DeclareOk"
    assert ch.exchange_declare(unique, passive=True).method.NAME == "Exchange.DeclareOk"
    assert ch.exchange_declare(unique, kind, auto_delete=True).method.NAME == "Exchange.DeclareOk"
    ch.exchange_delete(unique)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_declare(unique, passive=True)
    assert closed_with(info) == (404, f"NOT_FOUND - no exchange '{unique}' in vhost '/'")


async def test_passive_missing_exchange_is_404_aio_pika(broker_port: int, unique: str) -> None:
    conn = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{broker_port}/", timeout=3)
    try:
        channel = await conn.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity) as info:
            await channel.declare_exchange(unique, passive=True)
        assert info.value.args[0] == f"NOT_FOUND - no exchange '{unique}' in vhost '/'"
        assert channel.is_closed
        other = await conn.channel()
        exchange = await other.get_exchange("amq.topic")
        assert exchange.name == "amq.topic"
    finally:
        await conn.close()


@pytest.mark.parametrize(("change", "text"), [
    ({"exchange_type": "topic"}, "inequivalent arg 'type' for exchange '{x}' in vhost '/': "
                                 "received 'topic' but current is 'direct'"),
    ({"durable": True}, "inequivalent arg 'durable' for exchange '{x}' in vhost '/': "
                        "received 'true' but current is 'false'"),
    ({"auto_delete": False}, "inequivalent arg 'auto_delete' for exchange '{x}' in vhost '/': "
                             "received 'false' but current is 'true'"),
    ({"internal": True}, "inequivalent arg 'internal' for exchange '{x}' in vhost '/': "
                         "received 'true' but current is 'false'"),
    ({"arguments": {"alternate-exchange": "ae"}}, "inequivalent arg 'alternate-exchange' for exchange '{x}' in "
                                                  "vhost '/': received the value 'ae' of type 'longstr' but "
                                                  "current is none"),
])
def test_redeclare_with_other_properties_is_406(conn: BlockingConnection, unique: str, change: dict[str, Any],
                                                text: str) -> None:
    ch = conn.channel()
    declared: dict[str, Any] = {"exchange_type": "direct", "auto_delete": True}
    ch.exchange_declare(unique, **declared)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_declare(unique, **{**declared, **change})
    assert closed_with(info) == (406, "PRECONDITION_FAILED - " + text.format(x=unique))
    assert conn.channel().exchange_declare(unique, passive=True)  # the exchange is unchanged
    conn.channel().exchange_delete(unique)


def test_redeclare_with_other_unchecked_arguments_is_accepted(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.exchange_declare(unique, "direct", auto_delete=True, arguments={"x-note": "a"})
    assert ch.exchange_declare(unique, "direct", auto_delete=True, arguments={"x-note": "b"})
    ch.exchange_delete(unique)


@pytest.mark.parametrize("name", ["amq.custom", "amq.direct.more"])
def test_amq_prefix_is_reserved_403(conn: BlockingConnection, name: str) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_declare(name, "direct")
    assert closed_with(info) == (403, f"ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'")


def test_builtin_exchanges_exist_and_cannot_be_deleted(conn: BlockingConnection) -> None:
    ch = conn.channel()
    for name in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"):
        assert ch.exchange_declare(name, passive=True)
    assert ch.exchange_declare("amq.direct", "direct", durable=True)  # an equivalent redeclare is fine
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_delete("amq.fanout")
    assert closed_with(info) == (403, "ACCESS_REFUSED - deletion of system exchange 'amq.fanout' in vhost '/' "
                                      "not allowed")
    for attempt in (lambda c: c.exchange_delete(""), lambda c: c.exchange_declare("", passive=True)):
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            attempt(ch)
        assert closed_with(info) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_unknown_type_is_503_and_closes_the_connection(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.exchange_declare(unique, "x-no-such-type")
    assert closed_with(info) == (503, "COMMAND_INVALID - unknown exchange type 'x-no-such-type'")
    assert conn.is_closed


# --- delete ----------------------------------------------------------------------------------------


def test_delete_if_unused(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.exchange_declare(unique, "fanout")
    ch.queue_declare(unique, exclusive=True)
    ch.queue_bind(unique, unique)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_delete(unique, if_unused=True)
    assert closed_with(info) == (406, f"PRECONDITION_FAILED - exchange '{unique}' in vhost '/' in use")
    ch = conn.channel()
    ch.queue_unbind(unique, unique)
    assert ch.exchange_delete(unique, if_unused=True).method.NAME == "Exchange.DeleteOk"
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.exchange_declare(unique, passive=True)


def test_delete_if_unused_counts_exchange_bindings_as_use(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    src, dst = f"{unique}-src", f"{unique}-dst"
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "fanout")
    try:
        ch.exchange_bind(dst, src)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_delete(src, if_unused=True)
        assert info.value.reply_code == 406
    finally:
        ch = conn.channel()
        ch.exchange_delete(src)
        ch.exchange_delete(dst)


def test_delete_missing_exchange_is_ok(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    assert ch.exchange_delete(unique).method.NAME == "Exchange.DeleteOk"
    assert ch.exchange_delete(unique, if_unused=True).method.NAME == "Exchange.DeleteOk"
    assert ch.is_open


def test_deleting_an_exchange_removes_its_bindings(conn: BlockingConnection, unique: str) -> None:
    ch = confirm_channel(conn)
    ch.exchange_declare(unique, "fanout")
    ch.queue_declare(unique, exclusive=True)
    ch.queue_bind(unique, unique)
    ch.exchange_delete(unique)
    ch.exchange_declare(unique, "fanout")
    try:
        ch.basic_publish(unique, "", b"after re-creation")
        assert bodies(ch, unique) == []
    finally:
        ch.exchange_delete(unique)


# --- routing, bind and unbind ----------------------------------------------------------------------


async def test_routing_by_type_aio_pika(broker_port: int, unique: str) -> None:
    conn = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{broker_port}/", timeout=3)
    try:
        channel = await conn.channel()  # publisher confirms: each publish returns after routing
        exchanges = {}
        for kind in ("direct", "fanout", "topic", "headers"):
            exchanges[kind] = await channel.declare_exchange(f"{unique}-{kind}", kind, auto_delete=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchanges["direct"], "key")
        await queue.bind(exchanges["fanout"], "ignored")
        await queue.bind(exchanges["topic"], "a.*.c")
        await queue.bind(exchanges["headers"], arguments={"x-match": "any", "h": "v", "k": 1})
        cases = [("direct", "key", None, True), ("direct", "other", None, False),
                 ("fanout", "anything", None, True), ("topic", "a.b.c", None, True), ("topic", "a.b.b.c", None, False),
                 ("headers", "", {"h": "v"}, True), ("headers", "", {"h": "w"}, False)]
        for i, (kind, key, headers, _) in enumerate(cases):
            await exchanges[kind].publish(aio_pika.Message(b"%d" % i, headers=headers), routing_key=key)
        received = []
        while (message := await queue.get(no_ack=True, fail=False, timeout=2)) is not None:
            received.append(message.body)
        assert received == [b"%d" % i for i, case in enumerate(cases) if case[3]]
    finally:
        await conn.close()


async def test_exchange_to_exchange_bind_and_unbind_aio_pika(broker_port: int, unique: str) -> None:
    conn = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{broker_port}/", timeout=3)
    try:
        channel = await conn.channel()
        source = await channel.declare_exchange(f"{unique}-src", "topic")  # auto-delete would go at unbind
        destination = await channel.declare_exchange(f"{unique}-dst", "fanout", auto_delete=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(destination)
        await destination.bind(source, "logs.#")
        await source.publish(aio_pika.Message(b"through"), routing_key="logs.app.error")
        await source.publish(aio_pika.Message(b"filtered"), routing_key="metrics.cpu")
        await destination.unbind(source, "logs.#")
        await source.publish(aio_pika.Message(b"after-unbind"), routing_key="logs.app")
        message = await queue.get(no_ack=True, timeout=2)
        assert message.body == b"through"
        assert message.exchange == f"{unique}-src" and message.routing_key == "logs.app.error"
        assert await queue.get(no_ack=True, fail=False, timeout=2) is None
    finally:
        cleanup = await conn.channel()
        await cleanup.exchange_delete(f"{unique}-src")
        await conn.close()


def test_exchange_bind_missing_is_404(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_bind(unique, "amq.direct", "k")
    assert closed_with(info) == (404, f"NOT_FOUND - no exchange '{unique}' in vhost '/'")
    ch = conn.channel()
    assert ch.exchange_unbind(unique, "amq.direct", "k").method.NAME == "Exchange.UnbindOk"


def test_auto_delete_exchange_goes_with_its_last_binding(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.exchange_declare(unique, "direct", auto_delete=True)
    ch.queue_declare(unique, exclusive=True)
    assert ch.exchange_declare(unique, passive=True)  # never bound: still there
    ch.queue_bind(unique, unique, "a")
    ch.queue_bind(unique, unique, "b")
    ch.queue_unbind(unique, unique, "a")
    assert ch.exchange_declare(unique, passive=True)
    ch.queue_unbind(unique, unique, "b")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_declare(unique, passive=True)
    assert info.value.reply_code == 404


def test_internal_exchange_refuses_publish_but_routes_from_bindings(conn: BlockingConnection, unique: str) -> None:
    ch = confirm_channel(conn)
    internal, front = f"{unique}-internal", f"{unique}-front"
    ch.exchange_declare(internal, "fanout", internal=True, auto_delete=True)
    ch.exchange_declare(front, "fanout", auto_delete=True)
    ch.queue_declare(unique, exclusive=True)
    ch.queue_bind(unique, internal)
    ch.exchange_bind(internal, front)
    ch.basic_publish(front, "", b"via binding")
    assert bodies(ch, unique) == [b"via binding"]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_publish(internal, "", b"direct")
    assert closed_with(info) == (403, f"ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in "
                                      "vhost '/'")


def test_publish_to_missing_exchange_is_404(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.basic_publish(unique, "k", b"lost")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("", exclusive=True)
    assert closed_with(info) == (404, f"NOT_FOUND - no exchange '{unique}' in vhost '/'")


# --- kombu -----------------------------------------------------------------------------------------


def test_kombu_topic_exchange_producer_consumer(broker_port: int, unique: str) -> None:
    exchange = kombu.Exchange(unique, "topic", auto_delete=True)
    queue = kombu.Queue(unique, exchange, routing_key="jobs.*", exclusive=True)
    received: list[tuple[Any, str]] = []
    with kombu.Connection(f"amqp://guest:guest@127.0.0.1:{broker_port}//", connect_timeout=3) as connection:
        channel = connection.channel()
        queue(channel).declare()
        producer = kombu.Producer(channel, exchange)
        producer.publish({"n": 1}, routing_key="jobs.resize", serializer="json")
        producer.publish({"n": 2}, routing_key="other.resize", serializer="json")
        producer.publish("three", routing_key="jobs.crop", serializer="json")

        def on_message(body: Any, message: kombu.Message) -> None:
            received.append((body, message.delivery_info["routing_key"]))
            message.ack()

        with kombu.Consumer(channel, [queue], callbacks=[on_message]):
            deadline = time.monotonic() + 2
            while len(received) < 2 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.1)
    assert received == [({"n": 1}, "jobs.resize"), ("three", "jobs.crop")]
