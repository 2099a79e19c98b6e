"""The SQLite store's task status table (schema version 4): the SQL behind StatusPut, StatusRead and StatusExpire.

``task_status (vhost, id, expires, record)``, primary key (vhost, id), indexed on ``expires`` for the expiry
sweep; ``record`` is the JSON of :func:`leveret.core.status_record.encode`. Everything here runs on the store's one
writer thread, inside its group-commit transaction (sqlite.py): a batch of puts is merged in Python first (one
record per id), then the stored versions of those ids are read by key (``vhost = ? AND id IN``) per chunk, merged, and
written back with multi-row ``INSERT OR REPLACE``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from leveret.core.status_record import StatusRecord, decode, encode, merge
from leveret.core.storage import StatusExpire, StatusRead

_CHUNK = 256  # ids per statement (2 parameters each for the lookups, 4 for the inserts)


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE task_status (
        vhost TEXT NOT NULL, id TEXT NOT NULL, expires REAL NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (vhost, id)) WITHOUT ROWID""")
    conn.execute("CREATE INDEX task_status_expires ON task_status (expires)")


def _chunks(items: list[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def _stored(conn: sqlite3.Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], StatusRecord]:
    """The stored records of ``keys``, looked up by primary key: ``vhost = ? AND id IN (...)``, one statement
    per vhost and chunk. (A row-value ``(vhost, id) IN (VALUES ...)`` is not planned as a key search by SQLite
    3.40: it scanned the whole table, ~12 ms per lookup at 50,000 records.)"""
    found: dict[tuple[str, str], StatusRecord] = {}
    by_vhost: dict[str, list[str]] = {}
    for vhost, task_id in keys:
        by_vhost.setdefault(vhost, []).append(task_id)
    for vhost, ids in by_vhost.items():
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            for task_id, text in conn.execute(
                    f"SELECT id, record FROM task_status WHERE vhost = ? AND id IN ({','.join('?' * len(chunk))})",
                    [vhost, *chunk]):
                found[(vhost, task_id)] = decode(text)
    return found


def write(conn: sqlite3.Connection, puts: dict[tuple[str, str], StatusRecord]) -> None:
    """Merge ``puts`` (already merged per id) into the table."""
    keys = list(puts)
    stored = _stored(conn, keys)
    for chunk in _chunks(keys):
        rows: list[object] = []
        for key in chunk:
            record = merge(stored.get(key), puts[key])
            rows.extend((key[0], key[1], record.expires, encode(record)))
        conn.execute("INSERT OR REPLACE INTO task_status (vhost, id, expires, record) VALUES "
                     + ",".join(["(?,?,?,?)"] * len(chunk)), rows)


def read(conn: sqlite3.Connection, op: StatusRead) -> None:
    stored = _stored(conn, [(op.vhost, task_id) for task_id in dict.fromkeys(op.ids)])
    op.records = {key[1]: record for key, record in stored.items() if record.expires > op.now}


def expire(conn: sqlite3.Connection, op: StatusExpire) -> None:
    cursor = conn.execute("DELETE FROM task_status WHERE (vhost, id) IN (SELECT vhost, id FROM task_status"
                          " WHERE expires <= ? ORDER BY expires LIMIT ?)", (op.now, op.limit))
    op.deleted = max(cursor.rowcount, 0)
