"""``send(..., track=True)``: what became of one message, from the outbox's own records and, on Leveret, the
broker's job-done notices. See docs/outbox.md.

A tracked message has one ``tracking`` row per destination (outbox id, message_id, destination, sent_at), kept
after the message itself is deleted, and the notices its destination's broker sent about it (``notices`` rows:
destination, queue, event, reason, ts, queues; recorded by the forwarder, outbox/notices.py). Its state per
destination:

- ``saved``: in the outbox, waiting to be forwarded;
- ``parked``: in the outbox, set aside (unroutable, no such exchange, refused), retried later; ``error`` says why;
- ``sent``: the destination's broker confirmed it (publisher confirm, or a routed HTTP publish) and it was
  deleted from the outbox;
- ``delivered``: (Leveret) a consumer received it from one of the queues it was routed to;
- ``processed``: (Leveret) every queue it was routed to reports it processed (acked by a consumer, or delivered
  without ack);
- ``failed``: (Leveret) it left a queue without being processed: rejected without requeue, expired, dropped by a
  length or delivery limit, retries used up (``error`` says which queue and why; dead-lettered when the queue has
  a dead-letter exchange);
- ``unknown``: no record (not tracked, pruned, or deleted by hand).

The message's state is ``failed`` when a destination's is; else the least advanced of its destinations' states
(saved < parked < sent < delivered < processed). Against RabbitMQ the states stop at ``sent``. Rows are pruned
after ``TRACK_KEEP`` seconds (by the forwarder, when idle).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any, Protocol

SAVED, PARKED, SENT, UNKNOWN = "saved", "parked", "sent", "unknown"
DELIVERED, PROCESSED, FAILED = "delivered", "processed", "failed"
TRACK_KEEP = 7 * 24 * 3600.0
_RANK = {SAVED: 0, PARKED: 1, SENT: 2, DELIVERED: 3, PROCESSED: 4}
NOTICE_EVENTS = frozenset(("routed", DELIVERED, PROCESSED, FAILED))

# A notice as stored: (message_id, destination, queue, event, reason, ts, queues as JSON text or None)
Notice = tuple[str, str, str, str, str | None, float, str | None]


class _Tracks(Protocol):
    def tracked(self, message_id: str) -> dict[str, Any]: ...


def parse_notice(body: bytes, destination: str) -> Notice | None:
    """A broker's notice (core/notices.py: JSON ``{id, event, queue, reason, ts[, queues]}``) as stored, or None
    when it is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("event") not in NOTICE_EVENTS or not isinstance(data.get("id"), str):
        return None
    queues = data.get("queues")
    reason = data.get("reason")
    ts = data.get("ts")
    return (data["id"], destination, str(data.get("queue") or ""), data["event"],
            reason if isinstance(reason, str) else None, float(ts) if isinstance(ts, int | float) else time.time(),
            json.dumps(queues) if isinstance(queues, list) else None)


def _broker_state(entry: dict[str, Any], events: list[tuple[str, str, str | None, float, str | None]]) -> None:
    """Raise ``entry`` (a destination's) to what the broker's notices say: (queue, event, reason, ts, queues)."""
    routed: set[str] = set()
    per_queue: dict[str, str] = {}
    for queue, event, reason, ts, queues in sorted(events, key=lambda e: e[3]):
        if event == "routed":
            routed.update(json.loads(queues) if queues else ())
            continue
        if per_queue.get(queue) == FAILED:
            continue
        if event == FAILED:
            per_queue[queue] = FAILED
            entry["error"] = f"{queue}: {reason}" if reason else queue
            entry["failed_at"] = entry.get("failed_at") or ts
        elif event == PROCESSED:
            per_queue[queue] = PROCESSED
            entry["processed_at"] = ts
        elif per_queue.get(queue) != PROCESSED:
            per_queue[queue] = DELIVERED
            entry["delivered_at"] = entry.get("delivered_at") or ts
    for queue in routed:
        per_queue.setdefault(queue, SENT)
    entry["queues"] = per_queue
    states = set(per_queue.values())
    if FAILED in states:
        entry["state"] = FAILED
    elif states and states == {PROCESSED}:
        entry["state"] = PROCESSED
    elif DELIVERED in states or PROCESSED in states:
        entry["state"] = DELIVERED
    elif entry["state"] in (SAVED, UNKNOWN) and per_queue:
        entry["state"] = SENT  # its notices came before the forwarder recorded the confirm


def summarise(message_id: str, rows: list[tuple[str, float | None, int | None, str | None]],
              notices: Iterable[tuple[str, str, str, str | None, float, str | None]] = ()) -> dict[str, Any]:
    """(destination, sent_at, pending state or None, pending error) rows and (destination, queue, event, reason,
    ts, queues) notices -> the status dict."""
    destinations: dict[str, dict[str, Any]] = {}
    for destination, sent_at, state, error in rows:
        if sent_at is not None:
            entry: dict[str, Any] = {"state": SENT, "sent_at": sent_at, "error": None}
        elif state == 1:
            entry = {"state": PARKED, "sent_at": None, "error": error}
        elif state == 0:
            entry = {"state": SAVED, "sent_at": None, "error": error}
        else:
            entry = {"state": UNKNOWN, "sent_at": None, "error": None}
        destinations[destination] = entry
    by_destination: dict[str, list[tuple[str, str, str | None, float, str | None]]] = {}
    for destination, queue, event, reason, ts, queues in notices:
        by_destination.setdefault(destination, []).append((queue, event, reason, ts, queues))
    for destination, events in by_destination.items():
        if destination in destinations:
            _broker_state(destinations[destination], events)
    states = {e["state"] for e in destinations.values()}
    if not destinations:
        overall = UNKNOWN
    elif FAILED in states:
        overall = FAILED
    elif states <= {SENT, DELIVERED, PROCESSED}:
        overall = min(states, key=_RANK.__getitem__)
    elif PARKED in states:
        overall = PARKED
    elif SAVED in states:
        overall = SAVED
    else:
        overall = UNKNOWN
    return {"message_id": message_id, "state": overall, "destinations": destinations}


class TrackedMessage(str):
    """What ``send(..., track=True)`` returns: the message_id (a str, as without tracking) that can tell its
    state: ``status()``, ``wait(state, timeout)``."""

    outbox: _Tracks

    def __new__(cls, message_id: str, outbox: _Tracks) -> TrackedMessage:
        self = super().__new__(cls, message_id)
        self.outbox = outbox
        return self

    @property
    def message_id(self) -> str:
        return str(self)

    def status(self) -> dict[str, Any]:
        """``{"message_id", "state", "destinations": {name: {"state", "sent_at", "error"}}}``."""
        return self.outbox.tracked(str(self))

    def wait(self, state: str = SENT, timeout: float = 30.0, interval: float = 0.1) -> dict[str, Any]:
        """Poll until the message reaches ``state`` or a later one (saved < sent < delivered < processed), or
        ``failed`` (returned: check ``status["state"]``); the status. TimeoutError after ``timeout`` seconds.
        ``delivered``, ``processed`` and ``failed`` come from Leveret's notices (never from RabbitMQ)."""
        deadline = time.monotonic() + timeout
        wanted = _RANK.get(state, -1)
        while True:
            status = self.status()
            reached = status["state"]
            if reached in (state, FAILED) or (wanted >= _RANK[SENT] and _RANK.get(reached, -1) >= wanted):
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"message {self} is {reached}, not {state}, after {timeout} s")
            time.sleep(interval)
