#!/usr/bin/env python3
"""The cost of TLS: the same publish-then-consume run over plain AMQP and over AMQPS, on one Leveret.

Starts Leveret (a child process, memory store) with a throw-away CA and server certificate, then for each
transport publishes ``-n`` transient messages of ``-s`` bytes with pika and consumes them back (prefetch 1000,
multiple acks), ``--rounds`` times alternately. Prints messages/s for each phase and the broker's CPU seconds.
The client is pika in one Python process, so the absolute numbers are client-bound; the plain/TLS ratio on the
broker's CPU is the figure to read.

    python bench/tls_bench.py -n 50000 -s 100
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pika

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "integration"), str(HERE.parent / "tests" / "support")]

from test_tls import make_certs  # noqa: E402  (the test suite's certificate maker, on the cryptography package)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(port: int, context: ssl.SSLContext | None, count: int, size: int, pid: int) -> tuple[float, float, float]:
    params = pika.ConnectionParameters("127.0.0.1", port, ssl_options=pika.SSLOptions(context, "localhost")
                                       if context else None, connection_attempts=1)
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    body = b"x" * size
    cpu0 = cpu_seconds(pid)
    start = time.perf_counter()
    for _ in range(count):
        channel.basic_publish("", queue, body)
    connection.process_data_events(0)
    published = time.perf_counter()
    channel.basic_qos(prefetch_count=1000)
    for got, (method, _props, _body) in enumerate(channel.consume(queue, inactivity_timeout=30), 1):
        if method is None:
            raise RuntimeError(f"only {got - 1} of {count} messages came back")
        if got % 500 == 0 or got == count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if got == count:
            break
    done = time.perf_counter()
    cpu = cpu_seconds(pid) - cpu0
    connection.close()
    return count / (published - start), count / (done - published), cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=50_000)
    parser.add_argument("-s", "--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp))
        port, tls_port = free_port(), free_port()
        env = {**os.environ, "LEVERET_STORE": "memory", "LEVERET_HTTP_PORT": "-1",
               "LEVERET_TLS_CERT_FILE": str(certs.server_cert), "LEVERET_TLS_KEY_FILE": str(certs.server_key),
               "LEVERET_TLS_PORT": str(tls_port)}
        broker = subprocess.Popen([sys.executable, "-m", "leveret", "serve", "--port", str(port), "--data-dir",
                                   str(Path(tmp) / "data"), "--log-level", "warning"], env=env)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", tls_port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            context = ssl.create_default_context(cafile=str(certs.ca))
            results: dict[str, list[tuple[float, float, float]]] = {"plain": [], "tls": []}
            for _ in range(args.rounds):
                results["plain"].append(run(port, None, args.count, args.size, broker.pid))
                results["tls"].append(run(tls_port, context, args.count, args.size, broker.pid))
            print(f"{args.count} messages of {args.size} B, {args.rounds} rounds, medians:")
            for name, rows in results.items():
                pub, con, cpu = (statistics.median(column) for column in zip(*rows, strict=True))
                print(f"  {name:5}  publish {pub:8.0f} msg/s  consume {con:8.0f} msg/s  broker CPU {cpu:5.2f} s "
                      f"({cpu / args.count * 1e6:.1f} us/msg)")
        finally:
            broker.terminate()
            broker.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
