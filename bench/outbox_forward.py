"""The forwarder's rate into one destination: N messages saved in an outbox beforehand, then the time from the
forwarder's start until the outbox is empty (every message published, confirmed by the broker and deleted).

    .venv/bin/python bench/outbox_forward.py [--messages 50000] [--body 200] [--window 1024] [--broker URL]
                                             [--postgres postgresql://...] [--dedup] [--transport amqp|stomp]
                                             [--stomp-url stomp://...]

Without ``--broker`` it starts its own Leveret (``python -m leveret serve`` on a free port, a temporary data
directory, killed at the end). ``--transport stomp`` forwards through STOMP SENDs with receipts (the started
Leveret's STOMP port, or ``--stomp-url``, by default ``stomp://guest:guest@<the broker's host>:61613/``); the
queue is declared and counted through AMQP (``--broker``) either way. The queue is durable and the messages
persistent, as the outbox sends them.
Prints the rate and the forwarder's counters. Use ``--runs`` for several rounds (the machine is noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika

from leveret.outbox import Forwarder, open_outbox


def start_leveret(data_dir: Path) -> tuple[subprocess.Popen[str], int, int]:
    env = {**os.environ, "LEVERET_HTTP_PORT": "0", "LEVERET_STOMP_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir", str(data_dir),
                             "--log-level", "info"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    port: list[int] = []
    stomp: list[int] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"listening for STOMP on [^:]+:(\d+)", line)  # logged before AMQP's line
            if found:
                stomp.append(int(found.group(1)))
            match = re.search(r"listening for AMQP on [^:]+:(\d+)", line)
            if match:
                port.append(int(match.group(1)))
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30):
        proc.kill()
        raise SystemExit("leveret did not start")
    return proc, port[0], stomp[0] if stomp else -1


async def forward(path: str, broker: str, messages: int, body: bytes, window: int,
                  dedup: bool = False, via: str | None = None) -> tuple[float, float]:
    queue = f"outbox-forward-bench-{os.getpid()}"
    conn = await aio_pika.connect(broker)
    ch = await conn.channel()
    arguments = {"x-message-deduplication": True, "x-cache-size": 10_000} if dedup else None
    q = await ch.declare_queue(queue, durable=True, arguments=arguments)
    await q.purge()
    with open_outbox(path, synchronous="NORMAL") as outbox:
        if outbox.count():
            raise SystemExit(f"the outbox {outbox.where} is not empty")
        for start in range(0, messages, 5000):
            await asyncio.to_thread(outbox.send_many, [
                {"exchange": "", "routing_key": queue, "body": body} for _ in range(min(5000, messages - start))])
        forwarder = Forwarder(outbox, [via or broker], window=window, report_interval=3600)
        started = time.perf_counter()
        cpu = time.process_time()
        task = asyncio.ensure_future(forwarder.run())
        deadline = time.monotonic() + 300
        # the forwarder's own counter (deletions committed), not outbox.count(): a count(*) every few ms would
        # scan the table and take the forwarder's CPU
        while forwarder.snapshot()["default"]["forwarded"] < messages and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        forwarder.request_stop()
        await task
        left = await asyncio.to_thread(outbox.count)
    declared = await ch.declare_queue(queue, durable=True, passive=True)
    arrived = declared.declaration_result.message_count
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    if left or arrived != messages:
        raise SystemExit(f"{left} left in the outbox, {arrived} of {messages} in the queue")
    return elapsed, cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc), for the broker's share."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--body", type=int, default=200)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL outbox (an empty database) instead of SQLite")
    parser.add_argument("--broker", help="a running broker (default: start a Leveret)")
    parser.add_argument("--dir", default=".", help="where the outbox file goes (default: the current directory)")
    parser.add_argument("--transport", choices=("amqp", "stomp"), default="amqp")
    parser.add_argument("--stomp-url", help="with --transport stomp and --broker: the STOMP URL to forward to")
    parser.add_argument("--dedup", action="store_true",
                        help="the queue deduplicates (x-message-deduplication, x-cache-size 10000; Leveret)")
    args = parser.parse_args()
    body = os.urandom(args.body)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="outbox-forward-") as tmp:
        proc = None
        broker = args.broker
        via = args.stomp_url
        if broker is None:
            proc, port, stomp_port = start_leveret(Path(tmp) / "broker")
            broker = f"amqp://guest:guest@127.0.0.1:{port}/"
            via = via or f"stomp://guest:guest@127.0.0.1:{stomp_port}/"
        via = (via or f"stomp://guest:guest@{urlsplit(broker).hostname}:61613/") if args.transport == "stomp" \
            else None
        try:
            for run in range(args.runs):
                path = args.postgres or str(Path(tmp) / f"outbox-{run}.db")
                broker_cpu = cpu_seconds(proc.pid) if proc else float("nan")
                elapsed, own_cpu = asyncio.run(forward(path, broker, args.messages, body, args.window, args.dedup,
                                                       via))
                broker_cpu = (cpu_seconds(proc.pid) if proc else float("nan")) - broker_cpu
                print(f"run {run + 1}: {args.messages} messages of {args.body} B forwarded (published, confirmed, "
                      f"deleted) in {elapsed:.2f} s = {args.messages / elapsed:,.0f} msg/s (window {args.window}, "
                      f"{args.transport}); "
                      f"CPU: forwarder {own_cpu:.2f} s, broker {broker_cpu:.2f} s",
                      flush=True)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
