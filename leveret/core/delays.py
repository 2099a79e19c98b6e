"""Delayed messages: ``x-delayed-message`` exchanges (RabbitMQ's rabbitmq_delayed_message_exchange plugin) and
delayed re-enqueueing into a queue (retries), durable, accurate and with bounded memory.

Contract
--------
:class:`DelayedMessages` is owned by the Broker (``broker.delays``) and runs on the broker's thread.

- ``schedule(vhost, exchange_name, msg, due)``: route ``msg`` through that exchange of ``vhost`` (its bindings,
  exchange-to-exchange bindings, CC/BCC and alternate exchange, as a publish would) at wall-clock time ``due``
  (seconds, the clock of ``broker.timers.now()``). A missing exchange at due time drops the message, as the
  plugin does. The message must not carry a positive ``x-delay`` header if the exchange is an
  ``x-delayed-message`` one (it would be delayed again): :meth:`hold` rewrites it to the negative value first.
- ``schedule_queue(queue, msg, due)``: enqueue ``msg`` into ``queue`` at ``due`` (for retries). A queue deleted
  meanwhile drops it.
- Both take a record that no queue holds (a queued one is copied: header and body are shared, ``redelivered``
  and the queue position are not). The caller removes the original from wherever it was (settle, delete its
  store record) in the same batch, so that the move is one group commit.
- Durability: the message is stored when it is persistent (delivery mode 2), the broker has a store, and its
  target (the exchange, or the queue) is durable. It is written as a message of the pseudo-queue
  ``amq.leveret.delayed.<exchange>`` / ``amq.leveret.retry.<queue>`` of the vhost (clients cannot declare
  ``amq.`` names; with several nodes on one store the node's name and ``NODE_MARK`` come before the target, and
  each node recovers its own: docs/cluster.md), as a :class:`~leveret.core.storage.Push` op of the current
  batch: the group commit that covers the publish (and so its confirm, or tx.commit-ok) covers the delayed
  message. At due time the pseudo-queue record is deleted in the same commit as the pushes into the destination
  queues, so a crash loses nothing and duplicates nothing. Every other delayed message is kept in memory only.
- ``release_now(vhost, queue_name, message_id)``: fire at once the message with that ``message_id`` waiting to be
  re-enqueued into that queue (its retry lane), or, failing that, one waiting in a delayed exchange of the vhost
  with the queue's name as routing key (how ``leveret.tasks`` schedules a retry that is not the queue's own
  schedule). It goes through the same fire path as a due message (the pseudo-queue record deleted in the same
  commit batch as the push into the queue), wherever it waits: in memory or paged out to the store. False
  when no such message is waiting.
- ``recover()`` (called at the end of ``Broker._recover``) reloads the pending durable delays; messages that
  became due while the broker was down are routed at once. Pseudo-queues whose exchange or queue no longer
  exists are purged.

Design
------
- Order: the store's ``seq`` of a delayed message is ``due_ms << 20 | (store id & 0xFFFFF)``, so
  ``load_messages`` returns a pseudo-queue in due order (FIFO among messages due in the same millisecond) and a
  (seq, id) key is unique. Memory-only messages use the same key with a counter for the low bits.
- Memory: one heap of the messages held in memory, across all targets. A durable target (a *lane*) keeps in
  memory only a window of its earliest messages: everything stored with a key up to the lane's *fence* is in
  memory, everything after it is on disk only. The windows of all lanes together hold at most ``window``
  messages and ``window_bytes`` bytes of bodies (plus ``min_keep`` per lane and the messages of the current
  commit batch); over that, the latest are evicted and the fences lowered. When a lane's window runs low
  (``low_water``) the next page is read with ``load_messages(after_seq=...)``. A message scheduled after its
  lane's fence keeps its body only until its commit is durable (the store reads committed data only).
  Memory-only delayed messages are not bounded by the window: they count in the memory monitor (the memory
  alarm blocks publishers), as transient messages in queues do.
- Time: one timer, armed for the earliest message; when it fires, every message due is routed, at most
  ``batch`` per loop turn so that a burst of due messages does not stall connections.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from leveret.core.storage import StoreError

from .delay_lanes import (
    DELAYED_PREFIX,
    DELAYED_TYPE,
    EXCHANGE,
    GONE,
    HEADERS_FLAG,
    MAX_DELAY,
    NODE_MARK,
    QUEUE,
    RESIDENT,
    RETRY_PREFIX,
    TIE_BITS,
    TIE_MASK,
    UNSYNCED,
    Entry,
    Lane,
    entry_key,
    parse_delay,
)
from .delay_window import DelayWindow
from .message import PAGED, Message, new_message
from .routing import Origin
from .tracking import MESSAGE_ID, message_id_of

if TYPE_CHECKING:
    from .broker import Broker
    from .exchanges import Exchange
    from .queue import Queue
    from .timers import Handle
    from .vhost import VHost

log = logging.getLogger("leveret.delays")

class _Released(Origin):
    """The origin of a delayed message routed when due: records ``delay_ended``."""

    __slots__ = ()
    announces = True  # its first routing: job-done notices (core/notices.py)

    def routed(self, vhost: VHost, exchange: Exchange, msg: Message, queues: Sequence[Queue],
               mandatory: bool) -> Sequence[Queue]:
        tracker = vhost.broker.tracker
        if msg.flags & MESSAGE_ID and tracker is not None:
            tracker.record(vhost.name, msg, "delay_ended", exchange.name, tuple([q.name for q in queues]))
        return queues


_RELEASED = _Released()




class DelayedMessages(DelayWindow):
    """The broker's delayed messages (see the module docstring for the contract and the design).

    ``window``/``window_bytes``: how many durable delayed messages, and bytes of their bodies, stay in memory
    (the earliest ones); ``page``: how many are read from the store at a time; ``batch``: how many due
    messages are routed per loop turn."""

    def __init__(self, broker: Broker, *, window: int = 10_000, window_bytes: int = 4_000_000, page: int = 1_000,
                 low_water: int = 100, min_keep: int = 200, batch: int = 500) -> None:
        self.broker = broker
        self.window = window
        self.window_bytes = window_bytes
        self.page = page
        self.low_water = low_water
        self.min_keep = max(min_keep, low_water + 1, 1)
        self.batch = batch
        self.resident = 0  # durable messages in memory windows
        self.resident_bytes = 0
        self.unsynced = 0  # durable messages after their fence whose commit is not done yet
        self.transient = 0  # memory-only messages
        self.transient_bytes = 0
        self._lanes: dict[tuple[str, str, str, bool], Lane] = {}
        # several nodes on one store: this node's lanes carry its name (delay_lanes.NODE_MARK), the others' are
        # theirs to recover (docs/cluster.md)
        shared = broker.durability is not None and broker.durability.nodes() is not None
        self.node_tag = broker.node_name + NODE_MARK if shared else ""
        self._heap: list[tuple[int, int, Entry]] = []
        self._stale = 0
        self._order = itertools.count()
        self._ties = itertools.count()
        self._evict_at = window
        self._evict_bytes_at = window_bytes
        self._timer: Handle | None = None
        self._timer_due = math.inf
        self._sync_batch: list[Entry] = []
        self._barrier_armed = False
        self.lateness: deque[float] = deque(maxlen=4096)
        """How late (ms) the last messages were routed after their due time, as the broker saw it."""

    # --- the public interface ----------------------------------------------------------------------

    @property
    def in_memory(self) -> int:
        """How many delayed messages are held in memory (durable windows, unsynced and memory-only)."""
        return self.resident + self.unsynced + self.transient

    @property
    def pending(self) -> int:
        """How many delayed messages are waiting, in memory or on disk."""
        return sum(lane.count for lane in self._lanes.values())

    def count(self, vhost: str, kind: str, target: str) -> int:
        """Pending messages of one exchange (kind EXCHANGE: the plugin's ``messages_delayed``) or queue."""
        return sum(self._lanes[key].count for key in ((vhost, kind, target, True), (vhost, kind, target, False))
                   if key in self._lanes)

    def hold(self, vhost: VHost, exchange: Exchange, msg: Message) -> bool:
        """A message is routed through an x-delayed-message ``exchange``: True when it was held (its x-delay
        header is an integer from 1 to MAX_DELAY ms; it is then routed when due, with x-delay set to the
        negative of the delay as the plugin does), False when it must be routed now."""
        if not msg.flags & HEADERS_FLAG or exchange.type_name != DELAYED_TYPE:
            return False
        headers = msg.headers
        if not headers or "x-delay" not in headers:
            return False
        delay = parse_delay(headers["x-delay"])
        if delay is None or not 0 < delay <= MAX_DELAY:
            return False
        props = dict(msg.properties)
        new_headers = dict(headers)
        new_headers["x-delay"] = -delay
        props["headers"] = new_headers
        held = new_message(msg.exchange, msg.routing_key, props, msg.body, msg.address)
        held.published_at = msg.published_at
        self.schedule(vhost, exchange.name, held, self.broker.timers.now() + delay / 1000)
        if msg.flags & MESSAGE_ID and self.broker.tracker is not None:
            self.broker.tracker.record(vhost.name, msg, "delayed", exchange.name, delay)
        return True

    def schedule(self, vhost: VHost, exchange_name: str, msg: Message, due: float) -> None:
        """Route ``msg`` through exchange ``exchange_name`` of ``vhost`` at wall-clock time ``due`` (seconds)."""
        exchange = vhost.exchanges.get(exchange_name)
        durable = exchange is not None and exchange.durable and self._storable(msg)
        self._add(self._lane(vhost.name, EXCHANGE, exchange_name, durable), self._own(msg), due)

    def schedule_queue(self, queue: Queue, msg: Message, due: float) -> None:
        """Enqueue ``msg`` into ``queue`` at wall-clock time ``due`` (seconds)."""
        durable = queue.durable and self._storable(msg)
        self._add(self._lane(queue.vhost.name, QUEUE, queue.name, durable), self._own(msg), due)

    def release_now(self, vhost: str, queue_name: str, message_id: str) -> bool:
        """Fire now the delayed message with this ``message_id`` bound for queue ``queue_name`` of ``vhost`` (see
        the module docstring); False when none is waiting. The caller waits for ``broker.durable`` (or the next
        commit) before answering, as for any publish."""
        lanes = [self._lanes.get((vhost, QUEUE, queue_name, durable)) for durable in (True, False)]
        lanes += [lane for key, lane in self._lanes.items() if key[0] == vhost and key[1] == EXCHANGE]
        for lane in lanes:
            if lane is None:
                continue
            by_exchange = lane.kind == EXCHANGE
            entry = self._find(lane, message_id, queue_name if by_exchange else None)
            if entry is None:
                continue
            if entry.state == UNSYNCED:  # after the fence, its commit not done yet: into the window first
                del lane.unsynced[entry.id]
                self.unsynced -= 1
                self._make_resident(entry)
            elif entry.state == GONE:  # paged out: read back from the store
                self._make_resident(entry)
            callbacks: list[Callable[[BaseException | None], None]] = []
            if lane.durable and lane.tail and entry_key(entry) > lane.fence:
                lane.released.add(entry.id)  # _page_in must not read it back before its delete is committed
                callbacks.append(functools.partial(self._delete_committed, lane, entry.id))
            self._stale += 1  # its heap item stays behind, skipped as stale
            self._fire(entry)
            durability = self.broker.durability
            if durability is not None and durability.pending:
                durability.commit(callbacks)
            self._arm()
            return True
        return False

    @staticmethod
    def _delete_committed(lane: Lane, store_id: int, exc: BaseException | None) -> None:
        """The delete of a message released from after its lane's fence is on disk: paging may read past it."""
        if exc is None:
            lane.released.discard(store_id)

    def _find(self, lane: Lane, message_id: str, routing_key: str | None) -> Entry | None:
        """The waiting entry of ``lane`` with this message id (and routing key, when given): in memory, or read
        from the store when the lane has messages after its fence (state GONE, its message loaded)."""

        needle = message_id.encode()

        def matches(msg: Message | None) -> bool:  # a substring test first: no header is decoded for nothing
            return (msg is not None and needle in msg.header and (routing_key is None
                    or msg.routing_key == routing_key) and message_id_of(msg.header, msg.flags) == message_id)

        if lane.durable:
            for entry in (*lane.window.values(), *lane.unsynced.values()):
                if matches(entry.msg):
                    return entry
        else:
            for _, order, entry in self._heap:
                if entry.lane is lane and entry.order == order and entry.state == RESIDENT and matches(entry.msg):
                    return entry
            return None
        durability = self.broker.durability
        if not lane.tail or durability is None:
            return None
        fence = lane.fence
        for row in durability.read_queue(lane.vhost, lane.store_name, with_bodies=False, after_seq=fence[0] - 1):
            if ((row.seq, row.id) <= fence or row.id in lane.window or row.id in lane.released
                    or needle not in row.header):
                continue
            if routing_key is not None and row.routing_key != routing_key:
                continue
            if message_id_of(row.header, (row.header[12] << 8) | row.header[13]) != message_id:
                continue
            unsynced = lane.unsynced.get(row.id)
            if unsynced is not None:
                return unsynced
            body = durability.load_body(row.id)
            if body is None:
                return None
            row.body = body
            entry = self._entry_from_store(lane, row)
            entry.state = GONE
            return entry
        return None

    def recover(self) -> None:
        """Reload the pending durable delayed messages from the store (at start, after the definitions and
        queues are recovered) and arm the timer; purge pseudo-queues whose target is gone. Several nodes: this
        node's lanes (and those of dead nodes it took at start, moved into its lanes: docs/cluster.md)."""
        durability = self.broker.durability
        if durability is None:
            return
        for (vhost_name, name), count in sorted(durability.stored_counts().items()):
            lane = self._stored_lane(vhost_name, name, count)
            if lane is None:
                continue
            lane.count += count
            lane.tail = True
            lane.fence = (-1, 0)
            self._page_in(lane)
            log.info("recovered %d delayed messages of %s '%s' in vhost '%s'", count, lane.kind, lane.target,
                     vhost_name)
        self._commit()
        self._arm()

    def adopt(self, lanes: list[tuple[str, str, int]]) -> None:
        """Several nodes (docs/cluster.md): this node took over the delayed lanes of a node whose lease ran out;
        their stored messages were moved into this node's lanes ((vhost, stored lane name, count)). Each lane is
        read again from its start (what it held in memory goes back to the store first), so every message is
        released at its due time, once: those already due at once. Everything released so far is committed first,
        so that no message is read back between its release and the commit of its delete."""
        durability = self.broker.durability
        if durability is None:
            return
        durability.flush()
        for vhost_name, name, count in lanes:
            lane = self._stored_lane(vhost_name, name, count, purge=False)
            if lane is None:
                continue
            self._to_store(lane)
            lane.count += count
            self._page_in(lane)
            log.warning("took over %d delayed messages of %s '%s' in vhost '%s' from a node whose lease ran out",
                        count, lane.kind, lane.target, vhost_name)
        self._commit()
        self._arm()

    def _stored_lane(self, vhost_name: str, name: str, count: int, purge: bool = True) -> Lane | None:
        """The durable lane of a stored pseudo-queue of this node, if its target exists (otherwise its messages
        are purged, or with ``purge`` False left in the store: a lane taken over while this node may not know its
        target yet, to be purged at a restart if it is gone); None for any other name (a queue's, another node's
        lane)."""
        durability = self.broker.durability
        assert durability is not None
        if name.startswith(DELAYED_PREFIX):
            kind, target = EXCHANGE, name[len(DELAYED_PREFIX):]
        elif name.startswith(RETRY_PREFIX):
            kind, target = QUEUE, name[len(RETRY_PREFIX):]
        else:
            return None
        if self.node_tag and target.startswith(self.node_tag):
            target = target[len(self.node_tag):]
        elif self.node_tag or NODE_MARK in target:  # another node's lane (several nodes): its own to recover
            log.info("%d delayed messages in vhost '%s' wait for the node that holds them (%r)", count,
                     vhost_name, name)
            return None
        vhost = self.broker.vhosts.get(vhost_name)
        exists = False
        if vhost is not None and kind == EXCHANGE:
            exchange = vhost.exchanges.get(target)
            exists = exchange is not None and exchange.durable and exchange.type_name == DELAYED_TYPE
        elif vhost is not None:
            queue = vhost.queues.get(target)
            exists = queue is not None and queue.durable
        if not exists and not purge:
            log.warning("%d delayed messages of %s '%s' in vhost '%s' taken over from another node are left in the "
                        "store: this node does not know that %s", count, kind, target, vhost_name, kind)
            return None
        if not exists:
            log.warning("dropping %d delayed messages of %s '%s' in vhost '%s': it no longer exists",
                        count, kind, target, vhost_name)
            durability.purge_stored(vhost_name, name)
            return None
        return self._lane(vhost_name, kind, target, True)

    # --- adding ------------------------------------------------------------------------------------

    def _storable(self, msg: Message) -> bool:
        return self.broker.durability is not None and msg.persistent

    def _own(self, msg: Message) -> Message:
        if msg.queue is not None or msg.store_id or msg.consumer is not None:
            if msg.body is PAGED and msg.store_id and self.broker.durability is not None:
                body = self.broker.durability.load_body(msg.store_id)
                if body is None:
                    raise RuntimeError(f"message {msg.store_id} is missing from the store")
                copy = msg.copy()
                copy.body = body
                return copy
            return msg.copy()
        return msg

    def _lane(self, vhost: str, kind: str, target: str, durable: bool) -> Lane:
        key = (vhost, kind, target, durable)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(vhost, kind, target, durable, self.node_tag)
        return lane

    def _add(self, lane: Lane, msg: Message, due: float) -> None:
        due_ms = max(0, round(due * 1000))
        size = len(msg.body)
        durability = self.broker.durability
        self._hold_memory(size)
        lane.count += 1
        if lane.durable and durability is not None:
            store_id = durability.new_id()
            seq = (due_ms << TIE_BITS) | (store_id & TIE_MASK)
            durability.push_to(store_id, lane.vhost, lane.store_name, seq, msg)
            entry = Entry(lane, msg, seq, store_id, size)
            self._sync_batch.append(entry)
            if not self._barrier_armed:
                self._barrier_armed = True
                self.broker.timers.call_later(0, self._barrier)
            if lane.tail and (seq, store_id) > lane.fence:
                entry.state = UNSYNCED
                lane.unsynced[store_id] = entry
                self.unsynced += 1
                return
            self._make_resident(entry)
            if self.resident > self._evict_at or self.resident_bytes > self._evict_bytes_at:
                self._evict()
        else:
            seq = (due_ms << TIE_BITS) | (next(self._ties) & TIE_MASK)
            self._make_resident(Entry(lane, msg, seq, 0, size))

    def _barrier(self) -> None:
        self._barrier_armed = False
        batch, self._sync_batch = self._sync_batch, []
        durability = self.broker.durability
        if durability is None or not batch:
            return
        try:
            durability.commit([lambda exc: self._synced(batch, exc)])
        except StoreError as exc:
            self._synced(batch, exc)

    def _synced(self, batch: list[Entry], exc: BaseException | None) -> None:
        for entry in batch:
            if exc is None:
                entry.synced = True
                if entry.state == UNSYNCED:
                    del entry.lane.unsynced[entry.id]
                    self.unsynced -= 1
                    self._drop(entry)
            elif entry.state != GONE:
                self._to_memory(entry)
        if exc is not None:
            log.error("delayed messages could not be stored (%s): kept in memory only", exc)
            self._arm()

    def _to_memory(self, entry: Entry) -> None:
        """A durable entry whose write failed: keep it as a memory-only one."""
        lane = entry.lane
        if entry.state == RESIDENT:
            del lane.window[entry.id]
            self.resident -= 1
            self.resident_bytes -= entry.size
            self._stale += 1
        else:
            del lane.unsynced[entry.id]
            self.unsynced -= 1
        lane.count -= 1
        memory_lane = self._lane(lane.vhost, lane.kind, lane.target, False)
        memory_lane.count += 1
        entry.lane = memory_lane
        entry.id = 0
        self._make_resident(entry)

    # --- time --------------------------------------------------------------------------------------

    def _arm(self) -> None:
        """Set the one timer for the earliest message in memory."""
        heap = self._heap
        while heap:
            _, order, entry = heap[0]
            if entry.order == order and entry.state == RESIDENT:
                break
            heapq.heappop(heap)
            self._stale -= 1
        if not heap:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_due = math.inf
            return
        due_ms = heap[0][0] >> TIE_BITS
        if self._timer is not None:
            if self._timer_due <= due_ms:
                return
            self._timer.cancel()
        timers = self.broker.timers
        self._timer_due = due_ms
        self._timer = timers.call_later(max(0.0, due_ms / 1000 - timers.now()), self._run)

    def _run(self) -> None:
        """The timer: route every message that is due (up to ``batch``), then re-arm."""
        self._timer = None
        self._timer_due = math.inf
        heap = self._heap
        timers = self.broker.timers
        now_ms = timers.now() * 1000
        fired = 0
        try:
            while heap and fired < self.batch:
                seq, order, entry = heap[0]
                if entry.order != order or entry.state != RESIDENT:
                    heapq.heappop(heap)
                    self._stale -= 1
                    continue
                if (seq >> TIE_BITS) > now_ms:
                    break
                heapq.heappop(heap)
                self.lateness.append(timers.now() * 1000 - (seq >> TIE_BITS))
                self._fire(entry)
                fired += 1
            self._commit()
        except StoreError as exc:  # the store is closing (shutdown) or failing: stop until the next schedule
            log.warning("delayed messages: %s", exc)
            return
        self._arm()

    def _fire(self, entry: Entry) -> None:
        lane = entry.lane
        msg = entry.msg
        assert msg is not None
        lane.count -= 1
        if lane.durable:
            del lane.window[entry.id]
            self.resident -= 1
            self.resident_bytes -= entry.size
            durability = self.broker.durability
            assert durability is not None
            durability.delete_id(entry.id)
        else:
            self.transient -= 1
            self.transient_bytes -= entry.size
        self._drop(entry)
        try:
            self._deliver(lane, msg)
        except Exception:
            log.exception("delivering a delayed message to %s '%s' in vhost '%s' failed", lane.kind, lane.target,
                          lane.vhost)
        if lane.tail and len(lane.window) <= self.low_water:
            self._page_in(lane)
        elif not lane.count and not lane.window and not lane.unsynced:
            del self._lanes[(lane.vhost, lane.kind, lane.target, lane.durable)]

    def _deliver(self, lane: Lane, msg: Message) -> None:
        vhost = self.broker.vhosts.get(lane.vhost)
        if vhost is None:
            return
        if lane.kind == QUEUE:
            queue = vhost.queues.get(lane.target)
            if queue is not None and not queue.deleted:
                if msg.flags & MESSAGE_ID and queue.tracker is not None:
                    queue.tracker.record(queue.vhost.name, msg, "retry_due", queue.name)
                queue.enqueue(msg, checked=True)  # the same message again: not a duplicate (core/dedup.py)
            return
        exchange = vhost.exchanges.get(lane.target)
        if exchange is None or exchange.type_name != DELAYED_TYPE:
            return  # the exchange was deleted: the plugin drops the message too
        vhost.publish(exchange, msg, _RELEASED, again=True)  # deduplicated when it was held (core/dedup.py)

    def _commit(self) -> None:
        durability = self.broker.durability
        if durability is not None and durability.pending:
            durability.commit([])
