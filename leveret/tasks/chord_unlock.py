"""The chord unlock: the internal task ``leveret.chord_unlock`` that looks at a chord's members' status records
and sends the callback, fails the chord (``leveret.chord_failed``) or looks again later (see ``canvas``)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from leveret.tasks.records import FAILED_STATES, StatusReader, reader_of, state_of
from leveret.tasks.retry import Retry
from leveret.tasks.status import FINAL_STATES, MAX_RESULT_BYTES

log = logging.getLogger("leveret.tasks.canvas")

UNLOCK_TASK = "leveret.chord_unlock"
FAILED_TASK = "leveret.chord_failed"

# The chord unlock's back-off: FIRST, FIRST * 2, ... up to CAP seconds between two looks at the members. A
# fixed series (no jitter) on purpose: on RabbitMQ each distinct delay is one wait queue per callback queue.
UNLOCK_FIRST = 0.2
UNLOCK_CAP = 3.2
DEFAULT_MAX_WAIT = 3600.0  # seconds a chord waits for its members before it fails


class ChordError(Exception):
    """Why a chord failed (a member gave up or was revoked, a result was not kept, the wait was too long): the
    error of the chord's "gave_up" record, so ``ChordResult.result()`` raises ``TaskError("ChordError", ...)``."""


# --- the unlock: deciding (pure) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendCallback:
    results: list[Any]


@dataclass(frozen=True)
class FailChord:
    reason: str


@dataclass(frozen=True)
class WaitMore:
    delay: float


@dataclass(frozen=True)
class AlreadyDone:
    state: str


Decision = SendCallback | FailChord | WaitMore | AlreadyDone


def backoff(attempt: int) -> float:
    """Seconds before unlock attempt ``attempt + 1``: UNLOCK_FIRST doubling up to UNLOCK_CAP."""
    return min(UNLOCK_CAP, UNLOCK_FIRST * 2 ** min(attempt, 16))


def decide(spec: dict[str, Any], attempt: int, read: StatusReader, now: float) -> Decision:
    """What unlock attempt ``attempt`` of chord ``spec`` does, from the records ``read`` returns (the callback's
    first: once it has a record, it was sent, and nothing is done twice)."""
    callback = read(spec["callback_id"])
    if callback is not None:
        return AlreadyDone(state_of(callback))
    records = [read(i) for i in spec["members"]]
    names = spec.get("names") or [""] * len(records)
    for index, (task_id, name, record) in enumerate(zip(spec["members"], names, records, strict=True)):
        if record is not None and record.get("state") in FAILED_STATES:
            error = record.get("error") or {}
            what = f"{error.get('type', 'Exception')}: {error.get('message', '')}" if error else record["state"]
            return FailChord(f"chord member {index} ({name}, id {task_id}) {record['state']}: {what}")
    if all(r is not None and r.get("state") == "succeeded" for r in records):
        missing = [i for i, r in enumerate(records) if r is not None and "result" not in r]
        if missing:
            index = missing[0]
            return FailChord(f"chord member {index} ({names[index]}, id {spec['members'][index]}) succeeded but "
                             f"its result is not kept (its JSON is over {MAX_RESULT_BYTES} bytes, or the task has "
                             f"keep_result=False)")
        return SendCallback([r["result"] for r in records if r is not None])
    waited = now - float(spec["started"])
    if waited >= float(spec["max_wait"]):
        pending = [f"{i} ({spec['members'][i]}: {state_of(r)})" for i, r in enumerate(records)
                   if state_of(r) not in FINAL_STATES]
        return FailChord(f"chord members not done after {spec['max_wait']:g} s: {', '.join(pending)}")
    return WaitMore(min(backoff(attempt), max(0.0, float(spec["max_wait"]) - waited)))


# --- the unlock: acting -----------------------------------------------------------------------------------------


def unlock_id(callback_id: str, attempt: int) -> str:
    return f"{callback_id}.unlock.{attempt}"


def on_queue(task: Any, queue: str) -> Any:
    """The task as sent to ``queue`` (the worker runs a message by its task name, whatever its queue)."""
    return task if task.queue == queue else dataclasses.replace(task, queue=queue)


def send_unlock(app: Any, spec: dict[str, Any], attempt: int, delay: float | None = None) -> None:
    unlock = on_queue(app.tasks[UNLOCK_TASK], spec["callback"]["queue"])
    unlock.send_with({"chord": spec, "attempt": attempt}, delay=backoff(attempt) if delay is None else delay,
                     task_id=unlock_id(spec["callback_id"], attempt))


def unlock(app: Any, chord: dict[str, Any], attempt: int) -> str:
    """One look at a chord's members (the body of ``leveret.chord_unlock``): send the callback, fail the chord,
    or send the next look. Returns what it did (the unlock's own result)."""
    try:
        decision = decide(chord, attempt, reader_of(app), time.time())
    except Exception as exc:  # the records cannot be read now (e.g. the broker restarts): look again later
        log.warning("chord %s: cannot read the status records (%s); looking again later", chord["callback_id"], exc)
        if time.time() - float(chord["started"]) >= float(chord["max_wait"]):
            decision = FailChord(f"cannot read the members' status records after {chord['max_wait']:g} s: {exc}")
        else:
            decision = WaitMore(backoff(attempt))
    cb = chord["callback"]
    if isinstance(decision, AlreadyDone):
        return f"callback {chord['callback_id']} already {decision.state}"
    if isinstance(decision, SendCallback):
        task = app.tasks.get(cb["task"])
        if task is None:
            decision = FailChord(f"chord callback {cb['task']!r} is not a task of app {app.name!r} here")
        else:
            payload = {**cb["payload"], cb["result_arg"]: decision.results}
            on_queue(task, cb["queue"]).send_with(payload, task_id=chord["callback_id"], **cb.get("options", {}))
            return f"sent callback {chord['callback_id']}"
    if isinstance(decision, FailChord):
        failed = on_queue(app.tasks[FAILED_TASK], cb["queue"])
        failed.send_with({"reason": decision.reason, "callback": cb["task"]}, task_id=chord["callback_id"])
        return f"failed chord {chord['callback_id']}: {decision.reason}"
    assert isinstance(decision, WaitMore)
    send_unlock(app, chord, attempt + 1, decision.delay)
    return f"waiting {decision.delay:g} s"


def install(app: Any, queue: str | None = None) -> None:
    """Register ``leveret.chord_unlock`` and ``leveret.chord_failed`` on ``app`` (once; idempotent). Their
    messages go to the chord callback's queue, so the workers of that queue run them; ``queue`` (default: the
    app's default queue) is only where they are registered. The producer and the workers must both install
    them: call it where the app is defined (``chord()`` calls it too)."""
    if UNLOCK_TASK in app.tasks:
        return
    home = queue or app.name

    def chord_unlock(chord: dict[str, Any], attempt: int) -> str:
        return unlock(app, chord, attempt)

    def chord_failed(reason: str, callback: str) -> None:
        raise ChordError(reason)

    # No retry strategy of their own: one would change the x-retry-intervals of the queue they are registered
    # on (Leveret derives a queue's arguments from its tasks). An unlock that cannot read or send gives up.
    app.task(name=UNLOCK_TASK, queue=home, retry=Retry.ignore())(chord_unlock)
    app.task(name=FAILED_TASK, queue=home, retry=Retry.ignore())(chord_failed)
