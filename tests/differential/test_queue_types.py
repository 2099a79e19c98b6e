"""Queue types are honest (issue 12): ``x-queue-type: quorum`` gets quorum semantics where clients see them,
streams are refused until Leveret has them, unknown types get RabbitMQ's answer.

Differential where RabbitMQ 3.10 is the answer (refusals and their texts, x-delivery-count, the delivery limit,
redeclaration equivalence); Leveret-only where Leveret follows RabbitMQ 4.0 instead (a default delivery limit
of 20) or has its own answer (streams), and for the management API and definitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from leveret.config import Config
from leveret.node import ThreadedServer

from amqphelp import connect
from httphelp import Client
from waiting import poll

QUORUM = {"x-queue-type": "quorum"}


@pytest.fixture
def channel(conn: BlockingConnection) -> BlockingChannel:
    return conn.channel()


def refusal(conn: BlockingConnection, name: str, **kw: Any) -> tuple[int, str]:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(name, **kw)
    return info.value.reply_code, info.value.reply_text


@pytest.mark.parametrize(("kw", "text"), [
    ({"durable": False}, "invalid property 'non-durable' for queue '{q}' in vhost '/'"),
    ({"durable": True, "exclusive": True}, "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'"),
    ({"durable": False, "exclusive": True}, "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'"),
    ({"durable": True, "auto_delete": True}, "invalid property 'auto-delete' for queue '{q}' in vhost '/'"),
    ({"durable": True, "exclusive": True, "auto_delete": True},
     "invalid property 'auto-delete' for queue '{q}' in vhost '/'"),
    ({"durable": False, "arguments": {"x-max-priority": 5}},
     "invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"),
    ({"durable": True, "arguments": {"x-queue-mode": "lazy"}},
     "invalid arg 'x-queue-mode' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"),
    ({"durable": True, "arguments": {"x-queue-version": 2}},
     "invalid arg 'x-queue-version' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"),
    ({"durable": True, "arguments": {"x-queue-master-locator": "client-local"}},
     "invalid arg 'x-queue-master-locator' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"),
    ({"durable": True, "arguments": {"x-dead-letter-strategy": "bogus"}},
     "invalid arg 'x-dead-letter-strategy' for queue '{q}' in vhost '/': invalid_dlx_strategy"),
])
def test_quorum_queues_refuse_what_rabbitmq_refuses(conn: BlockingConnection, unique: str, kw: dict[str, Any],
                                                   text: str) -> None:
    kw = {**kw, "arguments": {**QUORUM, **kw.get("arguments", {})}}
    assert refusal(conn, unique, **kw) == (406, "PRECONDITION_FAILED - " + text.format(q=unique))


@pytest.mark.parametrize(("value", "reason"), [
    ("foo", "\"unsupported queue type 'foo'\""),
    (5, "{unacceptable_type,signedint}"),
])
def test_unknown_queue_types_are_refused_as_rabbitmq_does(conn: BlockingConnection, unique: str, value: Any,
                                                         reason: str) -> None:
    assert refusal(conn, unique, durable=False, arguments={"x-queue-type": value}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{unique}' in vhost '/': {reason}")


def test_quorum_queues_accept_what_rabbitmq_accepts(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    for extra in ({"x-message-ttl": 500}, {"x-expires": 100000}, {"x-single-active-consumer": True},
                  {"x-max-length": 3, "x-overflow": "reject-publish"}, {"x-max-length-bytes": 3},
                  {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"},
                  {"x-quorum-initial-group-size": 3}, {"x-unknown": 1}):
        ch.queue_declare(unique, durable=True, arguments={**QUORUM, **extra})
        ch.queue_delete(unique)


def test_redeclaring_with_another_type_is_inequivalent(conn: BlockingConnection, unique: str) -> None:
    ch = conn.channel()
    ch.queue_declare(unique, durable=True)
    ch.queue_declare(unique, durable=True, arguments={"x-queue-type": "classic"})  # classic is the default
    assert refusal(conn, unique, durable=True, arguments=QUORUM) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{unique}' in vhost '/': received "
             "the value 'quorum' of type 'longstr' but current is none")
    ch = conn.channel()
    ch.queue_delete(unique)
    ch.queue_declare(unique, durable=True, arguments=QUORUM)
    assert refusal(conn, unique, durable=True) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{unique}' in vhost '/': received "
             "none but current is the value 'quorum' of type 'longstr'")
    conn.channel().queue_delete(unique)


def _get(ch: BlockingChannel, queue: str) -> tuple[Any, Any, bytes]:
    """basic.get, polling briefly (a quorum queue in RabbitMQ takes a moment to apply a requeue)."""
    return poll(lambda: ch.basic_get(queue), lambda got: got[0] is not None, 5, 0.02)


def test_quorum_deliveries_carry_x_delivery_count(channel: BlockingChannel, unique: str) -> None:
    channel.queue_declare(unique, durable=True, arguments=QUORUM)
    try:
        channel.basic_publish("", unique, b"m", pika.BasicProperties(headers={"a": 1}))
        seen = []
        for _ in range(3):
            method, props, _ = _get(channel, unique)
            assert method is not None
            seen.append((method.redelivered, props.headers))
            channel.basic_nack(method.delivery_tag, requeue=True)
        assert seen == [(False, {"a": 1, "x-delivery-count": 0}), (True, {"a": 1, "x-delivery-count": 1}),
                        (True, {"a": 1, "x-delivery-count": 2})]
        # consumers too, not only basic.get
        got: list[Any] = []
        channel.basic_consume(unique, lambda ch, m, p, b: (got.append(p.headers), ch.basic_ack(m.delivery_tag)))
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            channel.connection.process_data_events(0.05)
        assert got == [{"a": 1, "x-delivery-count": 3}]
    finally:
        channel.queue_delete(unique)


def test_quorum_delivery_limit_dead_letters(channel: BlockingChannel, unique: str) -> None:
    channel.queue_declare(f"{unique}.dead", durable=True)
    channel.queue_declare(unique, durable=True, arguments={
        **QUORUM, "x-delivery-limit": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{unique}.dead"})
    try:
        channel.basic_publish("", unique, b"poison")
        for _ in range(2):  # delivered limit + 1 times, then dead-lettered
            method, _, _ = _get(channel, unique)
            assert method is not None
            channel.basic_nack(method.delivery_tag, requeue=True)
        method, props, body = _get(channel, f"{unique}.dead")
        assert body == b"poison"
        assert props.headers["x-death"][0]["reason"] == "delivery_limit"
        assert props.headers["x-death"][0]["queue"] == unique
        assert channel.queue_declare(unique, passive=True).method.message_count == 0
    finally:
        channel.queue_delete(unique)
        channel.queue_delete(f"{unique}.dead")


# --- Leveret only ---------------------------------------------------------------------------------------------


@pytest.fixture
def server(make_config: Callable[..., Config]) -> Iterator[ThreadedServer]:
    server = ThreadedServer(make_config(http_port=0)).start()
    try:
        yield server
    finally:
        server.stop()


def test_streams_are_refused_until_leveret_has_them(server: ThreadedServer) -> None:
    conn = connect(server.port)
    assert refusal(conn, "s", durable=True, arguments={"x-queue-type": "stream"}) == (
        406, "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 's' in vhost '/': streams are not "
             "supported by Leveret")
    conn.close()
    status, body, _ = Client(server.http_port).request("PUT", "/api/queues/%2F/s2",
                                                       {"durable": True, "arguments": {"x-queue-type": "stream"}})
    assert status == 400 and "streams are not supported by Leveret" in body["reason"]


def test_quorum_queues_are_reported_and_exported_as_quorum(server: ThreadedServer) -> None:
    conn = connect(server.port)
    ch = conn.channel()
    ch.queue_declare("qq", durable=True, arguments=QUORUM)
    ch.queue_declare("cq", durable=True)
    conn.close()
    api = Client(server.http_port)
    assert api.get("/api/queues/%2F/qq")["type"] == "quorum"
    api.ok("POST", "/api/exchanges/%2F/amq.default/publish",
           {"routing_key": "qq", "payload": "m", "payload_encoding": "string", "properties": {}})
    get = {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}
    assert [api.ok("POST", "/api/queues/%2F/qq/get", get)[0]["properties"]["headers"] for _ in range(2)] == [
        {"x-delivery-count": 0}, {"x-delivery-count": 1}]  # the management API's get is a delivery too
    assert api.get("/api/queues/%2F/cq")["type"] == "classic"
    definitions = api.get("/api/definitions")
    types = {q["name"]: q["type"] for q in definitions["queues"]}
    assert types == {"qq": "quorum", "cq": "classic"}
    # importing: by argument (RabbitMQ 3.x) or by the "type" field (3.13+)
    api.ok("POST", "/api/definitions", {"queues": [
        {"name": "imported", "vhost": "/", "durable": True, "auto_delete": False, "arguments": QUORUM},
        {"name": "typed", "vhost": "/", "durable": True, "auto_delete": False, "type": "quorum", "arguments": {}}]})
    assert api.get("/api/queues/%2F/imported")["type"] == "quorum"
    assert api.get("/api/queues/%2F/typed")["type"] == "quorum"
    status, body, _ = api.request("POST", "/api/definitions", {"queues": [
        {"name": "st", "vhost": "/", "durable": True, "auto_delete": False, "type": "stream", "arguments": {}}]})
    assert status == 400 and "streams are not supported by Leveret" in body["reason"]


def test_a_quorum_queue_is_still_one_after_a_restart(make_config: Callable[..., Config]) -> None:
    first = ThreadedServer(make_config(http_port=0)).start()
    try:
        conn = connect(first.port)
        ch = conn.channel()
        ch.queue_declare("qq", durable=True, arguments={**QUORUM, "x-delivery-limit": 3})
        ch.confirm_delivery()
        ch.basic_publish("", "qq", b"kept", pika.BasicProperties(delivery_mode=2))
        conn.close()
    finally:
        first.stop()
    second = ThreadedServer(make_config(http_port=0, port=first.port)).start()
    try:
        assert Client(second.http_port).get("/api/queues/%2F/qq")["type"] == "quorum"
        conn = connect(second.port)
        ch = conn.channel()
        _, props, body = ch.basic_get("qq")
        assert body == b"kept" and props.headers == {"x-delivery-count": 0}
        assert refusal(conn, "qq", durable=True) == (
            406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'qq' in vhost '/': received none "
                 "but current is the value 'quorum' of type 'longstr'")
        conn.close()
    finally:
        second.stop()
