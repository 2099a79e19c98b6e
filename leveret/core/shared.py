"""Shared definitions: another node's definition change, applied to this broker (several nodes on one store,
docs/cluster.md).

The store hands over each change as the Store call that node made (``save_queue(QueueDef)``,
``delete_binding(BindingDef)``, ...: core/storage.py's :class:`DefinitionChange`), in the order the store committed
them. Each is applied through the path a local declaration or deletion takes (``VHost.declare_queue``,
``VHost.delete_queue``, ``Broker.set_policy``, ``Users.set_permission``, ...), so its checks, side effects and
events are the same: a deleted queue's consumers get ``basic.cancel``, a deleted vhost's or user's connections are
closed, a policy is applied to the queues it matches. While a change is applied ``Durability.replaying`` is set:
nothing is written back (the change is in the store already). A change this node cannot apply (an inequivalent
declaration made at the same moment on two nodes, say) is logged and skipped. A durable queue another node
declared is that node's (``Queue.served_by``): this node neither takes nor hands out its messages.

Queue ownership: :func:`take_over` is what this node does when it took the leases of queues whose owner's ran out
(their stored messages are read in, as at start-up: core/recovery.py's ``recover_queue``).

Routing between nodes: a message routed here to a durable queue another node owns is handed over through the
store (``Queue.enqueue`` -> ``Durability.hand_over``: a row written in this node's group commit, so the publisher's
confirm follows its COMMIT). :class:`HandedIn` is the owner's side: told that rows wait for a queue it owns, it
reads a page of them (id order), puts each message into the queue through ``Queue.enqueue`` (its own seq, its
deduplication, limits and consumers; a persistent message is pushed) and deletes the rows in the same commit
(``Durability.take_handed``). One page per queue at a time, so a row is never taken twice by this node; a row
another node took first fails the commit (the store checks), and a failed commit leaves the rows for the next look.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import BrokerError, NotFound
from .message import Message, build_address
from .recovery import recover_queue
from .replies import REPLY_TO
from .session import RemoteConnection
from .storage import BindingDef, DefinitionChange, ExchangeDef, PermissionDef, PolicyDef, QueueDef, StoreError, UserDef

if TYPE_CHECKING:
    from .broker import Broker
    from .queue import Queue
    from .vhost import VHost

log = logging.getLogger("leveret.broker")


def apply_changes(broker: Broker, changes: list[DefinitionChange]) -> None:
    """Apply other nodes' definition changes, in order."""
    durability = broker.durability
    assert durability is not None
    for change in changes:
        handler = HANDLERS.get(change.what)
        if handler is None:
            log.warning("definition change %d from node %s not applied: unknown change %r", change.version,
                        change.node, change.what)
            continue
        durability.replaying = True
        try:
            handler(broker, change.node, *change.args)
        except BrokerError as exc:
            log.warning("definition change %d from node %s (%s) not applied here: %s", change.version, change.node,
                        change.what, exc.text)
        except Exception:  # a bug: the changes after it are still applied
            log.exception("definition change %d from node %s (%s) failed here", change.version, change.node,
                          change.what)
        finally:
            durability.replaying = False


def _vhost(broker: Broker, name: str) -> VHost:
    vhost = broker.vhosts.get(name)
    if vhost is None:
        raise NotFound(f"no vhost '{name}'")
    return vhost


def _save_vhost(broker: Broker, node: str, name: str) -> None:
    broker.add_vhost(name)


def _delete_vhost(broker: Broker, node: str, name: str) -> None:
    if name in broker.vhosts:
        broker.delete_vhost(name)


def _save_user(broker: Broker, node: str, user: UserDef) -> None:
    broker.put_user(user.name, user.password_hash, tuple(user.tags))


def _delete_user(broker: Broker, node: str, name: str) -> None:
    if name in broker.users:
        broker.delete_user(name)


def _save_permission(broker: Broker, node: str, p: PermissionDef) -> None:
    broker.set_permission(p.user, p.vhost, p.configure, p.write, p.read)


def _delete_permission(broker: Broker, node: str, user: str, vhost: str) -> None:
    found = broker.users.get(user)
    if found is not None and vhost in found.permissions:
        broker.clear_permission(user, vhost)


def _save_limits(broker: Broker, node: str, kind: str, name: str, limits: dict[str, int]) -> None:
    if kind == "vhost":
        if name in broker.vhosts:
            broker.set_vhost_limits(name, limits, replace=True)
    elif name in broker.users:
        broker.set_user_limits(name, limits, replace=True)


def _save_policy(broker: Broker, node: str, policy: PolicyDef) -> None:
    broker.set_policy(policy)


def _delete_policy(broker: Broker, node: str, vhost: str, name: str) -> None:
    found = broker.vhosts.get(vhost)
    if found is not None and name in found.policies:
        broker.clear_policy(vhost, name)


def _save_exchange(broker: Broker, node: str, x: ExchangeDef) -> None:
    _vhost(broker, x.vhost).declare_exchange(x.name, x.type, durable=x.durable, auto_delete=x.auto_delete,
                                           internal=x.internal, arguments=dict(x.arguments))


def _delete_exchange(broker: Broker, node: str, vhost: str, name: str) -> None:
    found = broker.vhosts.get(vhost)
    if found is not None:
        found.delete_exchange(name)


def _save_queue(broker: Broker, node: str, q: QueueDef) -> None:
    """A queue declared on another node: durable, or transient (non-durable, exclusive: never taken over, it goes
    when its node does; store/postgres_transient.py)."""
    vhost = _vhost(broker, q.vhost)
    existing = vhost.queues.get(q.name)
    if existing is not None and existing.exclusive:
        return  # declared again by its own connection (x-leveret-status): nothing here depends on it
    queue = vhost.declare_queue(None, q.name, durable=q.durable, auto_delete=q.auto_delete,
                                arguments=dict(q.arguments), restore=True)
    if existing is None:
        queue.served_by = node  # a new queue is the declaring node's (its lease, store/postgres.py)
        if q.exclusive:  # no connection of this node may use it (405), as another connection on one node
            queue.exclusive_owner = RemoteConnection()


def _delete_queue(broker: Broker, node: str, vhost: str, name: str) -> None:
    found = broker.vhosts.get(vhost)
    if found is not None:
        found.delete_queue(name, None)


def _binding(broker: Broker, b: BindingDef, add: bool) -> None:
    vhost = broker.vhosts.get(b.vhost)
    if vhost is None:
        return
    if b.destination_kind == "queue":
        (vhost.bind_queue if add else vhost.unbind_queue)(b.destination, b.source, b.routing_key,
                                                          dict(b.arguments), None)
    else:
        (vhost.bind_exchange if add else vhost.unbind_exchange)(b.destination, b.source, b.routing_key,
                                                                dict(b.arguments))


HANDLERS: dict[str, Callable[..., Any]] = {
    "save_vhost": _save_vhost,
    "delete_vhost": _delete_vhost,
    "save_user": _save_user,
    "delete_user": _delete_user,
    "save_permission": _save_permission,
    "delete_permission": _delete_permission,
    "save_limits": _save_limits,
    "save_policy": _save_policy,
    "delete_policy": _delete_policy,
    "save_exchange": _save_exchange,
    "delete_exchange": _delete_exchange,
    "save_queue": _save_queue,
    "delete_queue": _delete_queue,
    "save_binding": lambda broker, node, b: _binding(broker, b, True),
    "delete_binding": lambda broker, node, b: _binding(broker, b, False),
}


# --- queue ownership (several nodes, docs/cluster.md) -----------------------------------------------------------


def take_over(broker: Broker, queues: list[tuple[str, str]], handed: HandedIn | None = None) -> None:
    """This node took the leases of ``queues`` (their owner's ran out): it serves them from now on, starting from
    their stored messages (those that were delivered come back redelivered), then the hand-over rows waiting for
    them (``handed``), before any message published here after the takeover."""
    for vhost_name, name in queues:
        vhost = broker.vhosts.get(vhost_name)
        queue = vhost.queues.get(name) if vhost is not None else None
        if queue is None or queue.served_by is None:
            continue
        log.warning("queue '%s' in vhost '%s': taken over from node %s", name, vhost_name, queue.served_by)
        queue.served_by = None
        if broker.remote is not None:  # its consumers relayed to the old owner consume here from now on
            broker.remote.taken_over(queue)
        count = recover_queue(queue)
        log.info("queue '%s' in vhost '%s': %d messages recovered", name, vhost_name, count)
        queue.touch()  # x-expires counts from now
        if handed is not None:
            handed.take(queue)


def new_owners(broker: Broker, owners: dict[tuple[str, str], str]) -> None:
    """Another node took queues over (``owners``: the owner of every queue other nodes own): this node names the
    new owner of each queue it does not serve (``Queue.served_by``: in its refusals, the cluster view, and where
    it hands publishes over). A queue this node serves is not changed here: losing one is a fence."""
    for (vhost_name, name), owner in owners.items():
        if owner == broker.node_name:
            continue
        vhost = broker.vhosts.get(vhost_name)
        queue = vhost.queues.get(name) if vhost is not None else None
        if queue is None or queue.served_by is None or queue.served_by == owner:
            continue
        log.info("queue '%s' in vhost '%s': now served by node %s (was %s)", name, vhost_name, owner,
                 queue.served_by)
        queue.served_by = owner


# --- routing between nodes: the owner's side of a hand-over (docs/cluster.md) ----------------------------------

HANDED_PAGE = 512  # hand-over rows read and taken in one commit


class HandedIn:
    """Takes the hand-over rows other nodes wrote for the queues this node owns (see the module docstring)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.taking: dict[Queue, bool] = {}  # queues with a take in flight -> look again once it committed
        self.dropping: set[tuple[str, str]] = set()  # reply addresses whose rows are being dropped

    def handed(self, queues: list[tuple[str, str]]) -> None:
        """Rows wait for ``queues`` (the store's link: a notification of the writing node, or its heartbeat): queues
        this node owns, durable or transient, or its direct reply-to addresses (core/replies.py: the reply goes to
        the address's consumer, or is dropped when it is gone)."""
        for vhost_name, name in queues:
            if name.startswith(REPLY_TO + "."):
                reply = self.broker.reply_queues.get(name)
                if reply is not None and not reply.deleted:
                    self.take(reply, vhost_name)
                else:
                    self._drop(vhost_name, name)
                continue
            vhost = self.broker.vhosts.get(vhost_name)
            queue = vhost.queues.get(name) if vhost is not None else None
            if queue is not None and queue.served_by is None and not queue.deleted:
                self.take(queue)

    def take(self, queue: Queue, vhost_name: str | None = None) -> None:
        """Take a page of the rows waiting for ``queue`` (``vhost_name``: the vhost they were published in, for a
        reply address: the consumer's may be another)."""
        if queue in self.taking:
            self.taking[queue] = True
            return
        durability = self.broker.durability
        assert durability is not None
        try:
            rows = durability.read_handed(vhost_name or queue.vhost.name, queue.name, [], HANDED_PAGE)
        except StoreError as exc:  # the database is away: the next heartbeat looks again
            log.warning("queue '%s' in vhost '%s': hand-over rows not read: %s", queue.name, queue.vhost.name, exc)
            return
        if not rows:
            return
        self.taking[queue] = False
        for row in rows:
            msg = Message(row.exchange, row.routing_key, build_address(row.exchange, row.routing_key), row.header,
                          row.body if row.body is not None else b"")
            if not queue.enqueue(msg):
                log.warning("queue '%s' in vhost '%s': a message handed over by another node was refused (the queue "
                            "is full, x-overflow reject-publish) and dropped", queue.name, queue.vhost.name)
        durability.take_handed([row.id for row in rows])
        durability.commit([lambda exc: self._taken(queue, len(rows), exc, vhost_name)])

    def _taken(self, queue: Queue, count: int, exc: BaseException | None, vhost_name: str | None) -> None:
        again = self.taking.pop(queue, False)
        if exc is not None:  # the pushes left the queue; the rows are still there (or another node's now)
            log.warning("queue '%s' in vhost '%s': taking %d handed-over messages failed: %s", queue.name,
                        queue.vhost.name, count, exc)
            return
        if (again or count == HANDED_PAGE) and queue.served_by is None and not queue.deleted:
            self.take(queue, vhost_name)

    def _drop(self, vhost_name: str, name: str) -> None:
        """Replies to an address of this node whose consumer is gone: their rows are taken, the replies dropped
        (RabbitMQ drops a reply to a consumer that is gone). One take per address at a time, as for a queue."""
        key = (vhost_name, name)
        if key in self.dropping:
            return
        durability = self.broker.durability
        assert durability is not None
        try:
            rows = durability.read_handed(vhost_name, name, [], HANDED_PAGE)
        except StoreError as exc:
            log.warning("reply address '%s': hand-over rows not read: %s", name, exc)
            return
        if not rows:
            return
        self.dropping.add(key)
        log.info("reply address '%s': %d replies dropped (its consumer is gone)", name, len(rows))
        durability.take_handed([row.id for row in rows])
        durability.commit([lambda exc: self.dropping.discard(key)])

