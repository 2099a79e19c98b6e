"""Revoke (worker side): the ids announced on the fanout exchange ``leveret.control`` (``App.revoke``).

Each worker binds an exclusive, auto-delete queue to it; a revoked id is kept (at most ``MAX_REVOKED``, each for
the app's ``status_ttl``). A revoked task that is delivered is acked and skipped (event "revoked"); one that runs
is interrupted with ``TaskRevoked`` (see limits.py)."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

MAX_REVOKED = 100_000


class RevokedIds:
    def __init__(self, ttl: float, limit: int = MAX_REVOKED) -> None:
        self.ttl = ttl
        self.limit = limit
        self._ids: OrderedDict[str, float] = OrderedDict()  # id -> expiry (monotonic), oldest first

    def add(self, task_id: str) -> None:
        now = time.monotonic()
        self._ids.pop(task_id, None)
        self._ids[task_id] = now + self.ttl
        while self._ids and (len(self._ids) > self.limit or next(iter(self._ids.values())) < now):
            self._ids.popitem(last=False)

    def __contains__(self, task_id: object) -> bool:
        expiry = self._ids.get(task_id) if isinstance(task_id, str) else None
        return expiry is not None and expiry >= time.monotonic()

    def __len__(self) -> int:
        return len(self._ids)


def parse_control(body: bytes) -> dict[str, Any] | None:
    """A control message (``{"revoke": id, "ts": ...}``), or None when it is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
