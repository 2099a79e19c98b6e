#!/usr/bin/env python3
"""leveret.tasks, Dramatiq and Celery side by side on ONE broker: tasks/s and send() latency.

    python bench/tasks_compare.py                        # starts its own Leveret (subprocess, temp data dir)
    python bench/tasks_compare.py --url amqp://guest:guest@127.0.0.1:5672/   # any broker, e.g. RabbitMQ
    python bench/tasks_compare.py -n 2000 --sleep-n 2000 --rounds 2 --libs leveret,dramatiq,celery

Per library and workload, a fresh queue and one worker process (leveret: ``leveret worker --processes 0
--concurrency 32``; Dramatiq: ``dramatiq --processes 1 --threads 32``; Celery: ``celery worker -P threads -c 32``,
prefetch multiplier 4), and one synchronous producer in this process sending the tasks one after the other
(``leveret-batch``: ``app.multicast`` of 100 at a time; ``leveret-async``: ``send_async`` with 100 in flight;
``leveret-pipeline``: one thread sending through ``app.pipeline(1000)``, each send returning before its confirm;
a ``-nostatus`` suffix, e.g. ``leveret-batch-nostatus``: the task registered with ``status=False``, no events and
no status record).
Workloads: ``noop`` (N no-op tasks) and ``sleep`` (``--sleep-n`` tasks sleeping 10 ms each). Libraries
alternate within each round. Reported per library: enqueue rate (N / time of the send loop), end-to-end rate
(N / time from the first send to the last task done, as the worker process saw it), send() p50/p99.

Each library runs with its defaults: leveret.tasks waits for the publisher confirm of every send(); Dramatiq
(RabbitmqBroker, ``confirm_delivery=False``) and Celery (``confirm_publish`` off) do not.

This file is also the task module of the worker processes (environment BENCH_LIB, BENCH_URL, BENCH_QUEUE,
BENCH_SLEEP, BENCH_EXPECT, BENCH_GAPS): each counts its finished tasks and prints ``BENCH-DONE <epoch>`` at the
last (with ``--gaps``, also ``BENCH-GAPS``: its first task's start, the gaps between two tasks in a thread, how busy
its threads were).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONCURRENCY = 32

# --- the task module (worker processes and the producer import the same definitions) --------------------------

LIB = os.environ.get("BENCH_LIB", "")
URL = os.environ.get("BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
SLEEP = float(os.environ.get("BENCH_SLEEP", "0"))
EXPECT = int(os.environ.get("BENCH_EXPECT", "0"))
_done = 0
_done_lock = threading.Lock()


GAPS = os.environ.get("BENCH_GAPS") == "1"
_marks: list[tuple[int, float, float]] = []  # --gaps: (thread, start, end) of each task


def _work(i: int) -> None:
    global _done
    start = time.time() if GAPS else 0.0
    if SLEEP:
        time.sleep(SLEEP)
    if GAPS and i >= 0:  # not the warm-up task
        _marks.append((threading.get_ident(), start, time.time()))
    with _done_lock:
        _done += 1
        if _done == EXPECT:
            print(f"BENCH-DONE {time.time():.6f}", flush=True)
            if GAPS:
                _print_gaps()


def _print_gaps() -> None:
    """--gaps: when the worker's first task started, the gaps between two tasks in a thread (mean, p50, p90) and
    the fraction of threads x time spent in tasks (low: the worker waited for messages)."""
    by_thread: dict[int, list[tuple[float, float]]] = {}
    for thread, start, end in _marks:
        by_thread.setdefault(thread, []).append((start, end))
    gaps = sorted(b[0] - a[1] for runs in by_thread.values() for a, b in itertools.pairwise(sorted(runs)))
    first = min(m[1] for m in _marks)
    busy = sum(m[2] - m[1] for m in _marks) / (CONCURRENCY * (max(m[2] for m in _marks) - first))
    print(f"BENCH-GAPS {first:.6f} gap mean {statistics.mean(gaps) * 1000:.3f} ms p50 "
          f"{gaps[len(gaps) // 2] * 1000:.3f} p90 {gaps[int(len(gaps) * .9)] * 1000:.3f}, busy {busy:.2f}", flush=True)


def _define(lib: str, url: str, queue: str, status: bool = True) -> Any:
    """The library's app/broker and its task, as the producer and the worker both use them."""
    if lib == "leveret":
        from leveret.tasks import App

        app = App(url, name=queue)
        return app, app.task(name="bench.work", queue=queue, status=status)(_work)
    if lib == "dramatiq":
        import dramatiq
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=url)
        dramatiq.set_broker(broker)
        return broker, dramatiq.actor(_work, actor_name="bench_work", queue_name=queue, max_retries=0)
    if lib == "celery":
        from celery import Celery

        app = Celery("bench", broker=url.replace("amqp://", "pyamqp://", 1))
        app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=4, task_default_queue=queue,
                        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                        worker_redirect_stdouts=False)
        return app, app.task(name="bench.work")(_work)
    raise ValueError(lib)


if LIB:
    lib_app, lib_task = _define(LIB, URL, QUEUE, os.environ.get("BENCH_STATUS", "1") == "1")
    if LIB == "leveret":
        app = lib_app
    elif LIB == "celery":
        celery_app = lib_app


# --- the bench ---------------------------------------------------------------------------------------------


def worker_command(lib: str, queue: str) -> list[str]:
    exe = Path(sys.executable).parent
    if lib == "leveret":
        return [sys.executable, "-m", "leveret", "worker", "tasks_compare:app", "--processes", "0",
                "--concurrency", str(CONCURRENCY), "--log-level", "warning"]
    if lib == "dramatiq":
        return [str(exe / "dramatiq"), "tasks_compare", "--processes", "1", "--threads", str(CONCURRENCY),
                "--queues", queue]
    return [str(exe / "celery"), "-A", "tasks_compare:celery_app", "worker", "-P", "threads", "-c",
            str(CONCURRENCY), "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING"]


def queues_of(lib: str, queue: str) -> list[str]:
    return {"leveret": [queue, f"{queue}.dead"], "dramatiq": [queue, f"{queue}.DQ", f"{queue}.XQ"],
            "celery": [queue]}[lib]


def pika_params(url: str) -> Any:
    import pika

    return pika.URLParameters(url)


def wait_consumer(url: str, queue: str, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    import pika

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode})")
        with contextlib.suppress(pika.exceptions.AMQPError):
            conn = pika.BlockingConnection(pika_params(url))
            try:
                if conn.channel().queue_declare(queue, passive=True).method.consumer_count > 0:
                    return
            except pika.exceptions.ChannelClosedByBroker:
                pass
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
        time.sleep(0.1)
    raise TimeoutError(f"no consumer on {queue} after {timeout} s")


def delete_queues(url: str, queues: list[str]) -> None:
    import pika

    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika_params(url))
        for q in queues:
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(q)
        conn.close()


def run_one(lib: str, workload: str, n: int, url: str, batch: int = 0, worker: bool = True,
            inflight: int = 0, status: bool = True, gaps: bool = False, window: int = 0) -> dict[str, float]:
    queue = f"bench-{lib}-{workload}-{uuid.uuid4().hex[:6]}"
    sleep = 0.01 if workload == "sleep" else 0.0
    env = {**os.environ, "BENCH_LIB": lib, "BENCH_URL": url, "BENCH_QUEUE": queue, "BENCH_SLEEP": str(sleep),
           "BENCH_EXPECT": str(n), "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}", "BENCH_STATUS": "1" if status else "0",
           "BENCH_GAPS": "1" if gaps else "0"}
    state = tempfile.mkdtemp(prefix="bench-state-")
    env["LEVERET_STATE_DIR"] = state
    broker, task = _define(lib, url, queue, status)
    command = worker_command(lib, queue) if worker else [sys.executable, "-c", "import time; time.sleep(600)"]
    proc = subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "BENCH-DONE " in line:
                done.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if lib == "leveret":
            task.send(i=-1)  # declares the queue (the worker does too) and connects; not counted
        elif lib == "dramatiq":
            broker.declare_queue(queue)
        if worker:
            wait_consumer(url, queue, proc)
        warm = 1 if lib == "leveret" else 0  # the warm-up task above is counted by the worker
        send = {"leveret": lambda i: task.send(i=i), "dramatiq": lambda i: task.send(i),
                "celery": lambda i: task.apply_async((i,), queue=queue)}[lib]
        latencies = []
        t0 = time.time()
        if inflight:  # leveret.tasks, pipelined: send_async from coroutines, `inflight` sends awaiting confirms
            import asyncio

            async def pipelined() -> None:
                window = asyncio.Semaphore(inflight)

                async def one(i: int) -> None:
                    async with window:
                        await task.send_async(i=i)

                await asyncio.gather(*(one(i) for i in range(n - warm)))

            t = time.perf_counter()
            asyncio.run(pipelined())
            latencies.extend([(time.perf_counter() - t) / (n - warm)] * (n - warm))
        elif window:  # leveret.tasks, one thread: app.pipeline(window), send() returns before its confirm
            with broker.pipeline(window) as pipe:
                for i in range(n - warm):
                    t = time.perf_counter()
                    pipe.send(task, i=i)
                    latencies.append(time.perf_counter() - t)
        elif batch:  # leveret.tasks, pipelined: app.multicast of `batch` tasks, confirms awaited together
            for start in range(0, n - warm, batch):
                t = time.perf_counter()
                count = min(batch, n - warm - start)
                broker.multicast([task.request(i=i) for i in range(start, start + count)])
                latencies.extend([(time.perf_counter() - t) / count] * count)
        else:
            for i in range(n - warm):
                t = time.perf_counter()
                send(i)
                latencies.append(time.perf_counter() - t)
        t_sent = time.time()
        if not worker:  # --send-only: the producer alone (the tasks stay in the queue, deleted below)
            latencies.sort()
            return {"enqueue": len(latencies) / (t_sent - t0), "e2e": float("nan"),
                    "p50": latencies[len(latencies) // 2] * 1000, "p99": latencies[int(len(latencies) * 0.99)] * 1000}
        if not done.wait(max(120.0, n * 0.05)):
            raise TimeoutError(f"{lib}/{workload}: not done; worker output:\n" + "\n".join(lines[-20:]))
        t_done = float(next(x for x in lines if "BENCH-DONE " in x).split("BENCH-DONE ")[1].split()[0])
        if gaps:
            deadline = time.monotonic() + 10
            while not any("BENCH-GAPS " in x for x in lines) and time.monotonic() < deadline:
                time.sleep(0.05)
            line = next((x for x in lines if "BENCH-GAPS " in x), "")
            if line:
                first, rest = line.split("BENCH-GAPS ")[1].split(" ", 1)
                print(f"  {lib} worker: first task +{(float(first) - t0) * 1000:.0f} ms, all sent +"
                      f"{(t_sent - t0) * 1000:.0f} ms, last done +{(t_done - t0) * 1000:.0f} ms; {rest}", flush=True)
        latencies.sort()
        return {"enqueue": len(latencies) / (t_sent - t0), "e2e": n / (t_done - t0),
                "p50": latencies[len(latencies) // 2] * 1000, "p99": latencies[int(len(latencies) * 0.99)] * 1000}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if lib in ("leveret", "dramatiq"):
            broker.close()
        delete_queues(url, queues_of(lib, queue))
        shutil.rmtree(state, ignore_errors=True)


def start_leveret() -> tuple[subprocess.Popen[str], str, str]:
    data = tempfile.mkdtemp(prefix="bench-leveret-")
    proc = subprocess.Popen([sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir", data,
                             "--log-level", "info"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "LEVERET_HTTP_PORT": "0"})
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    import re

    for line in proc.stdout:
        match = re.search(r"listening for AMQP on [^:]+:(\d+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
            return proc, f"amqp://guest:guest@127.0.0.1:{match.group(1)}/", data
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("leveret did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="the broker (default: start a Leveret in a subprocess)")
    parser.add_argument("-n", type=int, default=2000, help="no-op tasks per run (default 2000)")
    parser.add_argument("--sleep-n", type=int, default=2000, help="10 ms tasks per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--libs", default="leveret,dramatiq,celery",
                        help="also leveret-batch: app.multicast of 100 tasks at a time (pipelined confirms; its "
                             "send() latency is the batch's time / 100); leveret-async: send_async from "
                             "coroutines, 100 in flight (its send() latency is the loop's time / N); "
                             "leveret-pipeline: one thread, app.pipeline(1000)")
    parser.add_argument("--workloads", default="noop,sleep")
    parser.add_argument("--send-only", action="store_true",
                        help="no worker: the producer's send() alone (latency without a worker competing for CPU)")
    parser.add_argument("--gaps", action="store_true",
                        help="the worker also reports when its first task started, the gaps between two tasks in a "
                             "thread and how busy its threads were (low: it waited for messages)")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        server, url, data = start_leveret()
    libs = args.libs.split(",")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for rnd in range(args.rounds):
            order = libs if rnd % 2 == 0 else list(reversed(libs))
            for workload in args.workloads.split(","):
                for lib in order:
                    n = args.n if workload == "noop" else args.sleep_n
                    r = run_one(lib.split("-")[0], workload, n, url, batch=100 if "-batch" in lib else 0,
                                worker=not args.send_only, inflight=100 if "-async" in lib else 0,
                                status="-nostatus" not in lib, gaps=args.gaps,
                                window=1000 if "-pipeline" in lib else 0)
                    results.setdefault((lib, workload), []).append(r)
                    print(f"round {rnd + 1} {workload:5} {lib:8} enqueue {r['enqueue']:8.0f}/s  end-to-end "
                          f"{r['e2e']:8.0f}/s  send p50 {r['p50']:.3f} ms p99 {r['p99']:.3f} ms", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
            shutil.rmtree(data, ignore_errors=True)
    host = urlparse(url)
    print(f"\nbroker {host.hostname}:{host.port}, medians of {args.rounds} round(s)\n")
    print("| workload | library | enqueue tasks/s | end-to-end tasks/s | send() p50 ms | send() p99 ms |")
    print("|---|---|---|---|---|---|")
    for workload in args.workloads.split(","):
        for lib in libs:
            rs = results[(lib, workload)]
            med = {k: statistics.median(r[k] for r in rs) for k in ("enqueue", "e2e", "p50", "p99")}
            label = f"{args.n} no-op" if workload == "noop" else f"{args.sleep_n} x 10 ms, c=32"
            print(f"| {label} | {lib} | {med['enqueue']:,.0f} | {med['e2e']:,.0f} | {med['p50']:.3f} | "
                  f"{med['p99']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
