"""Retry strategies: what happens when a task's handler raises.

``Retry.ignore()`` (no retry: the message goes to the dead-letter queue at once), ``Retry.limit(n, delay=0)``
(up to ``n`` more attempts, ``delay`` seconds apart) and ``Retry.intervals([15, 30, 60])`` (one more attempt
after each interval, in seconds) and ``Retry.backoff(n, base=1.0, factor=2.0, max_delay=300.0, jitter=True)``
(up to ``n`` more attempts, exponential delays ``min(max_delay, base * factor**attempt)`` with *equal jitter*:
a delay ``d`` becomes ``d/2 + uniform(0, d/2)``, so retries spread out but never come sooner than half the
backoff). The strategy travels in the message's metadata (``metadata.retry``), so a
producer in another language can choose it per message.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Retry:
    strategy: str  # "ignore", "limit", "intervals" or "backoff"
    delays: tuple[float, ...] = ()  # seconds before attempt 1, 2, ... (fixed schedules only)
    attempts: int = 0  # backoff: how many more attempts
    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: bool = True

    @classmethod
    def ignore(cls) -> Retry:
        return cls("ignore")

    @classmethod
    def limit(cls, attempts: int, delay: float = 0.0) -> Retry:
        if attempts < 0 or delay < 0:
            raise ValueError("Retry.limit needs attempts >= 0 and delay >= 0")
        return cls("limit", (float(delay),) * attempts)

    @classmethod
    def intervals(cls, seconds: list[float] | tuple[float, ...]) -> Retry:
        if not seconds or any(s < 0 for s in seconds):
            raise ValueError("Retry.intervals needs a non-empty list of delays >= 0 (seconds)")
        return cls("intervals", tuple(float(s) for s in seconds))

    @classmethod
    def backoff(cls, attempts: int, base: float = 1.0, factor: float = 2.0, max_delay: float = 300.0,
                jitter: bool = True) -> Retry:
        """Up to ``attempts`` more attempts after ``min(max_delay, base * factor**attempt)`` seconds (attempt is
        0 for the first failure), with equal jitter unless ``jitter=False``. Not a fixed schedule: on Leveret
        these retries go through the delayed exchange, not the queue's ``x-retry-intervals``."""
        if attempts < 0 or base < 0 or factor < 1 or max_delay < 0:
            raise ValueError("Retry.backoff needs attempts >= 0, base >= 0, factor >= 1 and max_delay >= 0")
        return cls("backoff", (), int(attempts), float(base), float(factor), float(max_delay), bool(jitter))

    def next_delay(self, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after attempt ``attempt`` (0-based) failed, or None
        when the retries are used up."""
        if self.strategy == "backoff":
            if attempt >= self.attempts:
                return None
            delay = min(self.max_delay, self.base * self.factor ** min(attempt, 64))
            return delay / 2 + random.uniform(0, delay / 2) if self.jitter else delay
        return self.delays[attempt] if attempt < len(self.delays) else None

    @property
    def delays_ms(self) -> list[int]:
        return [round(d * 1000) for d in self.delays]

    def to_wire(self) -> dict[str, Any]:
        if self.strategy == "ignore":
            return {"strategy": "ignore"}
        if self.strategy == "backoff":
            return {"strategy": "backoff", "attempts": self.attempts, "base": self.base, "factor": self.factor,
                    "max_delay": self.max_delay, "jitter": self.jitter}
        if self.strategy == "limit":
            return {"strategy": "limit", "limit": len(self.delays), "delay": self.delays[0] if self.delays else 0}
        return {"strategy": "intervals", "intervals": list(self.delays)}

    @classmethod
    def from_wire(cls, data: Any) -> Retry | None:
        """The strategy of a message's ``metadata.retry``; None when absent or not understood."""
        if not isinstance(data, dict):
            return None
        try:
            data = dict(data)
            strategy = data.get("strategy")
            if strategy == "ignore":
                return cls.ignore()
            if strategy == "backoff":
                return cls.backoff(int(data.get("attempts", 0)), float(data.get("base", 1.0)),
                                   float(data.get("factor", 2.0)), float(data.get("max_delay", 300.0)),
                                   bool(data.get("jitter", True)))
            if strategy in ("limit", "repeat") and "intervals" not in data and "retryInterval" not in data:
                limit: Any = data.get("limit", data.get("retryLimit", 0))
                return cls.limit(int(limit), float(data.get("delay", 0)))
            if strategy in ("intervals", "repeat"):
                seconds: Any = data.get("intervals", data.get("retryInterval", []))
                return cls.intervals([float(s) for s in seconds])
        except (TypeError, ValueError):
            return None
        return None
