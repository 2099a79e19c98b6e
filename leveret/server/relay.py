"""Consuming through any node (docs/cluster.md): the relay of consumes, gets and purges of queues another node
serves to that node, over internal AMQP links. It implements the core's port ``leveret.core.remote.Remote``.

A link is an AMQP connection (server/link.py, on Leveret's own codec) from this node to the queue's owner, at the
address the owner recorded in the store's ``nodes`` table, logged in as the reserved user ``leveret.cluster`` with
the cluster secret the store keeps (the owner accepts it only with that secret and only with ``cluster = true``).
There is one link per client connection and owner (opened at the client's first relayed consume, get or purge;
closed with the client's connection), and on it:

- one link channel per relayed consumer (:class:`Relayed`): its qos is the consumer's prefetch (its channel's
  prefetch at consume time, else the channel-wide one; none for no-ack), then basic.consume with the client's tag,
  no-ack, exclusive and arguments. Each delivery goes to the client with the client's own channel's next delivery
  tag, the redelivered flag, exchange, routing key, content header and body as the owner sent them, byte for byte
  (``Channel.deliver_remote``); while the client's connection takes no more, the link is not read (back-pressure).
  The client's acks, rejects and nacks (``multiple`` too) come back through :meth:`Relaying.settle` with the
  link's tags (one ``multiple`` frame where it covers exactly the same deliveries). The client's basic.cancel
  cancels the link's consumer; its link channel closes once nothing it delivered is unacked;
- one link channel per client channel for its relayed basic.get and queue.purge (:class:`Getter`).

When the link channel or connection fails, or the owner cancels the consumer (its queue was deleted, the owner
stops), the client is told: basic.cancel when it announced ``consumer_cancel_notify``, else its channel is
closed (320). What a closed link channel held unacked returns to the queue on the owner, marked redelivered, as for
any closed channel there: so does what a client that disconnects held, and what this node held when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret.amqp import spec
from leveret.core import errors
from leveret.core.remote import CLUSTER_USER, GetResult, owner_address, refuse_remote

from . import link as amqp_link

if TYPE_CHECKING:
    from leveret.core.broker import Broker, Session
    from leveret.core.channel import Channel
    from leveret.core.consumer import Consumer
    from leveret.core.queue import Queue

log = logging.getLogger("leveret.relay")

LINK_HEARTBEAT = 10  # seconds: a link whose owner went silent is given up after about twice that
CONNECT_TIMEOUT = 5.0
_ERRORS: dict[int, type[errors.BrokerError]] = {
    spec.NOT_FOUND: errors.NotFound, spec.ACCESS_REFUSED: errors.AccessRefused,
    spec.RESOURCE_LOCKED: errors.ResourceLocked, spec.PRECONDITION_FAILED: errors.PreconditionFailed,
}


def core_error(exc: BaseException, queue: Queue) -> errors.BrokerError:
    """The owner's refusal as the core's error (its reply code and text), or a lost link as 405 naming the owner."""
    if isinstance(exc, amqp_link.LinkError) and exc.code in _ERRORS:
        return _ERRORS[exc.code](str(exc.text).partition(" - ")[2] or str(exc.text))
    return errors.ResourceLocked(f"queue '{queue.name}' in vhost '{queue.vhost.name}' is served by node "
                                 f"'{queue.served_by}', and the link to it failed: {type(exc).__name__}: {exc}")


class Relay:
    """This node's links to the owners of the queues it does not serve (``Broker.remote``)."""

    def __init__(self, broker: Broker, secret: str) -> None:
        self.broker = broker
        self.secret = secret
        self.links: dict[tuple[Session, str], Link] = {}  # (client connection, owner) -> its link
        self.getters: dict[Channel, Getter] = {}  # a client channel -> the link channel of its gets and purges
        self.relayed: set[Relayed] = set()

    # --- the port (leveret.core.remote.Remote) ------------------------------------------------------

    def consume(self, consumer: Consumer, done: Callable[[BaseException | None], None]) -> None:
        link = self._link(consumer.channel.session, consumer.queue, consumer)
        relayed = Relayed(self, link, consumer, done)
        consumer.link = relayed
        self.relayed.add(relayed)

    def cancel(self, consumer: Consumer) -> None:
        relayed = consumer.link
        if isinstance(relayed, Relayed):
            relayed.cancel()

    def get(self, channel: Channel, queue: Queue, no_ack: bool,
            done: Callable[[GetResult | BaseException | None], None]) -> None:
        getter = self._getter(channel, queue)
        getter.run(getter.get(queue, no_ack), done)

    def purge(self, channel: Channel | None, queue: Queue, done: Callable[[int | BaseException], None]) -> None:
        if channel is not None:
            getter = self._getter(channel, queue)
            getter.run(getter.purge(queue), done)
            return
        getter = self._one_shot(queue, "purge")

        async def run() -> int:
            try:
                return await getter.purge(queue)
            finally:
                getter.link.close()

        getter.run(run(), done)

    def counts(self, channel: Channel, queue: Queue, done: Callable[[tuple[int, int] | BaseException], None]) -> None:
        if owner_address(queue) is None:  # the owner is down (its queue not taken over yet): the declaration stands
            done((queue.message_count, queue.consumer_count))
            return
        getter = self._getter(channel, queue)
        getter.run(getter.counts(queue), done)

    def _one_shot(self, queue: Queue, what: str) -> Getter:
        """A link channel on a link of its own (the management API's or leveret ctl's request; the caller closes
        the link)."""
        found = owner_address(queue)
        if found is None:
            refuse_remote(queue)
        owner, address = found
        return Getter(Link(self, queue.vhost.name, f"a {what} of the management API of {self.broker.node_name}",
                           owner, address))

    def get_many(self, queue: Queue, count: int, requeue: bool | None,
                 done: Callable[[list[GetResult] | BaseException], None]) -> None:
        getter = self._one_shot(queue, "get")
        link = getter.link

        async def run() -> list[GetResult]:
            try:
                got: list[GetResult] = []
                for _ in range(count):
                    one = await getter.get(queue, False)
                    if one is None:
                        break
                    got.append(one)
                if got:
                    getter.settle([one[1] for one in got], requeue)
                    await getter.drained()
                return got
            finally:
                link.close()

        getter.run(run(), done)

    def channel_closed(self, channel: Channel) -> None:
        getter = self.getters.pop(channel, None)
        if getter is not None:
            getter.close()

    def session_closed(self, session: Session) -> None:
        for key in [key for key in self.links if key[0] is session]:
            self.links.pop(key).close()

    def writable(self, channel: Channel) -> None:
        for (session, _owner), link in self.links.items():
            if session is channel.session:
                link.resume()

    def taken_over(self, queue: Queue) -> None:
        for relayed in [r for r in self.relayed if r.consumer.queue is queue]:
            log.info("queue '%s' in vhost '%s' is served here now: its relayed consumer %s is cancelled (the "
                     "client consumes again, here)", queue.name, queue.vhost.name, relayed.consumer.tag)
            relayed.fail()

    # --- links --------------------------------------------------------------------------------------

    def _link(self, session: Session, queue: Queue, consumer: Consumer | None = None) -> Link:
        found = owner_address(queue)
        if found is None:  # the owner is down or has not told where it listens
            if consumer is not None:
                consumer.channel.consumers.pop(consumer.tag, None)
            refuse_remote(queue)
        owner, address = found
        link = self.links.get((session, owner))
        if link is None or not link.usable:
            link = self.links[(session, owner)] = Link(self, session.vhost.name, f"{session.peer}", owner, address)
        return link

    def _getter(self, channel: Channel, queue: Queue) -> Getter:
        link = self._link(channel.session, queue)
        getter = self.getters.get(channel)
        if getter is None or getter.link is not link or getter.broken:
            if getter is not None:
                getter.close()
            getter = self.getters[channel] = Getter(link)
        return getter

    def client_lost(self, consumer: Consumer, why: str) -> None:
        """A relayed consumer ended on the owner's side (or this node took its queue over): the client is told with
        basic.cancel (consumer_cancel_notify), or its channel closes (320)."""
        channel = consumer.channel
        if channel.closed or channel.consumers.get(consumer.tag) is not consumer:
            return
        if channel.session.cancel_notify:
            channel.server_cancel(consumer)
            return
        channel.consumers.pop(consumer.tag, None)
        close_channel = getattr(channel.sink, "close_channel", None)
        if close_channel is not None:
            close_channel(channel.number, spec.CONNECTION_FORCED, why)
        else:
            channel.sink.force_close(why)


class Link:
    """One AMQP connection to an owner for one client connection (see the module docstring)."""

    def __init__(self, relay: Relay, vhost: str, client: str, owner: str, address: str) -> None:
        self.relay = relay
        self.owner = owner
        self.closed = False
        self.conn: amqp_link.LinkConnection | None = None
        self.paused = False
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.vhost = vhost
        self.name = f"link of {client} from {relay.broker.node_name}"
        self.ready: asyncio.Task[amqp_link.LinkConnection] = asyncio.get_running_loop().create_task(self._connect())
        self.ready.add_done_callback(lambda task: task.cancelled() or task.exception())  # its waiters report it

    async def _connect(self) -> amqp_link.LinkConnection:
        conn = await amqp_link.connect(self.host, self.port, CLUSTER_USER, self.relay.secret, self.vhost, self.name,
                                       LINK_HEARTBEAT, CONNECT_TIMEOUT)
        self.conn = conn
        if self.closed:
            conn.close()
            raise ConnectionError("the client closed its connection")
        conn.on_close = lambda error: self._lost()
        return conn

    def pause(self) -> None:
        """Read nothing more from the owner until :meth:`resume` (the client's connection is not writable): the
        owner's socket fills and it stops delivering to this link, as it would to a slow client of its own."""
        if not self.paused and self.conn is not None and self.conn.transport is not None:
            self.paused = True
            self.conn.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.conn is not None and self.conn.transport is not None and not self.conn.is_closed:
            self.paused = False
            self.conn.transport.resume_reading()

    @property
    def usable(self) -> bool:
        """Open, or opening: not closed, lost, nor failed to open (the next relayed request opens a new link)."""
        ready = self.ready
        return not self.closed and not (ready.done() and (ready.cancelled() or ready.exception() is not None))

    async def channel(self) -> amqp_link.LinkChannel:
        conn = await self.ready
        return await conn.channel()

    def _lost(self) -> None:
        if not self.closed:
            log.warning("the link to node %s was lost", self.owner)
        self.closed = True

    def close(self) -> None:
        """The client's connection closed: so does the link (the owner requeues what it delivered unacked)."""
        self.closed = True
        if self.conn is not None:
            self.conn.close()
        else:
            self.ready.cancel()


async def _quietly(coro: Any) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await coro


class Relaying:
    """A link channel and the deliveries it made that are not settled yet (``leveret.core.remote.RemoteLink``)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.channel: amqp_link.LinkChannel | None = None
        self.outstanding: set[int] = set()
        self.broken = False

    def settle(self, tags: list[int], requeue: bool | None) -> None:
        channel = self.channel
        present = [tag for tag in tags if tag in self.outstanding]
        self.outstanding.difference_update(present)
        if channel is None or channel.is_closed or not present:
            return  # a closed link channel's deliveries went back to the queue on the owner (redelivered)
        top = present[-1]
        if len(present) > 1 and not any(tag < top for tag in self.outstanding):
            self._send(top, True, requeue)
        else:
            for tag in present:
                self._send(tag, False, requeue)
        self.settled()

    def _send(self, tag: int, multiple: bool, requeue: bool | None) -> None:
        assert self.channel is not None
        if requeue is None:
            self.channel.send("basic.ack", (tag, multiple))
        else:
            self.channel.send("basic.nack", (tag, multiple, requeue))

    def settled(self) -> None:
        """Called after a settle: a cancelled consumer's link channel closes once nothing is unacked."""

    def close(self) -> None:
        self.broken = True
        channel, self.channel = self.channel, None
        if channel is not None and not channel.is_closed:
            asyncio.get_running_loop().create_task(_quietly(channel.close()))


class Relayed(Relaying):
    """One relayed consumer: its link channel, its qos and basic.consume on the owner, its deliveries."""

    def __init__(self, relay: Relay, link: Link, consumer: Consumer,
                 done: Callable[[BaseException | None], None]) -> None:
        super().__init__(link)
        self.relay = relay
        self.consumer = consumer
        self.done: Callable[[BaseException | None], None] | None = done
        self.cancelled = False
        asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        consumer = self.consumer
        queue = consumer.queue
        try:
            channel = await self.link.channel()
            self.channel = channel
            if self.cancelled:
                self.close()
                return
            channel.on_close = lambda error: self._closed()
            channel.on_cancel = self._on_cancel
            channel.on_deliver = self._on_deliver
            prefetch = consumer.prefetch or consumer.channel.global_prefetch
            if prefetch and not consumer.no_ack:
                await channel.call("basic.qos", (0, min(prefetch, 65535), False))
            await channel.call("basic.consume", (0, queue.name, consumer.tag, False, consumer.no_ack,
                                                 consumer.exclusive, False, consumer.arguments or {}))
        except (Exception, asyncio.CancelledError) as exc:  # cancelled: the link closed before it opened
            self.cancelled = True
            self._answer(core_error(exc, queue))
            self.close()
            self.relay.relayed.discard(self)
            return
        self._answer(None)
        if self.cancelled:  # cancelled by the client while the owner was asked
            self._cancel_on_owner()

    def _answer(self, exc: BaseException | None) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(exc)

    def _on_deliver(self, args: tuple[Any, ...], header: bytes, body: bytes) -> None:
        self._answer(None)  # consume-ok before the first delivery
        _tag, tag, redelivered, exchange, routing_key = args
        consumer = self.consumer
        sent = not self.cancelled and consumer.channel.deliver_remote(consumer, self, tag, redelivered, exchange,
                                                                      routing_key, header, body)
        if sent:
            if not consumer.no_ack:
                self.outstanding.add(tag)
            if not consumer.channel.deliverable:  # back-pressure: the client's connection takes no more for now
                self.link.pause()
        elif not consumer.no_ack and self.channel is not None and not self.channel.is_closed:
            self._send(tag, False, True)  # the client is gone: back to the queue on the owner

    def _on_cancel(self, tag: str) -> None:
        """The owner cancelled the consumer (its queue was deleted, or it stops)."""
        self.fail(f"queue '{self.consumer.queue.name}' is no longer served through node {self.link.owner}")

    def _closed(self) -> None:
        if not self.cancelled and self.done is None:  # before consume-ok: _start answers with the owner's error
            self.fail(f"the link to node {self.link.owner} that serves queue '{self.consumer.queue.name}' was lost")

    def fail(self, why: str = "") -> None:
        """The consumer ends here: the client is told (Relay.client_lost), the link channel closes."""
        if self.cancelled:
            return
        self.cancelled = True
        self.relay.relayed.discard(self)
        if self.done is not None:
            self._answer(errors.ResourceLocked(why or "the link to the queue's owner failed"))
        else:
            self.relay.client_lost(self.consumer, why or f"the relayed consumer {self.consumer.tag} ended")
        self.close()

    def cancel(self) -> None:
        """The client cancelled (or closed its channel): cancel on the owner; what the client holds unacked stays
        ackable until it is settled (or its channel closes, which closes the link channel: requeued there)."""
        if self.cancelled:
            return
        self.cancelled = True
        self.relay.relayed.discard(self)
        if self.done is None:
            self._cancel_on_owner()

    def _cancel_on_owner(self) -> None:
        channel = self.channel
        if channel is None or channel.is_closed:
            return
        if self.consumer.channel.closed or not self.outstanding:
            self.close()
            return
        asyncio.get_running_loop().create_task(_quietly(channel.call("basic.cancel", (self.consumer.tag, False))))

    def settled(self) -> None:
        if self.cancelled and not self.outstanding:
            self.close()



class Getter(Relaying):
    """The link channel of one client channel's relayed basic.get and queue.purge."""

    def run(self, coro: Any, done: Callable[[Any], None]) -> None:
        async def run() -> None:
            try:
                result = await coro
            except (Exception, asyncio.CancelledError) as exc:  # cancelled: the link closed before it opened
                self.broken = True
                done(core_error(exc, queue=self._queue))
                return
            done(result)

        asyncio.get_running_loop().create_task(run())

    _queue: Queue

    async def _channel(self) -> amqp_link.LinkChannel:
        if self.channel is None:
            self.channel = await self.link.channel()
        return self.channel

    async def get(self, queue: Queue, no_ack: bool) -> GetResult | None:
        self._queue = queue
        channel = await self._channel()
        answer = await channel.call("basic.get", (0, queue.name, no_ack))
        if answer[0] != "basic.get-ok":
            return None
        (tag, redelivered, exchange, routing_key, count), header, body = answer[1], answer[2], answer[3]
        if not no_ack:
            self.outstanding.add(tag)
        return self, tag, redelivered, exchange, routing_key, header, body, count

    async def drained(self) -> None:
        """Wait until the frames sent so far are on their way (a round trip: basic.qos)."""
        channel = await self._channel()
        await channel.call("basic.qos", (0, 0, False))

    async def counts(self, queue: Queue) -> tuple[int, int]:
        """A passive queue.declare on the owner: its (message count, consumer count)."""
        self._queue = queue
        channel = await self._channel()
        answer = await channel.call("queue.declare", (0, queue.name, True, False, False, False, False, {}))
        return int(answer[1][1]), int(answer[1][2])

    async def purge(self, queue: Queue) -> int:
        self._queue = queue
        channel = await self._channel()
        answer = await channel.call("queue.purge", (0, queue.name, False))
        return int(answer[1][0])
