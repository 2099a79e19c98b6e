"""Every queue is visible on every node (docs/cluster.md): non-durable and exclusive queues (and transient
exchanges) are known cluster-wide, live on the node that declared them, are reached by a publish on any node, and go
when their connection or node does; RPC with a server-named exclusive reply queue or with direct reply-to works
across nodes. Real nodes (``ClusterNode`` child processes on one PostgreSQL schema, tests/integration/test_cluster.py)
and real clients (pika)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pika
import pika.exceptions
import pytest
import test_cluster
from test_cluster import ClusterNode, exists

from pghelp import postgres_store_url, postgres_url  # noqa: F401 - fixtures
from waiting import wait_for

PERSISTENT = pika.BasicProperties(delivery_mode=2)
REPLY_TO = "amq.rabbitmq.reply-to"
cluster = test_cluster.cluster  # the fixture: node-a and node-b


def passive(conn: pika.BlockingConnection, name: str) -> int:
    """What a passive declare of queue ``name`` answers on this connection: 200 (it exists), or the channel error's
    code (404 unknown, 405 another connection's exclusive queue)."""
    channel = conn.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    channel.close()
    return 200


class Server:
    """An RPC server on ``node``: consumes ``queue`` and answers each request to its reply_to with
    ``reply-<body>`` and its correlation_id, until stopped."""

    def __init__(self, node: ClusterNode, queue: str) -> None:
        self.conn = node.connect()
        self.ch = self.conn.channel()
        self.ch.queue_declare(queue, durable=True)
        self.ch.basic_consume(queue, self._on_request)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.reply_to: list[str] = []  # the reply_to of each request
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_request(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.reply_to.append(props.reply_to)
        ch.basic_publish("", props.reply_to, b"reply-" + body, pika.BasicProperties(
            correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.conn.process_data_events(time_limit=0.05)
            self.conn.close()
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert self.errors == []


def calls(conn: pika.BlockingConnection, ch: Any, reply_to: str, count: int) -> list[bytes]:
    """``count`` calls one after another (publish a request to ``rpc``, wait for its answer); the answers."""
    answers: list[tuple[str, bytes]] = []
    ch.basic_consume(reply_to, lambda c, m, p, body: answers.append((p.correlation_id, body)), auto_ack=True)
    got = []
    for i in range(count):
        correlation = str(uuid.uuid4())
        ch.basic_publish("", "rpc", b"%d" % i, pika.BasicProperties(reply_to=reply_to, correlation_id=correlation))
        wait_for(lambda: (conn.process_data_events(time_limit=0.02), answers)[1], timeout=20,
                 message=f"the answer to call {i}")
        (answered, body), = answers
        assert answered == correlation
        answers.clear()
        got.append(body)
    return got


def test_rpc_with_an_exclusive_reply_queue_across_nodes(cluster: list[ClusterNode]) -> None:
    """The RPC tutorial's client on node-a (a server-named exclusive reply queue) and its server on node-b (the
    request queue is node-b's): every call is answered, in order."""
    a, b = cluster
    server = Server(b, "rpc")
    conn = a.connect()
    ch = conn.channel()
    wait_for(lambda: exists(conn, "queue", "rpc"), message="node-a knows the request queue")
    reply_queue = ch.queue_declare("", exclusive=True).method.queue
    assert calls(conn, ch, reply_queue, 50) == [b"reply-%d" % i for i in range(50)]
    conn.close()
    server.close()


def test_rpc_with_direct_reply_to_across_nodes(cluster: list[ClusterNode], postgres_url: str,  # noqa: F811
                                               postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """The same with direct reply-to (``amq.rabbitmq.reply-to``): the reply address names node-a, node-b hands the
    answers over to it. A reply to an address whose consumer is gone is dropped on node-a (its hand-over row taken);
    a mandatory reply to an address of a node that does not run is returned (312)."""
    a, b = cluster
    server = Server(b, "rpc")
    conn = a.connect()
    ch = conn.channel()
    wait_for(lambda: exists(conn, "queue", "rpc"), message="node-a knows the request queue")
    assert calls(conn, ch, REPLY_TO, 50) == [b"reply-%d" % i for i in range(50)]
    server.close()
    (address,) = set(server.reply_to)  # node-a's address for this channel, named after node-a
    assert address.startswith(f"{REPLY_TO}.{b'node-a'.hex()}.")
    conn_b = b.connect()
    assert passive(conn_b, address) == 200  # its node runs: the address is alive on node-b too
    conn.close()

    ch_b = conn_b.channel()
    ch_b.confirm_delivery()
    ch_b.basic_publish("", address, b"too late", mandatory=True)  # node-a runs: routed, confirmed, dropped there
    wait_for(lambda: test_cluster.handover_rows(postgres_url, postgres_store_url) == 0,
             message="node-a dropped the reply to a gone consumer")
    nowhere = f"{REPLY_TO}.{b'node-z'.hex()}.abcdefgh"
    with pytest.raises(pika.exceptions.UnroutableError):
        ch_b.basic_publish("", nowhere, b"late", mandatory=True)
    conn_b.close()


def test_a_non_durable_queue_is_known_and_reached_through_every_node(cluster: list[ClusterNode]) -> None:
    """A non-durable queue declared on node-a, bound to a durable fanout and a non-durable topic exchange: node-b
    knows it (a passive declare succeeds) and a publish through node-b, by the default exchange or either binding,
    reaches it once each."""
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.exchange_declare("fan", "fanout", durable=True)
    ch_a.exchange_declare("topics", "topic", durable=False)
    ch_a.queue_declare("scratch", durable=False)
    ch_a.queue_bind("scratch", "fan")
    ch_a.queue_bind("scratch", "topics", "eu.#")
    conn_b = b.connect()
    wait_for(lambda: exists(conn_b, "queue", "scratch") and exists(conn_b, "exchange", "topics"),
             message="node-b knows node-a's non-durable queue and exchange")
    wait_for(lambda: test_cluster.bound(b, "topics", {"scratch"}) and test_cluster.bound(b, "fan", {"scratch"}),
             message="node-b knows the bindings")
    assert b.http.get("/api/queues/%2F/scratch")["node"] == "node-a"
    ch_b = conn_b.channel()
    ch_b.confirm_delivery()
    ch_b.basic_publish("", "scratch", b"default", mandatory=True)
    ch_b.basic_publish("fan", "", b"fanout", PERSISTENT, mandatory=True)
    ch_b.basic_publish("topics", "eu.fr", b"topic", mandatory=True)
    wait_for(lambda: a.http.get("/api/queues/%2F/scratch")["messages"] == 3, message="node-a took the hand-overs")
    assert [body for body, _ in test_cluster.drain(ch_a, "scratch")] == [b"default", b"fanout", b"topic"]
    try:  # getting from it through node-b: as from a durable queue of node-a (refused, naming node-a, until
        empty = conn_b.channel().basic_get("scratch")  # consuming through any node relays it: then it is empty)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 405 and "served by node 'node-a'" in exc.reply_text, exc
    else:
        assert empty[0] is None
    conn_a.close()
    conn_b.close()


def test_an_exclusive_queue_is_locked_to_its_connection_on_every_node_and_goes_with_it(
        cluster: list[ClusterNode]) -> None:
    """Another connection, on node-b, gets 405 RESOURCE_LOCKED for node-a's exclusive queue (passive declare,
    consume, get, purge, delete, bind: RabbitMQ 3.10's answers) but may publish to it; once its connection closes
    the queue is gone on node-b too."""
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    name = ch_a.queue_declare("", exclusive=True).method.queue
    conn_b = b.connect()
    wait_for(lambda: passive(conn_b, name) == 405, message="node-b knows node-a's exclusive queue")
    text = (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '/'. It could be "
            "originally declared on another connection or the exclusive property value does not match that of the "
            "original declaration.")
    for attempt in (lambda ch: ch.basic_consume(name, lambda *args: None), lambda ch: ch.basic_get(name),
                    lambda ch: ch.queue_purge(name), lambda ch: ch.queue_delete(name),
                    lambda ch: ch.queue_bind(name, "amq.fanout")):
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            attempt(conn_b.channel())
        assert (refused.value.reply_code, refused.value.reply_text) == (405, text)
    ch_b = conn_b.channel()
    ch_b.confirm_delivery()
    ch_b.basic_publish("", name, b"allowed", mandatory=True)
    wait_for(lambda: (ch_a.basic_get(name, auto_ack=True)[2] or b"") == b"allowed", message="the publish through b")
    conn_a.close()
    wait_for(lambda: passive(conn_b, name) == 404, message="the exclusive queue gone on node-b")
    conn_b.close()


def test_a_killed_nodes_transient_queues_go_and_its_durable_ones_are_taken_over(cluster: list[ClusterNode]) -> None:
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.confirm_delivery()
    ch_a.queue_declare("kept", durable=True)
    ch_a.basic_publish("", "kept", b"durable", PERSISTENT)
    ch_a.queue_declare("temp", durable=False)
    exclusive = ch_a.queue_declare("", exclusive=True).method.queue
    conn_b = b.connect()
    wait_for(lambda: exists(conn_b, "queue", "temp") and passive(conn_b, exclusive) == 405)
    a.kill()  # kill -9: once its lease (3 s) ran out its transient queues are deleted everywhere
    wait_for(lambda: not exists(conn_b, "queue", "temp"), timeout=30, message="node-a's non-durable queue gone")
    assert passive(conn_b, exclusive) == 404
    wait_for(lambda: b.http.get("/api/queues/%2F/kept")["node"] == "node-b", timeout=30,
             message="node-b took the durable queue over")
    assert [body for body, _ in test_cluster.drain(conn_b.channel(), "kept")] == [b"durable"]
    conn_b.close()


def test_transient_definitions_do_not_survive_a_restart_of_the_cluster(cluster: list[ClusterNode]) -> None:
    """Both nodes stop; node-b starts again alone: node-a's non-durable queue and the non-durable exchange are gone,
    the durable ones are there."""
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.queue_declare("temp", durable=False)
    ch_a.queue_declare("kept", durable=True)
    ch_a.exchange_declare("temp-x", "direct", durable=False)
    conn_a.close()
    conn_b = b.connect()
    wait_for(lambda: exists(conn_b, "exchange", "temp-x") and exists(conn_b, "queue", "temp"))
    conn_b.close()
    assert b.stop() == 0
    assert a.stop() == 0
    b.start()
    conn_b = b.connect()
    assert not exists(conn_b, "queue", "temp") and not exists(conn_b, "exchange", "temp-x")
    assert exists(conn_b, "queue", "kept")
    conn_b.close()
