"""A client connection as the core sees it (:class:`Session`): its user, vhost, channels and exclusive queues,
the connection and channel limits checked when they open, and the end of a batch of client input (write what
it changed, then send the confirms)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .access import Access, reached
from .channel import Channel, Sink
from .errors import NotAllowed

if TYPE_CHECKING:
    from .broker import Broker
    from .queue import Queue
    from .users import User
    from .vhost import VHost


class RemoteConnection:
    """Several nodes (docs/cluster.md): the owner of an exclusive queue that a connection to another node declared
    (``Queue.exclusive_owner``). No session of this node is it, so each gets 405 RESOURCE_LOCKED for the queue (a
    passive declare, consume, get, purge, bind, delete), as another connection does on one node; a publish to it is
    routed (and handed over to its node)."""

    __slots__ = ("exclusive_queues",)

    def __init__(self) -> None:
        self.exclusive_queues: list[Queue] = []  # never any: its queues go through the other node's changes


class Session:
    """One client connection as the core sees it: user, vhost, channels, exclusive queues."""

    def __init__(self, broker: Broker, sink: Sink, peer: str = "") -> None:
        self.broker = broker
        self.sink = sink
        self.peer = peer
        self.protocol = "AMQP 0-9-1"  # as the management API names it ("STOMP 1.2" for a STOMP connection)
        self.user: User | None = None
        self._vhost: VHost | None = None
        self.access: Access | None = None  # the user's permissions in the vhost, once it is open
        self.channels: dict[int, Channel] = {}
        self.exclusive_queues: list[Queue] = []
        self.writable = True
        self.cancel_notify = False
        self._confirming: list[Channel] = []
        self._after_durable: list[Callable[[BaseException | None], None]] = []
        # what the edge knows of the connection beyond the peer's address (TLS, auth mechanism), for the management API
        self.details: dict[str, Any] = {}

    @property
    def vhost(self) -> VHost:
        if self._vhost is None:
            raise NotAllowed("no vhost opened")
        return self._vhost

    @property
    def opened_vhost(self) -> VHost | None:
        """The vhost once connection.open succeeded, else None (:attr:`vhost` raises instead)."""
        return self._vhost

    def open_vhost(self, name: str) -> VHost:
        """connection.open: RabbitMQ's checks in its order (vhost connection limit, user connection limit,
        vhost access), then the connection counts against both limits until :meth:`close`."""
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise NotAllowed(f"vhost {name} not found")
        user = self.user.name if self.user else "?"
        limit = reached(vhost.limits, "max-connections", self.broker.vhost_connections.get(name, 0))
        if limit is not None:
            raise NotAllowed(f"access to vhost '{name}' refused for user '{user}': connection limit ({limit}) is "
                             "reached")
        if self.user is not None:
            limit = reached(self.user.limits, "max-connections", self.broker.user_connections.get(user, 0))
            if limit is not None:
                raise NotAllowed(f"connection refused for user '{user}': user connection limit ({limit}) is reached")
        if self.user is None or self.user.permission(name) is None:
            raise NotAllowed(f"access to vhost '{name}' refused for user '{user}'")
        self._vhost = vhost
        self.access = Access(self.user, name)
        self.broker.session_opened(self)
        return vhost

    def open_channel(self, number: int) -> Channel:
        user = self.user
        if user is not None:
            limit = reached(user.limits, "max-channels", self.broker.user_channels.get(user.name, 0))
            if limit is not None:
                raise NotAllowed(f"number of channels opened for user '{user.name}' has reached the maximum "
                                 f"allowed user limit of ({limit})")
            self.broker.user_channels[user.name] = self.broker.user_channels.get(user.name, 0) + 1
        channel = Channel(self, number)
        self.channels[number] = channel
        return channel

    def close_channel(self, number: int) -> None:
        channel = self.channels.pop(number, None)
        if channel is not None:
            if self.user is not None:
                self.broker.count_down(self.broker.user_channels, self.user.name)
            channel.close()

    def set_writable(self, writable: bool) -> None:
        if writable == self.writable:
            return
        self.writable = writable
        for channel in list(self.channels.values()):
            channel.set_writable(writable)

    def confirm_pending(self, channel: Channel) -> None:
        if not self._confirming or self._confirming[-1] is not channel:
            self._confirming.append(channel)

    def after_durable(self, callback: Callable[[BaseException | None], None]) -> None:
        """Run ``callback`` once everything done so far is on disk (at the next :meth:`flush`)."""
        self._after_durable.append(callback)

    def flush(self) -> None:
        """End of a batch of client input: write what it changed and send its confirms (and other replies
        that promise durability) once that is durable: at once when nothing needs writing."""
        after: list[Callable[[BaseException | None], None]] = []
        if self._confirming:
            confirming, self._confirming = self._confirming, []
            for channel in confirming:
                due = channel.confirms_due()
                if due is not None:
                    after.append(due)
        if self._after_durable:
            after.extend(self._after_durable)
            self._after_durable = []
        durability = self.broker.durability
        if durability is None:
            for callback in after:
                callback(None)
        elif after or durability.pending:
            durability.commit(after)

    def force_close(self, reason: str) -> None:
        """Close this client connection on an operator's request (management API, ``leveret ctl``) or because its
        user or vhost was deleted: the protocol adapter tells the client why (AMQP: 320 CONNECTION_FORCED) and
        the session then closes."""
        self.sink.force_close(reason)

    def close(self) -> None:
        """The connection is gone: close its channels and delete its exclusive queues."""
        for number in list(self.channels):
            self.close_channel(number)
        for queue in list(self.exclusive_queues):
            queue.vhost.remove_queue(queue)
        self.broker.session_closed(self)
