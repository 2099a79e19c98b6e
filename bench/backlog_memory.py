#!/usr/bin/env python3
"""Memory and recovery with a long durable queue: publish N persistent messages (default 1,000,000 of 1 KB)
with confirms into one durable queue of a fresh Leveret, report the broker's RSS, restart it (SIGTERM, or
SIGKILL with --kill), report the recovery time and RSS, then drain the queue and check every message came
back in order.

    python bench/backlog_memory.py                 # 1,000,000 x 1 KB
    python bench/backlog_memory.py -n 100000 -s 16 --kill

The publisher is a small raw AMQP client on Leveret's own codec (pre-encoded frames, confirms in windows),
so that the broker, not the client, sets the pace.
"""

from __future__ import annotations

import argparse
import re
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leveret.amqp import codec, spec

from rawamqp import RawClient
from serverproc import LeveretProcess


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory now (VmRSS) or its peak so far (VmHWM), in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(field + r":\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


def publish(port: int, queue: str, count: int, size: int, window: int = 20000) -> float:
    client = RawClient(port, timeout=120)
    client.handshake()
    client.open_channel()
    client.send_method(1, "queue.declare", 0, queue, False, True, False, False, False, {})
    client.recv_method()
    client.send_method(1, "confirm.select", False)
    client.recv_method()
    props = codec.encode_properties({"delivery_mode": 2, "content_type": "application/octet-stream"})
    started = time.monotonic()
    sent = 0
    confirmed = 0
    while confirmed < count:
        batch = []
        while sent < count and sent - confirmed < window:
            body = struct.pack(">Q", sent) + b"x" * (size - 8)
            batch.append(codec.method_frame(1, spec.method("basic.publish"), (0, "", queue, False, False)))
            batch.extend(codec.content_frames(1, props, body, 131072))
            sent += 1
        if batch:
            client.send(b"".join(batch))
        reply = client.recv_method()
        assert reply is not None and reply[1] == "basic.ack", reply
        confirmed = reply[2][0] if reply[2][1] else max(confirmed, reply[2][0])
    elapsed = time.monotonic() - started
    client.close()
    return elapsed


def drain(port: int, queue: str, count: int) -> float:
    client = RawClient(port, timeout=120)
    client.handshake()
    client.open_channel()
    client.send_method(1, "basic.qos", 0, 2000, False)
    client.recv_method()
    client.send_method(1, "basic.consume", 0, queue, "c", False, False, False, False, {})
    client.recv_method()
    started = time.monotonic()
    expected = 0
    while expected < count:
        frame = client.recv_frame()
        assert frame is not None
        ftype, _channel, payload = frame
        if ftype == spec.FRAME_METHOD:
            method, args = codec.decode_method_payload(payload)
            if method.full_name == "basic.deliver":
                tag = args[1]
        elif ftype == spec.FRAME_BODY:
            (number,) = struct.unpack_from(">Q", payload)
            assert number == expected, (number, expected)
            expected += 1
            if expected % 1000 == 0 or expected == count:
                client.send_method(1, "basic.ack", tag, True)
    elapsed = time.monotonic() - started
    client.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=1_000_000)
    parser.add_argument("-s", "--size", type=int, default=1024)
    parser.add_argument("--kill", action="store_true", help="restart with SIGKILL instead of SIGTERM")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="leveret-backlog-")) / "data"
    server = LeveretProcess(data, "--log-level", "info").start()
    assert server.proc is not None
    try:
        print(f"fresh broker RSS: {rss_mib(server.proc.pid):.0f} MiB")
        took = publish(server.port, "backlog", args.count, args.size)
        print(f"published {args.count:,} x {args.size} B persistent with confirms in {took:.1f} s "
              f"({args.count / took:,.0f}/s)")
        print(f"broker RSS holding the backlog: {rss_mib(server.proc.pid):.0f} MiB "
              f"(peak {rss_mib(server.proc.pid, 'VmHWM'):.0f} MiB)")
        if args.kill:
            server.kill()
        else:
            server.stop()
        started = time.monotonic()
        server.start()
        ready = time.monotonic() - started
        line = next((x for x in server.lines if "recovered" in x), "(no recovery line)")
        print(f"restart to listening: {ready:.1f} s; {line.split(': ', 1)[-1]}")
        print(f"broker RSS after recovery: {rss_mib(server.proc.pid):.0f} MiB "
              f"(peak {rss_mib(server.proc.pid, 'VmHWM'):.0f} MiB)")
        took = drain(server.port, "backlog", args.count)
        print(f"drained {args.count:,} in order in {took:.1f} s ({args.count / took:,.0f}/s); "
              f"broker RSS: {rss_mib(server.proc.pid):.0f} MiB (peak {rss_mib(server.proc.pid, 'VmHWM'):.0f} MiB)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(120)
    sys.exit(main())
