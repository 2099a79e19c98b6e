"""The SQLite store's deduplication windows (schema version 5): the SQL behind DedupPut and Store.load_dedup.

``dedup (vhost, kind, name, seq, key, expires)``, primary key (vhost, kind, name, seq): one row per id a durable
queue (kind "queue") or exchange ("exchange") with ``x-message-deduplication`` took (core/dedup.py). Written by
the store's one writer thread inside its group-commit transaction (sqlite_batch.py), with the messages of the
same batch: the batch's puts in multi-row inserts, then per owner one ``DELETE`` of the rows that fell out of
its window (``seq <= newest - keep``, a range of the primary key). Read back at start-up in seq order.
"""

from __future__ import annotations

import sqlite3

from leveret.core.storage import DedupPut

_ROWS = 128  # rows per multi-row INSERT (6 parameters each)


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE dedup (
        vhost TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL,
        key TEXT NOT NULL, expires REAL NOT NULL,
        PRIMARY KEY (vhost, kind, name, seq)) WITHOUT ROWID""")


def write(conn: sqlite3.Connection, puts: list[DedupPut]) -> None:
    """Insert the puts (in order) and trim each owner's window to its ``keep`` newest rows."""
    trim: dict[tuple[str, str, str], int] = {}
    for start in range(0, len(puts), _ROWS):
        chunk = puts[start:start + _ROWS]
        rows: list[object] = []
        for op in chunk:
            rows.extend((op.vhost, op.kind, op.name, op.seq, op.key, op.expires))
            trim[(op.vhost, op.kind, op.name)] = op.seq - op.keep
        conn.execute("INSERT OR REPLACE INTO dedup (vhost, kind, name, seq, key, expires) VALUES "
                     + ",".join(["(?,?,?,?,?,?)"] * len(chunk)), rows)
    for (vhost, kind, name), below in trim.items():
        if below > 0:
            conn.execute("DELETE FROM dedup WHERE vhost = ? AND kind = ? AND name = ? AND seq <= ?",
                         (vhost, kind, name, below))


def load(rows: list[tuple[str, str, str, int, str, float]]) -> dict[tuple[str, str, str], list[tuple[int, str, float]]]:
    """The rows of ``SELECT_ALL`` as Store.load_dedup's windows."""
    windows: dict[tuple[str, str, str], list[tuple[int, str, float]]] = {}
    for vhost, kind, name, seq, key, expires in rows:
        windows.setdefault((vhost, kind, name), []).append((seq, key, expires))
    return windows


SELECT_ALL = "SELECT vhost, kind, name, seq, key, expires FROM dedup ORDER BY vhost, kind, name, seq"
