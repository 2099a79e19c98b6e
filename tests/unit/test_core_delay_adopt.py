"""Taking over a dead node's delayed lane (core/delays.py ``adopt``, docs/cluster.md): its messages were moved in the
store into this node's lane of the same target, with due times anywhere among this node's own (some already due);
socket-free with the core harness and the memory store, with a small window so that paging is exercised. Every
message is released once, at its time, in due order."""

from __future__ import annotations

from leveret.core.delay_lanes import RETRY_PREFIX, TIE_BITS, TIE_MASK
from leveret.core.delays import DelayedMessages
from leveret.core.storage import Push
from leveret.store.memory import MemoryStore
from tests.support.corekit import Core
from tests.unit.test_core_retry_now import RETRY, fail_once, ids_in, sync

LANE = RETRY_PREFIX + "q"


def test_an_adopted_lane_releases_every_message_once_at_its_time() -> None:
    other_store = MemoryStore()
    other_store.open()
    other = Core(store=other_store, dispatch=lambda fn, *args: fn(*args))
    other.client().declare("q", durable=True, **RETRY)
    fail_once(other.client(), "q", [f"x{n}" for n in range(10)] + ["due"], delivery_mode=2)
    sync(other)
    moved = list(other_store.load_messages("/", LANE))
    assert len(moved) == 11

    store = MemoryStore()
    store.open()
    core = Core(store=store, dispatch=lambda fn, *args: fn(*args))
    delays = core.broker.delays = DelayedMessages(core.broker, window=20, page=10, low_water=2, min_keep=5)
    client = core.client()
    client.declare("q", durable=True, **RETRY)
    own = [f"m{n}" for n in range(30)]
    for n in range(0, 30, 10):  # this node's own retries, due in 60 s; the window evicts some to the store
        fail_once(client, "q", own[n:n + 10], delivery_mode=2)
        sync(core)
    lane = delays._lanes[("/", "queue", "q", True)]
    assert lane.tail
    # the dead node's lane moved into this one (as the store's takeover does): due in 10 s, one already due
    durability = core.broker.durability
    assert durability is not None
    now_ms = round(core.broker.timers.now() * 1000)
    ops = []
    for row in moved:
        due = now_ms - 1000 if b"due" in row.header else now_ms + 10_000
        store_id = durability.new_id()
        ops.append(Push(store_id, "/", LANE, (due << TIE_BITS) | (store_id & TIE_MASK), row.exchange,
                        row.routing_key, row.header, row.body or b""))
    store.submit(ops, lambda exc: None)
    delays.adopt([("/", LANE, len(ops))])
    core.advance(0)
    assert ids_in(client, "q") == ["due"]
    core.advance(10.5)
    assert ids_in(client, "q") == [f"x{n}" for n in range(10)]
    core.advance(50)
    for _ in range(20):  # the rest, paged in as the window drains
        core.advance(0.01)
    assert ids_in(client, "q") == own
    sync(core)
    assert delays.pending == 0 and ("/", LANE) not in store.message_counts()
