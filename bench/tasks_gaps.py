#!/usr/bin/env python3
"""Where a sleeping task's cycle goes in one worker: per handler thread, the time in the handler and the gap
between the end of one task and the start of the next (the worker's hand-off), leveret.tasks against Dramatiq.

    python bench/tasks_gaps.py --url amqp://guest:guest@127.0.0.1:5672/ [--system leveret|dramatiq]
        [-n 3000] [--concurrency 32] [--sleep 0.01]

The queue is filled first (as bench/worker_drain.py does), then one worker (in this process: ``leveret.tasks.Worker``
on uvloop, or ``dramatiq.Worker``) drains it; the clock runs from the worker's start to the end of the last task.
Prints tasks/s, the handler's mean time, the gaps (mean, p50, p90, p99) and "busy": the fraction of
threads x time spent in handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker_drain

marks: list[tuple[int, float, float]] = []  # (thread, start, end) of each task


def report(system: str, concurrency: int, t0: float) -> None:
    t1 = max(m[2] for m in marks)
    by_thread: dict[int, list[tuple[float, float]]] = {}
    for thread, start, end in marks:
        by_thread.setdefault(thread, []).append((start, end))
    durations = sorted(end - start for _, start, end in marks)
    gaps: list[float] = []
    for runs in by_thread.values():
        runs.sort()
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(runs)]
    gaps.sort()

    def ms(x: float) -> str:
        return f"{x * 1000:.3f}"

    print(f"{system}: {len(marks)} tasks in {t1 - t0:.3f} s ({len(marks) / (t1 - t0):,.0f}/s), "
          f"{len(by_thread)} threads, handler mean {ms(statistics.mean(durations))} ms, gap mean "
          f"{ms(statistics.mean(gaps))} ms p50 {ms(gaps[len(gaps) // 2])} p90 {ms(gaps[int(len(gaps) * .9)])} "
          f"p99 {ms(gaps[int(len(gaps) * .99)])}, busy {sum(durations) / (concurrency * (t1 - t0)):.2f}")


def run_leveret(url: str, n: int, concurrency: int, sleep: float) -> None:
    from leveret.tasks import App, Worker
    from leveret.tasks.app import server_product

    queue = f"gaps-{uuid.uuid4().hex[:8]}"
    app = App(url, name=queue)

    @app.task(name="gaps.sleep", queue=queue)
    def work() -> None:
        start = time.perf_counter()
        time.sleep(sleep)
        marks.append((threading.get_ident(), start, time.perf_counter()))

    async def product() -> str:
        conn = await aio_pika.connect(url)
        try:
            return server_product(conn)
        finally:
            await conn.close()

    asyncio.run(worker_drain.prefill(url, queue, work.name, n, app.queue_arguments(queue, asyncio.run(product()))))

    def on_event(event: str, worker: Worker) -> None:
        if event == "task_done" and worker.tasks_done >= n:
            worker.request_stop()

    worker = Worker(app, concurrency=concurrency, on_event=on_event)
    t0 = time.perf_counter()
    try:
        import uvloop

        uvloop.run(worker.run())
    except ImportError:
        asyncio.run(worker.run())
    report("leveret", concurrency, t0)
    app.close()
    asyncio.run(worker_drain.cleanup(url, queue))


def run_dramatiq(url: str, n: int, concurrency: int, sleep: float) -> None:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url)
    dramatiq.set_broker(broker)
    queue = f"gaps-{uuid.uuid4().hex[:8]}"
    done = threading.Event()

    @dramatiq.actor(queue_name=queue, max_retries=0)
    def work() -> None:
        start = time.perf_counter()
        time.sleep(sleep)
        marks.append((threading.get_ident(), start, time.perf_counter()))
        if len(marks) >= n:
            done.set()

    for _ in range(n):
        work.send()
    worker = dramatiq.Worker(broker, worker_threads=concurrency)
    t0 = time.perf_counter()
    worker.start()
    done.wait(600)
    report("dramatiq", concurrency, t0)
    worker.stop()
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        broker.channel.queue_delete(name)
    broker.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--system", default="leveret", choices=["leveret", "dramatiq"])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sleep", type=float, default=0.01)
    args = parser.parse_args()
    run = run_leveret if args.system == "leveret" else run_dramatiq
    run(args.url, args.n, args.concurrency, args.sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
