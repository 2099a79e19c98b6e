"""Two Leveret nodes on one PostgreSQL schema (``cluster = true``, docs/cluster.md): how long a definition takes to
reach the other node, and how long the other node takes to serve a queue after its owner is killed (kill -9) or
stopped.

Usage: python bench/cluster_bench.py [NODE_LEASE]   (default 15 s, the setting's default). Needs the PostgreSQL of
scripts/postgres.sh (started if not running); uses a schema of its own, dropped at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import psycopg

ROOT = Path(__file__).resolve().parents[1]
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def start(url: str, name: str, data: str, lease: str) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, LEVERET_STORE=url, LEVERET_CLUSTER="true", LEVERET_NODE_NAME=name,
               LEVERET_NODE_LEASE=lease, LEVERET_HTTP_PORT="-1", LEVERET_STOMP_PORT="-1")
    log = Path(data + ".log")
    with log.open("w") as out:  # a file, not a pipe nobody reads (a full pipe would stop the node)
        proc = subprocess.Popen([sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir", data],
                                env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"listening for AMQP on [^:]+:(\d+)", log.read_text())
        if match:
            return proc, int(match.group(1))
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")


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


def main() -> None:
    lease = sys.argv[1] if len(sys.argv) > 1 else "15"
    base = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], capture_output=True, text=True,
                          check=True).stdout.strip().rpartition(" ")[2]
    times = propagation(base, lease)
    print(f"queue.declare on node a -> passive declare answers on node b, {len(times)} queues: median "
          f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    print(f"node_lease {lease} s: kill -9 of the owner -> the other node serves its queue after "
          f"{failover(base, lease, stop=False):.2f} s")
    print(f"node_lease {lease} s: SIGTERM of the owner -> the other node serves its queue after "
          f"{failover(base, lease, stop=True):.2f} s")


if __name__ == "__main__":
    main()
