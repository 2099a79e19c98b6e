"""The PostgreSQL store's writer: one thread, one connection, group commit; and one transaction's SQL.

:meth:`PgWriter.submit` appends ``(ops, done)`` to a deque and returns (never blocks on I/O). The writer thread
takes everything queued (up to the store's ``max_batch_ops`` ops or ``max_batch_bytes`` of message data, but
always at least one whole submit), writes it in one transaction (``BEGIN`` ... ``COMMIT``; the connection sets
``synchronous_commit = on``, so COMMIT returns once the server flushed its WAL), then calls the callbacks in submit
order: with None once COMMIT returned, or with the error of a failed transaction (rolled back: the next one starts
afresh). psycopg releases the GIL while it waits for the server, so the event loop keeps running, and while the
writer waits for a COMMIT the next batch piles up. A :class:`Call` among the submits (definitions, flush) runs in
the same transaction, after the message ops before it.

The ops of a transaction are reduced first, as in store/sqlite_batch.py: a Push and a Delete of the same id cancel
(a message acked before its commit never reaches the server), a Requeue of a message pushed in the same
transaction sets its flag, a Purge drops the transaction's earlier pushes to that queue, status puts of one record
are merged. What is left costs a fixed number of statements, whatever the batch size: one ``DELETE ... WHERE id =
ANY(array)``, one ``UPDATE ... = ANY(array)`` (each array one binary parameter; psycopg prepares statements it
runs repeatedly), one binary ``COPY`` for the pushes (see ``Batch._insert``), and an ``INSERT ... SELECT FROM
unnest(arrays) ON CONFLICT`` for status records.

A lost connection fails the transaction it was in and marks the writer ``down`` (the store then reports no free
space, which raises the broker's disk alarm: publishers are blocked instead of nacked one by one); each later
transaction first reconnects, with back-off between attempts (0.5 s doubling to 5 s; submits that arrive
meanwhile fail together; an idle writer tries by itself, since blocked publishers submit nothing), and takes the
store's advisory lock again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret.core.status_record import StatusRecord, decode, encode
from leveret.core.status_record import merge as merge_status
from leveret.core.storage import (
    DedupPut,
    Delete,
    FencedError,
    HandOver,
    Purge,
    Push,
    Requeue,
    StatusExpire,
    StatusPut,
    StatusRead,
    StoreError,
    TakeHandOver,
)

from . import postgres_dedup, postgres_leases
from . import postgres_schema as schema
from .postgres_schema import text_in, text_out

if TYPE_CHECKING:
    from .postgres import PostgresStore

Done = Callable[[BaseException | None], None]
log = logging.getLogger("leveret.store")

INSERT_MESSAGES = (
    "INSERT INTO messages (id, vhost, queue, seq, exchange, routing_key, header, body, redelivered)"
    " SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[],"
    " %b::bytea[], %b::bytea[], %b::boolean[])"
    " ON CONFLICT (id) DO UPDATE SET vhost = excluded.vhost, queue = excluded.queue, seq = excluded.seq,"
    " exchange = excluded.exchange, routing_key = excluded.routing_key, header = excluded.header,"
    " body = excluded.body, redelivered = excluded.redelivered")


COPY_MESSAGES = ("COPY messages (id, vhost, queue, seq, exchange, routing_key, header, body, redelivered)"
                 " FROM STDIN (FORMAT BINARY)")
COPY_TYPES = ["int8", "text", "text", "int8", "text", "text", "bytea", "bytea", "bool"]
COPY_HANDOVER = ("COPY handover (id, vhost, queue, node, exchange, routing_key, header, body)"
                 " FROM STDIN (FORMAT BINARY)")
COPY_HANDOVER_TYPES = ["int8", "text", "text", "text", "text", "text", "bytea", "bytea"]


class Call:
    """A queued item that runs ``fn(connection)`` in the writer's transaction."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], object]) -> None:
        self.fn = fn


# --- one transaction's ops, reduced ----------------------------------------------------------------------------


class Batch:
    """The message ops of one transaction, reduced (see the module docstring); ``write`` runs the SQL."""

    __slots__ = ("dedup", "deletes", "handed", "max_id", "meta_id", "nbytes", "nops", "purges", "pushes",
                 "redelivered", "requeues", "status", "store", "taken")

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.max_id = self.meta_id = store.max_id_written
        self.nops = self.nbytes = 0
        self._reset()

    def _reset(self) -> None:
        self.pushes: dict[int, Push] = {}
        self.redelivered: set[int] = set()
        self.deletes: list[int] = []
        self.requeues: list[int] = []
        self.purges: list[tuple[str, str, int]] = []
        self.status: dict[tuple[str, str], StatusRecord] = {}
        self.dedup: list[DedupPut] = []  # deduplication ids (postgres_dedup.py), written with the messages
        self.handed: list[HandOver] = []  # several nodes: messages for queues other nodes own (docs/cluster.md)
        self.taken: list[int] = []  # several nodes: hand-over rows this node took into its queues

    def full(self) -> bool:
        store = self.store
        return self.nops >= store.max_batch_ops or self.nbytes >= store.max_batch_bytes

    def add(self, conn: Any, ops: list[Any]) -> None:
        pushes = self.pushes
        max_id = self.max_id
        nbytes = 0
        for op in ops:
            kind = type(op)
            if kind is Push:
                pushes[op.id] = op
                nbytes += len(op.body) + len(op.header)
                if op.id > max_id:
                    max_id = op.id
            elif kind is Delete:
                if pushes.pop(op.id, None) is None:
                    self.deletes.append(op.id)
                else:
                    self.redelivered.discard(op.id)
            elif kind is Requeue:
                if op.id in pushes:
                    self.redelivered.add(op.id)
                else:
                    self.requeues.append(op.id)
            elif kind is Purge:
                for message_id in [i for i, p in pushes.items()
                                   if p.queue == op.queue and p.vhost == op.vhost and p.seq > op.after_seq]:
                    del pushes[message_id]
                    self.redelivered.discard(message_id)
                self.purges.append((op.vhost, op.queue, op.after_seq))
            elif kind is StatusPut:
                key = (op.vhost, op.record.id)
                self.status[key] = merge_status(self.status.get(key), op.record)
            elif kind is DedupPut:
                self.dedup.append(op)
            elif kind is HandOver:
                self.handed.append(op)
                nbytes += len(op.body) + len(op.header)
            elif kind is TakeHandOver:
                self.taken.extend(op.ids)
            elif kind is StatusRead:
                self._write_status(conn)  # the read sees every put before it
                stored = _stored_status(conn, [(op.vhost, task_id) for task_id in dict.fromkeys(op.ids)])
                op.records = {key[1]: record for key, record in stored.items() if record.expires > op.now}
            elif kind is StatusExpire:
                self._write_status(conn)
                cursor = conn.execute(
                    "DELETE FROM task_status WHERE (vhost, id) IN (SELECT vhost, id FROM task_status"
                    " WHERE expires <= %s ORDER BY expires LIMIT %s)", (op.now, op.limit))
                op.deleted = max(cursor.rowcount, 0)
            else:
                raise TypeError(f"not a message op: {op!r}")
        self.max_id = max_id
        self.nbytes += nbytes
        self.nops += len(ops)

    def write(self, conn: Any) -> None:
        """Write what was collected (purges, deletes, requeues, then inserts: what the ops meant, since every
        remaining insert came after every remaining purge or delete of its id or queue). Several nodes: then the
        fence (store/postgres_leases.py): this node must still own, with a live lease, every queue and lane it
        wrote for, or the whole transaction fails with FencedError."""
        cluster = self.store.cluster
        written: set[tuple[str, str]] = set()  # (vhost, queue) written for (several nodes: the fence checks them)
        for vhost, queue, after_seq in self.purges:
            conn.execute("DELETE FROM messages WHERE vhost = %s AND queue = %s AND seq > %s",
                         (text_in(vhost), text_in(queue), after_seq))
            written.add((vhost, queue))
        if self.deletes:
            if cluster:
                written |= postgres_leases.stored_names(conn.execute(postgres_leases.DELETE_OWNED, (self.deletes,)))
            else:
                conn.execute("DELETE FROM messages WHERE id = ANY(%b::bigint[])", (self.deletes,))
        if self.requeues:
            if cluster:
                written |= postgres_leases.stored_names(conn.execute(postgres_leases.REQUEUE_OWNED,
                                                                     (self.requeues,)))
            else:
                conn.execute("UPDATE messages SET redelivered = true WHERE id = ANY(%b::bigint[])",
                             (self.requeues,))
        if self.pushes:
            self._insert(conn)
            if cluster:
                written.update([(p.vhost, p.queue) for p in self.pushes.values()])
        if self.dedup:
            postgres_dedup.write(conn, self.dedup)
        if self.taken:
            self._take(conn)
        handed = bool(self.handed)
        if handed:
            self._hand_over(conn)
        if cluster and (written or handed or self.deletes or self.requeues):
            postgres_leases.fence(conn, self.store.node, written)
        self._write_status(conn)
        self._reset()
        if self.max_id > self.store.id_ceiling:  # ids not from a block (direct users of the store): never reused
            conn.execute("SELECT setval('message_ids', greatest(%s, (SELECT last_value FROM message_ids)))",
                         (self.max_id,))
            self.store.id_ceiling = self.max_id

    def _insert(self, conn: Any) -> None:
        """New ids (above this node's committed high-water mark: no row can have them, since ids come from this
        node's blocks of the sequence) go in with one binary COPY, the
        fastest way in (measured: 1.2-2x unnest's rate for 16 B to 1 KB bodies at 1,000-5,000 rows); an id
        that may exist (never, in the broker today) with one ``INSERT ... unnest ... ON CONFLICT`` that
        replaces it, as SQLite's ``INSERT OR REPLACE``."""
        redelivered = self.redelivered
        fresh: list[Push] = []
        again: list[Push] = []
        meta_id = self.meta_id
        for p in self.pushes.values():
            (fresh if p.id > meta_id else again).append(p)
        if fresh:
            with conn.cursor() as cursor, cursor.copy(COPY_MESSAGES) as copy:
                copy.set_types(COPY_TYPES)
                write_row = copy.write_row
                for p in fresh:
                    write_row((p.id, text_in(p.vhost), text_in(p.queue), p.seq, text_in(p.exchange),
                               text_in(p.routing_key), p.header, p.body, p.id in redelivered))
        if again:
            conn.execute(INSERT_MESSAGES, (
                [p.id for p in again], [text_in(p.vhost) for p in again], [text_in(p.queue) for p in again],
                [p.seq for p in again], [text_in(p.exchange) for p in again],
                [text_in(p.routing_key) for p in again],
                [p.header for p in again], [p.body for p in again], [p.id in redelivered for p in again]))

    def _hand_over(self, conn: Any) -> None:
        """Messages for queues other nodes own: one binary COPY into ``handover``, then one NOTIFY per owner (sent
        at COMMIT; the owner's ClusterLink takes it as its cue to read them: store/postgres_cluster.py). The vhost
        and queue names go in as they are in ``queues`` (a durable queue's name holds no NUL)."""
        with conn.cursor() as cursor, cursor.copy(COPY_HANDOVER) as copy:
            copy.set_types(COPY_HANDOVER_TYPES)
            node = self.store.node
            for h in self.handed:
                copy.write_row((h.id, h.vhost, h.queue, node, text_in(h.exchange),
                                text_in(h.routing_key), h.header, h.body))
        for owner in dict.fromkeys(h.owner for h in self.handed):
            conn.execute("SELECT pg_notify(%s, %s)", (self.store.channel, "handover " + owner))

    def _take(self, conn: Any) -> None:
        """Hand-over rows taken by this node (their messages are pushed in this transaction): all of them must be
        there, or another node took some (it owns the queue now) and this transaction fails as a whole."""
        cursor = conn.execute("DELETE FROM handover WHERE id = ANY(%b::bigint[])", (self.taken,))
        if cursor.rowcount != len(self.taken):
            raise StoreError(f"{len(self.taken) - max(cursor.rowcount, 0)} of {len(self.taken)} hand-over rows "
                             "were taken by another node (it owns their queue now)")

    def _write_status(self, conn: Any) -> None:
        """Merge the status puts into the table, in a savepoint: status records are advisory, and one the server
        refuses (a task id too long for the index, say) must not fail the transaction's messages."""
        if not self.status:
            return
        puts, self.status = self.status, {}
        try:
            with conn.transaction():
                self._merge_status(conn, puts)
        except schema.psycopg.Error as exc:
            if conn.closed or conn.broken:
                raise
            log.error("store %s: %d status records not written: %s", self.store.where, len(puts), schema.reason(exc))

    def _merge_status(self, conn: Any, puts: dict[tuple[str, str], StatusRecord]) -> None:
        stored = _stored_status(conn, list(puts))
        records = [merge_status(stored.get(key), record) for key, record in puts.items()]
        conn.execute(
            "INSERT INTO task_status (vhost, id, expires, record)"
            " SELECT * FROM unnest(%b::text[], %b::text[], %b::float8[], %b::text[])"
            " ON CONFLICT (vhost, id) DO UPDATE SET expires = excluded.expires, record = excluded.record",
            ([text_in(key[0]) for key in puts], [text_in(key[1]) for key in puts], [r.expires for r in records],
             [encode(r) for r in records]))

    def committed(self) -> None:
        self.store.max_id_written = self.max_id
        self.store.ops_written += self.nops


def _stored_status(conn: Any, keys: list[tuple[str, str]]) -> dict[tuple[str, str], StatusRecord]:
    by_vhost: dict[str, list[str]] = {}
    for vhost, task_id in keys:
        by_vhost.setdefault(vhost, []).append(task_id)
    found: dict[tuple[str, str], StatusRecord] = {}
    for vhost, ids in by_vhost.items():
        for task_id, text in conn.execute("SELECT id, record FROM task_status WHERE vhost = %s AND id = ANY(%s)",
                                          (text_in(vhost), [text_in(i) for i in ids])):
            found[(vhost, text_out(task_id))] = decode(text)
    return found


# --- the writer thread -----------------------------------------------------------------------------------------


class PgWriter:
    """The store's one writer. ``conn`` is its opened connection (holding the store's advisory lock)."""

    def __init__(self, store: PostgresStore, conn: Any, log: logging.Logger) -> None:
        self.store = store
        self.conn: Any = conn
        self.label = f"store {store.where}"
        self._log = log
        self._queue: collections.deque[tuple[Any, Done]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()  # set by close(): ends a back-off wait
        self._idle = False
        self.closing = False
        self.down = False  # the connection is lost and not yet back
        self._failing = 0
        self._last_failure_log = float("-inf")
        self._retry_at = 0.0
        self._delay = 0.5
        self.commits = 0
        self.failed_commits = 0
        self._thread = threading.Thread(target=self._main, name=f"leveret-store-writer {store.schema}", daemon=True)
        self._thread.start()

    def submit(self, payload: Any, done: Done) -> None:
        self._queue.append((payload, done))
        if self._idle:
            self._wake.set()

    def call(self, fn: Callable[[Any], object]) -> BaseException | None:
        """Run ``fn(conn)`` in the writer's transaction after everything submitted so far; wait for its commit."""
        finished = threading.Event()
        outcome: list[BaseException | None] = []

        def done(exc: BaseException | None) -> None:
            outcome.append(exc)
            finished.set()

        self.submit(Call(fn), done)
        self._wake.set()
        while not finished.wait(1.0):
            if not self._thread.is_alive():  # pragma: no cover - the writer never exits early
                raise StoreError(f"{self.label}: the writer has stopped")
        return outcome[0]

    def in_writer(self) -> bool:
        return self._thread is threading.current_thread()

    def close(self) -> None:
        """Write what is queued (its callbacks are called), then stop the thread. The connection stays open."""
        self.closing = True
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _main(self) -> None:
        queue = self._queue
        wake = self._wake
        while True:
            if not queue:
                if self.closing:
                    return
                self._idle = True
                if not queue and not self.closing:
                    # while down, wake up to reconnect by itself: blocked publishers submit nothing
                    wake.wait(max(0.1, self._retry_at - time.monotonic()) if self.down else None)
                    wake.clear()
                self._idle = False
                if self.down and not queue and not self.closing:
                    self._probe()
                continue
            try:
                self._transaction()
            except BaseException:  # pragma: no cover - _transaction reports its own errors
                self._log.exception("%s: writer error", self.label)

    def _transaction(self) -> None:
        queue = self._queue
        items: list[tuple[Any, Done]] = []
        batch = Batch(self.store)
        error: BaseException | None = None
        own: dict[int, BaseException] = {}  # index in items -> the error of a Call that failed alone
        try:
            conn = self._connection()
            with conn.transaction():
                while queue and not batch.full():
                    item = queue.popleft()
                    items.append(item)
                    payload = item[0]
                    if payload.__class__ is Call:
                        batch.write(conn)
                        self._call(conn, payload, own, len(items) - 1)
                    else:
                        batch.add(conn, payload)
                batch.write(conn)
        except BaseException as exc:
            if not items:  # no connection: fail what is queued now, together
                while queue:
                    items.append(queue.popleft())
            error = self._failed(exc, len(items))
        else:
            self.commits += 1
            batch.committed()
            if self._failing:
                self._log.warning("%s: commits work again after %d failed", self.label, self._failing)
                self._failing = 0
                self._last_failure_log = float("-inf")
        for index, (_, done) in enumerate(items):
            try:
                done(error or own.get(index))
            except Exception:
                self._log.exception("%s: a done callback failed", self.label)

    def _call(self, conn: Any, call: Call, own: dict[int, BaseException], index: int) -> None:
        """Run a Call (a definition change) in a savepoint: a statement the server refuses (a name with NUL,
        say) fails that call alone, not the other submits of the transaction. A lost connection fails them all."""
        psycopg = schema.psycopg
        try:
            with conn.transaction():
                call.fn(conn)
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                raise
            error = StoreError(f"writing to the PostgreSQL store {self.store.where}: {schema.reason(exc)}")
            error.__cause__ = exc
            own[index] = error

    def _failed(self, exc: BaseException, count: int) -> BaseException:
        psycopg = schema.psycopg
        error: BaseException = exc
        if isinstance(exc, FencedError):  # several nodes: this node lost a lease it wrote under (postgres_leases.py)
            self.failed_commits += 1
            self._log.error("%s: a commit of %d submits was refused and rolled back: %s", self.label, count, exc)
            self.store.fenced(str(exc))
            return exc
        if isinstance(exc, psycopg.Error):
            error = StoreError(f"writing to the PostgreSQL store {self.store.where}: {schema.reason(exc)}")
            error.__cause__ = exc
        self.failed_commits += 1
        self._failing += 1
        conn = self.conn
        if conn is None or conn.closed or conn.broken:
            if not self.down:
                self._log.error("%s: the connection to PostgreSQL is lost: %s", self.label, error)
            self.down = True
            self._drop()
        now = time.monotonic()
        if now - self._last_failure_log >= 10.0:  # at most one line per 10 s while it keeps failing
            self._last_failure_log = now
            self._log.error("%s: a commit of %d submits failed (%d failed so far): %s", self.label, count,
                            self._failing, error)
        return error

    def _probe(self) -> None:
        """Try to reconnect while idle and down (one attempt; the back-off spaces them)."""
        try:
            self._connection()
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_failure_log >= 10.0:
                self._last_failure_log = now
                self._log.error("%s: still cannot reach PostgreSQL: %s", self.label,
                                schema.reason(exc) if isinstance(exc, schema.psycopg.Error) else exc)

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _connection(self) -> Any:
        """The writer's connection; after a loss, reconnect (waiting for the back-off first)."""
        if self.conn is not None and not self.conn.closed and not self.conn.broken:
            return self.conn
        self.down = True
        self._drop()
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            self._stop.wait(wait)
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, 5.0)
        store = self.store
        conn = schema.connect(store.url, store.schema, store.connect_timeout, "writer")
        try:
            store.configure_writer(conn)
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self.down = False
        self._delay = 0.5
        self._log.warning("%s: reconnected to PostgreSQL", self.label)
        return conn
