"""Durability's write hold (config ``write_hold_ms``): store writes nobody waits for (acks, deliveries, status
records) wait for the next commit a publisher confirm waits for and go with it, in order, or go alone when the
hold runs out; ``flush`` and a zero hold write at once. Core logic, no sockets (ManualTimers, a memory store)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from leveret.core.durability import Durability
from leveret.core.storage import Delete, MessageOp, Push, StatusExpire
from leveret.core.timers import ManualTimers
from leveret.store.memory import MemoryStore


class Recording(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.submits: list[list[Any]] = []

    def submit(self, ops: Sequence[MessageOp], done: Callable[[BaseException | None], None]) -> None:
        self.submits.append(list(ops))
        super().submit(ops, done)


def make(hold: float) -> tuple[Durability, Recording, ManualTimers]:
    store = Recording()
    store.open()
    durability = Durability(store, lambda fn, *args: fn(*args))
    timers = ManualTimers()
    durability.hold = hold
    durability.timers = timers
    return durability, store, timers


def push(n: int) -> Push:
    return Push(n, "/", "q", n, "", "q", b"", b"body")


def test_held_writes_go_with_the_next_confirmed_commit_first() -> None:
    durability, store, _ = make(0.002)
    durability.ops.append(push(1))
    durability.commit([])
    durability.ops.append(Delete(1))
    durability.commit([])
    status = StatusExpire(0.0, 10)
    durability.status_ops.append(status)
    durability.submit_status()
    assert store.submits == []  # all held
    confirmed: list[BaseException | None] = []
    durability.ops.append(push(2))
    durability.commit([confirmed.append])
    assert store.submits == [[status], [push(1), Delete(1), push(2)]]
    assert confirmed == [None]


def test_held_writes_go_alone_when_the_hold_runs_out() -> None:
    durability, store, timers = make(0.002)
    durability.ops.append(Delete(7))
    durability.commit([])
    timers.advance(0.001)
    assert store.submits == []
    timers.advance(0.002)
    assert store.submits == [[Delete(7)]]
    timers.advance(1)
    assert len(store.submits) == 1  # one timer, fired once


def test_flush_and_reads_do_not_wait() -> None:
    durability, store, timers = make(0.002)
    durability.ops.append(Delete(3))
    durability.commit([])
    durability.flush()
    assert store.submits == [[Delete(3)]]
    timers.advance(1)
    assert store.submits == [[Delete(3)]]  # the cancelled timer submits nothing more
    seen: list[Any] = []
    durability.expire_status(0.0, 5, lambda deleted, exc: seen.append((deleted, exc)))
    assert seen == [(0, None)] and isinstance(store.submits[-1][0], StatusExpire)


def test_no_hold_writes_at_once() -> None:
    durability, store, _ = make(0.0)
    durability.ops.append(Delete(4))
    durability.commit([])
    assert store.submits == [[Delete(4)]]
