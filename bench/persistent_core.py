#!/usr/bin/env python3
"""The persistent path without sockets: the core (sessions, channels, a durable queue, paging) on a real SQLite
store and its writer thread, driven as the AMQP adapter drives it, timed by CPU per message.

No codec, no event loop, no load generator: what is left is what the store port, the store and paging cost
(plus the core's publish/deliver/ack work), measured as process CPU time (both threads) and the writer thread's
share, which moves far less on a shared machine than a rate over sockets does. Two phases, as amqpbench's
backlog scenario: publish N persistent messages with confirms (100 per "read", at most ``--window``
unconfirmed), then drain them (prefetch 1000, ack multiple every 100).

    python bench/persistent_core.py                    # 16 B and 1 KB, 3 rounds, the tree this script is in
    python bench/persistent_core.py --tree ../main     # another tree's leveret (A/B: run both, alternately)
    python bench/persistent_core.py -S 1024 -n 50000 --rounds 5
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run(size: int, n: int, window: int, synchronous: str) -> dict[str, float]:
    from leveret.core import Broker
    from leveret.core.broker import Session
    from leveret.core.message import Message, build_address, build_header
    from leveret.store.sqlite import SqliteStore

    class Sink:
        """What a client would see, counted: the last delivery tag, the last confirmed publish."""

        def __init__(self) -> None:
            self.delivered = 0
            self.last_tag = 0
            self.confirmed = 0
            self.nacks = 0

        def send_deliver(self, channel: int, consumer_tag: bytes, delivery_tag: int, redelivered: bool,
                         address: bytes, header: bytes, body: bytes) -> None:
            if len(body) != size:
                raise AssertionError(f"a delivery of {len(body)} bytes, not {size}")
            self.delivered += 1
            self.last_tag = delivery_tag

        def send_return(self, channel: int, reply_code: int, reply_text: str, msg: Any) -> None:
            raise AssertionError("returned")

        def send_confirm(self, channel: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
            self.confirmed = max(self.confirmed, delivery_tag)
            self.nacks += not ack

        def send_cancel(self, channel: int, consumer_tag: str) -> None:
            raise AssertionError("cancelled")

        def force_close(self, reason: str) -> None:
            raise AssertionError(reason)

    tmp = tempfile.mkdtemp(prefix="leveret-persistent-core-")
    store = SqliteStore(Path(tmp) / "leveret.db", synchronous=synchronous, quick_check=False)
    store.open()
    pending: collections.deque[tuple[Any, tuple[Any, ...]]] = collections.deque()
    wake = threading.Event()

    def dispatch(fn: Any, *args: Any) -> None:  # the writer's callbacks, run on the "loop" (this thread)
        pending.append((fn, args))
        wake.set()

    def run_pending(block: bool) -> None:
        if block and not pending:
            wake.wait(1.0)
        wake.clear()
        while pending:
            fn, args = pending.popleft()
            fn(*args)

    broker = Broker(store=store, dispatch=dispatch)
    sink = Sink()
    session = Session(broker, sink, peer="127.0.0.1:1")
    session.user = broker.authenticate("guest", "guest", True)
    session.open_vhost("/")
    channel = session.open_channel(1)
    channel.select_confirm()
    session.vhost.declare_queue(session, "q", passive=False, durable=True, exclusive=False, auto_delete=False,
                                arguments={}, access=session.access)
    header = build_header({"delivery_mode": 2}, size)
    address = build_address("", "q")
    body = os.urandom(size)
    writer = next(t for t in threading.enumerate() if t.name.startswith("leveret-store-writer"))
    writer_id = writer.native_id

    def writer_cpu() -> float:
        try:
            stat = Path(f"/proc/self/task/{writer_id}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    c0, w0, t0 = time.process_time(), writer_cpu(), time.perf_counter()
    sent = 0
    while sent < n:
        while sent - sink.confirmed >= window:
            run_pending(True)
        for _ in range(min(100, n - sent)):
            channel.publish(Message("", "q", address, header, body), False)
            sent += 1
        session.flush()
        run_pending(False)
    while sink.confirmed < n:
        run_pending(True)
    c1, w1, t1 = time.process_time(), writer_cpu(), time.perf_counter()

    channel.qos(0, 1000, False)
    queue = session.vhost.queue("q", session)
    consumer = channel.consume(queue, "c", no_ack=False, exclusive=False, arguments={})
    queue.add_consumer(consumer)
    acked = 0
    while acked < n:
        if sink.delivered - acked >= 100 or sink.delivered == n > acked:
            acked = sink.delivered
            channel.ack(sink.last_tag, True)
            session.flush()
            run_pending(False)
        else:
            run_pending(True)
    while not broker.durability.idle:  # type: ignore[union-attr]
        run_pending(True)
    c2, w2, t2 = time.process_time(), writer_cpu(), time.perf_counter()
    if sink.nacks or queue.message_count:
        raise AssertionError(f"{sink.nacks} nacks, {queue.message_count} messages left")
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"store": 1e6 * (c1 - c0) / n, "store_writer": 1e6 * (w1 - w0) / n,
            "drain": 1e6 * (c2 - c1) / n, "drain_writer": 1e6 * (w2 - w1) / n,
            "store_rate": n / (t1 - t0), "drain_rate": n / (t2 - t1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-S", "--size", type=int, action="append", help="body size (default: 16 and 1024)")
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=5000, help="unconfirmed publishes at most")
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--tree", type=Path, help="the leveret tree to measure (default: this one)")
    args = parser.parse_args()
    sys.path.insert(0, str((args.tree or HERE.parent).resolve()))
    import leveret

    print(f"leveret from {Path(leveret.__file__).parent}, synchronous={args.synchronous}, n={args.n}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    for size in args.size or [16, 1024]:
        runs = []
        for rnd in range(args.rounds):
            result = run(size, args.n, args.window, args.synchronous)
            runs.append(result)
            print(f"  {size} B round {rnd + 1}: " + " ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{size} B median: CPU us/msg store {med['store']:.2f} (writer {med['store_writer']:.2f}), "
              f"drain {med['drain']:.2f} (writer {med['drain_writer']:.2f}); "
              f"rates {med['store_rate']:,.0f} / {med['drain_rate']:,.0f} msg/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
