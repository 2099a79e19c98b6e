"""What an outbox send costs on this disk: fsync itself, then Outbox.send latency (mean, p50, p99) and rate
for 1, 4 and 16 sending threads with synchronous=FULL and NORMAL. Optionally, the forwarder's rate into a
broker (``--broker URL``: a running Leveret or RabbitMQ).

    .venv/bin/python bench/outbox_bench.py [--dir DIR] [--sends 4000] [--body 200] [--broker amqp://...]

The files go to a temporary directory under --dir (default: the current directory, so that it measures the
disk the project is on, not a tmpfs /tmp).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leveret.outbox import Forwarder, Outbox


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    samples = sorted(samples)
    return (statistics.fmean(samples), samples[len(samples) // 2], samples[min(len(samples) - 1,
                                                                              int(len(samples) * 0.99))])


def bench_fsync(directory: Path, rounds: int = 500) -> None:
    path = directory / "fsync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)):
            times = []
            for _ in range(rounds):
                os.write(fd, b"x" * 4096)
                start = time.perf_counter()
                sync(fd)
                times.append(time.perf_counter() - start)
            mean, p50, p99 = percentiles(times)
            print(f"{name:9} after a 4 KB append: mean {mean * 1e3:.3f} ms  p50 {p50 * 1e3:.3f} ms  "
                  f"p99 {p99 * 1e3:.3f} ms")
    finally:
        os.close(fd)
        path.unlink()


def bench_send(directory: Path, synchronous: str, threads: int, sends: int, body: bytes) -> None:
    path = directory / f"outbox-{synchronous}-{threads}.db"
    outbox = Outbox(path, synchronous=synchronous)
    per_thread = sends // threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def sender(n: int) -> None:
        mine = latencies[n]
        barrier.wait()
        for _ in range(per_thread):
            start = time.perf_counter()
            outbox.send("", "bench", body)
            mine.append(time.perf_counter() - start)

    workers = [threading.Thread(target=sender, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    commits = outbox.commits
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    commits = outbox.commits - commits
    outbox.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    total = per_thread * threads
    mean, p50, p99 = percentiles([x for lat in latencies for x in lat])
    print(f"{synchronous:6} {threads:2} thread(s): send mean {mean * 1e3:6.3f} ms  p50 {p50 * 1e3:6.3f} ms  "
          f"p99 {p99 * 1e3:6.3f} ms  | {total / elapsed:7.0f} sends/s = {elapsed / total * 1e6:5.0f} us/send  "
          f"| {total / max(commits, 1):5.1f} sends/commit")


def bench_forward(directory: Path, broker: str, sends: int, body: bytes) -> None:
    path = directory / "forward.db"
    queue = f"outbox-bench-{os.getpid()}"
    with Outbox(path, synchronous="NORMAL") as outbox:
        outbox.send_many([{"exchange": "", "routing_key": queue, "body": body, "mandatory": False}
                          for _ in range(sends)])

    async def run() -> float:
        import aio_pika

        conn = await aio_pika.connect(broker)
        ch = await conn.channel()
        q = await ch.declare_queue(queue, durable=True)
        with Outbox(path) as outbox:
            forwarder = Forwarder(outbox, [broker], report_interval=3600)
            start = time.perf_counter()
            task = asyncio.ensure_future(forwarder.run())
            while await asyncio.to_thread(outbox.count):
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
            forwarder.request_stop()
            await task
        await q.delete(if_unused=False, if_empty=False)
        await conn.close()
        return elapsed

    elapsed = asyncio.run(run())
    print(f"forwarder: {sends} messages of {len(body)} B published and confirmed in {elapsed:.2f} s "
          f"= {sends / elapsed:.0f} msg/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=".", help="where to put the temporary files (default: .)")
    parser.add_argument("--sends", type=int, default=4000, help="sends per configuration (default 4000)")
    parser.add_argument("--body", type=int, default=200, help="body size in bytes (default 200)")
    parser.add_argument("--threads", default="1,4,16", help="thread counts (default 1,4,16)")
    parser.add_argument("--broker", help="also measure the forwarder into this broker URL")
    args = parser.parse_args()
    body = b"x" * args.body
    with tempfile.TemporaryDirectory(prefix="outbox-bench-", dir=args.dir) as tmp:
        directory = Path(tmp)
        print(f"disk of {directory.resolve()}, {args.sends} sends of {args.body} B per line")
        bench_fsync(directory)
        for synchronous in ("FULL", "NORMAL"):
            for threads in (int(t) for t in args.threads.split(",")):
                bench_send(directory, synchronous, threads, args.sends, body)
        if args.broker:
            bench_forward(directory, args.broker, args.sends * 5, body)


if __name__ == "__main__":
    main()
