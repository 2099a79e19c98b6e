"""Consuming through any node (docs/cluster.md): a consume, get or purge on a node that does not own the queue is
relayed to the owner over an internal AMQP link (leveret/server/relay.py). Real nodes (``ClusterNode`` child
processes on one PostgreSQL schema, tests/integration/test_cluster.py) and real clients (pika)."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import test_cluster
from test_cluster import ClusterNode, exists

from pghelp import postgres_store_url, postgres_url  # noqa: F401 - fixtures
from serverproc import LeveretProcess
from waiting import hold, wait_for

PERSISTENT = pika.BasicProperties(delivery_mode=2)
cluster = test_cluster.cluster  # the fixture: node-a and node-b


def queue_of(owner: ClusterNode, other: ClusterNode, name: str, count: int, prefix: str = "m") -> None:
    """Declare ``name`` on ``owner`` (it owns it), publish ``count`` persistent messages there with confirms, and
    wait until ``other`` knows the queue and where the owner listens."""
    conn = owner.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(name, durable=True)
    for i in range(count):
        ch.basic_publish("", name, f"{prefix}-{i}".encode(), pika.BasicProperties(
            delivery_mode=2, headers={"n": i}, message_id=f"id-{i}", content_type="text/plain"))
    conn.close()
    conn = other.connect()
    wait_for(lambda: exists(conn, "queue", name), message=f"{other.name} knows {name}")
    conn.close()
    wait_for(lambda: {n["name"]: n.get("amqp") for n in other.http.get("/api/nodes")}.get(owner.name),
             message=f"{other.name} knows where {owner.name} listens")


class Collector:
    """A pika consumer callback that records (delivery tag, redelivered, body) and, with ``ack``, acks each."""

    def __init__(self, ack: bool = False) -> None:
        self.got: list[tuple[int, bool, bytes]] = []
        self.props: list[Any] = []
        self.ack = ack

    def __call__(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.got.append((method.delivery_tag, method.redelivered, body))
        self.props.append(props)
        if self.ack:
            ch.basic_ack(method.delivery_tag)

    @property
    def bodies(self) -> list[bytes]:
        return [body for _, _, body in self.got]


def pump(conns: list[pika.BlockingConnection], until: Any, message: str, timeout: float = 20) -> Any:
    """Run the connections' I/O until ``until()`` is true."""
    def step() -> Any:
        for conn in conns:
            conn.process_data_events(time_limit=0.02)
        return until()

    return wait_for(step, timeout=timeout, message=message)


def owner_figures(node: ClusterNode, queue: str) -> tuple[int, int]:
    shown = node.http.get(f"/api/queues/%2F/{queue}")
    return shown["messages_ready"], shown["messages_unacknowledged"]


def test_published_on_the_owner_consumed_through_another_node_once_in_order(cluster: list[ClusterNode]) -> None:
    """node-a owns the queue; a consumer on node-b gets every message once, in order, with its properties, its own
    channel's delivery tags (shared with a local consumer on the same channel), and its acks reach node-a."""
    a, b = cluster
    queue_of(a, b, "jobs", 50)
    conn = b.connect()
    ch = conn.channel()
    ch.queue_declare("local-b", durable=True)  # node-b's own queue, consumed on the same channel
    ch.basic_publish("", "local-b", b"local", PERSISTENT)
    ch.basic_qos(prefetch_count=10)
    relayed, local = Collector(ack=True), Collector(ack=True)
    ch.basic_consume("local-b", local)
    ch.basic_consume("jobs", relayed)
    pump([conn], lambda: len(relayed.got) == 50 and local.got, "every message through node-b")
    assert relayed.bodies == [b"m-%d" % i for i in range(50)]
    assert [p.headers for p in relayed.props] == [{"n": i} for i in range(50)]
    assert relayed.props[7].message_id == "id-7" and relayed.props[7].content_type == "text/plain"
    assert relayed.props[7].delivery_mode == 2
    assert not any(redelivered for _, redelivered, _ in relayed.got)
    tags = sorted(tag for tag, _, _ in relayed.got + local.got)
    assert tags == list(range(1, 52))  # one sequence of delivery tags for the channel
    wait_for(lambda: owner_figures(a, "jobs") == (0, 0), message="every ack reached node-a")
    conn.close()


def test_competing_consumers_on_two_nodes_get_each_message_once_and_requeues_redeliver(
        cluster: list[ClusterNode]) -> None:
    """A consumer on node-a (the owner) and one on node-b compete for one queue: each message is acked once overall;
    node-b's client rejects its first delivery and nacks its second with requeue: both come back redelivered."""
    a, b = cluster
    total = 200
    queue_of(a, b, "shared", total)
    conn_a, conn_b = a.connect(), b.connect()
    ch_a, ch_b = conn_a.channel(), conn_b.channel()
    ch_a.basic_qos(prefetch_count=5)
    ch_b.basic_qos(prefetch_count=5)
    on_a = Collector(ack=True)
    acked_b: list[bytes] = []
    seen_b: list[tuple[bytes, bool]] = []

    def on_b(ch: Any, method: Any, props: Any, body: bytes) -> None:
        seen_b.append((body, method.redelivered))
        if len(seen_b) == 1:
            ch.basic_reject(method.delivery_tag, requeue=True)
        elif len(seen_b) == 2:
            ch.basic_nack(method.delivery_tag, multiple=False, requeue=True)
        else:
            acked_b.append(body)
            ch.basic_ack(method.delivery_tag)

    ch_a.basic_consume("shared", on_a)
    ch_b.basic_consume("shared", on_b)
    pump([conn_a, conn_b], lambda: len(on_a.got) + len(acked_b) >= total, "every message acked once")
    acked = on_a.bodies + acked_b
    assert sorted(acked) == sorted(b"m-%d" % i for i in range(total))  # each once
    assert acked_b, "node-b's consumer took its share"
    requeued = {seen_b[0][0], seen_b[1][0]}
    redelivered = {body for _, flag, body in on_a.got if flag} | {body for body, flag in seen_b[2:] if flag}
    assert requeued <= redelivered
    wait_for(lambda: owner_figures(a, "shared") == (0, 0))
    conn_a.close()
    conn_b.close()


def test_prefetch_holds_over_the_link_and_multiple_acks(cluster: list[ClusterNode]) -> None:
    """A consumer on node-b with prefetch 2 that does not ack gets exactly 2; one ack with multiple=True releases 2
    more; a nack of all (multiple, requeue) puts them back redelivered."""
    a, b = cluster
    queue_of(a, b, "slow", 10)
    conn = b.connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    got = Collector()
    ch.basic_consume("slow", got)
    pump([conn], lambda: len(got.got) == 2 and owner_figures(a, "slow") == (8, 2), "2 delivered, 8 ready")
    hold(1.0, "nothing more than the prefetch arrives while nothing is acked")
    conn.process_data_events(time_limit=0.2)
    assert len(got.got) == 2
    ch.basic_ack(got.got[1][0], multiple=True)
    pump([conn], lambda: len(got.got) == 4, "2 more after the multiple ack")
    assert got.bodies == [b"m-0", b"m-1", b"m-2", b"m-3"]
    ch.basic_nack(0, multiple=True, requeue=True)  # both unacked back to node-a's queue
    pump([conn], lambda: len(got.got) == 6, "redelivered after the nack")
    assert got.got[4][1:] == (True, b"m-2") and got.got[5][1:] == (True, b"m-3")
    conn.close()


def test_a_client_that_disconnects_returns_its_unacked_deliveries_redelivered(cluster: list[ClusterNode]) -> None:
    a, b = cluster
    queue_of(a, b, "orphans", 6)
    conn_b = b.connect()
    ch_b = conn_b.channel()
    ch_b.basic_qos(prefetch_count=3)
    held = Collector()
    ch_b.basic_consume("orphans", held)
    pump([conn_b], lambda: len(held.got) == 3, "3 delivered through node-b")
    conn_b.close()  # unacked: the link channel closes, node-a requeues them
    conn_a = a.connect()
    ch_a = conn_a.channel()
    taker = Collector(ack=True)
    ch_a.basic_consume("orphans", taker)
    pump([conn_a], lambda: len(taker.got) == 6, "all 6 on node-a")
    assert [(body, flag) for _, flag, body in taker.got] == [(b"m-%d" % i, i < 3) for i in range(6)]
    conn_a.close()


def test_killing_the_relaying_node_returns_its_unacked_deliveries_once(cluster: list[ClusterNode]) -> None:
    """kill -9 of node-b while its client holds 4 unacked deliveries of node-a's queue: node-a gets them back
    (its link closed), redelivered, and every message is delivered once more at most."""
    a, b = cluster
    queue_of(a, b, "crash", 10)
    conn_b = b.connect()
    ch_b = conn_b.channel()
    ch_b.basic_qos(prefetch_count=4)
    held = Collector()
    ch_b.basic_consume("crash", held)
    pump([conn_b], lambda: len(held.got) == 4 and owner_figures(a, "crash") == (6, 4), "4 unacked through node-b")
    b.kill()
    wait_for(lambda: owner_figures(a, "crash") == (10, 0), message="node-a requeued what node-b held")
    conn_a = a.connect()
    ch_a = conn_a.channel()
    got = []
    while (answer := ch_a.basic_get("crash", auto_ack=True))[0] is not None:
        got.append((answer[2], answer[0].redelivered))
    assert got == [(b"m-%d" % i, i < 4) for i in range(10)]
    conn_a.close()


def test_killing_the_owner_cancels_the_relayed_consumer_and_consuming_again_after_the_takeover_gets_everything(
        cluster: list[ClusterNode]) -> None:
    """kill -9 of node-a (the owner) while a client of node-b consumes its queue through node-b: the client gets
    basic.cancel (consumer_cancel_notify); once node-b took the queue over, consuming again there delivers every
    message, those that were delivered and not acked redelivered, none lost."""
    a, b = cluster
    queue_of(a, b, "orders", 10)
    conn = b.connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    cancelled: list[str] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    first = Collector()
    acked: list[bytes] = []

    def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
        first(channel, method, props, body)
        if len(first.got) <= 2:  # the first two are acked, the next ones are held
            channel.basic_ack(method.delivery_tag)
            acked.append(body)

    tag = ch.basic_consume("orders", on_message)
    pump([conn], lambda: len(first.got) == 5 and owner_figures(a, "orders") == (5, 3), "5 delivered, 2 acked")
    a.kill()
    pump([conn], lambda: cancelled, "basic.cancel from node-b", timeout=30)
    assert cancelled == [tag]
    wait_for(lambda: b.http.get("/api/queues/%2F/orders")["node"] == "node-b", timeout=30,
             message="node-b took the queue over")
    again = Collector(ack=True)
    ch.basic_consume("orders", again)
    pump([conn], lambda: len(again.got) == 8, "the rest after the takeover", timeout=30)
    assert [(body, flag) for _, flag, body in again.got] == [(b"m-%d" % i, i < 5) for i in range(2, 10)]
    assert acked == [b"m-0", b"m-1"]
    conn.close()


def test_get_and_purge_through_another_node(cluster: list[ClusterNode]) -> None:
    a, b = cluster
    queue_of(a, b, "box", 5)
    conn = b.connect()
    ch = conn.channel()
    method, props, body = ch.basic_get("box")
    assert (body, method.message_count, method.redelivered, props.headers) == (b"m-0", 4, False, {"n": 0})
    ch.basic_reject(method.delivery_tag, requeue=True)  # back to node-a's queue, redelivered
    method, _, body = ch.basic_get("box")
    assert (body, method.redelivered) == (b"m-0", True)
    ch.basic_ack(method.delivery_tag)
    method, _, body = ch.basic_get("box", auto_ack=True)
    assert body == b"m-1"
    assert ch.queue_purge("box").method.message_count == 3
    assert ch.basic_get("box") == (None, None, None)  # get-empty
    wait_for(lambda: owner_figures(a, "box") == (0, 0))
    conn.close()


def test_an_exclusive_consumer_on_the_owner_refuses_a_relayed_one(cluster: list[ClusterNode]) -> None:
    a, b = cluster
    queue_of(a, b, "solo", 1)
    conn_a = a.connect()
    conn_a.channel().basic_consume("solo", lambda *args: None, exclusive=True)
    conn_b = b.connect()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        conn_b.channel().basic_consume("solo", lambda *args: None)
    assert info.value.reply_code == 403 and "in exclusive use" in str(info.value.reply_text)
    conn_a.close()
    conn_b.close()


def cluster_secret(server_url: str, store_url: str) -> str:
    import psycopg

    schema = store_url.rpartition("schema=")[2]
    with psycopg.connect(server_url, autocommit=True) as db:
        return str(db.execute(f"SELECT value FROM {schema}.meta WHERE key = 'cluster_secret'").fetchone()[0])


def login(port: int, user: str, password: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, credentials=pika.PlainCredentials(user, password), connection_attempts=1))


def refused_login(port: int, user: str, password: str) -> int:
    """The reply code of a refused login (pika announces authentication_failure_close: 403)."""
    with pytest.raises(pika.exceptions.AMQPConnectionError) as info:
        login(port, user, password)
    found = re.search(r"\((\d+)\) 'ACCESS_REFUSED - Login was refused", str(info.value))
    assert found, info.value
    return int(found.group(1))


def test_the_link_identity_needs_the_cluster_secret_and_cluster_on(
        tmp_path: Path, cluster: list[ClusterNode], postgres_url: str,  # noqa: F811 - fixtures
        postgres_store_url: str) -> None:  # noqa: F811
    a, b = cluster
    secret = cluster_secret(postgres_url, postgres_store_url)
    assert len(secret) >= 32
    assert refused_login(a.port, "leveret.cluster", "wrong") == 403
    assert refused_login(a.port, "leveret.cluster", "") == 403
    # an ordinary user of that name never logs in as itself
    a.http.ok("PUT", "/api/users/leveret.cluster", {"password": "pw", "tags": ""})
    a.http.ok("PUT", "/api/permissions/%2F/leveret.cluster", {"configure": ".*", "write": ".*", "read": ".*"})
    assert refused_login(a.port, "leveret.cluster", "pw") == 403
    # with the secret: every vhost, but no relaying on: a queue node-a does not own is refused there (no chains)
    conn_b = b.connect()
    conn_b.channel().queue_declare("of-b", durable=True)
    conn_b.close()
    linked = login(a.port, "leveret.cluster", secret)
    wait_for(lambda: exists(linked, "queue", "of-b"), message="node-a knows node-b's queue")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        linked.channel().basic_get("of-b")
    assert info.value.reply_code == 405 and "served by node 'node-b'" in str(info.value.reply_text)
    linked.close()
    # a node without cluster = true refuses it whatever the password
    alone = LeveretProcess(tmp_path / "alone").start()
    try:
        assert refused_login(alone.port, "leveret.cluster", secret) == 403
    finally:
        alone.kill()


def test_the_management_api_lists_the_link_as_a_connection_of_the_owner(cluster: list[ClusterNode]) -> None:
    """The link is an ordinary AMQP connection on the owner, of the user leveret.cluster, named after the client."""
    a, b = cluster
    queue_of(a, b, "seen", 1)
    conn = b.connect()
    conn.channel().basic_consume("seen", lambda *args: None)

    def link() -> dict[str, Any] | None:
        found = [c for c in a.http.get("/api/connections") if c.get("user") == "leveret.cluster"
                 and c.get("node") == "node-a"]
        return found[0] if found else None

    shown = pump([conn], link, "node-a lists the link")
    name = urllib.parse.unquote(str(shown.get("client_properties", {}).get("connection_name", "")))
    assert "node-b" in name
    conn.close()
    wait_for(lambda: link() is None, message="the link closes with the client")


def test_a_stomp_subscription_through_another_node(tmp_path: Path, postgres_store_url: str) -> None:  # noqa: F811
    """STOMP takes the same path: a SUBSCRIBE on node-b to node-a's queue gets its messages, its ACKs reach node-a,
    and what it did not ack goes back to node-a's queue when it disconnects."""
    import stomp
    from test_stomp import Recorder

    a = ClusterNode(tmp_path / "a", postgres_store_url, "node-a")
    b = ClusterNode(tmp_path / "b", postgres_store_url, "node-b", LEVERET_STOMP_PORT="0")
    try:
        a.start()
        b.start()
        queue_of(a, b, "stomped", 5)
        conn = stomp.Connection12([("127.0.0.1", b.stomp_port)], vhost="/")
        recorder = Recorder()
        conn.set_listener("recorder", recorder)
        conn.connect("guest", "guest", wait=True)
        conn.subscribe("/amq/queue/stomped", id="s1", ack="client-individual")
        messages = recorder.wait_messages(5)
        assert [m.body for m in messages] == [f"m-{i}" for i in range(5)]
        for message in messages[:3]:
            conn.ack(message.headers["ack"])
        wait_for(lambda: owner_figures(a, "stomped") == (0, 2), message="3 acks reached node-a")
        conn.disconnect()
        wait_for(lambda: owner_figures(a, "stomped") == (2, 0), message="the 2 unacked back on node-a")
    finally:
        a.kill()
        b.kill()


def test_a_no_ack_consumer_through_another_node(cluster: list[ClusterNode]) -> None:
    """A no-ack consumer on node-b of node-a's queue gets every message once, in order; node-a keeps none unacked
    once they went out (the relay acks them on the link as the client's connection takes them), and a cancel
    leaves nothing behind."""
    a, b = cluster
    total = 3000  # more than the relay's window (1,000)
    queue_of(a, b, "fast", total)
    conn = b.connect()
    ch = conn.channel()
    got = Collector()
    tag = ch.basic_consume("fast", got, auto_ack=True)
    pump([conn], lambda: len(got.got) == total, "every message, no-ack", timeout=60)
    assert got.bodies == [b"m-%d" % i for i in range(total)]
    wait_for(lambda: owner_figures(a, "fast") == (0, 0), message="nothing left unacked on node-a")
    ch.basic_cancel(tag)
    conn.close()


def test_single_active_consumer_holds_across_nodes(cluster: list[ClusterNode]) -> None:
    """A single-active-consumer queue of node-a: the first consumer, relayed through node-b, gets every message while
    a consumer on node-a waits; once the relayed one is cancelled, node-a's takes over."""
    a, b = cluster
    conn_a = a.connect()
    ch_a = conn_a.channel()
    ch_a.confirm_delivery()
    ch_a.queue_declare("leader", durable=True, arguments={"x-single-active-consumer": True})
    conn_b = b.connect()
    wait_for(lambda: exists(conn_b, "queue", "leader"))
    wait_for(lambda: {n["name"]: n.get("amqp") for n in b.http.get("/api/nodes")}.get("node-a"))
    ch_b = conn_b.channel()
    first, second = Collector(ack=True), Collector(ack=True)
    tag = ch_b.basic_consume("leader", first)
    wait_for(lambda: a.http.get("/api/queues/%2F/leader")["consumers"] == 1, message="the relayed consumer is on a")
    ch_a.basic_consume("leader", second)
    for i in range(5):
        ch_a.basic_publish("", "leader", b"l-%d" % i, PERSISTENT)
    pump([conn_a, conn_b], lambda: len(first.got) == 5, "the active (relayed) consumer gets all")
    assert second.got == []
    ch_b.basic_cancel(tag)
    for i in range(5, 8):
        ch_a.basic_publish("", "leader", b"l-%d" % i, PERSISTENT)
    pump([conn_a, conn_b], lambda: len(second.got) == 3, "node-a's consumer is active now")
    assert second.bodies == [b"l-5", b"l-6", b"l-7"] and len(first.got) == 5
    conn_a.close()
    conn_b.close()


def test_the_link_identity_is_refused_by_the_management_api(
        cluster: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    a, _ = cluster
    secret = cluster_secret(postgres_url, postgres_store_url)
    status = a.http.request("GET", "/api/whoami", auth=("leveret.cluster", secret))[0]
    assert status == 401


def test_a_queue_taken_over_by_the_relaying_node_cancels_its_relayed_consumers(cluster: list[ClusterNode]) -> None:
    """node-a is paused (SIGSTOP: its link stays open, its lease runs out); node-b takes its queue over and cancels
    the consumer it relayed to node-a (basic.cancel); consuming again on node-b is local and gets every message, the
    ones node-a had delivered redelivered."""
    import os
    import signal

    a, b = cluster
    queue_of(a, b, "moved", 6)
    conn = b.connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    cancelled: list[str] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    held = Collector()
    tag = ch.basic_consume("moved", held)
    pump([conn], lambda: len(held.got) == 2 and owner_figures(a, "moved") == (4, 2), "2 delivered through node-b")
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        pump([conn], lambda: cancelled, "basic.cancel once node-b took the queue over", timeout=30)
        assert cancelled == [tag]
        assert b.http.get("/api/queues/%2F/moved")["node"] == "node-b"
        assert any("is served here now: its relayed consumer" in line for line in b.lines)  # not the link's loss
        again = Collector(ack=True)
        ch.basic_consume("moved", again)
        pump([conn], lambda: len(again.got) == 6, "every message, locally on node-b")
        assert [(body, flag) for _, flag, body in again.got] == [(b"m-%d" % i, i < 2) for i in range(6)]
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    conn.close()


def test_the_management_api_get_and_purge_of_another_nodes_queue_are_relayed(cluster: list[ClusterNode]) -> None:
    """POST /api/queues/{vhost}/{name}/get on node-b of node-a's queue: the owner's messages, requeued (redelivered
    after) or acked as the ackmode says; DELETE .../contents purges it on node-a."""
    a, b = cluster
    queue_of(a, b, "peek", 4)
    got = b.http.ok("POST", "/api/queues/%2F/peek/get", {"count": 2, "ackmode": "ack_requeue_true",
                                                         "encoding": "auto"})
    assert [(m["payload"], m["redelivered"], m["properties"]["headers"]) for m in got] == [
        ("m-0", False, {"n": 0}), ("m-1", False, {"n": 1})]
    assert got[0]["message_count"] == 3 and got[0]["properties"]["message_id"] == "id-0"
    wait_for(lambda: owner_figures(a, "peek") == (4, 0), message="requeued on node-a")
    got = b.http.ok("POST", "/api/queues/%2F/peek/get", {"count": 3, "ackmode": "ack_requeue_false",
                                                         "encoding": "auto"})
    assert [(m["payload"], m["redelivered"]) for m in got] == [("m-0", True), ("m-1", True), ("m-2", False)]
    wait_for(lambda: owner_figures(a, "peek") == (1, 0), message="3 acked on node-a")
    b.http.ok("DELETE", "/api/queues/%2F/peek/contents")  # the purge too
    wait_for(lambda: owner_figures(a, "peek") == (0, 0), message="purged on node-a")
    queue_of(a, b, "peek", 2)
    purged = subprocess.run([sys.executable, "-m", "leveret", "ctl", "--data-dir", str(b.data_dir), "purge-queue",
                             "peek"], capture_output=True, text=True, timeout=60)  # leveret ctl on node-b
    assert purged.stdout == "queue 'peek' purged (2 messages)\n", purged.stderr
    wait_for(lambda: not [c for c in a.http.get("/api/connections") if c.get("user") == "leveret.cluster"
                          and c.get("node") == "node-a"], message="the management API's link closed")


def test_three_nodes_the_relay_follows_a_takeover_by_a_third_node(tmp_path: Path,
                                                                  postgres_store_url: str) -> None:  # noqa: F811
    """Three nodes; node-a owns the queue and is killed -9; one of node-b and node-c takes it over. The other one
    still names node-a as the owner, learns the new owner from its heartbeat summary, and relays a consume there:
    every message, those node-a had delivered redelivered."""
    nodes = [ClusterNode(tmp_path / name, postgres_store_url, name) for name in ("node-a", "node-b", "node-c")]
    try:
        for node in nodes:
            node.start()
        a, b, c = nodes
        queue_of(a, b, "roam", 5)
        queue_of(a, c, "roam", 0)
        conn = b.connect()
        ch = conn.channel()
        held = Collector()
        ch.basic_consume("roam", held)
        pump([conn], lambda: len(held.got) == 5, "5 delivered through node-b")
        conn.close()  # returned to node-a's queue, redelivered
        wait_for(lambda: owner_figures(a, "roam") == (5, 0), message="back on node-a")
        a.kill()
        owner = wait_for(lambda: next((n for n in (b, c) if n.http.get("/api/queues/%2F/roam")["node"] == n.name),
                                      None), timeout=30, message="node-b or node-c took the queue over")
        other = c if owner is b else b
        conn = other.connect()

        def consumed() -> Collector | None:  # refused (405) until the owner's summary names the queue
            got = Collector(ack=True)
            try:
                conn.channel().basic_consume("roam", got)
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 405, exc
                return None
            return got

        got = wait_for(consumed, timeout=30, message=f"a consume through {other.name} relayed to {owner.name}")
        pump([conn], lambda: len(got.got) == 5, f"every message through {other.name}")
        assert [(body, flag) for _, flag, body in got.got] == [(b"m-%d" % i, True) for i in range(5)]
        conn.close()
    finally:
        for node in nodes:
            node.kill()


def test_a_client_without_consumer_cancel_notify_has_its_channel_closed_when_the_owner_dies(
        cluster: list[ClusterNode]) -> None:
    """A raw client that does not announce consumer_cancel_notify consumes through node-b; node-a (the owner) is
    killed -9: node-b closes the client's channel (320), as RabbitMQ's clients would otherwise never know."""
    from rawamqp import RawClient

    a, b = cluster
    queue_of(a, b, "quiet", 2)
    raw = RawClient(b.port, timeout=30)
    try:
        raw.handshake(capabilities={})
        raw.open_channel(1)
        raw.send_method(1, "basic.consume", 0, "quiet", "quiet-tag", False, True, False, False, {})
        seen = [raw.recv_method(timeout=20) for _ in range(3)]
        assert [(m[0], m[1]) for m in seen if m is not None] == [
            (1, "basic.consume-ok"), (1, "basic.deliver"), (1, "basic.deliver")]
        a.kill()
        closed = raw.recv_method(timeout=30)
        assert closed is not None and closed[:2] == (1, "channel.close"), closed
        assert closed[2][0] == 320 and "node-a" in closed[2][1], closed
    finally:
        raw.close()


def test_a_cancelled_relayed_consumer_can_still_ack_what_it_holds(cluster: list[ClusterNode]) -> None:
    """basic.cancel through node-b while 3 deliveries are unacked: no more arrive, the 3 stay unacked on node-a
    until the client acks them (multiple), then the link's channel closes."""
    a, b = cluster
    queue_of(a, b, "later", 8)
    conn = b.connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    got = Collector()
    tag = ch.basic_consume("later", got)
    pump([conn], lambda: len(got.got) == 3 and owner_figures(a, "later") == (5, 3), "3 unacked through node-b")
    ch.basic_cancel(tag)
    assert owner_figures(a, "later") == (5, 3)  # still held by the client
    ch.basic_ack(got.got[-1][0], multiple=True)
    wait_for(lambda: owner_figures(a, "later") == (5, 0), message="the acks after the cancel reached node-a")
    assert len(got.got) == 3 and a.http.get("/api/queues/%2F/later")["consumers"] == 0
    conn.close()


def test_the_content_header_goes_through_byte_for_byte(cluster: list[ClusterNode]) -> None:
    """A message whose properties no client library round-trips (a header table's 32-bit integer 'I', a message_id
    that is not UTF-8) is delivered through node-b with the very content header node-a got."""
    import struct

    from leveret.amqp import codec, spec

    from rawamqp import RawClient

    a, b = cluster
    queue_of(a, b, "exact", 0)
    table = b"\x01n" + b"I" + struct.pack(">i", 7) + b"\x01s" + b"S" + struct.pack(">I", 2) + b"\xc3\x28"
    properties = (struct.pack(">H", 0x2000 | 0x1000 | 0x0080) + struct.pack(">I", len(table)) + table + b"\x02"
                  + b"\x04\xff\xfeid")
    publisher = RawClient(a.port, timeout=20)
    consumer = RawClient(b.port, timeout=20)
    try:
        publisher.handshake()
        publisher.open_channel(1)
        publisher.send_method(1, "confirm.select", False)
        assert publisher.recv_method(timeout=10)[1] == "confirm.select-ok"
        frames = [codec.method_frame(1, spec.method("basic.publish"), (0, "", "exact", False, False))]
        frames += codec.content_frames(1, properties, b"body", 131072)
        publisher.send(b"".join(frames))
        assert publisher.recv_method(timeout=10)[1] == "basic.ack"
        consumer.handshake()
        consumer.open_channel(1)
        consumer.send_method(1, "basic.get", 0, "exact", True)
        frames_seen = [consumer.recv_frame(timeout=10) for _ in range(3)]
        kinds = [frame[0] for frame in frames_seen if frame is not None]
        assert kinds == [spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY]
        header = frames_seen[1][2]  # type: ignore[index]
        assert header[12:] == properties and frames_seen[2][2] == b"body"  # type: ignore[index]
    finally:
        publisher.close()
        consumer.close()


def test_a_client_that_does_not_read_holds_the_owner_back(cluster: list[ClusterNode]) -> None:
    """Back-pressure: a no-ack consumer through node-b that does not read its socket: node-b stops reading its link,
    so most of node-a's queue stays on node-a (not in node-b's memory); once the client reads, it gets every message,
    in order."""
    from rawamqp import RawClient

    a, b = cluster
    count, size = 3000, 16384  # 48 MiB: more than the sockets' and node-b's buffers hold
    queue_of(a, b, "flood", 0)
    conn = a.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(count):
        ch.basic_publish("", "flood", b"%05d" % i + b"x" * (size - 5), pika.BasicProperties(delivery_mode=1))
    conn.close()
    raw = RawClient(b.port, timeout=30)
    try:
        raw.handshake()
        raw.open_channel(1)
        raw.send_method(1, "basic.consume", 0, "flood", "slow", False, True, False, False, {})
        wait_for(lambda: owner_figures(a, "flood")[0] < count, message="deliveries started")
        hold(2.0, "the client reads nothing: what node-a still holds shows that node-b stopped reading its link")
        assert owner_figures(a, "flood")[0] > count // 3
        got = 0
        while got < count:
            frame = raw.recv_frame(timeout=30)
            assert frame is not None
            if frame[0] == 3:  # a body frame: one per message at this size
                assert frame[2][:5] == b"%05d" % got
                got += 1
        wait_for(lambda: owner_figures(a, "flood") == (0, 0), message="node-a's queue drained")
    finally:
        raw.close()
