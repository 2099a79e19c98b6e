"""A socket-free harness for the core: a :class:`Broker` on a :class:`ManualTimers` clock, and clients that are
a core session with a recording :class:`Sink` instead of a connection. Queues, channels and vhosts are exercised
exactly as the AMQP adapter drives them (``Session``/``Channel``/``VHost`` calls), but without a server, a socket
or an event loop; time moves only when a test calls :meth:`Core.advance`, so TTLs, queue leases, retry schedules
and delays are tested to the millisecond, without sleeping.

    core = Core()
    client = core.client()
    client.declare("q", **{"x-message-ttl": 100})
    client.publish("q", b"hello")
    core.advance(0.099)
    assert client.count("q") == 1
    core.advance(0.002)
    assert client.count("q") == 0

What a client received is in ``client.sink``: ``deliveries`` (each with its decoded properties), ``returns``,
``confirms``, ``cancels`` and ``closed`` (the reason of a forced close).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leveret.core.message import build_address, build_header

try:  # the public core names, re-exported by the package (issue 13)
    from leveret.core import Broker, Channel, Consumer, ManualTimers, Message, Queue, Session, VHost
except ImportError:  # a tree where leveret/core/__init__.py does not re-export them yet: the same classes
    from leveret.core.broker import Broker, Session, VHost
    from leveret.core.channel import Channel
    from leveret.core.message import Message
    from leveret.core.queue import Consumer, Queue
    from leveret.core.timers import ManualTimers

__all__ = ["Client", "Core", "Delivery", "RecordingSink"]


@dataclass
class Delivery:
    """One basic.deliver as the sink received it, properties decoded."""

    channel: int
    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.get("headers") or {}


class RecordingSink:
    """A :class:`leveret.core.channel.Sink` that keeps what the core sent to its connection."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.returns: list[tuple[int, int, str, Message]] = []
        self.confirms: list[tuple[int, int, bool, bool]] = []
        self.cancels: list[tuple[int, str]] = []
        self.closed: str | None = None

    def send_deliver(self, channel: int, consumer_tag: bytes, delivery_tag: int, redelivered: bool,
                     address: bytes, header: bytes, body: bytes) -> None:
        size = address[0]  # two AMQP short strings: exchange, routing key (the tag is one too)
        exchange, routing_key = address[1:1 + size].decode(), address[2 + size:].decode()
        properties = Message(exchange, routing_key, address, header, body).properties  # the core's own decoding
        self.deliveries.append(Delivery(channel, consumer_tag[1:].decode(), delivery_tag, redelivered, exchange,
                                        routing_key, properties, bytes(body)))

    def send_return(self, channel: int, reply_code: int, reply_text: str, msg: Message) -> None:
        self.returns.append((channel, reply_code, reply_text, msg))

    def send_confirm(self, channel: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        self.confirms.append((channel, delivery_tag, multiple, ack))

    def send_cancel(self, channel: int, consumer_tag: str) -> None:
        self.cancels.append((channel, consumer_tag))

    def force_close(self, reason: str) -> None:
        self.closed = reason

    def bodies(self) -> list[bytes]:
        return [d.body for d in self.deliveries]


class Core:
    """A broker without a store, on a manual clock. ``broker_options`` go to :class:`Broker`."""

    def __init__(self, **broker_options: Any) -> None:
        self.timers = ManualTimers()
        self.broker = Broker(timers=self.timers, **broker_options)
        self.clients: list[Client] = []

    @property
    def vhost(self) -> VHost:
        return self.broker.vhosts["/"]

    def client(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> Client:
        """A logged-in client with channel 1 open (as after connection.open and channel.open)."""
        client = Client(self, user, password, vhost)
        self.clients.append(client)
        return client

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, running every timer that falls due, in order."""
        self.timers.advance(seconds)

    def queue(self, name: str) -> Queue:
        return self.vhost.queues[name]

    def close(self) -> None:
        for client in self.clients:
            client.close()


class Client:
    """One connection as the core sees it: a session with a recording sink; channel 1 open."""

    def __init__(self, core: Core, user: str, password: str, vhost: str) -> None:
        self.core = core
        self.sink = RecordingSink()
        self.session = Session(core.broker, self.sink, peer="127.0.0.1:1")
        self.session.user = core.broker.authenticate(user, password, True)
        self.session.open_vhost(vhost)
        self.channel = self.session.open_channel(1)
        self.closed = False

    @property
    def vhost(self) -> VHost:
        return self.session.vhost

    def open_channel(self, number: int) -> Channel:
        return self.session.open_channel(number)

    # --- topology -------------------------------------------------------------------------------------

    def declare(self, name: str, *, durable: bool = False, exclusive: bool = False, auto_delete: bool = False,
                passive: bool = False, **arguments: Any) -> Queue:
        """queue.declare with ``arguments`` (e.g. ``**{"x-message-ttl": 100}``)."""
        return self.vhost.declare_queue(self.session, name, passive=passive, durable=durable, exclusive=exclusive,
                                        auto_delete=auto_delete, arguments=arguments, access=self.session.access)

    def exchange(self, name: str, type_: str = "direct", **arguments: Any) -> None:
        self.vhost.declare_exchange(name, type_, passive=False, durable=False, auto_delete=False, internal=False,
                                    arguments=arguments, access=self.session.access)

    def bind(self, queue: str, exchange: str, routing_key: str = "", **arguments: Any) -> None:
        self.vhost.bind_queue(queue, exchange, routing_key, arguments, self.session, self.session.access)

    def count(self, queue: str) -> int | None:
        """Ready messages in ``queue`` (a passive declare); None when it does not exist."""
        found = self.vhost.queues.get(queue)
        return None if found is None else found.message_count

    # --- publishing -----------------------------------------------------------------------------------

    def publish(self, routing_key: str, body: bytes, *, exchange: str = "", mandatory: bool = False,
                channel: Channel | None = None, **properties: Any) -> None:
        """basic.publish with these basic properties (``expiration="100"``, ``headers={...}``), then the end of
        the client's batch (confirms are sent)."""
        msg = Message(exchange, routing_key, build_address(exchange, routing_key),
                      build_header(properties, len(body)), body)
        (channel or self.channel).publish(msg, mandatory)
        self.session.flush()

    # --- consuming ------------------------------------------------------------------------------------

    def get(self, queue: str, *, no_ack: bool = True, channel: Channel | None = None) -> tuple[int, Message] | None:
        """basic.get: (delivery tag, message) or None when the queue is empty."""
        return (channel or self.channel).get(self.vhost.queue(queue, self.session), no_ack)

    def get_body(self, queue: str) -> bytes | None:
        got = self.get(queue)
        return None if got is None else got[1].body

    def bodies(self, queue: str, limit: int = 100) -> list[bytes]:
        """Every message left in ``queue`` (basic.get, no-ack, until empty)."""
        out = []
        for _ in range(limit):
            body = self.get_body(queue)
            if body is None:
                break
            out.append(body)
        return out

    def consume(self, queue: str, tag: str = "", *, no_ack: bool = False, exclusive: bool = False,
                prefetch: int | None = None, channel: Channel | None = None, **arguments: Any) -> Consumer:
        """basic.consume (after basic.qos ``prefetch`` when given); deliveries go to ``self.sink``."""
        ch = channel or self.channel
        if prefetch is not None:
            ch.qos(0, prefetch, False)
        q = self.vhost.queue(queue, self.session)
        consumer = ch.consume(q, tag, no_ack=no_ack, exclusive=exclusive, arguments=arguments)
        q.add_consumer(consumer)
        return consumer

    def cancel(self, tag: str, channel: Channel | None = None) -> None:
        (channel or self.channel).cancel(tag)

    def ack(self, delivery_tag: int, *, multiple: bool = False, channel: Channel | None = None) -> None:
        (channel or self.channel).ack(delivery_tag, multiple)

    def reject(self, delivery_tag: int, *, requeue: bool, multiple: bool = False,
               channel: Channel | None = None) -> None:
        """basic.reject / basic.nack."""
        (channel or self.channel).reject(delivery_tag, multiple, requeue)

    def close(self) -> None:
        """The connection goes: channels close (unacked messages are requeued), exclusive queues go."""
        if not self.closed:
            self.closed = True
            self.session.close()
