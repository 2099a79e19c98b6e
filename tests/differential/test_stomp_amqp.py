"""STOMP and AMQP on one broker, against RabbitMQ's STOMP plugin: STOMP headers become AMQP properties and
headers-table entries (read with pika), AMQP properties and headers of every field type become STOMP headers,
topics and exchanges are shared both ways. Each scenario runs on Leveret and on RabbitMQ's plugin and the
transcripts must be equal (stompdiff.py says what is recorded and what is normalised)."""

from __future__ import annotations

import datetime
import decimal

import pika
import pytest
from stompdiff import StompRun, names, run_check, scenario
from stompwire import StompWire

ALL_HEADERS = {
    "content-type": "application/json",
    "content-encoding": "gzip",
    "correlation-id": "corr-1",
    "reply-to": "/queue/replies",
    "expiration": "60000",
    "priority": "7",
    "persistent": "true",
    "amqp-message-id": "msg-1",
    "type": "order.created",
    "user-id": "guest",
    "app-id": "stomp-test",
    "timestamp": "1700000000",
    "x-custom": "custom value",
    "x-number": "42",
    "plain-header": "no x- prefix",
}


def connect(run: StompRun, label: str, version: str = "1.2") -> StompWire:
    return run.connect(label, {"accept-version": version, "host": "/", "login": "guest", "passcode": "guest"})


def consumer(run: StompRun, destination: str) -> StompWire:
    client = connect(run, "consumer")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": destination, "receipt": "subscribed"})
    run.recv("subscribed", client)
    return client


@scenario
def stomp_headers_to_amqp_properties(run: StompRun) -> None:
    queue = run.queue()
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", **ALL_HEADERS, "receipt": "r"}, b'{"a": 1}')
    run.recv("receipt", producer)
    run.amqp_get("amqp", queue)


@scenario
def stomp_content_type_with_charset(run: StompRun) -> None:
    queue = run.queue()
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "content-type": "text/plain;charset=utf-8",
                                "receipt": "r"}, "grüße".encode())
    run.recv("receipt", producer)
    run.amqp_get("amqp", queue)


@scenario
def stomp_non_persistent_to_amqp(run: StompRun) -> None:
    queue = run.queue()
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "persistent": "false", "receipt": "r"}, b"x")
    run.recv("receipt", producer)
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "receipt": "r2"}, b"default")
    run.recv("receipt 2", producer)
    run.amqp_count("the queue as AMQP sees it", queue)  # RabbitMQ: persistent:false declares it exclusive
    run.send(producer, "SUBSCRIBE", {"id": "s", "destination": f"/queue/{queue}"})
    run.recv_n("both", producer, 2)


@scenario
def stomp_bad_priority(run: StompRun) -> None:
    queue = run.queue()
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "priority": "high", "receipt": "r"}, b"x")
    run.recv("reply", producer)
    run.bye("afterwards", producer)


@scenario
def stomp_escaped_header_to_amqp(run: StompRun) -> None:
    queue = run.queue()
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/queue/{queue}", "x-odd": "a:b\nc\\d", "receipt": "r"}, b"x")
    run.recv("receipt", producer)
    run.amqp_get("amqp", queue)


@scenario
def amqp_properties_to_stomp(run: StompRun) -> None:
    queue = run.queue()
    client = consumer(run, f"/queue/{queue}")
    properties = pika.BasicProperties(
        content_type="text/plain", content_encoding="utf-8", delivery_mode=2, priority=3,
        correlation_id="corr-9", reply_to="amqp-replies", expiration="50000", message_id="amqp-id-9",
        timestamp=1700000001, type="kind", user_id="guest", app_id="pika", cluster_id="c1",
        headers={"x-str": "text", "x-int": 7, "x-neg": -3, "x-bool": True, "x-false": False,
                 "x-bytes": b"raw", "x-decimal": decimal.Decimal("1.25"), "x-none": None,
                 "x-time": datetime.datetime(2024, 1, 2, 3, 4, 5), "x-list": [1, "two"], "x-table": {"k": "v"},
                 "x-colon": "a:b", "x-big": 2**40})
    run.amqp().basic_publish("", queue, b"from amqp", properties)
    run.recv("message", client)


@scenario
def amqp_minimal_to_stomp(run: StompRun) -> None:
    queue = run.queue()
    client = consumer(run, f"/queue/{queue}")
    run.amqp().basic_publish("", queue, b"bare")
    run.recv("message", client)


@scenario
def amqp_reply_to_forms(run: StompRun) -> None:
    # an AMQP reply_to that is a queue name, a STOMP-style destination, and an exchange-style value
    queue = run.queue()
    client = consumer(run, f"/queue/{queue}")
    ch = run.amqp()
    for reply_to in ("plain-name", "/queue/already", "/exchange/amq.direct/key"):
        ch.basic_publish("", queue, reply_to.encode(), pika.BasicProperties(reply_to=reply_to))
    run.recv_n("messages", client, 3)


@scenario
def amqp_publish_to_stomp_topic(run: StompRun) -> None:
    key = run.name("events.created")
    client = consumer(run, f"/topic/{key}")
    run.amqp().basic_publish("amq.topic", key, b"via amq.topic",
                             pika.BasicProperties(headers={"x-from": "amqp"}))
    run.recv("message", client)


@scenario
def stomp_topic_to_amqp_queue(run: StompRun) -> None:
    key = run.name("orders")
    queue = run.queue()
    ch = run.amqp()
    ch.queue_declare(queue)
    ch.queue_bind(queue, "amq.topic", routing_key=key)
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/topic/{key}", "content-type": "text/plain", "receipt": "r"},
             b"to amqp")
    run.recv("receipt", producer)
    run.amqp_get("amqp", queue)


@scenario
def stomp_exchange_headers_routing(run: StompRun) -> None:
    # a headers exchange: STOMP headers are the AMQP headers table that x-match uses
    exchange = run.exchange("headers")
    queue = run.queue()
    ch = run.amqp()
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange, arguments={"x-match": "all", "kind": "wanted"})
    producer = connect(run, "producer")
    run.send(producer, "SEND", {"destination": f"/exchange/{exchange}", "kind": "other"}, b"no")
    run.send(producer, "SEND", {"destination": f"/exchange/{exchange}", "kind": "wanted", "receipt": "r"}, b"yes")
    run.recv("receipt", producer)
    run.amqp_count("one routed", queue, 1)
    run.amqp_get("amqp", queue)


@scenario
def amqp_redelivery_to_stomp(run: StompRun) -> None:
    queue = run.queue()
    ch = run.amqp()
    ch.queue_declare(queue, durable=True)
    ch.basic_publish("", queue, b"twice")
    method, _props, _body = ch.basic_get(queue, auto_ack=False)
    assert method is not None
    ch.basic_nack(method.delivery_tag, requeue=True)
    client = connect(run, "consumer")
    run.send(client, "SUBSCRIBE", {"id": "s", "destination": f"/queue/{queue}"})
    run.recv("redelivered", client)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("name", names(__name__))
def test_stomp_amqp(name: str, stomp_broker: tuple[int, int]) -> None:
    run_check(name, stomp_broker)
