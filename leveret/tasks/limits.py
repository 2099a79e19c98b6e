"""Time limits, rate limits and interruption of running tasks (the worker side; see docs/tasks.md).

- ``SoftTimeLimitExceeded`` is raised in a task that runs longer than its ``soft_time_limit``: an async task is
  cancelled (it sees ``CancelledError`` at its current ``await``; the worker records ``SoftTimeLimitExceeded``),
  a sync task gets the exception injected into its thread with ``PyThreadState_SetAsyncExc`` (it is raised at
  the thread's next Python bytecode: a loop of short sleeps or computations is interrupted, a single long call
  into C, e.g. one ``time.sleep(60)``, only when it returns). The failure is retried like any other.
- ``TaskRevoked`` is raised the same way in a running task that is revoked; the task ends as "revoked".
- ``TokenBucket`` limits how often a task starts in one worker process (``rate_limit="10/s"``, ``"100/m"``,
  ``"1000/h"``).
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time


class SoftTimeLimitExceeded(Exception):
    """The task ran longer than its soft_time_limit."""


class TaskRevoked(Exception):
    """The task was revoked (``App.revoke``) while it ran."""


EXIT_HARD_TIME_LIMIT = 75  # EX_TEMPFAIL: the worker process exits with it when a task exceeds its time_limit


class Running:
    """One running task: what the worker needs to interrupt it (its thread or its asyncio task)."""

    __slots__ = ("async_task", "interrupted", "lock", "started", "thread", "timers")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: int | None = None  # ident of the pool thread running a sync handler
        self.async_task: asyncio.Future[object] | None = None  # the asyncio task of an async handler
        self.interrupted: type[Exception] | None = None
        self.started = time.monotonic()
        self.timers: list[asyncio.TimerHandle] = []

    def interrupt(self, exc_type: type[Exception]) -> None:
        """Raise ``exc_type`` in the task (first interruption wins)."""
        if self.interrupted is not None:
            return
        self.interrupted = exc_type
        if self.async_task is not None:
            self.async_task.cancel()
            return
        with self.lock:
            if self.thread is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread), ctypes.py_object(exc_type))

    def run_in_thread(self, fn: object, kwargs: dict[str, object]) -> object:
        """Call ``fn(**kwargs)`` in this (pool) thread, interruptible by ``interrupt``."""
        with self.lock:
            if self.interrupted is not None:
                raise self.interrupted()
            self.thread = threading.get_ident()
        try:
            return fn(**kwargs)  # type: ignore[operator]
        finally:
            with self.lock:  # no interruption after this: the thread goes back to the pool
                self.thread = None

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()


class TokenBucket:
    """A token bucket of ``rate`` tokens per second holding at most ``max(1, rate)`` (a burst of one second)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self) -> None:
        async with self._lock:  # first come, first served
            self._refill()
            while self.tokens < 1:
                await asyncio.sleep((1 - self.tokens) / self.rate)
                self._refill()
            self.tokens -= 1
