"""Start time and idle memory of `leveret serve`, over several fresh starts (docs/performance.md).

Each start: a fresh data directory, `leveret serve` with the default settings (SQLite store, management HTTP on,
STOMP on; HTTP and STOMP on ephemeral ports, AMQP on a free port picked here), then
- start time: from the spawn until the broker answers an AMQP protocol header (the 7-byte header of
  connection.start) on a raw socket, polled every 5 ms, and the CPU time the broker had used by then (user +
  system, 10 ms ticks: what the start costs whatever the machine's load);
- idle memory: ``--idle`` seconds later (no client connected; the probe's socket is closed), the process's
  /proc/PID/smaps_rollup: RSS, of which anonymous (the heap, Python's objects and code) and file-backed (shared
  libraries and mapped files), and its thread count.

Usage: python bench/start_time.py [--starts 5] [--idle 2] [--http-port 0] [--stomp-port 0] [--no-compile]
(--http-port -1 / --stomp-port -1: off). The environment passes through (e.g. MALLOC_ARENA_MAX=2).

Before the starts, leveret's modules are byte-compiled (compileall), as `pip install .` does: an editable
install run with PYTHONDONTWRITEBYTECODE=1 would otherwise compile ~90 modules from source at every start
(~0.1 s of CPU); --no-compile measures that case.
"""

from __future__ import annotations

import argparse
import compileall
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEVERET = Path(sys.executable).with_name("leveret")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        return len(sock.recv(7)) == 7  # the connection.start frame's header


def memory(pid: int) -> dict[str, float]:
    """RSS, anonymous and file-backed resident memory in MiB, and the number of threads."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return {"rss": fields["Rss"], "anon": fields["Anonymous"], "file": fields["Rss"] - fields["Anonymous"],
            "threads": threads}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_start(args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    port = free_port()
    env = dict(os.environ, LEVERET_HTTP_PORT=str(args.http_port))
    with tempfile.TemporaryDirectory() as data:
        started = time.perf_counter()
        proc = subprocess.Popen([str(LEVERET), "serve", "--port", str(port), "--stomp-port", str(args.stomp_port),
                                 "--data-dir", data], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = started + 30
            while time.perf_counter() < deadline:
                try:
                    if answers(port):
                        break
                except OSError:
                    time.sleep(0.005)
            else:
                raise SystemExit("the broker did not answer within 30 s")
            took = time.perf_counter() - started
            cpu = cpu_seconds(proc.pid)
            time.sleep(args.idle)
            return took, {**memory(proc.pid), "cpu": cpu}
        finally:
            proc.terminate()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds after the start before reading the memory")
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--stomp-port", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true", help="leave leveret's modules as they are")
    args = parser.parse_args()
    if not args.no_compile:
        import leveret

        compileall.compile_dir(Path(leveret.__file__).parent, quiet=1)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    times, samples = [], []
    for _ in range(args.starts):
        took, mem = one_start(args)
        times.append(took)
        samples.append(mem)
        print(f"start {took:.3f} s (CPU {mem['cpu']:.2f} s)  RSS {mem['rss']:.1f} MiB (anonymous {mem['anon']:.1f}, "
              f"file-backed {mem['file']:.1f})  threads {mem['threads']:.0f}")
    median = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    print(f"median: start {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}; CPU "
          f"{median['cpu']:.2f} s)  "
          f"RSS {median['rss']:.1f} MiB (anonymous {median['anon']:.1f}, file-backed {median['file']:.1f})  "
          f"threads {median['threads']:.0f}")


if __name__ == "__main__":
    main()
