"""Direct reply-to (amq.rabbitmq.reply-to): RPC without declaring reply queues, as RabbitMQ does it."""

from __future__ import annotations

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from waiting import poll

REPLY_TO = "amq.rabbitmq.reply-to"


def rpc_round_trip(port: int, queue: str) -> dict[str, object]:
    """A requester and a responder on two connections; returns what each side saw."""
    params = pika.ConnectionParameters("127.0.0.1", port)
    server_conn = pika.BlockingConnection(params)
    client_conn = pika.BlockingConnection(params)
    try:
        sch = server_conn.channel()
        sch.queue_declare(queue, auto_delete=True)
        cch = client_conn.channel()
        replies: list[tuple[bytes, str | None, bool]] = []
        cch.basic_consume(REPLY_TO, lambda _c, m, p, b: replies.append((b, p.correlation_id, m.redelivered)),
                          auto_ack=True)
        for i in range(3):
            cch.basic_publish("", queue, b"req%d" % i,
                              pika.BasicProperties(reply_to=REPLY_TO, correlation_id=str(i)))
        seen_reply_to: list[str] = []
        for _ in range(3):
            method, props, body = _get(sch, queue)
            seen_reply_to.append(props.reply_to)
            sch.basic_publish("", props.reply_to, body.upper(),
                              pika.BasicProperties(correlation_id=props.correlation_id))
            sch.basic_ack(method.delivery_tag)
        client_conn.process_data_events(time_limit=0.5)
        while len(replies) < 3:
            client_conn.process_data_events(time_limit=2)
        declare = cch.queue_declare(REPLY_TO, passive=True).method
        return {
            "replies": replies,
            "reply_to_prefix": {r.startswith(REPLY_TO + ".") for r in seen_reply_to},
            "one_address": len(set(seen_reply_to)) == 1,
            "passive": (declare.queue, declare.message_count, declare.consumer_count),
        }
    finally:
        client_conn.close()
        server_conn.close()


def _get(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> tuple:  # type: ignore[type-arg]
    got = poll(lambda: ch.basic_get(queue), lambda got: got[0] is not None, 2, 0.02)
    assert got[0] is not None, "no request arrived"
    return got


def test_direct_reply_to_round_trip(leveret: object, unique: str) -> None:
    result = rpc_round_trip(leveret.port, unique)  # type: ignore[attr-defined]
    assert result["replies"] == [(b"REQ0", "0", False), (b"REQ1", "1", False), (b"REQ2", "2", False)]
    assert result["reply_to_prefix"] == {True}
    assert result["one_address"] is True
    assert result["passive"] == (REPLY_TO, 0, 1)


def test_direct_reply_to_same_as_rabbitmq(leveret: object, rabbitmq_port: int, unique: str) -> None:
    assert rpc_round_trip(leveret.port, unique) == rpc_round_trip(rabbitmq_port, unique)  # type: ignore[attr-defined]


def reply_to_errors(port: int) -> list[tuple[int, str]]:
    params = pika.ConnectionParameters("127.0.0.1", port)
    conn = pika.BlockingConnection(params)
    seen: list[tuple[int, str]] = []
    try:
        ch = conn.channel()
        ch.basic_publish("", "nowhere", b"x", pika.BasicProperties(reply_to=REPLY_TO))
        with pytest.raises(ChannelClosedByBroker) as info:
            ch.queue_declare("", exclusive=True)
        seen.append((info.value.reply_code, info.value.reply_text))
        ch = conn.channel()
        with pytest.raises(ChannelClosedByBroker) as info:
            ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)
        seen.append((info.value.reply_code, info.value.reply_text))
    finally:
        conn.close()
    return seen


def test_direct_reply_to_errors(leveret: object) -> None:
    assert reply_to_errors(leveret.port) == [  # type: ignore[attr-defined]
        (406, "PRECONDITION_FAILED - fast reply consumer does not exist"),
        (406, "PRECONDITION_FAILED - reply consumer cannot acknowledge"),
    ]


def test_direct_reply_to_errors_same_as_rabbitmq(leveret: object, rabbitmq_port: int) -> None:
    assert reply_to_errors(leveret.port) == reply_to_errors(rabbitmq_port)  # type: ignore[attr-defined]


def test_reply_to_a_gone_requester_is_dropped(leveret: object, unique: str) -> None:
    params = pika.ConnectionParameters("127.0.0.1", leveret.port)  # type: ignore[attr-defined]
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(unique, auto_delete=True)
    requester = conn.channel()
    requester.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    requester.basic_publish("", unique, b"q", pika.BasicProperties(reply_to=REPLY_TO))
    _method, props, _body = _get(ch, unique)
    requester.close()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("", props.reply_to, b"late", mandatory=True)
    conn.close()
