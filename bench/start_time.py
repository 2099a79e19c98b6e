"""Time from `leveret serve` to the broker answering an AMQP protocol header (connection.start), five starts.

Usage: python bench/start_time.py [HTTP_PORT]   (-1: the management API off; default 15999). Uses port 5697.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 5697
LEVERET = Path(sys.executable).with_name("leveret")


def answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        return len(sock.recv(7)) == 7  # the connection.start frame's header


def main() -> None:
    http_port = sys.argv[1] if len(sys.argv) > 1 else "15999"
    times = []
    for _ in range(5):
        env = dict(os.environ, LEVERET_HTTP_PORT=http_port, LEVERET_STOMP_PORT="-1")
        with tempfile.TemporaryDirectory() as data:
            started = time.perf_counter()
            proc = subprocess.Popen([str(LEVERET), "serve", "--port", str(PORT), "--data-dir", data], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = started + 30
            while time.perf_counter() < deadline:
                try:
                    if answers(PORT):
                        break
                except OSError:
                    time.sleep(0.005)
            times.append(time.perf_counter() - started)
            proc.terminate()
            proc.wait()
    print("start to AMQP connection.start (s):", " ".join(f"{t:.3f}" for t in times))


if __name__ == "__main__":
    main()
