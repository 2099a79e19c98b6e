"""Recovery: the broker rebuilt from its store at start-up, before it serves anyone.

Definitions first (vhosts, users, policies, permissions, limits, exchanges, queues, bindings), without writing
them back (``Durability.recovering``), then every stored message of every queue as a record without its body
(``Queue.recover``: past a queue's window only a count stays in memory, core/paging.py), then the policies are
applied and the pending delayed messages reloaded (``DelayedMessages.recover``). Everything is read through the
store port (:class:`~leveret.core.durability.Durability`); the whole store is read here, on the broker's thread,
which is why this runs before the listeners open.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .access import Permission
from .dedup import make_window
from .errors import PreconditionFailed
from .exchanges import Exchange, create_exchange
from .message import PAGED, Message, build_address
from .policies import Policy
from .queue import Queue
from .session import RemoteConnection
from .users import User

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("leveret.broker")


def recover(broker: Broker) -> bool:
    """Rebuild vhosts, users, exchanges, queues, bindings and messages from the store. False when the store is
    new (nothing to recover)."""
    durability = broker.durability
    assert durability is not None
    defs = durability.load_definitions()
    if not defs.vhosts and not defs.users:
        return False
    durability.recovering = True
    try:
        for name in defs.vhosts:
            broker.add_vhost(name)
        for user in defs.users:
            broker.users[user.name] = User(user.name, user.password_hash, tuple(user.tags))
        for pd in defs.policies:
            vhost = broker.add_vhost(pd.vhost)
            vhost.policies[pd.name] = Policy(pd.vhost, pd.name, pd.pattern, dict(pd.definition), pd.priority,
                                             pd.apply_to)
        for perm in defs.permissions:
            if perm.user in broker.users:
                try:
                    permission = Permission(perm.configure, perm.write, perm.read)
                except PreconditionFailed as exc:  # written by a version that did not check: refuse all
                    log.warning("permissions of user '%s' in vhost '%s' refused: %s", perm.user, perm.vhost,
                                exc.text)
                    permission = Permission("", "", "")
                broker.users[perm.user].permissions[perm.vhost] = permission
        for kind, name, limits in defs.limits:
            owner = broker.users.get(name) if kind == "user" else broker.vhosts.get(name)
            if owner is not None:
                owner.limits = dict(limits)
        for ex in defs.exchanges:
            vhost = broker.add_vhost(ex.vhost)
            exchange = create_exchange(ex.type, ex.name, durable=ex.durable, auto_delete=ex.auto_delete,
                                       internal=ex.internal, arguments=dict(ex.arguments))
            exchange.dedup = make_window(exchange.arguments, "exchange", ex.vhost, ex.name, ex.durable, broker)
            vhost.exchanges[ex.name] = exchange
        for qd in defs.queues:  # several nodes: other nodes' transient queues too (their owners serve them)
            vhost = broker.add_vhost(qd.vhost)
            vhost.queues[qd.name] = Queue(vhost, qd.name, durable=qd.durable, auto_delete=qd.auto_delete,
                                          arguments=dict(qd.arguments),
                                          exclusive_owner=RemoteConnection() if qd.exclusive else None)
        for b in defs.bindings:
            vhost = broker.add_vhost(b.vhost)
            source = vhost.exchanges.get(b.source)
            dest: Exchange | Queue | None = (vhost.queues.get(b.destination) if b.destination_kind == "queue"
                                             else vhost.exchanges.get(b.destination))
            if source is not None and dest is not None:
                source.bind(dest, b.routing_key, dict(b.arguments))
        _recover_messages(broker)
        _recover_dedup(broker)
    finally:
        durability.recovering = False
    for vhost in broker.vhosts.values():
        if vhost.policies:
            vhost.apply_policies()
    broker.delays.recover()
    return True


def _recover_messages(broker: Broker) -> None:
    """Every stored message of every queue, in seq order, as a record whose body stays in the store. Several
    nodes on one store: only the queues this node holds the lease of (``Durability.claim_queues``); the others are
    marked as served by their owner and hold nothing here."""
    durability = broker.durability
    assert durability is not None
    owners = durability.claim_queues()
    addresses: dict[tuple[str, str], tuple[str, str, bytes]] = {}
    headers: dict[bytes, bytes] = {}  # identical content headers share one object
    for vhost in broker.vhosts.values():
        for queue in vhost.queues.values():
            owner = owners.get((vhost.name, queue.name)) if owners is not None else None
            if owner is not None and owner != broker.node_name:
                queue.served_by = owner
                continue
            broker.recovered_queues += 1
            broker.recovered_messages += recover_queue(queue, addresses, headers)


def recover_queue(queue: Queue, addresses: dict[tuple[str, str], tuple[str, str, bytes]] | None = None,
                  headers: dict[bytes, bytes] | None = None) -> int:
    """Read one queue's stored messages into it (at start-up, or when this node takes the queue over from a node
    whose lease expired); those that were delivered come back redelivered. Returns how many."""
    durability = queue.vhost.broker.durability
    assert durability is not None
    addresses = {} if addresses is None else addresses
    headers = {} if headers is None else headers
    count = 0
    for stored in durability.read_queue(queue.vhost.name, queue.name, with_bodies=False):
        key = (stored.exchange, stored.routing_key)
        names = addresses.get(key)
        if names is None:  # one set of objects per distinct address, not per message
            names = addresses[key] = (*key, build_address(*key))
        header = headers.get(stored.header)
        if header is None:
            header = stored.header
            if len(headers) < 65536:
                headers[header] = header
        msg = Message(names[0], names[1], names[2], header, PAGED)
        msg.seq = stored.seq
        msg.store_id = stored.id
        msg.redelivered = stored.redelivered
        queue.recover(msg)
        if queue.status is not None:  # its "queued" record may not have been written (core/status.py)
            queue.status.recovered(queue, msg)
        count += 1
    return count


def _recover_dedup(broker: Broker) -> None:
    """The deduplication windows of durable queues and exchanges (core/dedup.py)."""
    durability = broker.durability
    assert durability is not None
    for (vhost_name, kind, name), rows in durability.read_dedup().items():
        vhost = broker.vhosts.get(vhost_name)
        if vhost is None:
            continue
        owner = vhost.queues.get(name) if kind == "queue" else vhost.exchanges.get(name)
        if owner is not None and owner.dedup is not None:
            owner.dedup.load(rows)
