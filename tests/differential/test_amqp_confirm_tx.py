"""The confirm and tx classes with real clients: publisher confirms (delivery tags, multiple), the modes'
exclusion (406 either way), transactions over publishes and acknowledgements, commit/rollback without select.

Tests taking ``broker_port`` run against Leveret and against RabbitMQ (skipped when it is absent).
"""

from __future__ import annotations

import time
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pika.spec
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from amqphelp import closed_with


def message_count(ch: BlockingChannel, queue: str) -> int:
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def drain(ch: BlockingChannel, queue: str) -> list[tuple[bytes, bool]]:
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body, method.redelivered))


# --- confirms --------------------------------------------------------------------------------------


def test_confirms_ack_every_publish_in_order(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, exclusive=True)
    acks: list[tuple[int, bool]] = []
    ch._impl.add_callback(lambda frame: acks.append((frame.method.delivery_tag, frame.method.multiple)),
                          [pika.spec.Basic.Ack], one_shot=False)
    selected: list[Any] = []
    ch._impl.confirm_delivery(lambda frame: None, callback=selected.append)
    deadline = time.monotonic() + 2
    while not selected and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.01)
    assert selected and selected[0].method.NAME == "Confirm.SelectOk"
    for i in range(20):
        ch._impl.basic_publish("", unique, b"%d" % i)
    ch._impl.basic_publish("", f"{unique}-nowhere", b"unroutable")  # confirmed as well
    def confirmed() -> list[int]:
        """Every tag the acks cover. RabbitMQ may ack out of order (an unroutable message is confirmed at
        once, before the queue confirms earlier ones), so "multiple" covers every tag up to it not yet acked."""
        tags: set[int] = set()
        for tag, multiple in acks:
            tags.update(range(1, tag + 1) if multiple else [tag])
        return sorted(tags)

    while confirmed() != list(range(1, 22)) and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.01)
    assert confirmed() == list(range(1, 22))
    singles = [tag for tag, multiple in acks if not multiple]
    assert len(singles) == len(set(singles))
    assert message_count(ch, unique) == 20


def test_confirms_with_blocking_pika(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(unique, exclusive=True)
    ch.basic_publish("", unique, b"confirmed")
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("", f"{unique}-nowhere", b"returned", mandatory=True)
    assert message_count(ch, unique) == 1


async def test_confirms_aio_pika(broker_port: int) -> None:
    conn = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{broker_port}/", timeout=3)
    try:
        channel = await conn.channel(publisher_confirms=True)
        queue = await channel.declare_queue(exclusive=True)
        results = [await channel.default_exchange.publish(aio_pika.Message(b"%d" % i), routing_key=queue.name)
                   for i in range(3)]
        assert [type(r).__name__ for r in results] == ["Ack", "Ack", "Ack"]
        assert [r.delivery_tag for r in results] == [1, 2, 3]
        declared = await channel.declare_queue(queue.name, passive=True)
        assert declared.declaration_result.message_count == 3
    finally:
        await conn.close()


def test_confirm_select_twice_is_fine(conn: BlockingConnection) -> None:
    ch = conn.channel()
    ch.confirm_delivery()
    ch._impl.confirm_delivery(lambda frame: None)  # a second confirm.select
    conn.process_data_events(time_limit=0.05)
    assert ch.is_open


def test_confirm_after_tx_is_406(conn: BlockingConnection) -> None:
    ch = conn.channel()
    ch.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.confirm_delivery()
    assert closed_with(info) == (406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")


def test_tx_after_confirm_is_406(conn: BlockingConnection) -> None:
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.tx_select()
    assert closed_with(info) == (406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode")


# --- transactions ----------------------------------------------------------------------------------


def test_publishes_wait_for_commit_and_rollback_drops_them(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, exclusive=True)
    assert ch.tx_select().method.NAME == "Tx.SelectOk"
    ch.basic_publish("", unique, b"1")
    ch.basic_publish("", unique, b"2")
    assert message_count(ch, unique) == 0
    assert ch.tx_commit().method.NAME == "Tx.CommitOk"
    assert message_count(ch, unique) == 2
    ch.basic_publish("", unique, b"3")
    assert ch.tx_rollback().method.NAME == "Tx.RollbackOk"
    assert ch.tx_commit().method.NAME == "Tx.CommitOk"  # the channel stays transactional; nothing pending
    assert drain(ch, unique) == [(b"1", False), (b"2", False)]


def test_acks_wait_for_commit_and_rollback_keeps_them_unacked(conn: BlockingConnection, unique: str) -> None:
    setup = conn.channel()
    setup.confirm_delivery()
    setup.queue_declare(unique, exclusive=True)
    for body in (b"1", b"2", b"3"):
        setup.basic_publish("", unique, body)
    ch = conn.channel()
    ch.tx_select()
    tags = []
    for _ in range(3):
        method, _props, _body = ch.basic_get(unique)
        tags.append(method.delivery_tag)
    ch.basic_ack(tags[0])
    ch.tx_rollback()  # the ack is forgotten: message 1 is still unacked
    ch.basic_reject(tags[1], requeue=True)
    ch.basic_nack(tags[2], requeue=True)
    assert message_count(ch, unique) == 0  # not yet
    ch.tx_commit()
    assert drain(ch, unique) == [(b"2", True), (b"3", True)]
    ch.basic_ack(tags[0])
    ch.tx_commit()
    ch.close()  # nothing left unacked to come back
    assert drain(conn.channel(), unique) == []


def test_unknown_delivery_tag_in_a_transaction_is_406(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, exclusive=True)
    ch.tx_select()
    ch.basic_ack(7)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.tx_commit()
    assert closed_with(info) == (406, "PRECONDITION_FAILED - unknown delivery tag 7")


def test_closing_a_channel_discards_its_uncommitted_work(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, exclusive=True)
    ch.tx_select()
    ch.basic_publish("", unique, b"never")
    ch.close()
    assert drain(conn.channel(), unique) == []


@pytest.mark.parametrize("method", ["tx_commit", "tx_rollback"])
def test_commit_or_rollback_without_select_is_406(conn: BlockingConnection, method: str) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        getattr(ch, method)()
    assert closed_with(info) == (406, "PRECONDITION_FAILED - channel is not transactional")


async def test_transaction_aio_pika(broker_port: int) -> None:
    conn = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{broker_port}/", timeout=3)
    try:
        channel = await conn.channel(publisher_confirms=False)
        queue = await channel.declare_queue(exclusive=True)
        async with channel.transaction():
            await channel.default_exchange.publish(aio_pika.Message(b"committed"), routing_key=queue.name)
        tx = channel.transaction()
        await tx.select()
        await channel.default_exchange.publish(aio_pika.Message(b"rolled back"), routing_key=queue.name)
        await tx.rollback()
        message = await queue.get(no_ack=True, timeout=2)
        assert message.body == b"committed"
        assert await queue.get(no_ack=True, fail=False, timeout=2) is None
    finally:
        await conn.close()
