"""Fencing in the PostgreSQL store and the lane leases (store/postgres_leases.py, docs/cluster.md), without a broker:
a group commit that writes for a queue or a delayed lane this node no longer holds with a live lease fails as a
whole and writes nothing; a dead node's delayed lanes are moved, once, to the node that takes their lease.
Real PostgreSQL (tests/support/pghelp.py: skipped without it), a schema per test.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from leveret.core.storage import (
    DELAYED_PREFIX,
    NODE_MARK,
    RETRY_PREFIX,
    Delete,
    FencedError,
    HandOver,
    Push,
    QueueDef,
    Requeue,
)
from leveret.store import postgres_leases, postgres_schema
from leveret.store.postgres import PostgresStore

from pghelp import postgres_store_url, postgres_url  # noqa: F401 - fixtures
from pghelp import schema_db as db
from waiting import wait_for


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("postgres_store_url"))



def commit(store: PostgresStore, ops: list[Any]) -> BaseException | None:
    done: list[BaseException | None] = []
    store.submit(ops, done.append)
    store.flush()
    return done[0]


def push(i: int, queue_name: str = "q") -> Push:
    return Push(i, "/", queue_name, i, "", queue_name, b"h", b"body-%d" % i)


def stored(url: str) -> list[tuple[int, str, bool]]:
    with db(url) as conn:
        return [(i, q, r) for i, q, r in conn.execute("SELECT id, queue, redelivered FROM messages ORDER BY id")]


def stall(store: PostgresStore) -> None:
    """Stop a store's heartbeat (as a node paused past its lease: its writer stays, its renewals stop)."""
    link = store._link
    assert link is not None
    link._stop.set()
    link._thread.join(10)


@pytest.fixture
def node_a(url: str) -> Iterator[tuple[PostgresStore, threading.Event]]:
    a = PostgresStore(url, node="a", cluster=True, node_lease=3)
    a.open()
    lost = threading.Event()
    a.watch_queues(lambda queues: None, lost.set)
    try:
        yield a, lost
    finally:
        a.close()


def test_a_commit_for_a_queue_another_node_took_fails_and_writes_nothing(
        url: str, node_a: tuple[PostgresStore, threading.Event]) -> None:
    a, lost = node_a
    assert a.save_queue(QueueDef("/", "q")) == "a" and a.save_queue(QueueDef("/", "r")) == "a"
    first, _ = a.id_block()
    assert commit(a, [push(first), push(first + 1, "r")]) is None
    with db(url) as conn:  # node b takes "q" over (as its heartbeat would once a's lease ran out)
        conn.execute("UPDATE queues SET owner = 'b', lease_until = extract(epoch FROM clock_timestamp()) + 60"
                     " WHERE name = 'q'")
    # an ack of q's message, a redelivered mark and a push into r (still a's): one transaction, refused as a whole
    error = commit(a, [Delete(first), Requeue(first + 1), push(first + 2, "r")])
    assert isinstance(error, FencedError) and "'q' (vhost '/')" in str(error)
    assert stored(url) == [(first, "q", False), (first + 1, "r", False)]
    assert lost.wait(5)  # the node is told to stop serving
    assert a.failed_commits == 1


def test_a_lease_that_ran_out_fences_even_before_anyone_took_it(
        url: str, node_a: tuple[PostgresStore, threading.Event]) -> None:
    a, lost = node_a
    a.save_queue(QueueDef("/", "q"))
    first, _ = a.id_block()
    with db(url) as conn:  # a stalled past its lease: still its owner, but the lease is over
        conn.execute("UPDATE queues SET lease_until = 0 WHERE name = 'q'")
    assert isinstance(commit(a, [push(first)]), FencedError)
    assert stored(url) == []
    assert lost.wait(5)


def test_a_queue_deleted_meanwhile_is_no_fence_and_other_queues_are_unaffected(
        url: str, node_a: tuple[PostgresStore, threading.Event]) -> None:
    a, lost = node_a
    a.save_queue(QueueDef("/", "q"))
    first, _ = a.id_block()
    assert commit(a, [push(first)]) is None
    with db(url) as conn:
        conn.execute("DELETE FROM queues WHERE name = 'q'")  # deleted through another node
    assert commit(a, [Delete(first)]) is None
    assert not lost.is_set()


def test_hand_overs_need_the_nodes_own_lane_lease(url: str, node_a: tuple[PostgresStore, threading.Event]) -> None:
    """A node whose lanes another node took (it counts as dead) writes nothing more, not even hand-over rows or an
    ack of a message already gone: its timers may be firing messages the other node now releases."""
    a, lost = node_a
    first, _ = a.id_block()
    with db(url) as conn:
        conn.execute("UPDATE lanes SET owner = 'b', lease_until = extract(epoch FROM clock_timestamp()) + 60"
                     " WHERE node = 'a'")
    error = commit(a, [HandOver(first, "/", "elsewhere", "b", "", "k", b"h", b"x")])
    assert isinstance(error, FencedError) and "delayed lanes" in str(error)
    assert isinstance(commit(a, [Delete(first + 5)]), FencedError)
    with db(url) as conn:
        assert conn.execute("SELECT count(*) FROM handover").fetchone()[0] == 0
    assert lost.wait(5)


def test_a_dead_nodes_lanes_move_once_to_the_node_that_takes_their_lease(url: str) -> None:
    """a holds two delayed messages in its lane of exchange x; its lane lease runs out (a stops cleanly: its leases
    are ended). b's heartbeat takes the lease and moves them into b's lane in the same transaction, once; a's
    stale delete of one of them is then refused (it is b's lane now), and a restarted a moves nothing back."""
    a = PostgresStore(url, node="a", cluster=True, node_lease=3)
    b = PostgresStore(url, node="b", cluster=True, node_lease=3)
    a.open()
    b.open()
    try:
        lane_a, lane_b = (DELAYED_PREFIX + node + NODE_MARK + "x" for node in ("a", "b"))
        retry_a, retry_b = (RETRY_PREFIX + node + NODE_MARK + "jobs" for node in ("a", "b"))
        first, _ = a.id_block()
        assert commit(a, [push(first, lane_a), push(first + 1, lane_a), push(first + 2, lane_a),
                          push(first + 3, retry_a)]) is None
        assert commit(a, [Delete(first + 2)]) is None  # released before the takeover: never moved
        moved: queue.Queue[list[tuple[str, str, int]]] = queue.Queue()
        b.watch_lanes(moved.put)
        stall(a)
        with db(url) as conn:  # a stalls: its lane lease runs out
            conn.execute("UPDATE lanes SET lease_until = 0 WHERE node = 'a'")
        assert moved.get(timeout=10) == [("/", lane_b, 2), ("/", retry_b, 1)]
        assert stored(url) == [(first, lane_b, False), (first + 1, lane_b, False), (first + 3, retry_b, False)]
        error = commit(a, [Delete(first)])  # a resumes and fires one: refused, the message stays b's
        assert isinstance(error, FencedError)
        assert stored(url) == [(first, lane_b, False), (first + 1, lane_b, False), (first + 3, retry_b, False)]
        assert commit(b, [Delete(first), Delete(first + 3)]) is None  # b releases them
        with db(url) as conn:
            assert conn.execute("SELECT node, owner FROM lanes ORDER BY node").fetchall() == [("a", "b"), ("b", "b")]
    finally:
        a.close()
    restarted = PostgresStore(url, node="a", cluster=True, node_lease=3)
    restarted.open()
    try:
        restarted.claim_queues()  # its own lanes back (empty now); b's lease is live: nothing taken
        assert stored(url) == [(first + 1, lane_b, False)]
        with db(url) as conn:
            assert conn.execute("SELECT node, owner FROM lanes ORDER BY node").fetchall() == [("a", "a"), ("b", "b")]
        assert moved.empty()
    finally:
        restarted.close()
        b.close()


def test_a_takeover_waits_for_a_commit_that_holds_the_lease(url: str) -> None:
    """The fence locks the rows it checked until COMMIT: a change of owner at that moment waits for the COMMIT, and
    a heartbeat's takeover skips the rows (the next heartbeat takes them, after the commit), so a taker always reads
    what the old owner committed."""
    with PostgresStore(url, node="a", cluster=True, node_lease=3) as a, db(url) as holder, db(url) as taker, \
            db(url) as watcher:
        a.save_queue(QueueDef("/", "q"))
        holder.execute("BEGIN")
        postgres_leases.fence(holder, "a", {("/", "q")})  # as a's writer does before its COMMIT
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(taker.execute(
            "UPDATE queues SET owner = 'b' WHERE name = 'q' RETURNING owner").fetchall()))
        thread.start()
        pid = taker.info.backend_pid
        wait_for(lambda: watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                         (pid,)).fetchone()[0] == "Lock", message="the change of owner waits")
        assert not result
        holder.execute("COMMIT")
        thread.join(10)
        assert result == [[("b",)]]
        watcher.execute("UPDATE queues SET lease_until = 0")  # b's lease ran out
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM queues WHERE name = 'q' FOR SHARE")  # b's writer, committing
        assert taker.execute(postgres_leases.TAKE_OVER, ("c", 3, "c")).fetchall() == []
        holder.execute("COMMIT")
        assert taker.execute(postgres_leases.TAKE_OVER, ("c", 3, "c")).fetchall() == [("/", "q")]


def test_an_owners_deletion_of_a_queue_it_lost_is_refused(url: str,
                                                         node_a: tuple[PostgresStore, threading.Event]) -> None:
    """x-expires, auto-delete or a client's queue.delete on the node that believed it owned the queue: refused once
    another node holds its lease (nothing deleted); a deletion through a node that never owned it is a client's
    right, as before."""
    a, lost = node_a
    a.save_queue(QueueDef("/", "q"))
    a.save_queue(QueueDef("/", "mine"))
    a.delete_queue("/", "mine", owner="a")  # its own, with a live lease: deleted
    with db(url) as conn:
        conn.execute("UPDATE queues SET owner = 'b', lease_until = extract(epoch FROM clock_timestamp()) + 60"
                     " WHERE name = 'q'")
    with pytest.raises(FencedError, match="queue 'q'"):
        a.delete_queue("/", "q", owner="a")
    assert lost.wait(5)
    with db(url) as conn:
        assert conn.execute("SELECT name, owner FROM queues").fetchall() == [("q", "b")]
    a.delete_queue("/", "q")  # through a node that does not own it (owner None): deleted
    with db(url) as conn:
        assert conn.execute("SELECT count(*) FROM queues").fetchone()[0] == 0


def test_a_writer_paused_in_the_middle_of_a_commit_does_not_keep_its_rows(url: str) -> None:
    """The rows a fence locked are free again once the writer's transaction has been idle for two thirds of the
    lease (the server ends it: idle_in_transaction_session_timeout), so a node frozen between its fence and its
    COMMIT cannot stop the others from taking its queues over."""
    with PostgresStore(url, node="a", cluster=True, node_lease=3) as a, db(url) as taker:
        a.save_queue(QueueDef("/", "q"))
        stall(a)  # frozen: no renewals either
        writer = postgres_schema.connect(a.url, a.schema, 5, "writer")
        PostgresStore(url, node="frozen", cluster=True, node_lease=3).configure_writer(writer)
        taker.execute("UPDATE queues SET lease_until = 0")  # the lease runs out while a is frozen
        writer.execute("BEGIN")
        writer.execute("SELECT 1 FROM queues WHERE name = 'q' FOR SHARE")  # as a's fence, just before
        assert taker.execute(postgres_leases.TAKE_OVER, ("b", 3, "b")).fetchall() == []  # held
        assert wait_for(lambda: taker.execute(postgres_leases.TAKE_OVER, ("b", 3, "b")).fetchall(), timeout=10,
                        message="the frozen transaction ended by the server") == [("/", "q")]
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            writer.execute("COMMIT")  # its session is gone: nothing it wrote lands
        writer.close()
