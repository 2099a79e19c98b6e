"""Reading task status records for workflows: a reader over ``app.status_info``, waiting for records with a
deadline, and the result or error a final record stands for (used by ``canvas`` and ``chord_unlock``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from leveret.tasks.status import TaskError

FAILED_STATES = frozenset({"gave_up", "revoked"})


StatusReader = Callable[[str], "dict[str, Any] | None"]


def reader_of(app: Any) -> StatusReader:
    """``app.status_info`` as a reader: the record of an id, or None when it has none (yet, or any more)."""

    def read(task_id: str) -> dict[str, Any] | None:
        record = app.status_info(task_id)
        if not record or record.get("state") in (None, "unknown"):
            return None
        return dict(record)

    return read


def state_of(record: dict[str, Any] | None) -> str:
    return str(record.get("state")) if record else "pending"


def task_error(app: Any, record: dict[str, Any], task_id: str) -> Exception:
    """The ``TaskError`` of a record that gave up (or was revoked)."""
    error = record.get("error") or {}
    kind = str(error.get("type") or ("Revoked" if record.get("state") == "revoked" else "Exception"))
    return TaskError(kind, str(error.get("message", record.get("state"))), task_id)


def poll(read: StatusReader, ids: Sequence[str], done: Callable[[list[dict[str, Any] | None]], bool],
         timeout: float, what: str) -> list[dict[str, Any] | None]:
    """Read the records of ``ids`` until ``done(records)``; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        records = [read(i) for i in ids]
        if done(records):
            return records
        if time.monotonic() >= deadline:
            states = ", ".join(f"{i}: {state_of(r)}" for i, r in zip(ids, records, strict=True))
            raise TimeoutError(f"{what} not done after {timeout:g} s ({states})")
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.1)


def result_of(app: Any, record: dict[str, Any], task_id: str) -> Any:
    """The result in a final record, or the TaskError it stands for."""
    if record.get("state") in FAILED_STATES:
        raise task_error(app, record, task_id)
    return record.get("result")
