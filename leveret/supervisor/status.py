"""The supervisor's state directory: the lock that keeps a second supervisor out, and the status file
``supervisor.json`` that ``leveret health`` reads (leveret/supervisor/health.py)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("leveret.supervisor")

STATUS_FILE = "supervisor.json"
LOCK_FILE = "supervisor.lock"


class SupervisorError(Exception):
    """The supervisor cannot start (state directory locked or unwritable, health port unavailable)."""


class StateDir:
    """``<state_dir>``: locked by one supervisor at a time (the lock file holds its pid), status rewritten whole."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.lock_fd: int | None = None

    def lock(self) -> None:
        """Create the directory and take its lock; SupervisorError when it cannot be used or is taken."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SupervisorError(f"cannot use state directory {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SupervisorError(f"another supervisor (pid {other}) uses the state directory {self.path} "
                                  "(give this one another --state-dir)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def write_status(self, status: dict[str, Any]) -> None:
        """Replace the status file at once (a reader never sees half of it); a failure is logged."""
        path = self.path / STATUS_FILE
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(status, indent=1))
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc.strerror or exc)
