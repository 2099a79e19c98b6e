"""Message deduplication (core/dedup.py), LavinMQ's x-message-deduplication on queues and exchanges, at the core:
no sockets, a manual clock, the memory store for the durable window."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from leveret.core.errors import PreconditionFailed
from leveret.core.storage import DedupPut, MessageOp
from leveret.store.memory import MemoryStore

from corekit import Core

DEDUP = {"x-message-deduplication": True}


def ids(n: str) -> dict[str, Any]:
    return {"headers": {"x-deduplication-header": n}}


def acks(client: Any) -> list[bool]:
    return [ack for _ch, _tag, _multiple, ack in client.sink.confirms]


def test_a_queue_drops_a_duplicate_and_the_confirm_still_acks_it() -> None:
    core = Core()
    client = core.client()
    client.channel.select_confirm()
    queue = client.declare("q", **DEDUP)
    client.publish("q", b"1", mandatory=True, **ids("a"))
    client.publish("q", b"2", mandatory=True, **ids("a"))  # the duplicate
    client.publish("q", b"3", mandatory=True, **ids("b"))
    client.publish("q", b"4", mandatory=True)  # no id: never a duplicate
    client.publish("q", b"5", mandatory=True)
    assert acks(client) == [True] * 5 and client.sink.returns == []
    assert client.bodies("q") == [b"1", b"3", b"4", b"5"]
    assert queue.dedup is not None and queue.dedup.duplicates == 1
    assert queue.stats_published == 4  # the duplicate is not counted as published into the queue


def test_ids_of_different_types_differ_and_a_custom_header_names_the_id() -> None:
    core = Core()
    client = core.client()
    client.declare("q", **DEDUP, **{"x-deduplication-header": "order"})
    client.publish("q", b"1", headers={"order": "7"})
    client.publish("q", b"2", headers={"order": 7})  # an integer 7 is not the string "7"
    client.publish("q", b"3", headers={"order": 7})
    client.publish("q", b"4", headers={"x-deduplication-header": "7"})  # not the header this queue reads
    client.publish("q", b"5", headers={"x-deduplication-header": "7"})
    assert client.bodies("q") == [b"1", b"2", b"4", b"5"]


def test_the_window_keeps_the_last_x_cache_size_ids() -> None:
    core = Core()
    client = core.client()
    client.declare("q", **DEDUP, **{"x-cache-size": 2})
    for n, key in enumerate("abca"):  # a was pushed out by b and c
        client.publish("q", str(n).encode(), **ids(key))
    client.publish("q", b"x", **ids("c"))  # still in the window
    assert client.bodies("q") == [b"0", b"1", b"2", b"3"]


def test_x_cache_ttl_and_the_message_header_that_overrides_it() -> None:
    core = Core()
    client = core.client()
    client.declare("q", **DEDUP, **{"x-cache-ttl": 100})
    client.publish("q", b"1", **ids("a"))
    client.publish("q", b"2", headers={"x-deduplication-header": "b", "x-cache-ttl": 1000})
    core.advance(0.099)
    client.publish("q", b"dup a", **ids("a"))
    core.advance(0.002)
    client.publish("q", b"3", **ids("a"))  # its id expired
    client.publish("q", b"dup b", **ids("b"))  # kept for 1000 ms
    assert client.bodies("q") == [b"1", b"2", b"3"]


def test_a_refused_message_is_not_remembered_so_its_retry_goes_through() -> None:
    core = Core()
    client = core.client()
    client.channel.select_confirm()
    client.declare("q", **DEDUP, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    client.publish("q", b"1", **ids("a"))
    client.publish("q", b"2", **ids("b"))  # refused: nacked
    assert acks(client) == [True, False]
    assert client.bodies("q") == [b"1"]
    client.publish("q", b"2 again", **ids("b"))
    assert acks(client) == [True, False, True]
    assert client.bodies("q") == [b"2 again"]


def test_an_exchange_drops_a_duplicate_before_routing_it_to_any_queue() -> None:
    core = Core()
    client = core.client()
    client.channel.select_confirm()
    client.exchange("x", "fanout", **DEDUP)
    for name in ("q1", "q2"):
        client.declare(name)
        client.bind(name, "x")
    client.publish("", b"1", exchange="x", mandatory=True, **ids("a"))
    client.publish("", b"2", exchange="x", mandatory=True, **ids("a"))
    assert acks(client) == [True, True] and client.sink.returns == []
    assert client.bodies("q1") == [b"1"] and client.bodies("q2") == [b"1"]
    assert core.vhost.exchanges["x"].dedup.duplicates == 1


def test_an_exchange_remembers_an_id_only_once_the_message_was_routed() -> None:
    core = Core()
    client = core.client()
    client.exchange("x", "direct", **DEDUP)
    client.publish("k", b"unroutable", exchange="x", mandatory=True, **ids("a"))
    assert len(client.sink.returns) == 1
    client.declare("q")
    client.bind("q", "x", "k")
    client.publish("k", b"routed", exchange="x", mandatory=True, **ids("a"))
    assert client.bodies("q") == [b"routed"] and len(client.sink.returns) == 1


@pytest.mark.parametrize(("arguments", "text"), [
    ({"x-message-deduplication": "yes"}, "x-message-deduplication header not a Bool"),
    ({**DEDUP, "x-cache-size": "10"}, "x-cache-size header not a Int"),
    ({**DEDUP, "x-cache-ttl": -1}, "x-cache-ttl has to be larger than or equal to 0"),
    ({**DEDUP, "x-deduplication-header": 5}, "x-deduplication-header header not a String"),
])
def test_invalid_arguments_are_refused(arguments: dict[str, Any], text: str) -> None:
    core = Core()
    client = core.client()
    with pytest.raises(PreconditionFailed, match=text):
        client.declare("q", **arguments)
    with pytest.raises(PreconditionFailed, match=text):
        client.exchange("x", "direct", **arguments)
    assert "q" not in core.vhost.queues and "x" not in core.vhost.exchanges


def test_x_message_deduplication_false_keeps_no_window() -> None:
    core = Core()
    client = core.client()
    queue = client.declare("q", **{"x-message-deduplication": False})
    assert queue.dedup is None


def _durable_core(store: MemoryStore) -> Core:
    return Core(store=store, dispatch=lambda fn, *args: fn(*args))


def test_a_durable_window_survives_a_restart_and_is_trimmed_in_the_store() -> None:
    store = MemoryStore()
    store.open()
    core = _durable_core(store)
    client = core.client()
    client.declare("q", durable=True, **DEDUP, **{"x-cache-size": 3})
    client.vhost.declare_exchange("x", "fanout", durable=True, arguments=dict(DEDUP))
    client.declare("q2", durable=True)
    client.bind("q2", "x")
    for key in "abcde":
        client.publish("q", key.encode(), delivery_mode=2, **ids(key))
    client.publish("", b"x1", exchange="x", delivery_mode=2, **ids("e"))
    client.publish("", b"t1", exchange="x", **ids("t"))  # a transient message: the window is the exchange's
    assert [row[1] for row in store.load_dedup()[("/", "queue", "q")]] == ["sc", "sd", "se"]
    assert [row[1] for row in store.load_dedup()[("/", "exchange", "x")]] == ["se", "st"]

    again = _durable_core(store)  # a restart: recovered from the store
    client = again.client()
    client.channel.select_confirm()
    for key in "edcb":
        client.publish("q", b"again " + key.encode(), delivery_mode=2, **ids(key))
    client.publish("", b"x2", exchange="x", delivery_mode=2, **ids("e"))
    client.publish("", b"t2", exchange="x", **ids("t"))
    assert acks(client) == [True] * 6
    assert client.bodies("q") == [b"a", b"b", b"c", b"d", b"e", b"again b"]
    assert client.bodies("q2") == [b"x1"]  # t1 was transient (gone with the restart), t2 a duplicate of it
    assert [row[1] for row in store.load_dedup()[("/", "queue", "q")]] == ["sd", "se", "sb"]

    client.vhost.delete_queue("q", None)
    client.vhost.delete_exchange("x")
    assert store.load_dedup() == {}


class _FailingStore(MemoryStore):
    """A memory store whose next submit with a DedupPut fails (as a full disk would)."""

    fail = False

    def submit(self, ops: Sequence[MessageOp], done: Callable[[BaseException | None], None]) -> None:
        if self.fail and any(isinstance(op, DedupPut) for op in ops):
            self.fail = False
            done(OSError("disk full"))
            return
        super().submit(ops, done)


def test_a_failed_commit_forgets_its_ids_so_the_nacked_publish_can_come_again() -> None:
    store = _FailingStore()
    store.open()
    core = _durable_core(store)
    client = core.client()
    client.channel.select_confirm()
    client.declare("q", durable=True, **DEDUP)
    store.fail = True
    client.publish("q", b"lost", delivery_mode=2, **ids("a"))
    client.publish("q", b"kept", delivery_mode=2, **ids("a"))
    assert acks(client) == [False, True]
    assert client.bodies("q") == [b"kept"]


def test_a_retry_or_a_delayed_release_is_the_same_message_again_not_a_duplicate() -> None:
    core = Core()
    client = core.client()
    client.declare("q", **DEDUP, **{"x-retry-intervals": [1000]})
    client.publish("q", b"1", **ids("a"))
    client.consume("q", "c", prefetch=1)
    client.reject(client.sink.deliveries[0].delivery_tag, requeue=False)  # retried in 1 s
    core.advance(1.1)
    assert [d.body for d in client.sink.deliveries] == [b"1", b"1"]
    client.cancel("c")
    client.exchange("dx", "x-delayed-message", **DEDUP, **{"x-delayed-type": "direct"})
    client.declare("d")
    client.bind("d", "dx", "k")
    client.publish("k", b"later", exchange="dx", headers={"x-delay": 500, "x-deduplication-header": "b"})
    client.publish("k", b"dup", exchange="dx", headers={"x-delay": 500, "x-deduplication-header": "b"})
    core.advance(0.6)
    assert client.bodies("d") == [b"later"]


def test_a_dead_letter_coming_back_to_its_queue_is_not_a_duplicate() -> None:
    """The usual retry loop: rejected from q into a wait queue whose TTL dead-letters it back into q."""
    core = Core()
    client = core.client()
    client.declare("q", **DEDUP, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "wait"})
    client.declare("wait", **{"x-message-ttl": 100, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q"})
    client.publish("q", b"job", **ids("a"))
    client.publish("q", b"dup", **ids("a"))
    client.consume("q", "c", prefetch=1)
    client.reject(client.sink.deliveries[0].delivery_tag, requeue=False)
    core.advance(0.2)
    assert [d.body for d in client.sink.deliveries] == [b"job", b"job"]
