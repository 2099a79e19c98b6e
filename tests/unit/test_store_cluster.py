"""The PostgreSQL store's parts for several nodes (store/postgres_cluster.py, docs/cluster.md), without a broker:
schema 3's migration of a version 2 schema, message id blocks, the change log and its notifications, the node
registry. Real PostgreSQL (tests/support/pghelp.py: skipped without it), a schema per test.
"""

from __future__ import annotations

import decimal
import queue
from collections.abc import Iterator

import psycopg
import pytest

from leveret.core.storage import (
    BindingDef,
    DefinitionChange,
    ExchangeDef,
    HandOver,
    PermissionDef,
    PolicyDef,
    Push,
    QueueDef,
    StoreError,
    TakeHandOver,
    UserDef,
)
from leveret.store import postgres_schema
from leveret.store.postgres import PostgresStore
from leveret.store.postgres_cluster import decode_args, encode_args, subject

from pghelp import postgres_store_url, postgres_url, submit_wait  # noqa: F401 - fixtures
from pghelp import schema_db as db
from waiting import wait_for


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("postgres_store_url"))


def schema_of(url: str) -> str:
    return url.rpartition("schema=")[2]




def push(i: int, queue_name: str = "q") -> Push:
    return Push(i, "/", queue_name, i, "", queue_name, b"h", b"body-%d" % i)


@pytest.fixture
def two(url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    a = PostgresStore(url, node="a", cluster=True, node_lease=3)
    b = PostgresStore(url, node="b", cluster=True, node_lease=3)
    a.open()
    try:
        b.open()
        try:
            yield a, b
        finally:
            b.close()
    finally:
        a.close()


def test_a_version_2_schema_is_migrated_and_ids_start_above_everything(url: str) -> None:
    """A schema as Leveret wrote it at version 2 (high-water mark in meta, messages, definitions): opened by this
    version it is at the current version, keeps its messages and definitions, and the first id block starts above
    both the old high-water mark and every stored id."""
    schema = schema_of(url)
    with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path TO {schema}")
        for statement in postgres_schema.MIGRATIONS[0] + postgres_schema.MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '2')")
        conn.execute("UPDATE meta SET value = '700' WHERE key = 'max_message_id'")  # ids up to 700 were handed out
        conn.execute("INSERT INTO vhosts (name) VALUES ('/')")
        conn.execute("INSERT INTO queues (vhost, name, durable, auto_delete, arguments) VALUES ('/', 'q', true,"
                     " false, '{}')")
        for i in (3, 650):
            conn.execute("INSERT INTO messages (id, vhost, queue, seq, exchange, routing_key, header, body) VALUES"
                         " (%s, '/', 'q', %s, '', 'q', 'h', %s)", (i, i, b"old-%d" % i))
    with PostgresStore(url) as store:
        assert [m.id for m in store.load_messages("/", "q")] == [3, 650]
        assert [q.name for q in store.load_definitions().queues] == ["q"]
        first, last = store.id_block()
        assert first == 701 and last == 700 + postgres_schema.ID_BLOCK
        second = store.id_block()
        assert second == (last + 1, last + postgres_schema.ID_BLOCK)
        submit_wait(store, [push(first), push(second[0])])  # COPY: new ids
    with db(url) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == str(postgres_schema.SCHEMA_VERSION)
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'max_message_id'").fetchone()[0] == 0
    with PostgresStore(url) as store:  # a restart takes a fresh block: ids are never reused
        assert store.id_block()[0] > second[1]
        assert sorted(m.id for m in store.load_messages("/", "q")) == [3, 650, first, second[0]]


def test_a_newer_schema_is_still_refused(url: str) -> None:
    with PostgresStore(url):
        pass
    with db(url) as conn:
        newer = postgres_schema.SCHEMA_VERSION + 1
        conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(newer),))
    with pytest.raises(StoreError, match=rf"newer Leveret \(schema {newer}, this version knows {newer - 1}\)"):
        PostgresStore(url).open()


def test_id_blocks_of_two_nodes_never_overlap(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    blocks = [a.id_block(), b.id_block(), a.id_block(), b.id_block()]
    spans = sorted(blocks)
    assert all(low <= high for low, high in spans)
    assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1)), spans


def test_one_name_once_and_one_node_alone(url: str, two: tuple[PostgresStore, PostgresStore]) -> None:
    with pytest.raises(StoreError, match="a Leveret node named 'a' already runs on the PostgreSQL store"):
        PostgresStore(url, node="a", cluster=True, lock_wait=0.2).open()
    with pytest.raises(StoreError, match="is in use by another Leveret node"):
        PostgresStore(url, node="c", lock_wait=0.2).open()  # cluster=False: refused while a cluster runs
    with PostgresStore(url, node="c", cluster=True, lock_wait=0.2):  # a third name is welcome
        pass


def test_the_node_registry(url: str, two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    nodes = wait_for(lambda: (found := a.cluster_nodes()) and len(found) == 2 and found)  # b told a it came
    assert {(n.name, n.running) for n in nodes} == {("a", True), ("b", True)}
    assert all(n.seen_at >= n.started_at > 0 and n.host for n in nodes)
    with db(url) as conn:  # a node whose heartbeat stopped 60 s ago (killed): down, its lease is 3 s
        conn.execute("INSERT INTO nodes (name, host, pid, started_at, seen_at) SELECT 'ghost', 'h', 1, t - 90, t - 60"
                     " FROM (SELECT extract(epoch FROM clock_timestamp()) AS t) now")
    wait_for(lambda: {(n.name, n.running) for n in a.cluster_nodes() or []} == {("a", True), ("b", True),
                                                                                ("ghost", False)})
    b.close()  # a clean close marks it stopped at once, whatever its heartbeat
    with db(url) as conn:
        assert conn.execute("SELECT stopped_at IS NOT NULL FROM nodes WHERE name = 'b'").fetchone()[0]
    wait_for(lambda: {(n.name, n.running) for n in a.cluster_nodes() or []} == {("a", True), ("b", False),
                                                                                ("ghost", False)})
    assert PostgresStore(url).cluster_nodes() is None  # a store of one node has no list


RECORDS = [
    ("save_vhost", ("shop",)),
    ("save_user", (UserDef("u", "hash", ("administrator", "x")),)),
    ("save_permission", (PermissionDef("u", "shop", "^$", ".*", "r"),)),
    ("save_limits", ("vhost", "shop", {"max-queues": 7})),
    ("save_policy", (PolicyDef("shop", "p", "^q", {"message-ttl": 5, "x": decimal.Decimal("1.50")}, 3, "queues"),)),
    ("save_exchange", (ExchangeDef("shop", "x", "topic", True, False, False, {"alternate-exchange": "ae"}),)),
    ("save_queue", (QueueDef("shop", "amq.gen-1", True, False, {"x-max-priority": 5, "$odd": b"\x00"}),)),
    ("save_binding", (BindingDef("shop", "x", "amq.gen-1", "queue", "k.#", {"x-match": "any"}),)),
    ("delete_binding", (BindingDef("shop", "x", "amq.gen-1", "queue", "k.#", {"x-match": "any"}),)),
    ("delete_queue", ("shop", "amq.gen-1")),
    ("delete_exchange", ("shop", "x")),
    ("delete_policy", ("shop", "p")),
    ("save_limits", ("vhost", "shop", {})),
    ("delete_permission", ("u", "shop")),
    ("delete_user", ("u",)),
    ("delete_vhost", ("shop",)),
]


def test_change_arguments_round_trip() -> None:
    for what, args in RECORDS:
        assert decode_args(encode_args(args)) == args, what
    assert subject("save_queue", RECORDS[6][1]) == subject("delete_queue", ("shop", "amq.gen-1"))
    assert subject("save_user", RECORDS[1][1]) == subject("delete_user", ("u",))
    assert subject("save_permission", RECORDS[2][1]) == subject("delete_permission", ("u", "shop"))
    assert subject("save_binding", RECORDS[7][1]) == subject("delete_binding", RECORDS[8][1])


def test_every_change_reaches_the_other_node_once_in_order(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    got: queue.Queue[list[DefinitionChange]] = queue.Queue()
    b.load_definitions()  # the version b starts from
    b.watch_definitions(got.put)
    mine: list[DefinitionChange] = []
    a.load_definitions()
    a.watch_definitions(mine.extend)
    for what, args in RECORDS:
        getattr(a, what)(*args)
    b.save_vhost("b-only")  # b's own change is not handed back to b
    seen: list[DefinitionChange] = []
    while len(seen) < len(RECORDS):
        seen.extend(got.get(timeout=10))
    assert [(c.what, c.args) for c in seen] == RECORDS
    assert {c.node for c in seen} == {"a"}
    versions = [c.version for c in seen]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert got.empty()
    # a received b's change only
    wait_for(lambda: mine)
    assert [(c.what, c.args, c.node) for c in mine] == [("save_vhost", ("b-only",), "b")]


def test_a_change_made_later_here_supersedes_the_other_nodes(two: tuple[PostgresStore, PostgresStore]) -> None:
    """Two nodes change one object at once: the store keeps the later change, and so does each node (the one that
    made the later change skips the earlier one from the other node)."""
    a, b = two
    got: queue.Queue[list[DefinitionChange]] = queue.Queue()
    b.load_definitions()
    b.watch_definitions(got.put)
    a.save_user(UserDef("guest", "from-a"))
    b.save_user(UserDef("guest", "from-b"))  # later: its version is higher
    (change,) = got.get(timeout=10)
    assert change.args == (UserDef("guest", "from-a"),)
    assert b.superseded(change)
    a.delete_user("guest")
    (later,) = got.get(timeout=10)
    assert not b.superseded(later)


def test_a_node_catches_up_on_changes_made_before_it_watched(url: str,
                                                            two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    b.load_definitions()  # b's definitions are at this version
    a.save_vhost("early")  # made between b's load and its watch: still handed over
    got: queue.Queue[list[DefinitionChange]] = queue.Queue()
    b.watch_definitions(got.put)
    assert [c.args for c in got.get(timeout=10)] == [("early",)]


def test_the_link_reconnects_and_reads_what_it_missed(url: str, two: tuple[PostgresStore, PostgresStore],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """b's link loses its connection (its session ended on the server): it reconnects by itself, LISTENs again, and
    hands over the change made while it was away; its node keeps its place in the registry."""
    a, b = two
    got: queue.Queue[list[DefinitionChange]] = queue.Queue()
    b.load_definitions()
    b.watch_definitions(got.put)
    schema = schema_of(url)
    with db(url) as conn:
        ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                             (f"leveret cluster {schema}",)).fetchall()
    assert len(ended) == 2  # both links
    a.save_vhost("while-away")
    assert [c.args for c in got.get(timeout=20)] == [("while-away",)]
    a.save_vhost("after")
    assert [c.args for c in got.get(timeout=20)] == [("after",)]
    assert {n.name for n in b.cluster_nodes() or []} >= {"a", "b"}
    assert "the cluster link reconnected to PostgreSQL" in caplog.text


def test_a_queue_is_its_first_declarers(two: tuple[PostgresStore, PostgresStore]) -> None:
    """save_queue answers with the queue's owner: the node that stored it first, whoever declares it again."""
    a, b = two
    assert a.save_queue(QueueDef("/", "q")) == "a"
    assert b.save_queue(QueueDef("/", "q", arguments={"x-max-length": 5})) == "a"
    assert b.save_queue(QueueDef("/", "r")) == "b"
    assert a.claim_queues() == {("/", "q"): "a", ("/", "r"): "b"}  # both leases are alive


def test_hand_over_rows_reach_the_owner_once(url: str, two: tuple[PostgresStore, PostgresStore]) -> None:
    """Rows a node hands over for a queue another node owns: the owner is told (its commit's NOTIFY), reads them in
    id order, and takes them in the transaction that pushes their messages; a second take of the same rows fails
    that transaction as a whole (nothing is taken twice), and a queue's deletion deletes its waiting rows."""
    a, b = two
    assert b.save_queue(QueueDef("/", "jobs", True, False, {})) == "b"
    told: queue.Queue[list[tuple[str, str]]] = queue.Queue()
    b.watch_handed(told.put)
    first, _ = a.id_block()
    submit_wait(a, [HandOver(first + i, "/", "jobs", "b", "", "jobs", b"h", b"m-%d" % i) for i in range(3)])
    assert ("/", "jobs") in told.get(timeout=10)
    rows = b.load_handed("/", "jobs", [], 2)
    assert [(r.id, r.body) for r in rows] == [(first, b"m-0"), (first + 1, b"m-1")]
    assert [r.id for r in b.load_handed("/", "jobs", [first], 10)] == [first + 1, first + 2]
    own, _ = b.id_block()
    submit_wait(b, [Push(own, "/", "jobs", 1, "", "jobs", b"h", b"m-0"), TakeHandOver([first])])
    done: list[BaseException | None] = []
    b.submit([Push(own + 1, "/", "jobs", 2, "", "jobs", b"h", b"again"), TakeHandOver([first, first + 1])],
             done.append)
    b.flush()
    assert isinstance(done[0], StoreError) and "taken by another node" in str(done[0])
    assert [m.body for m in b.load_messages("/", "jobs")] == [b"m-0"]  # the failed take pushed nothing
    assert [r.id for r in b.load_handed("/", "jobs", [], 10)] == [first + 1, first + 2]
    b.delete_queue("/", "jobs")
    assert b.load_handed("/", "jobs", [], 10) == []
