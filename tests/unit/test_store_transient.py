"""The PostgreSQL store's transient definitions of several nodes (store/postgres_transient.py, docs/cluster.md),
without a broker: a non-durable or exclusive queue is a row of ``queues`` owned by its node and goes when that node
does (never taken over), transient exchanges go when the whole cluster stops, and the hand-over rows of a node's
direct reply-to addresses reach it by their name. Real PostgreSQL (tests/support/pghelp.py: skipped without it),
a schema per test.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import pytest

from leveret.core.storage import BindingDef, DefinitionChange, ExchangeDef, HandOver, QueueDef, reply_prefix
from leveret.store.postgres import PostgresStore
from leveret.store.tagged_json import encode_value

from pghelp import postgres_store_url, postgres_url, submit_wait  # noqa: F401 - fixtures
from pghelp import schema_db as db
from waiting import wait_for


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("postgres_store_url"))


def opened(url: str, node: str) -> PostgresStore:
    store = PostgresStore(url, node=node, cluster=True, node_lease=3)
    store.open()
    return store


@pytest.fixture
def two(url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    a, b = opened(url, "a"), opened(url, "b")
    try:
        yield a, b
    finally:
        b.close()
        a.close()




def rows(url: str, sql: str) -> list[Any]:
    with db(url) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[no-any-return]


def test_a_transient_queue_is_shared_and_goes_with_its_owner(url: str,
                                                             two: tuple[PostgresStore, PostgresStore]) -> None:
    """a's exclusive queue is a definition every node reads (durable false, exclusive) with its binding; once a is
    gone its row, binding and hand-over rows are deleted by b's heartbeat, and the deletion reaches the nodes as a
    change of a's (b applies it too); a's durable queue stays, to be taken over."""
    a, b = two
    assert a.save_queue(QueueDef("/", "amq.gen-x", durable=False, exclusive=True)) == "a"
    assert a.save_queue(QueueDef("/", "jobs")) == "a"
    a.save_binding(BindingDef("/", "amq.fanout", "amq.gen-x", "queue", ""))
    assert QueueDef("/", "amq.gen-x", False, False, {}, True) in b.load_definitions().queues
    got: queue.Queue[list[DefinitionChange]] = queue.Queue()
    b.watch_definitions(got.put)
    first, _ = b.id_block()
    submit_wait(b, [HandOver(first, "/", "amq.gen-x", "a", "", "amq.gen-x", b"h", b"reply")])
    assert a.claim_queues() == {("/", "amq.gen-x"): "a", ("/", "jobs"): "a"}  # a transient queue is not claimed

    a.close()  # its leases end: b's next heartbeat sweeps its transient queue
    (change,) = got.get(timeout=10)
    assert (change.node, change.what, change.args) == ("a", "delete_queue", ("/", "amq.gen-x"))
    assert rows(url, "SELECT name FROM queues") == [("jobs",)]
    assert rows(url, "SELECT count(*) FROM bindings") == [(0,)]
    assert rows(url, "SELECT count(*) FROM handover") == [(0,)]


def test_a_node_that_stops_deletes_its_transient_queues(url: str) -> None:
    """A clean stop deletes the node's transient queues itself (no other node needs to see its lease run out) and
    logs their deletion for the others; its durable queues stay, for another node to take over."""
    a = opened(url, "a")
    a.save_queue(QueueDef("/", "jobs"))
    a.save_queue(QueueDef("/", "amq.gen-r", durable=False, exclusive=True))
    a.close()
    assert rows(url, "SELECT name FROM queues") == [("jobs",)]
    assert rows(url, "SELECT node, what, args FROM changes ORDER BY version DESC LIMIT 1") == [
        ("a", "delete_queue", '["/","amq.gen-r"]')]


def test_a_node_that_starts_removes_transient_definitions_of_an_earlier_run(url: str) -> None:
    """A node restarted under its name deletes its own transient queues at once (they were its connections'), and,
    starting while no other node runs, every transient exchange with its bindings; a transient exchange stays while
    another node runs."""
    a = opened(url, "a")
    a.save_queue(QueueDef("/", "jobs"))
    a.save_queue(QueueDef("/", "temp", durable=False))
    a.save_exchange(ExchangeDef("/", "events", "fanout", durable=False))
    a.save_binding(BindingDef("/", "events", "jobs", "queue", ""))
    a.close()  # deletes its transient queue: put one back as if a had been killed (its leases not run out)
    with db(url) as conn:
        conn.execute("UPDATE queues SET lease_until = 1e12")
        conn.execute("INSERT INTO queues (vhost, name, durable, auto_delete, arguments, owner, lease_until)"
                     " VALUES ('/', 'temp', false, false, %s, 'a', 1e12)", (encode_value({}),))
    assert len(rows(url, "SELECT name FROM queues")) == 2
    a = opened(url, "a")
    try:
        defs = a.load_definitions()
        assert [q.name for q in defs.queues] == ["jobs"]
        assert [x.name for x in defs.exchanges] == [] and defs.bindings == []
        b = opened(url, "b")
        try:
            a.save_exchange(ExchangeDef("/", "kept", "direct", durable=False))
            a.close()
            a = opened(url, "a")  # b runs: the transient exchange is the cluster's still
            assert [x.name for x in a.load_definitions().exchanges] == ["kept"]
        finally:
            b.close()
    finally:
        a.close()


def test_reply_rows_reach_their_node_and_go_when_it_does(url: str, two: tuple[PostgresStore, PostgresStore]) -> None:
    """A reply routed on a to an address of b is a hand-over row named after the address: b is told of it (by the
    name's prefix, no queue row), reads and takes it; rows for a node that does not run are deleted at the next
    heartbeat of a node, those of a running node kept."""
    a, b = two
    told: queue.Queue[list[tuple[str, str]]] = queue.Queue()
    b.watch_handed(told.put)
    to_b, to_nobody = reply_prefix("b") + "token-1", reply_prefix("gone") + "token-2"
    first, _ = a.id_block()
    submit_wait(a, [HandOver(first, "/", to_b, "b", "", to_b, b"h", b"to-b"),
                    HandOver(first + 1, "/", to_nobody, "gone", "", to_nobody, b"h", b"lost")])
    wait_for(lambda: ("/", to_b) in told.get(timeout=10))
    assert [r.body for r in b.load_handed("/", to_b, [], 10)] == [b"to-b"]
    wait_for(lambda: rows(url, "SELECT queue FROM handover") == [(to_b,)], timeout=10,
             message="the row of a node that does not run deleted, b's kept")
    b.close()
    wait_for(lambda: rows(url, "SELECT count(*) FROM handover") == [(0,)], timeout=10,
             message="b's reply row deleted once b stopped")
