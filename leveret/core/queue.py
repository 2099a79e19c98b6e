"""Queues and their consumers.

A queue holds ready messages in arrival order and hands them to consumers round-robin among those with
credit (prefetch room, a writable connection, an active channel). Unacked messages are held by the
channel that received them (see :mod:`leveret.core.channel`) and come back here on requeue, to their
original position.

A durable queue keeps only a window of its ready messages in memory (see "paging" below): past
``queue_memory_window`` ready records, newer messages go to the tail and, once their commit is done, leave
memory altogether (record and body); they are read back from the store in seq order as the head drains.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .lifecycle import PriorityMessages, QueueSettings, count_delivery, parse_settings
from .message import PAGED, RECORD_COST, Message, build_address, new_message
from .status import STATUS_ARGUMENT
from .tracking import MESSAGE_ID

if TYPE_CHECKING:
    from leveret.store.base import StoredMessage

    from .channel import Channel
    from .durability import Durability
    from .memory import MemoryMonitor
    from .session import Session
    from .status import StatusBook
    from .timers import Handle
    from .vhost import VHost

log = logging.getLogger("leveret.queue")


class Consumer:
    """One basic.consume: a queue, the channel it delivers on, and its acknowledgement mode and credit."""

    __slots__ = (
        "arguments",
        "channel",
        "exclusive",
        "no_ack",
        "prefetch",
        "priority",
        "queue",
        "tag",
        "tag_bytes",
        "unacked",
    )

    def __init__(self, tag: str, queue: Queue, channel: Channel, *, no_ack: bool, exclusive: bool,
                 prefetch: int, arguments: dict[str, Any]) -> None:
        self.tag = tag
        raw = tag.encode()
        self.tag_bytes = bytes((len(raw),)) + raw
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments
        self.priority = 0

    def has_credit(self) -> bool:
        """True when a message could be delivered to this consumer now."""
        channel = self.channel
        if not channel.deliverable:
            return False
        # the channel-wide limit (global=true) counts ack-required consumer deliveries only (not basic.get), and
        # holds back no-ack consumers too while it is reached; the per-consumer limit ignores no-ack consumers
        if channel.global_prefetch and channel.limited >= channel.global_prefetch:
            return False
        if self.no_ack:
            return True
        return not (self.prefetch and self.unacked >= self.prefetch)


class Queue:
    """A queue of one vhost. ``exclusive_owner`` is the session that owns an exclusive queue."""

    def __init__(self, vhost: VHost, name: str, *, durable: bool = False, exclusive_owner: Session | None = None,
                 auto_delete: bool = False, arguments: dict[str, Any] | None = None) -> None:
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
        self.had_consumers = False
        self.memory: MemoryMonitor = vhost.broker.memory
        self.durability: Durability | None = vhost.broker.durability if durable else None
        self.memory_budget = vhost.broker.queue_memory_budget
        # paging of whole records (durable queues): ready = head (self.messages) + the "delta" + the tail.
        # The delta is the messages with seq in (_cursor, tail[0].seq): _disk of them are in the store only,
        # _pinned those that must stay in memory (transient, or with an expiry time), in seq order. The tail
        # is the newest messages until their commit is done. All three are empty unless _paging.
        self.window = max(vhost.broker.queue_memory_window, 4)
        self._paging = False
        self._disk = 0
        self._pinned: deque[Message] = deque()
        self._tail: deque[Message] = deque()
        self._cursor = 0
        self._addresses: dict[tuple[str, str], bytes] = {}
        self._next_seq = 1
        self._rr = 0
        self._prioritised = False  # consumers of more than one x-priority: see _next_by_priority
        self._rr_by_priority: dict[int, int] = {}
        self.stats_published = 0
        self.stats_delivered = 0
        self.stats_acked = 0
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

    def enqueue(self, msg: Message) -> bool:
        """Take a newly routed message (this queue's own record) and deliver it if a consumer can take it.
        Returns False when the queue refused it (x-overflow reject-publish)."""
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
        messages = self.messages
        head = (level if level is not None else messages)[0]
        if head.body is PAGED:
            self.page_in()
        msg = level.popleft() if level is not None else messages.popleft()
        if level is not None:
            messages._count -= 1  # type: ignore[union-attr]
        elif self._paging and len(messages) < self.window // 4:
            self._refill()
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
        if not self.consumers and not self.deleted:
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
            msg = messages[0]
            if msg.body is PAGED:
                self.page_in()
            messages.popleft()
            if self._paging and len(messages) < self.window // 4:
                self._refill()
                messages = self.messages
            self.ready_bytes -= len(msg.body)
            self.stats_delivered += 1
            consumer.channel.deliver(consumer, msg)
            if msg.store_id > 0:
                self._unload(msg)

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
            if msg.body is PAGED:
                self.page_in()
            messages.popleft()
            if self._paging and len(messages) < self.window // 4:
                self._refill()
                messages = self.messages
            self.ready_bytes -= len(msg.body)
            self.stats_delivered += 1
            consumer.channel.deliver(consumer, msg)
            if msg.store_id > 0:
                self._unload(msg)

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
        if self.lifecycle:
            self._expire()
            self.touch()
        if not self.messages:
            return None
        if self.messages[0].body is PAGED:
            self.page_in()
        msg = self.messages.popleft()
        if self._paging and len(self.messages) < self.window // 4:
            self._refill()
        self.ready_bytes -= len(msg.body)
        self.stats_delivered += 1
        if self.lifecycle:
            self._expire()  # the message behind it may have expired too: message_count leaves it out
        return msg

    def hand_out(self, msg: Message, ack: bool) -> None:
        """A message taken from this queue goes to a client (a consumer, basic.get, the management API's get):
        count the delivery (a quorum queue's x-delivery-count), then settle it at once (no ack) or hold it as
        unacked until :meth:`settle_unacked`, :meth:`requeue` or :meth:`drop_unacked`."""
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

    def settle_unacked(self, msg: Message) -> None:
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
        if msg.flags & MESSAGE_ID and self.tracker is not None and reason != "rejected":
            if reason == "expired":
                self.tracker.record(self.vhost.name, msg, "expired", self.name)
            else:
                self.tracker.record(self.vhost.name, msg, "dropped", self.name, reason)
        if self.settings.dead_letter_exchange is not None:
            if msg.body is PAGED and msg.store_id and self.durability is not None:
                msg.body = self.durability.store.load_bodies([msg.store_id]).get(msg.store_id, b"")
                self.memory.used += len(msg.body)
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
        if msg.body is PAGED and msg.store_id and self.durability is not None:
            msg.body = self.durability.store.load_bodies([msg.store_id]).get(msg.store_id, b"")
            self.memory.used += len(msg.body)
        props = dict(msg.properties)
        props["headers"] = {**headers, "x-retry-count": attempt + 1}
        again = new_message(msg.exchange, msg.routing_key, props, msg.body, msg.address)
        self.vhost.broker.delays.schedule_queue(self, again, self.timers.now() + intervals[attempt] / 1000)
        if msg.flags & MESSAGE_ID and self.tracker is not None:
            self.tracker.record(self.vhost.name, msg, "retried", self.name, attempt + 1, intervals[attempt])
        self.settle(msg)
        return True

    def recover(self, msg: Message) -> None:
        """Put back a message read from the store at start-up (in seq order). Past the window, only a count
        of it stays in memory (it is read back when the head reaches it), unless it has an expiry time."""
        msg.queue = self
        self._next_seq = max(self._next_seq, msg.seq + 1)
        if self.lifecycle:
            self._set_expiry(msg)  # the TTL countdown starts again at recovery
        self.ready_bytes += msg.size
        if not self._paging and len(self.messages) >= self.window and type(self.messages) is deque:
            self._paging = True
            self._cursor = msg.seq - 1
        if self._paging:
            if not msg.expires_at:
                self._disk += 1
                return
            self._pinned.append(msg)
        else:
            self.messages.append(msg)
        self.memory.used += len(msg.body) + RECORD_COST

    # --- paging: records and bodies of a long durable queue stay on disk ---------------------------

    def spill(self, durable_id: int) -> None:
        """After a commit (every message with store id <= ``durable_id`` is durable): the tail's committed
        messages leave memory (persistent, no expiry time: a count in the delta) or join the pinned ones."""
        tail = self._tail
        freed = 0
        while tail:
            msg = tail[0]
            store_id = msg.store_id
            if store_id > durable_id:
                break  # its commit is still running: it and those behind it wait
            tail.popleft()
            if store_id > 0 and not msg.expires_at:
                self._disk += 1
                freed += len(msg.body) + RECORD_COST
                msg.body = PAGED
                msg.queue = None  # the record is dropped (page_out of a stale reference does nothing)
            else:
                self._pinned.append(msg)
        if freed:
            memory = self.memory
            memory.used -= freed
            if memory.alarm:
                memory.check()

    def _unload(self, msg: Message) -> None:
        """An unacked delivery of a committed persistent message keeps only its record: the body is in the store
        (read back if it is requeued or dead-lettered), so a consumer that never acks holds records, not bodies."""
        if msg.body is not PAGED and self.durability is not None and msg.store_id <= self.durability.durable_id:
            memory = self.memory
            memory.used -= len(msg.body)
            msg.body = PAGED
            if memory.alarm:
                memory.check()

    def _refill(self) -> None:
        """The head runs low while paging: read the next half window of the delta back from the store, in seq
        order with the pinned records; when the delta is used up, the tail joins the head and paging ends."""
        head = self.messages
        assert isinstance(head, deque)  # a priority queue never pages (see configure)
        pinned = self._pinned
        tail = self._tail
        durability = self.durability
        if self._disk and durability is not None:
            bound = tail[0].seq if tail else self._next_seq
            wanted = max(self.window // 2, 1)
            loaded = 0
            exhausted = False
            while self._disk and loaded < wanted and not exhausted:
                limit = wanted - loaded
                rows = list(durability.store.load_messages(self.vhost.name, self.name, with_bodies=False,
                                                           after_seq=self._cursor, limit=limit))
                exhausted = len(rows) < limit
                for stored in rows:
                    seq = stored.seq
                    if seq >= bound:  # a tail message already on disk: the delta is used up
                        exhausted = True
                        break
                    while pinned and pinned[0].seq < seq:
                        head.append(pinned.popleft())
                    self._cursor = seq
                    if pinned and pinned[0].seq == seq:  # pinned (expiry time) but stored too
                        head.append(pinned.popleft())
                        continue
                    head.append(self._record(stored))
                    loaded += 1
                    self._disk -= 1
                    if not self._disk:
                        break
            if self._disk and exhausted:  # cannot happen: every counted message was committed
                log.error("queue '%s' in vhost '%s': %d messages counted on disk are not in the store",
                          self.name, self.vhost.name, self._disk)
                self._disk = 0
            self.memory.used += loaded * RECORD_COST
        if not self._disk:
            head.extend(pinned)
            pinned.clear()
            head.extend(tail)
            tail.clear()
            self._paging = False

    def _record(self, stored: StoredMessage) -> Message:
        """A ready message read back from the store (body still on disk); addresses are shared."""
        key = (stored.exchange, stored.routing_key)
        address = self._addresses.get(key)
        if address is None:
            if len(self._addresses) >= 256:
                self._addresses.clear()
            address = self._addresses[key] = build_address(*key)
        msg = Message(stored.exchange, stored.routing_key, address, stored.header, PAGED)
        msg.seq = stored.seq
        msg.store_id = stored.id
        msg.redelivered = stored.redelivered
        msg.queue = self
        if self.lifecycle:
            self._set_expiry(msg)  # only after recovery or a new policy: a message with an expiry stays pinned
        return msg

    def discard_unstored(self, msgs: list[Message]) -> None:
        """Their store write failed (the publisher gets basic.nack): ready ones leave the queue, unacked ones are
        marked so that they are not requeued. They are never delivered again, nor kept in memory."""
        gone = {id(m) for m in msgs}
        removed = 0
        freed = 0

        def keep(msg: Message) -> bool:
            nonlocal removed, freed
            if id(msg) not in gone:
                return True
            removed += msg.size
            freed += len(msg.body) + RECORD_COST
            msg.queue = None
            return False

        for msg in msgs:
            msg.store_id = -1  # marks an unacked one: see requeue(); a ready one is dropped below
        messages = self.messages
        if isinstance(messages, PriorityMessages):
            for i, level in enumerate(messages.levels):
                messages.levels[i] = deque(m for m in level if keep(m))
            messages._count = sum(len(level) for level in messages.levels)
        else:
            self.messages = deque(m for m in messages if keep(m))
        if self._paging:
            self._pinned = deque(m for m in self._pinned if keep(m))
            self._tail = deque(m for m in self._tail if keep(m))
            if not self.messages:
                self._refill()
        self.ready_bytes -= removed
        memory = self.memory
        memory.used -= freed
        if memory.alarm:
            memory.check()

    def page_out(self, msg: Message) -> None:
        """Drop a stored, ready message's body from memory (the store has it)."""
        if msg.body is PAGED or msg.store_id <= 0 or msg.queue is not self or self.deleted:
            return
        memory = self.memory
        memory.used -= len(msg.body)
        msg.body = PAGED
        if memory.alarm:
            memory.check()

    def page_in(self, window: int = 512, max_bytes: int = 4_000_000) -> None:
        """Read back the bodies of the next paged-out messages at the head of the queue (a window of them)."""
        batch: list[Message] = []
        size = 0
        for msg in self.messages:
            if msg.body is PAGED:
                batch.append(msg)
                size += msg.size
                if len(batch) >= window or size >= max_bytes:
                    break
            elif batch:
                break
        if not batch or self.durability is None:
            return
        bodies = self.durability.store.load_bodies(m.store_id for m in batch)
        used = 0
        for msg in batch:
            body = bodies.get(msg.store_id)
            if body is None:  # not in the store: cannot happen for a ready message; deliver it empty, loudly
                raise RuntimeError(f"message {msg.store_id} of queue '{self.name}' is missing from the store")
            msg.body = body
            used += len(body)
        self.memory.used += used

    def purge(self, event: str = "purged") -> int:
        """Remove every ready message; unacked ones stay with their consumers. Returns how many. ``event`` is
        what message tracking records for them (purged, or queue_deleted)."""
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
