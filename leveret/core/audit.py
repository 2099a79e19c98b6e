"""The audit log: logins, refused logins and every change to users, permissions, vhosts, policies and limits.

Each event is one JSON object (docs/security.md#audit-log), written as one line to the audit file (config
``audit_log``) and logged on the ``leveret.audit`` logger. Who made a change is the *actor* of the current
context: the management API sets it per request (``{"via": "http", "user": ..., "address": ...}``), the
control socket per client (``{"via": "ctl", "uid": ..., "pid": ...}``), a definitions import wraps its
changes (``"via": "definitions"``); changes made with no actor set (the default user created on a first
start) are ``{"via": "internal"}``. The actor is a context variable, so concurrent HTTP requests (asyncio
tasks) each see their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("leveret.audit")

_ACTOR: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("leveret_audit_actor", default=None)
_INTERNAL = {"via": "internal"}


def set_actor(actor: dict[str, Any]) -> contextvars.Token[dict[str, Any] | None]:
    """Make ``actor`` the author of the changes made from now on in this context (task)."""
    return _ACTOR.set(actor)


def actor() -> dict[str, Any]:
    return _ACTOR.get() or _INTERNAL


@contextlib.contextmanager
def acting(who: dict[str, Any]) -> Iterator[None]:
    token = _ACTOR.set(who)
    try:
        yield
    finally:
        _ACTOR.reset(token)


class AuditLog:
    """Where events go: the ``leveret.audit`` logger always, and a JSON-lines file when one is open."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None
        self.path: Path | None = None

    def open(self, path: str | Path) -> None:
        """Append to ``path`` (created owner-only, with its directory); replaces an earlier file."""
        self.close()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        self.path = target

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def record(self, event: str, *, by: dict[str, Any] | None = None, **fields: Any) -> None:
        """Write one event: ``ts`` (UTC, ISO 8601), ``event``, ``actor`` (``by``, else the context's) and
        ``fields``."""
        entry: dict[str, Any] = {
            "ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            "actor": by or actor(),
        }
        entry.update(fields)
        # ASCII only: U+2028/U+2029/U+0085 (which a client can put in a user name) would split the line for
        # line-based readers
        line = json.dumps(entry, default=str, ensure_ascii=True)
        log.info("%s", line)
        if self._file is not None:
            try:
                self._file.write(line + "\n")
            except OSError as exc:  # a full disk must not stop the broker; say so once per failure
                log.error("cannot write the audit log %s: %s", self.path, exc)
