#!/usr/bin/env python3
"""Many pending delayed messages: publish N persistent messages (default 200,000 of 100 B) with random x-delay
into a durable x-delayed-message exchange of a fresh Leveret (with confirms), report the broker's RSS while
they wait (only a window of them is in memory, the rest on disk), optionally restart it (--restart), then
consume them as they come due and report how late they arrived (as the broker saw it and as the consumer did),
whether any came early and whether they came in due order. The broker runs in this process (so that its
in-memory count can be read), the clients in child processes.

    python bench/delayed_bench.py                       # 200,000, due 20 to 30 s after publishing starts
    python bench/delayed_bench.py -n 50000 --base 8 --spread 5 --restart

The broker's lateness is its own (due time to routing, ``broker.delays.lateness``); the client's is measured
from its send time + x-delay, so it includes the client, network and queueing time. The broker stamps due times
on arrival, so the client knows each one within [send time, confirm time] + x-delay: "early" is before the
first, "out of due order" a message delivered after one whose due time was certainly later. The clients are
small raw AMQP clients on Leveret's own codec, so that the broker sets the pace.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import random
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leveret.amqp import codec, spec
from leveret.config import Config
from leveret.core.delay_lanes import DELAYED_PREFIX
from leveret.node import ThreadedServer

from rawamqp import RawClient

EXCHANGE, QUEUE = "delayed-bench", "delayed-bench"


def rss_mib(pid: int | str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


def setup(port: int) -> None:
    client = RawClient(port, timeout=120)
    client.handshake()
    client.open_channel()
    client.send_method(1, "exchange.declare", 0, EXCHANGE, "x-delayed-message", False, True, False, False, False,
                       {"x-delayed-type": "direct"})
    client.recv_method()
    client.send_method(1, "queue.declare", 0, QUEUE, False, True, False, False, False, {})
    client.recv_method()
    client.send_method(1, "queue.bind", 0, QUEUE, EXCHANGE, "k", False, {})
    client.recv_method()
    client.close()


def publish(port: int, count: int, size: int, base_ms: int, spread_ms: int, window: int = 500
            ) -> tuple[float, list[tuple[float, float]]]:
    """Publish with confirms in windows. Returns the time it took and, for each message, the bounds of its due
    time: the broker counts the delay from when it reads the publish, which is after this client sent it and
    before its confirm came back."""
    client = RawClient(port, timeout=120)
    client.handshake()
    client.open_channel()
    client.send_method(1, "confirm.select", False)
    client.recv_method()
    rng = random.Random(42)
    method = codec.method_frame(1, spec.method("basic.publish"), (0, EXCHANGE, "k", False, False))
    delays = [base_ms + rng.randrange(spread_ms) for _ in range(count)]
    bounds: list[tuple[float, float]] = []
    started = time.monotonic()
    sent = confirmed = 0
    while confirmed < count:
        batch = []
        while sent < count and sent - confirmed < window:
            props = codec.encode_properties({"delivery_mode": 2, "headers": {"x-delay": delays[sent]}})
            batch.append(method)
            batch.extend(codec.content_frames(1, props, struct.pack(">Q", sent).ljust(size, b"x"), 131072))
            bounds.append((time.time() + delays[sent] / 1000, 0.0))
            sent += 1
        if batch:
            client.send(b"".join(batch))
        reply = client.recv_method()
        assert reply is not None and reply[1] == "basic.ack", reply
        upto = reply[2][0] if reply[2][1] else max(confirmed, reply[2][0])
        now = time.time()
        for i in range(confirmed, upto):
            bounds[i] = (bounds[i][0], now + delays[i] / 1000)
        confirmed = upto
    elapsed = time.monotonic() - started
    client.close()
    return elapsed, bounds


def consume(port: int, count: int, timeout: float) -> list[tuple[int, float]]:
    """(index, received) for each message, in arrival order."""
    client = RawClient(port, timeout=timeout)
    client.handshake()
    client.open_channel()
    client.send_method(1, "basic.qos", 0, 5000, False)
    client.recv_method()
    client.send_method(1, "basic.consume", 0, QUEUE, "c", False, False, False, False, {})
    client.recv_method()
    got: list[tuple[int, float]] = []
    tag = 0
    while len(got) < count:
        frame = client.recv_frame()
        assert frame is not None, f"timed out after {len(got)} messages"
        ftype, _channel, payload = frame
        if ftype == spec.FRAME_METHOD:
            method, args = codec.decode_method_payload(payload)
            if method.full_name == "basic.deliver":
                tag = args[1]
        elif ftype == spec.FRAME_BODY:
            (index,) = struct.unpack_from(">Q", payload)
            got.append((index, time.time()))
            if len(got) % 500 == 0 or len(got) == count:
                client.send_method(1, "basic.ack", tag, True)
    client.close()
    return got


def sample(server: ThreadedServer, peak: list[int], stop: threading.Event) -> None:
    """Track the largest number of delayed messages the broker holds in memory."""
    while not stop.is_set():
        peak[0] = max(peak[0], cast(int, server.call(lambda: server.broker.delays.in_memory)))
        stop.wait(0.1)


def child(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *map(str, args)], stdout=subprocess.PIPE, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=200_000)
    parser.add_argument("-s", "--size", type=int, default=100)
    parser.add_argument("--base", type=float, default=20.0, help="shortest delay, seconds")
    parser.add_argument("--spread", type=float, default=10.0, help="delays are base to base + spread seconds")
    parser.add_argument("--restart", action="store_true", help="stop and restart the broker while they wait")
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:  # the clients run in child processes, so as not to share this interpreter with the broker
        role, port, count = args.client[0], int(args.client[1]), int(args.client[2])
        if role == "publish":
            print(json.dumps(publish(port, count, args.size, int(args.base * 1000), int(args.spread * 1000))))
        else:
            print(json.dumps(consume(port, count, timeout=args.base + args.spread + 120)))
        return 0
    data = Path(tempfile.mkdtemp(prefix="leveret-delayed-")) / "data"
    config = Config(port=0, data_dir=str(data), log_level="warning")
    server = ThreadedServer(config).start()
    fresh = rss_mib("self")
    print(f"fresh broker RSS: {fresh:.0f} MiB (broker in this process; clients in child processes)")
    setup(server.port)
    peak = [0]
    stop = threading.Event()
    threading.Thread(target=sample, args=(server, peak, stop), daemon=True).start()
    first_due = time.time() + args.base
    publisher = child("--client", "publish", server.port, args.count, "-s", args.size, "--base", args.base,
                      "--spread", args.spread)
    out, _ = publisher.communicate()
    holding = rss_mib("self")  # before reading the publisher's report (it is big)
    took, bounds = json.loads(out)
    print(f"published {args.count:,} x {args.size} B persistent delayed messages with confirms in {took:.1f} s "
          f"({args.count / took:,.0f}/s)")

    def state() -> str:
        delays = server.broker.delays
        assert server.broker.durability is not None
        stored = server.broker.durability.store.message_counts().get(("/", DELAYED_PREFIX + EXCHANGE), 0)
        return (f"pending {delays.pending:,}, in memory {delays.in_memory:,} "
                f"({(delays.resident_bytes + delays.transient_bytes) / 2**20:.1f} MiB of bodies), stored {stored:,}")

    print(f"while they wait: {server.call(state)}; peak in memory {peak[0]:,}")
    print(f"broker RSS holding them: {holding:.0f} MiB (+{holding - fresh:.0f} MiB, "
          f"{(holding - fresh) * 2**20 / args.count:.0f} B per pending message)")
    if time.time() > first_due:
        print("warning: publishing took longer than --base: some were due before it finished")
    if args.restart:
        stop.set()
        server.stop()
        started = time.monotonic()
        server = ThreadedServer(dataclasses.replace(config, port=0)).start()
        print(f"restarted in {time.monotonic() - started:.1f} s: {server.call(state)}; RSS {rss_mib('self'):.0f} MiB")
        stop = threading.Event()
        threading.Thread(target=sample, args=(server, peak, stop), daemon=True).start()
    server.call(lambda: setattr(server.broker.delays, "lateness", collections.deque()))
    consumer = child("--client", "consume", server.port, args.count, "--base", args.base, "--spread", args.spread)
    out, _ = consumer.communicate()
    got: list[tuple[int, float]] = [(index, received) for index, received in json.loads(out)]
    stop.set()
    broker_late = sorted(cast(list[float], server.call(lambda: list(server.broker.delays.lateness))))
    print(f"after delivering them: {server.call(state)}; peak in memory {peak[0]:,}; RSS {rss_mib('self'):.0f} MiB")
    server.stop()
    indexes = sorted(index for index, _ in got)
    assert indexes == list(range(args.count)), "lost or duplicated messages"
    # the client knows each due time within [sent + delay, confirmed + delay]: lateness from the earliest
    client_late = sorted((received - bounds[index][0]) * 1000 for index, received in got)
    early = sum(1 for x in client_late if x < -2)
    # out of order: a message came before one that was certainly due earlier (beyond the 1 ms resolution)
    inversions = sum(1 for (a, _), (b, _) in itertools.pairwise(got) if bounds[b][1] < bounds[a][0] - 0.001)
    for name, lateness in (("broker", broker_late), ("client (upper bound)", client_late)):
        pct = [lateness[min(len(lateness) - 1, int(len(lateness) * q))] for q in (0.5, 0.9, 0.99, 0.999)]
        print(f"{name} lateness (ms): p50 {pct[0]:.1f}  p90 {pct[1]:.1f}  p99 {pct[2]:.1f}  p99.9 {pct[3]:.1f}  "
              f"max {lateness[-1]:.1f}  mean {statistics.fmean(lateness):.1f}")
    print(f"early (> 2 ms before due): {early}; out of due order: {inversions}")
    return 0 if not early and not inversions else 1


if __name__ == "__main__":
    socket.setdefaulttimeout(180)
    sys.exit(main())
