"""The SQLite store's file: its schema and migrations, and the checks that refuse a file it must not use.

Schema (``PRAGMA user_version`` = len(MIGRATIONS); ``application_id`` marks the file as Leveret's)
    ``vhosts``, ``users``, ``permissions``, ``limits`` (vhost and user limits as JSON, since user_version 3),
    ``exchanges``, ``queues``, ``bindings`` (arguments as tagged JSON, store/tagged_json.py), ``policies``
    (since 2), ``messages`` (id INTEGER PRIMARY KEY, vhost, queue, seq, exchange, routing_key, header, body,
    redelivered) indexed on (vhost, queue, seq), ``bodies`` (id INTEGER PRIMARY KEY, body), ``meta`` (the
    message id high-water mark, so ids are not reused even when every message is deleted) and ``task_status``
    (the status book's records, since 4: see sqlite_status.py), ``dedup`` (deduplication windows, since 5:
    sqlite_dedup.py). Bodies up to ``INLINE_BODY_MAX``
    (sqlite_batch.py) bytes are stored in ``messages.body``, larger ones in ``bodies`` (``messages.body``
    NULL); a trigger deletes the ``bodies`` row with its message.

Refusals (:class:`StoreError`, with what to do)
    A file that is not an SQLite database, a database that fails ``PRAGMA quick_check``, an SQLite database that
    is not Leveret's, a ``-wal`` file without its database, a schema newer than this code, a read-only file or
    directory, a store already opened by another process (``flock`` on ``leveret.db.lock``), a file system
    without WAL. Nothing here deletes or recreates a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from leveret.core.storage import StoreError

from . import sqlite_dedup, sqlite_status

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("leveret.store")

APPLICATION_ID = 0x4C565254  # "LVRT" in the database header: this file is a Leveret store
WAL_AUTOCHECKPOINT = 4000  # pages (16 MB): the writer folds the WAL back into the database after a commit
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_SQLITE_HEADER = b"SQLite format 3\x00"

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF)
_SQLITE_PERM = 3
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


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
# 4: task_status, the status book's records (sqlite_status.py). 5: dedup, deduplication windows (sqlite_dedup.py).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_1, _migrate_2, _migrate_3, sqlite_status.migrate,
                                                         sqlite_dedup.migrate]
SCHEMA_VERSION = len(MIGRATIONS)


# --- opening -------------------------------------------------------------------------------------------------


def check_files(path: Path) -> None:
    """Create the data directory and an empty database file (mode 0600) if missing; refuse what cannot be used."""
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
            raise StoreError(corrupt_text(path, "it is not an SQLite database"))
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


def corrupt_text(path: Path, what: str) -> str:
    return (f"the store {path} is damaged ({what}): restore it from a backup, or move it aside to start "
            "with an empty store (Leveret never overwrites it)")


def take_lock(path: Path) -> int | None:
    """flock ``<path>.lock`` (one process per store); returns the lock's file descriptor (close it to release)."""
    if fcntl is None:  # pragma: no cover
        return None
    lock_path = path.with_name(path.name + ".lock")
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
        raise StoreError(f"the store {path} is in use by another process (or another store object in "
                         "this one): stop it, or use another --data-dir") from exc
    return fd


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout,
                           cached_statements=256)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA cache_size = -32768")  # 32 MiB
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def check_database(conn: sqlite3.Connection, path: Path, quick_check: bool) -> None:
    """Refuse a database that is not Leveret's, is newer than this code, or (``quick_check``) is damaged."""
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(corrupt_text(path, str(exc))) from exc
    if application_id not in (0, APPLICATION_ID) or (application_id == 0 and tables):
        raise StoreError(f"{path} is an SQLite database but not a Leveret store: "
                         "use another --data-dir (Leveret does not touch it)")
    if version > SCHEMA_VERSION:
        raise StoreError(f"the store {path} was written by a newer Leveret (schema {version}, this version "
                         f"knows {SCHEMA_VERSION}); upgrade Leveret or use another --data-dir")
    if quick_check and tables:
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            raise StoreError(corrupt_text(path, str(exc))) from exc
        if problems != ["ok"]:
            raise StoreError(corrupt_text(path, "integrity check: " + "; ".join(problems)))


def configure_writer(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA recursive_triggers = ON")  # INSERT OR REPLACE of a message also drops its old body
    conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate a WAL that grew past 64 MB
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")


def migrate(conn: sqlite3.Connection, path: Path, synchronous: str) -> int:
    """Put the database in WAL mode, configure the writer's connection, run the missing migrations and make one
    real write (so that a read-only file, directory or full disk shows up now rather than at the first
    publish). Returns the message id high-water mark."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"cannot put the store {path} in WAL mode (got {mode}): is it on a network "
                         "file system? Use a local --data-dir")
    configure_writer(conn, synchronous)
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
        log.info("store %s: schema migrated to version %d", path, number + 1)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', ?)", (time.time(),))
        max_id = int(conn.execute(MAX_MESSAGE_ID).fetchone()[0])
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return max_id


MAX_MESSAGE_ID = ("SELECT max((SELECT value FROM meta WHERE key = 'max_message_id'),"
                  " coalesce((SELECT max(id) FROM messages), 0))")


def describe_error(path: Path, doing: str, exc: sqlite3.Error) -> StoreError:
    """A StoreError whose text says what went wrong with the store and what to do."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code == _SQLITE_FULL:
        text = (f"disk full: {doing} the store {path} ({exc}); free some space (the store works again once "
                "there is room)")
    elif code in (_SQLITE_READONLY, _SQLITE_PERM):
        text = (f"the store {path} is read-only ({exc}): fix the permissions of the file and its directory, "
                "or use another --data-dir")
    elif code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        text = corrupt_text(path, str(exc))
    elif code == _SQLITE_CANTOPEN:
        text = (f"{doing} the store {path}: SQLite cannot open it ({exc}); check that its directory exists and "
                "is writable")
    elif code == _SQLITE_IOERR:
        text = f"I/O error: {doing} the store {path} ({exc}); check the disk"
    else:
        text = f"{doing} the store {path}: {exc}"
    return StoreError(text)
