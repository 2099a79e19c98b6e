"""Releasing a waiting retry early (core/delays.py ``release_now``, the management API's queue action
``retry_now``), socket-free with the core harness: in memory, durable, paged out to the store, and through a
delayed exchange; fired once through the due path, never twice."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from leveret.core.delay_lanes import RETRY_PREFIX
from leveret.core.delays import DelayedMessages
from leveret.core.storage import Delete, MessageOp, Push
from leveret.store.memory import MemoryStore
from tests.support.corekit import Client, Core

RETRY = {"x-retry-intervals": [60_000]}


class Recording(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.submits: list[list[MessageOp]] = []

    def submit(self, ops: Sequence[MessageOp], done: Callable[[BaseException | None], None]) -> None:
        self.submits.append(list(ops))
        super().submit(ops, done)


def fail_once(client: Client, queue: str, ids: Sequence[str], **properties: object) -> None:
    """Publish a message per id to ``queue``, take each and reject it: each waits for its retry."""
    for message_id in ids:
        client.publish(queue, message_id.encode(), message_id=message_id, **properties)
        got = client.get(queue, no_ack=False)
        assert got is not None
        client.reject(got[0], requeue=False)


def ids_in(client: Client, queue: str) -> list[str]:
    out = []
    while (got := client.get(queue)) is not None:
        out.append(got[1].properties["message_id"])
        assert got[1].properties["headers"]["x-retry-count"] == 1
    return out


def sync(core: Core) -> None:
    durability = core.broker.durability
    assert durability is not None
    durability.commit([])
    core.advance(0)


def test_a_waiting_retry_in_memory_is_released_once() -> None:
    core = Core()
    client = core.client()
    client.declare("q", **RETRY)
    fail_once(client, "q", ["a", "b"])
    delays = core.broker.delays
    assert client.count("q") == 0 and delays.count("/", "queue", "q") == 2
    assert not delays.release_now("/", "q", "nope")
    assert not delays.release_now("/", "other", "a")
    assert delays.release_now("/", "q", "a")
    assert ids_in(client, "q") == ["a"]
    assert not delays.release_now("/", "q", "a")  # released already: nothing waits under that id
    assert delays.count("/", "queue", "q") == 1
    core.advance(59)
    assert client.count("q") == 0
    core.advance(1.1)
    assert ids_in(client, "q") == ["b"]  # "a" is not delivered a second time at its old due time
    assert delays.pending == 0


def test_a_durable_release_is_one_batch_with_the_push_into_the_queue() -> None:
    store = Recording()
    store.open()
    core = Core(store=store, dispatch=lambda fn, *args: fn(*args))
    client = core.client()
    client.declare("q", durable=True, **RETRY)
    fail_once(client, "q", ["t1"], delivery_mode=2)
    sync(core)
    assert store.message_counts() == {("/", RETRY_PREFIX + "q"): 1}
    before = len(store.submits)
    assert core.broker.delays.release_now("/", "q", "t1")
    sync(core)
    batches = [ops for ops in store.submits[before:] if any(isinstance(op, (Push, Delete)) for op in ops)]
    assert len(batches) == 1
    assert any(isinstance(op, Push) and op.queue == "q" for op in batches[0])
    assert any(isinstance(op, Delete) for op in batches[0])
    assert store.message_counts() == {("/", "q"): 1}
    assert ids_in(client, "q") == ["t1"]


def test_a_retry_paged_out_to_the_store_is_read_back_and_released_once() -> None:
    store = MemoryStore()
    store.open()
    core = Core(store=store, dispatch=lambda fn, *args: fn(*args))
    delays = core.broker.delays = DelayedMessages(core.broker, window=20, page=10, low_water=2, min_keep=5)
    client = core.client()
    client.declare("q", durable=True, **RETRY)
    ids = [f"m{n}" for n in range(60)]
    for n in range(0, 60, 10):  # committed in steps, so that the window evicts what is on disk
        fail_once(client, "q", ids[n:n + 10], delivery_mode=2)
        sync(core)
    lane = delays._lanes[("/", "queue", "q", True)]
    assert lane.tail and delays.in_memory < 60 and "m55" not in {
        e.msg.properties["message_id"] for e in lane.window.values() if e.msg is not None}
    assert delays.release_now("/", "q", "m55")
    sync(core)
    assert store.message_counts() == {("/", RETRY_PREFIX + "q"): 59, ("/", "q"): 1}
    assert ids_in(client, "q") == ["m55"]
    sync(core)
    assert store.message_counts() == {("/", RETRY_PREFIX + "q"): 59}
    assert not delays.release_now("/", "q", "m55")
    assert delays.release_now("/", "q", "m3")  # one in the window too
    core.advance(61)
    for _ in range(20):  # the rest, paged in as the window drains
        core.advance(0.01)
    got = ids_in(client, "q")
    assert sorted(got) == sorted(i for i in ids if i != "m55")
    assert got[0] == "m3"
    sync(core)
    assert delays.pending == 0 and ("/", RETRY_PREFIX + "q") not in store.message_counts()


def test_a_retry_waiting_in_a_delayed_exchange_for_the_queue_is_released_through_it() -> None:
    """How leveret.tasks waits for a retry that is not the queue's own schedule: x-delay on a delayed exchange,
    routed by the queue's name."""
    core = Core()
    client = core.client()
    client.declare("q")
    client.exchange("dx", "x-delayed-message", **{"x-delayed-type": "direct"})
    client.bind("q", "dx", "q")
    client.publish("q", b"x", exchange="dx", message_id="e1", headers={"x-delay": 60_000})
    assert client.count("q") == 0
    assert not core.broker.delays.release_now("/", "other", "e1")  # not bound for that queue
    assert core.broker.delays.release_now("/", "q", "e1")
    got = client.get("q")
    assert got is not None and got[1].properties["headers"]["x-delay"] == -60_000
    core.advance(61)
    assert client.count("q") == 0


class Held(MemoryStore):
    """A store whose commits wait while ``hold`` is set (as a slow disk would): reads see the last commit."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.held: list[tuple[Sequence[MessageOp], Callable[[BaseException | None], None]]] = []

    def submit(self, ops: Sequence[MessageOp], done: Callable[[BaseException | None], None]) -> None:
        if self.hold:
            self.held.append((list(ops), done))
        else:
            super().submit(ops, done)

    def let_go(self) -> None:
        self.hold = False
        for ops, done in self.held:
            super().submit(ops, done)
        self.held.clear()


def test_a_paged_out_release_is_not_paged_in_again_before_its_delete_is_on_disk() -> None:
    store = Held()
    store.open()
    core = Core(store=store, dispatch=lambda fn, *args: fn(*args))
    delays = core.broker.delays = DelayedMessages(core.broker, window=20, page=10, low_water=2, min_keep=5)
    client = core.client()
    client.declare("q", durable=True, **RETRY)
    ids = [f"m{n}" for n in range(60)]
    for n in range(0, 60, 10):
        fail_once(client, "q", ids[n:n + 10], delivery_mode=2)
        sync(core)
    store.hold = True  # the release's delete is not on disk while the lane pages through the store
    assert delays.release_now("/", "q", "m25")
    core.advance(61)
    for _ in range(20):
        core.advance(0.01)
    got = ids_in(client, "q")
    store.let_go()
    sync(core)
    assert sorted(got) == sorted(ids) and got[0] == "m25"  # each once: m25 is not read back from the store
    assert delays.pending == 0 and store.message_counts() == {}
