"""Queues: ready messages, and their delivery to consumers (:class:`~leveret.core.consumer.Consumer`).

A queue holds ready messages in arrival order and hands them to consumers round-robin among those with
credit (prefetch room, a writable connection, an active channel). Unacked messages are held by the
channel that received them (see :mod:`leveret.core.channel`) and come back here on requeue, to their
original position.

A durable queue keeps only a window of its ready messages in memory (its paging part: core/paging.py): past
``queue_memory_window`` ready records, newer messages go to the tail and, once their commit is done, leave
memory altogether (record and body); they are read back from the store in seq order as the head drains.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import notices
from .consumer import Consumer  # re-exported: leveret.core.queue.Consumer
from .dedup import make_window
from .lifecycle import PriorityMessages, QueueSettings, count_delivery, parse_settings
from .message import NOTIFY, PAGED, RECORD_COST, Message, new_message
from .paging import Paging
from .remote import refuse_remote
from .status import STATUS_ARGUMENT
from .tracking import MESSAGE_ID

if TYPE_CHECKING:
    from .durability import Durability
    from .memory import MemoryMonitor
    from .session import RemoteConnection, Session
    from .status import StatusBook
    from .timers import Handle
    from .vhost import VHost

log = logging.getLogger("leveret.queue")


class Queue(Paging):
    """A queue of one vhost (its paging part: core/paging.py). ``exclusive_owner`` is the session that owns an
    exclusive queue."""

    def __init__(self, vhost: VHost, name: str, *, durable: bool = False,
                 exclusive_owner: Session | RemoteConnection | None = None, auto_delete: bool = False,
                 arguments: dict[str, Any] | None = None) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments: dict[str, Any] = dict(arguments or {})
        self.messages: deque[Message] | PriorityMessages = deque()
        self.consumers: list[Consumer] = []
        self.ready_bytes = 0
        self.unacked_count = 0
        self.deleted = False
        self.served_by: str | None = None  # several nodes: the node that owns this queue when not this one
        self.had_consumers = False
        self.memory: MemoryMonitor = vhost.broker.memory
        self.durability: Durability | None = vhost.broker.durability if durable else None
        self.memory_budget = vhost.broker.queue_memory_budget
        self._init_paging(vhost.broker.queue_memory_window)  # ready = head + delta + tail: core/paging.py
        self._next_seq = 1
        self._rr = 0
        self._prioritised = False  # consumers of more than one x-priority: see _next_by_priority
        self._rr_by_priority: dict[int, int] = {}
        self.stats_published = 0
        self.stats_delivered = 0
        self.stats_acked = 0
        self.stats_redelivered = 0  # deliveries and gets of a message marked redelivered (RabbitMQ's redeliver)
        self.timers = vhost.broker.timers
        self.tracker = vhost.broker.tracker
        self.settings = QueueSettings()
        self.policy: str | None = None
        self.lifecycle = False
        self._sac: list[Consumer] = []  # consumers in arrival order, for single active consumer
        self._sac_handover: Consumer | None = None  # a cancelled active consumer still holding messages
        self._expiry_handle: Handle | None = None
        self._expiry_at = 0.0
        self._unused_handle: Handle | None = None
        # x-leveret-status: the status book records "queued" for messages with a message_id (core/status.py)
        self.status: StatusBook | None = vhost.broker.status if self.arguments.get(STATUS_ARGUMENT) is True \
            else None
        self.configure(parse_settings(self.arguments, name, vhost.name))
        # x-message-deduplication: the ids of the last messages taken (core/dedup.py)
        self.dedup = make_window(self.arguments, "queue", vhost.name, name, durable, vhost.broker)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} in vhost {self.vhost.name!r}>"

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        if self._paging:
            return len(self.messages) + self._disk + len(self._pinned) + len(self._tail)
        return len(self.messages)

    @property
    def resident_count(self) -> int:
        """Ready messages whose record is in memory (the others are in the store only)."""
        return self.message_count - self._disk

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    def configure(self, settings: QueueSettings) -> None:
        """Apply lifecycle settings (from the queue's arguments and any policy)."""
        self.settings = settings
        self.lifecycle = settings.active
        if settings.max_priority and not isinstance(self.messages, PriorityMessages):
            while self._paging:  # a priority queue keeps every record in memory: read the rest back first
                self._refill()
            messages = PriorityMessages(settings.max_priority)
            for msg in self.messages:
                messages.append(msg)
            self.messages = messages
        if self.lifecycle:
            self._expire()
            self._enforce_limits()
            self._arm_unused_timer()

    # --- messages in -------------------------------------------------------------------------------

    def enqueue(self, msg: Message, checked: bool = False) -> bool:
        """Take a newly routed message (this queue's own record) and deliver it if a consumer can take it.
        Returns False when the queue refused it (x-overflow reject-publish). With x-message-deduplication, a
        message whose id the queue took recently is dropped and counts as taken (``DedupWindow.enqueue``, which
        calls back with ``checked``; so does the broker for a message it moves: dead-lettered, retried, delayed)."""
        if self.served_by is not None:  # another node's queue: handed over through the store (core/shared.py)
            durability = self.vhost.broker.durability  # a transient queue's too (its self.durability is None)
            if durability is None:
                return False
            durability.hand_over(self, msg)
            return True
        if self.dedup is not None and not checked:
            return self.dedup.enqueue(self, msg)
        if self.lifecycle or msg.flags & 0x0100:
            self.lifecycle = True  # a message with its own expiration: this queue now checks expiry
            return self._enqueue_lifecycle(msg)
        self._append(msg)
        if self.consumers:
            self.dispatch()
        return True

    def _append(self, msg: Message) -> None:
        """Give ``msg`` its position, store it if it is persistent and the queue durable, and count it."""
        msg.seq = self._next_seq
        self._next_seq += 1
        msg.queue = self
        if self.durability is not None and msg.persistent:
            self.durability.push(self, msg, self.ready_bytes > self.memory_budget)
            if self._paging:
                self._tail.append(msg)
            elif len(self.messages) >= self.window and type(self.messages) is deque:
                self._paging = True  # the head is full: this message and those after it go to the tail
                self._cursor = msg.seq - 1
                self._tail.append(msg)
            else:
                self.messages.append(msg)
        elif self._paging:
            self._tail.append(msg)
        else:
            self.messages.append(msg)
        if self.status is not None and msg.flags & MESSAGE_ID:
            self.status.queued(self, msg)
        size = len(msg.body)
        self.ready_bytes += size
        self.stats_published += 1
        memory = self.memory
        memory.used += size + RECORD_COST
        if memory.used > memory.check_at:
            memory.check()

    def _enqueue_lifecycle(self, msg: Message) -> bool:
        settings = self.settings
        if settings.limited and settings.overflow != "drop-head" and self._full(msg.size):
            if msg.flags & MESSAGE_ID and self.tracker is not None:
                self.tracker.record(self.vhost.name, msg, "refused", self.name, f"maxlen ({settings.overflow})")
            if settings.overflow == "reject-publish-dlx":
                self.vhost.dead_letter(self, msg, "maxlen")
            return False
        now = self.timers.now() * 1000
        self._set_expiry(msg, now)
        self._append(msg)
        if self.consumers:  # a ready consumer takes the head before a limit or the TTL drops it
            self._dispatch_lifecycle(now)
        if settings.limited:
            self._enforce_limits()
        if msg.expires_at:
            self._expire()
        return True

    def _set_expiry(self, msg: Message, now: float = 0.0) -> None:
        ttl = self.settings.message_ttl
        if msg.flags & 0x0100:  # per-message expiration (validated at publish)
            expiration = int(msg.properties["expiration"])
            ttl = expiration if ttl is None else min(ttl, expiration)
        msg.expires_at = (now or self.timers.now() * 1000) + ttl if ttl is not None else 0.0

    def _full(self, size: int) -> bool:
        settings = self.settings
        return ((settings.max_length is not None and self.message_count >= settings.max_length)
                or (settings.max_length_bytes is not None and self.ready_bytes + size > settings.max_length_bytes))

    def _enforce_limits(self) -> None:
        """x-overflow drop-head: drop (dead-letter, reason maxlen) from the head until within the limits."""
        settings = self.settings
        if not settings.limited or settings.overflow != "drop-head":
            return
        max_length, max_bytes = settings.max_length, settings.max_length_bytes
        messages = self.messages
        while messages and ((max_length is not None and self.message_count > max_length)
                            or (max_bytes is not None and self.ready_bytes > max_bytes)):
            self._drop_head("maxlen")
            messages = self.messages

    def _drop_head(self, reason: str, level: deque[Message] | None = None) -> None:
        if level is None:
            msg = self._pop_head()
        else:
            if level[0].body is PAGED:
                self.page_in()
            msg = self.messages.pop_from(level)  # type: ignore[union-attr]
        self.ready_bytes -= len(msg.body)
        self.drop(msg, reason)

    def _expire(self) -> None:
        """Drop (dead-letter, reason expired) expired messages at the head, and time the next expiry.
        Like RabbitMQ's classic queues, a message expires when it reaches the head."""
        messages = self.messages
        if not messages:
            return
        now = self.timers.now() * 1000
        if isinstance(messages, PriorityMessages):
            next_at = 0.0
            for level, _head in list(messages.heads()):
                while level and 0 < level[0].expires_at <= now:
                    self._drop_head("expired", level)
                if level and level[0].expires_at and (not next_at or level[0].expires_at < next_at):
                    next_at = level[0].expires_at
        else:
            while messages and 0 < messages[0].expires_at <= now:
                self._drop_head("expired")
            next_at = messages[0].expires_at if messages else 0.0
        if next_at and (self._expiry_handle is None or next_at < self._expiry_at):
            if self._expiry_handle is not None:
                self._expiry_handle.cancel()
            self._expiry_at = next_at
            self._expiry_handle = self.timers.call_later((next_at - now) / 1000 + 0.001, self._on_expiry_timer)

    def _on_expiry_timer(self) -> None:
        self._expiry_handle = None
        if not self.deleted:
            self._expire()

    def _arm_unused_timer(self) -> None:
        """x-expires: delete the queue when it has had no consumer and no basic.get for that long."""
        if self._unused_handle is not None:
            self._unused_handle.cancel()
            self._unused_handle = None
        expires = self.settings.expires
        if expires is not None and not self.consumers and not self.deleted:
            self._unused_handle = self.timers.call_later(expires / 1000, self._on_unused)

    def touch(self) -> None:
        """The queue was used (declared again, passively too; basic.get): restart its x-expires countdown."""
        if self.settings.expires is not None:
            self._arm_unused_timer()

    def _on_unused(self) -> None:
        self._unused_handle = None
        if not self.consumers and not self.deleted and self.served_by is None:
            self.vhost.remove_queue(self)

    def stop_timers(self) -> None:
        for handle in (self._expiry_handle, self._unused_handle):
            if handle is not None:
                handle.cancel()
        self._expiry_handle = self._unused_handle = None

    def requeue(self, msgs: Iterable[Message]) -> None:
        """Put unacked messages back at their original positions, marked redelivered."""
        messages = self.messages
        limit = self.settings.delivery_limit
        for msg in msgs:
            msg.redelivered = True
            msg.consumer = None
            self.unacked_count -= 1
            if msg.store_id < 0:  # its store write failed (publisher nacked): it does not come back
                msg.store_id = 0
                self.settle(msg)
                continue
            if limit is not None and msg.delivery_count > limit:
                self.drop(msg, "delivery_limit")
                continue
            self.ready_bytes += msg.size
            if isinstance(messages, PriorityMessages):
                messages.reinsert(msg)
            elif not messages or msg.seq < messages[0].seq:
                messages.appendleft(msg)
            elif msg.seq > messages[-1].seq:
                messages.append(msg)
            else:
                messages.insert(bisect.bisect_left(messages, msg.seq, key=_seq), msg)
        if self.lifecycle:
            if self.settings.limited:
                self._enforce_limits()  # drop-head: requeued messages do not take a full queue past its limit
            self._expire()  # a message that expired while unacked is dead-lettered as expired
        if self.consumers:
            self.dispatch()

    # --- messages out ------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Deliver ready messages while some consumer has credit."""
        if self.lifecycle:
            self._dispatch_lifecycle()
            return
        messages = self.messages
        consumers = self.consumers
        while messages and consumers:
            if len(consumers) == 1:
                consumer = consumers[0]
                if not consumer.has_credit():
                    return
            else:
                found = self._next_consumer()
                if found is None:
                    return
                consumer = found
            self._deliver_head(consumer)

    def _take_head(self) -> Message:
        """The head message, out of the ready ones and counted as delivered (a consumer or basic.get)."""
        msg = self._pop_head()
        self.ready_bytes -= len(msg.body)
        self.stats_delivered += 1
        if msg.redelivered:
            self.stats_redelivered += 1
        return msg

    def _deliver_head(self, consumer: Consumer) -> None:
        """The head message to ``consumer`` (which has credit)."""
        msg = self._take_head()
        consumer.channel.deliver(consumer, msg)
        if msg.store_id > 0:
            self.unload(msg)

    def _dispatch_lifecycle(self, now: float = 0.0) -> None:
        """Dispatch with expiry, single active consumer and priorities. ``now`` (ms) is given by enqueue, so
        that a message with TTL 0 still goes to a consumer that is ready for it (RabbitMQ's semantics)."""
        messages = self.messages
        if not self.consumers:
            return
        if not now:
            self._expire()
            now = self.timers.now() * 1000
        sac = self.settings.single_active_consumer
        while messages:
            if sac:
                if self._sac_handover is not None:
                    if self._sac_handover.unacked:
                        return  # keep the order: the previous consumer's messages come back first
                    self._sac_handover = None
                consumer: Consumer | None = self._sac[0] if self._sac and self._sac[0].has_credit() else None
            elif len(self.consumers) == 1:
                only = self.consumers[0]
                consumer = only if only.has_credit() else None
            else:
                consumer = self._next_consumer()
            if consumer is None:
                return
            msg = messages[0]
            if 0 < msg.expires_at < now:
                self._expire()
                continue
            self._deliver_head(consumer)

    @property
    def active_consumer(self) -> Consumer | None:
        """With single active consumer: the one that receives messages."""
        return self._sac[0] if self._sac else None

    def _next_consumer(self) -> Consumer | None:
        if self._prioritised:
            return self._next_by_priority()
        consumers = self.consumers
        n = len(consumers)
        start = self._rr
        for i in range(n):
            index = (start + i) % n
            consumer = consumers[index]
            if consumer.has_credit():
                self._rr = (index + 1) % n
                return consumer
        return None

    def _next_by_priority(self) -> Consumer | None:
        """Consumer priorities (x-priority), as RabbitMQ: the highest priority that has a consumer with credit
        gets the message, round-robin among the consumers of that priority. ``consumers`` is sorted by
        priority, highest first."""
        consumers = self.consumers
        n = len(consumers)
        start = 0
        while start < n:
            priority = consumers[start].priority
            end = start + 1
            while end < n and consumers[end].priority == priority:
                end += 1
            size = end - start
            offset = self._rr_by_priority.get(priority, 0)
            for i in range(size):
                k = (offset + i) % size
                consumer = consumers[start + k]
                if consumer.has_credit():
                    self._rr_by_priority[priority] = (k + 1) % size
                    return consumer
            start = end
        return None

    def get(self) -> Message | None:
        """basic.get: the next ready message, or None. The caller records or settles it."""
        if self.served_by is not None:
            refuse_remote(self)
        if self.lifecycle:
            self._expire()
            self.touch()
        if not self.messages:
            return None
        msg = self._take_head()
        if self.lifecycle:
            self._expire()  # the message behind it may have expired too: message_count leaves it out
        return msg

    def hand_out(self, msg: Message, ack: bool, notify: bool = True) -> None:
        """A message taken from this queue goes to a client (a consumer, basic.get, the management API's get):
        count the delivery (a quorum queue's x-delivery-count), then settle it at once (no ack) or hold it as
        unacked until :meth:`settle_unacked`, :meth:`requeue` or :meth:`drop_unacked`. A message with an
        ``x-leveret-notify`` header has its ``delivered`` notice sent (core/notices.py; not for a move:
        ``notify`` False)."""
        if notify and msg.flags & NOTIFY:
            notices.handed_out(self, msg, ack)
        msg.delivery_count += 1
        if self.settings.quorum:
            count_delivery(msg)
        if not ack:
            self.settle(msg)
            return
        self.unacked_count += 1
        if msg.store_id and self.durability is not None:
            self.durability.delivered(msg)

    def settle(self, msg: Message) -> None:
        """A message delivered from this queue is finished (acked, or delivered without ack)."""
        memory = self.memory
        memory.used -= len(msg.body) + RECORD_COST
        if memory.alarm:
            memory.check()
        if msg.store_id > 0 and self.durability is not None:
            self.durability.delete(msg)

    def settle_unacked(self, msg: Message, notify: bool = True) -> None:
        """An unacked message is acked (``notify`` False: moved, core/dead_letter.py)."""
        if notify and msg.flags & NOTIFY:
            notices.processed(self, msg)
        self.unacked_count -= 1
        self.stats_acked += 1
        self.settle(msg)

    def drop_unacked(self, msg: Message) -> None:
        """An unacked message is rejected without requeue: dropped (dead-lettered, retried)."""
        self.unacked_count -= 1
        self.drop(msg, "rejected")

    def drop(self, msg: Message, reason: str) -> None:
        """A message leaves the queue without being consumed (rejected, expired, maxlen, delivery_limit):
        dead-lettered when the queue has a dead-letter exchange, then gone. With ``x-retry-intervals``, a
        rejected message comes back after the next interval instead, until the intervals run out."""
        if reason == "rejected" and self.settings.retry_intervals is not None:
            if self._retry(msg):
                return
            reason = "retries_exhausted"
        if msg.flags & NOTIFY:
            notices.failed(self, msg, reason)
        if msg.flags & MESSAGE_ID and self.tracker is not None and reason != "rejected":
            if reason == "expired":
                self.tracker.record(self.vhost.name, msg, "expired", self.name)
            else:
                self.tracker.record(self.vhost.name, msg, "dropped", self.name, reason)
        if self.settings.dead_letter_exchange is not None:
            self.reload_body(msg)
            self.vhost.dead_letter(self, msg, reason)
        self.settle(msg)

    def _retry(self, msg: Message) -> bool:
        """Schedule the next attempt of a rejected message (Leveret's x-retry-intervals); False when its
        attempts are used up. The attempt number travels in the ``x-retry-count`` header."""
        intervals = self.settings.retry_intervals or ()
        headers = msg.headers or {}
        attempt = headers.get("x-retry-count", 0)
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
            attempt = 0
        if attempt >= len(intervals):
            return False
        self.reload_body(msg)
        props = dict(msg.properties)
        props["headers"] = {**headers, "x-retry-count": attempt + 1}
        again = new_message(msg.exchange, msg.routing_key, props, msg.body, msg.address)
        self.vhost.broker.delays.schedule_queue(self, again, self.timers.now() + intervals[attempt] / 1000)
        if msg.flags & MESSAGE_ID and self.tracker is not None:
            self.tracker.record(self.vhost.name, msg, "retried", self.name, attempt + 1, intervals[attempt])
        self.settle(msg)
        return True

    def purge(self, event: str = "purged") -> int:
        """Remove every ready message; unacked ones stay with their consumers. Returns how many. ``event`` is
        what message tracking records for them (purged, or queue_deleted)."""
        if self.served_by is not None and not self.deleted:  # its messages are its owner's (docs/cluster.md)
            refuse_remote(self)
        count = self.message_count
        held = [*self.messages, *self._pinned, *self._tail] if self._paging else self.messages
        if self.tracker is not None:
            self.tracker.queue_events(self, held, event)  # messages on disk only are not tracked here
        resident = 0
        for msg in held:
            resident += len(msg.body) + RECORD_COST
            if msg.store_id > 0 and self.durability is not None:
                self.durability.delete(msg)
        if self._disk and self.durability is not None and not self.deleted:
            self.durability.purge(self, self._cursor)  # those on disk only: every ready one after the cursor
        self.memory.used -= resident
        self.messages.clear()
        self._pinned.clear()
        self._tail.clear()
        self._disk = 0
        self._paging = False
        self.ready_bytes = 0
        if self.memory.alarm:
            self.memory.check()
        return count

    # --- consumers ---------------------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        """Add a consumer after those of the same or a higher priority (so the list stays sorted)."""
        consumers = self.consumers
        index = len(consumers)
        while index and consumers[index - 1].priority < consumer.priority:
            index -= 1
        consumers.insert(index, consumer)
        self._sac.append(consumer)
        self._sac_handover = None  # a new consumer runs the queue, as in RabbitMQ
        self._prioritised = consumers[0].priority != consumers[-1].priority
        self.had_consumers = True
        if self._unused_handle is not None:
            self._unused_handle.cancel()
            self._unused_handle = None
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if consumer in self._sac:
            was_active = self._sac[0] is consumer
            self._sac.remove(consumer)
            if was_active and consumer.unacked:
                self._sac_handover = consumer  # the next one starts once these are acked or requeued
            if was_active and self._sac:
                # RabbitMQ: the next active consumer is the one of highest priority, then the earliest
                best = max(self._sac, key=lambda c: (c.priority, -self._sac.index(c)))
                self._sac.remove(best)
                self._sac.insert(0, best)
        if self._rr >= len(self.consumers):
            self._rr = 0
        consumers = self.consumers
        self._prioritised = bool(consumers) and consumers[0].priority != consumers[-1].priority
        if self.lifecycle:
            if not consumers:
                self._arm_unused_timer()
            elif self.settings.single_active_consumer:
                self.dispatch()  # the next consumer takes over


def _seq(msg: Message) -> int:
    return msg.seq
