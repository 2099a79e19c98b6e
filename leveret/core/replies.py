"""Direct reply-to addresses, and replies to an address of another node (several nodes, docs/cluster.md).

A channel that consumes from ``amq.rabbitmq.reply-to`` gets the address ``amq.rabbitmq.reply-to.<node>.<token>``
(:func:`reply_address`: the node's name in hex, as RabbitMQ encodes its node in the address too); the broker's
``reply_queues`` maps the addresses of this node to their reply pseudo-queue (core/channel.py).

With several nodes, a reply published here to another node's address is routed to a stand-in
(:class:`RemoteReplies`): a queue that no vhost lists, ``served_by`` that node, so that ``Queue.enqueue`` hands
the message over through the store (a hand-over row named after the address, confirmed after this node's commit),
and the node takes it to the reply consumer there (core/shared.py's ``HandedIn``; dropped there if the consumer is
gone, as RabbitMQ drops it). An address of a node that is not running routes nowhere: dropped, and a mandatory
publish is returned (312 NO_ROUTE), as RabbitMQ does for a dead consumer.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from .queue import Queue
from .storage import REPLY_TO, reply_prefix

if TYPE_CHECKING:
    from .vhost import VHost

__all__ = ["REPLY_TO", "RemoteReplies", "node_of", "reply_address"]

STAND_INS = 1000  # stand-ins kept per vhost (then they are made afresh)


def reply_address(node: str) -> str:
    """A new direct reply-to address of ``node`` (the token: 24 random bytes, URL-safe, no dots)."""
    return reply_prefix(node) + secrets.token_urlsafe(24)


def node_of(address: str) -> str | None:
    """The node a direct reply-to address names (None: not one of :func:`reply_address`'s)."""
    encoded, dot, token = address[len(REPLY_TO) + 1:].partition(".")
    if not dot or not token:
        return None
    try:
        return bytes.fromhex(encoded).decode()
    except (ValueError, UnicodeDecodeError):
        return None


class RemoteReplies:
    """The stand-ins of other nodes' reply addresses in one vhost (see the module docstring)."""

    def __init__(self, vhost: VHost) -> None:
        self.vhost = vhost
        self._stand_ins: dict[str, Queue] = {}

    def route(self, address: str) -> Queue | None:
        """The stand-in for ``address`` when it is a running node's other than this one, else None."""
        broker = self.vhost.broker
        durability = broker.durability
        if durability is None or not durability.shared:
            return None
        node = node_of(address)
        if node is None or node == broker.node_name:
            return None
        if not any(record.name == node and record.running for record in durability.nodes() or ()):
            return None
        queue = self._stand_ins.get(address)
        if queue is None:
            if len(self._stand_ins) >= STAND_INS:
                self._stand_ins.clear()
            queue = self._stand_ins[address] = Queue(self.vhost, address)
            queue.served_by = node
        return queue
