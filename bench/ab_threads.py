#!/usr/bin/env python3
"""Two (or more) running brokers side by side under one amqpbench scenario, by CPU per message and per thread.

Runs the scenario against each broker in turn, ``--rounds`` times (each round starting with the next broker:
the one run last in a round measured worse here), and reads each broker's CPU from /proc
before and after: the whole process, its main thread (the event loop) and its other threads (the store's
writer, mostly), per message delivered; for a backlog also the store phase (until the last confirm) and the
drain, from amqpbench's ``broker_cpu_s``/``broker_pub_cpu_s``. Prints every run and the medians, with each
broker's difference from the first one. Start the brokers yourself (e.g. main's tree and a branch's, each on a
free port: docs/performance.md "Cuts, measured against main side by side").

    python bench/ab_threads.py --broker main=25101 --broker branch=25102 --rounds 5
        -- -s backlog -m persistent -S 16 -n 100000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import build_amqpbench, parse, pid_listening

KEYS = ("total", "store", "drain", "loop", "others")


def thread_cpu(pid: str) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", action="append", required=True, metavar="NAME=PORT",
                        help="a running broker on 127.0.0.1 (guest/guest); the first is the baseline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="append the raw lines to this file")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="amqpbench options (after --)")
    args = parser.parse_args()
    bench_args = [a for a in args.bench if a != "--"]
    brokers = [spec.split("=", 1) for spec in args.broker]
    amqpbench = build_amqpbench()
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in brokers}
    out = open(args.out, "a") if args.out else None  # noqa: SIM115
    try:
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(brokers)  # each round starts with the next broker: no fixed position
            for name, port in brokers[shift:] + brokers[:shift]:
                pid = pid_listening(int(port))
                before = thread_cpu(pid)
                run = subprocess.run([str(amqpbench), "-p", port, "-B", pid, *bench_args], capture_output=True,
                                     text=True, timeout=600)
                after = thread_cpu(pid)
                values = parse(run.stdout)
                if run.returncode or "broker_cpu_s" not in values:
                    print(f"{name}: amqpbench failed: {run.stdout} {run.stderr}", file=sys.stderr)
                    continue
                total = int(values["n"]) * int(values.get("queues", "1"))
                cpu, pub = float(values["broker_cpu_s"]), float(values["broker_pub_cpu_s"])
                loop = after.get(pid, 0.0) - before.get(pid, 0.0)
                others = sum(after[t] - before.get(t, 0.0) for t in after if t != pid)
                row = {"total": cpu, "store": pub, "drain": cpu - pub, "loop": loop, "others": others}
                row = {k: 1e6 * v / total for k, v in row.items()}
                results[name].append(row)
                line = (f"broker={name} round={rnd} " + " ".join(f"{k}_us={v:.2f}" for k, v in row.items()) + " "
                        + run.stdout.strip())
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
    finally:
        if out:
            out.close()
    base = brokers[0][0]
    print(f"\nmedian broker CPU per message (us), {args.rounds} rounds: {' '.join(bench_args)}")
    print("| broker | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for name, _ in brokers:
        if not results[name]:
            continue
        cells = []
        for key in KEYS:
            value = statistics.median(r[key] for r in results[name])
            ref = statistics.median(r[key] for r in results[base]) if results[base] else 0.0
            change = f" ({100 * (value - ref) / ref:+.0f} %)" if name != base and ref else ""
            cells.append(f"{value:.2f}{change}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
