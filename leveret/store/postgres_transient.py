"""Several nodes on one PostgreSQL store (docs/cluster.md): the transient definitions every node knows, and the
hand-over rows of direct reply-to addresses.

Transient queues
    With ``cluster = true`` a non-durable or exclusive queue has a row in ``queues`` too (``durable`` false,
    ``exclusive``; its ``owner`` is the declaring node, whose heartbeat renews its ``lease_until`` as for a durable
    one), so that every node knows it and hands it what it routes there. It is never taken over (the lease
    statements only take durable queues): :func:`sweep` deletes the transient queues whose owner's lease ran out
    (the owner was killed; a node that stops cleanly deletes its own), with their bindings and hand-over rows, and
    logs each deletion in the change log **under the owner's name**, so that every other node (the sweeping one
    too: a node skips only its own changes) removes the queue through its own deletion path. A node sweeps at
    each heartbeat, at start also its own of an earlier run, and its own at a clean stop. ``DELETE ... RETURNING`` makes
    each row one node's to log.

Transient exchanges
    A non-durable exchange (and a binding from or to one) is shared as well; it belongs to no node, so, as in
    RabbitMQ, it lives until the whole cluster stops: a node that starts while no other node runs deletes them
    (:func:`sweep` with ``start``).

Direct reply-to
    A reply routed here to another node's reply address (``amq.rabbitmq.reply-to.<node in hex>.<token>``:
    core/storage.py's ``reply_prefix``) is a hand-over row whose queue is that address. The node finds its own by
    the prefix (:data:`HANDED`), and :data:`ORPHANED` keeps them while their node runs (the rows of a queue, only
    while the queue does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret.core.storage import REPLY_TO

if TYPE_CHECKING:
    from .postgres import PostgresStore

NOW = "extract(epoch FROM clock_timestamp())"
RUNNING = f"n.stopped_at IS NULL AND n.seen_at > {NOW} - %s"  # a node of ``nodes n`` runs (the lease as parameter)

# the queues (and reply addresses) with hand-over rows for a node: parameters (node, reply prefix of the node)
HANDED = ("SELECT DISTINCT h.vhost, h.queue FROM handover h JOIN queues q ON q.vhost = h.vhost AND q.name = h.queue"
          " WHERE q.owner = %s UNION SELECT DISTINCT vhost, queue FROM handover WHERE starts_with(queue, %s)")

# hand-over rows nobody will take: of a queue that is gone (a row committed just after its deletion), or of a reply
# address whose node does not run; parameter: the lease
ORPHANED = ("DELETE FROM handover h WHERE NOT EXISTS (SELECT 1 FROM queues q WHERE q.vhost = h.vhost AND q.name ="
            f" h.queue) AND NOT EXISTS (SELECT 1 FROM nodes n WHERE {RUNNING} AND starts_with(h.queue, "
            f"'{REPLY_TO}.' || encode(convert_to(n.name, 'UTF8'), 'hex') || '.'))")

GONE_QUEUES = (f"DELETE FROM queues WHERE NOT durable AND (owner = %s OR lease_until < {NOW})"
               " RETURNING vhost, name, owner")
OTHERS_RUNNING = f"SELECT count(*) FROM nodes n WHERE n.name <> %s AND {RUNNING}"
GONE_EXCHANGES = "DELETE FROM exchanges WHERE NOT durable RETURNING vhost, name"


Record = Callable[[Any, str, str, tuple[Any, ...]], None]  # (conn, node, what, args): a change in the log


def sweep(conn: Any, store: PostgresStore, record: Record, start: bool = False, alone: bool = True) -> int:
    """Delete the transient queues whose owner is gone (with ``start`` also this node's own: of an earlier run when
    it starts, or its own when it stops; and, with ``alone`` too, when no other node runs, every transient
    exchange), in one transaction on ``conn`` (autocommit), each deletion logged with ``record`` as a change for the
    other nodes; how many objects were deleted."""
    deleted = 0
    with conn.transaction():
        for vhost, name, owner in conn.execute(GONE_QUEUES, (store.node if start else None,)).fetchall():
            conn.execute("DELETE FROM bindings WHERE vhost = %s AND destination_kind = 'queue' AND destination = %s",
                         (vhost, name))
            conn.execute("DELETE FROM handover WHERE vhost = %s AND queue = %s", (vhost, name))
            record(conn, owner or store.node, "delete_queue", (vhost, name))
            deleted += 1
        if start and alone and conn.execute(OTHERS_RUNNING, (store.node, store.node_lease)).fetchone()[0] == 0:
            for vhost, name in conn.execute(GONE_EXCHANGES).fetchall():
                conn.execute("DELETE FROM bindings WHERE vhost = %s AND (source = %s OR (destination_kind ="
                             " 'exchange' AND destination = %s))", (vhost, name, name))
                record(conn, store.node, "delete_exchange", (vhost, name))
                deleted += 1
    return deleted
