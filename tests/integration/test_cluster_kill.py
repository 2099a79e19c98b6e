"""Three ``cluster = true`` nodes on one PostgreSQL under load, one of them killed with ``kill -9`` in the middle
(docs/cluster.md, "The kill -9 test"): publishers with confirms on every node publish to every queue (most
publishes are handed over through the database), consumers with manual acks on every queue, some holding
deliveries unacked; then a node dies. What must hold afterwards:

- every confirmed message is delivered and acked at least once;
- a message is delivered again only when the broker may: the later delivery carries ``redelivered``, or an
  earlier one came through a connection that was lost (the dead node may not have seen its ack, or had delivered a
  handed-over message before the commit that took its row); and never after an ack on a connection that stayed up;
- every delivery that was unacked when its connection died comes back exactly once (and the held ones, whose
  delivery was marked in the store before the kill, come back marked ``redelivered``);
- nothing is left in the queues, no hand-over row is left, and the survivors still run.

The clients are the clients an application would write: pika, one thread per client, a list of node addresses
each (docs/cluster.md, *Client-side failover*). A publisher whose connection dies publishes again, on the next node,
what it had not seen confirmed (as a new copy: ``attempt`` + 1, so a copy that did arrive is no duplicate). A
consumer starts at the queue's owner and moves on to the next node when a consume is refused (405: another node
serves the queue) or its connection is lost; once consuming through any node is built it simply stays on the first
node that accepts.

Each message body is its key ``publisher:seq:attempt``. Outcomes only: conditions are polled with deadlines, no
timing or rate is asserted. About 30-60 s per test on a loaded 2-core machine (three nodes, PostgreSQL and the
clients share it; ``node_lease`` 3 s).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from test_cluster import ClusterNode, exists, handover_rows

from pghelp import postgres_store_url, postgres_url  # noqa: F401 - fixtures
from waiting import poll, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster-kill")]  # one at a time: 3 nodes each

PERSISTENT = pika.BasicProperties(delivery_mode=2)
DEADLINE = 90.0  # bound on any one phase (a failure, never a claim on speed)


@pytest.fixture
def three_nodes(tmp_path: Path, postgres_store_url: str) -> Iterator[list[ClusterNode]]:  # noqa: F811 - fixture
    nodes = [ClusterNode(tmp_path / name, postgres_store_url, name) for name in ("node-a", "node-b", "node-c")]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


# --- what the clients saw -----------------------------------------------------------------------------------------


@dataclass
class Session:
    """One consumer connection: the node it went to; ``lost`` when it ended by an error rather than our close."""

    node: str
    lost: bool = False


@dataclass
class Delivery:
    key: str
    queue: str
    redelivered: bool
    session: Session
    acked: bool = False  # the client's basic.ack went out on this session


@dataclass
class Ledger:
    """Everything the clients saw, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    confirmed: dict[str, str] = field(default_factory=dict)  # key -> queue
    unconfirmed: set[str] = field(default_factory=set)  # publishes whose connection died before their confirm
    published: set[str] = field(default_factory=set)
    deliveries: list[Delivery] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def by_key(self) -> dict[str, list[Delivery]]:
        found: dict[str, list[Delivery]] = {}
        with self.lock:
            for delivery in self.deliveries:
                found.setdefault(delivery.key, []).append(delivery)
        return found

    def confirmed_count(self) -> int:
        with self.lock:
            return len(self.confirmed)


def rotate(nodes: list[ClusterNode], first: ClusterNode) -> list[ClusterNode]:
    at = nodes.index(first)
    return nodes[at:] + nodes[:at]


def connect(node: ClusterNode) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port, connection_attempts=1,
                                                             socket_timeout=5, blocked_connection_timeout=30))


class Publisher(threading.Thread):
    """Publishes ``queues[seq % len]`` with confirms until ``stop`` (at most ``limit``), one message at a time,
    on the first node of ``nodes`` that answers; after a lost connection, the unconfirmed message again on the next
    node as ``attempt`` + 1. ``after_confirm(count)`` runs in this thread after each confirm."""

    def __init__(self, name: str, nodes: list[ClusterNode], queues: list[str], ledger: Ledger,
                 stop: threading.Event, limit: int, after_confirm: Callable[[int], None] | None = None) -> None:
        super().__init__(name=f"publisher {name}", daemon=True)
        self.label, self.nodes, self.queues, self.ledger = name, nodes, queues, ledger
        self.stop, self.limit, self.after_confirm = stop, limit, after_confirm
        self.count = 0
        self.nodes_used: list[str] = []

    def run(self) -> None:
        try:
            self._publish()
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.ledger.errors.append(exc)

    def _publish(self) -> None:
        seq, attempt, turn = 0, 0, 0
        deadline = time.monotonic() + DEADLINE
        while seq < self.limit and not self.stop.is_set() and time.monotonic() < deadline:
            node = self.nodes[turn % len(self.nodes)]
            try:
                conn = connect(node)
            except pika.exceptions.AMQPConnectionError:
                turn += 1
                continue
            self.nodes_used.append(node.name)
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                while seq < self.limit and not self.stop.is_set():
                    key, queue = f"{self.label}:{seq}:{attempt}", self.queues[seq % len(self.queues)]
                    with self.ledger.lock:
                        self.ledger.published.add(key)
                    try:
                        ch.basic_publish("", queue, key.encode(), PERSISTENT, mandatory=True)
                    except pika.exceptions.NackError:
                        attempt += 1  # nacked: not stored; again, as a new copy
                        continue
                    with self.ledger.lock:
                        self.ledger.confirmed[key] = queue
                    seq, attempt = seq + 1, 0
                    self.count += 1
                    if self.after_confirm is not None:
                        self.after_confirm(self.count)
                conn.close()
            except pika.exceptions.AMQPConnectionError:  # the node died: the unconfirmed one again, elsewhere
                with self.ledger.lock:
                    self.ledger.unconfirmed.add(f"{self.label}:{seq}:{attempt}")
                attempt += 1
                turn += 1


class Consumer(threading.Thread):
    """Consumes ``queue`` with manual acks (prefetch 10), trying ``nodes`` in order: a consume refused with 405 (the
    queue is another node's), a lost connection or a ``basic.cancel`` from the node moves it to the next node. In
    its first session it holds the first ``hold`` deliveries unacked; ``release`` closes that session cleanly (the
    held ones go back to the queue) and it goes on without holding; ``stop`` closes it."""

    def __init__(self, queue: str, nodes: list[ClusterNode], ledger: Ledger, stop: threading.Event,
                 hold: int = 0) -> None:
        super().__init__(name=f"consumer {queue}", daemon=True)
        self.queue, self.nodes, self.ledger, self.stop, self.hold = queue, nodes, ledger, stop, hold
        self.release = threading.Event()
        self.held: list[Delivery] = []
        self.sessions: list[Session] = []
        self.refusals = 0

    def run(self) -> None:
        try:
            self._consume()
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.ledger.errors.append(exc)

    def _consume(self) -> None:
        turn = 0
        deadline = time.monotonic() + 3 * DEADLINE
        while not self.stop.is_set() and time.monotonic() < deadline:
            node = self.nodes[turn % len(self.nodes)]
            try:
                conn = connect(node)
            except pika.exceptions.AMQPConnectionError:
                turn += 1
                continue
            session = Session(node.name)
            holding = self.hold if not self.sessions else 0
            try:
                ch = conn.channel()
                ch.add_on_cancel_callback(lambda frame, session=session: setattr(session, "lost", True))
                ch.basic_qos(prefetch_count=10)
                ch.basic_consume(self.queue, lambda ch, method, props, body, session=session, holding=holding:
                                 self._deliver(ch, method, body, session, holding))
                self.sessions.append(session)
                while not self.stop.is_set() and not (holding and self.release.is_set()) and not session.lost:
                    conn.process_data_events(time_limit=0.1)
                _close(conn)  # a clean close: what it holds unacked goes back to the queue, redelivered
                turn += session.lost  # basic.cancel from the node (a relay to the queue's owner failed): the next
            except pika.exceptions.ChannelClosedByBroker as exc:  # 405: another node serves it (or it is dying)
                if exc.reply_code != 405:
                    raise
                self.refusals += 1
                turn += 1
                _close(conn)
                self.stop.wait(0.05 if turn % len(self.nodes) else 0.3)  # a back-off when every node refused
            except pika.exceptions.AMQPConnectionError:
                session.lost = True
                turn += 1

    def _deliver(self, ch: Any, method: Any, body: bytes, session: Session, holding: int) -> None:
        delivery = Delivery(body.decode(), self.queue, bool(method.redelivered), session)
        with self.ledger.lock:
            self.ledger.deliveries.append(delivery)
        if len(self.held) < holding:
            self.held.append(delivery)
            return
        ch.basic_ack(method.delivery_tag)
        delivery.acked = True


def _close(conn: pika.BlockingConnection) -> None:
    try:
        if conn.is_open:
            conn.close()
    except pika.exceptions.AMQPError:
        pass


def stored_redelivered(server_url: str, store_url: str, queue: str) -> set[str]:
    """The bodies of ``queue``'s stored messages whose delivery is marked in the store."""
    import psycopg

    schema = store_url.rpartition("schema=")[2]
    with psycopg.connect(server_url, autocommit=True) as db:
        rows = db.execute(f"SELECT body FROM {schema}.messages WHERE queue = %s AND redelivered", (queue,))
        return {bytes(body).decode() for (body,) in rows.fetchall()}


def owners(server_url: str, store_url: str) -> dict[str, str]:
    """Each queue's owner as the store says."""
    import psycopg

    schema = store_url.rpartition("schema=")[2]
    with psycopg.connect(server_url, autocommit=True) as db:
        return dict(db.execute(f"SELECT name, owner FROM {schema}.queues").fetchall())


def queue_figures(node: ClusterNode, queue: str) -> dict[str, Any]:
    return dict(node.http.get(f"/api/queues/%2F/{queue}"))


# --- the checks ---------------------------------------------------------------------------------------------------


def check_deliveries(ledger: Ledger, lost_unacked: list[Delivery]) -> dict[str, int]:
    """The rules of the module docstring over what the consumers saw; a few counts for the failure messages."""
    by_key = ledger.by_key()
    assert set(by_key) <= ledger.published, sorted(set(by_key) - ledger.published)[:5]
    not_acked = [key for key in ledger.confirmed if not any(d.acked for d in by_key.get(key, []))]
    assert not_acked == [], f"{len(not_acked)} confirmed messages never acked, e.g. {not_acked[:5]}"
    duplicates = 0
    for key, seen in by_key.items():
        for at, delivery in enumerate(seen[1:], start=1):
            earlier = seen[:at]
            duplicates += 1
            assert not any(d.acked and not d.session.lost for d in earlier), (
                f"{key} delivered again after an ack on a connection that stayed up: {seen}")
            assert delivery.redelivered or any(d.session.lost for d in earlier), (
                f"{key} delivered twice without the redelivered flag nor a lost connection before: {seen}")
    for delivery in lost_unacked:  # delivered, unacked, its connection gone: back exactly once
        seen = by_key[delivery.key]
        after = seen[seen.index(delivery) + 1:]
        assert len(after) == 1, f"{delivery.key} unacked on a lost connection came back {len(after)} times: {seen}"
    return {"keys": len(by_key), "duplicates": duplicates}


def wait_drained(ledger: Ledger, nodes: list[ClusterNode], queues: list[str], server_url: str,
                 store_url: str) -> None:
    """Until every confirmed message was acked (an ack the dead node did not see leaves it in the queue: the next
    condition), the queues are empty (each as its owner counts it) and no hand-over row waits."""
    def left() -> dict[str, Any]:
        found: dict[str, Any] = {}
        leases = owners(server_url, store_url)
        for queue in queues:  # each as its owner counts it (the others' view lags by up to a heartbeat)
            owner = next((n for n in nodes if n.name == leases.get(queue)), None)  # None: not yet taken over
            figures = queue_figures(owner, queue) if owner is not None else {}
            found[queue] = {k: figures.get(k) for k in ("node", "messages", "messages_unacknowledged", "consumers")}
        found["handover rows"] = handover_rows(server_url, store_url)
        return found

    def not_acked() -> list[str]:
        by_key = ledger.by_key()
        with ledger.lock:
            confirmed = list(ledger.confirmed)
        return [key for key in confirmed if not any(d.acked for d in by_key.get(key, []))]

    missing = poll(not_acked, lambda keys: not keys, timeout=DEADLINE, interval=0.2)
    if missing:
        by_key = ledger.by_key()
        raise AssertionError(f"{len(missing)} of {ledger.confirmed_count()} confirmed messages not acked, e.g. "
                             f"{[(key, ledger.confirmed[key], by_key.get(key)) for key in missing[:5]]}; {left()}")

    def empty(found: dict[str, Any]) -> bool:
        return found.pop("handover rows") == 0 and all(f["messages"] == 0 for f in found.values())

    last = poll(left, lambda found: empty(dict(found)), timeout=DEADLINE, interval=0.2)
    assert empty(dict(last)), f"left after {DEADLINE} s: {last}"


# --- the tests ----------------------------------------------------------------------------------------------------


def test_kill_9_of_a_queue_owner_under_load_loses_nothing_confirmed(
        three_nodes: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811
    """Three queues, one per node; a publisher on every node to every queue; a consumer per queue on its owner
    holding its first 3 deliveries. node-b (the owner of kq-b, with a publisher and a consumer) is killed -9 once 240
    publishes are confirmed; the publishers go on through the survivors until node-b's queue delivers again on one of
    them and 150 more are confirmed; then the held deliveries are released and everything drained."""
    a, b, c = three_nodes
    queues = ["kq-a", "kq-b", "kq-c"]
    for node, queue in zip(three_nodes, queues, strict=True):
        conn = connect(node)
        conn.channel().queue_declare(queue, durable=True)  # each queue is its declaring node's
        conn.close()
    for node in three_nodes:
        conn = connect(node)
        wait_for(lambda conn=conn: all(exists(conn, "queue", q) for q in queues), message=f"queues on {node.name}")
        conn.close()

    ledger = Ledger()
    stop_publishing, stop_consuming = threading.Event(), threading.Event()
    consumers = [Consumer(queue, rotate(three_nodes, owner), ledger, stop_consuming, hold=3)
                 for owner, queue in zip(three_nodes, queues, strict=True)]
    publishers = [Publisher(node.name, rotate(three_nodes, node), queues, ledger, stop_publishing, limit=3000)
                  for node in three_nodes]
    for thread in [*consumers, *publishers]:
        thread.start()
    try:
        wait_for(lambda: ledger.confirmed_count() >= 240 and all(len(c.held) == 3 for c in consumers),
                 timeout=DEADLINE, interval=0.05, message="load running, deliveries held")
        held_b = {d.key for d in consumers[1].held}
        wait_for(lambda: held_b <= stored_redelivered(postgres_url, postgres_store_url, "kq-b"),
                 timeout=DEADLINE, message="node-b's held deliveries marked in the store")
        b.kill()  # kill -9 under load: node-b's connections are lost, its queue waits for its lease to run out
        assert ledger.errors == []

        def delivers_elsewhere() -> bool:
            return any(s.node != "node-b" for s in consumers[1].sessions) and any(
                d.queue == "kq-b" and d.session.node != "node-b" for d in list(ledger.deliveries))

        wait_for(delivers_elsewhere, timeout=DEADLINE, interval=0.05, message="kq-b delivers again on a survivor")
        after_takeover = ledger.confirmed_count()
        wait_for(lambda: ledger.confirmed_count() >= after_takeover + 150 or not any(
            p.is_alive() for p in publishers), timeout=DEADLINE, interval=0.05, message="publishing goes on")
        stop_publishing.set()
        for publisher in publishers:
            publisher.join(DEADLINE)
        assert publishers[1].nodes_used[0] == "node-b" and len(publishers[1].nodes_used) >= 2  # it failed over

        for consumer in consumers:
            consumer.release.set()  # the survivors' held deliveries go back, redelivered
        wait_drained(ledger, [a, c], queues, postgres_url, postgres_store_url)
    finally:
        stop_publishing.set()
        stop_consuming.set()
        for thread in [*publishers, *consumers]:
            thread.join(DEADLINE)
    assert ledger.errors == []

    lost_unacked = [d for d in ledger.deliveries if d.session.lost and not d.acked]
    assert {d.key for d in consumers[1].held} <= {d.key for d in lost_unacked}
    counts = check_deliveries(ledger, lost_unacked)
    by_key = ledger.by_key()
    for consumer in consumers:  # held: back exactly once, marked redelivered (node-b's by its store mark)
        for delivery in consumer.held:
            seen = by_key[delivery.key]
            assert len(seen) == 2 and seen[0] is delivery and seen[1].redelivered, seen
    assert all(s.node == "node-b" and s.lost for s in consumers[1].sessions[:1])
    assert all(not s.lost for consumer in (consumers[0], consumers[2]) for s in consumer.sessions)
    for node in (a, c):
        assert node.proc is not None and node.proc.poll() is None, node.log[-2000:]  # not fenced
    owner = owners(postgres_url, postgres_store_url)["kq-b"]
    assert owner in ("node-a", "node-c")
    assert counts["keys"] >= len(ledger.confirmed)


def test_kill_9_of_a_node_that_only_publishes_loses_nothing_confirmed(
        three_nodes: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811
    """node-c owns no queue; it carries two publishers (to the queues of node-a and node-b: every message handed
    over) beside a publisher on node-a. node-c is killed -9 from the thread of the first of its publishers to get its
    150th confirm, right after it (its last commits' rows not taken yet, most likely); the two move on to node-a or
    node-b and publish again what was not confirmed. Every confirmed message reaches its queue and is delivered
    exactly once (the owners never died: no redelivery at all), no row is left."""
    a, b, c = three_nodes
    queues = ["kp-a", "kp-b"]
    for node, queue in zip((a, b), queues, strict=True):
        conn = connect(node)
        conn.channel().queue_declare(queue, durable=True)
        conn.close()
    conn = connect(c)
    wait_for(lambda: all(exists(conn, "queue", q) for q in queues), message="the queues on node-c")
    conn.close()

    ledger = Ledger()
    stop_publishing, stop_consuming = threading.Event(), threading.Event()
    killed = threading.Event()

    once = threading.Lock()

    def kill_c(count: int) -> None:
        with once:
            if count >= 150 and not killed.is_set():  # the first of node-c's publishers to get its 150th confirm
                c.kill()  # right after that confirm
                killed.set()

    consumers = [Consumer(queue, rotate([a, b], owner), ledger, stop_consuming)
                 for owner, queue in zip((a, b), queues, strict=True)]
    publishers = [Publisher("c1", [c, a, b], queues, ledger, stop_publishing, limit=500, after_confirm=kill_c),
                  Publisher("c2", [c, b, a], queues, ledger, stop_publishing, limit=500, after_confirm=kill_c),
                  Publisher("a1", [a, b], queues, ledger, stop_publishing, limit=500)]
    for thread in [*consumers, *publishers]:
        thread.start()
    try:
        wait_for(killed.is_set, timeout=DEADLINE, interval=0.05, message="node-c killed")
        for publisher in publishers:
            publisher.join(DEADLINE)
            assert not publisher.is_alive() and publisher.count == 500, publisher.name
        assert [p.nodes_used[0] for p in publishers[:2]] == ["node-c", "node-c"]
        assert all(len(p.nodes_used) >= 2 for p in publishers[:2])  # both failed over
        wait_drained(ledger, [a, b], queues, postgres_url, postgres_store_url)
    finally:
        stop_publishing.set()
        stop_consuming.set()
        for thread in [*publishers, *consumers]:
            thread.join(DEADLINE)
    assert ledger.errors == []
    by_key = ledger.by_key()
    twice = {key: seen for key, seen in by_key.items() if len(seen) > 1}
    assert twice == {}
    assert not any(d.redelivered for d in ledger.deliveries)
    assert all(not s.lost for consumer in consumers for s in consumer.sessions)
    assert all(not consumer.refusals for consumer in consumers)  # each stayed on its queue's owner
    check_deliveries(ledger, [])
    for node in (a, b):
        assert node.proc is not None and node.proc.poll() is None


def test_the_third_node_learns_who_took_a_queue_over(
        three_nodes: list[ClusterNode], postgres_url: str, postgres_store_url: str) -> None:  # noqa: F811 - fixtures
    """node-a's queue, node-a killed -9: one of node-b and node-c takes it over (the store says which); the other
    one then names the new owner in its management API, and what goes through it reaches the new owner."""
    a, b, c = three_nodes
    conn = connect(a)
    conn.channel().queue_declare("moved", durable=True)
    conn.close()
    for node in (b, c):
        conn = connect(node)
        wait_for(lambda conn=conn: exists(conn, "queue", "moved"), message=f"the queue on {node.name}")
        conn.close()
    a.kill()
    taker = wait_for(lambda: owners(postgres_url, postgres_store_url).get("moved") in ("node-b", "node-c")
                     and owners(postgres_url, postgres_store_url)["moved"], timeout=DEADLINE, message="taken over")
    other = c if taker == "node-b" else b

    # its management API names the new owner, and a message published through it reaches the queue and is
    # got back through it (its publish handed over to, and its get relayed to, the new owner, not the dead node)
    named = poll(lambda: queue_figures(other, "moved")["node"], lambda node: node == taker, timeout=15, interval=0.2)
    assert named == taker
    conn = connect(other)
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish("", "moved", b"after the takeover", PERSISTENT)
        got = poll(lambda: channel.basic_get("moved", auto_ack=True)[2], lambda body: body is not None, timeout=15,
                   interval=0.2)
        assert got == b"after the takeover"
    finally:
        _close(conn)
