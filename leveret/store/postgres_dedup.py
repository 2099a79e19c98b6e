"""The PostgreSQL store's deduplication windows: the SQL behind DedupPut and Store.load_dedup (the table is
schema version 2, made in postgres_schema.py).

The same shape as the SQLite store's (store/sqlite_dedup.py, whose docstring says why): ``dedup (vhost, kind,
name, seq, last, ids)``, one row per owner and transaction, ``ids`` the JSON ``[[seq, key, expires], ...]``,
written by the writer thread in the group-commit transaction of the messages they came with, then the rows wholly
out of the owner's window deleted. Names go through ``text_in`` (NUL-safe) as in the messages table.
"""

from __future__ import annotations

import json
from typing import Any

from leveret.core.storage import DedupPut

from .postgres_schema import text_in, text_out

SELECT_ALL = "SELECT vhost, kind, name, ids FROM dedup ORDER BY vhost, kind, name, seq"


def write(conn: Any, puts: list[DedupPut]) -> None:
    """One row per owner for ``puts`` (in order), then the owner's rows that fell out of its window deleted."""
    owners: dict[tuple[str, str, str], list[DedupPut]] = {}
    for op in puts:
        owners.setdefault((op.vhost, op.kind, op.name), []).append(op)
    for (vhost, kind, name), ops in owners.items():
        ids = json.dumps([[op.seq, op.key, op.expires] for op in ops], separators=(",", ":"))
        owner = (text_in(vhost), kind, text_in(name))
        conn.execute("INSERT INTO dedup (vhost, kind, name, seq, last, ids) VALUES (%s, %s, %s, %s, %s, %s)"
                     " ON CONFLICT (vhost, kind, name, seq) DO UPDATE SET last = excluded.last, ids = excluded.ids",
                     (*owner, ops[0].seq, ops[-1].seq, ids))
        below = ops[-1].seq - ops[-1].keep
        if below > 0:
            conn.execute("DELETE FROM dedup WHERE vhost = %s AND kind = %s AND name = %s AND seq <= %s"
                         " AND last <= %s", (*owner, below, below))


def load(rows: list[tuple[str, str, str, str]]) -> dict[tuple[str, str, str], list[tuple[int, str, float]]]:
    """The rows of ``SELECT_ALL`` as Store.load_dedup's windows."""
    windows: dict[tuple[str, str, str], list[tuple[int, str, float]]] = {}
    for vhost, kind, name, ids in rows:
        windows.setdefault((text_out(vhost), kind, text_out(name)), []).extend(
            (int(s), str(k), float(e)) for s, k, e in json.loads(ids))
    return windows


def delete_owner(vhost: str, kind: str, name: str) -> tuple[str, tuple[str, str, str]]:
    """The statement that forgets the window of a deleted queue or exchange."""
    return ("DELETE FROM dedup WHERE vhost = %s AND kind = %s AND name = %s", (text_in(vhost), kind, text_in(name)))
