"""Moving messages between queues in the core (core/dead_letter.py ``move``, the management API's queue actions
``move`` and ``replay_dead_letters``), socket-free with the core harness."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from leveret.core.dead_letter import death_origin, move
from leveret.core.storage import Delete, MessageOp, Push
from leveret.store.memory import MemoryStore
from tests.support.corekit import Core


def to_queue(core: Core, name: str) -> Callable[[Any], Any]:
    return lambda msg: (core.vhost.exchanges[""], name)


def test_move_takes_from_the_head_keeps_properties_and_counts() -> None:
    core = Core()
    client = core.client()
    client.declare("src")
    client.declare("dst")
    for n in range(5):
        client.publish("src", f"m{n}".encode(), message_id=f"id{n}", headers={"k": n})
    assert move(core.vhost, core.queue("src"), 3, to_queue(core, "dst"), "test") == 3
    assert client.count("src") == 2 and client.count("dst") == 3
    got = client.get("dst")
    assert got is not None
    assert got[1].properties["message_id"] == "id0" and got[1].properties["headers"] == {"k": 0}
    assert got[1].routing_key == "dst" and not got[1].redelivered
    assert client.bodies("dst") == [b"m1", b"m2"]
    assert client.bodies("src") == [b"m3", b"m4"]
    assert move(core.vhost, core.queue("src"), 10, to_queue(core, "dst"), "test") == 0  # empty: nothing


def test_a_message_the_destination_refuses_stays_at_its_place_and_the_move_stops() -> None:
    core = Core()
    client = core.client()
    client.declare("src")
    client.declare("full", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    for n in range(3):
        client.publish("src", f"m{n}".encode())
    assert move(core.vhost, core.queue("src"), 3, to_queue(core, "full"), "test") == 1
    assert client.bodies("full") == [b"m0"]
    assert client.bodies("src") == [b"m1", b"m2"]  # m1 was refused: put back first, nothing lost
    client.publish("src", b"x")
    assert move(core.vhost, core.queue("src"), 1, lambda msg: None, "test") == 0  # no target: stays
    assert client.bodies("src") == [b"x"]


class Recording(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.submits: list[list[MessageOp]] = []

    def submit(self, ops: Sequence[MessageOp], done: Callable[[BaseException | None], None]) -> None:
        self.submits.append(list(ops))
        super().submit(ops, done)


def test_the_push_to_the_destination_and_the_delete_in_the_source_are_one_durability_batch() -> None:
    """A crash keeps both writes or neither: the moved message is in exactly one queue after a restart."""
    store = Recording()
    store.open()
    core = Core(store=store, dispatch=lambda fn, *args: fn(*args))
    client = core.client()
    client.declare("src", durable=True)
    client.declare("dst", durable=True)
    client.publish("src", b"one", delivery_mode=2)
    core.broker.durability.commit([])  # type: ignore[union-attr]
    core.advance(0)
    before = len(store.submits)
    assert move(core.vhost, core.queue("src"), 1, to_queue(core, "dst"), "test") == 1
    core.broker.durability.commit([])  # type: ignore[union-attr]
    core.advance(0)
    batches = [ops for ops in store.submits[before:] if any(isinstance(op, (Push, Delete)) for op in ops)]
    assert len(batches) == 1
    kinds = [(type(op).__name__, getattr(op, "queue", None)) for op in batches[0] if isinstance(op, (Push, Delete))]
    assert ("Push", "dst") in kinds and any(kind == "Delete" for kind, _ in kinds)
    assert core.broker.durability.stored_counts() == {("/", "dst"): 1}  # type: ignore[union-attr]


def test_replay_sends_each_dead_letter_back_to_the_queue_it_died_in() -> None:
    core = Core()
    client = core.client()
    client.declare("dlq")
    client.declare("a", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"})
    client.declare("b", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq",
                           "x-message-ttl": 10})
    client.publish("a", b"rejected-from-a")
    got = client.get("a", no_ack=False)
    assert got is not None
    client.reject(got[0], requeue=False)
    client.publish("b", b"expired-from-b")
    core.advance(0.02)
    assert client.count("dlq") == 2
    vhost = core.vhost

    def back(msg: Any) -> Any:
        origin = death_origin(msg)
        return None if origin not in vhost.queues else (vhost.exchanges[""], origin)

    assert move(vhost, core.queue("dlq"), 10, back, "test") == 2
    got_a = client.get("a")
    assert got_a is not None and got_a[1].body == b"rejected-from-a"
    assert got_a[1].properties["headers"]["x-death"][0]["queue"] == "a"  # the history stays with it
    assert client.count("dlq") == 0 and client.count("b") in (0, 1)  # b's TTL may expire it again


def test_death_origin_is_the_latest_death() -> None:
    from leveret.core.message import new_message
    msg = new_message("", "q", {"headers": {"x-death": [{"queue": "latest"}, {"queue": "older"}]}}, b"")
    assert death_origin(msg) == "latest"
    assert death_origin(new_message("", "q", {}, b"")) is None


def test_redeliveries_are_counted_per_queue_for_consumers_and_gets() -> None:
    """RabbitMQ's message_stats.redeliver: deliveries and gets of a message marked redelivered."""
    core = Core()
    client = core.client()
    client.declare("q")
    for n in range(3):
        client.publish("q", f"m{n}".encode())
    queue = core.queue("q")
    got = client.get("q", no_ack=False)
    assert got is not None and queue.stats_redelivered == 0
    client.reject(got[0], requeue=True)
    again = client.get("q", no_ack=False)
    assert again is not None and again[1].redelivered and queue.stats_redelivered == 1
    client.reject(again[0], requeue=True)
    client.consume("q", "c", no_ack=True)  # m0 again (redelivered), then m1 and m2 (first deliveries)
    assert [d.redelivered for d in client.sink.deliveries] == [True, False, False]
    assert queue.stats_redelivered == 2 and queue.stats_delivered == 5


def test_message_tracking_records_the_move() -> None:
    core = Core(tracking_window=300, tracking_max_events=1000)
    client = core.client()
    client.declare("src")
    client.declare("dst")
    client.publish("src", b"tracked", message_id="t-1")
    assert move(core.vhost, core.queue("src"), 1, to_queue(core, "dst"), "http guest@test") == 1
    tracker = core.broker.tracker
    assert tracker is not None
    moved = [e for e in tracker.events("/", "t-1") if e["event"] == "moved"]
    assert len(moved) == 1
    assert (moved[0]["queue"], moved[0]["queues"], moved[0]["connection"]) == ("src", ["dst"], "http guest@test")


def test_drop_headers_leaves_the_others() -> None:
    core = Core()
    client = core.client()
    client.declare("src")
    client.declare("dst")
    client.publish("src", b"a", headers={"x-retry-count": 2, "keep": "yes"})
    client.publish("src", b"b")
    assert move(core.vhost, core.queue("src"), 2, to_queue(core, "dst"), "t", ("x-retry-count",)) == 2
    first, second = client.get("dst"), client.get("dst")
    assert first is not None and first[1].properties["headers"] == {"keep": "yes"}
    assert second is not None and "headers" not in second[1].properties
