#!/usr/bin/env python3
"""Where the CPU of a task goes: producer, broker (per thread) and worker, per task, end to end.

    python bench/tasks_cpu.py -n 5000 --libs leveret-batch,leveret-batch-nostatus,dramatiq [--sleep 0.01]

Starts a Leveret in a subprocess (as bench/tasks_compare.py does), and per library and round: one worker
process (the same commands as tasks_compare.py), waits until it consumes, then sends N tasks from this process
(``leveret-batch``: ``app.multicast`` of 100; ``leveret``/``dramatiq``: one by one; ``-nostatus``: the task
with ``status=False``) and reads the CPU time (user + system, /proc) that each process used until the worker
ran the last task. Libraries alternate between rounds. CPU per task is steadier than tasks/s on a shared machine:
compare it within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import tasks_compare as tc  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: str) -> tuple[int, float]:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its descendants (Dramatiq's worker runs in a child process)."""
    children: dict[int, list[tuple[int, float]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent, cpu = _stat(f"/proc/{entry}/stat")
            except OSError:
                continue
            children.setdefault(parent, []).append((int(entry), cpu))

    def walk(pid: int) -> float:
        return sum(cpu + walk(child) for child, cpu in children.get(pid, []))

    return _stat(f"/proc/{root}/stat")[1] + walk(root)


def thread_cpu(pid: int) -> dict[str, float]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out[tid] = _stat(f"/proc/{pid}/task/{tid}/stat")[1]
    return out


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(lib: str, n: int, sleep: float, url: str, broker_pid: int, rnd: int) -> str:
    base = lib.split("-")[0]
    status = "-nostatus" not in lib
    queue = f"cpu-{lib}-{os.getpid()}-{rnd}"
    app, task = tc._define(base, url, queue, status)
    if base == "leveret":
        task.send(i=-1)  # declares the queue; counted by the worker
        m = n - 1
    else:
        app.declare_queue(queue)
        m = n
    env = {**os.environ, "BENCH_LIB": base, "BENCH_URL": url, "BENCH_QUEUE": queue, "BENCH_SLEEP": str(sleep),
           "BENCH_EXPECT": str(n), "BENCH_STATUS": "1" if status else "0",
           "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}"}
    proc = subprocess.Popen(tc.worker_command(base, queue), cwd=HERE, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        tc.wait_consumer(url, queue, proc)
        time.sleep(0.3)
        done = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "BENCH-DONE" in line:
                    done.set()

        threading.Thread(target=read, daemon=True).start()
        b0, w0, p0, t0 = thread_cpu(broker_pid), tree_cpu(proc.pid), own_cpu(), time.time()
        if "-batch" in lib:
            for start in range(0, m, 100):
                app.multicast([task.request(i=i) for i in range(start, min(m, start + 100))])
        else:
            for i in range(m):
                task.send(i=i) if base == "leveret" else task.send(i)
        producer = own_cpu() - p0
        if not done.wait(120):
            raise TimeoutError(f"{lib}: the worker did not finish")
        elapsed = time.time() - t0
        worker, b1 = tree_cpu(proc.pid) - w0, thread_cpu(broker_pid)
    finally:
        proc.terminate()
        proc.wait(30)
        app.close()
        tc.delete_queues(url, tc.queues_of(base, queue))
    threads = sorted((b1[t] - b0.get(t, 0.0) for t in b1), reverse=True)
    broker = sum(threads)
    per = 1e6 / m
    return (f"| {lib} | {m / elapsed:,.0f} | {producer * per:.0f} | {broker * per:.0f} "
            f"({' + '.join(f'{x * per:.0f}' for x in threads[:2])}) | {worker * per:.0f} | "
            f"{(producer + broker + worker) * per:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each task sleeps (default 0)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--libs", default="leveret-batch,leveret-batch-nostatus,dramatiq")
    args = parser.parse_args()
    server, url, data = tc.start_leveret()
    libs = args.libs.split(",")
    print("| library | end-to-end tasks/s | producer µs/task | broker µs/task (two busiest threads) | worker µs/task "
          "| sum µs/task |")
    print("|---|---|---|---|---|---|")
    try:
        for rnd in range(args.rounds):
            for lib in libs if rnd % 2 == 0 else list(reversed(libs)):
                print(run(lib, args.n, args.sleep, url, server.pid, rnd), flush=True)
    finally:
        server.terminate()
        server.wait(20)
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
