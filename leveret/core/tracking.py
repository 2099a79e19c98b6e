"""Message tracking: what happened to a message, looked up by its ``message_id`` property.

The core calls :class:`Tracker` at each step of a message's life (published, delivered, acked, rejected,
dead-lettered, expired, dropped, delayed, retried, got, purged, queue deleted). Every hook in the core is
written ``if msg.flags & MESSAGE_ID and tracker is not None``: a message without a ``message_id`` costs that
one bit test and nothing else; a broker with tracking off (``broker.tracker is None``) costs one more
comparison for messages that have one.

Memory is bounded: at most ``max_messages`` message ids are kept (the least recently active is forgotten
first), each with at most ``MAX_EVENTS`` events, and ids with no event for ``window`` seconds are forgotten.
An event is a small tuple (time, kind, values); the field names of each kind are in :data:`FIELDS` and the
dicts a person reads are built only when someone looks (:meth:`Tracker.events`).
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import NotFound

if TYPE_CHECKING:
    from .message import Message
    from .queue import Queue

MESSAGE_ID = 0x0080  # the message-id bit of the basic property flags
MAX_EVENTS = 64  # per message id; later events replace the last one (a message requeued forever stays bounded)

FIELDS: dict[str, tuple[str, ...]] = {
    "published": ("exchange", "routing_key", "queues", "outcome"),  # outcome: routed, unroutable, returned
    "refused": ("queue", "reason"),  # x-overflow reject-publish: the queue did not take it
    "delayed": ("exchange", "delay_ms"),
    "delay_ended": ("exchange", "queues"),
    "delivered": ("queue", "consumer_tag", "connection", "channel", "redelivered", "ack_required"),
    "got": ("queue", "connection", "channel", "redelivered", "ack_required"),  # basic.get
    "acked": ("queue", "connection", "channel"),
    "rejected": ("queue", "requeue", "connection", "channel"),  # basic.reject and basic.nack
    "requeued": ("queue", "reason", "connection", "channel"),  # channel closed, basic.recover
    "dead_lettered": ("queue", "reason", "exchange", "queues"),
    "expired": ("queue",),
    "dropped": ("queue", "reason"),  # maxlen (drop-head), delivery_limit, retries_exhausted
    "retried": ("queue", "attempt", "delay_ms"),
    "retry_due": ("queue",),
    "purged": ("queue",),
    "queue_deleted": ("queue",),
}


class Tracker:
    """The last events of recently seen message ids, per vhost. ``now`` gives wall-clock seconds."""

    def __init__(self, window: float, max_messages: int, now: Callable[[], float]) -> None:
        self.window = window
        self.max_messages = max_messages
        self.now = now
        self._records: OrderedDict[tuple[str, str], list[tuple[float, str, tuple[Any, ...]]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def describe(self) -> str:
        return f"on: {len(self._records)} message ids kept, window {self.window:g} s, max {self.max_messages}"

    # --- recording ---------------------------------------------------------------------------------

    def record(self, vhost: str, msg: Message, kind: str, *values: Any) -> None:
        """Add an event of ``kind`` (a key of FIELDS, with its values in order) for ``msg``'s message_id."""
        message_id = msg.properties.get("message_id")
        if not message_id:
            return
        key = (vhost, str(message_id))
        now = self.now()
        records = self._records
        events = records.get(key)
        if events is None:
            self._trim(now)
            events = records[key] = []
        else:
            records.move_to_end(key)
        event = (now, kind, values)
        if len(events) < MAX_EVENTS:
            events.append(event)
        else:
            events[-1] = event

    def _trim(self, now: float) -> None:
        records = self._records
        while len(records) >= self.max_messages:
            records.popitem(last=False)
        horizon = now - self.window
        while records:
            oldest = next(iter(records.values()))
            if oldest[-1][0] >= horizon:
                break
            records.popitem(last=False)

    # the hooks' shorthand for the common events

    def queue_event(self, queue: Queue, msg: Message, kind: str, *values: Any) -> None:
        self.record(queue.vhost.name, msg, kind, queue.name, *values)

    def queue_events(self, queue: Queue, msgs: Iterable[Message], kind: str) -> None:
        """One event for each message of ``msgs`` that has a message id (purge, queue deleted)."""
        for msg in msgs:
            if msg.flags & MESSAGE_ID:
                self.record(queue.vhost.name, msg, kind, queue.name)

    # --- looking up --------------------------------------------------------------------------------

    def events(self, vhost: str, message_id: str) -> list[dict[str, Any]]:
        """The events recorded for ``message_id`` in ``vhost``, oldest first ([] when none are kept)."""
        events = self._records.get((vhost, message_id))
        if not events or events[-1][0] < self.now() - self.window:
            return []
        found = []
        for at, kind, values in events:
            item: dict[str, Any] = {
                "time": datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds"),
                "timestamp": at, "event": kind}
            item.update(zip(FIELDS[kind], values, strict=False))
            found.append(item)
        return found

    def events_or_raise(self, vhost: str, message_id: str) -> list[dict[str, Any]]:
        found = self.events(vhost, message_id)
        if not found:
            raise NotFound(f"no record of message id '{message_id}' in vhost '{vhost}' (tracking keeps the last "
                           f"{self.window:g} s and at most {self.max_messages} message ids)")
        return found
