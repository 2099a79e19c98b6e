"""The cost of transient queues on a cluster node (docs/cluster.md: with ``cluster = true`` a non-durable or
exclusive queue is a shared definition, so its declaration and deletion are each a write to PostgreSQL, logged and
announced to the other nodes). Measures, with pika, against a node of a two-node cluster, a one-node Leveret on the
same PostgreSQL (no cluster: transient queues are not written) and a one-node Leveret on SQLite:

- ``queue.declare`` of a server-named exclusive queue and its ``queue.delete``, one after another on one connection
  (COUNT times, default 200): median and p90 of each, in ms;
- an RPC client's life: connect, declare its exclusive reply queue, close (the queue goes with the connection),
  COUNT / 4 times: median in ms;
- RPC across the two cluster nodes: COUNT calls one after another (the request queue and its server on mq2, the
  client on mq2 or on mq1), with an exclusive reply queue and with direct reply-to: the round trip's median and
  p90.

Usage: python bench/transient_bench.py [COUNT]. Needs the PostgreSQL of scripts/postgres.sh (started if not
running); uses schemas of its own, dropped at the end.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import psycopg
from compare import serve_logged  # bench/compare.py (this script's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]


def start(data: str, **env: str) -> tuple[subprocess.Popen[str], int]:
    return serve_logged(data, env)


def connect(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1))


def ms(values: list[float]) -> str:
    values = sorted(values)
    return f"median {statistics.median(values) * 1000:.2f} ms, p90 {values[int(len(values) * 0.9)] * 1000:.2f} ms"


def measure(port: int, count: int) -> dict[str, str]:
    conn = connect(port)
    ch = conn.channel()
    declares, deletes = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        name = ch.queue_declare("", exclusive=True).method.queue
        t1 = time.perf_counter()
        ch.queue_delete(name)
        deletes.append(time.perf_counter() - t1)
        declares.append(t1 - t0)
    conn.close()
    lives = []
    for _ in range(max(1, count // 4)):
        t0 = time.perf_counter()
        client = connect(port)
        client.channel().queue_declare("", exclusive=True)
        client.close()
        lives.append(time.perf_counter() - t0)
    return {"declare": ms(declares), "delete": ms(deletes), "rpc client life": ms(lives)}


def rpc(client_port: int, server_port: int, reply_to: str, count: int) -> str:
    """``count`` RPC calls one after another from a client on ``client_port`` to a server on ``server_port`` (the
    request queue is the server's node's), with an exclusive reply queue (``reply_to`` "") or direct reply-to."""
    server = connect(server_port)
    sch = server.channel()
    sch.queue_declare("rpc-bench", durable=True)

    def answer(ch: Any, method: Any, props: Any, body: bytes) -> None:
        ch.basic_publish("", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    sch.basic_consume("rpc-bench", answer)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [server.process_data_events(0.01) for _ in iter(stop.is_set, True)])
    thread.start()
    client = connect(client_port)
    ch = client.channel()
    while True:  # the client's node knows the request queue
        try:
            client.channel().queue_declare("rpc-bench", passive=True)
            break
        except pika.exceptions.ChannelClosedByBroker:
            time.sleep(0.05)
    address = reply_to or ch.queue_declare("", exclusive=True).method.queue
    got: list[bytes] = []
    ch.basic_consume(address, lambda c, m, p, body: got.append(body), auto_ack=True)
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        ch.basic_publish("", "rpc-bench", b"%d" % i, pika.BasicProperties(reply_to=address, correlation_id=str(i)))
        while not got:
            client.process_data_events(0.001)
        times.append(time.perf_counter() - t0)
        got.clear()
    client.close()
    stop.set()
    thread.join()
    server.channel().queue_delete("rpc-bench")
    server.close()
    return ms(times)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    found = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "url"], capture_output=True, text=True)
    if found.returncode != 0:
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], check=True)
        found = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "url"], capture_output=True,
                               text=True, check=True)
    server = found.stdout.strip()
    schemas = [f"bench_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    procs: list[subprocess.Popen[str]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cluster = f"{server}?schema={schemas[0]}"
            runs = {}
            ports = []
            for name in ("mq1", "mq2"):
                proc, port = start(f"{tmp}/{name}", LEVERET_STORE=cluster, LEVERET_CLUSTER="true",
                                   LEVERET_NODE_NAME=name)
                procs.append(proc)
                ports.append(port)
            runs["cluster node (2 nodes, PostgreSQL)"] = port
            proc, runs["one node, PostgreSQL"] = start(f"{tmp}/pg", LEVERET_STORE=f"{server}?schema={schemas[1]}")
            procs.append(proc)
            proc, runs["one node, SQLite"] = start(f"{tmp}/sqlite")
            procs.append(proc)
            measure(runs["one node, SQLite"], 20)  # warm up the client side
            for label, port in runs.items():
                print(f"{label}: " + "; ".join(f"{k} {v}" for k, v in measure(port, count).items()), flush=True)
            for reply, how in (("", "exclusive reply queue"), ("amq.rabbitmq.reply-to", "direct reply-to")):
                for client, where in ((ports[1], "client on the server's node"), (ports[0], "client on the other")):
                    print(f"RPC, {how}, {where}: {rpc(client, ports[1], reply, count)}", flush=True)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        with psycopg.connect(server, autocommit=True) as db:
            for schema in schemas:
                db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


if __name__ == "__main__":
    main()
