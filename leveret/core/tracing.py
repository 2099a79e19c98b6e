"""The firehose tracer, as RabbitMQ's (``rabbitmqctl trace_on``): while tracing is on in a vhost, every
message a client publishes in it (AMQP or the management API: :class:`~leveret.core.routing.Peer`) is copied
to the topic exchange ``amq.rabbitmq.trace`` with routing key ``publish.<exchange>``, and every delivery
(basic.deliver, basic.get-ok, the management API's get) with ``deliver.<queue>``.

The copy has the original body and RabbitMQ's headers: ``exchange_name``, ``routing_keys``, ``properties`` (the
original basic properties as a table), ``node``, ``vhost``, ``connection``, ``channel``, ``user``, and
``routed_queues`` (publish) or ``redelivered`` (deliver). Tools written for RabbitMQ's firehose work unchanged.

The copy is routed through the trace exchange only: the traced message's own routing, mandatory returns,
alternate exchanges, confirms and queue lengths are untouched. Messages that come from the trace exchange
are not traced again. Tracing is off at start (not stored), as in RabbitMQ; when it is off the core pays one
``vhost.tracer is None`` test per publish and per delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .message import Message, new_message
from .routing import routing_keys

if TYPE_CHECKING:
    from .queue import Queue
    from .routing import Peer
    from .vhost import VHost

TRACE_EXCHANGE = "amq.rabbitmq.trace"


class Tracer:
    """The firehose of one vhost (``vhost.tracer`` while tracing is on)."""

    def __init__(self, vhost: VHost) -> None:
        self.vhost = vhost
        self.node = vhost.broker.node_name

    def published(self, msg: Message, queues: Sequence[Queue], origin: Peer) -> None:
        if msg.exchange == TRACE_EXCHANGE:
            return
        self._trace(msg, "publish." + msg.exchange, origin, {"routed_queues": [q.name for q in queues]})

    def delivered(self, queue: Queue, msg: Message, origin: Peer) -> None:
        if msg.exchange == TRACE_EXCHANGE:
            return
        self._trace(msg, "deliver." + queue.name, origin, {"redelivered": 1 if msg.redelivered else 0})

    def _trace(self, msg: Message, key: str, origin: Peer, extra: dict[str, Any]) -> None:
        vhost = self.vhost
        if len(key.encode()) > 255:  # a routing key is a short string
            key = key.encode()[:255].decode(errors="ignore")
        exchange = vhost.exchanges.get(TRACE_EXCHANGE)
        if exchange is None or not exchange.has_bindings():
            return
        keys = routing_keys(msg)
        if msg.bcc:
            keys.extend(msg.bcc)
        headers = {"exchange_name": msg.exchange, "routing_keys": keys, "properties": dict(msg.properties),
                   "node": self.node, "vhost": vhost.name, "connection": origin.peer, "channel": origin.channel,
                   "user": origin.user, **extra}
        props = {"headers": headers}
        body = msg.body
        trace = new_message(TRACE_EXCHANGE, key, props, body)
        vhost.publish(exchange, trace)


def set_tracing(vhost: VHost, on: bool) -> bool:
    """Switch the firehose of ``vhost`` on or off; returns whether it was on before."""
    was_on = vhost.tracer is not None
    if on and not was_on:
        vhost.tracer = Tracer(vhost)
    elif not on:
        vhost.tracer = None
    if on != was_on:  # every message body of the vhost becomes readable to whoever binds: audited
        vhost.broker.audit.record("vhost.tracing_on" if on else "vhost.tracing_off", vhost=vhost.name)
    return was_on
