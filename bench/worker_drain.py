"""The worker alone: pre-fill a queue with N no-op task messages, then time how fast one worker drains it.

    python bench/worker_drain.py --url amqp://guest:guest@127.0.0.1:5672/ --n 20000 [--system leveret|dramatiq]
        [--concurrency 8] [--sleep 0]

``leveret``: the messages are written with aio-pika in the task wire format (docs/tasks.md), then a
``leveret.tasks.Worker`` runs in this process (on uvloop, as ``leveret worker`` does). ``dramatiq``: the same
number of messages sent with ``actor.send``, then a ``dramatiq.Worker`` with ``--concurrency`` threads. The
clock runs from the worker's start to the last task done. Prints one line: system, n, seconds, tasks/s.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import threading
import time
import uuid

import aio_pika


async def prefill(url: str, queue: str, task: str, n: int, arguments: dict[str, object]) -> None:
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        await channel.declare_queue(f"{queue}.dead", durable=True)
        await channel.declare_queue(queue, durable=True, arguments=arguments)
        pending = []
        for _ in range(n):
            task_id = uuid.uuid4().hex
            body = json.dumps({"payload": {}, "metadata": {"task": task, "id": task_id, "attempt": 0,
                                                          "retry": {"strategy": "ignore"}}}).encode()
            message = aio_pika.Message(body, content_type="application/json", message_id=task_id, type=task,
                                       delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            pending.append(channel.default_exchange.publish(message, routing_key=queue))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await conn.close()


def run_leveret(url: str, n: int, concurrency: int, sleep: float, status: bool, prefetch: int | None) -> float:
    from leveret.tasks import App, Worker
    from leveret.tasks.app import server_product

    queue = f"drain-{uuid.uuid4().hex[:8]}"
    app = App(url, name=queue)
    options = {"status": status} if "status" in inspect.signature(app.task).parameters else {}

    if sleep:
        @app.task(name="drain.sleep", queue=queue, **options)
        def work() -> None:
            time.sleep(sleep)
    else:
        @app.task(name="drain.noop", queue=queue, **options)
        def work() -> None:
            return None

    async def product() -> str:
        conn = await aio_pika.connect(url)
        try:
            return server_product(conn)
        finally:
            await conn.close()

    kind = asyncio.run(product())
    asyncio.run(prefill(url, queue, work.name, n, app.queue_arguments(queue, kind)))
    done = threading.Event()

    def on_event(event: str, worker: Worker) -> None:
        if event == "task_done" and worker.tasks_done >= n:
            done.set()
            worker.request_stop()

    worker = Worker(app, concurrency=concurrency, prefetch=prefetch, on_event=on_event)

    async def main() -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        await worker.run()
        elapsed = time.perf_counter() - t0
        print(f"worker process cpu {time.process_time() - c0:.2f} s in {elapsed:.2f} s")
        return elapsed

    try:
        import uvloop

        elapsed = uvloop.run(main())
    except ImportError:
        elapsed = asyncio.run(main())
    asyncio.run(cleanup(url, queue))
    return elapsed


async def cleanup(url: str, queue: str) -> None:
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        for name in (queue, f"{queue}.dead"):
            await channel.queue_delete(name)
    finally:
        await conn.close()


def run_dramatiq(url: str, n: int, concurrency: int, sleep: float) -> float:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url)
    dramatiq.set_broker(broker)
    queue = f"drain-{uuid.uuid4().hex[:8]}"
    count = [0]
    lock = threading.Lock()
    done = threading.Event()

    @dramatiq.actor(queue_name=queue, max_retries=0)
    def work() -> None:
        if sleep:
            time.sleep(sleep)
        with lock:
            count[0] += 1
            if count[0] >= n:
                done.set()

    for _ in range(n):
        work.send()
    worker = dramatiq.Worker(broker, worker_threads=concurrency)
    t0 = time.perf_counter()
    worker.start()
    done.wait(600)
    elapsed = time.perf_counter() - t0
    worker.stop()
    broker.channel.queue_delete(queue)
    broker.channel.queue_delete(f"{queue}.DQ")
    broker.channel.queue_delete(f"{queue}.XQ")
    broker.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--system", default="leveret", choices=["leveret", "dramatiq"])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each task sleeps (default: no-op)")
    parser.add_argument("--prefetch", type=int, help="leveret: the worker's prefetch (default: its own)")
    parser.add_argument("--no-status", action="store_true", help="leveret: tasks registered with status=False")
    args = parser.parse_args()
    if args.system == "leveret":
        elapsed = run_leveret(args.url, args.n, args.concurrency, args.sleep, not args.no_status, args.prefetch)
    else:
        elapsed = run_dramatiq(args.url, args.n, args.concurrency, args.sleep)
    print(f"{args.system:9s} n={args.n} concurrency={args.concurrency} sleep={args.sleep}: {elapsed:.2f} s, "
          f"{args.n / elapsed:,.0f} tasks/s")


if __name__ == "__main__":
    main()
