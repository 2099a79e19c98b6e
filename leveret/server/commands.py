"""The AMQP commands of an open channel, as core calls: channel, exchange, queue, basic, confirm and tx methods.

:class:`ChannelCommands` is a base class of :class:`~leveret.server.amqp.AMQPConnection`; its methods are the
handlers that leveret/server/amqp.py lists in its method table (``METHODS``), one per AMQP method, each named
after it (``basic.consume`` -> ``basic_consume``). A handler takes the channel number and the method's arguments
in the specification's order, calls the core, and sends the reply; core errors propagate to the connection,
which turns them into channel or connection closes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mypy_extensions import mypyc_attr

from leveret.amqp import spec
from leveret.amqp.connection import ServerConnection
from leveret.core import errors
from leveret.core.broker import Broker, Session
from leveret.core.channel import REPLY_TO, Channel
from leveret.core.consumer import Consumer
from leveret.core.remote import GetResult

M = spec.method
_GET_OK = M("basic.get-ok")


class ChannelClosed(Exception):
    """Raised inside a handler when the frame's channel is not open in the core (already torn down)."""


@mypyc_attr(native_class=False)  # compiled (setup.py) as a Python class: AMQPConnection's base
class ChannelCommands:
    """The handlers of channel-level methods; the connection state they use is the AMQPConnection's."""

    conn: ServerConnection
    broker: Broker
    session: Session
    _held_cancels: list[tuple[int, str]] | None  # basic.cancel held back until a reply is sent

    # AMQPConnection's, which this class is a base of (declared, not defined: mypyc takes no `if` in a class body)
    close: Callable[..., None]  # (reply_code, text, class_id=0, method_id=0)
    send_cancel: Callable[[int, str], None]
    _schedule_flush: Callable[[], None]
    _fail: Callable[[int, Exception, int, int], None]  # (channel, exc, class_id, method_id)

    def _channel(self, number: int) -> Channel:
        channel = self.session.channels.get(number)
        if channel is None:
            raise ChannelClosed
        return channel

    def _reply(self, channel: int, name: str, *args: Any) -> None:
        self.conn.send_method(channel, M(name), args)

    # --- channel class ---

    def channel_open(self, ch: int, _reserved: str) -> None:
        self.session.open_channel(ch)
        self._reply(ch, "channel.open-ok", b"")

    def channel_flow(self, ch: int, active: bool) -> None:
        self._channel(ch)
        if not active:
            raise errors.NotImplementedFeature("active=false")
        self._reply(ch, "channel.flow-ok", True)

    def channel_flow_ok(self, ch: int, active: bool) -> None:
        pass

    def channel_close(self, ch: int, reply_code: int, reply_text: str, class_id: int, method_id: int) -> None:
        self.session.close_channel(ch)
        self._reply(ch, "channel.close-ok")

    def channel_close_ok(self, ch: int) -> None:
        pass

    # --- exchange class ---

    def exchange_declare(self, ch: int, _r: int, exchange: str, type_: str, passive: bool, durable: bool,
                         auto_delete: bool, internal: bool, nowait: bool, arguments: dict[str, Any]) -> None:
        self._channel(ch)
        self.session.vhost.declare_exchange(exchange, type_, passive=passive, durable=durable,
                                            auto_delete=auto_delete, internal=internal, arguments=arguments,
                                            access=self.session.access)
        if not nowait:
            self._reply(ch, "exchange.declare-ok")

    def exchange_delete(self, ch: int, _r: int, exchange: str, if_unused: bool, nowait: bool) -> None:
        self._channel(ch)
        self.session.vhost.delete_exchange(exchange, if_unused, self.session.access)
        if not nowait:
            self._reply(ch, "exchange.delete-ok")

    def exchange_bind(self, ch: int, _r: int, destination: str, source: str, routing_key: str, nowait: bool,
                      arguments: dict[str, Any]) -> None:
        self._channel(ch)
        self.session.vhost.bind_exchange(destination, source, routing_key, arguments, self.session.access)
        if not nowait:
            self._reply(ch, "exchange.bind-ok")

    def exchange_unbind(self, ch: int, _r: int, destination: str, source: str, routing_key: str,
                        nowait: bool, arguments: dict[str, Any]) -> None:
        self._channel(ch)
        self.session.vhost.unbind_exchange(destination, source, routing_key, arguments, self.session.access)
        if not nowait:
            self._reply(ch, "exchange.unbind-ok")

    # --- queue class ---

    def _check_read(self, queue: str) -> None:
        """basic.get, basic.consume and queue.purge need read on the queue, checked before it is looked up."""
        if self.session.access is not None:
            self.session.access.read("queue", queue)

    def _queue_name(self, channel: Channel, name: str) -> str:
        if name:
            return name
        if not channel.last_queue:
            raise errors.NotFound("no previously declared queue")
        return channel.last_queue

    def queue_declare(self, ch: int, _r: int, queue: str, passive: bool, durable: bool, exclusive: bool,
                      auto_delete: bool, nowait: bool, arguments: dict[str, Any]) -> None:
        channel = self._channel(ch)
        if passive and queue == REPLY_TO:
            if not nowait:
                self._reply(ch, "queue.declare-ok", queue, 0, 1 if channel.reply_queue is not None else 0)
            return
        if passive and queue.startswith(REPLY_TO + ".") and (
                queue in self.broker.reply_queues or self.session.vhost.remote_replies.route(queue) is not None):
            if not nowait:  # a broker-issued reply address whose consumer (several nodes: node) is alive
                self._reply(ch, "queue.declare-ok", queue, 0, 1)
            return
        q = self.session.vhost.declare_queue(self.session, queue, passive=passive, durable=durable,
                                             exclusive=exclusive, auto_delete=auto_delete, arguments=arguments,
                                             access=self.session.access)
        channel.last_queue = q.name
        if nowait:
            return
        if q.served_by is not None and channel.relays:  # another node's queue: its counts are the owner's
            assert self.broker.remote is not None
            self.broker.remote.counts(channel, q, functools.partial(self._relayed_declare, ch, channel, q.name))
            return
        self._reply(ch, "queue.declare-ok", q.name, q.message_count, q.consumer_count)

    def _relayed_declare(self, ch: int, channel: Channel, name: str, counts: tuple[int, int] | BaseException) -> None:
        """queue.declare-ok of another node's queue with its owner's counts; without them (the owner did not
        answer), with none (0, 0) rather than an error: the declaration itself succeeded here."""
        if channel.closed:
            return
        messages, consumers = counts if isinstance(counts, tuple) else (0, 0)
        self._reply(ch, "queue.declare-ok", name, messages, consumers)
        self._schedule_flush()

    def queue_bind(self, ch: int, _r: int, queue: str, exchange: str, routing_key: str, nowait: bool,
                   arguments: dict[str, Any]) -> None:
        channel = self._channel(ch)
        if not queue and not routing_key:
            routing_key = self._queue_name(channel, "")
        queue = self._queue_name(channel, queue)
        self.session.vhost.bind_queue(queue, exchange, routing_key, arguments, self.session, self.session.access)
        if not nowait:
            self._reply(ch, "queue.bind-ok")

    def queue_unbind(self, ch: int, _r: int, queue: str, exchange: str, routing_key: str,
                     arguments: dict[str, Any]) -> None:
        channel = self._channel(ch)
        if not queue and not routing_key:
            routing_key = self._queue_name(channel, "")
        queue = self._queue_name(channel, queue)
        self.session.vhost.unbind_queue(queue, exchange, routing_key, arguments, self.session, self.session.access)
        self._reply(ch, "queue.unbind-ok")

    def queue_purge(self, ch: int, _r: int, queue: str, nowait: bool) -> None:
        channel = self._channel(ch)
        name = self._queue_name(channel, queue)
        self._check_read(name)
        q = self.session.vhost.queue(name, self.session)
        if q.served_by is not None and channel.relays:  # another node's queue: purged there (server/relay.py)
            assert self.broker.remote is not None
            self.broker.remote.purge(channel, q, functools.partial(self._relayed_purge, ch, channel, nowait))
            return
        count = q.purge()
        if not nowait:
            self._reply(ch, "queue.purge-ok", count)

    def _relayed_purge(self, ch: int, channel: Channel, nowait: bool, count: int | BaseException) -> None:
        if channel.closed:
            return
        if isinstance(count, Exception):
            self._fail(ch, count, spec.CLASS_QUEUE, 30)
        elif not nowait:
            self._reply(ch, "queue.purge-ok", count)
        self._schedule_flush()

    def queue_delete(self, ch: int, _r: int, queue: str, if_unused: bool, if_empty: bool,
                     nowait: bool) -> None:
        """queue.delete-ok goes out before the basic.cancel of this connection's consumers of the queue, as
        RabbitMQ sends them (its queue tells the channels after the delete has returned)."""
        channel = self._channel(ch)
        held: list[tuple[int, str]] = []
        self._held_cancels = held
        try:
            count = self.session.vhost.delete_queue(self._queue_name(channel, queue), self.session, if_unused,
                                                    if_empty, self.session.access)
            if not nowait:
                self._reply(ch, "queue.delete-ok", count)
        finally:
            self._held_cancels = None
            for number, tag in held:
                self.send_cancel(number, tag)

    # --- basic class ---

    def basic_qos(self, ch: int, prefetch_size: int, prefetch_count: int, global_: bool) -> None:
        self._channel(ch).qos(prefetch_size, prefetch_count, global_)
        self._reply(ch, "basic.qos-ok")

    def basic_consume(self, ch: int, _r: int, queue: str, consumer_tag: str, no_local: bool, no_ack: bool,
                      exclusive: bool, nowait: bool, arguments: dict[str, Any]) -> None:
        channel = self._channel(ch)
        if queue == REPLY_TO:
            consumer = channel.consume_reply(consumer_tag, no_ack)
            q = consumer.queue
        else:
            name = self._queue_name(channel, queue)
            self._check_read(name)
            q = self.session.vhost.queue(name, self.session)
            consumer = channel.consume(q, consumer_tag, no_ack=no_ack, exclusive=exclusive, arguments=arguments)
            if q.served_by is not None:  # another node's queue: relayed there (server/relay.py); consume-ok (or
                assert self.broker.remote is not None  # the owner's refusal) once the owner answered
                self.broker.remote.consume(consumer, functools.partial(self._relayed_consume, ch, channel, consumer,
                                                                       nowait))
                return
        if not nowait:
            self._reply(ch, "basic.consume-ok", consumer.tag)
        q.add_consumer(consumer)

    def _relayed_consume(self, ch: int, channel: Channel, consumer: Consumer, nowait: bool,
                         exc: BaseException | None) -> None:
        if channel.closed or channel.consumers.get(consumer.tag) is not consumer:
            return
        if isinstance(exc, Exception):
            channel.consumers.pop(consumer.tag, None)
            self._fail(ch, exc, spec.CLASS_BASIC, 20)
        elif not nowait:
            self._reply(ch, "basic.consume-ok", consumer.tag)
        self._schedule_flush()

    def basic_cancel(self, ch: int, consumer_tag: str, nowait: bool) -> None:
        self._channel(ch).cancel(consumer_tag)
        if not nowait:
            self._reply(ch, "basic.cancel-ok", consumer_tag)

    def basic_get(self, ch: int, _r: int, queue: str, no_ack: bool) -> None:
        channel = self._channel(ch)
        name = self._queue_name(channel, queue)
        self._check_read(name)
        q = self.session.vhost.queue(name, self.session)
        if q.served_by is not None and channel.relays:  # another node's queue: got there (server/relay.py)
            assert self.broker.remote is not None
            self.broker.remote.get(channel, q, no_ack, functools.partial(self._relayed_get, ch, channel, no_ack))
            return
        got = channel.get(q, no_ack)
        if got is None:
            self._reply(ch, "basic.get-empty", "")
            return
        tag, msg = got
        self.conn.send_content(ch, _GET_OK, (tag, msg.redelivered, msg.exchange, msg.routing_key, q.message_count),
                               msg.header, msg.body)

    def _relayed_get(self, ch: int, channel: Channel, no_ack: bool, got: GetResult | BaseException | None) -> None:
        if channel.closed:
            if isinstance(got, tuple) and not no_ack:
                got[0].settle([got[1]], True)  # the client is gone: back to the queue on the owner
            return
        if isinstance(got, Exception):
            self._fail(ch, got, spec.CLASS_BASIC, 70)
        elif got is None or isinstance(got, BaseException):
            self._reply(ch, "basic.get-empty", "")
        else:
            tag, msg = channel.got_remote(got, no_ack)
            self.conn.send_content(ch, _GET_OK, (tag, msg.redelivered, msg.exchange, msg.routing_key, got[7]),
                                   msg.header, msg.body)
        self._schedule_flush()

    def basic_ack(self, ch: int, delivery_tag: int, multiple: bool) -> None:
        self._channel(ch).ack(delivery_tag, multiple)

    def basic_reject(self, ch: int, delivery_tag: int, requeue: bool) -> None:
        self._channel(ch).reject(delivery_tag, False, requeue)

    def basic_nack(self, ch: int, delivery_tag: int, multiple: bool, requeue: bool) -> None:
        self._channel(ch).reject(delivery_tag, multiple, requeue)

    def basic_recover_async(self, ch: int, requeue: bool) -> None:
        self._channel(ch).recover(requeue)

    def basic_recover(self, ch: int, requeue: bool) -> None:
        self._channel(ch).recover(requeue)
        self._reply(ch, "basic.recover-ok")

    # --- confirm and tx classes ---

    def confirm_select(self, ch: int, nowait: bool) -> None:
        self._channel(ch).select_confirm()
        if not nowait:
            self._reply(ch, "confirm.select-ok")

    def tx_select(self, ch: int) -> None:
        self._channel(ch).select_tx()
        self._reply(ch, "tx.select-ok")

    def tx_commit(self, ch: int) -> None:
        self._channel(ch).commit()
        self.session.after_durable(functools.partial(self._tx_committed, ch))

    def _tx_committed(self, ch: int, exc: BaseException | None) -> None:
        # a method and a partial, not a closure: mypyc (setup.py) fails on closures in a non-native class's methods
        if exc is not None:
            self.close(spec.INTERNAL_ERROR, f"INTERNAL_ERROR - could not write the transaction: {exc}",
                       spec.CLASS_TX, 20)
            return
        if ch in self.session.channels:
            self._reply(ch, "tx.commit-ok")
            self._schedule_flush()

    def tx_rollback(self, ch: int) -> None:
        self._channel(ch).rollback()
        self._reply(ch, "tx.rollback-ok")
