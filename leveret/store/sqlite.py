"""The default store: one SQLite database file (``<data_dir>/leveret.db``), durable by default.

Durability
    WAL journal, ``PRAGMA synchronous=FULL``: a transaction is on disk when COMMIT returns, so a ``done(None)``
    callback (and the publisher confirm the broker sends from it) means the message survives ``kill -9`` and a
    power cut.

One writer, group commit (leveret/sqlite_writer.py, shared with the outbox)
    :meth:`SqliteStore.submit` appends ``(ops, done)`` to the writer's deque and returns (it keeps the list: do
    not reuse it). One writer thread, with its own connection, takes everything queued (at most
    ``max_batch_ops`` ops or ``max_batch_bytes`` of message data per transaction, default 10,000 / 16 MB, but
    always at least one whole submit), writes it in one transaction, commits, then calls the batch's callbacks
    in submit order. While the writer commits, the next batch piles up, and when it did (the writer is
    saturated) the writer waits ``gather`` (2 ms) before it starts the next transaction, so that more submits
    share the commit: pubsub with confirms measured 10-16 % less broker CPU per message with a 3 ms wait
    (docs/performance.md, "The persistent path"); a writer idle after its commit starts at once, so a lone
    confirm is not delayed. Under saturation a batch is a full
    10,000 ops (~0.1 s of work); smaller caps (1,000) measured about the same 16 B throughput with lower
    confirm latency but ~15% less for 1 KB bodies. How a transaction's ops are reduced and written:
    store/sqlite_batch.py.

Definitions
    ``save_*`` / ``delete_*`` go through the same writer and wait for the commit that covers them: they are
    durable when they return, and they are ordered with message ops exactly as they were called (the writer
    writes the message ops reduced so far before running a definition statement, all in the same
    transaction). So ``delete_queue`` followed by pushes to a re-created queue of the same name keeps the new
    messages, and pushes submitted before a ``delete_queue`` are deleted with it. The wait is one commit,
    usually a millisecond or two but up to a full batch (~0.1 s) under heavy publishing: an event loop that
    must not stall can call them through ``loop.run_in_executor`` (any thread may call them).

Reads
    ``load_*``, ``message_counts`` and ``max_message_id`` use a second connection (WAL readers do not block the
    writer, nor it them) and see committed data only: a body whose Push has not been confirmed (done) yet is
    not found by :meth:`load_bodies`. ``load_messages`` pages through the queue with short read transactions,
    so an iterator left half-consumed does not hold up WAL checkpoints.

Schema and refusals
    store/sqlite_schema.py. Bodies up to ``INLINE_BODY_MAX`` (128) bytes are stored in ``messages.body``,
    larger ones in ``bodies`` (reads take either). Measured (bench/store_bench.py --layouts): small bodies inline
    fill ~15-20% faster than with a second table (one insert, not two), while for 1 KB bodies a separate table
    makes the recovery scan (``load_messages(with_bodies=False)``) read ~110 MB instead of ~1.4 GB per million
    messages (the SQL part of the scan is ~9x cheaper; the whole load, mostly Python, 10-25% faster, 3.6 s
    instead of 4.9 s from a cold cache). Raising the limit to 1024 was measured again on 2026-12-07
    (docs/performance.md, "The persistent path"): 1 KB bodies filled faster in the store alone, but side by side
    in a broker it gained nothing clear on a 1 KB backlog and cost pubsub with confirms 1 KB ~13 % more CPU per
    message (and the recovery scan of a million 1 KB messages ~1 s more), so it stays 128. quick_check reads the
    whole file: ~0.25 s per million small messages when cached, 12-18 s for a 1.4 GB store from a cold disk
    (``quick_check=False`` skips it).

Paging reads
    A bounded ``load_messages`` without bodies is a queue paging its records back in (core/paging.py), which
    asks for their bodies next: the read takes the inline bodies along in the same rows and keeps them (up to
    ``PAGED_BODIES_MAX`` bytes) for the ``load_bodies`` that follows, which takes them without a second query.
    A body is never changed once stored, so the kept copy is the stored one; a message deleted after its page
    was read may still be served from it until it is taken or the cache is cleared (the broker asks only for the
    bodies of messages it still holds).

Failures
    A failed commit (disk full, I/O error) rolls back and calls the batch's callbacks with a StoreError; the next
    batch starts afresh, so the store works again once there is room.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from leveret.core.storage import (
    BindingDef,
    Definitions,
    ExchangeDef,
    PermissionDef,
    PolicyDef,
    QueueDef,
    StoredMessage,
    StoreError,
    UserDef,
)
from leveret.sqlite_writer import Writer

from . import sqlite_dedup
from . import sqlite_schema as schema
from .sqlite_batch import MessageBatch, chunks, marks
from .sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from .tagged_json import decode_value, encode_value
from .writer_store import WriterStore

log = logging.getLogger("leveret.store")

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStore", "decode_value", "encode_value"]

FREE_SPACE_EVERY = 1.0  # seconds: free_space() asks the file system (statvfs) at most this often
WRITER_GATHER = 0.002  # seconds a saturated writer waits for more submits before a transaction (0: never)
PAGED_BODIES_MAX = 4 << 20  # bytes of inline bodies kept from paging reads for the load_bodies that follows


class _StoredMessageTwin:
    """A fast way to build StoredMessage records (recovery builds one per stored message).

    StoredMessage is a frozen slots dataclass: its generated __init__ sets each field through
    object.__setattr__, ~2.4 us per record here, which is most of the cost of loading a backlog. This plain
    class has the same __slots__, so it is layout-compatible and an instance of it can be given StoredMessage
    as its class (a supported CPython operation): 0.6 us in all, and the result is an ordinary, still frozen,
    StoredMessage. _make_twin() checks that at import and falls back to the normal constructor otherwise."""

    # same names in the same order as StoredMessage's: the layouts must match
    __slots__ = ("id", "vhost", "queue", "seq", "exchange", "routing_key", "header", "body", "redelivered")  # noqa: RUF023

    def __init__(self, id: int, vhost: str, queue: str, seq: int, exchange: str, routing_key: str,
                 header: bytes, body: bytes | None, redelivered: bool) -> None:
        self.id = id
        self.vhost = vhost
        self.queue = queue
        self.seq = seq
        self.exchange = exchange
        self.routing_key = routing_key
        self.header = header
        self.body = body
        self.redelivered = redelivered


def _make_twin() -> Callable[..., Any] | None:
    try:
        names = tuple(f.name for f in dataclasses.fields(StoredMessage))
        if (StoredMessage.__bases__ != (object,) or getattr(StoredMessage, "__slots__", None) != names
                or _StoredMessageTwin.__slots__ != names):
            return None
        values = (1, "v", "q", 2, "x", "r", b"h", b"b", True)
        probe: Any = _StoredMessageTwin(*values)
        probe.__class__ = StoredMessage
        if probe != StoredMessage(*values) or type(probe) is not StoredMessage:
            return None
        return _StoredMessageTwin
    except Exception:  # pragma: no cover
        return None


_TWIN = _make_twin()



class SqliteStore(WriterStore):
    """The SQLite backend. ``path`` is the database file; its directory is created if missing.

    ``synchronous`` is SQLite's PRAGMA synchronous (FULL: a confirmed message is on disk; NORMAL: it survives a
    process crash but not a power cut). ``busy_timeout`` (seconds) is how long to wait for a lock held by
    another connection. ``max_batch_ops`` / ``max_batch_bytes`` cap one group commit (a single submit larger
    than the cap is still written whole). ``quick_check`` runs ``PRAGMA quick_check`` on open (it reads the
    whole file: about 1 s per GB when cached, ~10 s per GB from a cold disk here). ``gather`` (seconds) is how long a
    saturated writer waits for more submits before a transaction (0: never; see the module docstring).
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout: float = 5.0,
                 max_batch_ops: int = 10_000, max_batch_bytes: int = 16 << 20, quick_check: bool = True,
                 gather: float = WRITER_GATHER) -> None:
        self.path = Path(path)
        if synchronous.upper() not in schema.SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(schema.SYNCHRONOUS)}, not {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.max_batch_ops = max(1, max_batch_ops)
        self.max_batch_bytes = max(1, max_batch_bytes)
        self.quick_check = quick_check
        self.gather = max(0.0, gather)
        self._is_open = False
        self._writer: Writer | None = None
        self._wconn: sqlite3.Connection | None = None  # the writer's connection until the writer starts
        self._rconn: sqlite3.Connection | None = None
        self._rlock = threading.Lock()
        self._lock_file: int | None = None
        self._free: tuple[float, int | None] = (float("-inf"), None)  # (when, bytes): see free_space
        self._paged: dict[int, bytes] = {}  # id -> inline body read by a paging read, until load_bodies takes it
        self._paged_bytes = 0  # their size (at most PAGED_BODIES_MAX + one page)
        self.max_id_written = 0  # the message id high-water mark in the meta table (the writer's batches)
        self.ops_written = 0  # counters (for benchmarks and metrics)

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    @property
    def where(self) -> str:
        return str(self.path)

    # --- opening and closing -------------------------------------------------------------------------------

    def open(self) -> None:
        if self._is_open:
            return
        path = self.path
        sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        existed = {p for p in sidecars if p.exists()}
        try:
            schema.check_files(path)
            self._lock_file = schema.take_lock(path)
            self._wconn = conn = schema.connect(path, self.busy_timeout)
            schema.check_database(conn, path, self.quick_check)
            self.max_id_written = schema.migrate(conn, path, self.synchronous)
            self._rconn = schema.connect(path, self.busy_timeout)
            self._rconn.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            self._release()
            for sidecar in sidecars:  # leave the directory as it was: only the WAL files this attempt made go
                if sidecar not in existed:
                    with contextlib.suppress(OSError):
                        sidecar.unlink()
            if isinstance(exc, sqlite3.Error):
                raise self._error("cannot open", exc) from exc
            if isinstance(exc, OSError):
                raise StoreError(f"cannot open the store {path}: {exc.strerror or exc}") from exc
            raise
        self._is_open = True
        self._wconn = None
        self._writer = Writer(name=f"leveret-store-writer {path.name}", label=f"store {path}", conn=conn,
                              connect=self._reconnect_writer, new_batch=lambda: MessageBatch(self),
                              describe=lambda exc: self._error("writing to", exc), log=log, gather=self.gather)

    def _reconnect_writer(self) -> sqlite3.Connection:
        conn = schema.connect(self.path, self.busy_timeout)
        schema.configure_writer(conn, self.synchronous)
        return conn

    def _error(self, doing: str, exc: sqlite3.Error) -> StoreError:
        return schema.describe_error(self.path, doing, exc)

    def close(self) -> None:
        if not self._is_open:
            return
        writer = self._writer
        assert writer is not None
        if writer.in_writer():
            raise StoreError("close() called from a store callback (the writer thread): call it from elsewhere")
        writer.close()
        self._is_open = False
        self._paged.clear()
        self._paged_bytes = 0
        self._wconn = writer.conn
        try:
            self._wconn.execute("PRAGMA optimize")
            self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("store %s: final checkpoint failed: %s", self.path, exc)
        self._release()

    def _release(self) -> None:
        for conn in (self._rconn, self._wconn):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._rconn = self._wconn = None
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock
            self._lock_file = None

    # --- writes --------------------------------------------------------------------------------------------

    # --- definitions ---------------------------------------------------------------------------------------

    def save_vhost(self, name: str) -> None:
        self._execute("save_vhost", [("INSERT OR IGNORE INTO vhosts (name) VALUES (?)", (name,))])

    def delete_vhost(self, name: str) -> None:
        self._execute("delete_vhost", [
            (f"DELETE FROM {table} WHERE vhost = ?", (name,))
            for table in ("permissions", "bindings", "exchanges", "queues", "policies", "messages", "task_status",
                          "dedup")
        ] + [("DELETE FROM limits WHERE kind = 'vhost' AND name = ?", (name,)),
             ("DELETE FROM vhosts WHERE name = ?", (name,))])

    def save_user(self, user: UserDef) -> None:
        tags = json.dumps(list(user.tags))
        self._execute("save_user", [("INSERT OR REPLACE INTO users (name, password_hash, tags) VALUES (?, ?, ?)",
                                     (user.name, user.password_hash, tags))])

    def delete_user(self, name: str) -> None:
        """Also deletes the user's permissions."""
        self._execute("delete_user", [("DELETE FROM permissions WHERE user = ?", (name,)),
                                      ("DELETE FROM limits WHERE kind = 'user' AND name = ?", (name,)),
                                      ("DELETE FROM users WHERE name = ?", (name,))])

    def save_permission(self, permission: PermissionDef) -> None:
        p = permission
        self._execute("save_permission", [(
            "INSERT OR REPLACE INTO permissions (user, vhost, configure, write, read) VALUES (?, ?, ?, ?, ?)",
            (p.user, p.vhost, p.configure, p.write, p.read))])

    def delete_permission(self, user: str, vhost: str) -> None:
        self._execute("delete_permission", [("DELETE FROM permissions WHERE user = ? AND vhost = ?", (user, vhost))])

    def save_exchange(self, exchange: ExchangeDef) -> None:
        x = exchange
        self._execute("save_exchange", [(
            "INSERT OR REPLACE INTO exchanges (vhost, name, type, durable, auto_delete, internal, arguments)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (x.vhost, x.name, x.type, int(x.durable), int(x.auto_delete), int(x.internal),
             encode_value(x.arguments)))])

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._execute("delete_exchange", [
            ("DELETE FROM bindings WHERE vhost = ? AND (source = ? OR (destination_kind = 'exchange'"
             " AND destination = ?))", (vhost, name, name)),
            ("DELETE FROM exchanges WHERE vhost = ? AND name = ?", (vhost, name)),
            ("DELETE FROM dedup WHERE vhost = ? AND kind = 'exchange' AND name = ?", (vhost, name))])

    def save_policy(self, policy: PolicyDef) -> None:
        p = policy
        self._execute("save_policy", [(
            "INSERT OR REPLACE INTO policies (vhost, name, pattern, definition, priority, apply_to)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (p.vhost, p.name, p.pattern, encode_value(p.definition), p.priority, p.apply_to))])

    def delete_policy(self, vhost: str, name: str) -> None:
        self._execute("delete_policy", [("DELETE FROM policies WHERE vhost = ? AND name = ?", (vhost, name))])

    def save_limits(self, kind: str, name: str, limits: dict[str, int]) -> None:
        if limits:
            self._execute("save_limits", [("INSERT OR REPLACE INTO limits (kind, name, limits) VALUES (?, ?, ?)",
                                           (kind, name, json.dumps(limits, sort_keys=True)))])
        else:
            self._execute("save_limits", [("DELETE FROM limits WHERE kind = ? AND name = ?", (kind, name))])

    def save_queue(self, queue: QueueDef) -> None:
        q = queue
        self._execute("save_queue", [(
            "INSERT OR REPLACE INTO queues (vhost, name, durable, auto_delete, arguments) VALUES (?, ?, ?, ?, ?)",
            (q.vhost, q.name, int(q.durable), int(q.auto_delete), encode_value(q.arguments)))])

    def delete_queue(self, vhost: str, name: str, owner: str | None = None) -> None:
        self._execute("delete_queue", [
            ("DELETE FROM bindings WHERE vhost = ? AND destination_kind = 'queue' AND destination = ?",
             (vhost, name)),
            ("DELETE FROM messages WHERE vhost = ? AND queue = ?", (vhost, name)),
            ("DELETE FROM queues WHERE vhost = ? AND name = ?", (vhost, name)),
            ("DELETE FROM dedup WHERE vhost = ? AND kind = 'queue' AND name = ?", (vhost, name))])

    def save_binding(self, binding: BindingDef) -> None:
        b = binding
        self._execute("save_binding", [(
            "INSERT OR REPLACE INTO bindings (vhost, source, destination, destination_kind, routing_key, arguments)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (b.vhost, b.source, b.destination, b.destination_kind, b.routing_key, encode_value(b.arguments)))])

    def delete_binding(self, binding: BindingDef) -> None:
        b = binding
        self._execute("delete_binding", [(
            "DELETE FROM bindings WHERE vhost = ? AND source = ? AND destination = ? AND destination_kind = ?"
            " AND routing_key = ? AND arguments = ?",
            (b.vhost, b.source, b.destination, b.destination_kind, b.routing_key, encode_value(b.arguments)))])

    # --- reads ---------------------------------------------------------------------------------------------

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return self._read_many([(sql, tuple(params))])[0]

    def _read_many(self, queries: list[tuple[str, tuple[Any, ...]]]) -> list[list[Any]]:
        """Run SELECTs in one read transaction (one consistent snapshot)."""
        conn = self._rconn
        if conn is None or not self._is_open:
            raise StoreError(f"the store {self.path} is not open")
        try:
            with self._rlock:
                if len(queries) == 1:
                    return [conn.execute(*queries[0]).fetchall()]
                conn.execute("BEGIN")
                try:
                    return [conn.execute(sql, params).fetchall() for sql, params in queries]
                finally:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error("reading", exc) from exc

    def load_definitions(self) -> Definitions:
        vhosts, users, permissions, exchanges, queues, bindings, policies, limits = self._read_many([
            ("SELECT name FROM vhosts ORDER BY rowid", ()),
            ("SELECT name, password_hash, tags FROM users ORDER BY rowid", ()),
            ("SELECT user, vhost, configure, write, read FROM permissions ORDER BY rowid", ()),
            ("SELECT vhost, name, type, durable, auto_delete, internal, arguments FROM exchanges ORDER BY rowid", ()),
            ("SELECT vhost, name, durable, auto_delete, arguments FROM queues ORDER BY rowid", ()),
            ("SELECT vhost, source, destination, destination_kind, routing_key, arguments FROM bindings"
             " ORDER BY rowid", ()),
            ("SELECT vhost, name, pattern, definition, priority, apply_to FROM policies ORDER BY rowid", ()),
            ("SELECT kind, name, limits FROM limits ORDER BY rowid", ()),
        ])
        return Definitions(
            vhosts=[name for (name,) in vhosts],
            users=[UserDef(name, password_hash, tuple(json.loads(tags))) for name, password_hash, tags in users],
            permissions=[PermissionDef(*row) for row in permissions],
            exchanges=[ExchangeDef(vhost, name, type_, bool(durable), bool(auto_delete), bool(internal),
                                   decode_value(args))
                       for vhost, name, type_, durable, auto_delete, internal, args in exchanges],
            queues=[QueueDef(vhost, name, bool(durable), bool(auto_delete), decode_value(args))
                    for vhost, name, durable, auto_delete, args in queues],
            bindings=[BindingDef(vhost, source, destination, kind, routing_key, decode_value(args))
                      for vhost, source, destination, kind, routing_key, args in bindings],
            policies=[PolicyDef(vhost, name, pattern, decode_value(definition), priority, apply_to)
                      for vhost, name, pattern, definition, priority, apply_to in policies],
            limits=[(kind, name, json.loads(text)) for kind, name, text in limits],
        )

    def load_messages(self, vhost: str, queue: str, *, with_bodies: bool = True, after_seq: int = 0,
                      limit: int | None = None) -> Iterator[StoredMessage]:
        if self._rconn is None or not self._is_open:
            raise StoreError(f"the store {self.path} is not open")
        return self._iter_messages(vhost, queue, with_bodies, after_seq, limit)

    def _iter_messages(self, vhost: str, queue: str, with_bodies: bool, after_seq: int,
                       limit: int | None) -> Iterator[StoredMessage]:
        # Keyset paging on (seq, id): each page is its own short read transaction.
        page = 256 if with_bodies else 8192
        # A bounded page without bodies is a queue paging its records back in (core/paging.py), whose bodies it
        # asks for next (load_bodies): the inline ones come along in the same rows, kept for that (see _paged).
        paging = not with_bodies and limit is not None
        if with_bodies:
            sql = ("SELECT id, seq, exchange, routing_key, header, redelivered,"
                   " coalesce(body, (SELECT b.body FROM bodies b WHERE b.id = m.id))"
                   " FROM messages m WHERE vhost = ? AND queue = ? AND (seq, id) > (?, ?)"
                   " ORDER BY seq, id LIMIT ?")
        else:
            sql = (f"SELECT id, seq, exchange, routing_key, header, redelivered, {'body' if paging else 'NULL'}"
                   " FROM messages WHERE vhost = ? AND queue = ? AND (seq, id) > (?, ?)"
                   " ORDER BY seq, id LIMIT ?")
        last_seq, last_id = after_seq, 2**63 - 1  # seq > after_seq: (seq, id) > (after_seq, max id)
        remaining = -1 if limit is None else max(limit, 0)
        twin = _TWIN
        while remaining:
            count = page if remaining < 0 else min(page, remaining)
            rows = self._read(sql, (vhost, queue, last_seq, last_id, count))
            if paging and twin is not None:
                paged = self._paged
                if self._paged_bytes > PAGED_BODIES_MAX:
                    paged.clear()
                    self._paged_bytes = 0
                size = 0
                for i, seq, exchange, routing_key, header, redelivered, body in rows:
                    if body is not None:
                        paged[i] = body
                        size += len(body)
                    m = twin(i, vhost, queue, seq, exchange, routing_key, header, None, redelivered == 1)
                    m.__class__ = StoredMessage
                    yield m
                self._paged_bytes += size
            elif twin is not None:
                for i, seq, exchange, routing_key, header, redelivered, body in rows:
                    m = twin(i, vhost, queue, seq, exchange, routing_key, header, body, redelivered == 1)
                    m.__class__ = StoredMessage
                    yield m
            else:  # pragma: no cover - only if StoredMessage stops being a plain slots dataclass
                for i, seq, exchange, routing_key, header, redelivered, body in rows:
                    yield StoredMessage(i, vhost, queue, seq, exchange, routing_key, header,
                                        None if paging else body, redelivered == 1)
            if len(rows) < count:
                return
            last_id = rows[-1][0]
            last_seq = rows[-1][1]
            if remaining > 0:
                remaining -= len(rows)

    def load_bodies(self, ids: Iterable[int]) -> dict[int, bytes]:
        wanted = list(dict.fromkeys(ids))
        bodies: dict[int, bytes] = {}
        paged = self._paged
        if paged:
            take = paged.pop
            missing = []
            size = 0
            for message_id in wanted:
                body = take(message_id, None)
                if body is None:
                    missing.append(message_id)
                else:
                    bodies[message_id] = body
                    size += len(body)
            self._paged_bytes -= size
            wanted = missing
        for chunk in chunks(wanted):
            bodies.update(self._read(
                "SELECT id, coalesce(body, (SELECT b.body FROM bodies b WHERE b.id = m.id)) FROM messages m"
                f" WHERE id IN ({marks(len(chunk))})", chunk))
        return bodies

    def message_counts(self) -> dict[tuple[str, str], int]:
        return {(vhost, queue): count for vhost, queue, count in self._read(
            "SELECT vhost, queue, count(*) FROM messages GROUP BY vhost, queue")}

    def max_message_id(self) -> int:
        value = self._read("SELECT max((SELECT value FROM meta WHERE key = 'max_message_id'),"
                           " coalesce((SELECT max(id) FROM messages), 0))")[0][0]
        return int(value)


    def load_dedup(self) -> dict[tuple[str, str, str], list[tuple[int, str, float]]]:
        return sqlite_dedup.load(self._read(sqlite_dedup.SELECT_ALL))

    def free_space(self) -> int | None:
        """Bytes free on the store's file system: statvfs at most once per FREE_SPACE_EVERY seconds (the
        disk alarm asks at every commit that writes messages)."""
        now = time.monotonic()
        when, free = self._free
        if now - when < FREE_SPACE_EVERY:
            return free
        try:
            stat = os.statvfs(self.path.parent)
        except OSError:
            free = None
        else:
            free = stat.f_bavail * stat.f_frsize
        self._free = (now, free)
        return free

    # --- maintenance (tests and tools) ---------------------------------------------------------------------

    def run_in_writer(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``fn(connection)`` in the writer's thread and transaction, ordered with the submits, and wait for
        the commit. For maintenance and tests (e.g. ``PRAGMA max_page_count`` to simulate a full disk)."""
        self._wait(fn, "run_in_writer")
