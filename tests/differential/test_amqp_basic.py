"""The basic class with real clients: publish (mandatory, immediate, properties), consume (server-named tags,
no-ack, exclusive, reused tags), cancel (by the client and by the server), get, ack/nack/reject, recover, qos,
and how messages are shared among consumers.

Tests taking ``broker_port`` run against Leveret and against RabbitMQ (skipped when it is absent).
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import time
from typing import Any

import aio_pika
import aiormq
import amqp
import kombu
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from amqphelp import closed_with, url
from rawamqp import RawClient
from waiting import async_hold, async_wait_for


def queue_with(conn: BlockingConnection, name: str, *bodies: bytes) -> BlockingChannel:
    """Declare exclusive queue ``name`` holding ``bodies`` (published with confirms); returns a plain channel."""
    publisher = conn.channel()
    publisher.confirm_delivery()
    publisher.queue_declare(name, exclusive=True)
    for body in bodies:
        publisher.basic_publish("", name, body)
    publisher.close()
    return conn.channel()


def get(ch: BlockingChannel, queue: str, auto_ack: bool = False) -> tuple[bytes, bool, int, int] | None:
    """(body, redelivered, message_count, delivery_tag) of basic.get, None for get-empty."""
    method, _props, body = ch.basic_get(queue, auto_ack=auto_ack)
    if method is None:
        return None
    return body, method.redelivered, method.message_count, method.delivery_tag


def drain(ch: BlockingChannel, queue: str) -> list[tuple[bytes, bool]]:
    """Every ready message as (body, redelivered), auto-acked."""
    out = []
    while (got := get(ch, queue, auto_ack=True)) is not None:
        out.append(got[:2])
    return out


def wait_for(conn: BlockingConnection, received: list[Any], count: int, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)


def settle(conn: BlockingConnection, seconds: float = 0.15) -> None:
    """Let deliveries that should not happen have a chance to arrive."""
    conn.process_data_events(time_limit=seconds)


# --- publish ---------------------------------------------------------------------------------------


def test_mandatory_unroutable_message_is_returned_312(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    returned: list[tuple[int, str, str, str, bytes, str | None]] = []
    ch.add_on_return_callback(lambda _c, method, props, body: returned.append(
        (method.reply_code, method.reply_text, method.exchange, method.routing_key, body, props.message_id)))
    ch.basic_publish("", unique, b"returned", pika.BasicProperties(message_id="m1"), mandatory=True)
    ch.basic_publish("", unique, b"dropped silently", mandatory=False)
    ch.basic_publish("amq.direct", unique, b"returned too", mandatory=True)
    wait_for(conn, returned, 2)
    settle(conn)
    assert returned == [(312, "NO_ROUTE", "", unique, b"returned", "m1"),
                        (312, "NO_ROUTE", "amq.direct", unique, b"returned too", None)]
    assert ch.is_open


async def test_mandatory_return_with_confirms_aio_pika(broker_port: int, unique: str) -> None:
    conn = await aio_pika.connect(url(broker_port), timeout=3)
    try:
        channel = await conn.channel(on_return_raises=True)
        with pytest.raises(aiormq.exceptions.PublishError) as info:
            await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=unique, mandatory=True)
        frame = info.value.frame
        assert (frame.reply_code, frame.reply_text, frame.routing_key) == (312, "NO_ROUTE", unique)
        queue = await channel.declare_queue(exclusive=True)
        confirmation = await channel.default_exchange.publish(aio_pika.Message(b"y"), routing_key=queue.name,
                                                              mandatory=True)
        assert type(confirmation).__name__ == "Ack"
    finally:
        await conn.close()


def test_immediate_is_540_not_implemented(broker_port: int, unique: str) -> None:
    conn = amqp.Connection(f"127.0.0.1:{broker_port}", connect_timeout=3)
    conn.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(unique, exclusive=True)
        ch.basic_publish(amqp.Message(b"now or never"), "", unique, immediate=True)
        with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as info:
            ch.queue_declare(unique, passive=True)
        assert (info.value.reply_code, info.value.reply_text) == (540, "NOT_IMPLEMENTED - immediate=true")
    finally:
        conn.collect()


async def test_properties_round_trip_aio_pika(broker_port: int) -> None:
    conn = await aio_pika.connect(url(broker_port), timeout=3)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(exclusive=True)
        timestamp = datetime.datetime(2024, 5, 17, 12, 30, 45, tzinfo=datetime.UTC)
        headers = {"str": "text", "int": 42, "negative": -7, "long": 2**40, "float": 2.5, "bool": False,
                   "decimal": decimal.Decimal("3.14"), "list": [1, "two", True], "table": {"k": "v"},
                   "none": None}
        sent = aio_pika.Message(
            b"\x00binary\xff", headers=headers, content_type="application/octet-stream",
            content_encoding="gzip", delivery_mode=aio_pika.DeliveryMode.PERSISTENT, priority=3,
            correlation_id="corr-1", reply_to="replies", expiration=60, message_id="msg-1", timestamp=timestamp,
            type="event", user_id="guest", app_id="tests")
        await channel.default_exchange.publish(sent, routing_key=queue.name)
        got = await queue.get(no_ack=True, timeout=2)
        assert got.body == b"\x00binary\xff"
        assert got.headers == headers
        assert (got.content_type, got.content_encoding, got.delivery_mode, got.priority) == (
            "application/octet-stream", "gzip", aio_pika.DeliveryMode.PERSISTENT, 3)
        assert (got.correlation_id, got.reply_to, got.message_id, got.type, got.user_id, got.app_id) == (
            "corr-1", "replies", "msg-1", "event", "guest", "tests")
        assert got.expiration == 60
        assert got.timestamp == timestamp
        assert (got.exchange, got.routing_key, got.redelivered) == ("", queue.name, False)
    finally:
        await conn.close()


def test_large_and_empty_bodies(conn: BlockingConnection, unique: str) -> None:
    big = bytes(range(256)) * 2000  # 512000 bytes: several frames of 131072
    ch = queue_with(conn, unique, big, b"")
    assert [body for body, _ in drain(ch, unique)] == [big, b""]


def test_user_id_must_match_the_login_406(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique)
    ch.basic_publish("", unique, b"ok", pika.BasicProperties(user_id="guest"))
    ch.basic_publish("", unique, b"forged", pika.BasicProperties(user_id="admin"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(unique, passive=True)
    assert closed_with(info) == (406, "PRECONDITION_FAILED - user_id property set to 'admin' but authenticated "
                                      "user was 'guest'")
    assert drain(conn.channel(), unique) == [(b"ok", False)]


@pytest.mark.parametrize(("expiration", "reason"), [
    ("soon", "no_integer"),
    ("1.5", '{leftover_string,".5"}'),
    ("-1", "{value_negative,-1}"),
    ("315360000001", "{value_too_large,315360000001}"),
])
def test_invalid_expiration_is_406(conn: BlockingConnection, unique: str, expiration: str, reason: str) -> None:
    ch = queue_with(conn, unique)
    ch.basic_publish("", unique, b"x", pika.BasicProperties(expiration="315360000000"))  # the largest allowed
    ch.basic_publish("", unique, b"y", pika.BasicProperties(expiration=expiration))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(unique, passive=True)
    assert closed_with(info) == (406, f"PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}")
    assert drain(conn.channel(), unique) == [(b"x", False)]


# --- consume / cancel ------------------------------------------------------------------------------


def test_server_names_the_consumer_when_the_tag_is_empty(broker_port: int, unique: str) -> None:
    conn = amqp.Connection(f"127.0.0.1:{broker_port}", connect_timeout=3)
    conn.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(unique, exclusive=True, auto_delete=False)
        first = ch.basic_consume(unique, callback=lambda message: None)
        second = ch.basic_consume(unique, callback=lambda message: None)
        assert first.startswith("amq.ctag-") and second.startswith("amq.ctag-")
        assert first != second
        assert ch.basic_cancel(first) == first
    finally:
        conn.close()


def test_reusing_a_consumer_tag_is_530(broker_port: int, unique: str) -> None:
    conn = amqp.Connection(f"127.0.0.1:{broker_port}", connect_timeout=3)
    conn.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(unique, exclusive=True, auto_delete=False)
        ch.basic_consume(unique, "mine", callback=lambda message: None)
        with pytest.raises(amqp.exceptions.NotAllowed) as info:
            ch.basic_consume(unique, "mine", callback=lambda message: None)
        assert (info.value.reply_code, info.value.reply_text) == (530, "NOT_ALLOWED - attempt to reuse consumer "
                                                                       "tag 'mine'")
    finally:
        conn.collect()


def test_same_tag_on_another_channel_is_fine(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique)
    ch.basic_consume(unique, lambda *a: None, consumer_tag="shared")
    other = conn.channel()
    assert other.basic_consume(unique, lambda *a: None, consumer_tag="shared") == "shared"


def test_exclusive_consumer_conflicts_are_403(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique)
    ch.basic_consume(unique, lambda *a: None, exclusive=True)
    other = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        other.basic_consume(unique, lambda *a: None)
    assert closed_with(info) == (403, f"ACCESS_REFUSED - queue '{unique}' in vhost '/' in exclusive use")
    second = f"{unique}-b"
    ch2 = queue_with(conn, second)
    ch2.basic_consume(second, lambda *a: None)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        conn.channel().basic_consume(second, lambda *a: None, exclusive=True)
    assert closed_with(info) == (403, f"ACCESS_REFUSED - queue '{second}' in vhost '/' in exclusive use")


def test_consume_from_missing_queue_is_404(conn: BlockingConnection, unique: str) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        conn.channel().basic_consume(unique, lambda *a: None)
    assert closed_with(info) == (404, f"NOT_FOUND - no queue '{unique}' in vhost '/'")


def test_no_ack_consumer_takes_messages_for_good(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"1", b"2", b"3")
    received: list[bytes] = []
    ch.basic_consume(unique, lambda _c, _m, _p, body: received.append(body), auto_ack=True)
    wait_for(conn, received, 3)
    ch.close()  # nothing to requeue
    assert received == [b"1", b"2", b"3"]
    assert drain(conn.channel(), unique) == []


def test_unacked_messages_come_back_when_the_channel_closes(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"1", b"2", b"3")
    received: list[bytes] = []
    ch.basic_consume(unique, lambda _c, _m, _p, body: received.append(body))
    wait_for(conn, received, 3)
    ch.close()
    assert drain(conn.channel(), unique) == [(b"1", True), (b"2", True), (b"3", True)]


async def test_cancel_stops_deliveries_aio_pika(broker_port: int) -> None:
    conn = await aio_pika.connect(url(broker_port), timeout=3)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(exclusive=True)
        received: list[bytes] = []

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.append(message.body)
            await message.ack()

        tag = await queue.consume(on_message)
        await channel.default_exchange.publish(aio_pika.Message(b"before"), routing_key=queue.name)
        await async_wait_for(lambda: received, 2)
        cancel_ok = await queue.cancel(tag)
        assert cancel_ok.consumer_tag == tag
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue.name)
        left = await queue.get(no_ack=True, timeout=2)
        assert received == [b"before"]
        assert left.body == b"after"
    finally:
        await conn.close()


def test_cancel_of_unknown_tag_is_ok(conn: BlockingConnection) -> None:
    ch = conn.channel()
    ch._impl.basic_cancel("never-consumed")
    assert ch.queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")  # channel still open


def test_server_cancels_consumers_of_a_deleted_queue(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique)
    cancelled: list[str] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    ch.basic_consume(unique, lambda *a: None, consumer_tag="watcher")
    conn.channel().queue_delete(unique)
    wait_for(conn, cancelled, 1)
    assert cancelled == ["watcher"]
    assert ch.is_open


def test_no_server_cancel_without_the_capability(broker_port: int, unique: str) -> None:
    client = RawClient(broker_port, timeout=3)
    try:
        client.handshake(capabilities={})  # no consumer_cancel_notify
        client.open_channel(1)
        client.send_method(1, "queue.declare", 0, unique, False, False, False, False, False, {})
        assert client.recv_method() == (1, "queue.declare-ok", (unique, 0, 0))
        client.send_method(1, "basic.consume", 0, unique, "quiet", False, False, False, False, {})
        assert client.recv_method() == (1, "basic.consume-ok", ("quiet",))
        client.send_method(1, "queue.delete", 0, unique, False, False, False)
        assert client.recv_method() == (1, "queue.delete-ok", (0,))  # and no basic.cancel before or after
        client.send_method(1, "basic.qos", 0, 1, False)
        assert client.recv_method() == (1, "basic.qos-ok", ())
    finally:
        client.close()


# --- get / ack / nack / reject / recover -----------------------------------------------------------


def test_get_reports_the_remaining_count_and_get_empty(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"a", b"b", b"c")
    first = get(ch, unique)
    assert first is not None and first[:3] == (b"a", False, 2)
    second = get(ch, unique, auto_ack=True)
    assert second is not None and second[:3] == (b"b", False, 1)
    assert first[3] < second[3]  # delivery tags grow on the channel
    third = get(ch, unique)
    assert third is not None and third[:3] == (b"c", False, 0)
    assert get(ch, unique) is None


def test_ack_multiple(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"1", b"2", b"3", b"4")
    tags = [got[3] for got in (get(ch, unique) for _ in range(4)) if got is not None]
    ch.basic_ack(tags[2], multiple=True)  # 1..3
    ch.close()  # 4 comes back
    assert drain(conn.channel(), unique) == [(b"4", True)]


def test_nack_and_reject_requeue_at_the_original_position(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, *(b"%d" % i for i in range(1, 7)))
    tags = [got[3] for got in (get(ch, unique) for _ in range(6)) if got is not None]
    assert len(tags) == 6
    ch.basic_nack(tags[1], multiple=True, requeue=True)  # 1, 2
    ch.basic_reject(tags[4], requeue=True)  # 5
    ch.basic_reject(tags[2], requeue=False)  # 3 is dropped
    ch.basic_nack(tags[3], requeue=False)  # 4 is dropped
    ch.basic_ack(tags[5])
    assert drain(ch, unique) == [(b"1", True), (b"2", True), (b"5", True)]


def test_nack_multiple_with_tag_zero_means_all(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"1", b"2")
    get(ch, unique)
    get(ch, unique)
    ch.basic_nack(0, multiple=True, requeue=True)
    assert drain(ch, unique) == [(b"1", True), (b"2", True)]


def test_requeued_message_goes_before_newer_ones_with_a_consumer(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"1", b"2", b"3")
    ch.basic_qos(prefetch_count=1)
    received: list[tuple[bytes, bool, int]] = []
    ch.basic_consume(unique, lambda _c, m, _p, body: received.append((body, m.redelivered, m.delivery_tag)))
    wait_for(conn, received, 1)
    ch.basic_reject(received[0][2], requeue=True)
    wait_for(conn, received, 2)
    assert [r[:2] for r in received] == [(b"1", False), (b"1", True)]


@pytest.mark.parametrize("settle_method", ["ack", "reject", "nack"])
def test_unknown_delivery_tag_is_406(conn: BlockingConnection, unique: str, settle_method: str) -> None:
    ch = queue_with(conn, unique)
    getattr(ch, f"basic_{settle_method}")(42)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(unique, passive=True)
    assert closed_with(info) == (406, "PRECONDITION_FAILED - unknown delivery tag 42")


def test_double_ack_is_406(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"once")
    got = get(ch, unique)
    assert got is not None
    ch.basic_ack(got[3])
    ch.basic_ack(got[3])
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(unique, passive=True)
    assert closed_with(info) == (406, f"PRECONDITION_FAILED - unknown delivery tag {got[3]}")


def test_ack_of_auto_acked_delivery_is_406(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"x")
    got = get(ch, unique, auto_ack=True)
    assert got is not None
    ch.basic_ack(got[3])
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(unique, passive=True)
    assert info.value.reply_code == 406


def test_recover_requeues_unacked_messages(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"1", b"2", b"3")
    received: list[tuple[bytes, bool]] = []
    ch.basic_qos(prefetch_count=2)
    ch.basic_consume(unique, lambda _c, m, _p, body: received.append((body, m.redelivered)))
    wait_for(conn, received, 2)
    settle(conn)
    assert received == [(b"1", False), (b"2", False)]
    ch.basic_recover(requeue=True)
    wait_for(conn, received, 4)
    settle(conn)
    assert received[2:] == [(b"1", True), (b"2", True)]


def test_recover_without_requeue_is_540(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique, b"1")
    get(ch, unique)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.basic_recover(requeue=False)
    assert closed_with(info) == (540, "NOT_IMPLEMENTED - requeue=false")


# --- qos and sharing -------------------------------------------------------------------------------


def test_prefetch_count_per_consumer(conn: BlockingConnection, unique: str) -> None:
    a, b = f"{unique}-a", f"{unique}-b"
    queue_with(conn, a, *(b"a%d" % i for i in range(5)))
    ch = queue_with(conn, b, *(b"b%d" % i for i in range(5)))
    ch.basic_qos(prefetch_count=2)  # global=false: each new consumer may hold 2
    received: list[tuple[bytes, int]] = []
    for queue in (a, b):
        ch.basic_consume(queue, lambda _c, m, _p, body: received.append((body, m.delivery_tag)))
    wait_for(conn, received, 4)
    settle(conn)
    assert sorted(body for body, _ in received) == [b"a0", b"a1", b"b0", b"b1"]
    ch.basic_ack(next(tag for body, tag in received if body == b"a0"))
    wait_for(conn, received, 5)
    settle(conn)
    assert [body for body, _ in received[4:]] == [b"a2"]


def test_prefetch_count_per_channel_with_global(conn: BlockingConnection, unique: str) -> None:
    a, b = f"{unique}-a", f"{unique}-b"
    queue_with(conn, a, *(b"a%d" % i for i in range(5)))
    ch = queue_with(conn, b, *(b"b%d" % i for i in range(5)))
    ch.basic_qos(prefetch_count=3, global_qos=True)  # the whole channel may hold 3
    received: list[tuple[bytes, int]] = []
    for queue in (a, b):
        ch.basic_consume(queue, lambda _c, m, _p, body: received.append((body, m.delivery_tag)))
    wait_for(conn, received, 3)
    settle(conn)
    assert len(received) == 3
    ch.basic_ack(received[-1][1], multiple=True)
    wait_for(conn, received, 6)
    settle(conn)
    assert len(received) == 6


def test_prefetch_size_is_540(conn: BlockingConnection) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.basic_qos(prefetch_size=4096, prefetch_count=10)
    assert closed_with(info) == (540, "NOT_IMPLEMENTED - prefetch_size!=0 (4096)")


async def test_round_robin_among_consumers_aio_pika(broker_port: int) -> None:
    conn = await aio_pika.connect(url(broker_port), timeout=3)
    try:
        publisher = await conn.channel()
        queue = await publisher.declare_queue(exclusive=True)
        received: dict[str, list[bytes]] = {"c1": [], "c2": [], "c3": []}
        for tag in received:
            channel = await conn.channel()
            await channel.set_qos(prefetch_count=10)
            consumer_queue = await channel.get_queue(queue.name)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage, tag: str = tag) -> None:
                received[tag].append(message.body)
                await message.ack()

            await consumer_queue.consume(on_message, consumer_tag=tag)
        for i in range(9):
            await publisher.default_exchange.publish(aio_pika.Message(b"%d" % i), routing_key=queue.name)
        await async_wait_for(lambda: sum(map(len, received.values())) >= 9, 2)
        assert received == {"c1": [b"0", b"3", b"6"], "c2": [b"1", b"4", b"7"], "c3": [b"2", b"5", b"8"]}
    finally:
        await conn.close()


async def test_consumer_priorities_aio_pika(broker_port: int) -> None:
    conn = await aio_pika.connect(url(broker_port), timeout=3)
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=2)
        queue = await channel.declare_queue(exclusive=True)
        received: list[tuple[str, bytes]] = []

        def handler(tag: str) -> Any:
            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                received.append((tag, message.body))  # not acked: each consumer holds at most 2
            return on_message

        await queue.consume(handler("normal"), consumer_tag="normal")
        await queue.consume(handler("urgent"), consumer_tag="urgent", arguments={"x-priority": 10})
        for i in range(5):
            await channel.default_exchange.publish(aio_pika.Message(b"%d" % i), routing_key=queue.name)
        await async_wait_for(lambda: len(received) >= 4, 2)
        await async_hold(0.1, "the fifth message must NOT be delivered: both consumers are at their prefetch")
        assert received == [("urgent", b"0"), ("urgent", b"1"), ("normal", b"2"), ("normal", b"3")]
    finally:
        await conn.close()


def test_invalid_consumer_priority_is_406(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_consume(unique, lambda *a: None, arguments={"x-priority": "high"})
    assert closed_with(info) == (406, f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{unique}' in "
                                      "vhost '/': \"expected integer, got longstr\"")


def test_busy_consumer_is_skipped(conn: BlockingConnection, unique: str) -> None:
    ch = queue_with(conn, unique)
    ch.basic_qos(prefetch_count=1)
    received: list[tuple[str, bytes]] = []
    ch.basic_consume(unique, lambda _c, m, _p, body: received.append((m.consumer_tag, body)), consumer_tag="slow")
    ch.basic_consume(unique, lambda _c, m, _p, body: received.append((m.consumer_tag, body)), consumer_tag="fast",
                     auto_ack=True)
    publisher = conn.channel()
    publisher.confirm_delivery()
    for i in range(4):
        publisher.basic_publish("", unique, b"%d" % i)
    wait_for(conn, received, 4)
    assert received == [("slow", b"0"), ("fast", b"1"), ("fast", b"2"), ("fast", b"3")]


# --- kombu -----------------------------------------------------------------------------------------


def test_kombu_producer_consumer_ack_and_reject(broker_port: int, unique: str) -> None:
    queue = kombu.Queue(unique, kombu.Exchange("", "direct"), routing_key=unique, exclusive=True)
    seen: list[tuple[Any, bool]] = []
    with kombu.Connection(f"amqp://guest:guest@127.0.0.1:{broker_port}//", connect_timeout=3) as connection:
        channel = connection.channel()
        queue(channel).declare()
        producer = kombu.Producer(channel, routing_key=unique)
        for n in (1, 2, 3):
            producer.publish({"n": n}, serializer="json", headers={"attempt": n})

        def on_message(body: Any, message: kombu.Message) -> None:
            seen.append((body, message.delivery_info["redelivered"]))
            if body == {"n": 2} and not message.delivery_info["redelivered"]:
                message.requeue()
            elif body == {"n": 3}:
                message.reject()
            else:
                message.ack()

        with kombu.Consumer(channel, [queue], callbacks=[on_message], prefetch_count=1):
            deadline = time.monotonic() + 2
            while len(seen) < 4 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.1)
            left = queue(channel).get()
    assert seen == [({"n": 1}, False), ({"n": 2}, False), ({"n": 2}, True), ({"n": 3}, False)]
    assert left is None  # the rejected message was dropped
