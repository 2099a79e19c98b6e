"""Differential tests: the same client script against RabbitMQ and against Leveret, transcripts compared.

Each scenario is written once as a function of a :class:`Run` (a port, a name prefix, and the transcript it
appends to). ``transcript(scenario, port, prefix)`` runs it against one broker and returns what a client
observed: reply codes and texts of channel and connection closes, message bodies in order, redelivered
flags, message and consumer counts, properties as they came back. ``test_differential`` runs every scenario
against the reference RabbitMQ (127.0.0.1:5672) and against a fresh Leveret with the same names, and asserts
the two transcripts are equal. It is skipped, never faked, when RabbitMQ is not running.

Server-generated names (``amq.gen-...``, ``amq.ctag-...``) are normalised; everything else, reply texts
included, is compared exactly.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import amqp
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from leveret.server.app import ThreadedServer

from .conftest import require_rabbitmq

Entry = tuple[Any, ...]


class Run:
    """One run of a scenario against one broker: connections, created names (cleaned up), the transcript."""

    def __init__(self, port: int, prefix: str) -> None:
        self.port = port
        self.prefix = prefix
        self.log: list[Entry] = []
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()
        self.connections: list[BlockingConnection] = []

    # --- names -------------------------------------------------------------------------------------

    def queue(self, suffix: str = "q") -> str:
        name = f"{self.prefix}-{suffix}"
        self.queues.add(name)
        return name

    def exchange(self, suffix: str = "x") -> str:
        name = f"{self.prefix}-{suffix}"
        self.exchanges.add(name)
        return name

    # --- clients -----------------------------------------------------------------------------------

    def connect(self, **params: Any) -> BlockingConnection:
        params.setdefault("heartbeat", 0)
        params.setdefault("blocked_connection_timeout", 5)
        conn = BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port, **params))
        self.connections.append(conn)
        return conn

    def channel(self, **params: Any) -> BlockingChannel:
        return self.connect(**params).channel()

    # --- the transcript ----------------------------------------------------------------------------

    def record(self, *entry: Any) -> None:
        self.log.append(entry)

    def attempt(self, label: str, fn: Callable[[], Any]) -> Any:
        """Run one client call; record ("ok", what it returned) or the close it caused. None on a close."""
        try:
            result = fn()
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.record(label, "channel.close", exc.reply_code, exc.reply_text)
            return None
        except pika.exceptions.ConnectionClosedByBroker as exc:
            self.record(label, "connection.close", exc.reply_code, exc.reply_text)
            return None
        except amqp.exceptions.AMQPError as exc:
            self.record(label, type(exc).__name__, exc.reply_code, exc.reply_text)
            return None
        self.record(label, "ok", describe(result))
        return result

    def cleanup(self) -> None:
        for conn in self.connections:
            if conn.is_open:
                try:
                    conn.close()
                except Exception:
                    pass
        if not self.queues and not self.exchanges:
            return
        conn = BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port, heartbeat=0))
        try:
            for name in sorted(self.queues):
                ch = conn.channel()
                try:
                    ch.queue_delete(name)
                    ch.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass
            for name in sorted(self.exchanges):
                ch = conn.channel()
                try:
                    ch.exchange_delete(name)
                    ch.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass
        finally:
            conn.close()


_GENERATED = re.compile(r"amq\.(gen|ctag)-[A-Za-z0-9_-]+")


def normalise(value: str) -> str:
    return _GENERATED.sub(lambda m: f"amq.{m.group(1)}-*", value)


def describe(result: Any) -> Any:
    """What a client call returned, as comparable plain data (method frames by their name and fields)."""
    if isinstance(result, pika.frame.Method):
        result = result.method
    if isinstance(result, pika.amqp_object.Method):
        fields = {k: normalise(v) if isinstance(v, str) else v for k, v in vars(result).items()}
        return (result.NAME, tuple(sorted(fields.items())))
    if isinstance(result, str):
        return normalise(result)
    if isinstance(result, bytes | int | bool | type(None)):
        return result
    if isinstance(result, tuple | list):
        return tuple(describe(item) for item in result)
    return type(result).__name__


def props(properties: pika.BasicProperties | None) -> tuple[tuple[str, Any], ...]:
    if properties is None:
        return ()
    return tuple(sorted((k, v) for k, v in vars(properties).items() if v is not None))


def get(run: Run, ch: BlockingChannel, queue: str, *, auto_ack: bool = False, label: str = "get") -> int | None:
    """basic.get and record body, redelivered, message_count and exchange/key; returns the delivery tag."""
    method, properties, body = ch.basic_get(queue, auto_ack=auto_ack)
    if method is None:
        run.record(label, "get-empty")
        return None
    run.record(label, body, method.redelivered, method.message_count, method.exchange, method.routing_key)
    return int(method.delivery_tag)


def drain(conn: BlockingConnection, received: list[Any], count: int, timeout: float = 1.5,
          settle: float = 0.1) -> None:
    """Process events until ``received`` holds ``count`` items (or the timeout), then ``settle`` more."""
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    conn.process_data_events(time_limit=settle)


def publish(ch: BlockingChannel, routing_key: str, *bodies: bytes, exchange: str = "",
            properties: pika.BasicProperties | None = None, mandatory: bool = False) -> None:
    for body in bodies:
        ch.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)


# --- scenarios -------------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Run], None]] = {}


def scenario(fn: Callable[[Run], None]) -> Callable[[Run], None]:
    SCENARIOS[fn.__name__] = fn
    return fn


# connection and channel


@scenario
def connection_server_properties(run: Run) -> None:
    conn = run.connect()
    server = conn._impl.server_properties
    run.record("capabilities", tuple(sorted(server["capabilities"].items())))
    run.record("keys", tuple(sorted(server)))
    run.record("tune", conn._impl.params.frame_max, conn._impl.params.channel_max)


@scenario
def connection_wrong_password_plain(run: Run) -> None:
    creds = pika.PlainCredentials("guest", "wrong")
    try:
        run.connect(credentials=creds, connection_attempts=1)
    except pika.exceptions.ProbableAuthenticationError as exc:
        run.record("plain", "refused", exc.args[0], exc.args[1])
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
    except pika.exceptions.ConnectionClosedByBroker as exc:
        run.record("open", "connection.close", exc.reply_code, exc.reply_text)
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
    ch = run.channel()
    for kind in ("direct", "fanout", "topic", "headers"):
        name = run.exchange(kind)
        run.attempt(f"declare-{kind}", lambda name=name, kind=kind: ch.exchange_declare(name, kind, auto_delete=True))
        run.attempt(f"passive-{kind}", lambda name=name: ch.exchange_declare(name, passive=True))
        run.attempt(f"delete-{kind}", lambda name=name: ch.exchange_delete(name))
    run.attempt("passive-amq.topic", lambda: ch.exchange_declare("amq.topic", passive=True))
    run.attempt("passive-default", lambda: ch.exchange_declare("", passive=True))
    run.attempt("passive-missing", lambda: ch.exchange_declare(run.exchange("missing"), passive=True))


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
    ch.exchange_declare(src, "topic", auto_delete=True)
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
    publish(ch, q, b"1", b"2")
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
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 10})
    run.attempt("durable", lambda: ch.queue_declare(q, durable=True, auto_delete=True,
                                                    arguments={"x-max-length": 10}))
    ch = conn.channel()
    run.attempt("auto_delete", lambda: ch.queue_declare(q, arguments={"x-max-length": 10}))
    ch = conn.channel()
    run.attempt("arg-value", lambda: ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 11}))
    ch = conn.channel()
    run.attempt("arg-missing", lambda: ch.queue_declare(q, auto_delete=True))
    ch = conn.channel()
    run.attempt("same", lambda: ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 10}))
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
def queue_bind_unbind(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q, x = run.queue(), run.exchange()
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    run.attempt("bind", lambda: ch.queue_bind(q, x, "k"))
    run.attempt("bind-again", lambda: ch.queue_bind(q, x, "k"))
    publish(ch, "k", b"1", exchange=x)
    run.attempt("unbind", lambda: ch.queue_unbind(q, x, "k"))
    run.attempt("unbind-again", lambda: ch.queue_unbind(q, x, "k"))
    publish(ch, "k", b"2", exchange=x)
    get(run, ch, q, auto_ack=True)
    get(run, ch, q, auto_ack=True)
    run.attempt("bind-missing-exchange", lambda: ch.queue_bind(q, run.exchange("missing"), "k"))
    ch = conn.channel()
    run.attempt("bind-missing-queue", lambda: ch.queue_bind(run.queue("missing"), x, "k"))
    ch = conn.channel()
    run.attempt("bind-default", lambda: ch.queue_bind(q, "", "k"))
    ch = conn.channel()
    run.attempt("unbind-missing-queue", lambda: ch.queue_unbind(run.queue("missing"), x, "k"))


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
    run.attempt("passive-empty", lambda: ch.queue_declare("", passive=True))
    get(run, ch, "", auto_ack=True)
    run.attempt("purge-empty", lambda: ch.queue_purge(""))
    run.attempt("delete-empty", lambda: ch.queue_delete(""))
    run.attempt("passive-after", lambda: ch.queue_declare(q, passive=True))


@scenario
def queue_auto_delete_last_consumer(run: Run) -> None:
    conn = run.connect()
    ch = conn.channel()
    q = run.queue()
    ch.queue_declare(q, auto_delete=True)
    publish(ch, q, b"1")
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
         props(properties))))
    x = run.exchange()
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.basic_publish(x, "nowhere", b"m1", pika.BasicProperties(message_id="id1"), mandatory=True)
    ch.basic_publish("", run.queue("missing"), b"m2", mandatory=True)
    ch.basic_publish("", run.queue("missing"), b"m3", mandatory=False)
    drain(conn, returned, 2)
    run.record("returned", tuple(returned))


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
    run.attempt("server-tag", lambda: ch.basic_consume(q, lambda *a: None, exclusive=True))
    ch2 = conn.channel()
    run.attempt("exclusive-conflict", lambda: ch2.basic_consume(q, lambda *a: None))
    ch3 = conn.channel()
    ch3.queue_declare(run.queue("b"), exclusive=True)
    ch3.basic_consume(run.queue("b"), lambda *a: None, consumer_tag="tag")
    run.attempt("exclusive-on-consumed", lambda: ch3.basic_consume(run.queue("b"), lambda *a: None,
                                                                    exclusive=True))
    ch4 = run.channel()
    ch4.queue_declare(run.queue("c"), exclusive=True)
    ch4.basic_consume(run.queue("c"), lambda *a: None, consumer_tag="tag")
    run.attempt("reuse-tag", lambda: ch4._impl.basic_consume(run.queue("c"), lambda *a: None,
                                                              consumer_tag="tag") or
                ch4.connection.process_data_events(time_limit=0.3))
    ch5 = run.channel()
    run.attempt("consume-missing", lambda: ch5.basic_consume(run.queue("missing"), lambda *a: None))


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
        headers={"s": "str", "i": 7, "neg": -3, "big": 2**40, "f": 1.5, "b": True, "l": [1, "two"],
                 "t": {"nested": "yes"}, "n": None},
        delivery_mode=2, priority=5, correlation_id="corr", reply_to="reply", expiration="60000",
        message_id="mid", timestamp=1700000000, type="kind", user_id="guest", app_id="app")
    ch.basic_publish("", q, b"payload", properties)
    ch.basic_publish("", q, b"", pika.BasicProperties())
    for _ in range(2):
        method, received, body = ch.basic_get(q, auto_ack=True)
        run.record("message", body, props(received))
    received_messages: list[Any] = []
    ch.basic_publish("", q, b"x" * 300_000, pika.BasicProperties(headers={"k": "v"}))
    ch.basic_consume(q, lambda _c, m, p, body: received_messages.append((len(body), props(p))), auto_ack=True)
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
    deadline = time.monotonic() + 1.5
    while (not acks or acks[-1][0] < 4) and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    acked = sorted({tag for last, multiple in acks for tag in (range(1, last + 1) if multiple else (last,))})
    run.record("acked", tuple(acked))
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


def transcript(fn: Callable[[Run], None], port: int, prefix: str) -> list[Entry]:
    """Run scenario ``fn`` against the broker on ``port`` and return what the client observed."""
    run = Run(port, prefix)
    try:
        fn(run)
    finally:
        run.cleanup()
    return run.log


@pytest.mark.rabbitmq
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_differential(name: str, leveret: ThreadedServer, unique: str) -> None:
    rabbitmq_port = require_rabbitmq()
    fn = SCENARIOS[name]
    expected = transcript(fn, rabbitmq_port, unique)
    actual = transcript(fn, leveret.port, unique)
    assert expected, "the scenario observed nothing"
    assert actual == expected


def test_enough_scenarios() -> None:
    assert len(SCENARIOS) >= 25


# --- raw frames: what no client library sends -------------------------------------------------------


def raw_open(port: int) -> socket.socket:
    """A socket through the handshake (PLAIN guest/guest, vhost /), with channel 1 open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    read_frame(sock)  # start
    props = b"\x00\x00\x00\x00"
    sock.sendall(method_frame(0, 10, 11, props + shortstr("PLAIN") + longstr(b"\x00guest\x00guest")
                              + shortstr("en_US")))
    read_frame(sock)  # tune
    sock.sendall(method_frame(0, 10, 31, struct.pack(">HIH", 2047, 131072, 0)))
    sock.sendall(method_frame(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
    read_frame(sock)  # open-ok
    sock.sendall(method_frame(1, 20, 10, shortstr("")))
    read_frame(sock)  # channel.open-ok
    return sock


def shortstr(value: str) -> bytes:
    raw = value.encode()
    return bytes((len(raw),)) + raw


def longstr(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def method_frame(channel: int, class_id: int, method_id: int, args: bytes) -> bytes:
    payload = struct.pack(">HH", class_id, method_id) + args
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


def read_frame(sock: socket.socket) -> tuple[int, int, bytes]:
    head = recv_exactly(sock, 7)
    kind, channel, size = struct.unpack(">BHI", head)
    payload = recv_exactly(sock, size + 1)[:-1]
    return kind, channel, payload


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def close_reply(payload: bytes) -> tuple[int, int, int, str]:
    """(class, method, reply code, reply text) of a close method payload."""
    class_id, method_id, code, size = struct.unpack_from(">HHHB", payload)
    return class_id, method_id, code, payload[7 : 7 + size].decode()


def raw_update_secret(port: int) -> list[Any]:
    sock = raw_open(port)
    try:
        sock.sendall(method_frame(0, 10, 70, longstr(b"guest") + shortstr("refresh")))
        _kind, channel, payload = read_frame(sock)
        return [channel, struct.unpack_from(">HH", payload)]
    finally:
        sock.close()


def raw_frames_on_closed_channel(port: int) -> list[Any]:
    """A method on a channel that was never opened: 504 CHANNEL_ERROR closes the connection."""
    sock = raw_open(port)
    try:
        sock.sendall(method_frame(5, 50, 10, b"\x00\x00" + shortstr("q") + b"\x00" + b"\x00\x00\x00\x00"))
        _kind, channel, payload = read_frame(sock)
        class_id, method_id, code, text = close_reply(payload)
        return [channel, class_id, method_id, code, text.split(" - ")[0]]
    finally:
        sock.close()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("fn", [raw_update_secret, raw_frames_on_closed_channel])
def test_differential_raw(fn: Callable[[int], list[Any]], leveret: ThreadedServer) -> None:
    expected = fn(require_rabbitmq())
    assert expected
    assert fn(leveret.port) == expected
