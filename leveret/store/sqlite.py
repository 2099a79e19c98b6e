"""The default store: one SQLite database file (``<data_dir>/leveret.db``), durable by default.

Durability
    WAL journal, ``PRAGMA synchronous=FULL``: a transaction is on disk when COMMIT returns, so a ``done(None)``
    callback (and the publisher confirm the broker sends from it) means the message survives ``kill -9`` and a
    power cut.

One writer, group commit
    :meth:`SqliteStore.submit` appends ``(ops, done)`` to a deque and returns (it keeps the list: do not reuse
    it). One writer thread, with its own connection, takes everything queued (at most ``max_batch_ops`` ops or
    ``max_batch_bytes`` of message data per transaction, default 10,000 / 16 MB, but always at least one
    whole submit), writes it in one transaction, commits, then calls the batch's callbacks in submit order.
    The sqlite3 module releases the GIL while SQLite works, so the event loop keeps running during the
    writes and the fsync; while the writer commits, the next batch piles up. Under saturation a batch is a
    full 10,000 ops (~0.1 s of work); smaller caps (1,000) measured about the same 16 B throughput with
    lower confirm latency but ~15% less for 1 KB bodies.

    Within a batch the ops are reduced before touching SQLite: a Push followed by a Delete of the same id
    cancels out (a message acked before its commit never reaches the disk: publish+ack at 10 per submit
    measured 2.4x faster than writing then deleting), a Requeue of a message pushed in the same batch just
    sets its flag, a Purge drops the batch's earlier pushes to that queue. What is left is written as
    purges, then deletes, then requeues, then inserts (that order is what the ops meant, since every
    remaining insert came after every remaining purge/delete of the same id or queue), with multi-row
    ``INSERT ... VALUES (...), (...)`` and ``DELETE ... WHERE id IN (...)`` statements: ~30% faster than
    executemany, which pays Python and GIL overhead per row.

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

Schema (``PRAGMA user_version`` 1; ``application_id`` marks the file as Leveret's)
    ``vhosts``, ``users``, ``permissions``, ``limits`` (vhost and user limits as JSON, since user_version 3),
    ``exchanges``, ``queues``, ``bindings`` (arguments as tagged JSON,
    see :func:`encode_value`), ``messages`` (id INTEGER PRIMARY KEY, vhost, queue, seq, exchange, routing_key,
    header, body, redelivered) indexed on (vhost, queue, seq), ``bodies`` (id INTEGER PRIMARY KEY, body),
    ``meta`` (the message id high-water mark, so ids are not reused even when every message is deleted) and
    ``task_status`` (the status book's records, since user_version 4: see sqlite_status.py).
    Bodies up to ``INLINE_BODY_MAX`` (128) bytes are stored in ``messages.body``, larger ones in ``bodies``
    (``messages.body`` NULL). Measured (bench/store_bench.py --layouts): small bodies inline fill ~15-20%
    faster than with a second table (one insert, not two), while for 1 KB bodies a separate table makes the
    recovery scan (``load_messages(with_bodies=False)``) read ~110 MB instead of ~1.4 GB per million messages
    (the SQL part of the scan is ~9x cheaper; the whole load, mostly Python, 10-25% faster, 3.6 s instead
    of 4.9 s from a cold cache). A trigger deletes the ``bodies`` row with
    its message, so deletes, purges and queue/vhost deletion need no extra statement.

Failures
    Opening refuses, with a :class:`StoreError` that says what to do, a file that is not an SQLite database, a
    database that fails ``PRAGMA quick_check``, an SQLite database that is not Leveret's, a ``-wal`` file
    without its database, a schema newer than this code, a read-only file or directory, and a store already
    opened by another process (``flock`` on ``leveret.db.lock``). It never deletes or recreates a file.
    quick_check reads the whole file: ~0.25 s per million small messages when cached, 12-18 s for a 1.4 GB
    store from a cold disk (``quick_check=False`` skips it). A failed commit (disk full, I/O error) rolls
    back and calls the batch's callbacks with a StoreError; the next batch starts afresh, so the store works
    again once there is room.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import datetime
import decimal
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from leveret.amqp.fields import LongInt, RawField

from . import sqlite_status
from .base import (
    BindingDef,
    Definitions,
    Delete,
    ExchangeDef,
    MessageOp,
    PermissionDef,
    PolicyDef,
    Purge,
    Push,
    QueueDef,
    Requeue,
    StatusExpire,
    StatusPut,
    StatusRead,
    Store,
    StoredMessage,
    StoreError,
    UserDef,
)
from .status import StatusRecord
from .status import merge as merge_status

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("leveret.store")

APPLICATION_ID = 0x4C565254  # "LVRT" in the database header: this file is a Leveret store
INLINE_BODY_MAX = 128  # bodies up to this size live in messages.body, larger ones in the bodies table
WAL_AUTOCHECKPOINT = 4000  # pages (16 MB): the writer folds the WAL back into the database after a commit
CANCEL_ACKED_PUSHES = True  # a Push and a Delete of the same id in one batch never reach the disk (benchmarks)
_SQLITE_HEADER = b"SQLite format 3\x00"
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF)
_SQLITE_PERM = 3
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


# --- tagged JSON for argument tables -------------------------------------------------------------------------

# A JSON object whose only key is one of these tags stands for a Python value JSON has no type for. Keys of
# real dicts that start with "$" get one more "$" on the way in (and lose it on the way out), so a user key
# can never be taken for a tag.
_T_BYTES = "$bytes"  # base64
_T_BYTEARRAY = "$bytearray"  # base64
_T_DECIMAL = "$decimal"  # str(Decimal): exact, keeps the exponent ("1.50" stays "1.50")
_T_DATETIME = "$datetime"  # isoformat(), with the UTC offset when aware
_T_DATE = "$date"
_T_TUPLE = "$tuple"
_T_MAP = "$map"  # a dict whose keys are not all str: [[key, value], ...]
_T_FLOAT = "$float"  # nan, inf, -inf (JSON has no literal for them)
_T_LONG = "$long"  # an int that was a 64-bit field (codec.LongInt), so it keeps its wire type
_T_RAW = "$raw"  # a field value the codec carries as its wire bytes (codec.RawField): [tag, base64]
_TAGS = frozenset((_T_RAW, _T_LONG, _T_BYTES, _T_BYTEARRAY, _T_DECIMAL, _T_DATETIME, _T_DATE, _T_TUPLE, _T_MAP,
                   _T_FLOAT))


def _to_json(value: Any) -> Any:
    if type(value) is LongInt:
        return {_T_LONG: int(value)}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {_T_FLOAT: repr(value)}
        return value
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {("$" + k if k.startswith("$") else k): _to_json(v) for k, v in value.items()}
        return {_T_MAP: [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, tuple):
        return {_T_TUPLE: [_to_json(v) for v in value]}
    if isinstance(value, bytes):
        return {_T_BYTES: base64.b64encode(value).decode("ascii")}
    if isinstance(value, (bytearray, memoryview)):
        return {_T_BYTEARRAY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, decimal.Decimal):
        return {_T_DECIMAL: str(value)}
    if isinstance(value, datetime.datetime):
        return {_T_DATETIME: value.isoformat()}
    if isinstance(value, datetime.date):
        return {_T_DATE: value.isoformat()}
    if isinstance(value, RawField):
        return {_T_RAW: [value.tag.decode("latin-1"), base64.b64encode(value.raw).decode("ascii")]}
    raise StoreError(f"cannot store a value of type {type(value).__name__} in an argument table: {value!r}")


def _from_json_object(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, payload),) = obj.items()
        if key in _TAGS:
            if key == _T_LONG:
                return LongInt(payload)
            if key == _T_BYTES:
                return base64.b64decode(payload)
            if key == _T_DECIMAL:
                return decimal.Decimal(payload)
            if key == _T_DATETIME:
                return datetime.datetime.fromisoformat(payload)
            if key == _T_TUPLE:
                return tuple(payload)
            if key == _T_MAP:
                return {(tuple(k) if isinstance(k, list) else k): v for k, v in payload}
            if key == _T_FLOAT:
                return float(payload)
            if key == _T_RAW:
                return RawField(payload[0].encode("latin-1"), base64.b64decode(payload[1]))
            if key == _T_BYTEARRAY:
                return bytearray(base64.b64decode(payload))
            return datetime.date.fromisoformat(payload)
    if any(k.startswith("$") for k in obj):
        return {(k[1:] if k.startswith("$") else k): v for k, v in obj.items()}
    return obj


def encode_value(value: Any) -> str:
    """Canonical tagged JSON for an argument table (or any nesting of None, bool, int, float, str, bytes,
    bytearray, Decimal, datetime, date, dict, list, tuple). Keys are sorted, so equal tables encode equal
    (bindings are identified by their arguments)."""
    return json.dumps(_to_json(value), sort_keys=True, separators=(",", ":"))


def decode_value(text: str) -> Any:
    """The inverse of :func:`encode_value`."""
    return json.loads(text, object_hook=_from_json_object)


# --- schema --------------------------------------------------------------------------------------------------


def _migrate_1(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
    conn.execute("INSERT INTO meta (key, value) VALUES ('max_message_id', 0)")
    conn.execute("CREATE TABLE vhosts (name TEXT PRIMARY KEY)")
    conn.execute("CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, tags TEXT NOT NULL)")
    conn.execute("""CREATE TABLE permissions (
        user TEXT NOT NULL, vhost TEXT NOT NULL,
        configure TEXT NOT NULL, write TEXT NOT NULL, read TEXT NOT NULL,
        PRIMARY KEY (user, vhost))""")
    conn.execute("""CREATE TABLE exchanges (
        vhost TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
        durable INTEGER NOT NULL, auto_delete INTEGER NOT NULL, internal INTEGER NOT NULL,
        arguments TEXT NOT NULL,
        PRIMARY KEY (vhost, name))""")
    conn.execute("""CREATE TABLE queues (
        vhost TEXT NOT NULL, name TEXT NOT NULL,
        durable INTEGER NOT NULL, auto_delete INTEGER NOT NULL, arguments TEXT NOT NULL,
        PRIMARY KEY (vhost, name))""")
    conn.execute("""CREATE TABLE bindings (
        vhost TEXT NOT NULL, source TEXT NOT NULL,
        destination TEXT NOT NULL, destination_kind TEXT NOT NULL,
        routing_key TEXT NOT NULL, arguments TEXT NOT NULL,
        PRIMARY KEY (vhost, source, destination_kind, destination, routing_key, arguments))""")
    conn.execute("CREATE INDEX bindings_destination ON bindings (vhost, destination_kind, destination)")
    conn.execute("""CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        vhost TEXT NOT NULL, queue TEXT NOT NULL, seq INTEGER NOT NULL,
        exchange TEXT NOT NULL, routing_key TEXT NOT NULL,
        header BLOB NOT NULL,
        body BLOB,
        redelivered INTEGER NOT NULL DEFAULT 0)""")
    conn.execute("CREATE INDEX messages_queue_seq ON messages (vhost, queue, seq)")
    conn.execute("CREATE TABLE bodies (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    conn.execute("""CREATE TRIGGER messages_delete_body AFTER DELETE ON messages WHEN old.body IS NULL
        BEGIN DELETE FROM bodies WHERE id = old.id; END""")


def _migrate_2(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE policies (
        vhost TEXT NOT NULL, name TEXT NOT NULL, pattern TEXT NOT NULL, definition TEXT NOT NULL,
        priority INTEGER NOT NULL, apply_to TEXT NOT NULL,
        PRIMARY KEY (vhost, name))""")


def _migrate_3(conn: sqlite3.Connection) -> None:
    # vhost limits (kind 'vhost') and user limits (kind 'user'), as a JSON object of name -> integer
    conn.execute("CREATE TABLE limits (kind TEXT NOT NULL, name TEXT NOT NULL, limits TEXT NOT NULL, "
                 "PRIMARY KEY (kind, name))")


# MIGRATIONS[i] takes a store from user_version i to i + 1. Append only; never edit a released one.
# 4: task_status, the status book's records (sqlite_status.py).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_1, _migrate_2, _migrate_3, sqlite_status.migrate]
SCHEMA_VERSION = len(MIGRATIONS)


# --- SQL helpers ---------------------------------------------------------------------------------------------

_CHUNK = 512  # ids per "IN (...)" statement; remainders use powers of two, so few distinct statements


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    """Split ``values`` into chunks of _CHUNK, then powers of two (bounded set of statement shapes)."""
    i, n = 0, len(values)
    while n - i >= _CHUNK:
        yield values[i:i + _CHUNK]
        i += _CHUNK
    size = _CHUNK // 2
    while i < n:
        if n - i >= size:
            yield values[i:i + size]
            i += size
        size //= 2


def _marks(n: int) -> str:
    return ",".join("?" * n)


_INSERT_ROWS = 64  # rows per multi-row INSERT
_MESSAGE_COLUMNS = 9
_INSERT_MESSAGES: dict[int, str] = {}
_INSERT_BODIES: dict[int, str] = {}


def _insert_sql(table: str, columns: int, rows: int, cache: dict[int, str]) -> str:
    sql = cache.get(rows)
    if sql is None:
        row = "(" + _marks(columns) + ")"
        sql = cache[rows] = f"INSERT OR REPLACE INTO {table} VALUES " + ",".join([row] * rows)
    return sql


def _row_chunks(rows: list[Any]) -> Iterator[list[Any]]:
    i, n = 0, len(rows)
    while n - i >= _INSERT_ROWS:
        yield rows[i:i + _INSERT_ROWS]
        i += _INSERT_ROWS
    size = _INSERT_ROWS // 2
    while i < n:
        if n - i >= size:
            yield rows[i:i + size]
            i += size
        size //= 2


# --- the writer's work ---------------------------------------------------------------------------------------


class _Call:
    """A queue item that runs ``fn(connection)`` in the writer's transaction (definitions and maintenance)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        self.fn = fn


_Done = Callable[[BaseException | None], None]
_Item = tuple[list[MessageOp] | _Call, _Done]


class _Reduced:
    """The net effect of a run of message ops (see the module docstring)."""

    __slots__ = ("deletes", "late_deletes", "purges", "pushes", "redelivered", "requeues", "status")

    def __init__(self) -> None:
        self.pushes: dict[int, Push] = {}
        self.redelivered: set[int] = set()  # pushed in this run, then requeued
        self.deletes: list[int] = []
        self.requeues: list[int] = []
        self.purges: list[tuple[str, str, int]] = []
        self.late_deletes: list[int] = []  # only when CANCEL_ACKED_PUSHES is off
        self.status: dict[tuple[str, str], StatusRecord] = {}  # status puts, merged per (vhost, id)

    def __bool__(self) -> bool:
        return bool(self.pushes or self.deletes or self.requeues or self.purges or self.status)

    def put_status(self, op: StatusPut) -> None:
        key = (op.vhost, op.record.id)
        self.status[key] = merge_status(self.status.get(key), op.record)

    def write_status(self, conn: sqlite3.Connection) -> None:
        if self.status:
            sqlite_status.write(conn, self.status)
            self.status = {}

    def purge(self, vhost: str, queue: str, after_seq: int = 0) -> None:
        pushes = self.pushes
        for message_id in [i for i, p in pushes.items()
                           if p.queue == queue and p.vhost == vhost and p.seq > after_seq]:
            del pushes[message_id]
            self.redelivered.discard(message_id)
        self.purges.append((vhost, queue, after_seq))

    def write(self, conn: sqlite3.Connection) -> None:
        for vhost, queue, after_seq in self.purges:
            conn.execute("DELETE FROM messages WHERE vhost = ? AND queue = ? AND seq > ?", (vhost, queue, after_seq))
        for ids in _chunks(self.deletes):
            conn.execute(f"DELETE FROM messages WHERE id IN ({_marks(len(ids))})", ids)
        for ids in _chunks(self.requeues):
            conn.execute(f"UPDATE messages SET redelivered = 1 WHERE id IN ({_marks(len(ids))})", ids)
        if not self.pushes:
            self.write_status(conn)
            return
        redelivered = self.redelivered
        flat: list[Any] = []
        bodies: list[Any] = []
        extend = flat.extend
        for p in self.pushes.values():
            body: bytes | None = p.body
            if len(p.body) > INLINE_BODY_MAX:
                bodies.append(p.id)
                bodies.append(body)
                body = None
            extend((p.id, p.vhost, p.queue, p.seq, p.exchange, p.routing_key, p.header, body,
                    1 if redelivered and p.id in redelivered else 0))
        _insert_flat(conn, "messages", _MESSAGE_COLUMNS, flat, _INSERT_MESSAGES)
        if bodies:
            _insert_flat(conn, "bodies", 2, bodies, _INSERT_BODIES)
        for ids in _chunks(self.late_deletes):
            conn.execute(f"DELETE FROM messages WHERE id IN ({_marks(len(ids))})", ids)
        self.write_status(conn)


def _insert_flat(conn: sqlite3.Connection, table: str, columns: int, flat: list[Any], cache: dict[int, str]) -> None:
    """Insert rows given as one flat list of column values, up to _INSERT_ROWS rows per statement."""
    step = _INSERT_ROWS * columns
    i, n = 0, len(flat)
    if n - i >= step:
        sql = _insert_sql(table, columns, _INSERT_ROWS, cache)
        while n - i >= step:
            conn.execute(sql, flat[i:i + step])
            i += step
    rows = _INSERT_ROWS // 2
    while i < n:
        if (n - i) // columns >= rows:
            conn.execute(_insert_sql(table, columns, rows, cache), flat[i:i + rows * columns])
            i += rows * columns
        rows //= 2


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


class SqliteStore(Store):
    """The SQLite backend. ``path`` is the database file; its directory is created if missing.

    ``synchronous`` is SQLite's PRAGMA synchronous (FULL: a confirmed message is on disk; NORMAL: it survives a
    process crash but not a power cut). ``busy_timeout`` (seconds) is how long to wait for a lock held by
    another connection. ``max_batch_ops`` / ``max_batch_bytes`` cap one group commit (a single submit larger
    than the cap is still written whole). ``quick_check`` runs ``PRAGMA quick_check`` on open (it reads the
    whole file: about 1 s per GB when cached, ~10 s per GB from a cold disk here).
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout: float = 5.0,
                 max_batch_ops: int = 10_000, max_batch_bytes: int = 16 << 20, quick_check: bool = True) -> None:
        self.path = Path(path)
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.max_batch_ops = max(1, max_batch_ops)
        self.max_batch_bytes = max(1, max_batch_bytes)
        self.quick_check = quick_check
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake = threading.Event()
        self._idle = False
        self._closing = False
        self._is_open = False
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._rlock = threading.Lock()
        self._lock_file: int | None = None
        self._max_id_written = 0
        self._failing = 0  # consecutive failed commits
        self._last_failure_log = float("-inf")
        # counters (for benchmarks and metrics)
        self.commits = 0
        self.failed_commits = 0
        self.ops_written = 0

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def __enter__(self) -> SqliteStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- opening -------------------------------------------------------------------------------------------

    def open(self) -> None:
        if self._is_open:
            return
        path = self.path
        sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        existed = {p for p in sidecars if p.exists()}
        try:
            self._check_files()
            self._take_lock()
            self._wconn = self._connect(path)
            self._check_database(self._wconn)
            self._migrate(self._wconn)
            self._rconn = self._connect(path)
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
        self._closing = False
        self._is_open = True
        self._writer = threading.Thread(target=self._writer_main, name=f"leveret-store-writer {path.name}",
                                        daemon=True)
        self._writer.start()

    def _check_files(self) -> None:
        path = self.path
        directory = path.parent
        if not directory.exists():
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the data directory {directory}: {exc.strerror or exc}") from exc
        if not directory.is_dir():
            raise StoreError(f"cannot open the store {path}: {directory} is not a directory")
        if path.exists():
            if not path.is_file():
                raise StoreError(f"cannot open the store {path}: it is not a regular file")
            if not os.access(path, os.R_OK | os.W_OK):
                raise StoreError(f"the store {path} is read-only (or unreadable) for this user: "
                                 "fix its permissions, or use another --data-dir")
            with path.open("rb") as f:
                head = f.read(len(_SQLITE_HEADER))
            if head and head != _SQLITE_HEADER:
                raise StoreError(self._corrupt_text("it is not an SQLite database"))
        wal = path.with_name(path.name + "-wal")
        if (not path.exists() or path.stat().st_size == 0) and wal.exists() and wal.stat().st_size > 0:
            raise StoreError(f"found {wal} but not the database it belongs to ({path} is missing or empty): restore "
                             "the database from a backup, or move the -wal file aside to start with an empty store")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StoreError(f"the data directory {directory} is read-only for this user (SQLite needs to create "
                             f"{path.name}-wal and {path.name}-shm there): fix its permissions, "
                             "or use another --data-dir")
        if not path.exists():
            # user password hashes and message bodies: readable by the broker's user only (SQLite gives the
            # -wal and -shm files the database file's permissions)
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot create the store {path}: {exc.strerror or exc}") from exc

    def _corrupt_text(self, what: str) -> str:
        return (f"the store {self.path} is damaged ({what}): restore it from a backup, or move it aside to start "
                "with an empty store (Leveret never overwrites it)")

    def _take_lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {lock_path}: {exc.strerror or exc}") from exc
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)  # as the store's own files (a lock file of an older version was 0644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"the store {self.path} is in use by another process (or another store object in "
                             "this one): stop it, or use another --data-dir") from exc
        self._lock_file = fd

    def _connect(self, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout,
                               cached_statements=256)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA cache_size = -32768")  # 32 MiB
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _check_database(self, conn: sqlite3.Connection) -> None:
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(self._corrupt_text(str(exc))) from exc
        if application_id not in (0, APPLICATION_ID) or (application_id == 0 and tables):
            raise StoreError(f"{self.path} is an SQLite database but not a Leveret store: "
                             "use another --data-dir (Leveret does not touch it)")
        if version > SCHEMA_VERSION:
            raise StoreError(f"the store {self.path} was written by a newer Leveret (schema {version}, this version "
                             f"knows {SCHEMA_VERSION}); upgrade Leveret or use another --data-dir")
        if self.quick_check and tables:
            try:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            except sqlite3.DatabaseError as exc:
                raise StoreError(self._corrupt_text(str(exc))) from exc
            if problems != ["ok"]:
                raise StoreError(self._corrupt_text("integrity check: " + "; ".join(problems)))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot put the store {self.path} in WAL mode (got {mode}): is it on a network "
                             "file system? Use a local --data-dir")
        self._configure_writer(conn)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[number](conn)
                conn.execute(f"PRAGMA user_version = {number + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
            log.info("store %s: schema migrated to version %d", self.path, number + 1)
        # A real write, so that a read-only file, directory or full disk shows up now rather than at the first
        # publish.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', ?)", (time.time(),))
            self._max_id_written = conn.execute(
                "SELECT max((SELECT value FROM meta WHERE key = 'max_message_id'),"
                " coalesce((SELECT max(id) FROM messages), 0))").fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    def _configure_writer(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA recursive_triggers = ON")  # INSERT OR REPLACE of a message also drops its old body
        conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate a WAL that grew past 64 MB
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")

    def _error(self, doing: str, exc: sqlite3.Error) -> StoreError:
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        path = self.path
        if code == _SQLITE_FULL:
            text = (f"disk full: {doing} the store {path} ({exc}); free some space (the store works again once "
                    "there is room)")
        elif code in (_SQLITE_READONLY, _SQLITE_PERM):
            text = (f"the store {path} is read-only ({exc}): fix the permissions of the file and its directory, "
                    "or use another --data-dir")
        elif code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            text = self._corrupt_text(str(exc))
        elif code == _SQLITE_CANTOPEN:
            text = (f"{doing} the store {path}: SQLite cannot open it ({exc}); check that its directory exists and "
                    "is writable")
        elif code == _SQLITE_IOERR:
            text = f"I/O error: {doing} the store {path} ({exc}); check the disk"
        else:
            text = f"{doing} the store {path}: {exc}"
        return StoreError(text)

    # --- closing -------------------------------------------------------------------------------------------

    def close(self) -> None:
        if not self._is_open:
            return
        writer = self._writer
        if writer is threading.current_thread():
            raise StoreError("close() called from a store callback (the writer thread): call it from elsewhere")
        self._closing = True
        self._wake.set()
        if writer is not None:
            writer.join()
        self._is_open = False
        wconn = self._wconn
        if wconn is not None:
            try:
                wconn.execute("PRAGMA optimize")
                wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
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

    # --- the writer ----------------------------------------------------------------------------------------

    def submit(self, ops: Sequence[MessageOp], done: Callable[[BaseException | None], None]) -> None:
        if not self._is_open or self._closing:
            raise StoreError(f"the store {self.path} is closed")
        self._queue.append((ops if isinstance(ops, list) else list(ops), done))
        if self._idle:
            self._wake.set()

    def flush(self) -> None:
        """Wait until every earlier submit has been written or has failed (its ``done`` says which: flush
        itself does not raise for a failed commit)."""
        if not self._is_open:
            return
        self._wait(lambda conn: None, "flush", raise_failure=False)

    def _wait(self, fn: Callable[[sqlite3.Connection], object], what: str, raise_failure: bool = True) -> None:
        """Run ``fn`` in the writer's transaction, after everything submitted so far, and wait for its commit."""
        if not self._is_open or self._closing:
            raise StoreError(f"the store {self.path} is closed")
        if self._writer is threading.current_thread():
            raise StoreError(f"{what} called from a store callback (the writer thread) would wait for itself")
        finished = threading.Event()
        outcome: list[BaseException | None] = []

        def done(exc: BaseException | None) -> None:
            outcome.append(exc)
            finished.set()

        self._queue.append((_Call(fn), done))
        self._wake.set()
        while not finished.wait(1.0):
            writer = self._writer
            if writer is None or not writer.is_alive():  # pragma: no cover - the writer never exits early
                raise StoreError(f"the store {self.path}'s writer has stopped")
        exc = outcome[0]
        if exc is not None and raise_failure:
            raise exc

    def _writer_main(self) -> None:
        queue = self._queue
        wake = self._wake
        while True:
            if not queue:
                if self._closing:
                    return
                self._idle = True
                if not queue and not self._closing:
                    wake.wait()
                    wake.clear()
                self._idle = False
                continue
            try:
                self._write_batch()
            except BaseException:  # pragma: no cover - _write_batch reports its own errors
                log.exception("store %s: writer error", self.path)

    def _write_batch(self) -> None:
        queue = self._queue
        conn = self._wconn
        assert conn is not None
        items: list[_Item] = []
        popleft = queue.popleft
        keep = items.append
        max_ops = self.max_batch_ops
        max_bytes = self.max_batch_bytes
        nops = nbytes = 0
        max_id = self._max_id_written
        reduced = _Reduced()
        cancel = CANCEL_ACKED_PUSHES
        error: BaseException | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            while queue and nops < max_ops and nbytes < max_bytes:
                item = popleft()
                keep(item)
                ops: Any = item[0]
                if ops.__class__ is _Call:
                    if reduced:
                        reduced.write(conn)
                        reduced = _Reduced()
                    ops.fn(conn)
                    nops += 1
                    continue
                pushes = reduced.pushes
                for op in ops:
                    kind = type(op)
                    if kind is Push:
                        op_id = op.id
                        pushes[op_id] = op
                        nbytes += len(op.body) + len(op.header)
                        if op_id > max_id:
                            max_id = op_id
                    elif kind is Delete:
                        op_id = op.id
                        if cancel:
                            if pushes.pop(op_id, None) is None:
                                reduced.deletes.append(op_id)
                            elif reduced.redelivered:
                                reduced.redelivered.discard(op_id)
                        elif op_id in pushes:  # benchmark mode: write it, then delete it
                            reduced.late_deletes.append(op_id)
                        else:
                            reduced.deletes.append(op_id)
                    elif kind is Requeue:
                        op_id = op.id
                        if op_id in pushes:
                            reduced.redelivered.add(op_id)
                        else:
                            reduced.requeues.append(op_id)
                    elif kind is Purge:
                        reduced.purge(op.vhost, op.queue, op.after_seq)
                    elif kind is StatusPut:
                        reduced.put_status(op)
                    elif kind is StatusRead:
                        reduced.write_status(conn)  # the read sees every put before it
                        sqlite_status.read(conn, op)
                    elif kind is StatusExpire:
                        reduced.write_status(conn)
                        sqlite_status.expire(conn, op)
                    else:
                        raise TypeError(f"not a message op: {op!r}")
                nops += len(ops)
            if reduced:
                reduced.write(conn)
            if max_id > self._max_id_written:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'max_message_id'", (max_id,))
            conn.execute("COMMIT")
        except BaseException as exc:
            error = self._error("writing to", exc) if isinstance(exc, sqlite3.Error) else exc
            if error is not exc:
                error.__cause__ = exc
            self.failed_commits += 1
            self._failing += 1
            now = time.monotonic()
            if now - self._last_failure_log >= 10.0:  # at most one line per 10 s while it keeps failing
                self._last_failure_log = now
                log.error("store %s: a commit of %d submits failed (%d failed so far): %s", self.path, len(items),
                          self._failing, error)
            self._rollback()
        else:
            self._max_id_written = max_id
            self.commits += 1
            self.ops_written += nops
            if self._failing:
                log.warning("store %s: commits work again after %d failed", self.path, self._failing)
                self._failing = 0
                self._last_failure_log = float("-inf")
        for _, done in items:
            try:
                done(error)
            except Exception:
                log.exception("store %s: a done callback failed", self.path)

    def _rollback(self) -> None:
        conn = self._wconn
        assert conn is not None
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return
        except sqlite3.Error as exc:
            log.warning("store %s: rollback failed (%s): reopening the writer's connection", self.path, exc)
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        while True:
            try:
                conn = self._connect(self.path)
                self._configure_writer(conn)
                self._wconn = conn
                return
            except sqlite3.Error as exc:  # pragma: no cover - the disk is gone
                log.error("store %s: cannot reopen the writer's connection (%s); retrying", self.path, exc)
                time.sleep(1.0)

    # --- definitions ---------------------------------------------------------------------------------------

    def _execute(self, what: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            for sql, params in statements:
                conn.execute(sql, params)

        self._wait(run, what)

    def save_vhost(self, name: str) -> None:
        self._execute("save_vhost", [("INSERT OR IGNORE INTO vhosts (name) VALUES (?)", (name,))])

    def delete_vhost(self, name: str) -> None:
        self._execute("delete_vhost", [
            (f"DELETE FROM {table} WHERE vhost = ?", (name,))
            for table in ("permissions", "bindings", "exchanges", "queues", "messages", "task_status")
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
            ("DELETE FROM exchanges WHERE vhost = ? AND name = ?", (vhost, name))])

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

    def delete_queue(self, vhost: str, name: str) -> None:
        self._execute("delete_queue", [
            ("DELETE FROM bindings WHERE vhost = ? AND destination_kind = 'queue' AND destination = ?",
             (vhost, name)),
            ("DELETE FROM messages WHERE vhost = ? AND queue = ?", (vhost, name)),
            ("DELETE FROM queues WHERE vhost = ? AND name = ?", (vhost, name))])

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
        if with_bodies:
            sql = ("SELECT id, seq, exchange, routing_key, header, redelivered,"
                   " coalesce(body, (SELECT b.body FROM bodies b WHERE b.id = m.id))"
                   " FROM messages m WHERE vhost = ? AND queue = ? AND (seq, id) > (?, ?)"
                   " ORDER BY seq, id LIMIT ?")
        else:
            sql = ("SELECT id, seq, exchange, routing_key, header, redelivered, NULL"
                   " FROM messages WHERE vhost = ? AND queue = ? AND (seq, id) > (?, ?)"
                   " ORDER BY seq, id LIMIT ?")
        last_seq, last_id = after_seq, 2**63 - 1  # seq > after_seq: (seq, id) > (after_seq, max id)
        remaining = -1 if limit is None else max(limit, 0)
        twin = _TWIN
        while remaining:
            count = page if remaining < 0 else min(page, remaining)
            rows = self._read(sql, (vhost, queue, last_seq, last_id, count))
            if twin is not None:
                for i, seq, exchange, routing_key, header, redelivered, body in rows:
                    m = twin(i, vhost, queue, seq, exchange, routing_key, header, body, redelivered == 1)
                    m.__class__ = StoredMessage
                    yield m
            else:  # pragma: no cover - only if StoredMessage stops being a plain slots dataclass
                for i, seq, exchange, routing_key, header, redelivered, body in rows:
                    yield StoredMessage(i, vhost, queue, seq, exchange, routing_key, header, body, redelivered == 1)
            if len(rows) < count:
                return
            last_id = rows[-1][0]
            last_seq = rows[-1][1]
            if remaining > 0:
                remaining -= len(rows)

    def load_bodies(self, ids: Iterable[int]) -> dict[int, bytes]:
        wanted = list(dict.fromkeys(ids))
        bodies: dict[int, bytes] = {}
        for chunk in _chunks(wanted):
            bodies.update(self._read(
                "SELECT id, coalesce(body, (SELECT b.body FROM bodies b WHERE b.id = m.id)) FROM messages m"
                f" WHERE id IN ({_marks(len(chunk))})", chunk))
        return bodies

    def message_counts(self) -> dict[tuple[str, str], int]:
        return {(vhost, queue): count for vhost, queue, count in self._read(
            "SELECT vhost, queue, count(*) FROM messages GROUP BY vhost, queue")}

    def max_message_id(self) -> int:
        value = self._read("SELECT max((SELECT value FROM meta WHERE key = 'max_message_id'),"
                           " coalesce((SELECT max(id) FROM messages), 0))")[0][0]
        return int(value)

    def free_space(self) -> int | None:
        try:
            stat = os.statvfs(self.path.parent)
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize

    # --- maintenance (tests and tools) ---------------------------------------------------------------------

    def run_in_writer(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``fn(connection)`` in the writer's thread and transaction, ordered with the submits, and wait for
        the commit. For maintenance and tests (e.g. ``PRAGMA max_page_count`` to simulate a full disk)."""
        self._wait(fn, "run_in_writer")
