"""Time for the core, which has no event loop of its own: the adapter passes a :class:`Timers`.

``now()`` is wall-clock seconds (due times of delayed messages must survive restarts); ``call_later`` runs a
function on the broker's thread after a delay and returns a handle with ``cancel()``.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Handle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    def now(self) -> float: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> Handle: ...


class _ManualHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualTimers:
    """Timers driven by hand, for tests of the core: ``advance(seconds)`` runs what became due, in order."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.time = start
        self._queue: list[tuple[float, int, _ManualHandle, Callable[[], None]]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        return self.time

    def call_later(self, delay: float, fn: Callable[[], None]) -> Handle:
        handle = _ManualHandle()
        heapq.heappush(self._queue, (self.time + max(0.0, delay), next(self._counter), handle, fn))
        return handle

    def advance(self, seconds: float) -> None:
        end = self.time + seconds
        while self._queue and self._queue[0][0] <= end:
            when, _, handle, fn = heapq.heappop(self._queue)
            self.time = max(self.time, when)
            if not handle.cancelled:
                fn()
        self.time = end


class SystemTimers:
    """Wall clock, and timers that run when their time comes on whatever calls :meth:`run_due` (no loop)."""

    def __init__(self) -> None:
        self._manual = ManualTimers(time.time())

    def now(self) -> float:
        return time.time()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Handle:
        self._manual.time = time.time()
        return self._manual.call_later(delay, fn)

    def run_due(self) -> None:
        self._manual.advance(time.time() - self._manual.time)
