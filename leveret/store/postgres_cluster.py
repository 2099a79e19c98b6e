"""Several nodes on one PostgreSQL store (``cluster = true``, docs/cluster.md): the node registry's heartbeat and
the shared definitions' change log.

The change log
    Every definition write of a cluster node (PostgresStore._define) runs :func:`log_change`'s statements in the
    same transaction: ``meta.definitions_version`` + 1 (an UPDATE: its row lock makes concurrent writers of two
    nodes wait for each other, so versions commit in version order and a reader that sees version n has seen
    every version before it), one row of ``changes`` (the Store method and its arguments as tagged JSON) and a
    ``NOTIFY`` on the schema's channel. Rows older than ``CHANGES_KEPT`` seconds are deleted.

:class:`ClusterLink`
    A thread with a connection of its own that LISTENs on the channel. On a notification it reads the changes
    after the last version it handed on (one indexed range), skips this node's own, and hands the rest, in order,
    to the callback given to :meth:`ClusterLink.watch` (the broker, which applies them through its own
    declaration and deletion paths: core/shared.py). Every ``lease / 3`` seconds it updates this node's
    ``seen_at`` (the database's clock), reads the list of nodes (kept for :meth:`ClusterLink.nodes`), and checks
    ``definitions_version`` once as a safety net (a notification lost with a connection). A lost connection is
    reopened with back-off (LISTEN again, then the changes missed meanwhile are read). On close the node's row
    gets ``stopped_at``.

Queue leases
    A durable queue is served by the node named in its ``owner`` while ``lease_until`` (the database's clock) has not
    passed. :meth:`ClusterLink.claim` takes the free, expired and own ones at start; each heartbeat renews this
    node's leases and takes over expired ones of other nodes (``TAKE_OVER``: one UPDATE, so each queue goes to one
    node), handing them to the ``taken`` callback; likewise the lane leases (postgres_leases.py: a dead node's delayed
    lanes, moved to this node, handed to the ``lanes_taken`` callback). Fencing: a watchdog thread calls ``lost``
    once when no renewal succeeded for two thirds of the lease, i.e. before any other node may take this node's
    queues, and so does :meth:`ClusterLink.fence` when the writer's fence refused a commit; the node then stops
    serving. A clean close ends this node's leases (``lease_until = 0``), so the others take its queues and lanes at
    their next heartbeat.

Hand-over rows (routing between nodes)
    A node that routes a message to a queue another node owns writes it to ``handover`` in its group commit and
    NOTIFYs ``handover <owner>`` (store/postgres_batch.py). The owner's link, on that notification and at each
    heartbeat (the safety net: a notification sent to a node that no longer owns the queue, or lost), hands the
    queues it owns that have rows waiting to the ``handed`` callback (:meth:`ClusterLink.watch_handed`).

The cluster view (docs/cluster.md)
    Each heartbeat writes the ``summary`` callback's dict (:meth:`ClusterLink.watch_summary`: what this node
    serves, bounded by its maker, management/cluster.py) to this node's ``nodes.summary`` as JSON and NOTIFYs
    ``summary <node>``; on that notification the other nodes read the list of nodes again (summaries included), so
    what they show is at most one heartbeat (``lease / 3``) old, plus the notification's way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret.core.storage import (
    BindingDef,
    DefinitionChange,
    ExchangeDef,
    NodeRecord,
    PermissionDef,
    PolicyDef,
    QueueDef,
    UserDef,
    reply_prefix,
)

from . import postgres_leases as leases
from . import postgres_schema as schema
from . import postgres_transient as transient
from .tagged_json import decode_value, encode_value

if TYPE_CHECKING:
    from .postgres import PostgresStore

log = logging.getLogger("leveret.store")

WATCH_INTERVAL = 0.25  # seconds between two checks of the lease renewal's age (a local clock read)
CHANGES_KEPT = 3600.0  # seconds a change stays in the log (a node away longer must be restarted: it says so)
RECORDS: dict[str, type] = {cls.__name__: cls for cls in (BindingDef, ExchangeDef, PermissionDef, QueueDef, UserDef)}
RECORDS["Policy"] = PolicyDef


# the queue leases (docs/cluster.md): at start a node takes the free, expired and its own; then, at each heartbeat,
# renews its own and takes over the expired ones of other nodes (postgres_leases.py); a transient queue (not
# durable) is never taken: it goes with its node (postgres_transient.py)
CLAIM = ("UPDATE queues SET owner = %s, lease_until = extract(epoch FROM clock_timestamp()) + %s WHERE durable AND"
         " (owner IS NULL OR owner = %s OR lease_until < extract(epoch FROM clock_timestamp()))")


def encode_args(args: tuple[Any, ...]) -> str:
    """A Store call's arguments as tagged JSON: names, limits and the definition records (by their class)."""
    def one(arg: Any) -> Any:
        if dataclasses.is_dataclass(arg) and not isinstance(arg, type):
            return {"$record": type(arg).__name__,
                    "fields": {f.name: getattr(arg, f.name) for f in dataclasses.fields(arg)}}
        return arg

    return encode_value([one(arg) for arg in args])


def decode_args(text: str) -> tuple[Any, ...]:
    def one(arg: Any) -> Any:
        if isinstance(arg, dict) and set(arg) == {"$record", "fields"}:
            return RECORDS[arg["$record"]](**arg["fields"])
        return arg

    return tuple(one(arg) for arg in decode_value(text))


def log_change(node: str, channel: str, what: str, args: tuple[Any, ...]) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements that record a definition change in the writer's transaction (see the module docstring); the
    second returns the change's version (:func:`run_log`)."""
    return [
        ("UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'definitions_version'", ()),
        ("INSERT INTO changes (version, node, at, what, args) SELECT value::bigint, %s,"
         " extract(epoch FROM clock_timestamp()), %s, %s FROM meta WHERE key = 'definitions_version'"
         " RETURNING version", (node, what, encode_args(args))),
        ("SELECT pg_notify(%s, %s)", (channel, node)),
    ]


def run_log(conn: Any, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
    """Run :func:`log_change`'s statements; the change's version."""
    version = 0
    for sql, params in statements:
        cursor = conn.execute(sql, params)
        if "RETURNING" in sql:
            version = int(cursor.fetchone()[0])
    return version


def subject(what: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The object a definition change is about: ("queue", vhost, name), ("binding", ...), ("user", name), ..."""
    kind = what.partition("_")[2]
    first: Any = args[0]
    if kind == "binding":
        b = first
        return (kind, b.vhost, b.source, b.destination_kind, b.destination, b.routing_key, encode_value(b.arguments))
    if kind in ("vhost", "user") and isinstance(first, str):
        return (kind, first)
    if kind == "user":
        return (kind, first.name)
    if kind == "permission":
        return (kind, first.user, first.vhost) if isinstance(first, PermissionDef) else (kind, *args)
    if kind == "limits":
        return (kind, args[0], args[1])
    if isinstance(first, ExchangeDef | QueueDef | PolicyDef):
        return (kind, first.vhost, first.name)
    return (kind, *args)  # delete_exchange(vhost, name), delete_queue, delete_policy


class ClusterLink:
    """This node's link to the others through the store: heartbeat, node list, the others' definition changes."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.interval = max(0.5, store.node_lease / 3)
        self._conn: Any = None
        self._nodes: list[NodeRecord] = []
        self._apply: Callable[[list[DefinitionChange]], None] | None = None
        self._version = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._wake = False  # watch() asks the thread to read the changes at once
        self._delay = 0.5
        self._gap_logged = False
        self._taken: Callable[[list[tuple[str, str]]], None] | None = None
        self._owners: Callable[[dict[tuple[str, str], str]], None] | None = None  # others' queues: who owns them
        self._handed: Callable[[list[tuple[str, str]]], None] | None = None
        self._summary: Callable[[], dict[str, Any] | None] | None = None
        self._amqp: str | None = None  # where this node listens for AMQP, to be written to its row (advertise)
        self._lost: Callable[[], None] | None = None
        self._lanes_taken: Callable[[list[tuple[str, str, int]]], None] | None = None
        self._renewed = time.monotonic()  # when this node's leases were last renewed (see _fence)
        self._fenced = False
        self._fence_lock = threading.Lock()
        self._conn = self._connect()  # the first connection in the caller's thread: a failure is open()'s
        try:
            self._conn.execute(leases.OWN_LANES, (store.node, store.node, store.node_lease))  # its lanes are its own
            transient.sweep(self._conn, store, self._record, start=True)  # transient definitions of nodes gone
            self._beat(self._conn)
            self._conn.execute("SELECT pg_notify(%s, %s)", (store.channel, "node " + store.node))  # the others look
        except BaseException:
            self._conn.close()
            raise
        self._thread = threading.Thread(target=self._main, name=f"leveret-cluster {store.schema}", daemon=True)
        self._thread.start()
        # the fence's watch: a thread of its own, so that a statement stuck on a dead network cannot delay it
        self._watchdog = threading.Thread(target=self._watch, name=f"leveret-fence {store.schema}", daemon=True)
        self._watchdog.start()

    def nodes(self) -> list[NodeRecord]:
        with self._lock:
            return list(self._nodes)

    def watch(self, apply: Callable[[list[DefinitionChange]], None], version: int) -> None:
        with self._lock:
            self._apply = apply
            self._version = version
            self._wake = True
        self._notify()

    def claim(self) -> dict[tuple[str, str], str]:
        """Take the free, expired and own queue leases now (start-up, on the caller's thread), and the lanes of nodes
        whose lane lease ran out (their delayed messages moved into this node's lanes, which recovery reads next);
        every queue's owner."""
        store = self.store
        with schema.connect(store.url, store.schema, store.connect_timeout, "cluster-call") as conn:
            conn.execute(CLAIM, (store.node, store.node_lease, store.node))
            rows = conn.execute("SELECT vhost, name, owner FROM queues").fetchall()
            moved = leases.take_lanes(conn, store.node, store.node_lease)
        if moved:
            log.warning("store %s: this node took over the delayed lanes of nodes whose lease ran out: %d messages",
                        store.where, sum(count for _, _, count in moved))
        self._renewed = time.monotonic()
        return {(vhost, name): owner for vhost, name, owner in rows}

    def secret(self) -> str:
        """The cluster secret (the links between nodes log in with it: docs/cluster.md): ``meta.cluster_secret``,
        written once by the first node that asks (a random token), read by the others."""
        with schema.connect(self.store.url, self.store.schema, self.store.connect_timeout, "cluster-call") as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('cluster_secret', %s) ON CONFLICT (key) DO NOTHING",
                         (secrets.token_urlsafe(32),))
            row = conn.execute("SELECT value FROM meta WHERE key = 'cluster_secret'").fetchone()
        return str(row[0])

    def watch_lanes(self, taken: Callable[[list[tuple[str, str, int]]], None]) -> None:
        with self._lock:
            self._lanes_taken = taken

    def fence(self, reason: str) -> None:
        """The writer's fence refused a commit (postgres_leases.py): this node lost a lease it wrote under. It
        stops serving at once (``lost``), as when it cannot renew its leases; from any thread, once."""
        with self._fence_lock:
            if self._fenced:
                return
            with self._lock:
                lost = self._lost
            self._fenced = True
        log.error("store %s: this node stops serving: %s", self.store.where, reason)
        if lost is not None:
            lost()

    def watch_queues(self, taken: Callable[[list[tuple[str, str]]], None], lost: Callable[[], None],
                     owners: Callable[[dict[tuple[str, str], str]], None] | None = None) -> None:
        with self._lock:
            self._taken, self._lost, self._owners = taken, lost, owners

    def advertise(self, amqp: str) -> None:
        """Write ``amqp`` (host:port) to this node's row, on the link's thread, and tell the others."""
        with self._lock:
            self._amqp = amqp
            self._wake = True
        self._notify()

    def watch_handed(self, handed: Callable[[list[tuple[str, str]]], None]) -> None:
        """``handed(queues)`` when hand-over rows wait for queues this node owns: on a ``handover <this node>``
        notification (sent by the writing node's commit) and at each heartbeat (the safety check)."""
        with self._lock:
            self._handed = handed
            self._wake = True
        self._notify()

    def watch_summary(self, summary: Callable[[], dict[str, Any] | None]) -> None:
        """At each heartbeat, write ``summary()`` (None: skip this one) to this node's row and tell the others."""
        with self._lock:
            self._summary = summary

    def _sweep_own(self) -> None:
        """A clean stop: this node's transient queues go now (postgres_transient.py), not at another node's next
        heartbeat; on a connection of its own (the link's belongs to its thread). A failure leaves them to that."""
        store = self.store
        try:
            with schema.connect(store.url, store.schema, store.connect_timeout, "cluster-call") as conn:
                transient.sweep(conn, store, self._record, start=True, alone=False)
        except schema.psycopg.Error as exc:
            log.warning("store %s: this node's transient queues were not deleted at its stop (the other nodes delete "
                        "them): %s", store.where, schema.reason(exc))

    def close(self) -> None:
        if not self._fenced:
            self._sweep_own()
        self._stop.set()
        self._notify()
        self._thread.join(10)
        self._watchdog.join(10)
        conn, self._conn = self._conn, None
        if conn is None or conn.closed or conn.broken:
            with contextlib.suppress(Exception):
                conn = schema.connect(self.store.url, self.store.schema, self.store.connect_timeout, "cluster-call")
        with contextlib.suppress(Exception):
            conn.execute("UPDATE nodes SET stopped_at = extract(epoch FROM clock_timestamp()) WHERE name = %s",
                         (self.store.node,))
            if not self._fenced:  # its queues and delayed lanes are free for the others now
                conn.execute("UPDATE queues SET lease_until = 0 WHERE owner = %s", (self.store.node,))
                conn.execute(leases.END_LANES, (self.store.node,))
            conn.execute("SELECT pg_notify(%s, %s)", (self.store.channel, self.store.node))
        with contextlib.suppress(Exception):
            conn.close()

    # --- the thread -------------------------------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake the thread out of its wait for notifications (a NOTIFY on a connection of its own)."""
        with contextlib.suppress(Exception), schema.connect(self.store.url, self.store.schema,
                                                            self.store.connect_timeout, "cluster-call") as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (self.store.channel, "wake " + self.store.node))

    def _connect(self) -> Any:
        timeout = min(self.store.connect_timeout, self.interval)  # a heartbeat's time, not the writer's 10 s
        conn = schema.connect(self.store.url, self.store.schema, timeout, "cluster")
        try:
            conn.execute(schema.sql.SQL("LISTEN {}").format(schema.sql.Identifier(self.store.channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            self._fence()

    def _main(self) -> None:
        next_beat = time.monotonic() + self.interval
        while not self._stop.is_set():
            try:
                conn = self._conn
                if conn is None or conn.closed or conn.broken:
                    conn = self._conn = self._reconnect()
                    if conn is None:
                        continue
                    self._catch_up(conn)
                    self._check_handed(conn)
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval
                    self._beat(conn)
                    self._check_version(conn)
                    self._check_handed(conn)
                with self._lock:
                    wake, self._wake = self._wake, False
                if wake:
                    self._catch_up(conn)
                    self._check_handed(conn)
                    self._write_amqp(conn)
                payloads = [n.payload for n in conn.notifies(timeout=max(0.01, next_beat - time.monotonic()),
                                                             stop_after=1)]
                if payloads and not self._stop.is_set():
                    payloads += self._drain(conn)
                    mine = "handover " + self.store.node
                    if any(p.startswith("owners ") and p != "owners " + self.store.node for p in payloads):
                        self._read_owners(conn)  # another node took queues over
                    if any(not p.startswith(("handover ", "summary ", "owners ")) for p in payloads):
                        self._catch_up(conn)
                        self._read_nodes(conn)
                    elif any(p.startswith("summary ") and p != "summary " + self.store.node for p in payloads):
                        self._read_nodes(conn)  # another node's heartbeat: its new summary
                    if mine in payloads:
                        self._check_handed(conn)
            except schema.psycopg.Error as exc:
                if not self._stop.is_set():
                    log.error("store %s: the cluster link lost PostgreSQL: %s", self.store.where, schema.reason(exc))
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
            except Exception:  # pragma: no cover - a bug: keep the link alive
                log.exception("store %s: cluster link error", self.store.where)
                self._stop.wait(1.0)

    def _drain(self, conn: Any) -> list[str]:
        """Take the notifications already queued (one catch-up covers them all); their payloads."""
        return [n.payload for n in conn.notifies(timeout=0, stop_after=1000)]

    def _write_amqp(self, conn: Any) -> None:
        with self._lock:
            amqp, self._amqp = self._amqp, None
        if amqp is not None:
            conn.execute("UPDATE nodes SET amqp = %s WHERE name = %s", (amqp, self.store.node))
            conn.execute("SELECT pg_notify(%s, %s)", (self.store.channel, "node " + self.store.node))
            self._read_nodes(conn)

    def _check_handed(self, conn: Any) -> None:
        """Hand the queues this node owns that have hand-over rows waiting to the ``handed`` callback."""
        with self._lock:
            handed = self._handed
        if handed is None or self._fenced:
            return
        rows = conn.execute(transient.HANDED, (self.store.node, reply_prefix(self.store.node))).fetchall()
        if rows:
            # the changes committed before these rows are handed on first (a reply queue declared on another node
            # just before the request handed over here: known before the request is taken)
            self._catch_up(conn)
            handed([(vhost, name) for vhost, name in rows])

    def _reconnect(self) -> Any:
        if self._stop.wait(self._delay):
            return None
        self._delay = min(self._delay * 2, 5.0)
        try:
            conn = self._connect()
        except schema.psycopg.Error:
            return None
        self._delay = 0.5
        log.warning("store %s: the cluster link reconnected to PostgreSQL", self.store.where)
        return conn

    @property
    def fence_after(self) -> float:
        """Seconds without a renewal after which this node gives its queues up: two thirds of the lease, so that
        it has stopped before another node may take them (the lease runs on the database's clock from the last
        renewal, which was sent before this node's clock read ``_renewed``)."""
        return self.store.node_lease * 2 / 3

    def _fence(self) -> None:
        if self._fenced or time.monotonic() - self._renewed < self.fence_after:
            return
        with self._lock:
            lost = self._lost
        if lost is None:
            return
        with self._fence_lock:
            if self._fenced:
                return
            self._fenced = True
        log.error("store %s: this node could not renew its queue leases for %.1f s (node_lease %g s): it stops "
                  "serving, since another node may take its queues over", self.store.where,
                  time.monotonic() - self._renewed, self.store.node_lease)
        lost()

    def _beat(self, conn: Any) -> None:
        store = self.store
        sent = time.monotonic()
        conn.execute(leases.RENEW, (store.node_lease, store.node))
        conn.execute(leases.RENEW_LANES, (store.node_lease, store.node))
        if not self._fenced:
            self._renewed = sent
        with self._lock:
            taken, lanes_taken = self._taken, self._lanes_taken
        if taken is not None and not self._fenced:
            rows = conn.execute(leases.TAKE_OVER, (store.node, store.node_lease, store.node)).fetchall()
            if rows:
                log.warning("store %s: this node took over %d queues whose owner's lease expired: %s", store.where,
                            len(rows), ", ".join(f"{name!r} (vhost {vhost!r})" for vhost, name in rows[:10]))
                taken([(vhost, name) for vhost, name in rows])
                conn.execute("SELECT pg_notify(%s, %s)", (store.channel, "owners " + store.node))  # the others look
        if lanes_taken is not None and not self._fenced:
            moved = leases.take_lanes(conn, store.node, store.node_lease)
            if moved:
                log.warning("store %s: this node took over the delayed lanes of nodes whose lease expired: %d "
                            "messages", store.where, sum(count for _, _, count in moved))
                lanes_taken(moved)
        found = conn.execute("UPDATE nodes SET seen_at = extract(epoch FROM clock_timestamp()) WHERE name = %s"
                             " RETURNING 1", (store.node,)).fetchone()
        if found is None:  # deleted by hand: register again
            conn.execute("INSERT INTO nodes (name, host, pid, started_at, seen_at) SELECT %s, %s, %s, t, t FROM"
                         " (SELECT extract(epoch FROM clock_timestamp())::float8 AS t) now ON CONFLICT DO NOTHING",
                         (store.node, socket.gethostname(), os.getpid()))
        self._write_summary(conn)
        self._read_owners(conn)  # the safety net of the "owners" notification
        conn.execute("DELETE FROM changes WHERE at < extract(epoch FROM clock_timestamp()) - %s", (CHANGES_KEPT,))
        transient.sweep(conn, store, self._record)  # transient queues of nodes that are gone
        # hand-over rows a node committed for a queue just deleted (its deletion took the rows there were), or for
        # the reply address of a node that does not run: nobody will take them (a queue of that name declared
        # later must not get them)
        conn.execute(transient.ORPHANED, (store.node_lease,))
        self._read_nodes(conn)

    def _record(self, conn: Any, node: str, what: str, args: tuple[Any, ...]) -> None:
        """Log a change made in the transaction on ``conn`` as ``node``'s (postgres_transient.py's sweep)."""
        run_log(conn, log_change(node, self.store.channel, what, args))

    def _write_summary(self, conn: Any) -> None:
        """This node's summary (the ``summary`` callback's, on the broker's thread) to its row; ``summary <node>``
        tells the others to read it."""
        with self._lock:
            summary = self._summary
        if summary is None or self._fenced or self._stop.is_set():
            return
        found = summary()
        if found is None:  # the event loop did not answer in time: the others keep the previous one
            return
        conn.execute("UPDATE nodes SET summary = %s WHERE name = %s",
                     (json.dumps(found, default=str, separators=(",", ":")), self.store.node))
        conn.execute("SELECT pg_notify(%s, %s)", (self.store.channel, "summary " + self.store.node))

    def _read_owners(self, conn: Any) -> None:
        """Who owns each queue another node owns, to the ``owners`` callback (a takeover by a third node)."""
        with self._lock:
            owners = self._owners
        if owners is None or self._fenced:
            return
        rows = conn.execute("SELECT vhost, name, owner FROM queues WHERE owner IS NOT NULL AND owner <> %s",
                            (self.store.node,)).fetchall()
        owners({(vhost, name): owner for vhost, name, owner in rows})

    def _read_nodes(self, conn: Any) -> None:
        rows = conn.execute(
            "SELECT name, host, pid, started_at, seen_at, stopped_at IS NULL AND (seen_at > extract(epoch FROM"
            " clock_timestamp()) - %s OR name = %s), amqp, summary FROM nodes ORDER BY name",
            (self.store.node_lease, self.store.node)).fetchall()
        nodes = [NodeRecord(name, host, pid, started_at, seen_at, running, amqp, _summary(summary))
                 for name, host, pid, started_at, seen_at, running, amqp, summary in rows]
        with self._lock:
            self._nodes = nodes

    def _check_version(self, conn: Any) -> None:
        """The safety net: a change whose notification was lost is read at the next heartbeat."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'definitions_version'").fetchone()
        with self._lock:
            behind = self._apply is not None and row is not None and int(row[0]) > self._version
        if behind:
            self._catch_up(conn)

    def _catch_up(self, conn: Any) -> None:
        with self._lock:
            apply, version = self._apply, self._version
        if apply is None:
            return
        rows = conn.execute("SELECT version, node, what, args FROM changes WHERE version > %s ORDER BY version",
                            (version,)).fetchall()
        if not rows:
            return
        if rows[0][0] != version + 1 and not self._gap_logged:
            self._gap_logged = True
            log.error("store %s: definition changes %d to %d are no longer in the log (this node was away longer "
                      "than %d s): its definitions may differ from the other nodes' until it is restarted",
                      self.store.where, version + 1, rows[0][0] - 1, CHANGES_KEPT)
        changes = [DefinitionChange(number, node, what, decode_args(args))
                   for number, node, what, args in rows if node != self.store.node]
        with self._lock:
            self._version = rows[-1][0]
        if changes:
            apply(changes)


def _summary(text: str | None) -> dict[str, Any] | None:
    """A node's summary from its row (None: none written yet, or not a JSON object)."""
    if not text:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None
