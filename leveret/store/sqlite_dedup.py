"""The SQLite store's deduplication windows (schema version 5): the SQL behind DedupPut and Store.load_dedup.

``dedup (vhost, kind, name, seq, last, ids)``, primary key (vhost, kind, name, seq): the ids a durable queue
(kind "queue") or exchange ("exchange") with ``x-message-deduplication`` took (core/dedup.py), one row per owner
and commit: ``seq`` and ``last`` are the first and last id's order, ``ids`` the ids as JSON ``[[seq, key,
expires], ...]``. A row per commit rather than per id: a forwarder's batch of hundreds of messages costs one
insert, not hundreds (with a row per id the writer spent ~3 µs per message on them). Written by the store's one
writer thread inside its group-commit transaction (sqlite_batch.py), with the messages of the same batch; then
per owner one ``DELETE`` of the rows wholly out of its window (``last <= newest - keep``). Read back at start-up
in order (the window keeps the newest ``keep`` of what it reads).
"""

from __future__ import annotations

import json
import sqlite3

from leveret.core.storage import DedupPut


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE dedup (
        vhost TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL, last INTEGER NOT NULL,
        ids TEXT NOT NULL,
        PRIMARY KEY (vhost, kind, name, seq)) WITHOUT ROWID""")


def write(conn: sqlite3.Connection, puts: list[DedupPut]) -> None:
    """One row per owner for ``puts`` (in order), then the owner's rows that fell out of its window deleted."""
    owners: dict[tuple[str, str, str], list[DedupPut]] = {}
    for op in puts:
        owners.setdefault((op.vhost, op.kind, op.name), []).append(op)
    for (vhost, kind, name), ops in owners.items():
        ids = json.dumps([[op.seq, op.key, op.expires] for op in ops], separators=(",", ":"))
        conn.execute("INSERT OR REPLACE INTO dedup (vhost, kind, name, seq, last, ids) VALUES (?, ?, ?, ?, ?, ?)",
                     (vhost, kind, name, ops[0].seq, ops[-1].seq, ids))
        below = ops[-1].seq - ops[-1].keep
        if below > 0:
            # rows hold disjoint, growing seq ranges: those wholly out are a prefix, found on the key (seq)
            conn.execute("DELETE FROM dedup WHERE vhost = ? AND kind = ? AND name = ? AND seq <= ? AND last <= ?",
                         (vhost, kind, name, below, below))


def load(rows: list[tuple[str, str, str, str]]) -> dict[tuple[str, str, str], list[tuple[int, str, float]]]:
    """The rows of ``SELECT_ALL`` as Store.load_dedup's windows."""
    windows: dict[tuple[str, str, str], list[tuple[int, str, float]]] = {}
    for vhost, kind, name, ids in rows:
        windows.setdefault((vhost, kind, name), []).extend((int(s), str(k), float(e)) for s, k, e in json.loads(ids))
    return windows


SELECT_ALL = "SELECT vhost, kind, name, ids FROM dedup ORDER BY vhost, kind, name, seq"
