"""The differential harness: one scenario, written once as a function of a :class:`Run`, is run against the
reference RabbitMQ 3.10 (127.0.0.1:5672) and against a fresh Leveret with the same names, and the two transcripts
must be equal, entry by entry (``test_scenarios.py`` is the one runner; the scenarios live in
``scenarios_<area>.py`` and register themselves here with :func:`scenario`).

A transcript records what a client observed, exactly: reply codes and texts of channel and connection closes,
bodies in order, delivery fields, message and consumer counts, every message property, and headers tables *with
their field order* (RabbitMQ re-sorts a dead-lettered message's headers, and the order is visible on the wire).
Server-generated names (``amq.gen-...``, ``amq.ctag-...``) are normalised; ``datetime`` values (the ``time`` of an
``x-death`` entry) are replaced by the placeholder ``TIME`` after checking they are datetimes; everything else,
reply texts included, is compared exactly. ``raw_get`` reads a message with a raw socket and keeps the AMQP field
type of every header value (``count`` is a long ``l``, ``time`` a timestamp ``T``...), which pika's decoding
loses; ``Run.raw()`` gives a raw socket for what no client library sends.

Waits are bounded: ``Run.wait_count`` polls a queue's message count (a passive declare) until it has the expected
value or a deadline passes, and records what it last saw either way; ``drain`` processes events until a number of
deliveries arrived or a deadline passes. The comparison is skipped, never faked, when RabbitMQ is not running.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import struct
import time
from collections.abc import Callable
from typing import Any

import amqp
import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from leveret.amqp import codec, spec

from rawamqp import RawClient
from waiting import poll

Entry = tuple[Any, ...]
TIME = "<time>"


# --- values as a client saw them -------------------------------------------------------------------------


def exact(value: Any) -> Any:
    """A pika-decoded value as comparable data that keeps table field order and tells bools from ints."""
    if isinstance(value, datetime.datetime):
        return TIME
    if isinstance(value, dict):
        return ("table", *((key, exact(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return ("array", *(exact(item) for item in value))
    if type(value) in (str, bytes, int):
        return value
    return (type(value).__name__, value)


PROPERTY_NAMES = ("content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
                  "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id")


def message_props(properties: pika.BasicProperties | None) -> tuple[tuple[str, Any], ...]:
    if properties is None:
        return ()
    return tuple((name, exact(getattr(properties, name))) for name in PROPERTY_NAMES
                 if getattr(properties, name) is not None)


# --- the wire format of a message's properties, field types kept -----------------------------------------

_SCALARS = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I", "l": ">q", "L": ">Q", "f": ">f",
            "d": ">d"}


def _typed_value(buf: bytes, offset: int) -> tuple[Any, int]:
    kind = chr(buf[offset])
    offset += 1
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        (value,) = struct.unpack_from(fmt, buf, offset)
        return (kind, value), offset + struct.calcsize(fmt)
    if kind == "t":
        return (kind, buf[offset] != 0), offset + 1
    if kind == "T":
        struct.unpack_from(">Q", buf, offset)
        return (kind, TIME), offset + 8
    if kind == "D":
        scale, digits = struct.unpack_from(">Bi", buf, offset)
        return (kind, scale, digits), offset + 5
    if kind in "Sx":
        (size,) = struct.unpack_from(">I", buf, offset)
        raw = bytes(buf[offset + 4 : offset + 4 + size])
        return (kind, raw), offset + 4 + size
    if kind == "A":
        (size,) = struct.unpack_from(">I", buf, offset)
        end = offset + 4 + size
        offset += 4
        items = []
        while offset < end:
            item, offset = _typed_value(buf, offset)
            items.append(item)
        return ("A", *items), end
    if kind == "F":
        table, offset = _typed_table(buf, offset)
        return ("F", *table), offset
    if kind == "V":
        return ("V",), offset
    raise ValueError(f"unknown field type {kind!r} at {offset - 1}")


def _typed_table(buf: bytes, offset: int) -> tuple[tuple[Any, ...], int]:
    (size,) = struct.unpack_from(">I", buf, offset)
    end = offset + 4 + size
    offset += 4
    fields = []
    while offset < end:
        key_size = buf[offset]
        key = bytes(buf[offset + 1 : offset + 1 + key_size]).decode()
        value, offset = _typed_value(buf, offset + 1 + key_size)
        fields.append((key, value))
    return tuple(fields), end


def typed_properties(header_payload: bytes) -> tuple[tuple[str, Any], ...]:
    """The properties of a content header frame payload, each header value with its AMQP field type."""
    _class_id, _weight, _size, flags = struct.unpack_from(">HHQH", header_payload)
    assert not flags & 1, "continuation property flags are never sent for basic"
    offset = 14
    out: list[tuple[str, Any]] = []
    for bit, name in zip(range(15, 1, -1), PROPERTY_NAMES, strict=True):
        if not flags & (1 << bit):
            continue
        if name == "headers":
            table, offset = _typed_table(header_payload, offset)
            out.append((name, table))
        elif name in ("delivery_mode", "priority"):
            out.append((name, header_payload[offset]))
            offset += 1
        elif name == "timestamp":
            out.append((name, struct.unpack_from(">Q", header_payload, offset)[0]))
            offset += 8
        else:
            size = header_payload[offset]
            out.append((name, bytes(header_payload[offset + 1 : offset + 1 + size]).decode()))
            offset += 1 + size
    return tuple(out)


def raw_get(port: int, queue: str) -> tuple[Any, ...]:
    """basic.get (no-ack) over a raw socket: ("get-empty",) or ("get-ok", exchange, routing key,
    typed properties, body)."""
    client = RawClient(port, timeout=3)
    try:
        client.handshake()
        client.open_channel(1)
        client.send_method(1, "basic.get", 0, queue, True)
        frame = client.recv_frame()
        assert frame is not None and frame[0] == spec.FRAME_METHOD, frame
        method, args = codec.decode_method_payload(frame[2])
        if method.full_name == "basic.get-empty":
            return ("get-empty",)
        assert method.full_name == "basic.get-ok", (method.full_name, args)
        header = client.recv_frame()
        assert header is not None and header[0] == spec.FRAME_HEADER, header
        (size,) = struct.unpack_from(">Q", header[2], 4)
        body = b""
        while len(body) < size:
            part = client.recv_frame()
            assert part is not None and part[0] == spec.FRAME_BODY, part
            body += part[2]
        _delivery_tag, redelivered, exchange, routing_key, _count = args
        return ("get-ok", redelivered, exchange, routing_key, typed_properties(header[2]), body)
    finally:
        client.close()


# --- a run against one broker ----------------------------------------------------------------------------


class Run:
    """One run of a scenario against one broker: connections, created names (cleaned up), the transcript."""

    def __init__(self, port: int, prefix: str) -> None:
        self.port = port
        self.prefix = prefix
        self.log: list[Entry] = []
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()
        self.connections: list[BlockingConnection] = []
        self.raw_clients: list[RawClient] = []
        self._checker: BlockingConnection | None = None

    def queue(self, suffix: str = "q") -> str:
        name = f"{self.prefix}-{suffix}"
        self.queues.add(name)
        return name

    def exchange(self, suffix: str = "x") -> str:
        name = f"{self.prefix}-{suffix}"
        self.exchanges.add(name)
        return name

    def connect(self, **params: Any) -> BlockingConnection:
        params.setdefault("heartbeat", 0)
        params.setdefault("blocked_connection_timeout", 5)
        params.setdefault("connection_attempts", 1)
        conn = BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port, **params))
        self.connections.append(conn)
        return conn

    def channel(self, **params: Any) -> BlockingChannel:
        return self.connect(**params).channel()

    def raw(self, *, handshake: bool = True, timeout: float = 2) -> RawClient:
        """A raw socket to the broker (closed at cleanup); with ``handshake``, logged in with channel 1 open."""
        client = RawClient(self.port, timeout=timeout)
        self.raw_clients.append(client)
        if handshake:
            client.handshake()
            client.open_channel(1)
        return client

    def confirmed(self, conn: BlockingConnection | None = None) -> BlockingChannel:
        """A channel in confirm mode: each publish returns once the broker has enqueued the message."""
        ch = (conn or self.connect()).channel()
        ch.confirm_delivery()
        return ch

    # --- the transcript ------------------------------------------------------------------------------

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
        except amqp.exceptions.AMQPError as exc:  # py-amqp, for what pika does not send
            self.record(label, type(exc).__name__, exc.reply_code, exc.reply_text)
            return None
        self.record(label, "ok", describe(result))
        return result

    def declare(self, label: str, ch: BlockingChannel, queue: str, **arguments: Any) -> bool:
        """queue.declare (auto-delete off, so that expiry is what removes it) with ``arguments``."""
        return self.attempt(label, lambda: ch.queue_declare(queue, arguments=arguments or None)) is not None

    def counts(self, queue: str) -> tuple[Any, ...]:
        """A passive declare on a fresh channel: ("count", messages, consumers) or the close it caused."""
        if self._checker is None or not self._checker.is_open:
            self._checker = self.connect()
        ch = self._checker.channel()
        try:
            ok = ch.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            return ("channel.close", exc.reply_code, exc.reply_text)
        ch.close()
        return ("count", ok.method.message_count, ok.method.consumer_count)

    def passive(self, label: str, queue: str) -> tuple[Any, ...]:
        seen = self.counts(queue)
        self.record(label, *seen)
        return seen

    def wait_count(self, label: str, queue: str, messages: int, timeout: float = 1.5) -> None:
        """Poll until ``queue`` holds ``messages`` ready messages (or the deadline), record the last count."""
        seen = poll(lambda: self.counts(queue), lambda seen: seen[:2] == ("count", messages), timeout, 0.02)
        self.record(label, *seen)

    def get(self, label: str, ch: BlockingChannel, queue: str, *, auto_ack: bool = True) -> int | None:
        """basic.get; record body, delivery fields, message_count and every property. The delivery tag."""
        method, properties, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            self.record(label, "get-empty")
            return None
        self.record(label, body, method.redelivered, method.message_count, method.exchange, method.routing_key,
                    message_props(properties))
        return int(method.delivery_tag)

    def get_all(self, label: str, ch: BlockingChannel, queue: str, limit: int = 10) -> None:
        for i in range(limit):
            if self.get(f"{label}-{i}", ch, queue) is None:
                return

    def cleanup(self) -> None:
        for client in self.raw_clients:
            client.close()
        for conn in self.connections:
            if conn.is_open:
                with contextlib.suppress(Exception):
                    conn.close()
        delete_names(self.port, self.queues, self.exchanges)


def delete_names(port: int, queues: set[str], exchanges: set[str]) -> None:
    """Delete what a scenario declared (missing ones are fine), over a fresh AMQP connection to ``port``."""
    if not queues and not exchanges:
        return
    conn = BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0))
    try:
        for name in sorted(queues):
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                conn.channel().queue_delete(name)
        for name in sorted(exchanges):
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                conn.channel().exchange_delete(name)
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


def transcript(fn: Callable[[Run], None], port: int, prefix: str) -> list[Entry]:
    """Run scenario ``fn`` against the broker on ``port`` and return what the client observed."""
    run = Run(port, prefix)
    try:
        fn(run)
    finally:
        run.cleanup()
    return run.log


def assert_same_as_rabbitmq(fn: Callable[[Run], None], leveret_port: int, rabbitmq_port: int,
                            prefix: str) -> None:
    """Run scenario ``fn`` on RabbitMQ and on Leveret; the two transcripts must be equal, entry by entry."""
    expected = transcript(fn, rabbitmq_port, prefix)
    actual = transcript(fn, leveret_port, prefix)
    assert expected, "the scenario observed nothing"
    for index, (got, want) in enumerate(zip(actual, expected, strict=False)):
        assert got == want, f"entry {index} differs\n  leveret:  {got!r}\n  rabbitmq: {want!r}"
    assert len(actual) == len(expected)


def assert_deterministic(fn: Callable[[Run], None], port: int, prefix: str) -> None:
    """Scenario ``fn`` gives the same transcript twice on the broker on ``port`` (RabbitMQ: the reference)."""
    first = transcript(fn, port, prefix)
    second = transcript(fn, port, prefix)
    assert first, "the scenario observed nothing"
    assert second == first


# --- client helpers ---------------------------------------------------------------------------------------


def publish(ch: BlockingChannel, routing_key: str, *bodies: bytes, exchange: str = "",
            properties: pika.BasicProperties | None = None, mandatory: bool = False) -> None:
    for body in bodies:
        ch.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)


def drain(conn: BlockingConnection, received: list[Any], count: int, timeout: float = 1.5,
          settle: float = 0.1) -> None:
    """Process events until ``received`` holds ``count`` items (or the timeout), then ``settle`` more."""
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    conn.process_data_events(time_limit=settle)


class Confirms:
    """A channel in confirm mode whose acks and nacks are collected, not raised: ``outcomes()`` maps each
    publish sequence number to "ack" or "nack" (RabbitMQ coalesces confirms with ``multiple`` at will, so
    the frames themselves are not comparable; what each publish got is)."""

    def __init__(self, conn: BlockingConnection) -> None:
        self.conn = conn
        self.ch = conn.channel()
        self.published = 0
        self.confirmed: dict[int, list[str]] = {}
        self.frames: list[int] = []
        self.ch._impl.confirm_delivery(self._on_confirm)
        conn.process_data_events(time_limit=0.05)

    def _on_confirm(self, frame: Any) -> None:
        kind = "ack" if isinstance(frame.method, pika.spec.Basic.Ack) else "nack"
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        self.frames.append(tag)
        tags = range(1, tag + 1) if multiple else (tag,)
        for each in tags:
            if multiple and each in self.confirmed:
                continue
            self.confirmed.setdefault(each, []).append(kind)

    def publish(self, routing_key: str, body: bytes, exchange: str = "",
                properties: pika.BasicProperties | None = None, mandatory: bool = False) -> None:
        self.ch._impl.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        self.published += 1

    def outcomes(self, timeout: float = 1.5) -> tuple[tuple[int, str], ...]:
        deadline = time.monotonic() + timeout
        while len(self.confirmed) < self.published and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.02)
        self.conn.process_data_events(time_limit=0.05)
        return tuple((tag, "+".join(kinds)) for tag, kinds in sorted(self.confirmed.items()))

    def in_order(self) -> bool:
        """Whether the confirm frames came in increasing delivery-tag order."""
        return all(a < b for a, b in zip(self.frames, self.frames[1:], strict=False))


def bodies(ch: BlockingChannel, queue: str, limit: int = 20) -> list[bytes]:
    """Every message left in ``queue`` (basic.get with auto-ack until empty)."""
    out = []
    for _ in range(limit):
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append(body)
    return out


def props(**values: Any) -> pika.BasicProperties:
    return pika.BasicProperties(**values)



# --- the registry: every scenario of every area ----------------------------------------------------------

Scenario = Callable[[Run], None]
SCENARIOS: dict[str, Scenario] = {}  # "area/name" -> the scenario
CHECKED_TWICE: set[str] = set()  # areas whose scenarios are also run twice on RabbitMQ (see test_scenarios.py)


def area(name: str, *, checked_twice: bool = False) -> Callable[[Scenario], Scenario]:
    """The ``@scenario`` decorator of one area: registers a scenario as "<area>/<function name>"."""
    if checked_twice:
        CHECKED_TWICE.add(name)

    def scenario(fn: Scenario) -> Scenario:
        key = f"{name}/{fn.__name__}"
        assert key not in SCENARIOS, f"two scenarios named {key}"
        SCENARIOS[key] = fn
        return fn

    return scenario
