#!/usr/bin/env python3
"""Where a Leveret broker's time goes under one amqpbench scenario: py-spy samples, summarised.

Starts a Leveret on a free port (its own temporary data directory), attaches ``py-spy record -f raw`` to it,
runs one scenario of the neutral C load generator (bench/amqpbench, built as bench/compare.py builds it), and
prints the top functions by self time and by inclusive time, per thread group (the event loop and the store's
writer thread), with the rate, the broker's CPU and its CPU per message.

    pip install py-spy
    python bench/profile_broker.py -s pubsub -m persistent -S 16 -n 100000
    python bench/profile_broker.py --url amqp://guest:guest@127.0.0.1:PORT/ --pid PID -s rpc -n 20000
    python bench/profile_broker.py --raw /tmp/prof.txt -s fanout -n 50000    # keep py-spy's raw stacks

py-spy needs ptrace rights over the broker (it is our own child here; run as root or with
kernel.yama.ptrace_scope=0 otherwise). Sampling slows the broker by a few per cent; compare rates without it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import build_amqpbench, free_port, wait_port  # noqa: E402

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)`` (lines pooled per function)."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    marker = "leveret/"
    name = path[path.rfind(marker) + len(marker):] if marker in path else Path(path).name
    return f"{match.group('func')} ({name})"


def summarise(raw: str, top: int) -> str:
    """py-spy ``-f raw`` output (``thread;frame;frame count`` per line) -> self and inclusive tables."""
    self_time: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl_time: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0]  # "thread (tid): name"; the store's writer thread is "leveret-store-writer ..."
        writer = "writer" in thread or any("sqlite_writer" in f for f in frames[1:6])
        group = "writer thread" if writer else "event loop"
        funcs = [_short(f) for f in frames[1:]]
        if not funcs:
            continue
        totals[group] += count
        self_time[group][funcs[-1]] += count
        for func in set(funcs):
            incl_time[group][func] += count
    lines = []
    for group in sorted(totals, key=lambda g: -totals[g]):
        total = totals[group]
        lines.append(f"\n== {group}: {total} samples ==")
        lines.append("  self %  function")
        for func, n in self_time[group].most_common(top):
            lines.append(f"  {100 * n / total:5.1f}  {func}")
        lines.append("  incl %  function")
        for func, n in incl_time[group].most_common(top + 8):
            lines.append(f"  {100 * n / total:5.1f}  {func}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="profile an already running Leveret (with --pid) instead of starting one")
    parser.add_argument("--pid", type=int, help="the pid of the broker at --url")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (200)")
    parser.add_argument("--top", type=int, default=18, help="lines per table (18)")
    parser.add_argument("--raw", help="also keep py-spy's raw stacks in this file")
    parser.add_argument("--serve-args", default="", help="more `leveret serve` options for the broker we start")
    args, bench_args = parser.parse_known_args()
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    bench = build_amqpbench()

    tmp = tempfile.mkdtemp(prefix="leveret-profile-")
    proc = None
    try:
        if args.url:
            if not args.pid:
                raise SystemExit("--url needs --pid")
            url, pid = urlparse(args.url), args.pid
            host, port = url.hostname or "127.0.0.1", url.port or 5672
        else:
            port = free_port()
            env = {**os.environ, "LEVERET_HTTP_PORT": "0", "LEVERET_STOMP_PORT": "-1"}
            proc = subprocess.Popen([sys.executable, "-m", "leveret", "serve", "--port", str(port), "--data-dir",
                                     tmp, "--log-level", "warning", *args.serve_args.split()], env=env)
            wait_port(port)
            host, pid = "127.0.0.1", proc.pid
        raw_path = args.raw or os.path.join(tmp, "pyspy.txt")
        spy = subprocess.Popen([pyspy, "record", "-p", str(pid), "-f", "raw", "-r", str(args.rate), "--threads",
                                "-o", raw_path, "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attaches
        run = subprocess.run([str(bench), "-H", host, "-p", str(port), "-B", str(pid), *bench_args],
                             capture_output=True, text=True, timeout=600)
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        line = run.stdout.strip()
        print(line or f"amqpbench failed rc={run.returncode}: {run.stderr.strip()}")
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        rate_key = "rtt_rate" if "rtt_rate" in fields else ("pub_rate" if "-s backlog" in " ".join(bench_args)
                                                            else "e2e_rate")
        try:
            rate = float(fields[rate_key])
            cpu = float(fields["broker_cpu"].rstrip("%")) / 100
            print(f"broker CPU per message: {1e6 * cpu / rate:.2f} us ({rate_key}={rate:.0f}, broker_cpu={cpu:.0%},"
                  f" with py-spy sampling)")
        except (KeyError, ValueError):
            pass
        if not os.path.exists(raw_path):
            print(f"py-spy wrote nothing: {err.decode(errors='replace').strip()}")
            return 1
        print(summarise(Path(raw_path).read_text(), args.top))
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
