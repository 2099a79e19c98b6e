"""Differential scenarios of the basics: connection and channel, exchanges, queues, basic (publish, get, consume,
ack, qos, recover, priorities, properties), confirms and transactions. Registered as "basic/<name>" and run against
RabbitMQ and Leveret by ``test_scenarios.py`` (see ``harness.py`` for what a transcript holds)."""

from __future__ import annotations

import contextlib
import decimal
import time
from typing import Any

import amqp
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from harness import Run, area, drain, normalise, publish

scenario = area("basic")


def get(run: Run, ch: BlockingChannel, queue: str, *, auto_ack: bool = False, label: str = "get") -> int | None:
    """basic.get and record body, redelivered, message_count and exchange/key; returns the delivery tag."""
    method, _properties, body = ch.basic_get(queue, auto_ack=auto_ack)
    if method is None:
        run.record(label, "get-empty")
        return None
    run.record(label, body, method.redelivered, method.message_count, method.exchange, method.routing_key)
    return int(method.delivery_tag)


def property_items(properties: pika.BasicProperties | None) -> tuple[tuple[str, Any], ...]:
    """The properties that are set, sorted by name."""
    if properties is None:
        return ()
    return tuple(sorted((k, v) for k, v in vars(properties).items() if v is not None))


# connection and channel


@scenario
def connection_server_properties(run: Run) -> None:
    conn = run.connect()
    server = conn._impl.server_properties
    run.record("capabilities", tuple(sorted(server["capabilities"].items())))
    run.record("keys", tuple(sorted(key for key in server if key != "leveret-version")))  # Leveret's own
    run.record("tune", conn._impl.params.frame_max, conn._impl.params.channel_max)


@scenario
def connection_wrong_password_plain(run: Run) -> None:
    creds = pika.PlainCredentials("guest", "wrong")
    try:
        run.connect(credentials=creds, connection_attempts=1)
    except pika.exceptions.ProbableAuthenticationError as exc:
        run.record("plain", "refused", str(exc))
    else:
        run.record("plain", "accepted")


@scenario
def connection_wrong_password_amqplain(run: Run) -> None:
    conn = amqp.Connection(f"127.0.0.1:{run.port}", userid="guest", password="wrong", login_method="AMQPLAIN",
                           connect_timeout=2)
    try:
        run.attempt("amqplain", conn.connect)
    finally:
        conn.collect()
    good = amqp.Connection(f"127.0.0.1:{run.port}", login_method="AMQPLAIN", connect_timeout=2)
    run.attempt("amqplain-ok", lambda: good.connect() and None)
    run.record("server", good.server_properties["product"] in ("RabbitMQ", "Leveret"))
    good.close()


@scenario
def connection_unknown_vhost(run: Run) -> None:
    try:
        run.connect(virtual_host=f"{run.prefix}-vhost", connection_attempts=1)
    except pika.exceptions.ProbableAccessDeniedError as exc:
        run.record("open", "refused", str(exc))
    else:
        run.record("open", "accepted")


@scenario
def channel_flow(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    run.attempt("flow-on", lambda: ch.flow(True))
    run.attempt("flow-off", lambda: ch.flow(False))
    run.record("connection-open", conn.is_open)


@scenario
def channel_close_and_reopen(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    run.attempt("declare", lambda: ch.queue_declare(q, auto_delete=True))
    publish(ch, q, b"a", b"b")
    get(run, ch, q)
    ch.close()
    ch2 = conn.channel()
    get(run, ch2, q, auto_ack=True)
    get(run, ch2, q, auto_ack=True)
    get(run, ch2, q, auto_ack=True)


# exchanges


@scenario
def exchange_declare_types_and_passive(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    for kind in ("direct", "fanout", "topic", "headers"):
        name = run.exchange(kind)
        run.attempt(f"declare-{kind}", lambda name=name, kind=kind: ch.exchange_declare(name, kind, auto_delete=True))
        run.attempt(f"passive-{kind}", lambda name=name: ch.exchange_declare(name, passive=True))
        run.attempt(f"delete-{kind}", lambda name=name: ch.exchange_delete(name))
    run.attempt("passive-amq.topic", lambda: ch.exchange_declare("amq.topic", passive=True))
    run.attempt("passive-missing", lambda: ch.exchange_declare(run.exchange("missing"), passive=True))
    ch = conn.channel()
    run.attempt("passive-default", lambda: ch.exchange_declare("", passive=True))
    ch = conn.channel()
    run.attempt("passive-amq.default", lambda: ch.exchange_declare("amq.default", passive=True))


@scenario
def exchange_equivalence(run: Run) -> None:
    conn = run.connect()
    x = run.exchange()
    ch = conn.channel()
    ch.exchange_declare(x, "direct", auto_delete=True)
    run.attempt("same", lambda: ch.exchange_declare(x, "direct", auto_delete=True))
    run.attempt("type", lambda: ch.exchange_declare(x, "fanout", auto_delete=True))
    ch = conn.channel()
    run.attempt("durable", lambda: ch.exchange_declare(x, "direct", durable=True, auto_delete=True))
    ch = conn.channel()
    run.attempt("auto_delete", lambda: ch.exchange_declare(x, "direct"))
    ch = conn.channel()
    run.attempt("arguments", lambda: ch.exchange_declare(x, "direct", auto_delete=True,
                                                         arguments={"alternate-exchange": "ae"}))
    ch = conn.channel()
    run.attempt("other-arguments-ignored", lambda: ch.exchange_declare(x, "direct", auto_delete=True,
                                                                       arguments={"x-anything": 1}))
    run.attempt("amq.direct-as-fanout", lambda: ch.exchange_declare("amq.direct", "fanout", durable=True))


@scenario
def exchange_reserved_and_unknown_type(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    run.attempt("amq.reserved", lambda: ch.exchange_declare(f"amq.{run.prefix}", "direct"))
    ch = conn.channel()
    run.attempt("delete-amq.direct", lambda: ch.exchange_delete("amq.direct"))
    ch = conn.channel()
    run.attempt("delete-default", lambda: ch.exchange_delete(""))
    ch = conn.channel()
    run.attempt("declare-default", lambda: ch.exchange_declare("", "direct"))
    conn = run.connect()
    ch = conn.channel()
    run.attempt("unknown-type", lambda: ch.exchange_declare(run.exchange(), "nosuchtype"))
    run.record("connection-open", conn.is_open)


@scenario
def exchange_delete_if_unused_and_missing(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    x, q = run.exchange(), run.queue()
    ch.exchange_declare(x, "fanout")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x)
    run.attempt("if-unused-in-use", lambda: ch.exchange_delete(x, if_unused=True))
    ch = conn.channel()
    ch.queue_unbind(q, x)
    run.attempt("if-unused-unused", lambda: ch.exchange_delete(x, if_unused=True))
    run.attempt("passive-after", lambda: ch.exchange_declare(x, passive=True))
    ch = conn.channel()
    run.attempt("delete-missing", lambda: ch.exchange_delete(run.exchange("missing")))


@scenario
def exchange_to_exchange_routing(run: Run) -> None:
    ch = run.channel()
    src, dst, q = run.exchange("src"), run.exchange("dst"), run.queue()
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "direct", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, dst, "a.b")
    run.attempt("bind", lambda: ch.exchange_bind(dst, src, "a.*"))
    publish(ch, "a.b", b"1", exchange=src)
    publish(ch, "a.c", b"2", exchange=src)
    run.attempt("unbind", lambda: ch.exchange_unbind(dst, src, "a.*"))
    publish(ch, "a.b", b"3", exchange=src)
    publish(ch, "a.b", b"4", exchange=dst)
    for _ in range(3):
        get(run, ch, q, auto_ack=True)
    run.attempt("bind-missing-source", lambda: ch.exchange_bind(dst, run.exchange("missing"), "k"))


@scenario
def exchange_internal_publish(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    x = run.exchange()
    ch.exchange_declare(x, "fanout", internal=True, auto_delete=True)
    ch.queue_declare(run.queue(), exclusive=True)
    ch.queue_bind(run.queue(), x)
    publish(ch, "k", b"x", exchange=x)
    run.attempt("after-publish", lambda: ch.queue_declare(run.queue(), passive=True))
    ch = conn.channel()
    publish(ch, "k", b"x", exchange=run.exchange("missing"))
    run.attempt("after-publish-missing", lambda: ch.queue_declare(run.queue(), passive=True))


# queues


@scenario
def queue_declare_variants(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    run.attempt("server-named", lambda: ch.queue_declare("", exclusive=True))
    q = run.queue()
    run.attempt("durable", lambda: ch.queue_declare(q, durable=True))
    publish(run.confirmed(conn), q, b"1", b"2")
    run.attempt("passive", lambda: ch.queue_declare(q, passive=True))
    run.attempt("redeclare", lambda: ch.queue_declare(q, durable=True))
    run.attempt("passive-missing", lambda: ch.queue_declare(run.queue("missing"), passive=True))
    ch = conn.channel()
    run.attempt("reserved", lambda: ch.queue_declare(f"amq.{run.prefix}"))
    ch = conn.channel()
    run.attempt("delete", lambda: ch.queue_delete(q))


@scenario
def queue_equivalence(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 10, "x-other": "a"})
    run.attempt("durable", lambda: ch.queue_declare(q, durable=True, auto_delete=True,
                                                    arguments={"x-max-length": 10}))
    ch = conn.channel()
    run.attempt("auto_delete", lambda: ch.queue_declare(q, arguments={"x-max-length": 10}))
    ch = conn.channel()
    run.attempt("arg-value", lambda: ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 11}))
    ch = conn.channel()
    run.attempt("arg-missing", lambda: ch.queue_declare(q, auto_delete=True))
    ch = conn.channel()
    run.attempt("arg-type", lambda: ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": "10"}))
    ch = conn.channel()
    run.attempt("arg-added", lambda: ch.queue_declare(q, auto_delete=True, arguments={
        "x-max-length": 10, "x-message-ttl": 1000}))
    ch = conn.channel()
    run.attempt("same-other-args-ignored", lambda: ch.queue_declare(q, auto_delete=True, arguments={
        "x-max-length": 10, "x-other": "b", "x-queue-type": "classic"}))
    run.attempt("delete", lambda: ch.queue_delete(q))


@scenario
def queue_exclusive_other_connection(run: Run) -> None:
    owner = run.channel()
    q = run.queue()
    owner.queue_declare(q, exclusive=True)
    publish(owner, q, b"m")
    other = run.connect()
    for label, fn in (
        ("declare", lambda ch: ch.queue_declare(q, exclusive=True)),
        ("passive", lambda ch: ch.queue_declare(q, passive=True)),
        ("consume", lambda ch: ch.basic_consume(q, lambda *a: None)),
        ("get", lambda ch: ch.basic_get(q)),
        ("purge", lambda ch: ch.queue_purge(q)),
        ("delete", lambda ch: ch.queue_delete(q)),
        ("bind", lambda ch: ch.queue_bind(q, "amq.fanout")),
    ):
        ch = other.channel()
        run.attempt(label, lambda fn=fn, ch=ch: fn(ch))
    get(run, owner, q, auto_ack=True)


@scenario
def queue_exclusive_flag_mismatch(run: Run) -> None:
    conn = run.connect()
    shared, mine = run.queue("shared"), run.queue("mine")
    ch = conn.channel()
    ch.queue_declare(shared)
    ch.queue_declare(mine, exclusive=True)
    run.attempt("shared-as-exclusive", lambda: ch.queue_declare(shared, exclusive=True))
    ch = conn.channel()
    run.attempt("exclusive-as-shared", lambda: ch.queue_declare(mine))
    ch = conn.channel()
    run.attempt("exclusive-and-durable", lambda: ch.queue_declare(mine, exclusive=True, durable=True))
    ch = conn.channel()
    run.attempt("passive-own-exclusive", lambda: ch.queue_declare(mine, passive=True))
    run.attempt("delete-shared", lambda: ch.queue_delete(shared))


@scenario
def queue_delete_with_unacked_messages(run: Run) -> None:
    conn = run.connect()
    ch = run.confirmed(conn)
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    publish(ch, q, b"1", b"2", b"3")
    tag = get(run, ch, q)
    run.attempt("delete", lambda: ch.queue_delete(q))
    assert tag is not None
    ch.basic_ack(tag)  # the queue is gone; acking its message is still fine
    run.attempt("after-ack", lambda: ch.queue_declare(q, exclusive=True))


@scenario
def queue_bind_unbind(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q, x = run.queue(), run.exchange()
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    run.attempt("bind", lambda: ch.queue_bind(q, x, "k"))
    run.attempt("bind-again", lambda: ch.queue_bind(q, x, "k"))
    run.attempt("bind-other-key", lambda: ch.queue_bind(q, x, "k2"))
    publish(ch, "k", b"1", exchange=x)
    publish(ch, "k2", b"2", exchange=x)
    run.attempt("unbind", lambda: ch.queue_unbind(q, x, "k"))
    run.attempt("unbind-again", lambda: ch.queue_unbind(q, x, "k"))
    publish(ch, "k", b"3", exchange=x)
    for _ in range(3):
        get(run, ch, q, auto_ack=True)
    run.attempt("unbind-last", lambda: ch.queue_unbind(q, x, "k2"))
    run.attempt("auto-deleted", lambda: ch.exchange_declare(x, passive=True))
    ch = conn.channel()
    run.attempt("unbind-missing-exchange", lambda: ch.queue_unbind(q, x, "k2"))
    run.attempt("unbind-missing-queue", lambda: ch.queue_unbind(run.queue("missing"), "amq.direct", "k"))
    run.attempt("bind-missing-exchange", lambda: ch.queue_bind(q, run.exchange("missing"), "k"))
    ch = conn.channel()
    run.attempt("bind-missing-queue", lambda: ch.queue_bind(run.queue("missing"), "amq.direct", "k"))
    ch = conn.channel()
    run.attempt("bind-missing-both", lambda: ch.queue_bind(run.queue("missing"), run.exchange("missing"), "k"))
    ch = conn.channel()
    run.attempt("bind-default", lambda: ch.queue_bind(q, "", "k"))
    ch = conn.channel()
    run.attempt("unbind-default", lambda: ch.queue_unbind(q, "", "k"))
    ch = conn.channel()
    run.attempt("exchange-unbind-missing", lambda: ch.exchange_unbind(x, "amq.direct", "k"))
    run.attempt("exchange-bind-default", lambda: ch.exchange_bind("amq.direct", "", "k"))


@scenario
def queue_purge_and_delete_counts(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    publish(ch, q, b"1", b"2", b"3")
    get(run, ch, q)  # one unacked: not counted by purge
    run.attempt("purge", lambda: ch.queue_purge(q))
    publish(ch, q, b"4", b"5")
    run.attempt("if-empty", lambda: ch.queue_delete(q, if_empty=True))
    ch = conn.channel()  # the unacked message came back
    ch.basic_consume(q, lambda *a: None)
    run.attempt("if-unused", lambda: ch.queue_delete(q, if_unused=True))
    ch = conn.channel()
    run.attempt("delete", lambda: ch.queue_delete(q))
    run.attempt("delete-missing", lambda: ch.queue_delete(q))
    run.attempt("purge-missing", lambda: ch.queue_purge(q))


@scenario
def queue_empty_name_is_last_declared(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    run.attempt("no-previous", lambda: ch.queue_purge(""))
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    run.attempt("bind-empty", lambda: ch.queue_bind("", "amq.direct", "rk"))
    run.attempt("bind-empty-both", lambda: ch.queue_bind("", "amq.direct"))
    publish(ch, "rk", b"1", exchange="amq.direct")
    publish(ch, q, b"2", exchange="amq.direct")
    get(run, ch, "", auto_ack=True)
    run.attempt("purge-empty", lambda: ch.queue_purge(""))
    run.attempt("delete-empty", lambda: ch.queue_delete(""))
    run.attempt("passive-after", lambda: ch.queue_declare(q, passive=True))
    ch = conn.channel()
    ch.queue_declare(q, exclusive=True)
    ch.basic_consume("", lambda *a: None, consumer_tag="by-last-name")
    run.attempt("consumers", lambda: ch.queue_declare(q, passive=True))
    run.attempt("passive-empty", lambda: ch.queue_declare("", passive=True))


@scenario
def queue_auto_delete_last_consumer(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, auto_delete=True)
    publish(run.confirmed(conn), q, b"1")
    run.attempt("passive-before-consume", lambda: ch.queue_declare(q, passive=True))
    tag1 = ch.basic_consume(q, lambda *a: None, auto_ack=True, consumer_tag="c1")
    tag2 = ch.basic_consume(q, lambda *a: None, auto_ack=True, consumer_tag="c2")
    run.attempt("passive-consumed", lambda: ch.queue_declare(q, passive=True))
    ch.basic_cancel(tag1)
    run.attempt("passive-one-left", lambda: ch.queue_declare(q, passive=True))
    ch.basic_cancel(tag2)
    run.attempt("passive-after-cancel", lambda: ch.queue_declare(q, passive=True))


# basic


@scenario
def basic_mandatory_return(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    returned: list[Any] = []
    ch.add_on_return_callback(lambda _ch, method, properties, body: returned.append(
        (method.reply_code, method.reply_text, method.exchange, method.routing_key, body,
         property_items(properties))))
    x = run.exchange()
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.basic_publish(x, "nowhere", b"m1", pika.BasicProperties(message_id="id1"), mandatory=True)
    ch.basic_publish("", run.queue("missing"), b"m2", mandatory=True)
    ch.basic_publish("", run.queue("missing"), b"m3", mandatory=False)
    drain(conn, returned, 2)
    run.record("returned", tuple(returned))


@scenario
def basic_publish_invalid_expiration(run: Run) -> None:
    conn = run.connect()
    q = run.queue()
    conn.channel().queue_declare(q, exclusive=True)
    for expiration in ("60000", "0", "+5", "007", "abc", "", " 5", "5 ", "1.5", "-1", "315360000000",
                       "315360000001", "9223372036854775807", "-" + "1" * 40):
        ch = conn.channel()
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
        run.attempt(f"expiration {expiration!r}", lambda ch=ch: ch.basic_qos(prefetch_count=1))


@scenario
def basic_consume_invalid_priority(run: Run) -> None:
    conn = run.connect()
    q = run.queue()
    conn.channel().queue_declare(q, exclusive=True)
    for priority in (5, -3, "high", True, decimal.Decimal("1.5"), 2**40):
        ch = conn.channel()
        run.attempt(f"x-priority {priority!r}", lambda ch=ch, p=priority: ch.basic_consume(
            q, lambda *a: None, arguments={"x-priority": p}) and None)


@scenario
def exchange_headers_binding_arguments(run: Run) -> None:
    conn = run.connect()
    q = run.queue()
    ch = run.confirmed(conn)
    ch.queue_declare(q, exclusive=True)
    run.attempt("all", lambda: ch.queue_bind(q, "amq.headers", arguments={"x-match": "all", "a": 1, "b": "x"}))
    run.attempt("any", lambda: ch.queue_bind(q, "amq.match", arguments={"x-match": "any", "c": True}))
    for headers in ({"a": 1, "b": "x"}, {"a": 1}, {"a": 1, "b": "x", "z": 0}, {"c": True}, {"c": 1}, None):
        ch.basic_publish("amq.headers", "", repr(headers).encode(), pika.BasicProperties(headers=headers))
        ch.basic_publish("amq.match", "", b"match " + repr(headers).encode(), pika.BasicProperties(headers=headers))
    for _ in range(4):
        get(run, ch, q, auto_ack=True)
    ch = conn.channel()
    run.attempt("bad-x-match", lambda: ch.queue_bind(q, "amq.headers", arguments={"x-match": "some"}))


@scenario
def basic_connection_close_requeues_in_order(run: Run) -> None:
    owner = run.connect()
    q = run.queue()
    ch = run.confirmed(owner)
    ch.queue_declare(q)
    publish(ch, q, b"1", b"2", b"3", b"4")
    consumer = run.connect()
    cch = consumer.channel()
    received: list[Any] = []
    cch.basic_consume(q, lambda _c, m, _p, body: received.append((body, m.redelivered)))
    drain(consumer, received, 4)
    cch.basic_ack(2)  # "2"
    consumer.close()
    run.record("received", tuple(received))
    for _ in range(4):
        get(run, ch, q, auto_ack=True)


@scenario
def basic_publish_immediate(run: Run) -> None:
    conn = amqp.Connection(f"127.0.0.1:{run.port}", connect_timeout=2)
    conn.connect()
    try:
        ch = conn.channel()
        q = run.queue()
        ch.queue_declare(q, exclusive=True)
        ch.basic_publish(amqp.Message(b"x"), "", q, immediate=True)
        run.attempt("after-immediate", lambda: ch.queue_declare(q, passive=True) and None)
    finally:
        conn.collect()


@scenario
def basic_consume_errors(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    run.attempt("exclusive", lambda: ch.basic_consume(q, lambda *a: None, exclusive=True, consumer_tag="first"))
    ch2 = conn.channel()
    run.attempt("exclusive-conflict", lambda: ch2.basic_consume(q, lambda *a: None))
    ch3 = conn.channel()
    ch3.queue_declare(run.queue("b"), exclusive=True)
    ch3.basic_consume(run.queue("b"), lambda *a: None, consumer_tag="tag")
    run.attempt("exclusive-on-consumed", lambda: ch3.basic_consume(run.queue("b"), lambda *a: None,
                                                                    exclusive=True))
    ch5 = run.channel()
    run.attempt("consume-missing", lambda: ch5.basic_consume(run.queue("missing"), lambda *a: None))


@scenario
def basic_consume_server_tag(run: Run) -> None:
    """py-amqp sends an empty consumer tag, so the broker names the consumer (pika names its own)."""
    conn = amqp.Connection(f"127.0.0.1:{run.port}", connect_timeout=2)
    conn.connect()
    try:
        ch = conn.channel()
        q = run.queue()
        ch.queue_declare(q, exclusive=True)
        received: list[Any] = []
        tag = ch.basic_consume(q, callback=lambda msg: received.append(
            (msg.body, msg.delivery_info["redelivered"], normalise(msg.delivery_info["consumer_tag"]))))
        run.record("tag", normalise(tag), tag != normalise(tag))
        ch.basic_publish(amqp.Message(b"hello"), "", q)
        deadline = time.monotonic() + 1.5
        while not received and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.05)
        run.record("received", tuple(received))
        run.attempt("cancel", lambda: normalise(ch.basic_cancel(tag) or ""))
        run.attempt("auto-deleted", lambda: ch.queue_declare(q, passive=True).consumer_count)
        ch = conn.channel()
        q = run.queue("b")
        ch.queue_declare(q, exclusive=True, auto_delete=False)
        ch.basic_consume(q, "tag", callback=lambda msg: None)
        run.attempt("reuse-tag", lambda: ch.basic_consume(q, "tag", callback=lambda msg: None))
    finally:
        conn.collect()


@scenario
def basic_get_counts_and_cancel(run: Run) -> None:
    ch = run.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    get(run, ch, q)
    publish(ch, q, b"1", b"2", b"3")
    get(run, ch, q, auto_ack=True)
    get(run, ch, q, auto_ack=True)
    get(run, ch, q, auto_ack=True)
    get(run, ch, q, auto_ack=True)
    run.attempt("cancel-unknown", lambda: ch.basic_cancel("nosuchtag"))


@scenario
def basic_ack_nack_reject_requeue_order(run: Run) -> None:
    ch = run.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    publish(ch, q, *(str(i).encode() for i in range(1, 7)))
    tags = [get(run, ch, q) for _ in range(6)]
    ch.basic_nack(tags[1], multiple=True, requeue=True)  # 1 and 2 back
    ch.basic_reject(tags[3], requeue=True)  # 4 back
    ch.basic_reject(tags[4], requeue=False)  # 5 dropped
    ch.basic_ack(tags[5])
    ch.basic_nack(tags[2], requeue=True)  # 3 back
    for _ in range(5):
        get(run, ch, q, auto_ack=True)


@scenario
def basic_unknown_delivery_tag(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    ch.basic_ack(42)
    run.attempt("after-ack", lambda: ch.queue_declare(q, passive=True))
    ch = conn.channel()
    publish(ch, q, b"1")
    tag = get(run, ch, q)
    assert tag is not None
    ch.basic_ack(tag)
    ch.basic_ack(tag)
    run.attempt("after-double-ack", lambda: ch.queue_declare(q, passive=True))
    ch = conn.channel()
    ch.basic_nack(7, multiple=True)
    run.attempt("after-nack", lambda: ch.queue_declare(q, passive=True))
    ch = conn.channel()
    ch.basic_reject(9)
    run.attempt("after-reject", lambda: ch.queue_declare(q, passive=True))
    ch = conn.channel()
    ch.basic_ack(0, multiple=True)
    run.attempt("ack-all-none", lambda: ch.queue_declare(q, passive=True))


@scenario
def basic_recover(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    publish(ch, q, b"1", b"2", b"3")
    get(run, ch, q)
    get(run, ch, q)
    run.attempt("recover", lambda: ch.basic_recover(requeue=True))
    for _ in range(3):
        get(run, ch, q, auto_ack=True)
    get(run, ch, q)
    ch = conn.channel()
    publish(ch, q, b"4")
    get(run, ch, q)
    run.attempt("recover-no-requeue", lambda: ch.basic_recover(requeue=False))


@scenario
def basic_qos_prefetch(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q1, q2 = run.queue("a"), run.queue("b")
    ch.queue_declare(q1, exclusive=True)
    ch.queue_declare(q2, exclusive=True)
    publish(ch, q1, *(b"a%d" % i for i in range(6)))
    publish(ch, q2, *(b"b%d" % i for i in range(6)))
    run.attempt("qos-consumer", lambda: ch.basic_qos(prefetch_count=2))
    run.attempt("qos-global", lambda: ch.basic_qos(prefetch_count=3, global_qos=True))
    received: list[tuple[bytes, int]] = []

    def on_message(_ch: Any, method: Any, _p: Any, body: bytes) -> None:
        received.append((body, method.delivery_tag))

    ch.basic_consume(q1, on_message)
    ch.basic_consume(q2, on_message)
    drain(conn, received, 3, settle=0.2)
    run.record("first", len(received), sorted(b[:1] for b, _ in received))
    ch.basic_ack(received[0][1])
    drain(conn, received, 4, settle=0.2)
    run.record("after-ack", len(received))
    run.attempt("qos-size", lambda: ch.basic_qos(prefetch_size=1000))


@scenario
def basic_cancel_keeps_unacked(run: Run) -> None:
    conn = run.connect()
    ch = run.confirmed(conn)
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    publish(ch, q, b"1", b"2", b"3")
    consumer = conn.channel()
    received: list[Any] = []
    consumer.basic_consume(q, lambda _c, m, _p, body: received.append((body, m.delivery_tag)), consumer_tag="c")
    drain(conn, received, 3)
    consumer.basic_cancel("c")
    run.attempt("passive-after-cancel", lambda: ch.queue_declare(q, passive=True))
    consumer.basic_ack(received[0][1])
    consumer.basic_reject(received[1][1], requeue=True)
    consumer.close()  # the rejected message is back in the queue by now
    for _ in range(3):
        get(run, ch, q, auto_ack=True)


@scenario
def basic_round_robin(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    received: list[tuple[str, bytes]] = []
    for tag in ("c1", "c2", "c3"):
        ch.basic_consume(q, lambda _c, m, _p, body: received.append((m.consumer_tag, body)), auto_ack=True,
                         consumer_tag=tag)
    publish(ch, q, *(b"%d" % i for i in range(9)))
    drain(conn, received, 9)
    run.record("by-consumer", tuple(sorted((t, tuple(b for tt, b in received if tt == t)) for t in
                                           ("c1", "c2", "c3"))))


@scenario
def basic_consumer_priorities(run: Run) -> None:
    conn = run.connect()
    ch = run.confirmed(conn)
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    received: list[tuple[str, bytes, int]] = []

    def consume(channel: BlockingChannel, tag: str, priority: int | None, auto_ack: bool) -> None:
        arguments = {"x-priority": priority} if priority is not None else None
        channel.basic_consume(q, lambda _c, m, _p, body: received.append((m.consumer_tag, body, m.delivery_tag)),
                              auto_ack=auto_ack, consumer_tag=tag, arguments=arguments)

    plain = conn.channel()
    consume(plain, "default", None, True)
    consume(plain, "low", -1, True)
    consume(plain, "high", 5, True)
    publish(ch, q, b"1", b"2", b"3")
    drain(conn, received, 3)
    run.record("unlimited", tuple(r[:2] for r in received))
    plain.close()
    received.clear()
    same = conn.channel()
    consume(same, "zero", None, True)
    consume(same, "five-a", 5, True)
    consume(same, "five-b", 5, True)
    publish(ch, q, b"a", b"b", b"c", b"d")
    drain(conn, received, 4)
    run.record("same-priority", tuple(r[:2] for r in received))
    same.close()
    received.clear()
    limited = conn.channel()
    limited.basic_qos(prefetch_count=1)
    consume(limited, "default", None, False)
    consume(limited, "high", 5, False)
    consume(limited, "higher", 9, False)
    publish(ch, q, b"4", b"5", b"6", b"7", b"8")
    drain(conn, received, 3)
    run.record("limited", tuple(r[:2] for r in received))
    high = next(r for r in received if r[0] == "higher")
    limited.basic_ack(high[2])
    drain(conn, received, 4)
    run.record("after-ack", tuple(r[:2] for r in received[3:]))


@scenario
def basic_consumer_cancelled_by_server(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q)
    cancelled: list[Any] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    ch.basic_consume(q, lambda *a: None, consumer_tag="ctag")
    other = run.channel()
    run.attempt("delete", lambda: other.queue_delete(q))
    drain(conn, cancelled, 1)
    run.record("cancelled", tuple(cancelled), ch.is_open)


@scenario
def basic_properties_round_trip(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    properties = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8",
        headers={"s": "str", "i": 7, "neg": -3, "big": 2**40, "d": decimal.Decimal("1.5"), "b": True, "l": [1, "two"],
                 "t": {"nested": "yes"}, "n": None},
        delivery_mode=2, priority=5, correlation_id="corr", reply_to="reply", expiration="60000",
        message_id="mid", timestamp=1700000000, type="kind", user_id="guest", app_id="app")
    ch.basic_publish("", q, b"payload", properties)
    ch.basic_publish("", q, b"", pika.BasicProperties())
    for _ in range(2):
        _method, received, body = ch.basic_get(q, auto_ack=True)
        run.record("message", body, property_items(received))
    received_messages: list[Any] = []
    ch.basic_publish("", q, b"x" * 300_000, pika.BasicProperties(headers={"k": "v"}))
    ch.basic_consume(q, lambda _c, m, p, body: received_messages.append((len(body), property_items(p))), auto_ack=True)
    drain(conn, received_messages, 1)
    run.record("large", tuple(received_messages))
    other = conn.channel()
    other.basic_publish("", q, b"m", pika.BasicProperties(user_id="someone-else"))
    run.attempt("wrong-user-id", lambda: other.queue_declare(q, passive=True))


# confirms and transactions


@scenario
def confirm_acks(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    acks: list[tuple[int, bool]] = []
    ch._impl.add_callback(lambda frame: acks.append((frame.method.delivery_tag, frame.method.multiple)),
                          [pika.spec.Basic.Ack], one_shot=False)
    run.attempt("select", lambda: ch._impl.confirm_delivery(lambda frame: None) or
                conn.process_data_events(time_limit=0.1))
    for i in range(3):
        ch._impl.basic_publish("", q, b"%d" % i)
    ch._impl.basic_publish("", run.queue("missing"), b"unroutable", mandatory=True)
    def acked() -> tuple[int, ...]:  # RabbitMQ may confirm the unroutable message before the others
        return tuple(sorted({tag for last, multiple in acks for tag in (range(1, last + 1) if multiple else (last,))}))

    deadline = time.monotonic() + 1.5
    while acked() != (1, 2, 3, 4) and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    run.record("acked", acked())
    run.attempt("tx-after-confirm", lambda: ch.tx_select())


@scenario
def confirm_after_tx(run: Run) -> None:
    ch = run.channel()
    run.attempt("tx", lambda: ch.tx_select())
    run.attempt("confirm", lambda: ch.confirm_delivery())


@scenario
def tx_publish_commit_rollback(run: Run) -> None:
    ch = run.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    run.attempt("select", lambda: ch.tx_select())
    publish(ch, q, b"1", b"2")
    run.attempt("count-before-commit", lambda: ch.queue_declare(q, passive=True))
    run.attempt("commit", lambda: ch.tx_commit())
    run.attempt("count-after-commit", lambda: ch.queue_declare(q, passive=True))
    publish(ch, q, b"3")
    run.attempt("rollback", lambda: ch.tx_rollback())
    run.attempt("count-after-rollback", lambda: ch.queue_declare(q, passive=True))
    tag1 = get(run, ch, q)
    tag2 = get(run, ch, q)
    assert tag1 is not None and tag2 is not None
    ch.basic_ack(tag1)
    run.attempt("rollback-ack", lambda: ch.tx_rollback())
    ch.basic_reject(tag2, requeue=True)
    run.attempt("commit-reject", lambda: ch.tx_commit())
    get(run, ch, q, auto_ack=True)
    get(run, ch, q, auto_ack=True)
    ch.basic_ack(tag1)
    run.attempt("commit-ack-settled", lambda: ch.tx_commit())
    get(run, ch, q, auto_ack=True)


@scenario
def tx_mandatory_return_at_commit(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    returned: list[Any] = []
    ch.add_on_return_callback(lambda _c, m, _p, body: returned.append((m.reply_code, m.routing_key, body)))
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    ch.tx_select()
    ch.basic_publish("", run.queue("nowhere"), b"unroutable", mandatory=True)
    ch.basic_publish("", q, b"routed", mandatory=True)
    ch.queue_declare(q, passive=True)
    conn.process_data_events(time_limit=0.1)
    run.record("before-commit", tuple(returned))
    ch.tx_commit()
    drain(conn, returned, 1)
    run.record("after-commit", tuple(returned))
    get(run, ch, q, auto_ack=True)


@scenario
def tx_without_select(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    run.attempt("commit", lambda: ch.tx_commit())
    ch = conn.channel()
    run.attempt("rollback", lambda: ch.tx_rollback())
    ch = conn.channel()
    run.attempt("confirm", lambda: ch.confirm_delivery())
    run.attempt("tx-after-confirm", lambda: ch.tx_select())


@scenario
def tx_unknown_tag_in_transaction(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, exclusive=True)
    ch.tx_select()
    ch.basic_ack(5)
    run.attempt("after-ack", lambda: ch.queue_declare(q, passive=True))
