"""Two Leveret nodes on one PostgreSQL schema (``cluster = true``, docs/cluster.md): how long a definition takes to
reach the other node, how long the other node takes to serve a queue after its owner is killed (kill -9) or
stopped, and routing between nodes: the latency from a publish on node a to its delivery on node b (the queue is
b's: the message is handed over through the store), and the rate of persistent pubsub with confirms through two
nodes (publisher on a, queue and consumer on b) against one (everything on b), with bench/amqpbench.c's ``-N``.

Consuming through another node: the queue and the publisher on node a, the consumer on node b (relayed to a over
the internal link): latency one message at a time, and amqpbench's pubsub with ``-C`` (consume through b), each
against the consumer on node a itself.

Usage: python bench/cluster_bench.py [NODE_LEASE]   (default 15 s, the setting's default; ROUTING_ONLY=1: the
routing figures only; CONSUME_ONLY=1: the consume-through figures only). Needs the PostgreSQL of
scripts/postgres.sh (started if not running); uses a schema of its own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pika
import pika.exceptions
import psycopg
from compare import serve_logged  # bench/compare.py (this script's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def start(url: str, name: str, data: str, lease: str) -> tuple[subprocess.Popen[str], int]:
    return serve_logged(data, {"LEVERET_STORE": url, "LEVERET_CLUSTER": "true", "LEVERET_NODE_NAME": name,
                               "LEVERET_NODE_LEASE": lease})


def connect(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1))


def known(conn: pika.BlockingConnection, queue: str) -> bool:
    try:
        conn.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False


def served(conn: pika.BlockingConnection, queue: str) -> bool:
    try:
        return conn.channel().basic_get(queue)[0] is not None
    except pika.exceptions.ChannelClosedByBroker:
        return False


def until(check: object, timeout: float = 120.0) -> float:
    started = time.perf_counter()
    while not check():  # type: ignore[operator]
        if time.perf_counter() - started > timeout:
            raise TimeoutError
        time.sleep(0.002)
    return time.perf_counter() - started


@contextlib.contextmanager
def two_nodes(base: str, lease: str) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """Nodes a and b on a schema of their own (dropped at the end): (a's process, a's port, b's port)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    url = f"{base}?schema={schema}"
    with tempfile.TemporaryDirectory() as tmp:
        a, port_a = start(url, "a", f"{tmp}/a", lease)
        b, port_b = start(url, "b", f"{tmp}/b", lease)
        try:
            yield a, port_a, port_b
        finally:
            for proc in (a, b):
                proc.kill()
                proc.wait()
            with psycopg.connect(base, autocommit=True) as db:
                db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def failover(base: str, lease: str, stop: bool) -> float:
    with two_nodes(base, lease) as (a, port_a, port_b):
        conn_a = connect(port_a)
        ch = conn_a.channel()
        ch.confirm_delivery()
        ch.queue_declare("work", durable=True)
        for i in range(1000):
            ch.basic_publish("", "work", b"m%d" % i, PERSISTENT)
        conn_b = connect(port_b)
        until(lambda: known(conn_b, "work"))
        started = time.perf_counter()
        if stop:
            a.terminate()
        else:
            a.kill()
        until(lambda: served(conn_b, "work"))
        return time.perf_counter() - started


def propagation(base: str, lease: str, count: int = 50) -> list[float]:
    with two_nodes(base, lease) as (_, port_a, port_b):
        conn_a, conn_b = connect(port_a), connect(port_b)
        ch = conn_a.channel()
        times = []
        for i in range(count):
            started = time.perf_counter()
            ch.queue_declare(f"q{i}", durable=True)  # returns once committed on node a
            until(lambda i=i: known(conn_b, f"q{i}"))
            times.append(time.perf_counter() - started)
        return times


def latency(base: str, lease: str, count: int = 500) -> tuple[list[float], list[float]]:
    """Publish with confirms, one at a time, to a queue node b owns; a consumer on b records each delivery: (through
    node a, on node b itself), in seconds from the publish to the delivery."""
    async def run(port_a: int, port_b: int) -> tuple[list[float], list[float]]:
        consumer = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port_b}/")
        channel = await consumer.channel()
        queue = await channel.declare_queue("lat", durable=True)
        arrived: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived.put_nowait((time.perf_counter(), message.body))
            await message.ack()

        await queue.consume(on_message)
        results = []
        for port in (port_a, port_b):
            publisher = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/")
            pub = await publisher.channel(publisher_confirms=True)
            with contextlib.suppress(Exception):
                await pub.declare_queue("lat", durable=True, passive=True)
            times = []
            for i in range(count):
                started = time.perf_counter()
                await pub.default_exchange.publish(aio_pika.Message(b"%d" % i, delivery_mode=2), "lat")
                at, body = await asyncio.wait_for(arrived.get(), 30)
                assert body == b"%d" % i
                times.append(at - started)
            await publisher.close()
            results.append(times)
        await consumer.close()
        return results[0], results[1]

    with two_nodes(base, lease) as (_, port_a, port_b):
        conn_a = connect(port_a)
        conn_b = connect(port_b)
        conn_b.channel().queue_declare("lat", durable=True)  # b's queue
        until(lambda: known(conn_a, "lat"))
        return asyncio.run(run(port_a, port_b))


def relayed_latency(base: str, lease: str, count: int = 500) -> tuple[list[float], list[float]]:
    """Consuming through another node: the queue is node a's, the publisher (confirms, one message at a time) on
    node a, the consumer (aio-pika, acks) on node b (relayed to a over the link) and then on node a itself: (through
    node b, on node a), in seconds from the publish to the delivery."""
    async def run(port_a: int, port_b: int) -> tuple[list[float], list[float]]:
        publisher = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port_a}/")
        pub = await publisher.channel(publisher_confirms=True)
        await pub.declare_queue("rlat", durable=True)
        results = []
        for port in (port_b, port_a):
            consumer = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/")
            channel = await consumer.channel()
            await channel.set_qos(prefetch_count=100)
            queue = await channel.declare_queue("rlat", durable=True, passive=True)
            arrived: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage,
                                 arrived: asyncio.Queue[tuple[float, bytes]] = arrived) -> None:
                arrived.put_nowait((time.perf_counter(), message.body))
                await message.ack()

            await queue.consume(on_message)
            times = []
            for i in range(count):
                started = time.perf_counter()
                await pub.default_exchange.publish(aio_pika.Message(b"%d" % i, delivery_mode=2), "rlat")
                at, body = await asyncio.wait_for(arrived.get(), 30)
                assert body == b"%d" % i
                times.append(at - started)
            await consumer.close()
            results.append(times)
        await publisher.close()
        return results[0], results[1]

    with two_nodes(base, lease) as (_, port_a, port_b):
        conn_a, conn_b = connect(port_a), connect(port_b)
        conn_a.channel().queue_declare("rlat", durable=True)  # a's queue
        until(lambda: known(conn_b, "rlat"))
        time.sleep(1.0)  # node b learns where node a listens (its row of nodes, written once a's listener is up)
        return asyncio.run(run(port_a, port_b))


def relayed_pubsub(base: str, lease: str, count: int = 50000, rounds: int = 3) -> tuple[list[float], list[float]]:
    """Persistent pubsub 16 B with confirms, amqpbench, the queue and the publisher on node a: e2e msg/s of each
    round with the consumer on node b (``-C``: relayed to a) and on node a (one node), alternating."""
    from compare import build_amqpbench, parse  # bench/compare.py

    tool = str(build_amqpbench())
    two, one = [], []
    with two_nodes(base, lease) as (_, port_a, port_b):
        time.sleep(1.0)  # node b learns where node a listens
        for _ in range(rounds):
            for extra, into in ((["-C", str(port_b)], two), ([], one)):
                line = subprocess.run([tool, "-p", str(port_a), *extra, "-s", "pubsub", "-m", "persistent",
                                       "-n", str(count), "-S", "16"], capture_output=True, text=True, check=True,
                                      timeout=600).stdout
                into.append(float(parse(line)["e2e_rate"]))
    return two, one


def pubsub(base: str, lease: str, count: int = 50000, rounds: int = 3) -> tuple[list[float], list[float]]:
    """Persistent pubsub 16 B with confirms, amqpbench (bench/amqpbench.c: window 1000, prefetch 1000, acks every
    100), the queue declared on node b and consumed there: e2e msg/s of each round with the publisher on node a
    (every message handed over) and on node b (one node), alternating."""
    from compare import build_amqpbench, parse  # bench/compare.py

    tool = str(build_amqpbench())
    two, one = [], []
    with two_nodes(base, lease) as (_, port_a, port_b):
        for _ in range(rounds):
            for extra, into in ((["-N", str(port_a)], two), ([], one)):
                line = subprocess.run([tool, "-p", str(port_b), *extra, "-s", "pubsub", "-m", "persistent",
                                       "-n", str(count), "-S", "16"], capture_output=True, text=True, check=True,
                                      timeout=600).stdout
                into.append(float(parse(line)["e2e_rate"]))
    return two, one


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    lease = sys.argv[1] if len(sys.argv) > 1 else "15"
    base = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], capture_output=True, text=True,
                          check=True).stdout.strip().rpartition(" ")[2]
    if os.environ.get("CONSUME_ONLY"):
        consume_through(base, lease)
        return
    through, local = latency(base, lease)
    for label, times in (("publish on node a -> delivery on node b (handed over)", through),
                         ("publish on node b -> delivery on node b (one node)", local)):
        print(f"{label}, {len(times)} persistent messages one at a time: p50 {percentile(times, 0.5) * 1000:.1f} ms,"
              f" p99 {percentile(times, 0.99) * 1000:.1f} ms")
    two, one = pubsub(base, lease)
    print(f"persistent pubsub 16 B with confirms, amqpbench, {len(two)} rounds, median e2e: publisher on node a "
          f"(handed over to b) {statistics.median(two):,.0f} msg/s, publisher on node b (one node) "
          f"{statistics.median(one):,.0f} msg/s ({statistics.median(two) / statistics.median(one):.2f}x); rounds "
          f"{[round(r) for r in two]} / {[round(r) for r in one]}")
    if os.environ.get("ROUTING_ONLY"):
        return
    consume_through(base, lease)
    times = propagation(base, lease)
    print(f"queue.declare on node a -> passive declare answers on node b, {len(times)} queues: median "
          f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    print(f"node_lease {lease} s: kill -9 of the owner -> the other node serves its queue after "
          f"{failover(base, lease, stop=False):.2f} s")
    print(f"node_lease {lease} s: SIGTERM of the owner -> the other node serves its queue after "
          f"{failover(base, lease, stop=True):.2f} s")


def consume_through(base: str, lease: str) -> None:
    through, local = relayed_latency(base, lease)
    for label, times in (("publish on node a -> delivery through node b (relayed)", through),
                         ("publish on node a -> delivery on node a (one node)", local)):
        print(f"{label}, {len(times)} persistent messages one at a time: p50 {percentile(times, 0.5) * 1000:.1f} ms,"
              f" p99 {percentile(times, 0.99) * 1000:.1f} ms")
    two, one = relayed_pubsub(base, lease)
    print(f"persistent pubsub 16 B with confirms, amqpbench, {len(two)} rounds, median e2e: consumer on node b "
          f"(relayed to a) {statistics.median(two):,.0f} msg/s, consumer on node a (one node) "
          f"{statistics.median(one):,.0f} msg/s ({statistics.median(two) / statistics.median(one):.2f}x); rounds "
          f"{[round(r) for r in two]} / {[round(r) for r in one]}")


if __name__ == "__main__":
    main()
