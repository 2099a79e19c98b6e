"""Paging of a durable queue: past a window of ready records, its messages live in the store only.

A :class:`~leveret.core.queue.Queue` is a :class:`Paging`; this module holds that part of it. Ready messages are
the head (``queue.messages``) + the "delta" + the tail. The delta is the messages with seq in (``_cursor``,
``_tail[0].seq``): ``_disk`` of them are in the store only, ``_pinned`` those that must stay in memory
(transient, or with an expiry time), in seq order. The tail is the newest messages until their commit is done
(:meth:`Paging.spill` then moves them to the delta). All three are empty unless ``_paging``. When the head runs
low, :meth:`Paging._refill` reads the next half window back (records without bodies); :meth:`Paging.page_in`
reads the bodies of the head's next paged-out messages just before they are delivered.

Bodies alone leave memory too: a stored ready message past the queue's memory budget once its commit is done
(:meth:`Paging.page_out`), and an unacked delivery of a committed message (:meth:`Paging.unload`); such a body
comes back when the message is delivered, requeued, dead-lettered or retried (:meth:`Paging.reload_body`).
Every read goes through the store port (:class:`~leveret.core.durability.Durability`).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from .lifecycle import PriorityMessages
from .message import PAGED, RECORD_COST, Message, build_address

if TYPE_CHECKING:
    from leveret.core.storage import StoredMessage

    from .broker import MemoryMonitor, VHost
    from .durability import Durability

log = logging.getLogger("leveret.queue")


class Paging:
    """The paging part of a Queue (its attributes below are the Queue's; ``_init_paging`` sets the paging ones)."""

    vhost: VHost
    name: str
    messages: deque[Message] | PriorityMessages
    memory: MemoryMonitor
    durability: Durability | None
    deleted: bool
    lifecycle: bool
    ready_bytes: int
    _next_seq: int

    def _init_paging(self, window: int) -> None:
        self.window = max(window, 4)
        self._paging = False
        self._disk = 0
        self._pinned: deque[Message] = deque()
        self._tail: deque[Message] = deque()
        self._cursor = 0
        self._addresses: dict[tuple[str, str], bytes] = {}

    def _set_expiry(self, msg: Message, now: float = 0.0) -> None:
        raise NotImplementedError  # the Queue's

    def _pop_head(self) -> Message:
        """Take the first ready message of the head: its body read back if it is paged out, and the head refilled
        from the store when it runs low while paging."""
        messages = self.messages
        if messages[0].body is PAGED:
            self.page_in()
        msg = messages.popleft()
        if self._paging and len(messages) < self.window // 4:
            self._refill()
        return msg

    def reload_body(self, msg: Message) -> None:
        """A message whose body is paged out leaves the queue with its body (dead-lettered, retried): read it
        back (empty if the store does not have it)."""
        if msg.body is PAGED and msg.store_id and self.durability is not None:
            msg.body = self.durability.load_body(msg.store_id) or b""
            self.memory.used += len(msg.body)

    def recover(self, msg: Message) -> None:
        """Put back a message read from the store at start-up (in seq order). Past the window, only a count
        of it stays in memory (it is read back when the head reaches it), unless it has an expiry time."""
        msg.queue = self  # type: ignore[assignment]  # self is the Queue
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

    def unload(self, msg: Message) -> None:
        """An unacked delivery of a committed persistent message keeps only its record: the body is in the store
        (read back if it is requeued or dead-lettered), so a consumer that never acks holds records, not bodies."""
        durability = self.durability
        if durability is not None and msg.store_id <= durability.durable_id:  # its commit is done
            self.page_out(msg)

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
                rows = list(durability.read_queue(self.vhost.name, self.name, with_bodies=False,
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
        msg.queue = self  # type: ignore[assignment]  # self is the Queue
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
            messages.retain(keep)
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
        bodies = self.durability.load_bodies(m.store_id for m in batch)
        used = 0
        for msg in batch:
            body = bodies.get(msg.store_id)
            if body is None:  # not in the store: cannot happen for a ready message; deliver it empty, loudly
                raise RuntimeError(f"message {msg.store_id} of queue '{self.name}' is missing from the store")
            msg.body = body
            used += len(body)
        self.memory.used += used
