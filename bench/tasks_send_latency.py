#!/usr/bin/env python3
"""Where a synchronous ``send()``'s time goes: the same publisher-confirmed publish, one at a time, through each
layer, against one broker. p50 in ms per send, two rounds.

    python bench/tasks_send_latency.py [-n 1000] [--url amqp://...]     # default: a Leveret in a subprocess
    LEVERET_STORE=memory python bench/tasks_send_latency.py             # the same broker without a disk

Rows: ``task.send()`` from a plain thread (the App's loop thread in between); ``send_async`` on the App's own
loop (no thread hop) and from another loop; raw aiormq on uvloop (the client library leveret.tasks uses), and
pika's blocking client (the least client overhead here), each with delivery_mode 2 (what a task message is) and
1 (no disk write on the broker).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import tasks_compare as tc  # noqa: E402

BODY = b'{"payload":{"i":1},"metadata":{}}'


def p50(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] * 1000


async def timed(n: int, send: Any) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await send(i)
        out.append(time.perf_counter() - t)
    return out


async def raw_aiormq(url: str, queue: str, n: int, mode: int) -> list[float]:
    import aiormq

    conn = await aiormq.connect(url)
    channel = await conn.channel(publisher_confirms=True)
    props = aiormq.spec.Basic.Properties(delivery_mode=mode)
    try:
        return await timed(n, lambda i: channel.basic_publish(BODY, routing_key=queue, properties=props))
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--url")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        server, url, _ = tc.start_leveret()
    queue = f"send-latency-{os.getpid()}"
    from leveret.tasks import App
    from leveret.tasks.connection import new_event_loop

    app = App(url, name=queue)
    task = app.task(name="latency.work", queue=queue)(lambda i: None)
    task.send(i=-1)
    rows: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            sync = []
            for i in range(args.n):
                t = time.perf_counter()
                task.send(i=i)
                sync.append(time.perf_counter() - t)
            rows.setdefault("task.send() from a thread", []).append(p50(sync))
            own = app.run_sync(timed(args.n, lambda i: task.send_async(i=i)), 60)  # on the App's loop
            rows.setdefault("task.send_async() on the App's loop", []).append(p50(own))
            other = asyncio.run(timed(args.n, lambda i: task.send_async(i=i)))
            rows.setdefault("task.send_async() from another loop", []).append(p50(other))
            for mode in (2, 1):
                loop = new_event_loop()
                try:
                    raw = loop.run_until_complete(raw_aiormq(url, queue, args.n, mode))
                finally:
                    loop.close()
                rows.setdefault(f"aiormq on uvloop, delivery_mode {mode}", []).append(p50(raw))
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(url))
            channel = conn.channel()
            channel.confirm_delivery()
            for mode in (2, 1):
                props = pika.BasicProperties(delivery_mode=mode)
                lat = []
                for _ in range(args.n):
                    t = time.perf_counter()
                    channel.basic_publish("", queue, BODY, props)
                    lat.append(time.perf_counter() - t)
                rows.setdefault(f"pika (blocking), delivery_mode {mode}", []).append(p50(lat))
            conn.close()
    finally:
        app.close()
        tc.delete_queues(url, [queue, f"{queue}.dead"])
        if server is not None:
            server.terminate()
            server.wait(20)
    print(f"| publish with a confirm, one at a time ({args.n}) | p50 ms, per round |")
    print("|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {' / '.join(f'{v:.3f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
