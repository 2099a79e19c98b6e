"""Several nodes on one PostgreSQL store (docs/cluster.md): the leases' SQL, and fencing in the store.

Queue leases
    ``queues.owner`` / ``lease_until`` (the database's clock): a durable queue is served by its owner while its
    lease runs. The link (store/postgres_cluster.py) renews this node's leases at each heartbeat (:data:`RENEW`,
    locking the rows in (vhost, name) order, the order the writer's fence locks them in, so the two never deadlock)
    and takes over expired ones (:data:`TAKE_OVER`: rows another transaction holds are skipped, taken at the next
    heartbeat; one node gets each).

Lane leases (schema 6)
    The durable delayed messages a node holds are stored in its *lanes* (pseudo-queues named
    ``<prefix><node><NODE_MARK><target>``, core/storage.py). ``lanes`` has one row per node name: who holds that
    node's lanes (``owner``) and until when (``lease_until``). A node takes its own row at open and renews the rows
    it owns with its queue leases. When a row's lease runs out (its owner died, or stopped cleanly: its leases are
    ended), one node takes it (:func:`take_lanes`: the same ``UPDATE ... WHERE the lease ran out`` pattern, rows
    held by another transaction skipped) and, **in the same transaction**, renames that node's stored lane messages
    into its own lanes of the same targets; it then reads them in and releases each at its due time. A message is
    in exactly one node's lane at any moment, and is released by the transaction that deletes it from there.

Fencing in the store (:func:`fence`)
    Every group commit that writes for a queue (pushes, acks/deletes, redelivered marks, purges, hand-over takes) or
    for this node's lanes, or hands messages over, checks before its COMMIT, in the same transaction, that this node
    still owns each of those queues with a live lease and its own lanes' row with a live lease, and holds those rows
    ``FOR SHARE`` until COMMIT: a takeover (an UPDATE of the row) either committed before, and the check sees it, or
    waits for this COMMIT, and the taker reads the queue after it. A row of another node's lane (moved away while
    this node was stalled) is never written. If anything is lost the check raises :class:`FencedError`: the whole
    transaction is rolled back (nothing of it is written), its submits fail (publishes nacked, as for any failed
    commit), and the writer tells the link, which fences the node (store/postgres_batch.py, postgres_cluster.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from leveret.core.storage import DELAYED_PREFIX, NODE_MARK, RETRY_PREFIX, FencedError, lane_node

from .postgres_schema import text_out

NOW = "extract(epoch FROM clock_timestamp())"

# the queue leases: this node's renewed (rows locked in (vhost, name) order, as the writer's fence locks them),
# expired ones of other nodes taken over (rows another transaction holds are left for the next heartbeat)
RENEW = (f"UPDATE queues SET lease_until = {NOW} + %s WHERE (vhost, name) IN (SELECT vhost, name FROM queues"
         " WHERE owner = %s ORDER BY vhost, name FOR UPDATE)")
TAKE_OVER = (f"UPDATE queues SET owner = %s, lease_until = {NOW} + %s WHERE (vhost, name) IN (SELECT vhost, name"
             f" FROM queues WHERE durable AND (owner IS NULL OR owner <> %s) AND (owner IS NULL OR lease_until < {NOW})"
             " ORDER BY vhost, name FOR UPDATE SKIP LOCKED) RETURNING vhost, name")

# the lane leases: this node's own row at open (its lanes are its own again: a node of that name that held them
# before is gone, since the node's name lock is held by one session at a time), and the renewal of the rows it owns
OWN_LANES = (f"INSERT INTO lanes (node, owner, lease_until) VALUES (%s, %s, {NOW} + %s) ON CONFLICT (node) DO UPDATE"
             " SET owner = excluded.owner, lease_until = excluded.lease_until")
RENEW_LANES = f"UPDATE lanes SET lease_until = {NOW} + %s WHERE owner = %s"
END_LANES = "UPDATE lanes SET lease_until = 0 WHERE owner = %s"
TAKE_LANES = (f"UPDATE lanes SET owner = %s, lease_until = {NOW} + %s WHERE node IN (SELECT node FROM lanes WHERE"
              f" (owner IS NULL OR owner <> %s) AND (owner IS NULL OR lease_until < {NOW}) ORDER BY node"
              " FOR UPDATE SKIP LOCKED) RETURNING node")
# a node's stored lane messages renamed into another node's lanes (same prefix and target); their counts by lane
MOVE_LANE = ("WITH moved AS (UPDATE messages SET queue = %s || substr(queue, %s::int) WHERE starts_with(queue, %s)"
             " RETURNING vhost, queue) SELECT vhost, queue, count(*) FROM moved GROUP BY vhost, queue")

# the fence: this node's lanes row and the queues written for, locked until COMMIT (see the module docstring)
FENCE = (f"WITH l AS (SELECT 1 FROM lanes WHERE node = %s AND owner = %s AND lease_until > {NOW} FOR SHARE),"
         f" q AS (SELECT vhost, name, owner = %s AND lease_until > {NOW} AS live FROM queues WHERE (vhost, name)"
         " IN (SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY vhost, name FOR SHARE)"
         " SELECT (SELECT count(*) FROM l), vhost, name, live FROM q RIGHT JOIN (SELECT 1) one ON true")
DELETE_OWNED = ("WITH gone AS (DELETE FROM messages WHERE id = ANY(%b::bigint[]) RETURNING vhost, queue)"
                " SELECT DISTINCT vhost, queue FROM gone")
REQUEUE_OWNED = ("WITH marked AS (UPDATE messages SET redelivered = true WHERE id = ANY(%b::bigint[])"
                 " RETURNING vhost, queue) SELECT DISTINCT vhost, queue FROM marked")


def stored_names(rows: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """(vhost, queue) as the core names them, from ``messages`` rows (their names went through text_in)."""
    return {(text_out(vhost), text_out(queue)) for vhost, queue in rows}


def fence(conn: Any, node: str, written: set[tuple[str, str]]) -> None:
    """Check, in the writer's transaction, that ``node`` may write for ``written`` (the (vhost, queue) names it
    wrote messages of) and hand messages over: it owns its lanes' row and each durable queue among them with a live
    lease (rows locked until COMMIT). A queue whose row is gone (deleted meanwhile) is no fence. Raises
    :class:`FencedError` naming what was lost."""
    names: list[tuple[str, str]] = []
    for vhost, queue in written:
        holder = lane_node(queue)
        if holder is None:
            names.append((vhost, queue))
        elif holder != node:
            raise FencedError(f"node {node} wrote for the delayed lane {queue!r} of node {holder!r} (moved there "
                              "after this node's lane lease ran out)")
    rows = conn.execute(FENCE, (node, node, node, [v for v, _ in names], [q for _, q in names])).fetchall()
    if not rows or not rows[0][0]:
        raise FencedError(f"node {node} no longer holds the lease of its delayed lanes (another node may have taken "
                          "them over)")
    lost = [(vhost, name) for _, vhost, name, live in rows if vhost is not None and not live]
    if lost:
        shown = ", ".join(f"{name!r} (vhost {vhost!r})" for vhost, name in lost[:5])
        raise FencedError(f"node {node} no longer holds the lease of {len(lost)} queues it wrote for: {shown} "
                          "(another node may serve them now)")


def fence_queue(conn: Any, node: str, vhost: str, name: str) -> None:
    """The fence of a queue's deletion by its owner (x-expires, auto-delete, a client of the owner: a definition
    change, not a group commit of messages): FencedError if ``node`` no longer holds the queue's lease."""
    row = conn.execute(f"SELECT owner = %s AND lease_until > {NOW} FROM queues WHERE vhost = %s AND name = %s"
                       " FOR SHARE", (node, vhost, name)).fetchone()
    if row is not None and not row[0]:
        raise FencedError(f"node {node} no longer holds the lease of queue {name!r} (vhost {vhost!r}): not deleted")


def take_lanes(conn: Any, node: str, lease: float) -> list[tuple[str, str, int]]:
    """Take the lane leases that ran out (or have no owner) and move those nodes' stored lane messages into this
    node's lanes, in one transaction; (vhost, lane name, messages) of what was moved."""
    moved: list[tuple[str, str, int]] = []
    with conn.transaction():
        taken = [row[0] for row in conn.execute(TAKE_LANES, (node, lease, node)).fetchall()]
        for old in taken:
            if old == node:
                continue
            moved.extend(move_lanes(conn, old, node))
    return moved


def move_lanes(conn: Any, old: str, node: str) -> list[tuple[str, str, int]]:
    """Rename the stored lane messages of node ``old`` into ``node``'s lanes (a sequential scan of ``messages``:
    takeovers are rare). Lane names holding NUL (stored as JSON, postgres_schema.text_in) are not moved."""
    moved: list[tuple[str, str, int]] = []
    for prefix in (DELAYED_PREFIX, RETRY_PREFIX):
        before, after = prefix + old + NODE_MARK, prefix + node + NODE_MARK
        rows = conn.execute(MOVE_LANE, (after, len(before) + 1, before)).fetchall()
        moved.extend((text_out(vhost), text_out(queue), int(count)) for vhost, queue, count in rows)
    return moved
