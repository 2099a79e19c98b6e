"""Leveret as a real child process (``python -m leveret serve --port 0``), for signal, restart and crash tests.

The port is read from the "listening" log line; the log is collected in a thread so the pipe never fills.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from waiting import poll


class LeveretProcess:
    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.args = args
        # any free port for the management API, so that several brokers (or a RabbitMQ) can run side by side; no
        # STOMP unless asked for (LEVERET_STOMP_PORT=0: any free port, read into stomp_port)
        self.env = {**os.environ, "LEVERET_HTTP_PORT": "0", "LEVERET_STOMP_PORT": "-1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.stomp_port = -1
        self.lines: list[str] = []
        self._ready = threading.Event()

    def start(self, timeout: float = 30.0) -> LeveretProcess:
        self.lines = []
        self._ready.clear()
        cmd = [sys.executable, "-m", "leveret", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--log-level", "info", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout):
            self.kill()
            raise RuntimeError("leveret did not start:\n" + self.log)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed at the process's end (EOF), not left to the garbage collector
            self._read_lines(proc.stdout)

    def _read_lines(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.append(line.rstrip("\n"))
            stomp = re.search(r"listening for STOMP on [^:]+:(\d+)", line)  # logged before AMQP's line
            if stomp:
                self.stomp_port = int(stomp.group(1))
            match = re.search(r"listening for AMQP on [^:]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> bool:
        """Whether a line of the log matches ``pattern`` within ``timeout`` seconds."""
        return poll(lambda: any(re.search(pattern, line) for line in list(self.lines)), timeout=timeout,
                    interval=0.05)
