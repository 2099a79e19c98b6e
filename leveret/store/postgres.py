"""A store in PostgreSQL (psycopg 3): ``leveret serve --store postgresql://USER:PASS@HOST:PORT/DB`` (see
docs/cluster.md). The same contract as the SQLite store (the shared suite, tests/unit/test_store.py, runs on both).

Durability
    The writer's connection sets ``synchronous_commit = on``: a ``done(None)`` callback (and the publisher confirm
    the broker sends from it) comes after COMMIT returned, i.e. once the server has flushed the transaction to its
    WAL. A message survives ``kill -9`` of the broker and a crash of the database server (given fsync on there).

One writer, group commit (store/postgres_batch.py)
    :meth:`PostgresStore.submit` appends ``(ops, done)`` to the writer's deque and returns. One writer thread with
    its own connection writes everything queued in one transaction (up to ``max_batch_ops`` ops or
    ``max_batch_bytes`` of message data, but at least one whole submit), commits, and calls the callbacks in
    order. Definitions (``save_*`` / ``delete_*``) and :meth:`flush` go through the same writer, ordered with the
    message ops, and wait for the commit that covers them (one round trip to the server, more under load).

Reads
    ``load_*``, ``message_counts`` and ``max_message_id`` use a second connection (autocommit: each statement
    sees committed data only). ``load_messages`` pages by keyset on (seq, id), one indexed range per page;
    ``load_bodies`` is one ``id = ANY(array)`` lookup; ``load_definitions`` reads in one REPEATABLE READ
    transaction. A lost reader connection is reopened at the next read (one attempt, none while the writer has
    lost the database: a read that fails raises StoreError at once); a read statement times out after
    ``READ_TIMEOUT`` (30 s).

Schema, migrations, the node locks: store/postgres_schema.py.

Message ids
    :meth:`PostgresStore.id_block` takes the next block of ``ID_BLOCK`` ids from the schema's sequence (one
    ``nextval``): a node's ids never collide with another's, and are never reused across restarts.

Several nodes (``cluster=True``, store/postgres_cluster.py)
    Each definition write also appends its change to the ``changes`` log in the same transaction and NOTIFYs the
    other nodes; a :class:`~leveret.store.postgres_cluster.ClusterLink` (a thread with a connection of its own)
    heartbeats this node's row of ``nodes``, keeps the list of nodes, and hands the other nodes' changes to
    :meth:`watch_definitions`'s callback. Durable queues are owned by lease (``queues.owner``/``lease_until``): a
    new one is its declaring node's, :meth:`claim_queues` takes the free and expired ones at start, the link renews
    them and takes over expired ones (:meth:`watch_queues`), and fences this node when it cannot renew in time.
    A message routed here to a queue another node owns is a ``HandOver`` op (a row of ``handover``, written in the
    group commit, with a NOTIFY to the owner); the owner's link hands the queues with waiting rows to
    :meth:`watch_handed`'s callback, which reads them (:meth:`load_handed`) and takes them (``TakeHandOver``, in
    the transaction that pushes their messages). Every group commit checks, before its COMMIT, that this node still
    holds the leases of what it wrote for (the fence, store/postgres_leases.py); a dead node's delayed lanes are
    taken over by lease and moved to the taker (:meth:`watch_lanes`).

Losing the database while running
    A failed commit rolls back and calls its callbacks with a StoreError (the broker nacks those publishes and
    drops those messages from their queues). While the connection is lost, :meth:`free_space` reports 0 bytes, so
    the broker's disk alarm blocks publishers (``connection.blocked``) within a second; the writer reconnects
    with back-off, and the alarm clears once a commit works again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from leveret.core.storage import (
    BindingDef,
    DefinitionChange,
    Definitions,
    ExchangeDef,
    NodeRecord,
    PermissionDef,
    PolicyDef,
    QueueDef,
    StoredMessage,
    StoreError,
    UserDef,
)

from . import postgres_cluster, postgres_dedup, postgres_leases, postgres_schema
from . import postgres_schema as schema
from .postgres_batch import PgWriter
from .postgres_cluster import ClusterLink
from .postgres_schema import MIGRATIONS, SCHEMA_VERSION, text_in, text_out
from .tagged_json import decode_value, encode_value
from .writer_store import WriterStore

log = logging.getLogger("leveret.store")

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]

NO_SPACE_LEFT = 0
READ_TIMEOUT = 30.0  # seconds: the reader's statement_timeout
OWN_KEPT = 10_000  # this node's own definition changes remembered for superseded()
PLENTY = 1 << 62  # free_space() while the database is reachable: its disk is the server's business


class PostgresStore(WriterStore):
    """The PostgreSQL backend. ``url`` is a libpq URL (``postgresql://user:password@host:port/dbname``; a password
    may also come from PGPASSWORD or ~/.pgpass); ``?schema=NAME`` picks the PostgreSQL schema that holds the
    tables (default ``leveret``). ``schema`` overrides it. ``connect_retry``: seconds :meth:`open` keeps trying
    to reach a database that is down (back-off from 0.5 s to 5 s) before it gives up with a StoreError;
    ``lock_wait``: seconds it waits for another node's lock on the schema to go before it refuses the store.
    ``max_batch_ops`` / ``max_batch_bytes`` cap one group commit. ``node``: this node's name in the ``nodes`` table
    (default leveret@HOST); ``cluster``: several nodes may share the schema (each with a name of its own), and
    their definition changes are shared; ``node_lease``: seconds a node may go unseen before it counts as down."""

    def __init__(self, url: str, *, schema: str | None = None, connect_retry: float = 60.0,
                 connect_timeout: float = 10.0, lock_wait: float = postgres_schema.LOCK_WAIT,
                 max_batch_ops: int = 10_000, max_batch_bytes: int = 16 << 20, node: str | None = None,
                 cluster: bool = False, node_lease: float = 15.0) -> None:
        if _psycopg() is None:
            raise StoreError("a PostgreSQL store needs psycopg 3: pip install 'leveret[postgres]'")
        self.url, url_schema = postgres_schema.split_url(url)
        self.schema = schema or url_schema
        self._where = postgres_schema.where(self.url, self.schema)
        self.connect_retry = connect_retry
        self.connect_timeout = connect_timeout
        self.lock_wait = lock_wait
        self.max_batch_ops = max(1, max_batch_ops)
        self.max_batch_bytes = max(1, max_batch_bytes)
        self._is_open = False
        self._writer: PgWriter | None = None
        self._rconn: Any = None
        self._rlock = threading.Lock()
        self.max_id_written = 0  # the highest id this node wrote (COPY for ids above it: postgres_batch.py)
        self.id_ceiling = 0  # the highest id the sequence handed out, as far as this node knows
        self.ops_written = 0
        self.node = node or postgres_schema.default_node_name()
        self.cluster = cluster
        self.node_lease = node_lease
        self.channel = postgres_schema.channel(self.schema)
        self.definitions_version = 0  # the version of the definitions load_definitions read (cluster)
        self._link: ClusterLink | None = None
        self._own: dict[tuple[Any, ...], int] = {}  # object -> the version of this node's last change to it

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    @property
    def where(self) -> str:
        return self._where

    # --- opening and closing -------------------------------------------------------------------------------

    def open(self) -> None:
        if self._is_open:
            return
        psycopg = _psycopg()
        conn = schema.connect_retrying(self.url, self.schema, self.where, self.connect_timeout, self.connect_retry)
        try:
            self.configure_writer(conn)  # the node locks first: a node that is refused touches nothing
            self.max_id_written = self.id_ceiling = schema.migrate(conn, self.schema, self.where, self.node)
            self._rconn = self._open_reader()
            if self.cluster:
                self._link = ClusterLink(self)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.close()
            self._close_reader()
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"cannot open the PostgreSQL store {self.where}: {schema.reason(exc)}") from exc
            raise
        self._is_open = True
        self._writer = PgWriter(self, conn, log)

    def configure_writer(self, conn: Any) -> None:
        """The writer's session: durable commits, and the advisory locks of this node (postgres_schema.py). In a
        cluster the server ends a writer transaction left idle for two thirds of ``node_lease`` (a node paused in the
        middle of a commit): the rows its fence holds (postgres_leases.py) are then free before its lease runs out,
        so that another node can take them over."""
        conn.execute("SET synchronous_commit = on")
        if self.cluster:
            conn.execute(f"SET idle_in_transaction_session_timeout = {max(1, int(self.node_lease * 2000 / 3))}")
        schema.take_lock(conn, self.schema, self.where, self.lock_wait, node=self.node, cluster=self.cluster)

    def close(self) -> None:
        if not self._is_open:
            return
        writer = self._writer
        assert writer is not None
        if writer.in_writer():
            raise StoreError("close() called from a store callback (the writer thread): call it from elsewhere")
        writer.close()
        if self._link is not None:
            self._link.close()
            self._link = None
        self._is_open = False
        if writer.conn is not None:
            with contextlib.suppress(Exception):
                writer.conn.close()  # releases the advisory lock
        self._writer = None
        self._close_reader()

    def _open_reader(self) -> Any:
        """The reads' connection: a statement that takes longer than READ_TIMEOUT fails rather than hold up the
        event loop (the broker's reads are one indexed range or key lookup each)."""
        conn = schema.connect(self.url, self.schema, self.connect_timeout)
        conn.execute(f"SET statement_timeout = {int(READ_TIMEOUT * 1000)}")
        return conn

    def _close_reader(self) -> None:
        conn, self._rconn = self._rconn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- definitions ---------------------------------------------------------------------------------------

    def _define(self, what: str, args: tuple[Any, ...], statements: list[tuple[str, tuple[Any, ...]]],
                check: Callable[[Any], None] | None = None) -> Any:
        """Run a definition change's statements (``what``: the Store method, ``args``: its arguments); in a
        cluster its entry in the change log and the NOTIFY go in the same transaction, after ``check(conn)`` (a
        fence: postgres_leases.py), and the value a statement with RETURNING returned is returned."""
        if not self.cluster:
            self._execute(what, statements)
            return None
        log_statements = postgres_cluster.log_change(self.node, self.channel, what, args)
        returned: list[Any] = []

        def run(conn: Any) -> None:
            if check is not None:
                check(conn)
            for sql, params in statements:
                cursor = conn.execute(sql, params)
                if "RETURNING" in sql:
                    returned.append(cursor.fetchone()[0])
            version = postgres_cluster.run_log(conn, log_statements)
            own = self._own
            own[postgres_cluster.subject(what, args)] = version
            if len(own) > OWN_KEPT:  # only recent versions can still be overtaken (superseded)
                self._own = {key: kept for key, kept in own.items() if kept > version - OWN_KEPT // 2}

        self._wait(run, what)
        return returned[0] if returned else None

    def superseded(self, change: DefinitionChange) -> bool:
        """Whether this node changed the same object after ``change`` (two nodes changing one object at the same
        moment: the store holds the later change, and so must every node)."""
        return self._own.get(postgres_cluster.subject(change.what, change.args), 0) > change.version

    def save_vhost(self, name: str) -> None:
        self._define("save_vhost", (name,),
                     [("INSERT INTO vhosts (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,))])

    def delete_vhost(self, name: str) -> None:
        """Also deletes the vhost's definitions, policies, limits, messages and status records."""
        statements = [(f"DELETE FROM {table} WHERE vhost = %s", (name,))
                      for table in ("permissions", "bindings", "exchanges", "queues", "policies")]
        statements += [(f"DELETE FROM {table} WHERE vhost = %s", (text_in(name),))  # NUL-safe names (text_in)
                       for table in ("messages", "task_status", "dedup")]
        statements.append(("DELETE FROM handover WHERE vhost = %s", (name,)))
        statements += [("DELETE FROM limits WHERE kind = 'vhost' AND name = %s", (name,)),
                       ("DELETE FROM vhosts WHERE name = %s", (name,))]
        self._define("delete_vhost", (name,), statements)

    def save_user(self, user: UserDef) -> None:
        self._define("save_user", (user,), [(
            "INSERT INTO users (name, password_hash, tags) VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE"
            " SET password_hash = excluded.password_hash, tags = excluded.tags",
            (user.name, user.password_hash, json.dumps(list(user.tags))))])

    def delete_user(self, name: str) -> None:
        """Also deletes the user's permissions and limits."""
        self._define("delete_user", (name,), [("DELETE FROM permissions WHERE username = %s", (name,)),
                                      ("DELETE FROM limits WHERE kind = 'user' AND name = %s", (name,)),
                                      ("DELETE FROM users WHERE name = %s", (name,))])

    def save_permission(self, permission: PermissionDef) -> None:
        p = permission
        self._define("save_permission", (permission,), [(
            "INSERT INTO permissions (username, vhost, configure, write, read) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (username, vhost) DO UPDATE SET configure = excluded.configure, write = excluded.write,"
            " read = excluded.read", (p.user, p.vhost, p.configure, p.write, p.read))])

    def delete_permission(self, user: str, vhost: str) -> None:
        self._define("delete_permission", (user, vhost),
                     [("DELETE FROM permissions WHERE username = %s AND vhost = %s", (user, vhost))])

    def save_exchange(self, exchange: ExchangeDef) -> None:
        x = exchange
        self._define("save_exchange", (exchange,), [(
            "INSERT INTO exchanges (vhost, name, type, durable, auto_delete, internal, arguments)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (vhost, name) DO UPDATE SET type = excluded.type,"
            " durable = excluded.durable, auto_delete = excluded.auto_delete, internal = excluded.internal,"
            " arguments = excluded.arguments",
            (x.vhost, x.name, x.type, x.durable, x.auto_delete, x.internal, encode_value(x.arguments)))])

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._define("delete_exchange", (vhost, name), [
            ("DELETE FROM bindings WHERE vhost = %s AND (source = %s OR (destination_kind = 'exchange'"
             " AND destination = %s))", (vhost, name, name)),
            ("DELETE FROM exchanges WHERE vhost = %s AND name = %s", (vhost, name)),
            postgres_dedup.delete_owner(vhost, "exchange", name)])

    def save_policy(self, policy: PolicyDef) -> None:
        p = policy
        self._define("save_policy", (policy,), [(
            "INSERT INTO policies (vhost, name, pattern, definition, priority, apply_to)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (vhost, name) DO UPDATE SET pattern = excluded.pattern,"
            " definition = excluded.definition, priority = excluded.priority, apply_to = excluded.apply_to",
            (p.vhost, p.name, p.pattern, encode_value(p.definition), p.priority, p.apply_to))])

    def delete_policy(self, vhost: str, name: str) -> None:
        self._define("delete_policy", (vhost, name),
                     [("DELETE FROM policies WHERE vhost = %s AND name = %s", (vhost, name))])

    def save_limits(self, kind: str, name: str, limits: dict[str, int]) -> None:
        if limits:
            self._define("save_limits", (kind, name, limits), [(
                "INSERT INTO limits (kind, name, limits) VALUES (%s, %s, %s) ON CONFLICT (kind, name) DO UPDATE"
                " SET limits = excluded.limits", (kind, name, json.dumps(limits, sort_keys=True)))])
        else:
            self._define("save_limits", (kind, name, limits),
                         [("DELETE FROM limits WHERE kind = %s AND name = %s", (kind, name))])

    def save_queue(self, queue: QueueDef) -> str | None:
        """In a cluster a new queue is this node's (its lease starts), one that exists keeps its owner, and the
        owner is returned."""
        q = queue
        owner, lease = (self.node, self.node_lease) if self.cluster else (None, None)
        return self._define("save_queue", (queue,), [(  # type: ignore[no-any-return]
            "INSERT INTO queues (vhost, name, durable, auto_delete, arguments, owner, lease_until, exclusive)"
            " VALUES (%s, %s, %s, %s, %s, %s, extract(epoch FROM clock_timestamp()) + %s, %s)"
            " ON CONFLICT (vhost, name) DO UPDATE SET durable = excluded.durable,"
            " auto_delete = excluded.auto_delete, arguments = excluded.arguments RETURNING owner",
            (q.vhost, q.name, q.durable, q.auto_delete, encode_value(q.arguments), owner, lease, q.exclusive))])

    def delete_queue(self, vhost: str, name: str, owner: str | None = None) -> None:
        """In a cluster, a deletion by the queue's ``owner`` (x-expires, auto-delete, a client of the owner) is
        fenced: refused with FencedError, and nothing deleted, if that node no longer holds the queue's lease."""
        check = None
        if owner is not None and self.cluster:
            def check(conn: Any) -> None:
                postgres_leases.fence_queue(conn, owner, vhost, name)

        self._define("delete_queue", (vhost, name), [
            ("DELETE FROM bindings WHERE vhost = %s AND destination_kind = 'queue' AND destination = %s",
             (vhost, name)),
            ("DELETE FROM messages WHERE vhost = %s AND queue = %s", (text_in(vhost), text_in(name))),
            ("DELETE FROM handover WHERE vhost = %s AND queue = %s", (vhost, name)),
            ("DELETE FROM queues WHERE vhost = %s AND name = %s", (vhost, name)),
            postgres_dedup.delete_owner(vhost, "queue", name)], check)

    def save_binding(self, binding: BindingDef) -> None:
        b = binding
        self._define("save_binding", (binding,), [(
            "INSERT INTO bindings (vhost, source, destination, destination_kind, routing_key, arguments)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (b.vhost, b.source, b.destination, b.destination_kind, b.routing_key, encode_value(b.arguments)))])

    def delete_binding(self, binding: BindingDef) -> None:
        b = binding
        self._define("delete_binding", (binding,), [(
            "DELETE FROM bindings WHERE vhost = %s AND source = %s AND destination = %s AND destination_kind = %s"
            " AND routing_key = %s AND md5(arguments) = md5(%s)",
            (b.vhost, b.source, b.destination, b.destination_kind, b.routing_key, encode_value(b.arguments)))])

    # --- reads ---------------------------------------------------------------------------------------------

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(reader connection)``; a lost connection is reopened once."""
        if not self._is_open:
            raise StoreError(f"the store {self.where} is not open")
        psycopg = _psycopg()
        with self._rlock:
            for attempt in (1, 2):
                try:
                    if self._rconn is None or self._rconn.closed or self._rconn.broken:
                        self._close_reader()
                        if self._writer is not None and self._writer.down:  # do not stall the event loop
                            raise StoreError(f"reading the PostgreSQL store {self.where}: the database cannot "
                                             "be reached (the writer is reconnecting)")
                        self._rconn = self._open_reader()
                    return fn(self._rconn)
                except psycopg.Error as exc:
                    conn = self._rconn
                    if attempt == 1 and (conn is None or conn.closed or conn.broken):
                        continue
                    raise StoreError(f"reading the PostgreSQL store {self.where}: {schema.reason(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def load_definitions(self) -> Definitions:
        queries = (
            "SELECT name FROM vhosts ORDER BY pos",
            "SELECT name, password_hash, tags FROM users ORDER BY pos",
            "SELECT username, vhost, configure, write, read FROM permissions ORDER BY pos",
            "SELECT vhost, name, type, durable, auto_delete, internal, arguments FROM exchanges ORDER BY pos",
            "SELECT vhost, name, durable, auto_delete, arguments, exclusive FROM queues ORDER BY pos",
            "SELECT vhost, source, destination, destination_kind, routing_key, arguments FROM bindings ORDER BY pos",
            "SELECT vhost, name, pattern, definition, priority, apply_to FROM policies ORDER BY pos",
            "SELECT kind, name, limits FROM limits ORDER BY pos",
        )

        def run(conn: Any) -> list[list[Any]]:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                found = [conn.execute(query).fetchall() for query in queries]
                # the version these definitions are at: the other nodes' changes after it are applied (cluster)
                version = conn.execute("SELECT value FROM meta WHERE key = 'definitions_version'").fetchone()
                self.definitions_version = int(version[0]) if version else 0
                return found

        vhosts, users, permissions, exchanges, queues, bindings, policies, limits = self._read(run)
        return Definitions(
            vhosts=[name for (name,) in vhosts],
            users=[UserDef(name, password_hash, tuple(json.loads(tags))) for name, password_hash, tags in users],
            permissions=[PermissionDef(*row) for row in permissions],
            exchanges=[ExchangeDef(vhost, name, type_, durable, auto_delete, internal, decode_value(args))
                       for vhost, name, type_, durable, auto_delete, internal, args in exchanges],
            queues=[QueueDef(vhost, name, durable, auto_delete, decode_value(args), exclusive)
                    for vhost, name, durable, auto_delete, args, exclusive in queues],
            bindings=[BindingDef(vhost, source, destination, kind, routing_key, decode_value(args))
                      for vhost, source, destination, kind, routing_key, args in bindings],
            policies=[PolicyDef(vhost, name, pattern, decode_value(definition), priority, apply_to)
                      for vhost, name, pattern, definition, priority, apply_to in policies],
            limits=[(kind, name, json.loads(text)) for kind, name, text in limits],
        )

    def load_messages(self, vhost: str, queue: str, *, with_bodies: bool = True, after_seq: int = 0,
                      limit: int | None = None) -> Iterator[StoredMessage]:
        if not self._is_open:
            raise StoreError(f"the store {self.where} is not open")
        return self._iter_messages(vhost, queue, with_bodies, after_seq, limit)

    def _iter_messages(self, vhost: str, queue: str, with_bodies: bool, after_seq: int,
                       limit: int | None) -> Iterator[StoredMessage]:
        # keyset paging on (seq, id): each page is one statement (its own snapshot)
        page = 256 if with_bodies else 8192
        body = "body" if with_bodies else "NULL::bytea"
        sql = (f"SELECT id, seq, exchange, routing_key, header, redelivered, {body} FROM messages"
               " WHERE vhost = %s AND queue = %s AND (seq, id) > (%s, %s) ORDER BY seq, id LIMIT %s")
        last_seq, last_id = after_seq, 2**63 - 1  # seq > after_seq: (seq, id) > (after_seq, max id)
        remaining = -1 if limit is None else max(limit, 0)
        while remaining:
            count = page if remaining < 0 else min(page, remaining)
            params = (text_in(vhost), text_in(queue), last_seq, last_id, count)

            def page_of(conn: Any, params: tuple[Any, ...] = params) -> list[Any]:
                return conn.execute(sql, params, binary=True).fetchall()  # type: ignore[no-any-return]

            rows = self._read(page_of)
            for i, seq, exchange, routing_key, header, redelivered, data in rows:
                yield StoredMessage(i, vhost, queue, seq, text_out(exchange), text_out(routing_key), header,
                                    None if data is None else bytes(data), redelivered)
            if len(rows) < count:
                return
            last_id = rows[-1][0]
            last_seq = rows[-1][1]
            if remaining > 0:
                remaining -= len(rows)

    def load_bodies(self, ids: Iterable[int]) -> dict[int, bytes]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        rows = self._read(lambda conn: conn.execute("SELECT id, body FROM messages WHERE id = ANY(%b::bigint[])",
                                                    (wanted,), binary=True).fetchall())
        return {i: bytes(body) for i, body in rows}

    def load_dedup(self) -> dict[tuple[str, str, str], list[tuple[int, str, float]]]:
        return postgres_dedup.load(self._read(lambda conn: conn.execute(postgres_dedup.SELECT_ALL).fetchall()))

    def message_counts(self) -> dict[tuple[str, str], int]:
        rows = self._read(lambda conn: conn.execute(
            "SELECT vhost, queue, count(*) FROM messages GROUP BY vhost, queue").fetchall())
        return {(text_out(vhost), text_out(queue)): count for vhost, queue, count in rows}

    def max_message_id(self) -> int:
        return int(self._read(lambda conn: conn.execute(schema.MAX_MESSAGE_ID).fetchone()[0]))

    def id_block(self) -> tuple[int, int]:
        """The next ``ID_BLOCK`` ids of the schema's sequence (one ``nextval``, on the reader's connection)."""
        last = int(self._read(lambda conn: conn.execute(schema.NEXT_ID_BLOCK).fetchone()[0]))
        self.id_ceiling = max(self.id_ceiling, last)
        return last - schema.ID_BLOCK + 1, last

    def cluster_nodes(self) -> list[NodeRecord] | None:
        """The nodes of the cluster as of the last heartbeat (None without ``cluster``)."""
        return None if self._link is None else self._link.nodes()

    def claim_queues(self) -> dict[tuple[str, str], str] | None:
        """Take the lease of every durable queue that has no owner, an expired lease, or this node as its owner
        (start-up); every queue's owner after that. None without ``cluster``."""
        if self._link is None:
            return None
        return self._link.claim()

    def watch_queues(self, taken: Callable[[list[tuple[str, str]]], None], lost: Callable[[], None],
                     owners: Callable[[dict[tuple[str, str], str]], None] | None = None) -> None:
        """From now on, ``taken(queues)`` (on the link's thread) when this node took over queues whose owner's
        lease expired, ``lost()`` once if it could not renew its leases in time, and ``owners(found)`` when
        another node took queues over (see ClusterLink)."""
        if self._link is not None:
            self._link.watch_queues(taken, lost, owners)

    def watch_lanes(self, taken: Callable[[list[tuple[str, str, int]]], None]) -> None:
        """From now on, ``taken(lanes)`` (on the link's thread) when this node took over the delayed lanes of a node
        whose lane lease ran out (their messages moved into this node's lanes: postgres_leases.py)."""
        if self._link is not None:
            self._link.watch_lanes(taken)

    def fenced(self, reason: str) -> None:
        """The writer's fence refused a commit (postgres_leases.py): the node stops serving (see ClusterLink)."""
        if self._link is not None:
            self._link.fence(reason)

    def load_handed(self, vhost: str, queue: str, skip: Sequence[int], limit: int) -> list[StoredMessage]:
        """A page of the hand-over rows waiting for ``queue`` (id order), those of ``skip`` left out."""
        if self._link is None:
            return []
        params = (vhost, queue, list(skip), limit)  # the names as in ``queues`` (postgres_batch.py)

        def page(conn: Any) -> list[Any]:
            return conn.execute(  # type: ignore[no-any-return]
                "SELECT id, exchange, routing_key, header, body FROM handover WHERE vhost = %s AND queue = %s"
                " AND id <> ALL(%s::bigint[]) ORDER BY id LIMIT %s", params, binary=True).fetchall()

        return [StoredMessage(i, vhost, queue, 0, text_out(exchange), text_out(routing_key), bytes(header),
                              bytes(body), False) for i, exchange, routing_key, header, body in self._read(page)]

    def advertise(self, amqp: str) -> None:
        """Record where this node listens for AMQP in its row of ``nodes`` (the link's thread writes it)."""
        if self._link is not None:
            self._link.advertise(amqp)

    def cluster_secret(self) -> str | None:
        """The secret of the links between nodes (ClusterLink.secret), None without ``cluster``."""
        return None if self._link is None else self._link.secret()

    def watch_summary(self, summary: Callable[[], dict[str, Any] | None]) -> None:
        """From now on, write ``summary()`` to this node's row at each heartbeat (see ClusterLink)."""
        if self._link is not None:
            self._link.watch_summary(summary)

    def watch_handed(self, handed: Callable[[list[tuple[str, str]]], None]) -> None:
        """From now on, ``handed(queues)`` (on the link's thread) when hand-over rows wait for queues this node
        owns (see ClusterLink)."""
        if self._link is not None:
            self._link.watch_handed(handed)

    def watch_definitions(self, apply: Callable[[list[DefinitionChange]], None]) -> None:
        """From now on, hand the other nodes' definition changes (those after the version load_definitions read,
        in version order) to ``apply``, on the link's thread. Without ``cluster`` nothing is ever handed."""
        if self._link is not None:
            self._link.watch(apply, self.definitions_version)

    def free_space(self) -> int | None:
        """0 while the writer has lost the database (the disk alarm then blocks publishers), otherwise a large
        number: the database's own disk is the server's business."""
        writer = self._writer
        return NO_SPACE_LEFT if writer is not None and writer.down else PLENTY


def _psycopg() -> Any:
    return schema.psycopg
