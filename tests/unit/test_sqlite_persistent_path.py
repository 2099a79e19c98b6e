"""The SQLite store's cheaper persistent path (docs/performance.md, "persistent path"): a delivered-then-acked
message's redelivered flag is not written when its delete is in the same transaction, and a queue paging its
records back in gets their inline bodies from the same read (load_bodies does not read them again)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from leveret.core.storage import Delete, MessageOp, Purge, Push, Requeue
from leveret.store import sqlite_batch
from leveret.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "leveret.db", synchronous="NORMAL")
    s.open()
    yield s
    s.close()


def submit_wait(store: SqliteStore, ops: Sequence[MessageOp]) -> None:
    results: list[BaseException | None] = []
    store.submit(list(ops), results.append)
    store.flush()
    assert results == [None]


def push(i: int, body: bytes | None = None) -> Push:
    return Push(i, "/", "q", i, "ex", "rk", b"header-%d" % i, b"body-%d" % i if body is None else body)


def statements(store: SqliteStore, ops: Sequence[MessageOp]) -> list[str]:
    """The SQL the writer runs for ``ops`` (one transaction), through a trace callback on its connection."""
    seen: list[str] = []
    store.run_in_writer(lambda conn: conn.set_trace_callback(seen.append))
    try:
        submit_wait(store, ops)
    finally:
        store.run_in_writer(lambda conn: conn.set_trace_callback(None))
    return seen


def test_requeue_then_delete_in_one_transaction_writes_only_the_delete(store: SqliteStore) -> None:
    submit_wait(store, [push(i) for i in range(1, 5)])
    sql = statements(store, [Requeue(1), Requeue(2), Delete(1), Requeue(3), Delete(3), Delete(3)])
    updates = [s for s in sql if s.startswith("UPDATE messages SET redelivered")]
    assert len(updates) == 1 and "IN (2)" in updates[0]
    assert [(m.id, m.redelivered) for m in store.load_messages("/", "q")] == [(2, True), (4, False)]


def test_delete_then_requeue_of_another_id_keeps_the_flag(store: SqliteStore) -> None:
    submit_wait(store, [push(i) for i in range(1, 4)])
    submit_wait(store, [Delete(1), Requeue(2), Requeue(2)])
    assert [(m.id, m.redelivered) for m in store.load_messages("/", "q")] == [(2, True), (3, False)]


def test_pushed_requeued_and_deleted_in_one_transaction_never_reaches_the_disk(store: SqliteStore) -> None:
    sql = statements(store, [push(1), Requeue(1), push(2), Requeue(2), Delete(1)])
    assert not any(s.startswith(("UPDATE messages", "DELETE FROM messages")) for s in sql)
    assert [(m.id, m.redelivered) for m in store.load_messages("/", "q")] == [(2, True)]


def test_paging_read_brings_inline_bodies_for_load_bodies(store: SqliteStore) -> None:
    big = b"B" * (sqlite_batch.INLINE_BODY_MAX + 1)
    submit_wait(store, [push(1), push(2, big), push(3, b""), push(4)])
    records = list(store.load_messages("/", "q", with_bodies=False, limit=10))
    assert [(m.id, m.body) for m in records] == [(1, None), (2, None), (3, None), (4, None)]
    sql: list[str] = []
    conn = store._rconn
    assert isinstance(conn, sqlite3.Connection)
    conn.set_trace_callback(sql.append)
    try:
        assert store.load_bodies([1, 3]) == {1: b"body-1", 3: b""}  # from the paging read
        assert sql == []
        assert store.load_bodies([2, 4, 1]) == {2: big, 4: b"body-4", 1: b"body-1"}  # 2 (a table body), 1 again
        assert len(sql) == 1
    finally:
        conn.set_trace_callback(None)


def test_recovery_and_body_reads_do_not_fill_the_paging_cache(store: SqliteStore) -> None:
    submit_wait(store, [push(1), push(2)])
    assert [m.body for m in store.load_messages("/", "q", with_bodies=False)] == [None, None]
    assert [m.body for m in store.load_messages("/", "q", limit=5)] == [b"body-1", b"body-2"]
    assert store._paged == {}


def test_paging_cache_is_bounded(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("leveret.store.sqlite.PAGED_BODIES_MAX", 20)  # bytes: 3 bodies of 6-7 B
    submit_wait(store, [push(i) for i in range(1, 11)])
    for after in range(0, 10, 2):
        list(store.load_messages("/", "q", with_bodies=False, after_seq=after, limit=2))
        assert len(store._paged) <= 3 + 2 and store._paged_bytes == sum(map(len, store._paged.values()))
    assert store.load_bodies(range(1, 11)) == {i: b"body-%d" % i for i in range(1, 11)}
    submit_wait(store, [Purge("/", "q")])
    assert store.load_bodies([1, 2]) == {}
