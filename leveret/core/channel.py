"""A channel's broker-side state: its consumers, unacked deliveries, prefetch, confirms and transactions.

The channel talks back to its connection through a :class:`Sink` (the protocol adapter), never in frames.
Errors are raised as :mod:`leveret.core.errors` exceptions.
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from leveret.amqp.fields import field_type

from .errors import AccessRefused, NotAllowed, NotImplementedFeature, PreconditionFailed
from .message import NOTIFY, Message, build_address
from .queue import Consumer, Queue
from .remote import CLUSTER_USER, GetResult, RemoteLink, RemoteMessage, refuse_remote
from .replies import REPLY_TO, reply_address
from .routing import Peer, validate
from .tracking import MESSAGE_ID, Tracker

if TYPE_CHECKING:
    from .exchanges import Exchange
    from .session import Session
    from .vhost import VHost


class Sink(Protocol):
    """How the core talks back to a client connection (implemented by the protocol adapter)."""

    def send_deliver(self, channel: int, consumer_tag: bytes, delivery_tag: int, redelivered: bool,
                     address: bytes, header: bytes, body: bytes) -> None: ...

    def send_return(self, channel: int, reply_code: int, reply_text: str, msg: Message) -> None: ...

    def send_confirm(self, channel: int, delivery_tag: int, multiple: bool, ack: bool) -> None: ...

    def send_cancel(self, channel: int, consumer_tag: str) -> None: ...

    def force_close(self, reason: str) -> None:
        """Close the whole connection on an operator's request (AMQP: 320 CONNECTION_FORCED with ``reason``)."""


NO_ROUTE = 312
_REPLY_TO_FLAG = 0x0200
_USER_ID_FLAG = 0x0010
_VALIDATED_FLAGS = 0x0100 | 0x2000  # expiration, headers: leveret.core.routing.validate


_tag_counter = itertools.count(1)


class Channel:
    """One open channel of a session. ``number`` is its channel id on the connection."""

    def __init__(self, session: Session, number: int) -> None:
        self.session = session
        self.number = number
        self.sink: Sink = session.sink
        self.next_tag = 1
        self.unacked: OrderedDict[int, Message] = OrderedDict()
        self.prefetch = 0
        self.global_prefetch = 0
        self.limited = 0  # ack-required consumer deliveries not yet settled: what basic.qos global=true limits
        self._kick_from = 0  # where the next kick starts among the consumers, so that queues take turns
        self.consumers: dict[str, Consumer] = {}
        self.confirm = False
        self.publish_seq = 0
        self._confirmed_upto = 0
        self._confirm_requested = 0
        self._nacks: list[int] = []
        self.tx: list[Callable[[], None]] | None = None
        self.tx_taken: list[tuple[int, Message]] = []  # acked/rejected in the open transaction, not yet settled
        self.active = True
        self.deliverable = session.writable
        self.last_queue = ""
        self.closed = False
        self.reply_queue: Queue | None = None
        self.tracker: Tracker | None = session.broker.tracker
        user = session.user
        self.origin = Peer(session.peer, user.name if user is not None else "", number)

    # --- flow --------------------------------------------------------------------------------------

    def set_writable(self, writable: bool) -> None:
        self.deliverable = writable and self.active
        if self.deliverable:
            self.kick()
            remote = self.session.broker.remote
            if remote is not None:  # relayed no-ack consumers (core/remote.py)
                remote.writable(self)

    def kick(self, consumers: Any = None) -> None:
        """Let the queues of this channel's consumers deliver again (credit was freed). With every consumer, the
        first one asked moves on each time, so that queues sharing a channel-wide limit take turns (RabbitMQ
        wakes them in random order)."""
        if consumers is None:
            consumers = list(self.consumers.values())
            if len(consumers) > 1:
                start = self._kick_from % len(consumers)
                self._kick_from = start + 1
                consumers = consumers[start:] + consumers[:start]
        for consumer in list(consumers):
            queue = consumer.queue
            if queue.messages and not queue.deleted:
                queue.dispatch()

    # --- delivery ----------------------------------------------------------------------------------

    def deliver(self, consumer: Consumer, msg: Message) -> None:
        """Called by a queue: send ``msg`` to ``consumer`` and, unless no-ack, hold it until acked."""
        tag = self.next_tag
        self.next_tag = tag + 1
        queue = consumer.queue
        queue.hand_out(msg, not consumer.no_ack)
        if not consumer.no_ack:
            msg.consumer = consumer
            consumer.unacked += 1
            self.limited += 1
            self.unacked[tag] = msg
        self.sink.send_deliver(self.number, consumer.tag_bytes, tag, msg.redelivered, msg.address, msg.header,
                               msg.body)
        if msg.flags & MESSAGE_ID and self.tracker is not None:
            self.tracker.record(queue.vhost.name, msg, "delivered", queue.name, consumer.tag, self.session.peer,
                                self.number, msg.redelivered, not consumer.no_ack)
        tracer = queue.vhost.tracer
        if tracer is not None:
            tracer.delivered(queue, msg, self.origin)

    def get(self, queue: Queue, no_ack: bool) -> tuple[int, Message] | None:
        """basic.get: the delivery tag and message, or None when the queue is empty."""
        msg = queue.get()
        if msg is None:
            return None
        tag = self.next_tag
        self.next_tag = tag + 1
        queue.hand_out(msg, not no_ack)
        if not no_ack:
            self.unacked[tag] = msg
        if msg.flags & MESSAGE_ID and self.tracker is not None:
            self.tracker.record(queue.vhost.name, msg, "got", queue.name, self.session.peer, self.number,
                                msg.redelivered, not no_ack)
        if queue.vhost.tracer is not None:
            queue.vhost.tracer.delivered(queue, msg, self.origin)
        return tag, msg

    def consume(self, queue: Queue, tag: str, *, no_ack: bool, exclusive: bool,
                arguments: dict[str, Any]) -> Consumer:
        """basic.consume: the consumer, registered on this channel. For a queue another node serves (relayed:
        core/remote.py) it is not added to the queue: the caller hands it to ``Broker.remote``."""
        if queue.served_by is not None and not self.relays:
            refuse_remote(queue)
        if not tag:
            tag = f"amq.ctag-{secrets.token_urlsafe(16)}"
        if tag in self.consumers:
            raise NotAllowed(f"attempt to reuse consumer tag '{tag}'")
        priority = arguments.get("x-priority") if arguments else None
        if (priority is not None or (arguments and "x-priority" in arguments)) and (
                isinstance(priority, bool) or not isinstance(priority, int)):  # void too, as RabbitMQ
            raise PreconditionFailed(f"invalid arg 'x-priority' for queue '{queue.name}' in vhost "
                                     f"'{queue.vhost.name}': \"expected integer, got {field_type(priority)}\"")
        if (exclusive and queue.settings.single_active_consumer) or (
                queue.consumers and (exclusive or any(c.exclusive for c in queue.consumers))):
            raise AccessRefused(f"queue '{queue.name}' in vhost '{queue.vhost.name}' in exclusive use")
        consumer = Consumer(tag, queue, self, no_ack=no_ack, exclusive=exclusive, prefetch=self.prefetch,
                            arguments=arguments)
        if priority:
            consumer.priority = priority
        self.consumers[tag] = consumer
        return consumer

    @property
    def relays(self) -> bool:
        """Whether a consume, get or purge of another node's queue is relayed there (core/remote.py): the node has a
        link (``Broker.remote``), and this is not a link from another node itself (no chains)."""
        user = self.session.user
        return self.session.broker.remote is not None and (user is None or user.name != CLUSTER_USER)

    def deliver_remote(self, consumer: Consumer, link: RemoteLink, link_tag: int, redelivered: bool, exchange: str,
                       routing_key: str, header: bytes, body: bytes) -> bool:
        """A delivery of another node's queue to a relayed consumer (core/remote.py), sent with this channel's
        next delivery tag and, unless no-ack, held until the client settles it. False when the consumer is gone
        (cancelled, its channel closed): the caller gives the delivery back."""
        if self.closed or self.consumers.get(consumer.tag) is not consumer:
            return False
        tag = self.next_tag
        self.next_tag = tag + 1
        address = build_address(exchange, routing_key)
        if not consumer.no_ack:
            msg = RemoteMessage(exchange, routing_key, address, header, body, link, link_tag)
            msg.redelivered = redelivered
            msg.consumer = consumer
            consumer.unacked += 1
            self.limited += 1
            self.unacked[tag] = msg
        self.sink.send_deliver(self.number, consumer.tag_bytes, tag, redelivered, address, header, body)
        return True

    def got_remote(self, got: GetResult, no_ack: bool) -> tuple[int, Message]:
        """A relayed basic.get-ok (core/remote.py): this channel's delivery tag for it, and the message, held until
        the client settles it unless no-ack."""
        link, link_tag, redelivered, exchange, routing_key, header, body, _count = got
        tag = self.next_tag
        self.next_tag = tag + 1
        msg = RemoteMessage(exchange, routing_key, build_address(exchange, routing_key), header, body, link,
                            link_tag)
        msg.redelivered = redelivered
        if not no_ack:
            self.unacked[tag] = msg
        return tag, msg

    def consume_reply(self, tag: str, no_ack: bool) -> Consumer:
        """Direct reply-to: consume from the ``amq.rabbitmq.reply-to`` pseudo-queue (no-ack only). Replies
        published to this channel's reply address go straight to this consumer."""
        if not no_ack:
            raise PreconditionFailed("reply consumer cannot acknowledge")
        if self.reply_queue is not None:
            raise PreconditionFailed("reply consumer already set")
        vhost = self.session.vhost
        queue = Queue(vhost, reply_address(vhost.broker.node_name), exclusive_owner=self.session)
        consumer = self.consume(queue, tag, no_ack=True, exclusive=False, arguments={})
        self.reply_queue = queue
        vhost.broker.reply_queues[queue.name] = queue
        return consumer

    def cancel(self, tag: str) -> Consumer | None:
        """basic.cancel: stop the consumer; its unacked messages stay unacked. None if there was none."""
        consumer = self.consumers.pop(tag, None)
        if consumer is None:
            return None
        if consumer.queue is self.reply_queue:
            self.reply_queue.deleted = True
            self.session.broker.reply_queues.pop(self.reply_queue.name, None)
            self.reply_queue = None
            return consumer
        if consumer.link is not None:  # relayed: cancelled on the owner (core/remote.py)
            remote = self.session.broker.remote
            if remote is not None:
                remote.cancel(consumer)
            return consumer
        consumer.queue.vhost.remove_consumer(consumer)
        return consumer

    def qos(self, prefetch_size: int, prefetch_count: int, global_: bool) -> None:
        if prefetch_size:
            raise NotImplementedFeature(f"prefetch_size!=0 ({prefetch_size})")
        if global_:
            self.global_prefetch = prefetch_count
        else:
            self.prefetch = prefetch_count
        self.kick()

    # --- acknowledgements --------------------------------------------------------------------------

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        if self.tx is not None:
            self._take_in_tx(delivery_tag, multiple, None)
            return
        self._settle(self._take(delivery_tag, multiple), None)

    def reject(self, delivery_tag: int, multiple: bool, requeue: bool) -> None:
        """basic.reject and basic.nack: requeue, or drop (dead-letter) the messages."""
        if self.tx is not None:
            self._take_in_tx(delivery_tag, multiple, requeue)
            return
        self._settle(self._take(delivery_tag, multiple), requeue)

    def recover(self, requeue: bool) -> None:
        if not requeue:
            raise NotImplementedFeature("requeue=false")
        self._settle(self._take(0, True), True, "basic.recover")

    def _take_in_tx(self, tag: int, multiple: bool, requeue: bool | None) -> None:
        """An ack or reject inside a transaction, as RabbitMQ: the deliveries leave the unacked set now (a second
        ack of one is an unknown tag, basic.recover does not requeue them) and are settled at the commit; a
        rollback puts them back, a closed channel requeues them."""
        unacked = self.unacked
        if multiple:
            if tag and tag not in unacked:
                raise PreconditionFailed(f"unknown delivery tag {tag}")
            taken = [(key, msg) for key, msg in unacked.items() if not tag or key <= tag]
        else:
            msg = unacked.get(tag)
            if msg is None:
                raise PreconditionFailed(f"unknown delivery tag {tag}")
            taken = [(tag, msg)]
        for key, _msg in taken:
            del unacked[key]
        self.tx_taken.extend(taken)
        assert self.tx is not None
        self.tx.append(lambda: self._settle([msg for _key, msg in taken], requeue))

    def _take(self, tag: int, multiple: bool) -> list[Message]:
        unacked = self.unacked
        if not multiple:
            msg = unacked.pop(tag, None)
            if msg is None:
                raise PreconditionFailed(f"unknown delivery tag {tag}")
            return [msg]
        if tag == 0:
            msgs = list(unacked.values())
            unacked.clear()
            return msgs
        if tag not in unacked:
            raise PreconditionFailed(f"unknown delivery tag {tag}")
        msgs = []
        popitem = unacked.popitem
        while True:
            key, msg = popitem(last=False)
            msgs.append(msg)
            if key == tag:
                return msgs

    def _settle(self, msgs: list[Message], requeue: bool | None, cause: str = "") -> None:
        """Finish messages taken from ``unacked``: ack (requeue None), requeue, or drop. ``cause`` is a requeue
        that no reject asked for (channel closed, basic.recover), for message tracking."""
        tracker = self.tracker
        freed: set[Consumer] = set()
        by_queue: dict[Queue, list[Message]] = {}
        relayed: list[RemoteMessage] = []
        for msg in msgs:
            consumer = msg.consumer
            if consumer is not None:
                consumer.unacked -= 1
                self.limited -= 1
                freed.add(consumer)
                msg.consumer = None
            queue = msg.queue
            if queue is None or queue.deleted:
                if type(msg) is RemoteMessage:
                    relayed.append(msg)
                continue
            if msg.flags & MESSAGE_ID and tracker is not None:
                self._track_settle(tracker, queue, msg, requeue, cause)
            if requeue:
                by_queue.setdefault(queue, []).append(msg)
            elif requeue is None:
                queue.settle_unacked(msg)
            else:
                queue.drop_unacked(msg)
        for queue, queued in by_queue.items():
            queue.requeue(queued)
        if relayed:
            self._settle_relayed(relayed, requeue)
        if self.global_prefetch:
            self.kick()
        elif freed:
            self.kick(freed)

    @staticmethod
    def _settle_relayed(msgs: list[RemoteMessage], requeue: bool | None) -> None:
        """Relayed deliveries are settled on their owner, each link's in one call, in delivery order."""
        by_link: dict[RemoteLink, list[int]] = {}
        for msg in msgs:
            by_link.setdefault(msg.link, []).append(msg.link_tag)
        for link, tags in by_link.items():
            link.settle(sorted(tags), requeue)

    def _track_settle(self, tracker: Tracker, queue: Queue, msg: Message, requeue: bool | None, cause: str) -> None:
        peer = self.session.peer
        if requeue is None:
            tracker.record(queue.vhost.name, msg, "acked", queue.name, peer, self.number)
        elif cause:
            tracker.record(queue.vhost.name, msg, "requeued", queue.name, cause, peer, self.number)
        else:
            tracker.record(queue.vhost.name, msg, "rejected", queue.name, requeue, peer, self.number)

    # --- publishing --------------------------------------------------------------------------------

    def select_confirm(self) -> None:
        if self.tx is not None:
            raise PreconditionFailed("cannot switch from tx to confirm mode")
        self.confirm = True

    def select_tx(self) -> None:
        if self.confirm:
            raise PreconditionFailed("cannot switch from confirm to tx mode")
        if self.tx is None:
            self.tx = []

    def commit(self) -> None:
        if self.tx is None:
            raise PreconditionFailed("channel is not transactional")
        actions, self.tx = self.tx, []
        self.tx_taken = []
        for action in actions:
            action()

    def rollback(self) -> None:
        if self.tx is None:
            raise PreconditionFailed("channel is not transactional")
        self.tx = []
        self._untake()

    def _untake(self) -> None:
        """Acks and rejects of the open transaction are void: their deliveries are unacked again, in tag order."""
        if self.tx_taken:
            self.unacked = OrderedDict(sorted([*self.unacked.items(), *self.tx_taken], key=lambda item: item[0]))
            self.tx_taken = []

    def publish(self, msg: Message, mandatory: bool) -> bool | None:
        """basic.publish: check ``msg``, then publish it through the vhost's one publish entry
        (:meth:`~leveret.core.routing.Routing.publish`), or hold it until commit in a transaction; return it
        when it is mandatory and routed nowhere; confirm it in confirm mode (nacked when a queue refused it).
        Returns what the publish entry returned (False: a queue refused it; None: routed nowhere), True when held
        for a transaction's commit."""
        vhost = self.session.vhost
        access = self.session.access
        # write on the exchange, before it is looked up (RabbitMQ's order); checked again only when the exchange
        # differs from the last one allowed or the user's permissions changed since
        if access is not None and (msg.exchange != access.last_exchange or access.version != access.user.version):
            access.publish(msg.exchange)
        exchange = vhost.exchange_for_publish(msg.exchange)
        flags = msg.flags
        if flags & _USER_ID_FLAG:
            self._check_user_id(msg)
        if flags & NOTIFY and access is not None:  # its job-done notices go through the default exchange
            access.write("exchange", "")
        if flags & _VALIDATED_FLAGS:
            validate(msg)
        if flags & _REPLY_TO_FLAG and msg.properties.get("reply_to") == REPLY_TO:
            self._set_reply_address(msg)
        if self.tx is not None:
            self.tx.append(self._publish_at_commit(vhost, exchange, msg, mandatory))
            return True
        accepted = vhost.publish(exchange, msg, self.origin, mandatory=mandatory)
        if accepted is None and mandatory:
            self.sink.send_return(self.number, NO_ROUTE, "NO_ROUTE", msg)
        if self.confirm:
            self.publish_seq += 1
            if accepted is False:
                self._nacks.append(self.publish_seq)
            self.session.confirm_pending(self)
        return accepted

    def _publish_at_commit(self, vhost: VHost, exchange: Exchange, msg: Message, mandatory: bool) -> Callable[[], None]:
        """A transaction's deferred publish. Made here rather than as a closure in :meth:`publish`, whose locals
        would all become cell variables, slower on every publish (py-spy: ~10% of transient pubsub)."""
        def publish_at_commit() -> None:
            if vhost.publish(exchange, msg, self.origin, mandatory=mandatory) is None and mandatory:
                self.sink.send_return(self.number, NO_ROUTE, "NO_ROUTE", msg)

        return publish_at_commit

    def _check_user_id(self, msg: Message) -> None:
        user_id = msg.properties.get("user_id")
        user = self.session.user
        name = user.name if user is not None else ""
        if user_id != name and not (user is not None and "impersonator" in user.tags):
            raise PreconditionFailed(f"user_id property set to '{user_id}' but authenticated user was '{name}'")

    def _set_reply_address(self, msg: Message) -> None:
        if self.reply_queue is None:
            raise PreconditionFailed("fast reply consumer does not exist")
        props = dict(msg.properties)
        props["reply_to"] = self.reply_queue.name
        msg.set_properties(props)

    def confirms_due(self) -> Callable[[BaseException | None], None] | None:
        """A callback that confirms every publish so far (ack, or nack if the commit covering them failed),
        to be run once they are durable; None when there is nothing new to confirm."""
        seq = self.publish_seq
        if seq <= self._confirm_requested:
            return None
        self._confirm_requested = seq
        nacks, self._nacks = self._nacks, []

        def send(exc: BaseException | None) -> None:
            if self.closed or seq <= self._confirmed_upto:
                return
            for refused in nacks:  # publishes a queue refused (reject-publish): nacked one by one, in order
                if refused - 1 > self._confirmed_upto:
                    self.sink.send_confirm(self.number, refused - 1, refused - 1 - self._confirmed_upto > 1,
                                           exc is None)
                self.sink.send_confirm(self.number, refused, False, False)
                self._confirmed_upto = refused
            if seq > self._confirmed_upto:
                self.sink.send_confirm(self.number, seq, seq - self._confirmed_upto > 1, exc is None)
                self._confirmed_upto = seq

        return send

    # --- closing -----------------------------------------------------------------------------------

    def close(self) -> None:
        """The channel is gone: cancel its consumers and requeue what it held unacked, in order."""
        if self.closed:
            return
        self.closed = True
        self.deliverable = False
        self._untake()  # what the uncommitted transaction acked is requeued with the rest
        msgs = list(self.unacked.values())  # requeued before the consumers go, so that a queue's next
        self.unacked.clear()                # (single active) consumer gets them first, as in RabbitMQ
        self._settle(msgs, True, "channel closed")
        for tag in list(self.consumers):
            self.cancel(tag)
        remote = self.session.broker.remote
        if remote is not None:
            remote.channel_closed(self)

    def server_cancel(self, consumer: Consumer) -> None:
        """The consumed queue went away: forget the consumer and tell the client if it can hear it."""
        if self.consumers.pop(consumer.tag, None) is not None and self.session.cancel_notify:
            self.sink.send_cancel(self.number, consumer.tag)
