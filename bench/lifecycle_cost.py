#!/usr/bin/env python3
"""What TTL, priorities, dead-letter settings and delays cost: the same transient pubsub (one publisher with
confirms, one no-ack consumer, 16-byte messages) through a plain queue and through queues with lifecycle
features, on one fresh Leveret, reported as rates and as a ratio to the plain queue.

    python bench/lifecycle_cost.py            # 100,000 messages per variant
    python bench/lifecycle_cost.py -n 300000

The load generator is a raw client on Leveret's codec (pre-encoded frames, confirms in windows of 2,000);
its CPU is reported next to the broker's.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leveret.amqp import codec, spec

from rawamqp import RawClient
from serverproc import LeveretProcess

VARIANTS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    # name, queue arguments, message properties, exchange
    ("plain queue", {}, {}, ""),
    ("x-message-ttl 60 s", {"x-message-ttl": 60000}, {}, ""),
    ("per-message expiration", {}, {"expiration": "60000"}, ""),
    ("x-max-priority 10, priority 0-9", {"x-max-priority": 10}, {"priority": None}, ""),
    ("x-max-length 1,000,000 + DLX", {"x-max-length": 1_000_000, "x-dead-letter-exchange": "dlx"}, {}, ""),
    ("delayed exchange, x-delay 1 ms", {}, {"headers": {"x-delay": 1}}, "delayed"),
]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def run_variant(port: int, index: int, args: dict[str, Any], props: dict[str, Any], exchange: str,
                count: int) -> float:
    queue = f"cost-{index}"
    setup = RawClient(port)
    setup.handshake()
    setup.open_channel()
    setup.send_method(1, "queue.declare", 0, queue, False, False, False, True, False, args)
    setup.recv_method()
    if exchange:
        setup.send_method(1, "exchange.declare", 0, exchange, "x-delayed-message", False, False, True, False, False,
                          {"x-delayed-type": "direct"})
        setup.recv_method()
        setup.send_method(1, "queue.bind", 0, queue, exchange, queue, False, {})
        setup.recv_method()
    consumer = RawClient(port, timeout=120)
    consumer.handshake()
    consumer.open_channel()
    consumer.send_method(1, "basic.consume", 0, queue, "c", False, True, False, False, {})
    consumer.recv_method()
    done = threading.Event()

    def consume() -> None:
        seen = 0
        while seen < count:
            frame = consumer.recv_frame()
            if frame is None:
                break
            if frame[0] == spec.FRAME_HEADER:
                seen += 1
        done.set()

    thread = threading.Thread(target=consume, daemon=True)
    publisher = RawClient(port, timeout=120)
    publisher.handshake()
    publisher.open_channel()
    publisher.send_method(1, "confirm.select", False)
    publisher.recv_method()
    encoded = []
    for p in range(10):
        values = {k: (p if k == "priority" else v) for k, v in props.items()}
        encoded.append(codec.encode_properties(values))
    body = b"x" * 16
    thread.start()
    started = time.monotonic()
    sent = confirmed = 0
    while confirmed < count:
        batch = []
        while sent < count and sent - confirmed < 2000:
            batch.append(codec.method_frame(1, spec.method("basic.publish"), (0, exchange, queue, False, False)))
            batch.extend(codec.content_frames(1, encoded[sent % 10], body, 131072))
            sent += 1
        if batch:
            publisher.send(b"".join(batch))
        reply = publisher.recv_method()
        assert reply is not None and reply[1] == "basic.ack", reply
        confirmed = max(confirmed, reply[2][0])
    done.wait(120)
    elapsed = time.monotonic() - started
    for client in (publisher, consumer, setup):
        client.close()
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lv-", dir="/tmp") as tmp:
        server = LeveretProcess(Path(tmp) / "d").start()
        assert server.proc is not None
        rows = []
        try:
            for index, (name, qargs, props, exchange) in enumerate(VARIANTS):
                cpu0 = cpu_seconds(server.proc.pid)
                me0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.monotonic()
                rate = run_variant(server.port, index, qargs, props, exchange, args.count)
                wall = time.monotonic() - t0
                me1 = resource.getrusage(resource.RUSAGE_SELF)
                broker_cpu = (cpu_seconds(server.proc.pid) - cpu0) / wall * 100
                client_cpu = (me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime) / wall * 100
                rows.append((name, rate, broker_cpu, client_cpu))
                print(f"{name}: {rate:,.0f} msg/s (broker CPU {broker_cpu:.0f}%, client CPU {client_cpu:.0f}%)",
                      flush=True)
        finally:
            server.stop()
    base = rows[0][1]
    print("\n| queue | messages/s end to end | vs plain | broker CPU | client CPU |\n|---|---|---|---|---|")
    for name, rate, broker_cpu, client_cpu in rows:
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {broker_cpu:.0f}% | {client_cpu:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
