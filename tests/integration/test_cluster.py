"""Several ``leveret serve`` nodes on one PostgreSQL schema (``cluster = true``, docs/cluster.md), as child
processes, with real clients (pika, the management API): the node registry, the refusals, shared definitions
(declared on one node, usable on the others; deletions too) and message ids that never collide.

Each test has a schema of its own (``postgres_store_url``, tests/support/pghelp.py: skipped without PostgreSQL).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from httphelp import Client
from pghelp import own_role, postgres_store_url, postgres_url  # noqa: F401 - fixtures
from serverproc import LeveretProcess
from waiting import poll, wait_for

PERSISTENT = pika.BasicProperties(delivery_mode=2)


class ClusterNode(LeveretProcess):
    """A node of the cluster: LeveretProcess with ``cluster = true``, a name, and the management API's port."""

    def __init__(self, data_dir: Path, store_url: str, name: str, **env: str) -> None:
        super().__init__(data_dir, env={"LEVERET_STORE": store_url, "LEVERET_CLUSTER": "true",
                                        "LEVERET_NODE_NAME": name, "LEVERET_NODE_LEASE": "3", **env})
        self.name = name

    @property
    def http(self) -> Client:
        ports = [int(m.group(1)) for line in list(self.lines)
                 if (m := re.search(r"management API listening on http://[^:]+:(\d+)", line))]
        return Client(ports[-1])

    def connect(self, user: str = "guest", password: str = "guest") -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", self.port, credentials=pika.PlainCredentials(user, password), connection_attempts=1))


@pytest.fixture
def cluster(tmp_path: Path, postgres_store_url: str) -> Iterator[list[ClusterNode]]:  # noqa: F811 - the fixture
    nodes = [ClusterNode(tmp_path / name, postgres_store_url, name) for name in ("node-a", "node-b")]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def exists(conn: pika.BlockingConnection, kind: str, name: str) -> bool:
    """Whether a passive declare of the queue or exchange succeeds on this connection."""
    channel = conn.channel()
    try:
        if kind == "queue":
            channel.queue_declare(name, passive=True)
        else:
            channel.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return False
    channel.close()
    return True


def _ignoring(error: type[BaseException], fn: Any) -> Any:
    try:
        return fn()
    except error:
        return None


def names(nodes: list[dict[str, Any]]) -> dict[str, bool]:
    return {node["name"]: node["running"] for node in nodes}


def test_nodes_register_see_each_other_and_one_that_stops_or_dies_is_down(
        tmp_path: Path, cluster: list[ClusterNode], postgres_store_url: str) -> None:  # noqa: F811 - fixture
    a, b = cluster
    listed = wait_for(lambda: (found := a.http.get("/api/nodes")) and names(found) == {"node-a": True,
                                                                                       "node-b": True} and found,
                      message="both nodes in node-a's /api/nodes")
    by_name = {node["name"]: node for node in listed}
    assert by_name["node-b"]["os_pid"] == str(b.proc.pid) and by_name["node-a"]["os_pid"] == str(a.proc.pid)
    for node in listed:
        assert node["host"] and node["seen_at"] >= node["started_at"] > 0
    assert "mem_used" in by_name["node-a"]  # this node's own figures as before
    assert a.http.get("/api/nodes/node-b")["running"] is True
    wait_for(lambda: names(b.http.get("/api/nodes")) == {"node-a": True, "node-b": True})

    c = ClusterNode(tmp_path / "c", postgres_store_url, "node-c").start()
    try:
        wait_for(lambda: names(a.http.get("/api/nodes")).get("node-c") is True, message="node-c registered")
        b.stop()  # a clean stop: marked stopped at once
        wait_for(lambda: names(a.http.get("/api/nodes")).get("node-b") is False, message="node-b stopped")
        c.kill()  # kill -9: down once unseen for node_lease (3 s here)
        wait_for(lambda: names(a.http.get("/api/nodes")).get("node-c") is False, timeout=30,
                 message="node-c down after its lease")
        assert names(a.http.get("/api/nodes"))["node-a"] is True
    finally:
        c.kill()


def test_same_name_and_a_node_without_cluster_are_refused(tmp_path: Path, cluster: list[ClusterNode],
                                                          postgres_store_url: str) -> None:  # noqa: F811
    env = {**os.environ, "LEVERET_HTTP_PORT": "-1", "LEVERET_STOMP_PORT": "-1", "LEVERET_STORE": postgres_store_url}

    def serve(data_dir: str, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir",
                               str(tmp_path / data_dir)], capture_output=True, text=True, env={**env, **more},
                              timeout=60)

    same = serve("same", LEVERET_CLUSTER="true", LEVERET_NODE_NAME="node-a")
    assert same.returncode == 1, same.stderr
    assert same.stderr.strip().splitlines()[-1] == (
        f"leveret: error: a Leveret node named 'node-a' already runs on the PostgreSQL store "
        f"{postgres_store_url}: give each node of a cluster a name of its own "
        "(node_name)")
    alone = serve("alone")  # cluster = false (the default): the one-node refusal, as before
    assert alone.returncode == 1, alone.stderr
    assert "is in use by another Leveret node" in alone.stderr.strip().splitlines()[-1]
    for node in cluster:
        assert node.proc is not None and node.proc.poll() is None
    conn = cluster[0].connect()  # still serving
    conn.channel().queue_declare("still-here", durable=True)
    conn.close()


def test_a_cluster_node_is_refused_while_a_node_without_cluster_runs(tmp_path: Path,
                                                                     postgres_store_url: str) -> None:  # noqa: F811
    alone = LeveretProcess(tmp_path / "alone", "--store", postgres_store_url).start()
    try:
        env = {**os.environ, "LEVERET_HTTP_PORT": "-1", "LEVERET_STOMP_PORT": "-1", "LEVERET_CLUSTER": "true",
               "LEVERET_STORE": postgres_store_url, "LEVERET_NODE_NAME": "n1"}
        refused = subprocess.run([sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir",
                                  str(tmp_path / "n1")], capture_output=True, text=True, env=env, timeout=60)
        assert refused.returncode == 1, refused.stderr
        assert "is in use by a Leveret node that does not run with cluster = true" in refused.stderr
    finally:
        alone.kill()


def test_definitions_declared_on_one_node_are_usable_on_the_other(cluster: list[ClusterNode]) -> None:
    a, b = cluster
    conn_a = a.connect()
    ch = conn_a.channel()
    ch.exchange_declare("orders", "topic", durable=True)
    ch.exchange_declare("orders.eu", "fanout", durable=True)
    ch.exchange_bind("orders.eu", "orders", "eu.#")
    ch.queue_declare("billing", durable=True, arguments={"x-max-priority": 5})
    ch.queue_bind("billing", "orders.eu")
    server_named = ch.queue_declare("", durable=True).method.queue  # amq.gen-...: kept by its name on node-b
    a.http.ok("PUT", "/api/vhosts/shop")
    a.http.ok("PUT", "/api/users/clerk", {"password": "s3cret", "tags": ""})
    a.http.ok("PUT", "/api/permissions/shop/clerk", {"configure": "^$", "write": ".*", "read": ".*"})
    a.http.ok("PUT", "/api/policies/%2F/ttl", {"pattern": "^billing$", "definition": {"message-ttl": 60000},
                                                "apply-to": "queues"})
    a.http.ok("PUT", "/api/vhost-limits/shop/max-queues", {"value": 7})

    conn_b = b.connect()
    wait_for(lambda: exists(conn_b, "queue", "billing") and exists(conn_b, "exchange", "orders.eu"),
             message="node-a's queue and exchanges on node-b")
    assert exists(conn_b, "queue", server_named)
    # node-b's own queue, bound on node-a: the bindings route on node-b (orders -(eu.#)-> orders.eu -> shipping)
    ch_b = conn_b.channel()
    ch_b.queue_declare("shipping", durable=True)
    wait_for(lambda: exists(conn_a, "queue", "shipping"), message="node-b's queue on node-a")
    ch.queue_unbind("billing", "orders.eu")  # billing is node-a's: a publish on node-b may not reach it (first:
    ch.queue_bind("shipping", "orders.eu")  # node-b applies the changes in this order)
    ch_b.confirm_delivery()

    def routed() -> bytes | None:
        ch_b.basic_publish("orders", "eu.fr", b"order-1", PERSISTENT, mandatory=True)  # returned until bound
        return ch_b.basic_get("shipping", auto_ack=True)[2]

    got = wait_for(lambda: _ignoring(pika.exceptions.UnroutableError, routed), message="the routed message")
    assert got == b"order-1"
    wait_for(lambda: b.http.request("GET", "/api/policies/%2F/ttl")[0] == 200)
    assert b.http.get("/api/queues/%2F/billing")["effective_policy_definition"] == {"message-ttl": 60000}
    assert b.http.get("/api/vhost-limits/shop") == [{"vhost": "shop", "value": {"max-queues": 7}}]
    wait_for(lambda: b.http.request("GET", "/api/permissions/shop/clerk")[0] == 200)
    login = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", b.port, "shop", pika.PlainCredentials("clerk", "s3cret"), connection_attempts=1))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:  # configure "^$" came along
        login.channel().queue_declare("mine")
    assert refused.value.reply_code == 403
    login.close()
    conn_a.close()
    conn_b.close()


def test_deletions_propagate_and_cancel_the_other_nodes_consumers(cluster: list[ClusterNode]) -> None:
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.exchange_declare("events", "direct", durable=True)
    conn_b = b.connect()
    conn_b.channel().queue_declare("audit", durable=True)  # node-b's queue: its consumers are on node-b
    wait_for(lambda: exists(conn_a, "queue", "audit"))
    ch_a.queue_bind("audit", "events", "login")
    a.http.ok("PUT", "/api/users/temp", {"password": "pw", "tags": ""})
    a.http.ok("PUT", "/api/permissions/%2F/temp", {"configure": ".*", "write": ".*", "read": ".*"})
    a.http.ok("PUT", "/api/policies/%2F/lazy", {"pattern": "^audit$", "definition": {"max-length": 10}})

    wait_for(lambda: b.http.request("GET", "/api/permissions/%2F/temp")[0] == 200)
    wait_for(lambda: b.http.request("GET", "/api/policies/%2F/lazy")[0] == 200)
    ch_b = conn_b.channel()
    # the binding came along: a mandatory publish on node-b is routed, not returned
    ch_b.confirm_delivery()
    wait_for(lambda: _ignoring(pika.exceptions.UnroutableError,  # routed once node-b has the binding
                               lambda: ch_b.basic_publish("events", "login", b"first", mandatory=True) or True))

    cancelled: list[Any] = []
    ch_b.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch_b.basic_consume("audit", lambda *args: None)
    temp = b.connect("temp", "pw")
    closed: list[Any] = []

    ch_a.queue_unbind("audit", "events", "login")
    with pytest.raises(pika.exceptions.UnroutableError):  # the unbinding came along: returned now
        wait_for(lambda: ch_b.basic_publish("events", "login", b"second", mandatory=True) and False, timeout=10)
    ch_a.queue_delete("audit")
    ch_a.exchange_delete("events")
    a.http.ok("DELETE", "/api/policies/%2F/lazy")
    a.http.ok("DELETE", "/api/users/temp")

    wait_for(lambda: (conn_b.process_data_events(time_limit=0.05), cancelled)[1], message="basic.cancel on node-b")
    assert cancelled == [tag]
    wait_for(lambda: not exists(conn_b, "queue", "audit") and not exists(conn_b, "exchange", "events"))
    wait_for(lambda: b.http.request("GET", "/api/policies/%2F/lazy")[0] == 404)
    wait_for(lambda: b.http.request("GET", "/api/users/temp")[0] == 404)

    def temp_closed() -> bool:  # a deleted user's connections are closed (320), as on the node that deleted it
        try:
            temp.process_data_events(time_limit=0.05)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            closed.append(exc.reply_code)
        return bool(closed)

    wait_for(temp_closed, message="temp's connection to node-b closed")
    assert closed == [320]
    conn_a.close()
    conn_b.close()


def test_a_vhost_deleted_on_one_node_closes_its_connections_on_the_other(cluster: list[ClusterNode]) -> None:
    a, b = cluster
    a.http.ok("PUT", "/api/vhosts/tmp")
    a.http.ok("PUT", "/api/permissions/tmp/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    a.http.ok("PUT", "/api/users/limited", {"password": "pw", "tags": ""})
    a.http.ok("PUT", "/api/user-limits/limited/max-connections", {"value": 3})
    wait_for(lambda: b.http.request("GET", "/api/permissions/tmp/guest")[0] == 200)
    wait_for(lambda: b.http.request("GET", "/api/user-limits/limited")[1] == [
        {"user": "limited", "value": {"max-connections": 3}}])
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port, "tmp", connection_attempts=1))
    a.http.ok("DELETE", "/api/vhosts/tmp")
    closed: list[int] = []

    def gone() -> bool:
        try:
            conn.process_data_events(time_limit=0.05)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            closed.append(exc.reply_code)
        return bool(closed)

    wait_for(gone, message="the connection to the deleted vhost on node-b closed")
    assert closed == [320]
    assert b.http.request("GET", "/api/vhosts/tmp")[0] == 404


def test_message_ids_never_collide_and_every_message_recovers_once(cluster: list[ClusterNode],
                                                                   postgres_url: str,  # noqa: F811 - fixture
                                                                   postgres_store_url: str) -> None:  # noqa: F811
    """Two nodes publish persistent messages with confirms into their own queues at the same time: every publish
    is confirmed (ids from each node's own blocks of the sequence; with one high-water mark per node the two
    would write the same ids and their commits would fail). After both restart, each queue holds exactly what was
    published to it."""
    import psycopg

    count = 400
    errors: list[BaseException] = []

    def publish(node: ClusterNode, queue: str) -> None:
        try:
            conn = node.connect()
            ch = conn.channel()
            ch.queue_declare(queue, durable=True)
            ch.confirm_delivery()  # a nack raises NackError
            for i in range(count):
                ch.basic_publish("", queue, f"{queue}-{i}".encode(), PERSISTENT)
            conn.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(node, f"q-{node.name}")) for node in cluster]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []

    schema = postgres_store_url.rpartition("schema=")[2]
    with psycopg.connect(postgres_url, autocommit=True) as db:
        rows = db.execute(f"SELECT queue, id FROM {schema}.messages").fetchall()
    assert len(rows) == 2 * count and len({i for _, i in rows}) == 2 * count
    ranges = {queue: (min(i for q, i in rows if q == queue), max(i for q, i in rows if q == queue))
              for queue in ("q-node-a", "q-node-b")}
    (low_a, high_a), (low_b, high_b) = ranges.values()
    assert high_a < low_b or high_b < low_a, ranges  # two blocks

    for node in cluster:
        node.stop()
    for node in cluster:
        node.start()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        owners = dict(db.execute(f"SELECT name, owner FROM {schema}.queues").fetchall())
    by_name = {node.name: node for node in cluster}
    for queue in ("q-node-a", "q-node-b"):  # each queue is served by one node (the first to start took both)
        owner = by_name[owners[queue]]
        other = next(node for node in cluster if node is not owner)
        conn = other.connect()  # a get through the other node is relayed to the owner (test_cluster_consume.py)
        first = conn.channel().basic_get(queue, auto_ack=True)
        assert first[2] == f"{queue}-0".encode() and first[0].message_count == count - 1
        conn.close()
        conn = owner.connect()
        ch = conn.channel()
        got = [first[2].decode()]
        while (answer := ch.basic_get(queue, auto_ack=True))[0] is not None:
            got.append(answer[2].decode())
        assert got == [f"{queue}-{i}" for i in range(count)]
        conn.close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        left = poll(lambda: db.execute(f"SELECT count(*) FROM {schema}.messages").fetchone()[0], lambda n: n == 0)
    assert left == 0


# --- queue ownership ----------------------------------------------------------------------------------------------


def test_a_queue_is_served_by_its_owner_only(cluster: list[ClusterNode]) -> None:
    """A durable queue is its declaring node's: another node knows it (a passive declare succeeds) but never
    delivers its messages itself: a get through it is relayed to the owner (test_cluster_consume.py: consume and
    purge too); a publish to it is confirmed and handed over to the owner through the store. So no message is ever
    delivered by two nodes."""
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.confirm_delivery()
    ch_a.queue_declare("jobs", durable=True)
    for i in range(3):
        ch_a.basic_publish("", "jobs", b"job-%d" % i, PERSISTENT)

    conn_b = b.connect()
    wait_for(lambda: exists(conn_b, "queue", "jobs"))
    address = f"127.0.0.1:{a.port}"  # where node-a listens, as the nodes table says (it tells clients)
    wait_for(lambda: {n["name"]: n.get("amqp") for n in b.http.get("/api/nodes")}.get("node-a") == address)
    relayed = conn_b.channel().basic_get("jobs", auto_ack=True)  # node-a's first message, through node-b
    assert relayed[2] == b"job-0" and relayed[0].message_count == 2
    ch_b = conn_b.channel()
    ch_b.confirm_delivery()
    ch_b.basic_publish("", "jobs", b"from-b", PERSISTENT)  # confirmed: handed over to node-a
    assert b.http.get("/api/queues/%2F/jobs")["node"] == "node-a"  # node-a serves it (node-b shows its counts)
    assert a.http.get("/api/queues/%2F/jobs")["node"] == "node-a"

    wait_for(lambda: a.http.get("/api/queues/%2F/jobs")["messages"] == 3, message="node-a took the hand-over")
    got = [ch_a.basic_get("jobs", auto_ack=True)[2] for _ in range(4)]
    assert got == [b"job-1", b"job-2", b"from-b", None]
    conn_a.close()
    conn_b.close()


def test_a_killed_nodes_queues_are_taken_over_with_its_unacked_messages_redelivered(
        cluster: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    import psycopg

    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.confirm_delivery()
    ch_a.queue_declare("work", durable=True)
    for i in range(10):
        ch_a.basic_publish("", "work", b"w-%d" % i, PERSISTENT)
    ch_a.basic_qos(prefetch_count=4)
    delivered: list[bytes] = []
    ch_a.basic_consume("work", lambda ch, method, props, body: delivered.append(body))  # never acked
    wait_for(lambda: (conn_a.process_data_events(time_limit=0.05), len(delivered) == 4)[1])
    schema = postgres_store_url.rpartition("schema=")[2]
    with psycopg.connect(postgres_url, autocommit=True) as db:  # the deliveries are marked in the store
        wait_for(lambda: db.execute(f"SELECT count(*) FROM {schema}.messages WHERE redelivered").fetchone()[0] == 4)

    a.kill()  # kill -9: its lease (3 s) runs out, node-b takes the queue over
    conn_b = b.connect()

    wait_for(lambda: b.http.get("/api/queues/%2F/work")["messages"] == 10, timeout=30,
             message="node-b took the queue over")
    ch_b = conn_b.channel()
    got = []
    while (answer := ch_b.basic_get("work", auto_ack=True))[0] is not None:
        got.append((answer[2], answer[0].redelivered))
    assert got == [(b"w-%d" % i, i < 4) for i in range(10)]
    assert names(b.http.get("/api/nodes"))["node-a"] is False
    conn_b.close()


def test_a_node_that_stops_hands_its_queues_over(cluster: list[ClusterNode]) -> None:
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.confirm_delivery()
    ch_a.queue_declare("handover", durable=True)
    for i in range(5):
        ch_a.basic_publish("", "handover", b"h-%d" % i, PERSISTENT)
    conn_a.close()
    assert a.stop() == 0  # a clean stop ends its leases at once
    conn_b = b.connect()

    def get() -> Any:
        try:
            return conn_b.channel().basic_get("handover", auto_ack=True)
        except pika.exceptions.ChannelClosedByBroker:
            return None

    first = wait_for(lambda: (answer := get()) and answer[0] is not None and answer, timeout=20)
    assert first[2] == b"h-0" and not first[0].redelivered
    ch_b = conn_b.channel()
    rest = [ch_b.basic_get("handover", auto_ack=True)[2] for _ in range(5)]
    assert rest == [b"h-1", b"h-2", b"h-3", b"h-4", None]
    conn_b.close()


def test_a_node_cut_off_from_the_database_stops_serving_before_another_takes_over(
        tmp_path: Path, postgres_url: str, own_role: tuple[str, str]) -> None:  # noqa: F811 - the fixture
    """Fencing: node-a loses the database (its role locked out, its sessions ended) while a client consumes from
    its queue. Before its lease can run out it closes its clients' connections and exits with one line; then
    node-b takes the queue over and delivers the unacked message again, marked redelivered."""
    import psycopg

    role, url = own_role
    a = ClusterNode(tmp_path / "a", url, "node-a").start()
    shared = url.replace(f"://{role}:pw-secret@", "://leveret@", 1)  # node-b keeps its access to the database
    b = ClusterNode(tmp_path / "b", shared, "node-b")
    try:
        b.start()
        conn_a = a.connect()
        ch_a = conn_a.channel()
        ch_a.confirm_delivery()
        ch_a.queue_declare("fenced", durable=True)
        ch_a.basic_publish("", "fenced", b"only", PERSISTENT)
        body = ch_a.basic_get("fenced")[2]  # delivered, not acked
        assert body == b"only"
        with psycopg.connect(postgres_url, autocommit=True) as db:
            wait_for(lambda: db.execute(f"SELECT redelivered FROM s_{role}.messages").fetchall() == [(True,)])
            db.execute(f"ALTER ROLE {role} NOLOGIN")
            db.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        closed: list[int] = []

        def cut() -> bool:
            try:
                conn_a.process_data_events(time_limit=0.05)
            except pika.exceptions.ConnectionClosedByBroker as exc:
                closed.append(exc.reply_code)
            except pika.exceptions.AMQPConnectionError:
                closed.append(0)
            return bool(closed)

        wait_for(cut, timeout=30, message="node-a closed its client")
        assert closed == [320]
        assert a.wait(30) == 1
        assert "could not renew its queue leases" in a.log
        assert a.log.strip().splitlines()[-1].startswith("leveret: error: node node-a stopped: it could not renew")
        conn_b = b.connect()
        got = wait_for(lambda: (answer := _ignoring(pika.exceptions.ChannelClosedByBroker, lambda: conn_b.channel(
        ).basic_get("fenced", auto_ack=True))) and answer[0] is not None and answer, timeout=30)
        assert got[2] == b"only" and got[0].redelivered
        conn_b.close()
    finally:
        a.kill()
        b.kill()


def test_delayed_messages_are_held_and_recovered_by_the_node_that_took_them(
        cluster: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """A delayed message waits in a lane of the node that took it (its name is in the lane's store name): after a
    restart of both nodes only that node recovers it, and it is delivered once when due."""
    import psycopg

    a, b = cluster
    conn = a.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("later", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"})
    ch.queue_declare("soon", durable=True)
    ch.queue_bind("soon", "later", "k")
    ch.basic_publish("later", "k", b"delayed", pika.BasicProperties(delivery_mode=2, headers={"x-delay": 4000}))
    conn.close()
    schema = postgres_store_url.rpartition("schema=")[2]
    with psycopg.connect(postgres_url, autocommit=True) as db:
        lanes = db.execute(f"SELECT queue FROM {schema}.messages").fetchall()
    assert lanes == [("amq.leveret.delayed.node-a\x1elater",)]

    for node in cluster:
        node.stop()
    for node in cluster:  # node-a first: it takes the queue "soon" back
        node.start()
    assert a.wait_for_log(r"recovered 1 delayed messages of exchange 'later'")
    assert not any("recovered 1 delayed" in line for line in b.lines)
    conn = a.connect()
    ch = conn.channel()
    got = wait_for(lambda: ch.basic_get("soon", auto_ack=True)[2], timeout=30, message="the delayed message")
    assert got == b"delayed"
    assert ch.basic_get("soon", auto_ack=True)[2] is None
    conn.close()


# --- routing between nodes: publishes through any node (docs/cluster.md) -------------------------------------------


def bound(node: ClusterNode, source: str, destinations: set[str]) -> bool:
    """Whether ``node`` routes from ``source`` to each of ``destinations`` (the bindings are shared definitions)."""
    known = {b["destination"] for b in node.http.get("/api/bindings") if b["source"] == source}
    return destinations <= known


def drain(ch: Any, queue: str) -> list[tuple[bytes, bool]]:
    """Every message basic.get finds in ``queue`` (body, redelivered), acked."""
    got = []
    while (answer := ch.basic_get(queue, auto_ack=True))[0] is not None:
        got.append((answer[2], answer[0].redelivered))
    return got


def handover_rows(server_url: str, store_url: str) -> int:
    """How many hand-over rows wait in the store's schema."""
    import psycopg

    schema = store_url.rpartition("schema=")[2]
    with psycopg.connect(server_url, autocommit=True) as db:
        return int(db.execute(f"SELECT count(*) FROM {schema}.handover").fetchone()[0])


def test_publishes_through_any_node_reach_the_owner_in_order_per_publisher(
        cluster: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """Three publishers with confirms, two on node-b and one on node-a, interleaved, persistent and transient, to a
    queue node-a owns; a consumer on node-a gets every message once, each publisher's in its order, and the
    hand-over rows are all taken. Mandatory and unroutable publishes through node-b behave as on one node."""
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.queue_declare("orders", durable=True)
    conn_b = b.connect()
    wait_for(lambda: exists(conn_b, "queue", "orders"))
    publishers = [("a1", conn_a.channel()), ("b1", conn_b.channel()), ("b2", conn_b.channel())]
    for _, ch in publishers:
        ch.confirm_delivery()
    count = 60
    for i in range(count):
        for name, ch in publishers:
            props = PERSISTENT if i % 3 else pika.BasicProperties(delivery_mode=1)
            ch.basic_publish("", "orders", f"{name}-{i}".encode(), props, mandatory=True)  # routed: not returned
    with pytest.raises(pika.exceptions.UnroutableError):  # unroutable and mandatory: returned, as on one node
        publishers[1][1].basic_publish("", "nowhere", b"x", PERSISTENT, mandatory=True)

    got: list[str] = []
    consumer = conn_a.channel()
    consumer.basic_qos(prefetch_count=50)

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        got.append(body.decode())
        ch.basic_ack(method.delivery_tag)

    consumer.basic_consume("orders", on_message)
    wait_for(lambda: (conn_a.process_data_events(time_limit=0.05), len(got) >= 3 * count)[1], timeout=30,
             message=f"every message delivered on node-a (got {len(got)})")
    assert sorted(got) == sorted(f"{name}-{i}" for name, _ in publishers for i in range(count))  # each once
    for name, _ in publishers:
        assert [m for m in got if m.startswith(name + "-")] == [f"{name}-{i}" for i in range(count)]
    wait_for(lambda: handover_rows(postgres_url, postgres_store_url) == 0,
             message="the rows taken (their commit follows the delivery)")
    conn_a.close()
    conn_b.close()


def test_a_fanout_to_queues_of_two_owners_reaches_each_once(cluster: list[ClusterNode]) -> None:
    """A fanout exchange bound to a queue of node-a and one of node-b: what is published with confirms through
    either node is in both queues once, each publisher's messages in order."""
    a, b = cluster
    conn_a, conn_b = a.connect(), b.connect()
    ch_a, ch_b = conn_a.channel(), conn_b.channel()
    ch_a.exchange_declare("news", "fanout", durable=True)
    ch_a.queue_declare("news-a", durable=True)
    ch_b.queue_declare("news-b", durable=True)
    wait_for(lambda: exists(conn_a, "queue", "news-b") and exists(conn_b, "exchange", "news"))
    ch_a.queue_bind("news-a", "news")
    ch_a.queue_bind("news-b", "news")
    wait_for(lambda: bound(b, "news", {"news-a", "news-b"}), message="node-b knows both bindings")
    ch_a.confirm_delivery()
    ch_b.confirm_delivery()
    for i in range(30):
        ch_a.basic_publish("news", "", b"a-%d" % i, PERSISTENT)
        ch_b.basic_publish("news", "", b"b-%d" % i, PERSISTENT)
    expected = sorted([b"a-%d" % i for i in range(30)] + [b"b-%d" % i for i in range(30)])
    for node, conn, queue in ((a, conn_a, "news-a"), (b, conn_b, "news-b")):
        wait_for(lambda node=node, queue=queue: node.http.get(f"/api/queues/%2F/{queue}")["messages"] == 60,
                 timeout=20, message=f"{queue} holds every message")
        got = [body for body, _ in drain(conn.channel(), queue)]
        assert sorted(got) == expected
        for prefix in (b"a-", b"b-"):
            assert [m for m in got if m.startswith(prefix)] == [prefix + b"%d" % i for i in range(30)]
    conn_a.close()
    conn_b.close()


def test_no_confirmed_message_is_lost_when_the_publishing_node_is_killed(
        cluster: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """node-b publishes with confirms through a fanout to a queue of node-a and one of its own, and is killed -9
    right after its last confirm: node-a has every confirmed message in its queue once, and, once it took node-b's
    queue over, every one in that queue once too."""
    a, b = cluster
    conn_a, conn_b = a.connect(), b.connect()
    ch_a, ch_b = conn_a.channel(), conn_b.channel()
    ch_b.exchange_declare("fan", "fanout", durable=True)
    ch_a.queue_declare("fan-a", durable=True)
    ch_b.queue_declare("fan-b", durable=True)
    wait_for(lambda: exists(conn_b, "queue", "fan-a"))
    ch_b.queue_bind("fan-a", "fan")
    ch_b.queue_bind("fan-b", "fan")
    ch_b.confirm_delivery()
    count = 200
    for i in range(count):
        ch_b.basic_publish("fan", "", b"m-%d" % i, PERSISTENT)
    b.kill()  # kill -9 right after the last confirm

    expected = [(b"m-%d" % i, False) for i in range(count)]
    wait_for(lambda: a.http.get("/api/queues/%2F/fan-a")["messages"] == count, timeout=20,
             message="node-a took every hand-over row")
    assert drain(ch_a, "fan-a") == expected
    wait_for(lambda: a.http.get("/api/queues/%2F/fan-b")["node"] == "node-a", timeout=30,
             message="node-a took node-b's queue over")
    assert drain(ch_a, "fan-b") == expected
    wait_for(lambda: handover_rows(postgres_url, postgres_store_url) == 0,
             message="the rows taken (their commit follows the delivery)")
    conn_a.close()


def test_rows_handed_to_a_dead_owner_go_to_the_node_that_takes_its_queue_over(
        cluster: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """node-a owns the queue and is killed -9; node-b, which still sees node-a as the owner, confirms publishes to
    it by writing hand-over rows nobody takes yet; once node-b took the queue over (the lease ran out) it serves
    node-a's stored messages, then the handed-over ones, each once, in order."""
    a, b = cluster
    conn_a, conn_b = a.connect(), b.connect()
    ch_a, ch_b = conn_a.channel(), conn_b.channel()
    ch_a.confirm_delivery()
    ch_a.queue_declare("tasks", durable=True)
    for i in range(5):
        ch_a.basic_publish("", "tasks", b"before-%d" % i, PERSISTENT)
    wait_for(lambda: exists(conn_b, "queue", "tasks"))
    a.kill()
    ch_b.confirm_delivery()
    for i in range(50):
        ch_b.basic_publish("", "tasks", b"after-%d" % i, PERSISTENT)
    waiting = handover_rows(postgres_url, postgres_store_url)
    assert waiting > 0 or b.http.get("/api/queues/%2F/tasks")["node"] == "node-b"  # nobody took them, or node-b

    wait_for(lambda: b.http.get("/api/queues/%2F/tasks")["messages"] == 55, timeout=30,
             message="node-b took the queue and its hand-over rows")
    got = drain(conn_b.channel(), "tasks")
    assert got == [(b"before-%d" % i, False) for i in range(5)] + [(b"after-%d" % i, False) for i in range(50)]
    wait_for(lambda: handover_rows(postgres_url, postgres_store_url) == 0,
             message="the rows taken (their commit follows the delivery)")
    conn_b.close()


def test_a_message_dead_lettered_to_a_queue_of_another_node_is_handed_over(cluster: list[ClusterNode]) -> None:
    """Dead-lettering goes through the same routing: a message rejected on node-a whose dead-letter queue node-b
    owns reaches node-b's queue once."""
    a, b = cluster
    conn_a, conn_b = a.connect(), b.connect()
    ch_a, ch_b = conn_a.channel(), conn_b.channel()
    ch_b.queue_declare("dead", durable=True)
    wait_for(lambda: exists(conn_a, "queue", "dead"))
    ch_a.queue_declare("live", durable=True, arguments={"x-dead-letter-exchange": "",
                                                        "x-dead-letter-routing-key": "dead"})
    ch_a.confirm_delivery()
    ch_a.basic_publish("", "live", b"bad", PERSISTENT)
    method, _, body = ch_a.basic_get("live")
    assert body == b"bad"
    ch_a.basic_reject(method.delivery_tag, requeue=False)
    wait_for(lambda: b.http.get("/api/queues/%2F/dead")["messages"] == 1, message="dead-lettered to node-b")
    assert [body for body, _ in drain(ch_b, "dead")] == [b"bad"]
    conn_a.close()
    conn_b.close()


def test_killing_the_owner_while_it_takes_hand_over_rows_loses_and_duplicates_nothing(
        cluster: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """node-b publishes with confirms, without pause, to a queue of node-a, which takes the rows as they come; node-a
    is killed -9 in the middle, node-b goes on publishing (rows wait), then takes the queue over: every confirmed
    message is there exactly once, in publish order."""
    a, b = cluster
    conn_a = a.connect()
    conn_a.channel().queue_declare("stream", durable=True)
    conn_b = b.connect()
    wait_for(lambda: exists(conn_b, "queue", "stream"))
    total = 600
    confirmed: list[int] = []

    def publish() -> None:
        conn = b.connect()
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(total):
            ch.basic_publish("", "stream", b"s-%d" % i, PERSISTENT)
            confirmed.append(i)
        conn.close()

    publisher = threading.Thread(target=publish)
    publisher.start()
    wait_for(lambda: len(confirmed) >= total // 2, timeout=30, message="half published")
    a.kill()  # while it takes rows: some are in its queue (stored), the rest wait
    publisher.join(60)
    assert len(confirmed) == total

    wait_for(lambda: b.http.get("/api/queues/%2F/stream")["messages"] == total, timeout=30,
             message="node-b took the queue over with every message")
    got = drain(conn_b.channel(), "stream")
    assert [body for body, _ in got] == [b"s-%d" % i for i in range(total)]
    wait_for(lambda: handover_rows(postgres_url, postgres_store_url) == 0,
             message="the rows taken (their commit follows the delivery)")
    conn_b.close()


def test_a_transaction_through_another_node_is_handed_over_at_commit(cluster: list[ClusterNode]) -> None:
    """tx.select on node-b, publishes to a queue of node-a: nothing reaches node-a before tx.commit, everything
    after (tx.commit-ok follows the commit that wrote the hand-over rows)."""
    a, b = cluster
    conn_a, conn_b = a.connect(), b.connect()
    conn_a.channel().queue_declare("ledger", durable=True)
    wait_for(lambda: exists(conn_b, "queue", "ledger"))
    ch_b = conn_b.channel()
    ch_b.tx_select()
    for i in range(3):
        ch_b.basic_publish("", "ledger", b"t-%d" % i, PERSISTENT)
    ch_b.basic_qos(prefetch_count=1)  # a round trip: node-b has read the publishes, held until the commit
    assert a.http.get("/api/queues/%2F/ledger")["messages"] == 0
    ch_b.tx_commit()
    wait_for(lambda: a.http.get("/api/queues/%2F/ledger")["messages"] == 3, message="the committed publishes")
    assert [body for body, _ in drain(conn_a.channel(), "ledger")] == [b"t-0", b"t-1", b"t-2"]
    conn_a.close()
    conn_b.close()


def test_the_management_api_of_any_node_shows_the_whole_cluster(cluster: list[ClusterNode]) -> None:
    """Each node publishes what it serves with its heartbeat: node-b's API shows node-a's queue with node-a's
    counts (marked with its node), both nodes' connections, and the cluster's totals in /api/overview."""
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.confirm_delivery()
    ch_a.queue_declare("view-jobs", durable=True)
    for i in range(5):
        ch_a.basic_publish("", "view-jobs", b"job-%d" % i, PERSISTENT)
    ch_a.queue_declare("view-local", durable=False)  # node-a's own: node-b does not know it
    ch_a.basic_publish("", "view-local", b"x")
    consumer = conn_a.channel()
    consumer.basic_qos(prefetch_count=2)
    consumer.basic_consume("view-jobs", lambda *args: None)  # 2 unacked, 3 ready
    conn_b = b.connect()

    def queue_on_b() -> dict[str, Any] | None:
        conn_a.process_data_events(0)
        shown = b.http.get("/api/queues/%2F/view-jobs")
        figures = {k: shown.get(k) for k in ("node", "messages", "messages_ready", "messages_unacknowledged",
                                             "consumers")}
        wanted = {"node": "node-a", "messages": 5, "messages_ready": 3, "messages_unacknowledged": 2,
                  "consumers": 1}
        return shown if figures == wanted else None

    wait_for(queue_on_b, message="node-b shows node-a's counts of its queue")
    listed = {(q["name"], q["node"]): q for q in b.http.get("/api/queues")}
    assert listed[("view-jobs", "node-a")]["messages"] == 5
    assert listed[("view-local", "node-a")]["messages"] == 1 and not listed[("view-local", "node-a")]["durable"]
    assert b.http.get("/api/queues/%2F/view-local")["node"] == "node-a"
    assert a.http.get("/api/queues/%2F/view-jobs")["messages_unacknowledged"] == 2  # the owner's own view

    def connections_on_b() -> dict[str, str] | None:
        shown = {c["name"]: c["node"] for c in b.http.get("/api/connections")}
        return shown if sorted(shown.values()) == ["node-a", "node-b"] else None

    shown = wait_for(connections_on_b, message="node-b lists the connections of both nodes")
    remote = next(name for name, node in shown.items() if node == "node-a")
    quoted = urllib.parse.quote(remote, safe="")
    assert b.http.get(f"/api/connections/{quoted}")["node"] == "node-a"
    assert b.http.request("DELETE", f"/api/connections/{quoted}")[0] == 405  # not relayed: close it on node-a
    assert conn_a.is_open

    def overview_on_b() -> dict[str, Any] | None:
        shown = b.http.get("/api/overview")
        totals, queue_totals = shown["object_totals"], shown["queue_totals"]
        good = (totals["connections"] == 2 and totals["consumers"] == 1 and totals["queues"] == 2
                and queue_totals["messages"] == 6 and queue_totals["messages_unacknowledged"] == 2)
        return shown if good else None

    wait_for(overview_on_b, message="node-b's overview counts the whole cluster")
    conn_a.close()
    conn_b.close()
