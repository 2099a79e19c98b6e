"""One forwarder per outbox file: an exclusive ``flock`` on ``<outbox>.forwarder.lock`` beside it (a second
forwarder waits, saying so once, until the first stops). A shared storage (PostgreSQL) needs none: its
forwarders lease what they fetch."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from leveret.outbox.message import OutboxError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("leveret.outbox.forwarder")


class ForwarderLock:
    """The lock of the outbox file ``path`` (None: a shared storage, nothing to lock)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fd: int | None = None

    async def acquire(self, sleep: Callable[[float], Awaitable[bool]]) -> bool:
        """Take the lock, waiting with ``sleep(seconds)`` (which returns True when a stop was requested: then
        False, without the lock)."""
        if fcntl is None or self.path is None:
            return True
        lock_path = self.path.with_name(self.path.name + ".forwarder.lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutboxError(f"cannot create the lock file {lock_path}: {exc.strerror or exc}") from exc
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return True
            except OSError:
                if not warned:
                    log.warning("another forwarder holds %s: waiting for it to stop", lock_path)
                    warned = True
            if await sleep(1.0):
                os.close(fd)
                return False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
