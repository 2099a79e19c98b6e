#!/usr/bin/env python3
"""Side-by-side benchmark: Leveret and RabbitMQ (or any AMQP 0-9-1 broker) measured in one run.

Builds the neutral C load generator ``amqpbench`` (bench/amqpbench.c, on rabbitmq-c: needs
``apt-get install librabbitmq-dev``), starts a Leveret on a free port (unless ``--leveret-url`` is given),
and runs each scenario against every broker in turn, round-robin, ``--rounds`` times. Prints the raw
lines and a table of medians with Leveret's rate as a ratio of the reference broker's.

    python bench/compare.py                                  # Leveret vs RabbitMQ on 127.0.0.1:5672
    python bench/compare.py --only 'pubsub transient'        # a subset (regex over the scenario line)
    python bench/compare.py --broker other=amqp://u:p@host:5672/  # add or replace brokers by URL
    python bench/compare.py --only 'pubsub transient -S 16' --bench-args=-I  # every message with a message_id

The load generator reports its own CPU (client_cpu) and the broker's (broker_cpu, when the broker's pid is
known), so a run where the generator is the bottleneck shows it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

HERE = Path(__file__).resolve().parent
SCENARIOS = [
    "-s pubsub -m transient -S 16 -n 400000",
    "-s pubsub -m transient -S 1024 -n 300000",
    "-s pubsub -m persistent -S 16 -n 150000",
    "-s pubsub -m persistent -S 1024 -n 100000",
    "-s backlog -m persistent -S 16 -n 150000",
    "-s backlog -m persistent -S 1024 -n 100000",
    "-s fanout -m transient -S 16 -n 150000",
    "-s fanout -m transient -S 1024 -n 100000",
    "-s fanout -m persistent -S 16 -n 50000",
    "-s rpc -S 16 -n 40000",
    "-s rpc -S 1024 -n 40000",
]


def build_amqpbench() -> Path:
    out = HERE / "amqpbench"
    src = HERE / "amqpbench.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src), "-lrabbitmq", "-lpthread"], check=True)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"broker on port {port} did not start")


def start_leveret(data_dir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "LEVERET_HTTP_PORT": "0"}  # no clash with a management plugin on 15672
    proc = subprocess.Popen([sys.executable, "-m", "leveret", "serve", "--port", str(port), "--data-dir", data_dir,
                             "--log-level", "warning"], env=env)
    wait_port(port)
    return proc, port


def serve_logged(data: str, env: dict[str, str], *, cwd: str | None = None, timeout: float = 60.0,
                 log_level: str = "info") -> tuple[subprocess.Popen[str], int]:
    """``leveret serve --port 0`` with ``env`` added to this environment (no management API, no STOMP unless
    ``env`` says), its log in ``<data>.log`` (a file, not a pipe nobody reads: a full pipe would stop the node);
    the process and the AMQP port its log names. A node that does not start is killed and RuntimeError raised."""
    full = {**os.environ, "LEVERET_HTTP_PORT": "-1", "LEVERET_STOMP_PORT": "-1", **env}
    log = Path(data + ".log")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir", data,
                                 "--log-level", log_level], env=full, stdout=out, stderr=subprocess.STDOUT, text=True,
                                cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"listening for AMQP on [^:]+:(\d+)", log.read_text())
        if match:
            return proc, int(match.group(1))
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{data} did not start: {log.read_text()[-2000:]}")


def pid_listening(port: int) -> str:
    """The pid of the process listening on ``port`` (for broker CPU), or "0" when it cannot be told."""
    if shutil.which("ss"):
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
        match = re.search(r"pid=(\d+)", out)
        if match:
            return match.group(1)
    return "0"


def busy_percent() -> int:
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4]

    t1, i1 = sample()
    time.sleep(1)
    t2, i2 = sample()
    return 100 * ((t2 - t1) - (i2 - i1)) // max(1, t2 - t1)


def wait_quiet(seconds: int = 60) -> None:
    for _ in range(seconds):
        if busy_percent() <= 15:
            return
    print("warning: machine still busy, measuring anyway", file=sys.stderr)


def parse(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="regex over scenario lines, e.g. 'pubsub.*transient'")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts (e.g. 0.25 for a quick run)")
    parser.add_argument("--leveret-url", help="use an already running Leveret instead of starting one")
    parser.add_argument("--reference-url", default="amqp://guest:guest@127.0.0.1:5672/",
                        help="the reference broker (default: RabbitMQ on 127.0.0.1:5672)")
    parser.add_argument("--broker", action="append", default=[], metavar="NAME=URL", help="another broker")
    parser.add_argument("--out", help="append raw lines to this file")
    parser.add_argument("--quiet-wait", type=int, default=60, metavar="SECONDS",
                        help="wait up to this long for the machine to go quiet before each run (0: do not wait)")
    parser.add_argument("--bench-args", default="", metavar="ARGS",
                        help="more amqpbench options for every run, e.g. --bench-args=-I (message ids)")
    args = parser.parse_args()

    bench = build_amqpbench()
    proc = None
    brokers: dict[str, tuple[str, str]] = {}
    tmp = tempfile.mkdtemp(prefix="leveret-bench-")
    if args.leveret_url:
        parsed = urlparse(args.leveret_url)
        brokers["leveret"] = (args.leveret_url, pid_listening(parsed.port or 5672))
    else:
        proc, port = start_leveret(tmp)
        brokers["leveret"] = (f"amqp://guest:guest@127.0.0.1:{port}/", str(proc.pid))
    ref = urlparse(args.reference_url)
    brokers["rabbitmq"] = (args.reference_url, pid_listening(ref.port or 5672))
    for spec in args.broker:
        name, url = spec.split("=", 1)
        brokers[name] = (url, pid_listening(urlparse(url).port or 5672))

    scenarios = [s for s in SCENARIOS if not args.only or re.search(args.only, s)]
    results: dict[tuple[str, str], list[dict[str, str]]] = {}
    out = open(args.out, "a") if args.out else None  # noqa: SIM115
    try:
        for rnd in range(1, args.rounds + 1):
            for scenario in scenarios:
                argv = scenario.split()
                if args.scale != 1.0:
                    index = argv.index("-n") + 1
                    argv[index] = str(max(1000, int(int(argv[index]) * args.scale)))
                for name, (url, pid) in brokers.items():
                    u = urlparse(url)
                    vhost = unquote(u.path[1:]) if u.path and u.path != "/" else "/"
                    cmd = [str(bench), "-H", u.hostname or "127.0.0.1", "-p", str(u.port or 5672),
                           "-u", unquote(u.username or "guest"), "-P", unquote(u.password or "guest"),
                           "-V", vhost, "-B", pid, *argv, *args.bench_args.split()]
                    wait_quiet(args.quiet_wait)
                    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                    line = run.stdout.strip() or f"error rc={run.returncode} {run.stderr.strip()}"
                    raw = f"broker={name} round={rnd} ts={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}"
                    print(raw, flush=True)
                    if out:
                        out.write(raw + "\n")
                    if run.returncode == 0:
                        results.setdefault((scenario, name), []).append(parse(line))
    finally:
        if out:
            out.close()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(scenarios, list(brokers), results)
    return 0


def cpu_per_message(run: dict[str, str], key: str) -> tuple[float, float, float] | None:
    """The broker's CPU time per message in microseconds: (whole run, store phase, drain phase), from amqpbench's
    ``broker_cpu_s`` / ``broker_pub_cpu_s`` (CPU seconds, all of the broker's threads) over every message
    delivered (``n`` x ``queues``); the two phases only mean something for a backlog (publish all, then drain;
    each over the ``n`` messages). Older lines without them: ``broker_cpu`` over the rate."""
    try:
        if float(run.get("broker_cpu_s", "-1")) >= 0:
            total = int(run["n"]) * int(run.get("queues", "1"))
            cpu, pub = float(run["broker_cpu_s"]), float(run["broker_pub_cpu_s"])
            return 1e6 * cpu / total, 1e6 * pub / total, 1e6 * (cpu - pub) / total
        percent = float(run["broker_cpu"].rstrip("%"))
        rate = float(run.get(key, 0))
        return (1e4 * percent / rate, 0.0, 0.0) if percent >= 0 and rate else None
    except (KeyError, ValueError):
        return None


def print_table(scenarios: list[str], names: list[str], results: dict[tuple[str, str], list[dict[str, str]]]) -> None:
    print()
    header = "| scenario | " + " | ".join(f"{n} /s" for n in names) + " | ratio leveret/rabbitmq | " + \
        " | ".join(f"{n} CPU" for n in names) + " | " + " | ".join(f"{n} CPU us/msg" for n in names) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    phases: list[str] = []
    for scenario in scenarios:
        key = "rtt_rate" if "rpc" in scenario else "e2e_rate"
        if "backlog" in scenario:
            key = "pub_rate"
        medians: dict[str, float] = {}
        cpus: dict[str, str] = {}
        per_msg: dict[str, str] = {}  # the broker's CPU time per message (median over runs): less noisy than rates
        split: dict[str, str] = {}
        for name in names:
            runs = results.get((scenario, name), [])
            if runs:
                medians[name] = statistics.median(float(r.get(key, 0)) for r in runs)
                cpus[name] = runs[len(runs) // 2].get("broker_cpu", "?")
                costs = [c for c in (cpu_per_message(r, key) for r in runs) if c is not None]
                per_msg[name] = f"{statistics.median(c[0] for c in costs):.2f}" if costs else "-"
                if costs and "backlog" in scenario and any(c[1] for c in costs):
                    split[name] = (f"{statistics.median(c[1] for c in costs):.2f} + "
                                   f"{statistics.median(c[2] for c in costs):.2f}")
        ratio = ""
        if medians.get("rabbitmq") and "leveret" in medians:
            ratio = f"{medians['leveret'] / medians['rabbitmq']:.2f}x"
        cells = " | ".join(f"{medians[n]:,.0f}" if n in medians else "-" for n in names)
        cpu_cells = " | ".join(cpus.get(n, "-") for n in names)
        cost_cells = " | ".join(per_msg.get(n, "-") for n in names)
        print(f"| {scenario} ({key}) | {cells} | {ratio} | {cpu_cells} | {cost_cells} |")
        if split:
            drain = " | ".join(f"{statistics.median(float(r.get('cons_rate', 0)) for r in results[(scenario, n)]):,.0f}"
                               if (scenario, n) in results else "-" for n in names)
            phases.append(f"| {scenario} | {drain} | " + " | ".join(split.get(n, "-") for n in names) + " |")
    if phases:
        print()
        print("| backlog: store, then drain | " + " | ".join(f"{n} drain /s" for n in names) + " | "
              + " | ".join(f"{n} CPU us/msg store + drain" for n in names) + " |")
        print("|" + "---|" * (1 + 2 * len(names)))
        for line in phases:
            print(line)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
