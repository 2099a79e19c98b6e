#!/usr/bin/env python3
"""Side-by-side STOMP throughput: Leveret's STOMP listener and RabbitMQ's STOMP plugin measured in one run.

One scenario shape (issue 17): a producer SENDs to /queue/NAME with a receipt on every 100th message and waits
for that receipt before the next 100 (the STOMP counterpart of publisher confirms), while one subscriber
(ack:client-individual, prefetch-count 1000) ACKs every message individually. Producer and subscriber are
separate processes on raw sockets (this file with ``--role``), so neither client library nor GIL is measured.
Each scenario runs against every broker in turn, round-robin, ``--rounds`` times (2 by default, alternating as
bench/compare.py does); prints a raw line per run and a table of medians with the broker's CPU.

    python bench/stomp_compare.py                        # Leveret (started here) vs RabbitMQ's plugin :61613
    python bench/stomp_compare.py --only '16 B' --rounds 3
    python bench/stomp_compare.py --leveret 127.0.0.1:61613:PID   # an already running Leveret

Rates: ``pub_rate`` = messages / (producer start .. last receipt), ``e2e_rate`` = messages / (producer start
.. last message acked by the subscriber). ``broker_cpu`` is the broker process's CPU (user+system) over that
interval in % of one core; ``client_cpu`` the producer's plus the subscriber's, so a run whose generator is the
bottleneck shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare import busy_percent, free_port, pid_listening, wait_port  # noqa: E402  (bench/compare.py)

SCENARIOS = [
    # name, message count, body size, persistent
    ("transient 16 B", 30000, 16, False),
    ("persistent 16 B", 20000, 16, True),
    ("transient 1 KB", 20000, 1024, False),
]
RECEIPT_EVERY = 100
PREFETCH = 1000
TIMEOUT = 120.0  # seconds one run may take before it is given up (a bound, not a claim)


# --- the two clients (subprocesses: python stomp_compare.py --role pub|sub ...) ------------------------------


def stomp_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\x00")
    reply = b""
    while b"\x00" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("connection closed during CONNECT")
        reply += chunk
    if not reply.startswith(b"CONNECTED"):
        raise SystemExit(f"CONNECT refused: {reply!r}")
    return sock


def read_until(sock: socket.socket, buf: bytes, marker: bytes) -> bytes:
    """Receive until ``marker`` is in the buffer; what follows the frame that holds it is returned."""
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"connection closed while waiting for {marker!r}: {buf[-300:]!r}")
        if chunk.startswith(b"ERROR") or b"\x00ERROR" in chunk:
            raise SystemExit(f"ERROR frame: {chunk[:300]!r}")
        buf += chunk
    end = buf.index(b"\x00", buf.index(marker))
    return buf[end + 1 :]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def role_pub(port: int, queue: str, count: int, size: int, persistent: bool) -> None:
    sock = stomp_connect(port)
    body = b"x" * size
    head = f"SEND\ndestination:/queue/{queue}\ncontent-length:{size}\n".encode()
    if persistent:
        head += b"persistent:true\n"
    plain = head + b"\n" + body + b"\x00"
    start = time.time()
    buf = b""
    sent = 0
    while sent < count:
        batch = min(RECEIPT_EVERY, count - sent)
        receipt = f"r{sent + batch}"
        last = head + f"receipt:{receipt}\n\n".encode() + body + b"\x00"
        sock.sendall(plain * (batch - 1) + last)
        sent += batch
        buf = read_until(sock, buf, f"receipt-id:{receipt}\n".encode())
    end = time.time()
    sock.sendall(b"DISCONNECT\n\n\x00")
    sock.close()
    print(json.dumps({"start": start, "end": end, "cpu": cpu_seconds()}), flush=True)


def role_sub(port: int, queue: str, count: int) -> None:
    sock = stomp_connect(port)
    sock.sendall(f"SUBSCRIBE\nid:s\ndestination:/queue/{queue}\nack:client-individual\nprefetch-count:{PREFETCH}\n"
                 f"receipt:subscribed\n\n\x00".encode())
    buf = read_until(sock, b"", b"receipt-id:subscribed\n")
    print("ready", flush=True)
    received = 0
    first = 0.0
    while received < count:
        acks = []
        while True:
            head_end = buf.find(b"\n\n")
            if head_end < 0:
                break
            head = buf[:head_end]
            if not head.lstrip(b"\n").startswith(b"MESSAGE"):
                if head.lstrip(b"\n").startswith(b"ERROR"):
                    raise SystemExit(f"ERROR frame: {buf[:300]!r}")
                nul = buf.find(b"\x00", head_end)
                if nul < 0:
                    break
                buf = buf[nul + 1 :]
                continue
            match = re.search(rb"\ncontent-length:(\d+)", head)
            if match:
                stop = head_end + 2 + int(match.group(1))
                if len(buf) < stop + 1:
                    break
            else:
                stop = buf.find(b"\x00", head_end)
                if stop < 0:
                    break
            ack = re.search(rb"\nack:([^\n]*)", head)
            if ack is None:
                raise SystemExit(f"MESSAGE without an ack header: {head!r}")
            acks.append(b"ACK\nid:" + ack.group(1) + b"\n\n\x00")
            buf = buf[stop + 1 :]
            received += 1
        if acks:
            sock.sendall(b"".join(acks))
        if received >= count:
            break
        chunk = sock.recv(262144)
        if not chunk:
            raise SystemExit(f"connection closed after {received} messages")
        if not first:
            first = time.time()
        buf += chunk
    end = time.time()
    sock.sendall(b"DISCONNECT\nreceipt:bye\n\n\x00")
    read_until(sock, buf, b"receipt-id:bye\n")  # the ACKs were processed before this
    sock.close()
    print(json.dumps({"first": first, "end": end, "cpu": cpu_seconds()}), flush=True)


# --- the driver ---------------------------------------------------------------------------------------------


def proc_cpu(pid: str) -> float:
    """CPU seconds (user + system) of process ``pid`` so far, 0.0 when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: int = 15) -> int:
    """Wait (at most ``limit`` seconds) for the shared machine to be under 25 % busy; the last reading."""
    busy = busy_percent()
    for _ in range(limit):
        if busy <= 25:
            break
        busy = busy_percent()
    return busy


def run_once(port: int, pid: str, count: int, size: int, persistent: bool, queue: str) -> dict[str, str]:
    me = [sys.executable, str(Path(__file__).resolve()), "--role"]
    sub = subprocess.Popen([*me, "sub", "--port", str(port), "--queue", queue, "--count", str(count)],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None
        if sub.stdout.readline().strip() != "ready":
            raise SystemExit("the subscriber did not subscribe")
        cpu0 = proc_cpu(pid)
        pub = subprocess.run([*me, "pub", "--port", str(port), "--queue", queue, "--count", str(count),
                              "--size", str(size), *(["--persistent"] if persistent else [])],
                             capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if pub.returncode != 0:
            raise SystemExit(f"producer failed: {pub.stderr.strip()[-500:]}")
        sub_out, _ = sub.communicate(timeout=TIMEOUT)
        cpu1 = proc_cpu(pid)
        if sub.returncode != 0:
            raise SystemExit(f"subscriber failed (rc={sub.returncode})")
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    p = json.loads(pub.stdout)
    s = json.loads(sub_out)
    wall = s["end"] - p["start"]
    return {"count": str(count), "pub_rate": f"{count / (p['end'] - p['start']):.0f}",
            "e2e_rate": f"{count / wall:.0f}", "seconds": f"{wall:.2f}",
            "broker_cpu": f"{100 * (cpu1 - cpu0) / wall:.0f}%" if pid != "0" else "?",
            "client_cpu": f"{100 * (p['cpu'] + s['cpu']) / wall:.0f}%"}


def delete_queues(amqp_port: int, queues: list[str]) -> None:
    """Delete the durable queues the runs declared on a broker that outlives this script (pika, when there)."""
    try:
        import pika
    except ImportError:
        print(f"pika not installed: delete {len(queues)} queues stomp-bench-* by hand", file=sys.stderr)
        return
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port, heartbeat=0))
    try:
        ch = conn.channel()
        for queue in queues:
            ch.queue_delete(queue)
    finally:
        conn.close()


def start_leveret(data_dir: str) -> tuple[subprocess.Popen[bytes], int]:
    port, stomp_port = free_port(), free_port()
    env = {**os.environ, "LEVERET_HTTP_PORT": "-1"}
    proc = subprocess.Popen([sys.executable, "-m", "leveret", "serve", "--port", str(port), "--stomp-port",
                             str(stomp_port), "--data-dir", data_dir, "--log-level", "warning"], env=env)
    wait_port(stomp_port)
    return proc, stomp_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["pub", "sub"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--persistent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", help="regex over scenario names, e.g. '16 B'")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--leveret", metavar="HOST:PORT:PID", help="an already running Leveret's STOMP port")
    parser.add_argument("--reference", default="127.0.0.1:61613", metavar="HOST:PORT",
                        help="RabbitMQ's STOMP plugin (default 127.0.0.1:61613)")
    parser.add_argument("--reference-amqp-port", type=int, default=5672,
                        help="the reference broker's AMQP port, to delete the benchmark's queues afterwards")
    parser.add_argument("--out", help="append raw lines to this file")
    args = parser.parse_args()

    if args.role == "pub":
        role_pub(args.port, args.queue, args.count, args.size, args.persistent)
        return 0
    if args.role == "sub":
        role_sub(args.port, args.queue, args.count)
        return 0

    proc = None
    tmp = tempfile.mkdtemp(prefix="leveret-stomp-bench-")
    brokers: dict[str, tuple[int, str]] = {}
    if args.leveret:
        _host, port, pid = args.leveret.split(":")
        brokers["leveret"] = (int(port), pid)
    else:
        proc, port = start_leveret(tmp)
        brokers["leveret"] = (port, str(proc.pid))
    ref_port = int(args.reference.rsplit(":", 1)[1])
    brokers["rabbitmq"] = (ref_port, pid_listening(ref_port))

    scenarios = [s for s in SCENARIOS if not args.only or re.search(args.only, s[0])]
    results: dict[tuple[str, str], list[dict[str, str]]] = {}
    declared: list[str] = []  # queues on the reference broker, deleted at the end
    out = open(args.out, "a") if args.out else None  # noqa: SIM115
    try:
        for rnd in range(1, args.rounds + 1):
            for name, count, size, persistent in scenarios:
                count = max(1000, int(count * args.scale))
                for broker, (port, pid) in brokers.items():
                    busy = wait_quiet()
                    queue = f"stomp-bench-{uuid.uuid4().hex[:8]}"
                    if broker == "rabbitmq":
                        declared.append(queue)
                    try:
                        result = run_once(port, pid, count, size, persistent, queue)
                    except (SystemExit, subprocess.TimeoutExpired) as exc:
                        result = {"error": str(exc).replace(" ", "_")[:200]}
                    fields = " ".join(f"{k}={v}" for k, v in result.items())
                    raw = (f"broker={broker} round={rnd} ts={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                           f"scenario={name.replace(' ', '_')} size={size} persistent={str(persistent).lower()} "
                           f"machine_busy_before={busy}% {fields}")
                    print(raw, flush=True)
                    if out:
                        out.write(raw + "\n")
                    if "error" not in result:
                        results.setdefault((name, broker), []).append(result)
    finally:
        if out:
            out.close()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
        if declared:
            delete_queues(args.reference_amqp_port, declared)
    print_table([s[0] for s in scenarios], list(brokers), results)
    return 0


def print_table(scenarios: list[str], names: list[str], results: dict[tuple[str, str], list[dict[str, str]]]) -> None:
    print()
    print("| scenario (receipt every 100, client-individual acks) | "
          + " | ".join(f"{n} e2e /s | {n} publish /s | {n} CPU" for n in names) + " | leveret / rabbitmq |")
    print("|---|" + "---|---|---|" * len(names) + "---|")
    for scenario in scenarios:
        cells = []
        medians: dict[str, float] = {}
        for name in names:
            runs = results.get((scenario, name), [])
            if not runs:
                cells.append("- | - | -")
                continue
            medians[name] = statistics.median(float(r["e2e_rate"]) for r in runs)
            pub = statistics.median(float(r["pub_rate"]) for r in runs)
            cpu = sorted(runs, key=lambda r: float(r["e2e_rate"]))[len(runs) // 2]["broker_cpu"]
            cells.append(f"{medians[name]:,.0f} | {pub:,.0f} | {cpu}")
        ratio = ""
        if medians.get("rabbitmq") and "leveret" in medians:
            ratio = f"{medians['leveret'] / medians['rabbitmq']:.2f}x"
        print(f"| {scenario} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
