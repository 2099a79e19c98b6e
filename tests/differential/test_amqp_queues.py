"""The queue class with real clients: declare (server-named, passive, durable, exclusive, auto-delete,
equivalence, reserved names), bind/unbind, purge, delete (if-unused, if-empty), and the empty queue name
that means "the queue last declared on this channel".

Tests taking ``broker_port`` run against Leveret and against RabbitMQ (skipped when it is absent).
"""

from __future__ import annotations

import time
from typing import Any

import aio_pika
import aiormq
import kombu
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from amqphelp import closed_with, connect, url


def confirm_channel(conn: BlockingConnection) -> BlockingChannel:
    """Publishes on this channel return once the broker enqueued them (RabbitMQ enqueues asynchronously)."""
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def publish(ch: BlockingChannel, queue: str, *bodies: bytes) -> None:
    for body in bodies:
        ch.basic_publish("", queue, body)


def counts(ch: BlockingChannel, queue: str) -> tuple[int, int]:
    """(message_count, consumer_count) from a passive declare."""
    ok = ch.queue_declare(queue, passive=True).method
    return ok.message_count, ok.consumer_count


LOCKED = ("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be "
          "originally declared on another connection or the exclusive property value does not match that of the "
          "original declaration.")


async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    pass


# --- declare ---------------------------------------------------------------------------------------


async def test_server_named_queue_aio_pika(broker_port: int) -> None:
    conn = await aio_pika.connect(url(broker_port), timeout=3)
    try:
        channel = await conn.channel()
        first = await channel.declare_queue(exclusive=True)
        second = await channel.declare_queue(exclusive=True)
        for queue in (first, second):
            assert queue.name.startswith("amq.gen-")
            assert len(queue.name) > len("amq.gen-") + 8
        assert first.name != second.name
        assert first.declaration_result.message_count == 0
        assert first.declaration_result.consumer_count == 0
    finally:
        await conn.close()


def test_passive_declare_reports_counts(conn: BlockingConnection, unique: str) -> None:
    ch = confirm_channel(conn)
    ch.queue_declare(unique, exclusive=True)
    publish(ch, unique, b"1", b"2", b"3")
    ch.basic_consume(unique, lambda *a: None, consumer_tag="c")  # takes 3 unacked (no qos)
    conn.process_data_events(time_limit=0.05)
    publish(ch, unique, b"4")
    deadline = time.monotonic() + 2
    while counts(ch, unique) != (0, 1) and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    assert counts(ch, unique) == (0, 1)  # unacked messages are not counted
    ch.basic_cancel("c")
    ok = ch.queue_declare(unique, exclusive=True).method
    assert (ok.queue, ok.consumer_count) == (unique, 0)


def test_passive_declare_of_missing_queue_is_404(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(unique, passive=True)
    assert closed_with(info) == (404, f"NOT_FOUND - no queue '{unique}' in vhost '/'")


def test_durable_queue(conn: BlockingConnection, unique: str) -> None:
    ch = confirm_channel(conn)
    try:
        ch.queue_declare(unique, durable=True)
        ch.basic_publish("", unique, b"kept", pika.BasicProperties(delivery_mode=2))
        assert counts(conn.channel(), unique) == (1, 0)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            conn.channel().queue_declare(unique, durable=False)
        assert closed_with(info) == (406, f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{unique}' "
                                          "in vhost '/': received 'false' but current is 'true'")
    finally:
        assert conn.channel().queue_delete(unique).method.message_count == 1


async def test_exclusive_queue_is_locked_to_other_connections(broker_port: int, unique: str) -> None:
    owner = await aio_pika.connect(url(broker_port), timeout=3)
    other = await aio_pika.connect(url(broker_port), timeout=3)
    try:
        owner_channel = await owner.channel()
        await owner_channel.declare_queue(unique, exclusive=True)
        for attempt in ("declare", "passive", "consume", "get", "purge", "delete"):
            channel = await other.channel()
            with pytest.raises(aiormq.exceptions.ChannelLockedResource) as info:
                if attempt == "declare":
                    await channel.declare_queue(unique, exclusive=True)
                elif attempt == "passive":
                    await channel.declare_queue(unique, passive=True)
                else:
                    queue = await channel.get_queue(unique, ensure=False)
                    if attempt == "consume":
                        await queue.consume(ignore)
                    elif attempt == "get":
                        await queue.get(fail=False)
                    elif attempt == "purge":
                        await queue.purge()
                    else:
                        await queue.delete(if_unused=False, if_empty=False)
            assert info.value.args[0] == LOCKED.format(q=unique), attempt
        mine = await owner_channel.get_queue(unique)  # the owner still has it
        assert mine.name == unique
    finally:
        await other.close()
        await owner.close()


def test_redeclaring_with_another_exclusive_flag_is_405(conn: BlockingConnection, unique: str) -> None:
    shared, mine = f"{unique}-shared", f"{unique}-mine"
    ch = conn.channel()
    ch.queue_declare(shared, auto_delete=True)
    ch.queue_declare(mine, exclusive=True)
    try:
        for name, exclusive in ((shared, True), (mine, False)):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                conn.channel().queue_declare(name, exclusive=exclusive, auto_delete=name == shared)
            assert closed_with(info) == (405, LOCKED.format(q=name))
    finally:
        conn.channel().queue_delete(shared)


def test_exclusive_queue_is_never_durable(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, exclusive=True, durable=True)
    assert ch.queue_declare(unique, exclusive=True, durable=False).method.queue == unique
    assert ch.queue_declare(unique, exclusive=True, durable=True).method.queue == unique


def test_exclusive_queue_is_shared_by_the_channels_of_its_connection(conn: BlockingConnection,
                                                                      unique: str) -> None:
    conn.channel().queue_declare(unique, exclusive=True)
    ch = conn.channel()
    assert counts(ch, unique) == (0, 0)
    ch.basic_publish("", unique, b"x")
    _method, _props, body = ch.basic_get(unique, auto_ack=True)
    assert body == b"x"


def test_auto_delete_queue_goes_when_its_last_consumer_cancels(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, auto_delete=True)
    assert counts(ch, unique) == (0, 0)  # no consumer yet: it stays
    ch.basic_consume(unique, lambda *a: None, consumer_tag="one")
    ch.basic_consume(unique, lambda *a: None, consumer_tag="two")
    ch.basic_cancel("one")
    assert counts(ch, unique) == (0, 1)
    ch.basic_cancel("two")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        counts(ch, unique)
    assert info.value.reply_code == 404


def test_auto_delete_queue_goes_when_the_consuming_channel_closes(conn: BlockingConnection, unique: str) -> None:
    consumer_channel = conn.channel()
    consumer_channel.queue_declare(unique, auto_delete=True)
    consumer_channel.basic_consume(unique, lambda *a: None)
    consumer_channel.close()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(unique, passive=True)
    assert info.value.reply_code == 404


@pytest.mark.parametrize(("redeclare", "text"), [
    ({"auto_delete": False, "arguments": {"x-max-length": 5}},
     "inequivalent arg 'auto_delete' for queue '{q}' in vhost '/': received 'false' but current is 'true'"),
    ({"auto_delete": True, "arguments": {"x-max-length": 6}},
     "inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': received '6' but current is '5'"),
    ({"auto_delete": True, "arguments": {}},
     "inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': received none but current is the value '5' "
     "of type 'signedint'"),
    ({"auto_delete": True, "arguments": {"x-max-length": 5, "x-message-ttl": 100}},
     "inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': received the value '100' of type 'signedint' "
     "but current is none"),
])
def test_redeclare_with_other_properties_is_406(conn: BlockingConnection, unique: str, redeclare: dict[str, Any],
                                                text: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, auto_delete=True, arguments={"x-max-length": 5})
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare(unique, **redeclare)
        assert closed_with(info) == (406, "PRECONDITION_FAILED - " + text.format(q=unique))
        ok = conn.channel().queue_declare(unique, auto_delete=True, arguments={"x-max-length": 5, "x-custom": 1})
        assert ok.method.queue == unique  # arguments RabbitMQ does not compare may differ
    finally:
        conn.channel().queue_delete(unique)


def test_amq_prefix_is_reserved_403(conn: BlockingConnection) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("amq.mine")
    assert closed_with(info) == (403, "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'")


# --- bind / unbind ---------------------------------------------------------------------------------


def test_bind_and_unbind(conn: BlockingConnection, unique: str) -> None:
    ch = confirm_channel(conn)
    ch.queue_declare(unique, exclusive=True)
    assert ch.queue_bind(unique, "amq.direct", "a").method.NAME == "Queue.BindOk"
    assert ch.queue_bind(unique, "amq.direct", "a").method.NAME == "Queue.BindOk"  # idempotent
    ch.queue_bind(unique, "amq.direct", "b")
    ch.basic_publish("amq.direct", "a", b"a1")
    ch.basic_publish("amq.direct", "b", b"b1")
    assert ch.queue_unbind(unique, "amq.direct", "a").method.NAME == "Queue.UnbindOk"
    assert ch.queue_unbind(unique, "amq.direct", "a").method.NAME == "Queue.UnbindOk"  # no binding: still ok
    ch.basic_publish("amq.direct", "a", b"a2")
    ch.basic_publish("amq.direct", "b", b"b2")
    got = []
    while (message := ch.basic_get(unique, auto_ack=True))[0] is not None:
        got.append(message[2])
    assert got == [b"a1", b"b1", b"b2"]


def test_bind_errors(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, exclusive=True)
    cases = [
        (lambda c: c.queue_bind(unique, f"{unique}-x"), (404, f"NOT_FOUND - no exchange '{unique}-x' in vhost '/'")),
        (lambda c: c.queue_bind(f"{unique}-q", "amq.direct"), (404, f"NOT_FOUND - no queue '{unique}-q' in vhost '/'")),
        (lambda c: c.queue_bind(unique, ""), (403, "ACCESS_REFUSED - operation not permitted on the default exchange")),
    ]
    for attempt, expected in cases:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            attempt(ch)
        assert closed_with(info) == expected


def test_unbind_of_missing_queue_or_exchange_is_ok(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    assert ch.queue_unbind(unique, "amq.direct", "k").method.NAME == "Queue.UnbindOk"
    ch.queue_declare(unique, exclusive=True)
    assert ch.queue_unbind(unique, f"{unique}-x", "k").method.NAME == "Queue.UnbindOk"


def test_binding_to_another_connections_exclusive_queue_is_405(broker_port: int, unique: str) -> None:
    owner, other = connect(broker_port), connect(broker_port)
    try:
        owner.channel().queue_declare(unique, exclusive=True)
        ch = other.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_bind(unique, "amq.fanout")
        assert closed_with(info) == (405, LOCKED.format(q=unique))
    finally:
        other.close()
        owner.close()


# --- purge / delete --------------------------------------------------------------------------------


async def test_purge_returns_the_number_of_ready_messages(broker_port: int) -> None:
    conn = await aio_pika.connect(url(broker_port), timeout=3)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(exclusive=True)
        for i in range(5):
            await channel.default_exchange.publish(aio_pika.Message(b"%d" % i), routing_key=queue.name)
        held = await queue.get(timeout=2)  # unacked: not purged
        purged = await queue.purge()
        assert purged.message_count == 4
        assert (await queue.purge()).message_count == 0
        await held.nack(requeue=True)
        again = await queue.get(no_ack=True, timeout=2)
        assert (again.body, again.redelivered) == (b"0", True)
    finally:
        await conn.close()


def test_delete_returns_the_number_of_messages(conn: BlockingConnection, unique: str) -> None:
    ch = confirm_channel(conn)
    ch.queue_declare(unique, exclusive=True)
    publish(ch, unique, b"1", b"2", b"3")
    assert ch.queue_delete(unique).method.message_count == 3
    assert ch.queue_delete(unique).method.message_count == 0  # missing: not an error


def test_delete_if_empty_and_if_unused(conn: BlockingConnection, unique: str) -> None:
    ch = confirm_channel(conn)
    ch.queue_declare(unique, exclusive=True)
    publish(ch, unique, b"1")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_delete(unique, if_empty=True)
    assert closed_with(info) == (406, f"PRECONDITION_FAILED - queue '{unique}' in vhost '/' not empty")
    ch = conn.channel()
    ch.basic_consume(unique, lambda *a: None, auto_ack=True)
    conn.process_data_events(time_limit=0.05)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        conn.channel().queue_delete(unique, if_unused=True)
    assert closed_with(info) == (406, f"PRECONDITION_FAILED - queue '{unique}' in vhost '/' in use")
    ok = conn.channel().queue_delete(unique, if_empty=True)  # the consumer took the message
    assert ok.method.message_count == 0


def test_deleting_a_queue_removes_its_bindings(conn: BlockingConnection, unique: str) -> None:
    ch = confirm_channel(conn)
    ch.queue_declare(unique, exclusive=True)
    ch.queue_bind(unique, "amq.direct", unique)
    ch.queue_delete(unique)
    ch.queue_declare(unique, exclusive=True)
    ch.basic_publish("amq.direct", unique, b"not routed")
    assert counts(ch, unique) == (0, 0)


# --- the empty queue name --------------------------------------------------------------------------


def test_empty_name_means_the_last_declared_queue(conn: BlockingConnection, unique: str) -> None:
    ch = confirm_channel(conn)
    ch.queue_declare(unique, exclusive=True)
    ch.queue_bind("", "amq.direct", "rk")  # queue "" is the last declared
    ch.queue_bind("", "amq.direct")  # and an empty routing key too
    ch.basic_publish("amq.direct", "rk", b"by rk")
    ch.basic_publish("amq.direct", unique, b"by name")
    method, _props, body = ch.basic_get("", auto_ack=True)
    assert (body, method.message_count) == (b"by rk", 1)
    assert ch.queue_purge("").method.message_count == 1
    ch.basic_consume("", lambda *a: None, consumer_tag="last")
    assert counts(ch, unique) == (0, 1)
    ch.basic_cancel("last")
    assert ch.queue_delete("").method.message_count == 0
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        counts(ch, unique)


def test_empty_name_without_a_declared_queue_is_404(conn: BlockingConnection) -> None:
    attempts = [lambda c: c.queue_purge(""), lambda c: c.basic_get(""), lambda c: c.queue_delete(""),
                lambda c: c.queue_bind("", "amq.direct", "k")]
    for attempt in attempts:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            attempt(ch)
        assert closed_with(info) == (404, "NOT_FOUND - no previously declared queue")


def test_passive_declare_of_empty_name_is_not_a_shortcut(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("", passive=True)
    assert closed_with(info) == (404, "NOT_FOUND - no queue '' in vhost '/'")


def test_last_declared_queue_is_per_channel(conn: BlockingConnection, unique: str) -> None:
    first = conn.channel()
    first.queue_declare(unique, exclusive=True)
    second = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        second.queue_purge("")
    assert info.value.reply_code == 404
    assert first.queue_purge("").method.message_count == 0


# --- kombu -----------------------------------------------------------------------------------------


def test_kombu_simple_queue(broker_port: int, unique: str) -> None:
    with kombu.Connection(f"amqp://guest:guest@127.0.0.1:{broker_port}//", connect_timeout=3) as connection:
        queue = connection.SimpleQueue(unique, queue_opts={"durable": False},
                                       exchange_opts={"durable": False, "auto_delete": True})
        try:
            queue.put({"job": 1})
            queue.put("second")
            first = queue.get(timeout=2)
            assert first.payload == {"job": 1}
            first.ack()
            second = queue.get(timeout=2)
            assert second.payload == "second"
            second.requeue()
            again = queue.get(timeout=2)
            assert (again.payload, again.delivery_info["redelivered"]) == ("second", True)
            again.ack()
            assert queue.qsize() == 0
        finally:
            queue.close()  # cancels its consumer first: deleting a consumed queue would cancel it from the server
            queue.queue(connection.channel()).delete()
