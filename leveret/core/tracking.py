"""Message tracking: what happened to a message, looked up by its ``message_id`` property.

The core calls :meth:`Tracker.record` at each step of a message's life (published, delivered, acked, rejected,
dead-lettered, expired, dropped, delayed, retried, got, purged, queue deleted). Every hook in the core is
written ``if msg.flags & MESSAGE_ID and tracker is not None``: a message without a ``message_id`` costs that
one bit test and nothing else; a broker with tracking off (``broker.tracker is None``) costs one more
comparison for messages that have one.

The record is one append-only log of events, a ``deque`` bounded to ``max_events``: an event is one flat tuple
(vhost, the message's content header, time, kind, values...) of strings, bytes and numbers, so recording costs
one tuple and an append (no id decoding, no per-message containers to keep, evict or garbage-collect; the
header object is the message's own, shared), and memory is at most ``max_events`` small tuples plus the
headers they keep. Events older than ``window`` seconds are dropped (and never shown). A lookup scans the log
(a substring test of the id in each header, then the header's message_id is read): tens of milliseconds for
100,000 events, for a person asking. The field names of each kind are in :data:`FIELDS`; the dicts a person
reads are built only then.
"""

from __future__ import annotations

import datetime
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import NotFound

if TYPE_CHECKING:
    from .message import Message
    from .queue import Queue

MESSAGE_ID = 0x0080  # the message-id bit of the basic property flags

FIELDS: dict[str, tuple[str, ...]] = {
    "published": ("exchange", "routing_key", "queues", "outcome"),  # outcome: routed, unroutable, returned
    "refused": ("queue", "reason"),  # x-overflow reject-publish: the queue did not take it
    "deduplicated": ("kind", "name"),  # x-message-deduplication: a duplicate dropped by a queue or an exchange
    "delayed": ("exchange", "delay_ms"),
    "delay_ended": ("exchange", "queues"),
    "delivered": ("queue", "consumer_tag", "connection", "channel", "redelivered", "ack_required"),
    "got": ("queue", "connection", "channel", "redelivered", "ack_required"),  # basic.get
    "acked": ("queue", "connection", "channel"),
    "rejected": ("queue", "requeue", "connection", "channel"),  # basic.reject and basic.nack
    "requeued": ("queue", "reason", "connection", "channel"),  # channel closed, basic.recover
    "dead_lettered": ("queue", "reason", "exchange", "queues"),
    "moved": ("queue", "queues", "connection"),  # the management API's move and replay_dead_letters
    "expired": ("queue",),
    "dropped": ("queue", "reason"),  # maxlen (drop-head), delivery_limit, retries_exhausted
    "retried": ("queue", "attempt", "delay_ms"),
    "retry_due": ("queue",),
    "purged": ("queue",),
    "queue_deleted": ("queue",),
}


class Tracker:
    """The recent events of messages with a message id. ``now`` gives wall-clock seconds (tests pass a clock
    of their own; the broker's is ``time.time`` itself, the cheapest call on this path)."""

    def __init__(self, window: float, max_events: int, now: Callable[[], float] = time.time) -> None:
        self.window = window
        self.max_events = max_events
        self.now = now
        self.log: deque[tuple[Any, ...]] = deque(maxlen=max_events)  # (vhost, content header, time, kind, *values)
        self._next_trim = 0.0

    def __len__(self) -> int:
        return len(self.log)

    def describe(self) -> str:
        return f"on: {len(self.log)} events kept (at most {self.max_events}, for {self.window:g} s)"

    # --- recording ---------------------------------------------------------------------------------

    def record(self, vhost: str, msg: Message, kind: str, *values: Any) -> None:
        """Add an event of ``kind`` (a key of FIELDS, with its values in order) for ``msg``, whose properties
        have a message_id. The event keeps the message's content header (shared with the message, not a copy);
        the id is read from it only when someone looks."""
        now = self.now()
        self.log.append((vhost, msg.header, now, kind) + values)  # noqa: RUF005 (faster than unpacking)
        if now >= self._next_trim:
            self._trim(now)

    def _trim(self, now: float) -> None:
        """Drop the events older than the window (at most once a second; lookups check the age themselves)."""
        log = self.log
        horizon = now - self.window
        while log and log[0][2] < horizon:
            log.popleft()
        self._next_trim = now + 1.0

    def queue_events(self, queue: Queue, msgs: Iterable[Message], kind: str) -> None:
        """One event for each message of ``msgs`` that has a message id (purge, queue deleted)."""
        vhost = queue.vhost.name
        for msg in msgs:
            if msg.flags & MESSAGE_ID:
                self.record(vhost, msg, kind, queue.name)

    # --- looking up --------------------------------------------------------------------------------

    def events(self, vhost: str, message_id: str) -> list[dict[str, Any]]:
        """The events recorded for ``message_id`` in ``vhost``, oldest first ([] when none are kept)."""
        horizon = self.now() - self.window
        needle = message_id.encode()
        ids: dict[int, str | None] = {}  # id(header) -> its message id, once per header in this scan
        found = []
        for event in list(self.log):
            header = event[1]
            if event[0] != vhost or needle not in header or event[2] < horizon:
                continue
            key = id(header)
            if key not in ids:
                ids[key] = message_id_of(header, (header[12] << 8) | header[13])
            if ids[key] != message_id:
                continue
            at, kind = event[2], event[3]
            item: dict[str, Any] = {
                "time": datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds"),
                "timestamp": at, "event": kind}
            item.update((name, list(value) if type(value) is tuple else value)
                        for name, value in zip(FIELDS[kind], event[4:], strict=False))
            found.append(item)
        return found

    def events_or_raise(self, vhost: str, message_id: str) -> list[dict[str, Any]]:
        found = self.events(vhost, message_id)
        if not found:
            raise NotFound(f"no record of message id '{message_id}' in vhost '{vhost}' (tracking keeps the last "
                           f"{self.window:g} s and at most {self.max_events} events)")
        return found


def message_id_of(header: bytes, flags: int) -> str | None:
    """The message_id property read straight from a content header (class, weight, body size, flags, then the
    properties in order), without decoding the other properties: the tracking hooks' fast path. A header
    whose lengths run past its end (a client may send one) has no readable id: None."""
    if not flags & MESSAGE_ID:
        return None
    try:
        return _read_message_id(header, flags)
    except IndexError:
        return None


def _read_message_id(header: bytes, flags: int) -> str | None:
    offset = 14
    if flags & 0x8000:  # content-type
        offset += 1 + header[offset]
    if flags & 0x4000:  # content-encoding
        offset += 1 + header[offset]
    if flags & 0x2000:  # headers: a table with a 32-bit length
        offset += 4 + int.from_bytes(header[offset:offset + 4], "big")
    offset += (flags & 0x1000 != 0) + (flags & 0x0800 != 0)  # delivery-mode, priority: one octet each
    if flags & 0x0400:  # correlation-id
        offset += 1 + header[offset]
    if flags & 0x0200:  # reply-to
        offset += 1 + header[offset]
    if flags & 0x0100:  # expiration
        offset += 1 + header[offset]
    length = header[offset]
    if offset + 1 + length > len(header):
        return None
    return header[offset + 1:offset + 1 + length].decode("utf-8", "replace")
