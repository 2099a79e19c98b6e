"""The outbox: a durable local queue of messages to publish, one SQLite file (WAL). See docs/outbox.md.

``Outbox(path).send(exchange, routing_key, body, properties=..., destinations=None)`` returns once the message
is committed to the local file, whatever the state of any broker. A separate forwarder (``leveret forward``,
:class:`leveret.outbox.Forwarder`) publishes it with publisher confirms and deletes it once every destination
confirmed it.

One writer, group commit
    ``send`` hands its row to the outbox's writer and waits. The writer is the broker store's group-commit
    writer (leveret/sqlite_writer.py): one thread per ``Outbox`` takes everything queued, writes it in
    one transaction, commits, and wakes every sender of that transaction (a ``threading.Event`` each, callbacks
    for ``send_async``). While it commits, the next batch piles up, so concurrent senders share commits. The
    sqlite3 module releases the GIL during SQLite's work and the fsync.

Several processes
    Several processes (a web server's workers) may use the same file: each ``Outbox`` has its own writer; SQLite's
    write lock (``BEGIN IMMEDIATE``, ``busy_timeout``) serialises their transactions. Message ids are assigned
    by SQLite inside the transaction (``AUTOINCREMENT``: never reused), so id order is commit order, which is
    the order the forwarder publishes in.

Durability (``synchronous``)
    ``FULL`` (default): SQLite fsyncs the WAL at each commit, so a message ``send`` returned for survives a
    process crash, an OS crash and a power cut. ``NORMAL``: no fsync at commit; it survives a crash of the
    process (the data is in the OS's page cache) but the last commits may be lost in a power cut or OS crash
    (the file stays consistent). bench/outbox_bench.py measures both (docs/outbox.md).

Schema (``PRAGMA user_version`` 1; ``application_id`` "LVOB")
    ``messages`` (id INTEGER PRIMARY KEY AUTOINCREMENT, created, exchange, routing_key, mandatory, header =
    the AMQP basic properties in their wire form
    as pamqp encodes them, body) and ``pending`` (destination, id, state 0 = to send /
    1 = parked, attempts, error, retry_at): one row per destination that has not confirmed the message yet. A
    message is deleted with its last pending row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from leveret.outbox.message import (
    DEFAULT_DESTINATION,
    OutboxError,
    OutboxMessage,
    Row,
    check_destinations,
    destination_stats,
    prepare_message,
)
from leveret.outbox.tracking import TRACK_KEEP, Notice, TrackedMessage, summarise
from leveret.sqlite_writer import Call, Writer, WriterStopped

log = logging.getLogger("leveret.outbox")

APPLICATION_ID = 0x4C564F42  # "LVOB"
SCHEMA_VERSION = 1
SHRINK_PAGES = 1024  # pages (4 MB) given back per shrink step
_INCREMENTAL = 2  # PRAGMA auto_vacuum
_WAL_SIZE_LIMIT = 4 * 1024 * 1024  # the WAL is truncated to this after a checkpoint
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


_SCHEMA = (
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created REAL NOT NULL,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        mandatory INTEGER NOT NULL,
        header BLOB NOT NULL,
        body BLOB NOT NULL)""",
    """CREATE TABLE pending (
        destination TEXT NOT NULL,
        id INTEGER NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        retry_at REAL,
        PRIMARY KEY (destination, id)) WITHOUT ROWID""",
    "CREATE INDEX pending_id ON pending (id)",
)

# send(track=True): one row per destination, kept after the message is deleted (tracking.py). Created at every
# open (IF NOT EXISTS): files of schema 1 made before it get it without a version change.
_TRACKING = (
    """CREATE TABLE IF NOT EXISTS tracking (
        message_id TEXT NOT NULL,
        destination TEXT NOT NULL,
        id INTEGER NOT NULL,
        sent_at REAL,
        PRIMARY KEY (message_id, destination, id)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS tracking_id ON tracking (id, destination)",
    # the broker's job-done notices about tracked messages (Leveret: core/notices.py; outbox/notices.py)
    """CREATE TABLE IF NOT EXISTS notices (
        message_id TEXT NOT NULL,
        destination TEXT NOT NULL,
        queue TEXT NOT NULL,
        event TEXT NOT NULL,
        reason TEXT,
        ts REAL NOT NULL,
        queues TEXT,
        PRIMARY KEY (message_id, destination, queue, event)) WITHOUT ROWID""",
)


class _Rows:
    """One transaction of the outbox's writer (its Batch): each payload is a list of rows, inserted at once."""

    __slots__ = ()

    def add(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        insert = conn.execute
        for row in rows:
            message_id = insert("INSERT INTO messages (created, exchange, routing_key, mandatory, header, body)"
                                " VALUES (?, ?, ?, ?, ?, ?)", (row.created, row.exchange, row.routing_key,
                                                              row.mandatory, row.header, row.body)).lastrowid
            for destination in row.destinations:
                insert("INSERT INTO pending (destination, id) VALUES (?, ?)", (destination, message_id))
                if row.track is not None:
                    insert("INSERT INTO tracking (message_id, destination, id) VALUES (?, ?, ?)",
                           (row.track, destination, message_id))

    def full(self) -> bool:
        return False

    def write(self, conn: sqlite3.Connection) -> None:
        pass

    def committed(self) -> None:
        pass


_ROWS = _Rows()


class Outbox:
    """A durable local queue in the SQLite file ``path`` (created with its directory if missing).

    ``synchronous``: "FULL" (default, survives power loss) or "NORMAL" (survives a process crash); see the
    module docstring. ``default_destinations``: where ``send(destinations=None)`` goes (the forwarder maps
    destination names to brokers: ``--broker NAME=URL``; an unnamed ``--broker URL`` is "default").
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL",
                 default_destinations: Sequence[str] = (DEFAULT_DESTINATION,), busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.default_destinations = check_destinations(default_destinations)
        self.busy_timeout = busy_timeout
        self._closing = False
        self._closed = False
        self._rlock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            wconn = self._connect()
            self._setup(wconn)
            self._rconn = self._connect()
            self._rconn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
        except OSError as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc.strerror or exc}") from exc
        self._writer = Writer(name=f"leveret-outbox {self.path.name}", label=f"outbox {self.path}", conn=wconn,
                              connect=self._reconnect_writer, new_batch=lambda: _ROWS, describe=lambda exc: exc,
                              log=log)

    @property
    def commits(self) -> int:
        """Transactions committed so far (senders share them: group commit)."""
        return self._writer.commits

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- opening and closing ---------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
        return conn

    def _reconnect_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        # Free pages go back to the file system in bounded steps when the forwarder is idle (``shrink``): that
        # needs auto_vacuum=INCREMENTAL, which a new file gets before anything is written (before WAL), and an
        # existing file once, with a VACUUM (below).
        if not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"cannot put the outbox {self.path} in WAL mode (got {mode}): use a local disk")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id != APPLICATION_ID and (app_id != 0 or tables):
                raise OutboxError(f"{self.path} is an SQLite database but not a Leveret outbox")
            if version > SCHEMA_VERSION:
                raise OutboxError(f"the outbox {self.path} was written by a newer Leveret (schema {version})")
            if version == 0:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in _TRACKING:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
            self._migrate_auto_vacuum(conn)

    def _migrate_auto_vacuum(self, conn: sqlite3.Connection) -> None:
        """A file made before auto_vacuum: switch it to INCREMENTAL, which takes one VACUUM (a copy of the file).
        It needs the file to itself for a moment; when another process holds it, it is tried at the next open."""
        conn.execute("PRAGMA busy_timeout = 1000")
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            log.info("the outbox %s now gives free space back to the file system (auto_vacuum=INCREMENTAL)",
                     self.path)
        except sqlite3.OperationalError as exc:
            log.warning("the outbox %s could not be switched to incremental vacuum now (%s): tried again at the "
                        "next open", self.path, exc)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    def close(self) -> None:
        """Write what is queued, stop the writer, close the file (idempotent)."""
        if self._closed:
            return
        self._closing = True
        self._writer.close()
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            self._writer.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        for conn in (self._rconn, self._writer.conn):
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # --- sending ---------------------------------------------------------------------------------------------

    def prepare(self, exchange: str, routing_key: str, body: bytes, properties: Mapping[str, Any] | None = None,
                destinations: Iterable[str] | None = None, mandatory: bool = True,
                track: bool = False) -> tuple[Row, str]:
        return prepare_message(self.default_destinations, exchange, routing_key, body, properties, destinations,
                               mandatory, track)

    def _write(self, payload: list[Row] | Call) -> None:
        """Hand ``payload`` to the writer and wait for its commit (raises OutboxError)."""
        if self._closing:
            raise OutboxError(f"the outbox {self.path} is closed")
        try:
            error = self._writer.wait(payload)
        except WriterStopped as exc:  # pragma: no cover - the writer never dies
            raise OutboxError(f"the outbox {self.path}'s writer has stopped") from exc
        if error is not None:
            raise OutboxError(f"the message was not saved: {error}") from error

    def send(self, exchange: str, routing_key: str, body: bytes, properties: Mapping[str, Any] | None = None,
             destinations: Iterable[str] | None = None, mandatory: bool = True, track: bool = False) -> str:
        """Save one message; return its message_id once it is committed to the file. Raises OutboxError
        (not saved), ValueError/TypeError (bad arguments, checked before anything is written). With
        ``track=True`` the message_id is a :class:`TrackedMessage` (``status()``, ``wait()``)."""
        row, message_id = self.prepare(exchange, routing_key, body, properties, destinations, mandatory, track)
        self._write([row])
        return TrackedMessage(message_id, self) if track else message_id

    def send_many(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        """Save several messages (dicts of ``send``'s arguments) in one transaction: all or none."""
        prepared = [self.prepare(**m) for m in messages]
        if not prepared:
            return []
        self._write([row for row, _ in prepared])
        return [TrackedMessage(message_id, self) if row.track else message_id for row, message_id in prepared]

    async def send_async(self, exchange: str, routing_key: str, body: bytes,
                         properties: Mapping[str, Any] | None = None, destinations: Iterable[str] | None = None,
                         mandatory: bool = True, track: bool = False) -> str:
        """``send`` for async code: waits for the commit without blocking the event loop."""
        row, message_id = self.prepare(exchange, routing_key, body, properties, destinations, mandatory, track)
        await self._await([row])
        return TrackedMessage(message_id, self) if track else message_id

    async def _await(self, payload: list[Row] | Call) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, error)

        if self._closing:
            raise OutboxError(f"the outbox {self.path} is closed")
        self._writer.submit(payload, done)
        await future

    # --- maintenance, for the forwarder ------------------------------------------------------------------------

    def call(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``fn(connection)`` in a writer transaction and wait for its commit (raises OutboxError)."""
        self._write(Call(fn))

    async def call_async(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        await self._await(Call(fn))

    # The forwarder's operations (the same on every storage; leveret/outbox/postgres.py).

    kind = "sqlite"
    shared = False  # one forwarder per file (a lock file); a PostgreSQL outbox is shared by several

    @property
    def where(self) -> str:
        return str(self.path)

    async def mark_done_async(self, destination: str, ids: Sequence[int]) -> None:
        await self._await(Call(mark_done(destination, ids)))

    async def park_async(self, destination: str, failures: Sequence[tuple[int, str]], retry_at: float) -> None:
        await self._await(Call(park(destination, failures, retry_at)))

    async def note_failure_async(self, destination: str, message_id: int, error: str) -> None:
        await self._await(Call(note_failure(destination, message_id, error)))

    async def revive_async(self, destination: str, now: float) -> None:
        await self._await(Call(revive(destination, now)))

    async def record_notices_async(self, notices: Sequence[Notice]) -> None:
        """Keep the broker's notices about tracked messages (the first of each event per queue)."""
        await self._await(Call(lambda conn: conn.executemany(
            "INSERT OR IGNORE INTO notices (message_id, destination, queue, event, reason, ts, queues)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", notices)))

    async def renew_async(self, destination: str, ids: Sequence[int]) -> None:
        """Leases are for shared storages: one forwarder per SQLite file needs none."""

    async def release_async(self, destination: str) -> None:
        """See ``renew_async``."""

    def free_pages(self) -> int:
        """Pages of the file that are free (left by deleted messages), which ``shrink`` gives back."""
        with self._rlock:
            return int(self._rconn.execute("PRAGMA freelist_count").fetchone()[0])

    def shrink(self, pages: int = SHRINK_PAGES) -> int:
        """Give up to ``pages`` free pages back to the file system (one writer transaction of
        ``PRAGMA incremental_vacuum``, then a passive WAL checkpoint, which truncates the file); returns the
        free pages left. The forwarder calls it in bounded steps when it is idle."""
        left: list[int] = []
        self._write(Call(_vacuum(pages, left)))
        self._checkpoint()
        return left[0] if left else 0

    async def shrink_async(self, pages: int = SHRINK_PAGES) -> int:
        left: list[int] = []
        await self._await(Call(_vacuum(pages, left)))
        await asyncio.to_thread(self._checkpoint)
        return left[0] if left else 0

    def _checkpoint(self) -> None:
        with self._rlock:
            self._rconn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def fetch(self, destination: str, after: int, limit: int) -> list[OutboxMessage]:
        """Up to ``limit`` messages to send to ``destination`` with id > ``after``, in id order."""
        with self._rlock:
            rows = self._rconn.execute(
                "SELECT m.id, m.exchange, m.routing_key, m.mandatory, m.header, m.body FROM pending p"
                " JOIN messages m ON m.id = p.id WHERE p.destination = ? AND p.state = 0 AND p.id > ?"
                " ORDER BY p.id LIMIT ?", (destination, after, limit)).fetchall()
        return [OutboxMessage(i, e, r, bool(m), h, b) for i, e, r, m, h, b in rows]

    def parked_due(self, destination: str, now: float) -> int:
        with self._rlock:
            return int(self._rconn.execute(
                "SELECT count(*) FROM pending WHERE destination = ? AND state = 1 AND retry_at <= ?",
                (destination, now)).fetchone()[0])

    def destinations(self) -> list[str]:
        with self._rlock:
            return [r[0] for r in self._rconn.execute("SELECT DISTINCT destination FROM pending ORDER BY 1")]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per destination: ``pending`` (to send), ``parked`` (unroutable or refused, retried later),
        ``oldest_age`` (seconds since the oldest of them was sent, or None), ``last_error``."""
        now = time.time()
        with self._rlock:
            rows = self._rconn.execute(
                "SELECT p.destination, p.state, count(*), min(m.created) FROM pending p JOIN messages m"
                " ON m.id = p.id GROUP BY p.destination, p.state").fetchall()
            errors = {d: e for d, e, _ in self._rconn.execute(  # SQLite: bare columns come from the max() row
                "SELECT destination, error, max(id) FROM pending WHERE error IS NOT NULL GROUP BY destination")}
        return destination_stats(rows, errors, now)

    def tracked(self, message_id: str) -> dict[str, Any]:
        """The state of a message sent with ``track=True`` (tracking.py): saved, parked, sent or unknown."""
        with self._rlock:
            rows = self._rconn.execute(
                "SELECT t.destination, t.sent_at, p.state, p.error FROM tracking t LEFT JOIN pending p"
                " ON p.id = t.id AND p.destination = t.destination WHERE t.message_id = ? ORDER BY t.id",
                (message_id,)).fetchall()
            notices = self._rconn.execute(
                "SELECT destination, queue, event, reason, ts, queues FROM notices WHERE message_id = ?",
                (message_id,)).fetchall()
        return summarise(message_id, rows, notices)

    def count(self) -> int:
        """Messages in the outbox (each counted once, whatever its destinations)."""
        with self._rlock:
            return int(self._rconn.execute("SELECT count(*) FROM messages").fetchone()[0])


# --- writer transactions used by the forwarder ---------------------------------------------------------------------


def _vacuum(pages: int, left: list[int]) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM tracking WHERE sent_at < ?", (time.time() - TRACK_KEEP,))
        conn.execute("DELETE FROM notices WHERE ts < ?", (time.time() - TRACK_KEEP,))
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        steps = min(free, pages)
        # One page per statement: Python's sqlite3 steps "PRAGMA incremental_vacuum(N)" once, which frees one page.
        for _ in range(steps):
            conn.execute("PRAGMA incremental_vacuum(1)")
        left.append(free - steps)

    return run


def mark_done(destination: str, ids: Sequence[int]) -> Callable[[sqlite3.Connection], None]:
    """``destination`` confirmed ``ids``: drop their pending rows, and the messages no destination still wants."""

    def run(conn: sqlite3.Connection) -> None:
        now = time.time()
        for i in range(0, len(ids), 500):
            chunk = list(ids[i:i + 500])
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM pending WHERE destination = ? AND id IN ({marks})", (destination, *chunk))
            conn.execute(f"UPDATE tracking SET sent_at = ? WHERE id IN ({marks}) AND destination = ?",
                         (now, *chunk, destination))
            conn.execute(f"DELETE FROM messages WHERE id IN ({marks}) AND NOT EXISTS"
                         " (SELECT 1 FROM pending WHERE pending.id = messages.id)", chunk)

    return run


def park(destination: str, failures: Sequence[tuple[int, str]],
         retry_at: float) -> Callable[[sqlite3.Connection], None]:
    """Set messages aside (unroutable, no such exchange, refused): not sent again before ``retry_at``."""

    def run(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE pending SET state = 1, attempts = attempts + 1, error = ?, retry_at = ?"
                         " WHERE destination = ? AND id = ?",
                         [(error, retry_at, destination, i) for i, error in failures])

    return run


def note_failure(destination: str, message_id: int, error: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE pending SET attempts = attempts + 1, error = ? WHERE destination = ? AND id = ?",
                     (error, destination, message_id))

    return run


def revive(destination: str, now: float) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE pending SET state = 0 WHERE destination = ? AND state = 1 AND retry_at <= ?",
                     (destination, now))

    return run


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(OutboxError(f"not saved: {error}"))
