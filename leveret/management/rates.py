"""Message rates for the management API, as RabbitMQ's ``message_stats``: each counter ``name`` comes with
``name_details: {"rate": per second}``.

The core keeps plain counters (``Queue.stats_published``, ``stats_delivered``, ``stats_acked``); nothing is
sampled on a timer. Each time an object's stats are read, its counters are sampled (at most one kept sample
per second) and the rate is the increase since the oldest sample of the last ``window`` seconds, divided by
the time between them. So a client that polls every few seconds sees the rate over its polling interval, a
counter that stops moving shows 0 after ``window`` seconds, and an object read once shows 0 (no history yet).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable

WINDOW = 5.0  # seconds; RabbitMQ's collect_statistics_interval is 5 s
_KEEP_EVERY = 1.0  # seconds between kept samples
_FORGET_AFTER = 60.0  # seconds without a read before an object's samples are dropped


class Rates:
    def __init__(self, clock: Callable[[], float] = time.monotonic, window: float = WINDOW) -> None:
        self.clock = clock
        self.window = window
        self._samples: dict[Hashable, deque[tuple[float, tuple[int, ...]]]] = {}
        self._last_prune = clock()

    def stats(self, key: Hashable, counters: dict[str, int]) -> dict[str, object]:
        """``counters`` with a ``<name>_details: {"rate": ...}`` beside each, for the object ``key``."""
        now = self.clock()
        values = tuple(counters.values())
        samples = self._samples.setdefault(key, deque())
        if samples and any(v < old for v, old in zip(values, samples[-1][1], strict=True)):
            samples.clear()  # counters went back: the object was deleted and made again
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()  # keep one sample at or before the window's start as the reference
        rates = [0.0] * len(values)
        if samples:
            then, old = samples[0]
            elapsed = now - then
            if elapsed > 0:
                rates = [round((v - o) / elapsed, 1) for v, o in zip(values, old, strict=True)]
        if not samples or now - samples[-1][0] >= _KEEP_EVERY:
            samples.append((now, values))
        self._prune(now)
        result: dict[str, object] = {}
        for (name, value), rate in zip(counters.items(), rates, strict=True):
            result[name] = value
            result[f"{name}_details"] = {"rate": rate}
        return result

    def _prune(self, now: float) -> None:
        if now - self._last_prune < _FORGET_AFTER:
            return
        self._last_prune = now
        for key in [k for k, s in self._samples.items() if not s or s[-1][0] < now - _FORGET_AFTER]:
            del self._samples[key]
