"""Task status records as stored: the record, how two versions of one task's record combine, its JSON forms.

A record is the fold of the status events of one task id (docs/extensions.md, "The status book"). The fold is
commutative and idempotent, so a writer may merge an event into a stored record without the broker reading the
record first (a "blind" write), apply the same event twice, or see events out of order, and still end with the
same record:

- state, attempt, task, queue, error and the optional fields come from the *winning* event: the highest
  (attempt, rank of the state), ties broken by the later ``ts`` (``at`` keeps the winner's ts);
- ``created`` is the earliest event's ts, ``updated`` the latest's, ``expires`` the latest event's ts + ttl
  (ties: the longer); ``started`` the latest "started" event's ts (the ``started`` field of a final event that
  went without a "started" event counts as one: ``record_from_event``); ``finished`` the winner's ts when its
  state is final;
- a record that had expired before the other one's first event does not take part (the id starts afresh).

Both store backends merge with :func:`merge`; the broker's cache does too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

RANKS: dict[str, int] = {"queued": 0, "started": 1, "retrying": 2, "failed": 3, "succeeded": 4, "gave_up": 4,
                         "revoked": 4}
FINAL = frozenset({"succeeded", "gave_up", "revoked"})
OPTIONAL = ("result", "next_attempt_at", "worker")  # present in a record only when its winning event had them


@dataclass(slots=True)
class StatusRecord:
    id: str
    task: str
    queue: str
    state: str
    attempt: int
    at: float  # ts of the winning event
    created: float
    updated: float
    expires: float
    started: float | None = None
    error: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # result, next_attempt_at, worker

    def precedence(self) -> tuple[int, int, float]:
        return (self.attempt, RANKS.get(self.state, 0), self.at)

    def public(self) -> dict[str, Any]:
        """The record as clients read it (the contract's field names)."""
        out: dict[str, Any] = {
            "id": self.id, "task": self.task, "queue": self.queue, "state": self.state, "attempt": self.attempt,
            "created": self.created, "updated": self.updated, "started": self.started,
            "finished": self.at if self.state in FINAL else None, "error": self.error, "expires": self.expires}
        out.update(self.extra)
        return out


def merge(old: StatusRecord | None, new: StatusRecord) -> StatusRecord:
    """The record of the union of the events folded into ``old`` and ``new`` (see the module docstring)."""
    if old is None or old.expires < new.created:
        return new
    if new.expires < old.created:
        return old
    win, lose = (new, old) if new.precedence() >= old.precedence() else (old, new)
    late = new if (new.updated, new.expires) >= (old.updated, old.expires) else old
    started = old.started if new.started is None or (old.started is not None and old.started > new.started) \
        else new.started
    return StatusRecord(win.id, win.task or lose.task, win.queue or lose.queue, win.state, win.attempt, win.at,
                        min(old.created, new.created), late.updated, late.expires, started, win.error, win.extra)


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps makes one per call


def encode(record: StatusRecord) -> str:
    """The stored JSON text (every field, ``at`` included)."""
    return _ENCODE([record.id, record.task, record.queue, record.state, record.attempt, record.at, record.created,
                   record.updated, record.expires, record.started, record.error, record.extra])


def decode(text: str) -> StatusRecord:
    return StatusRecord(*json.loads(text))
