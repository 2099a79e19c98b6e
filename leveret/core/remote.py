"""Several nodes (docs/cluster.md): a queue another node serves (``Queue.served_by``), as this node sees it.

A consume, get or purge of such a queue is **relayed** to its owner when the node has a :class:`Remote` (the port;
implemented at the server level by leveret/server/relay.py, an internal AMQP link per client connection and owner,
so the core has no socket and no event loop), and refused with :func:`refuse_remote` otherwise.

What the core keeps of a relayed consumer: a :class:`~leveret.core.consumer.Consumer` in its channel's
``consumers`` (not in the queue's: the queue's messages are the owner's) whose ``link`` is the relay's handle, and
for each delivery that must be acked a :class:`RemoteMessage` in the channel's ``unacked`` under a delivery tag of
the client's own channel. Acks, rejects and nacks (``multiple`` too, in transactions too, and the requeue of a
closed channel) reach the owner through :meth:`RemoteLink.settle`, with the link's delivery tags.

The internal identity: the link logs in as :data:`CLUSTER_USER` with the cluster secret the store keeps (one for
all nodes of a store); ``users.internal_user`` is the user it gets: every vhost, every permission. A node accepts it
only when it runs with ``cluster = true`` and the secret matches; an ordinary user of that name never logs in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, Protocol

from .errors import ResourceLocked
from .message import Message
from .users import CLUSTER_USER as CLUSTER_USER  # the link's identity, checked in Users.authenticate

if TYPE_CHECKING:
    from .channel import Channel
    from .consumer import Consumer
    from .queue import Queue
    from .session import Session


class RemoteLink(Protocol):
    """The relay's side of one relayed consumer or of one channel's relayed gets: where acks go."""

    def settle(self, tags: list[int], requeue: bool | None) -> None:
        """Ack (``requeue`` None), requeue (True) or drop (False) the link's deliveries ``tags`` on the owner."""


GetResult = tuple[RemoteLink, int, bool, str, str, bytes, bytes, int]
"""A relayed basic.get-ok: the link, its delivery tag, redelivered, exchange, routing key, content header, body and
the owner's message count."""


class Remote(Protocol):
    """The port to the owners of other nodes' queues (a node with ``cluster = true`` sets ``Broker.remote``).
    Every call returns at once; outcomes come back on the broker's thread through the callbacks and through
    :meth:`Channel.deliver_remote <leveret.core.channel.Channel.deliver_remote>` (a delivery) and
    :meth:`Channel.server_cancel <leveret.core.channel.Channel.server_cancel>` (the consumer ended on the owner's
    side: the link failed, the owner cancelled it, or this node took the queue over)."""

    def consume(self, consumer: Consumer, done: Callable[[BaseException | None], None]) -> None:
        """Start ``consumer`` (``consumer.queue`` is another node's) on the owner: ``done(None)`` once the owner
        answered consume-ok, ``done(error)`` (a core error: the owner's refusal) otherwise."""

    def cancel(self, consumer: Consumer) -> None:
        """The client cancelled ``consumer`` (or its channel closed): cancel it on the owner."""

    def get(self, channel: Channel, queue: Queue, no_ack: bool,
            done: Callable[[GetResult | BaseException | None], None]) -> None:
        """basic.get on the owner: ``done(result)``, ``done(None)`` when the queue is empty, or an error."""

    def get_many(self, queue: Queue, count: int, requeue: bool | None,
                 done: Callable[[list[GetResult] | BaseException], None]) -> None:
        """The management API's get: up to ``count`` messages got on the owner, then all of them acked (``requeue``
        None), requeued (True) or dropped (False) there; ``done(results)`` (their links are spent) or an error."""

    def purge(self, channel: Channel | None, queue: Queue, done: Callable[[int | BaseException], None]) -> None:
        """queue.purge on the owner: ``done(count)`` or an error. ``channel`` None: not a client's (the management
        API, ``leveret ctl``): on a link of its own, closed after it."""

    def counts(self, channel: Channel, queue: Queue, done: Callable[[tuple[int, int] | BaseException], None]) -> None:
        """The owner's counts of ``queue`` for a queue.declare-ok through this node (a passive declare on the
        owner): ``done((messages, consumers))`` or an error; this node's own (none) when the owner is down."""

    def channel_closed(self, channel: Channel) -> None:
        """``channel`` closed: the link channel of its gets goes too (its unacked ones return to the queue)."""

    def session_closed(self, session: Session) -> None:
        """``session`` closed: its links close (whatever they held unacked returns to the queues, redelivered)."""

    def writable(self, channel: Channel) -> None:
        """``channel``'s connection takes deliveries again (back-pressure: the relay stops reading its link to the
        owner while the client's connection is not writable)."""

    def taken_over(self, queue: Queue) -> None:
        """This node took ``queue`` over: its relayed consumers are cancelled (the clients consume again, here)."""


class RemoteMessage(Message):
    """A delivery relayed from another node, held unacked by a client's channel: ``link`` and ``link_tag`` say
    where its ack goes. ``queue`` stays None: the queue's copy is the owner's."""

    __slots__ = ("link", "link_tag")

    def __init__(self, exchange: str, routing_key: str, address: bytes, header: bytes, body: bytes,
                 link: RemoteLink, link_tag: int) -> None:
        super().__init__(exchange, routing_key, address, header, body)
        self.link = link
        self.link_tag = link_tag


def refuse_remote(queue: Queue) -> NoReturn:
    """A consume, get or purge of a queue another node serves (``Queue.served_by``) that this node does not relay
    (no link: ``cluster`` off, or the request came over a link itself): refused, naming that node and, when known,
    where it listens for AMQP (docs/cluster.md)."""
    durability = queue.vhost.broker.durability  # a transient queue has none of its own
    nodes = (durability.nodes() if durability is not None else None) or []
    amqp = next((node.amqp for node in nodes if node.name == queue.served_by and node.running), None)
    where = f" (AMQP at {amqp})" if amqp else ""
    raise ResourceLocked(f"queue '{queue.name}' in vhost '{queue.vhost.name}' is served by node "
                         f"'{queue.served_by}'{where}: consume from it there")


def owner_address(queue: Queue) -> tuple[str, str] | None:
    """The owner of ``queue`` and where it listens for AMQP, when it is known and running: (name, host:port).

    ``served_by`` may name a node that is down while a third node took the queue over (this node hears of it from
    the taker's ``owners`` notification, or at its next heartbeat: shared.new_owners): meanwhile the running node
    whose summary lists the queue is its owner, and ``served_by`` is set to it."""
    durability = queue.vhost.broker.durability  # a transient queue has none of its own
    nodes = (durability.nodes() if durability is not None else None) or []
    for node in nodes:
        if node.name == queue.served_by and node.running and node.amqp:
            return node.name, node.amqp
    key = [queue.vhost.name, queue.name]
    for node in nodes:
        listed = (node.summary or {}).get("queues") or ()
        if node.running and node.amqp and any(entry[:2] == key for entry in listed):
            queue.served_by = node.name
            return node.name, node.amqp
    return None
