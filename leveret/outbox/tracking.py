"""``send(..., track=True)``: what became of one message, from the outbox's own records. See docs/outbox.md.

A tracked message has one ``tracking`` row per destination (outbox id, message_id, destination, sent_at), kept
after the message itself is deleted. Its state per destination:

- ``saved``: in the outbox, waiting to be forwarded;
- ``parked``: in the outbox, set aside (unroutable, no such exchange, refused), retried later; ``error`` says why;
- ``sent``: the destination's broker confirmed it (publisher confirm, or a routed HTTP publish) and it was
  deleted from the outbox;
- ``unknown``: no record (not tracked, pruned, or deleted by hand).

The message's state is ``sent`` once every destination's is, else ``parked`` if one is parked, else ``saved``.
"delivered" and "processed" (a consumer received or acked it) need the broker to report them and are not built.
Rows of sent messages are pruned after ``TRACK_KEEP`` seconds (by the forwarder, when idle).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

SAVED, PARKED, SENT, UNKNOWN = "saved", "parked", "sent", "unknown"
TRACK_KEEP = 7 * 24 * 3600.0


class _Tracks(Protocol):
    def tracked(self, message_id: str) -> dict[str, Any]: ...


def summarise(message_id: str, rows: list[tuple[str, float | None, int | None, str | None]]) -> dict[str, Any]:
    """(destination, sent_at, pending state or None, pending error) rows -> the status dict."""
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
    states = {e["state"] for e in destinations.values()}
    if not destinations:
        overall = UNKNOWN
    elif states == {SENT}:
        overall = SENT
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
        """Poll until the message's state is ``state`` (only ``sent`` is reached by forwarding); the status.
        TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["state"] == state:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"message {self} is {status['state']}, not {state}, after {timeout} s")
            time.sleep(interval)
