"""Several nodes on one PostgreSQL (docs/cluster.md): fencing in the store and timers across nodes, with real nodes
(``leveret serve`` child processes, ``node_lease`` 3 s) and pika.

- A node paused past its lease (SIGSTOP) whose queue another node took over and serves: once resumed, the acks it
  had received do not land (its commits are refused), it stops, and the new owner holds every message.
- A node killed (kill -9) while it holds durable delayed messages: the other node takes its lanes over and releases
  each once at its due time (one already due during the outage at once); a restart of the dead node releases
  nothing again.

Each test has a schema of its own (``postgres_store_url``, tests/support/pghelp.py: skipped without PostgreSQL).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from test_cluster import ClusterNode

from pghelp import postgres_store_url, postgres_url  # noqa: F401 - fixtures
from waiting import hold, wait_for

PERSISTENT = pika.BasicProperties(delivery_mode=2)


Node = ClusterNode  # cluster = true, a name, node_lease 3 s (test_cluster.py)


@pytest.fixture
def cluster(tmp_path: Path, postgres_store_url: str) -> Iterator[list[Node]]:  # noqa: F811 - the fixture
    nodes = [Node(tmp_path / name, postgres_store_url, name) for name in ("node-a", "node-b")]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.signal(signal.SIGCONT)
            node.kill()


def rows(server_url: str, store_url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    schema = store_url.rpartition("schema=")[2]
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f"SET search_path TO {schema}")
        return db.execute(sql).fetchall()


def get_all(ch: Any, queue: str) -> list[tuple[bytes, bool, int]]:
    """Every message basic.get finds in ``queue`` (body, redelivered, delivery tag), not acked."""
    got = []
    while (answer := ch.basic_get(queue))[0] is not None:
        got.append((answer[2], answer[0].redelivered, answer[0].delivery_tag))
    return got


class Served:
    """basic.get of every message of a queue through a node, an empty list while the node refuses (405: the queue
    is not its own yet), on a channel opened again after each refusal."""

    def __init__(self, conn: pika.BlockingConnection, queue: str) -> None:
        self.conn = conn
        self.queue = queue
        self.channel = conn.channel()

    def get(self) -> list[tuple[bytes, bool, int]]:
        if self.channel.is_closed:
            self.channel = self.conn.channel()
        try:
            return get_all(self.channel, self.queue)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 405, exc
            return []


def test_a_node_paused_past_its_lease_writes_nothing_for_the_queue_it_lost(
        cluster: list[Node], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.confirm_delivery()
    ch_a.queue_declare("work", durable=True)
    for i in range(10):
        ch_a.basic_publish("", "work", b"w-%d" % i, PERSISTENT)
    delivered = get_all(ch_a, "work")  # all 10 delivered on node-a, not acked yet
    assert [body for body, _, _ in delivered] == [b"w-%d" % i for i in range(10)]
    wait_for(lambda: rows(postgres_url, postgres_store_url,
                          "SELECT count(*) FROM messages WHERE redelivered")[0][0] == 10,
             message="the deliveries are marked in the store")

    a.signal(signal.SIGSTOP)  # node-a stalls past its lease with every message delivered
    for _, _, tag in delivered:  # the client acks them: the acks wait in node-a's socket
        ch_a.basic_ack(tag)
    wait_for(lambda: rows(postgres_url, postgres_store_url, "SELECT owner FROM queues WHERE name = 'work'")
             == [("node-b",)], timeout=30, message="node-b took the queue over")
    conn_b = b.connect()
    served = Served(conn_b, "work")
    taken = wait_for(served.get, timeout=30, message="node-b serves the queue")
    ch_b = served.channel
    assert [(body, redelivered) for body, redelivered, _ in taken] == [(b"w-%d" % i, True) for i in range(10)]

    a.signal(signal.SIGCONT)  # node-a resumes: it reads the acks and tries to commit them
    assert a.wait(30) == 1  # it stops: fenced
    assert rows(postgres_url, postgres_store_url, "SELECT count(*) FROM messages WHERE queue = 'work'") == [(10,)]
    assert "was refused and rolled back" in a.log  # it tried to write the acks: the store refused them
    for _, _, tag in taken:  # the new owner's acks are the ones that count
        ch_b.basic_ack(tag)
    wait_for(lambda: rows(postgres_url, postgres_store_url, "SELECT count(*) FROM messages") == [(0,)])
    conn_b.close()
    with contextlib.suppress(pika.exceptions.AMQPError):
        conn_a.close()


def test_a_killed_nodes_delayed_messages_are_released_once_by_the_node_that_takes_its_lanes(
        cluster: list[Node], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    a, b = cluster
    conn = a.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("later", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"})
    ch.queue_declare("soon", durable=True)  # node-a's: node-b takes it over too
    ch.queue_bind("soon", "later", "k")
    for body, delay in ((b"during-outage", 1000), (b"after-takeover", 15000)):
        ch.basic_publish("later", "k", body, pika.BasicProperties(delivery_mode=2, headers={"x-delay": delay}))
    assert rows(postgres_url, postgres_store_url, "SELECT DISTINCT queue FROM messages") == [
        ("amq.leveret.delayed.node-a\x1elater",)]
    a.kill()  # kill -9 with both waiting in its lane

    conn_b = b.connect()
    served = Served(conn_b, "soon")
    first = wait_for(served.get, timeout=30, message="the message due meanwhile")
    assert [body for body, _, _ in first] == [b"during-outage"]
    assert b.wait_for_log(r"took over 2 delayed messages of exchange 'later'")
    second = wait_for(served.get, timeout=30, message="the later message, at its time")
    assert [body for body, _, _ in second] == [b"after-takeover"]
    wait_for(lambda: rows(postgres_url, postgres_store_url, "SELECT queue, count(*) FROM messages GROUP BY queue")
             == [("soon", 2)], message="no lane message is left")  # the two, delivered and not acked

    a.start()  # node-a again: its lanes are node-b's now; it releases nothing
    hold(2.5, "a message released twice would arrive in this time (the lease's heartbeat is 1 s)")
    assert rows(postgres_url, postgres_store_url, "SELECT queue, count(*) FROM messages GROUP BY queue") == [
        ("soon", 2)]
    assert not any("recovered" in line and "delayed" in line for line in a.lines)
    assert served.get() == []
    conn_b.close()


def test_x_expires_runs_on_the_owner_only_after_a_takeover(
        cluster: list[Node], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """node-a's queue with x-expires 12 s: node-a stalls (SIGSTOP) before it expires, node-b takes it over (its
    countdown starts again there), node-a resumes after its own countdown ran out: its deletion is refused (it is
    not the owner any more), and the queue lives on node-b until node-b's own countdown ends."""
    a = cluster[0]
    conn = a.connect()
    conn.channel().queue_declare("short-lived", durable=True, arguments={"x-expires": 12000})
    declared = time.monotonic()
    conn.close()
    stopped = time.monotonic()
    a.signal(signal.SIGSTOP)
    wait_for(lambda: rows(postgres_url, postgres_store_url, "SELECT owner FROM queues WHERE name = 'short-lived'")
             == [("node-b",)], timeout=30, message="node-b took the queue over")
    hold(max(0.0, declared + 12.3 - time.monotonic()), "node-a's x-expires countdown runs out while it is stopped")
    a.signal(signal.SIGCONT)  # its timer fires at once: the deletion is fenced, and node-a stops
    assert a.wait(30) == 1
    assert "no longer holds the lease of queue 'short-lived'" in a.log  # it tried, and was refused
    # node-a's lease ran at least 2 s past the stop (renewed every second, 3 s long), so node-b took the queue over
    # and restarted its countdown no earlier than that: until stopped + 14 s only node-a can have deleted it
    if time.monotonic() < stopped + 13.5:
        assert rows(postgres_url, postgres_store_url, "SELECT owner FROM queues WHERE name = 'short-lived'") == [
            ("node-b",)]
    wait_for(lambda: rows(postgres_url, postgres_store_url, "SELECT count(*) FROM queues") == [(0,)], timeout=30,
             message="node-b, the owner, expires it")


def test_delayed_messages_reach_another_nodes_queue_and_move_when_their_node_stops(
        cluster: list[Node], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """A delayed message node-a holds, due for a queue node-b owns, is handed over at its time; one still waiting
    when node-a stops cleanly (its leases are ended) is taken over by node-b and released there, once."""
    a, b = cluster
    conn_b = b.connect()
    conn_b.channel().queue_declare("far", durable=True)  # node-b's
    conn = a.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("later", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"})
    wait_for(lambda: any(q["name"] == "far" for q in a.http.get("/api/queues")), message="node-a knows 'far'")
    ch.queue_bind("far", "later", "k")
    wait_for(lambda: any(x["destination"] == "far" for x in b.http.get("/api/bindings")))
    ch.basic_publish("later", "k", b"handed", pika.BasicProperties(delivery_mode=2, headers={"x-delay": 500}))
    served = Served(conn_b, "far")
    assert [body for body, _, _ in wait_for(served.get, message="released on node-a, handed to node-b")] == [
        b"handed"]
    ch.basic_publish("later", "k", b"moved", pika.BasicProperties(delivery_mode=2, headers={"x-delay": 4000}))
    conn.close()
    assert a.stop() == 0  # a clean stop ends its lane lease: node-b takes its lanes at its next heartbeat
    assert b.wait_for_log(r"took over 1 delayed messages of exchange 'later'", timeout=20)
    assert [body for body, _, _ in wait_for(served.get, timeout=30, message="released by node-b")] == [b"moved"]
    wait_for(lambda: rows(postgres_url, postgres_store_url, "SELECT queue, count(*) FROM messages GROUP BY queue")
             == [("far", 2)], message="no lane message left")  # both delivered, not acked
    assert rows(postgres_url, postgres_store_url, "SELECT count(*) FROM handover") == [(0,)]
    conn_b.close()


def test_a_killed_nodes_retry_waits_are_re_enqueued_once_by_the_node_that_takes_its_lanes(
        cluster: list[Node], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """A retry schedule (x-retry-intervals) waiting on node-a when it is killed: node-b takes the queue and the
    retry lane over and puts the message back into the queue at its time, once, with its retry count."""
    a, b = cluster
    conn = a.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("jobs", durable=True, arguments={"x-retry-intervals": [6000]})
    ch.basic_publish("", "jobs", b"try-again", PERSISTENT)
    method, _, body = ch.basic_get("jobs")
    assert body == b"try-again"
    ch.basic_reject(method.delivery_tag, requeue=False)  # failed: it waits 6 s in node-a's retry lane
    wait_for(lambda: rows(postgres_url, postgres_store_url, "SELECT queue FROM messages") == [
        ("amq.leveret.retry.node-a\x1ejobs",)], message="the retry is stored in node-a's lane")
    a.kill()
    conn_b = b.connect()
    served = Served(conn_b, "jobs")
    got = wait_for(served.get, timeout=40, message="the retry, put back by node-b")
    assert [body for body, _, _ in got] == [b"try-again"]
    assert b.wait_for_log(r"took over 1 delayed messages of queue 'jobs'")
    hold(1.5, "a second copy would arrive in this time")
    assert served.get() == []
    assert rows(postgres_url, postgres_store_url, "SELECT queue FROM messages") == [("jobs",)]
    conn_b.close()
