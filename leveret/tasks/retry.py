"""Retry strategies: what happens when a task's handler raises.

``Retry.ignore()`` (no retry: the message goes to the dead-letter queue at once), ``Retry.limit(n, delay=0)``
(up to ``n`` more attempts, ``delay`` seconds apart) and ``Retry.intervals([15, 30, 60])`` (one more attempt
after each interval, in seconds). The strategy travels in the message's metadata (``metadata.retry``), so a
producer in another language can choose it per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Retry:
    strategy: str  # "ignore", "limit" or "intervals"
    delays: tuple[float, ...] = ()  # seconds before attempt 1, 2, ...

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

    def next_delay(self, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after attempt ``attempt`` (0-based) failed, or None
        when the retries are used up."""
        return self.delays[attempt] if attempt < len(self.delays) else None

    @property
    def delays_ms(self) -> list[int]:
        return [round(d * 1000) for d in self.delays]

    def to_wire(self) -> dict[str, Any]:
        if self.strategy == "ignore":
            return {"strategy": "ignore"}
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
            if strategy in ("limit", "repeat") and "intervals" not in data and "retryInterval" not in data:
                limit: Any = data.get("limit", data.get("retryLimit", 0))
                return cls.limit(int(limit), float(data.get("delay", 0)))
            if strategy in ("intervals", "repeat"):
                seconds: Any = data.get("intervals", data.get("retryInterval", []))
                return cls.intervals([float(s) for s in seconds])
        except (TypeError, ValueError):
            return None
        return None
