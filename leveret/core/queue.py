"""Queues and their consumers.

A queue holds ready messages in arrival order and hands them to consumers round-robin among those with
credit (prefetch room, a writable connection, an active channel). Unacked messages are held by the
channel that received them (see :mod:`leveret.core.channel`) and come back here on requeue, to their
original position.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .message import PAGED, Message

if TYPE_CHECKING:
    from .broker import MemoryMonitor, Session, VHost
    from .channel import Channel
    from .durability import Durability


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
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        return not (channel.global_prefetch and len(channel.unacked) >= channel.global_prefetch)


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
        self.messages: deque[Message] = deque()
        self.consumers: list[Consumer] = []
        self.ready_bytes = 0
        self.unacked_count = 0
        self.deleted = False
        self.had_consumers = False
        self.memory: MemoryMonitor = vhost.broker.memory
        self.durability: Durability | None = vhost.broker.durability if durable else None
        self.memory_budget = vhost.broker.queue_memory_budget
        self._next_seq = 1
        self._rr = 0
        self._prioritised = False  # consumers of more than one x-priority: see _next_by_priority
        self._rr_by_priority: dict[int, int] = {}
        self.stats_published = 0
        self.stats_delivered = 0

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} in vhost {self.vhost.name!r}>"

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        return len(self.messages)

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    # --- messages in -------------------------------------------------------------------------------

    def enqueue(self, msg: Message) -> None:
        """Take a newly routed message (this queue's own record) and deliver it if a consumer can take it."""
        msg.seq = self._next_seq
        self._next_seq += 1
        msg.queue = self
        if self.durability is not None and msg.persistent:
            self.durability.push(self, msg, self.ready_bytes > self.memory_budget)
        self.messages.append(msg)
        size = len(msg.body)
        self.ready_bytes += size
        self.stats_published += 1
        memory = self.memory
        memory.used += size
        if memory.used > memory.high:
            memory.check()
        if self.consumers:
            self.dispatch()

    def requeue(self, msgs: Iterable[Message]) -> None:
        """Put unacked messages back at their original positions, marked redelivered."""
        messages = self.messages
        for msg in msgs:
            msg.redelivered = True
            msg.consumer = None
            self.unacked_count -= 1
            self.ready_bytes += msg.size
            if not messages or msg.seq < messages[0].seq:
                messages.appendleft(msg)
            elif msg.seq > messages[-1].seq:
                messages.append(msg)
            else:
                messages.insert(bisect.bisect_left(messages, msg.seq, key=_seq), msg)
        if self.consumers:
            self.dispatch()

    # --- messages out ------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Deliver ready messages while some consumer has credit."""
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
            self.ready_bytes -= len(msg.body)
            self.stats_delivered += 1
            if not consumer.no_ack:
                self.unacked_count += 1
            consumer.channel.deliver(consumer, msg)

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
        if not self.messages:
            return None
        if self.messages[0].body is PAGED:
            self.page_in()
        msg = self.messages.popleft()
        self.ready_bytes -= len(msg.body)
        self.stats_delivered += 1
        return msg

    def settle(self, msg: Message) -> None:
        """A message delivered from this queue is finished (acked, or delivered without ack)."""
        memory = self.memory
        memory.used -= len(msg.body)
        if memory.alarm:
            memory.check()
        if msg.store_id and self.durability is not None:
            self.durability.delete(msg)

    def settle_unacked(self, msg: Message) -> None:
        self.unacked_count -= 1
        self.settle(msg)

    def drop(self, msg: Message, reason: str) -> None:
        """A message leaves the queue without being consumed (rejected without requeue, expired, ...)."""
        self.settle(msg)

    def recover(self, msg: Message) -> None:
        """Put back a message read from the store at start-up (in seq order)."""
        msg.queue = self
        self._next_seq = max(self._next_seq, msg.seq + 1)
        self.messages.append(msg)
        self.ready_bytes += msg.size
        self.memory.used += len(msg.body)

    # --- paging: bodies of a long queue stay on disk -----------------------------------------------

    def page_out(self, msg: Message) -> None:
        """Drop a stored, ready message's body from memory (the store has it)."""
        if msg.body is PAGED or not msg.store_id or msg.queue is not self or self.deleted:
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

    def purge(self) -> int:
        """Remove every ready message; unacked ones stay with their consumers. Returns how many."""
        count = len(self.messages)
        resident = 0
        for msg in self.messages:
            resident += len(msg.body)
            if msg.store_id and self.durability is not None:
                self.durability.delete(msg)
        self.memory.used -= resident
        self.messages.clear()
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
        self._prioritised = consumers[0].priority != consumers[-1].priority
        self.had_consumers = True
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if self._rr >= len(self.consumers):
            self._rr = 0
        consumers = self.consumers
        self._prioritised = bool(consumers) and consumers[0].priority != consumers[-1].priority


def _seq(msg: Message) -> int:
    return msg.seq
