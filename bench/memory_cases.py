#!/usr/bin/env python3
"""Peak broker RSS in the cases of docs/memory.md, each on a fresh Leveret (a child process):

    python bench/memory_cases.py consumer -n 15000 -s 65536            # 1 GB persistent backlog, then a
                                                                        # consumer that does not read its socket
    python bench/memory_cases.py consumer --manual ...                  # manual ack without basic.qos
    python bench/memory_cases.py flood -w 256000000                     # empty transient messages until blocked
    python bench/memory_cases.py flood -w 256000000 -s 1024             # 1 KB ones

"consumer": publish the backlog with confirms, start the consumer, report RSS after it stalled (10 s), then let
it read everything and report the peak. "flood": publish without confirms until connection.blocked (the
broker stops reading), report RSS, then drain with a no-ack consumer and report the peak while draining.
Bounded in count and time; the broker is killed at the end.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backlog_memory import publish, rss_mib

from leveret.amqp import codec, spec

from rawamqp import RawClient
from serverproc import LeveretProcess


def small_window_client(port: int) -> RawClient:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(120)
    sock.connect(("127.0.0.1", port))
    client = RawClient.__new__(RawClient)
    client.sock, client.buf, client.frame_max = sock, b"", 131072
    return client


def read_all(client: RawClient, pid: int, until: float, stop: callable) -> float:  # type: ignore[valid-type]
    """Read and discard what the broker sends until ``stop(bytes_so_far)`` or the deadline; the peak RSS."""
    peak = 0.0
    total = 0
    client.sock.setblocking(False)
    while time.monotonic() < until and not stop(total):
        select.select([client.sock], [], [], 0.2)
        try:
            while True:
                chunk = client.sock.recv(1 << 20)
                if not chunk:
                    return max(peak, rss_mib(pid))
                total += len(chunk)
        except BlockingIOError:
            pass
        peak = max(peak, rss_mib(pid))
    return peak


def consumer_case(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="leveret-memcase-")) / "data"
    server = LeveretProcess(data).start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        window = max(50, min(20000, 16_000_000 // max(args.size, 1)))  # at most ~16 MB unconfirmed
        took = publish(server.port, "backlog", args.count, args.size, window=window)
        print(f"published {args.count:,} x {args.size:,} B persistent in {took:.1f} s; RSS {rss_mib(pid):.0f} MiB "
              f"(peak {rss_mib(pid, 'VmHWM'):.0f} MiB)")
        client = small_window_client(server.port)
        client.handshake()
        client.open_channel()
        client.send_method(1, "basic.consume", 0, "backlog", "c", False, not args.manual, False, False, {})
        peak = 0.0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            peak = max(peak, rss_mib(pid))
            time.sleep(0.2)
        print(f"{'manual-ack, no qos' if args.manual else 'no-ack'} consumer not reading for 10 s: RSS "
              f"{rss_mib(pid):.0f} MiB, peak over those 10 s {peak:.0f} MiB")
        wanted = args.count * args.size
        peak = max(peak, read_all(client, pid, time.monotonic() + 600, lambda n: n >= wanted))
        print(f"consumer read the whole backlog: peak RSS while draining {peak:.0f} MiB; "
              f"process peak (VmHWM) {rss_mib(pid, 'VmHWM'):.0f} MiB")
    finally:
        server.kill()


def flood_case(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="leveret-memcase-")) / "data"
    server = LeveretProcess(data, env={"LEVERET_MEMORY_HIGH_WATERMARK": str(args.watermark)}).start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        base = rss_mib(pid)
        publisher = RawClient(server.port, timeout=30)
        publisher.handshake()
        publisher.open_channel()
        publisher.send_method(1, "queue.declare", 0, "flood", False, False, False, False, False, {})
        publisher.recv_method()
        one = codec.method_frame(1, spec.method("basic.publish"), (0, "", "flood", False, False)) + b"".join(
            codec.content_frames(1, codec.encode_properties({}), b"x" * args.size, 131072))
        per = max(1, 65536 // len(one))
        chunk = one * per
        sent = 0
        pending = b""
        started = time.monotonic()
        publisher.sock.setblocking(False)
        blocked = False
        while not blocked and sent < args.count and time.monotonic() - started < 300:
            readable, writable, _ = select.select([publisher.sock], [publisher.sock], [], 1.0)
            if readable:
                blocked = b"\x00\x0a\x00\x3c" in publisher.sock.recv(65536)  # connection.blocked (10, 60)
            elif writable:
                if not pending:
                    pending, sent = chunk, sent + per
                pending = pending[publisher.sock.send(pending):]
            elif not readable:
                time.sleep(0.01)
        took = time.monotonic() - started
        time.sleep(1)
        print(f"flood of {args.size} B transient messages, watermark {args.watermark / 2**20:.0f} MiB: "
              f"{'blocked' if blocked else 'NOT blocked'} after ~{sent:,} sent in {took:.1f} s; broker RSS "
              f"{rss_mib(pid):.0f} MiB (fresh {base:.0f} MiB, peak {rss_mib(pid, 'VmHWM'):.0f} MiB)")
        consumer = RawClient(server.port, timeout=30)
        consumer.handshake()
        consumer.open_channel()
        consumer.send_method(1, "basic.consume", 0, "flood", "c", False, True, False, False, {})
        state = {"unblocked": False}

        def done(_total: int) -> bool:
            try:
                if b"\x00\x0a\x00\x3d" in publisher.sock.recv(65536):  # connection.unblocked (10, 61)
                    state["unblocked"] = True
            except BlockingIOError:
                pass
            return state["unblocked"]

        peak = read_all(consumer, pid, time.monotonic() + 300, done)
        print(f"drain with a no-ack consumer: peak RSS while draining {peak:.0f} MiB; "
              f"{'publisher unblocked' if state['unblocked'] else 'publisher still blocked'}; "
              f"process peak (VmHWM) {rss_mib(pid, 'VmHWM'):.0f} MiB")
    finally:
        server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=("consumer", "flood"))
    parser.add_argument("-n", "--count", type=int, default=0, help="messages (consumer: 15000; flood: 20,000,000)")
    parser.add_argument("-s", "--size", type=int, default=-1, help="body bytes (consumer: 65536; flood: 0)")
    parser.add_argument("-w", "--watermark", type=int, default=256_000_000)
    parser.add_argument("--manual", action="store_true", help="consumer: manual ack without basic.qos")
    args = parser.parse_args()
    if args.case == "consumer":
        args.count = args.count or 15_000
        args.size = 65536 if args.size < 0 else args.size
        consumer_case(args)
    else:
        args.count = args.count or 20_000_000
        args.size = 0 if args.size < 0 else args.size
        flood_case(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
