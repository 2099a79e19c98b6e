"""The memory window of the delayed lanes (a part of :class:`~leveret.core.delays.DelayedMessages`): which durable
delayed messages stay resident (the earliest of each lane, up to ``window`` messages and ``window_bytes`` of
bodies in all), evicting the latest when over, and paging a lane's next messages back from the store when its
window runs low (see the design in core/delays.py's docstring)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .delay_lanes import GONE, RESIDENT, TIE_BITS, TOP, UNSYNCED, Entry, Lane, entry_key
from .message import Message, build_address

if TYPE_CHECKING:
    from leveret.core.storage import StoredMessage

    from .broker import Broker


class DelayWindow:
    """The window bookkeeping and paging of :class:`~leveret.core.delays.DelayedMessages` (its base class)."""

    broker: Broker
    window: int
    window_bytes: int
    page: int
    low_water: int
    min_keep: int
    resident: int
    resident_bytes: int
    unsynced: int
    transient: int
    transient_bytes: int
    _lanes: dict[tuple[str, str, str, bool], Lane]
    _heap: list[tuple[int, int, Entry]]
    _stale: int
    _evict_at: int
    _evict_bytes_at: int
    _order: Iterator[int]
    _timer_due: float
    _arm: Callable[[], None]  # DelayedMessages': the timer for the earliest message

    def _make_resident(self, entry: Entry) -> None:
        entry.state = RESIDENT
        order = entry.order = next(self._order)
        heapq.heappush(self._heap, (entry.seq, order, entry))
        lane = entry.lane
        if lane.durable:
            lane.window[entry.id] = entry
            self.resident += 1
            self.resident_bytes += entry.size
        else:
            self.transient += 1
            self.transient_bytes += entry.size
        if (entry.seq >> TIE_BITS) < self._timer_due:
            self._arm()

    def _hold_memory(self, size: int) -> None:
        memory = self.broker.memory
        memory.used += size
        if memory.used > memory.high:
            memory.check()

    def _release_memory(self, size: int) -> None:
        memory = self.broker.memory
        memory.used -= size
        if memory.alarm:
            memory.check()

    # --- the memory window -------------------------------------------------------------------------

    def _evict(self) -> None:
        """Keep the earliest durable messages in memory (at least ``min_keep`` per lane) and leave the rest
        to the store, lowering the fences of the lanes that lost some."""
        entries = sorted((e for lane in self._lanes.values() if lane.durable for e in lane.window.values()),
                         key=entry_key)
        target, target_bytes = self.window * 9 // 10, self.window_bytes * 9 // 10
        kept = kept_bytes = 0
        full = False
        per_lane: dict[Lane, int] = {}
        last_kept: dict[Lane, Entry] = {}
        for entry in entries:
            lane = entry.lane
            n = per_lane.get(lane, 0)
            if not full and (kept >= target or kept_bytes + entry.size > target_bytes):
                full = True
            if not full or n < self.min_keep:
                per_lane[lane] = n + 1
                last_kept[lane] = entry
                kept += 1
                kept_bytes += entry.size
                continue
            self._leave(lane, entry)
            lane.tail = True
        for lane, last in last_kept.items():
            if lane.tail:
                lane.fence = min(lane.fence, entry_key(last))
        self._evict_at = max(self.window, self.resident + self.window // 10)
        self._evict_bytes_at = max(self.window_bytes, self.resident_bytes + self.window_bytes // 10)
        self._compact()

    def _leave(self, lane: Lane, entry: Entry) -> None:
        """``entry`` leaves the window to the store: dropped if its commit is done, else kept until it is (its body
        with it) as unsynced."""
        del lane.window[entry.id]
        self.resident -= 1
        self.resident_bytes -= entry.size
        self._stale += 1
        if entry.synced:
            self._drop(entry)
        else:
            entry.state = UNSYNCED
            lane.unsynced[entry.id] = entry
            self.unsynced += 1

    def _to_store(self, lane: Lane) -> None:
        """Leave a durable lane's whole window to the store and read it again from its start (_page_in): messages
        were added to the store under it with keys anywhere (a dead node's lane moved into it, docs/cluster.md).
        An entry whose commit is not done yet keeps its body until it is (as in _evict)."""
        for entry in list(lane.window.values()):
            self._leave(lane, entry)
        lane.tail = True
        lane.fence = (-1, 0)

    def _drop(self, entry: Entry) -> None:
        """Forget an entry's in-memory copy (it is on disk, or it is done)."""
        entry.state = GONE
        entry.msg = None
        self._release_memory(entry.size)

    def _compact(self) -> None:
        heap = self._heap
        if self._stale > 4096 and self._stale > len(heap) // 2:
            self._heap = [item for item in heap if item[2].order == item[1] and item[2].state == RESIDENT]
            heapq.heapify(self._heap)
            self._stale = 0

    def _page_in(self, lane: Lane) -> None:
        """Read the next page of a durable lane's messages after its fence into memory."""
        durability = self.broker.durability
        assert durability is not None
        want = max(self.min_keep, min(self.page, self.window - self.resident))
        room = max(self.window_bytes // 10, self.window_bytes - self.resident_bytes)
        slack = 16
        while True:
            fence = lane.fence
            limit = want + slack
            seen = taken = taken_bytes = 0
            last: tuple[int, int] | None = None
            stopped = False
            for row in durability.read_queue(lane.vhost, lane.store_name, after_seq=fence[0] - 1, limit=limit):
                seen += 1
                key = (row.seq, row.id)
                if key <= fence:
                    continue
                last = key
                if row.id in lane.window or row.id in lane.released:
                    continue
                entry = lane.unsynced.pop(row.id, None)
                if entry is not None:
                    self.unsynced -= 1
                else:
                    entry = self._entry_from_store(lane, row)
                self._make_resident(entry)
                taken += 1
                taken_bytes += entry.size
                if taken >= want or taken_bytes >= room:
                    stopped = True
                    break
            if stopped or seen >= limit:
                if last is None:  # a page of keys at or below the fence (ties): read further
                    slack *= 8
                    continue
                lane.fence = last
                for entry in [e for e in lane.unsynced.values() if entry_key(e) <= last]:
                    del lane.unsynced[entry.id]
                    self.unsynced -= 1
                    self._make_resident(entry)
                return
            lane.tail = False  # the store has nothing after the fence: the whole lane is in memory now
            lane.fence = TOP
            for entry in lane.unsynced.values():
                self.unsynced -= 1
                self._make_resident(entry)
            lane.unsynced.clear()
            return

    def _entry_from_store(self, lane: Lane, row: StoredMessage) -> Entry:
        body = row.body if row.body is not None else b""
        address = lane.addresses.get((row.exchange, row.routing_key))
        if address is None:
            address = build_address(row.exchange, row.routing_key)
            if len(lane.addresses) < 1024:
                lane.addresses[(row.exchange, row.routing_key)] = address
        msg = Message(row.exchange, row.routing_key, address, row.header, body)
        entry = Entry(lane, msg, row.seq, row.id, len(body))
        entry.synced = True
        self._hold_memory(entry.size)
        return entry

    # --- commit barrier: bodies after a fence leave memory once they are on disk -------------------
