"""The store contract (leveret/core/storage.py), run against every backend, plus SQLite-only durability tests.

To add a backend, add a factory to ``BACKENDS`` below: every test that uses the ``store`` fixture then runs
against it too. The PostgreSQL backend runs on scripts/postgres.sh's throwaway server (tests/support/pghelp.py:
skipped, saying why, when there is none), each test in a schema of its own that is dropped afterwards.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import os
import random
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import small_tmpfs

from leveret.core.status_record import StatusRecord
from leveret.core.storage import (
    BindingDef,
    DedupPut,
    Delete,
    ExchangeDef,
    MessageOp,
    PermissionDef,
    PolicyDef,
    Purge,
    Push,
    QueueDef,
    Requeue,
    StatusExpire,
    StatusPut,
    StatusRead,
    Store,
    StoredMessage,
    StoreError,
    UserDef,
)
from leveret.store import BACKENDS as REGISTRY
from leveret.store import backend_class, open_store
from leveret.store.memory import MemoryStore
from leveret.store.postgres import PostgresStore
from leveret.store.postgres_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from leveret.store.sqlite import SCHEMA_VERSION, SqliteStore, decode_value, encode_value

from pghelp import postgres_store_url, postgres_url  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[2]

BACKENDS: dict[str, Callable[[Path], Store]] = {
    "memory": lambda tmp: MemoryStore(),
    "sqlite": lambda tmp: SqliteStore(tmp / "data" / "leveret.db"),
}


@pytest.fixture(params=[*sorted(BACKENDS), "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgresql":
        s: Store = PostgresStore(request.getfixturevalue("postgres_store_url"))
    else:
        s = BACKENDS[request.param](tmp_path)
    s.open()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "leveret.db"


def submit_wait(store: Store, ops: Sequence[MessageOp]) -> None:
    results: list[BaseException | None] = []
    store.submit(list(ops), results.append)
    store.flush()
    assert len(results) == 1
    if results[0] is not None:
        raise results[0]


def push(i: int, queue: str = "q", *, seq: int | None = None, vhost: str = "/", body: bytes | None = None) -> Push:
    return Push(i, vhost, queue, i if seq is None else seq, "ex", f"rk.{i}", b"header-%d" % i,
                b"body-%d" % i if body is None else body)


def ids(messages: Iterator[StoredMessage]) -> list[int]:
    return [m.id for m in messages]


def assert_same(a: Any, b: Any, where: str = "value") -> None:
    """Equal and of the same types all the way down (1 == 1.0 == True and Decimal('1.5') == 1.5 are not enough)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__} ({a!r} vs {b!r})"
    if isinstance(a, dict):
        assert list(sorted(a, key=repr)) == list(sorted(b, key=repr)), f"{where}: keys {a.keys()} != {b.keys()}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, datetime.datetime):
        assert a == b and a.utcoffset() == b.utcoffset(), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, decimal.Decimal):
        assert a.as_tuple() == b.as_tuple(), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, float):
        assert repr(a) == repr(b), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


TRICKY: dict[str, Any] = {
    "x-max-length": 10,
    "x-message-ttl": 60_000,
    "big": 2**70,
    "negative": -(2**40),
    "float": 1.5,
    "minus-zero": -0.0,
    "inf": float("inf"),
    "true": True,
    "false": False,
    "none": None,
    "text": "héllo ☃ \x00 \"quoted\" \\ {braces}",
    "bytes": b"\x00\xff\xfe binary",
    "empty-bytes": b"",
    "bytearray": bytearray(b"ba"),
    "decimal": decimal.Decimal("1.50"),
    "decimal-exp": decimal.Decimal("-1.2E+5"),
    "decimal-tiny": decimal.Decimal("0.000001"),
    "utc": datetime.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=datetime.UTC),
    "offset": datetime.datetime(2001, 1, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
    "naive": datetime.datetime(1999, 12, 31, 23, 59, 59),
    "empty-table": {},
    "empty-array": [],
    "tuple": (1, "two", b"three"),
    "$bytes": "a key that looks like a tag",
    "$$dollars": {"$decimal": "not a decimal", "$": 1},
    "x-dead-letter": {
        "nested": {"deeper": [1, 2.0, "3", b"4", decimal.Decimal("5"), [None, {"$tuple": []}]]},
        "list-of-tables": [{"a": 1}, {"b": [True, False]}],
    },
    "1": "numeric-looking key",
    "": "empty key",
}


# --- definitions ---------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert set(REGISTRY) >= {"memory", "sqlite"}
    assert backend_class("memory") is MemoryStore
    assert backend_class("sqlite") is SqliteStore
    assert backend_class("postgresql") is PostgresStore
    with pytest.raises(StoreError, match="unknown store 'nope'"):
        backend_class("nope")


def test_open_store(tmp_path: Path) -> None:
    s = open_store("sqlite", path=tmp_path / "leveret.db")
    try:
        s.open()  # idempotent
        s.save_vhost("/")
        assert s.load_definitions().vhosts == ["/"]
    finally:
        s.close()
        s.close()  # idempotent too
    m = open_store("memory")
    assert m.load_definitions().vhosts == []
    m.close()


def test_tagged_json_round_trip() -> None:
    text = encode_value(TRICKY)
    assert_same(decode_value(text), TRICKY)
    assert encode_value({"b": 1, "a": 2}) == encode_value({"a": 2, "b": 1})  # canonical
    assert_same(decode_value(encode_value({1: "int key", (1, 2): "tuple key"})), {1: "int key", (1, 2): "tuple key"})
    with pytest.raises(StoreError, match="cannot store a value of type object"):
        encode_value({"x": object()})


def test_definitions_round_trip(store: Store) -> None:
    store.save_vhost("/")
    store.save_vhost("other")
    store.save_vhost("/")  # saving again is harmless
    store.save_user(UserDef("guest", "hash1", ("administrator",)))
    store.save_user(UserDef("bob", "hash2"))
    store.save_permission(PermissionDef("guest", "/"))
    store.save_permission(PermissionDef("bob", "other", "^bob-.*", "", "^amq\\.x$"))
    store.save_exchange(ExchangeDef("/", "ex", "topic", True, False, False, TRICKY))
    store.save_exchange(ExchangeDef("/", "alt", "fanout", durable=True, auto_delete=True, internal=True))
    store.save_queue(QueueDef("/", "q", True, False, {"x-queue-type": "classic", "x-args": TRICKY}))
    store.save_queue(QueueDef("other", "q", auto_delete=True))
    store.save_binding(BindingDef("/", "ex", "q", "queue", "a.#", TRICKY))
    store.save_binding(BindingDef("/", "ex", "alt", "exchange", "b.*"))

    d = store.load_definitions()
    assert sorted(d.vhosts) == ["/", "other"]
    assert sorted(d.users, key=lambda u: u.name) == [UserDef("bob", "hash2", ()),
                                                     UserDef("guest", "hash1", ("administrator",))]
    assert all(type(u.tags) is tuple for u in d.users)
    assert sorted(d.permissions, key=lambda p: p.user) == [PermissionDef("bob", "other", "^bob-.*", "", "^amq\\.x$"),
                                                           PermissionDef("guest", "/")]
    exchanges = {x.name: x for x in d.exchanges}
    assert exchanges["alt"] == ExchangeDef("/", "alt", "fanout", True, True, True, {})
    assert type(exchanges["alt"].durable) is bool and type(exchanges["alt"].internal) is bool
    assert_same(exchanges["ex"].arguments, TRICKY)
    assert (exchanges["ex"].type, exchanges["ex"].durable, exchanges["ex"].auto_delete) == ("topic", True, False)
    queues = {(q.vhost, q.name): q for q in d.queues}
    assert set(queues) == {("/", "q"), ("other", "q")}
    assert_same(queues[("/", "q")].arguments, {"x-queue-type": "classic", "x-args": TRICKY})
    assert queues[("other", "q")] == QueueDef("other", "q", True, True, {})
    bindings = {b.destination: b for b in d.bindings}
    assert_same(bindings["q"].arguments, TRICKY)
    assert bindings["alt"] == BindingDef("/", "ex", "alt", "exchange", "b.*", {})


def test_saved_arguments_are_not_aliased(store: Store) -> None:
    args: dict[str, Any] = {"list": [1]}
    store.save_queue(QueueDef("/", "q", arguments=args))
    args["list"].append(2)
    loaded = store.load_definitions().queues[0]
    assert loaded.arguments == {"list": [1]}
    loaded.arguments["list"].append(3)
    assert store.load_definitions().queues[0].arguments == {"list": [1]}


def test_save_replaces(store: Store) -> None:
    store.save_user(UserDef("u", "old", ("a",)))
    store.save_user(UserDef("u", "new", ("b", "c")))
    store.save_permission(PermissionDef("u", "/", "a", "b", "c"))
    store.save_permission(PermissionDef("u", "/", "x", "y", "z"))
    store.save_exchange(ExchangeDef("/", "ex", "direct", arguments={"v": 1}))
    store.save_exchange(ExchangeDef("/", "ex", "topic", arguments={"v": 2}))
    store.save_queue(QueueDef("/", "q", arguments={"v": 1}))
    store.save_queue(QueueDef("/", "q", durable=True, auto_delete=True, arguments={"v": 2}))
    d = store.load_definitions()
    assert d.users == [UserDef("u", "new", ("b", "c"))]
    assert d.permissions == [PermissionDef("u", "/", "x", "y", "z")]
    assert d.exchanges == [ExchangeDef("/", "ex", "topic", arguments={"v": 2})]
    assert d.queues == [QueueDef("/", "q", True, True, {"v": 2})]


def test_bindings_are_identified_by_all_fields(store: Store) -> None:
    base = BindingDef("/", "ex", "q", "queue", "rk", {"x-match": "all", "a": 1})
    variants = [
        base,
        BindingDef("/", "ex", "q", "queue", "rk", {"x-match": "any", "a": 1}),
        BindingDef("/", "ex", "q", "queue", "rk", {}),
        BindingDef("/", "ex", "q", "queue", "other"),
        BindingDef("/", "ex", "q", "exchange", "rk"),
        BindingDef("/", "ex2", "q", "queue", "rk"),
        BindingDef("v2", "ex", "q", "queue", "rk"),
    ]
    for b in variants:
        store.save_binding(b)
    store.save_binding(base)  # a duplicate is one binding
    assert len(store.load_definitions().bindings) == len(variants)
    # the same arguments in another key order name the same binding
    store.delete_binding(BindingDef("/", "ex", "q", "queue", "rk", {"a": 1, "x-match": "all"}))
    remaining = store.load_definitions().bindings
    assert base not in remaining and len(remaining) == len(variants) - 1
    store.delete_binding(BindingDef("/", "ex", "q", "queue", "rk", {"nope": 1}))  # absent: no error
    assert len(store.load_definitions().bindings) == len(variants) - 1
    # nested tables compare regardless of key order; values compare with their types
    store.save_binding(BindingDef("/", "h", "q", "queue", "", {"t": {"a": 1, "b": [1, 2]}}))
    store.save_binding(BindingDef("/", "h", "q", "queue", "", {"t": {"b": [1, 2], "a": 1}}))
    store.save_binding(BindingDef("/", "h", "q", "queue", "", {"t": {"b": [1, 2], "a": True}}))
    store.save_binding(BindingDef("/", "h", "q", "queue", "", {"t": {"b": [1, 2], "a": 1.0}}))
    assert len([b for b in store.load_definitions().bindings if b.source == "h"]) == 3


def test_bindings_with_long_arguments(store: Store) -> None:
    """A headers binding's arguments can be long (past a b-tree entry's size in PostgreSQL)."""
    big = {"x-match": "all", "blob": random.Random(3).randbytes(6000).hex(), "n": list(range(500))}
    other = {**big, "n": list(range(501))}
    for args in (big, other, big):
        store.save_binding(BindingDef("/", "h", "q", "queue", "", args))
    assert sorted(len(b.arguments["n"]) for b in store.load_definitions().bindings) == [500, 501]
    store.delete_binding(BindingDef("/", "h", "q", "queue", "", big))
    assert [len(b.arguments["n"]) for b in store.load_definitions().bindings] == [501]


def test_delete_exchange_cascades_to_its_bindings(store: Store) -> None:
    store.save_exchange(ExchangeDef("/", "x", "direct"))
    store.save_exchange(ExchangeDef("/", "y", "direct"))
    store.save_queue(QueueDef("/", "x"))  # a queue with the exchange's name
    keep = [BindingDef("/", "y", "x", "queue", "k"),  # to the queue named x: kept
            BindingDef("other", "x", "q", "queue", "k")]  # another vhost: kept
    gone = [BindingDef("/", "x", "q", "queue", "k"),  # from x
            BindingDef("/", "y", "x", "exchange", "k")]  # to exchange x
    for b in keep + gone:
        store.save_binding(b)
    store.delete_exchange("/", "x")
    d = store.load_definitions()
    assert [x.name for x in d.exchanges] == ["y"]
    assert sorted(d.bindings, key=repr) == sorted(keep, key=repr)
    assert [q.name for q in d.queues] == ["x"]


def test_delete_queue_cascades_to_bindings_and_messages(store: Store) -> None:
    store.save_queue(QueueDef("/", "q"))
    store.save_queue(QueueDef("/", "r"))
    store.save_queue(QueueDef("v2", "q"))
    keep = [BindingDef("/", "ex", "r", "queue", "k"), BindingDef("/", "ex", "q", "exchange", "k"),
            BindingDef("v2", "ex", "q", "queue", "k")]
    for b in [*keep, BindingDef("/", "ex", "q", "queue", "k"), BindingDef("/", "ex2", "q", "queue", "k2")]:
        store.save_binding(b)
    submit_wait(store, [push(1, "q"), push(2, "r"), push(3, "q", vhost="v2"), push(4, "q", body=b"x" * 5000)])
    store.delete_queue("/", "q")
    d = store.load_definitions()
    assert sorted((q.vhost, q.name) for q in d.queues) == [("/", "r"), ("v2", "q")]
    assert sorted(d.bindings, key=repr) == sorted(keep, key=repr)
    assert ids(store.load_messages("/", "q")) == []
    assert store.message_counts() == {("/", "r"): 1, ("v2", "q"): 1}
    assert store.load_bodies([1, 4]) == {}


def test_delete_vhost_cascades(store: Store) -> None:
    for vhost in ("/", "v2"):
        store.save_vhost(vhost)
        store.save_permission(PermissionDef("guest", vhost))
        store.save_exchange(ExchangeDef(vhost, "ex", "direct"))
        store.save_queue(QueueDef(vhost, "q"))
        store.save_binding(BindingDef(vhost, "ex", "q", "queue", "k"))
        store.save_policy(PolicyDef(vhost, "p", ".*", {"max-length": 1}, 0, "queues"))
    store.save_user(UserDef("guest", "h"))
    submit_wait(store, [push(1, vhost="/"), push(2, vhost="v2"), push(3, vhost="v2", body=b"b" * 1000)])
    store.delete_vhost("v2")
    d = store.load_definitions()
    assert d.vhosts == ["/"]
    assert d.permissions == [PermissionDef("guest", "/")]
    assert [(x.vhost, x.name) for x in d.exchanges] == [("/", "ex")]
    assert [(q.vhost, q.name) for q in d.queues] == [("/", "q")]
    assert [b.vhost for b in d.bindings] == ["/"]
    assert [p.vhost for p in d.policies] == ["/"]  # a vhost made again later must not find the old policies
    assert d.users == [UserDef("guest", "h")]
    assert store.message_counts() == {("/", "q"): 1}
    assert store.load_bodies([1, 2, 3]) == {1: b"body-1"}


def test_delete_user_and_permission(store: Store) -> None:
    store.save_user(UserDef("a", "h"))
    store.save_user(UserDef("b", "h"))
    for user in ("a", "b"):
        for vhost in ("/", "v2"):
            store.save_permission(PermissionDef(user, vhost))
    store.delete_permission("b", "v2")
    store.delete_permission("b", "nowhere")  # absent: no error
    store.delete_user("a")  # also deletes a's permissions
    d = store.load_definitions()
    assert d.users == [UserDef("b", "h")]
    assert d.permissions == [PermissionDef("b", "/")]


def test_deleting_absent_things_is_harmless(store: Store) -> None:
    store.delete_vhost("none")
    store.delete_user("none")
    store.delete_exchange("/", "none")
    store.delete_queue("/", "none")
    submit_wait(store, [Delete(12345), Requeue(12345), Purge("/", "none")])
    assert store.load_definitions().vhosts == []


# --- messages ------------------------------------------------------------------------------------------------


def test_push_load_in_seq_order(store: Store) -> None:
    # ids and seqs in different orders: loading follows seq
    ops: list[MessageOp] = [push(10, seq=3), push(11, seq=1), push(12, seq=2, body=b"B" * 3000),
                            push(13, "other", seq=1), push(14, seq=7, vhost="v2")]
    submit_wait(store, ops)
    loaded = list(store.load_messages("/", "q"))
    assert [(m.id, m.seq) for m in loaded] == [(11, 1), (12, 2), (10, 3)]
    assert loaded[0] == StoredMessage(11, "/", "q", 1, "ex", "rk.11", b"header-11", b"body-11", False)
    assert loaded[1].body == b"B" * 3000
    assert type(loaded[0].redelivered) is bool
    for m in [*loaded, *store.load_messages("/", "q", with_bodies=False)]:
        assert type(m) is StoredMessage
        assert not hasattr(m, "__dict__")  # a slots record (not frozen: frozen dataclasses cost ~3 us each)
    assert ids(store.load_messages("/", "other")) == [13]
    assert ids(store.load_messages("v2", "q")) == [14]
    assert ids(store.load_messages("/", "nothing")) == []


def test_delete_requeue_purge(store: Store) -> None:
    submit_wait(store, [push(i) for i in range(1, 11)] + [push(i, "r") for i in range(11, 14)])
    submit_wait(store, [Delete(2), Delete(9), Requeue(3), Requeue(10), Delete(99)])
    loaded = list(store.load_messages("/", "q"))
    assert [m.id for m in loaded] == [1, 3, 4, 5, 6, 7, 8, 10]
    assert [m.id for m in loaded if m.redelivered] == [3, 10]
    submit_wait(store, [Requeue(3)])  # requeued twice: still redelivered
    assert [m.id for m in store.load_messages("/", "q") if m.redelivered] == [3, 10]
    submit_wait(store, [Purge("/", "q")])
    assert ids(store.load_messages("/", "q")) == []
    assert ids(store.load_messages("/", "r")) == [11, 12, 13]


def test_ops_within_one_submit_keep_their_order(store: Store) -> None:
    submit_wait(store, [push(1), push(2), push(3)])
    submit_wait(store, [
        push(4), Delete(4),  # acked before it was written
        push(5), Requeue(5),  # requeued before it was written
        Requeue(1), Delete(1),  # requeued then acked
        Delete(2), push(2, "moved", seq=9),  # same id again after a delete
        push(6), push(7, "r"), Purge("/", "q"), push(8),  # purge drops earlier pushes only
        push(9), Requeue(9), Delete(9), push(10, body=b"L" * 2000), Delete(10),
    ])
    assert ids(store.load_messages("/", "q")) == [8]
    assert [(m.id, m.seq, m.redelivered) for m in store.load_messages("/", "moved")] == [(2, 9, False)]
    assert ids(store.load_messages("/", "r")) == [7]
    submit_wait(store, [push(11), Requeue(11)])
    assert [m.redelivered for m in store.load_messages("/", "q")] == [False, True]
    submit_wait(store, [push(12), Requeue(12), Delete(12), push(12)])  # the same id again: a fresh message
    assert [(m.id, m.redelivered) for m in store.load_messages("/", "q")] == [(8, False), (11, True), (12, False)]
    assert store.load_bodies([10]) == {}


def test_ops_across_submits_without_flush(store: Store) -> None:
    done: list[BaseException | None] = []
    store.submit([push(1), push(2)], done.append)
    store.submit([Delete(1), Requeue(2), push(3)], done.append)
    store.submit([Purge("/", "q")], done.append)
    store.submit([push(4), push(5)], done.append)
    store.submit([Delete(4)], done.append)
    store.flush()
    assert done == [None] * 5
    assert [(m.id, m.redelivered) for m in store.load_messages("/", "q")] == [(5, False)]


def test_definitions_are_ordered_with_message_ops(store: Store) -> None:
    """delete_queue deletes what was submitted before it, not what comes after (re-created queue)."""
    done: list[BaseException | None] = []
    store.save_queue(QueueDef("/", "q"))
    store.submit([push(1), push(2, body=b"x" * 500)], done.append)  # no flush: maybe still queued
    store.delete_queue("/", "q")
    store.save_queue(QueueDef("/", "q", arguments={"v": 2}))
    store.submit([push(3)], done.append)
    store.flush()
    assert done == [None, None]
    assert ids(store.load_messages("/", "q")) == [3]
    assert store.load_definitions().queues == [QueueDef("/", "q", arguments={"v": 2})]
    store.submit([push(4, vhost="v")], done.append)
    store.delete_vhost("v")
    store.submit([push(5, vhost="v")], done.append)
    store.flush()
    assert ids(store.load_messages("v", "q")) == [5]


def test_names_with_nul_and_odd_characters(store: Store) -> None:
    """A routing key, exchange, queue, vhost or task id may hold any valid UTF-8, NUL included (AMQP short strings):
    they round-trip, and one such message does not fail the others' commit."""
    odd = ["\x00", "a\x00b", "\x01x", "\x01", "☃\x00é", '"quoted"\\']
    done: list[BaseException | None] = []
    store.submit([push(1)], done.append)
    for n, name in enumerate(odd, start=2):
        store.submit([Push(n, name, name, n, name, name, b"h", b"b-%d" % n)], done.append)
    store.submit([StatusPut(odd[1], _status(odd[0], "queued", 0, 1.0))], done.append)
    store.flush()
    assert done == [None] * (len(odd) + 2)
    assert ids(store.load_messages("/", "q")) == [1]
    for n, name in enumerate(odd, start=2):
        assert [(m.id, m.vhost, m.queue, m.exchange, m.routing_key) for m in store.load_messages(name, name)] == [
            (n, name, name, name, name)]
    assert store.message_counts() == {("/", "q"): 1, **{(name, name): 1 for name in odd}}
    read = StatusRead(odd[1], [odd[0], "other"], 0.0)
    submit_wait(store, [read])
    assert list(read.records) == [odd[0]]
    submit_wait(store, [Purge(odd[1], odd[1])])
    store.delete_queue(odd[2], odd[2])
    store.delete_vhost(odd[3])
    assert store.message_counts() == {("/", "q"): 1, **{(name, name): 1 for name in odd if name not in odd[1:4]}}


def test_load_without_bodies(store: Store) -> None:
    submit_wait(store, [push(1), push(2, body=b"z" * 100_000), push(3, body=b""), Requeue(2)])
    with_bodies = list(store.load_messages("/", "q"))
    without = list(store.load_messages("/", "q", with_bodies=False))
    assert [m.body for m in with_bodies] == [b"body-1", b"z" * 100_000, b""]
    assert [m.body for m in without] == [None, None, None]
    for a, b in zip(with_bodies, without, strict=True):
        assert (a.id, a.vhost, a.queue, a.seq, a.exchange, a.routing_key, a.header, a.redelivered) == (
            b.id, b.vhost, b.queue, b.seq, b.exchange, b.routing_key, b.header, b.redelivered)


@pytest.mark.parametrize("with_bodies", [True, False])
def test_paging_after_seq_and_limit(store: Store, with_bodies: bool) -> None:
    n = 1200  # more than the SQLite backend's page with bodies
    submit_wait(store, [push(i, seq=2 * i, body=b"%d" % i) for i in range(1, n + 1)])
    assert ids(store.load_messages("/", "q", with_bodies=with_bodies)) == list(range(1, n + 1))
    seen: list[int] = []
    after = 0
    while True:
        page = list(store.load_messages("/", "q", with_bodies=with_bodies, after_seq=after, limit=97))
        if not page:
            break
        assert len(page) <= 97
        seen += [m.id for m in page]
        after = page[-1].seq
    assert seen == list(range(1, n + 1))
    assert ids(store.load_messages("/", "q", after_seq=11, limit=3)) == [6, 7, 8]  # seq 12, 14, 16
    assert ids(store.load_messages("/", "q", after_seq=2 * n)) == []
    assert ids(store.load_messages("/", "q", limit=0)) == []
    assert len(ids(store.load_messages("/", "q", limit=1000, with_bodies=with_bodies))) == 1000
    m = next(store.load_messages("/", "q", after_seq=99, with_bodies=with_bodies))
    assert (m.id, m.body) == (50, b"50" if with_bodies else None)


def test_load_bodies(store: Store) -> None:
    big = os.urandom(200_000)
    submit_wait(store, [push(1), push(2, body=big), push(3, body=b""), push(4, "other", body=b"o" * 70)])
    assert store.load_bodies([]) == {}
    assert store.load_bodies([2, 1, 3, 4, 99, 2]) == {1: b"body-1", 2: big, 3: b"", 4: b"o" * 70}
    assert store.load_bodies(iter(range(1, 2000))) == {1: b"body-1", 2: big, 3: b"", 4: b"o" * 70}
    submit_wait(store, [Delete(2)])
    assert store.load_bodies([2]) == {}


def test_message_counts_and_max_id(store: Store) -> None:
    assert store.message_counts() == {}
    assert store.max_message_id() == 0
    submit_wait(store, [push(i) for i in range(1, 6)] + [push(i, "r", vhost="v") for i in range(6, 9)])
    assert store.message_counts() == {("/", "q"): 5, ("v", "r"): 3}
    assert store.max_message_id() == 8
    submit_wait(store, [Delete(i) for i in range(1, 9)])
    assert store.message_counts() == {}
    assert store.max_message_id() == 8  # ids are never reused
    submit_wait(store, [push(20), Delete(20)])  # never written, but its id was handed out
    assert store.max_message_id() == 20


def test_done_callbacks_once_in_submit_order(store: Store) -> None:
    calls: list[tuple[int, BaseException | None]] = []
    lock = threading.Lock()

    def callback(n: int) -> Callable[[BaseException | None], None]:
        def done(exc: BaseException | None) -> None:
            with lock:
                calls.append((n, exc))
        return done

    expected = 0
    for n in range(300):
        size = n % 7  # empty submits too
        store.submit([push(expected + k + 1) for k in range(size)], callback(n))
        expected += size
    store.flush()
    assert calls == [(n, None) for n in range(300)]
    assert len(ids(store.load_messages("/", "q"))) == expected
    store.flush()
    assert len(calls) == 300


def test_flush_makes_everything_visible(store: Store) -> None:
    for i in range(1, 2001):
        store.submit([push(i)], lambda exc: None)
    store.flush()
    assert store.message_counts() == {("/", "q"): 2000}


def test_big_submit_larger_than_a_batch(store: Store) -> None:
    if isinstance(store, SqliteStore | PostgresStore):
        store.max_batch_ops = 100
        store.max_batch_bytes = 10_000
    done: list[BaseException | None] = []
    store.submit([push(i, body=b"x" * 300) for i in range(1, 1001)], done.append)
    store.submit([push(i) for i in range(1001, 1011)], done.append)
    store.submit([Delete(i) for i in range(1, 1001, 2)], done.append)
    store.flush()
    assert done == [None] * 3
    assert store.message_counts() == {("/", "q"): 510}


def test_bad_op_fails_its_submit_only(store: Store) -> None:
    submit_wait(store, [push(1)])
    done: list[BaseException | None] = []
    store.submit([push(2), "not an op"], done.append)  # type: ignore[list-item]
    store.flush()
    assert len(done) == 1 and isinstance(done[0], TypeError)
    submit_wait(store, [push(3)])
    assert ids(store.load_messages("/", "q")) == [1, 3]


def test_closed_store_refuses(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError):
        store.submit([push(1)], lambda exc: None)
    with pytest.raises(StoreError):
        store.save_vhost("/")
    store.open()
    store.save_vhost("/")


# --- SQLite only ---------------------------------------------------------------------------------------------


def fill(s: Store) -> None:
    s.save_vhost("/")
    s.save_user(UserDef("guest", "h", ("administrator",)))
    s.save_permission(PermissionDef("guest", "/"))
    s.save_exchange(ExchangeDef("/", "ex", "headers", arguments=TRICKY))
    s.save_queue(QueueDef("/", "q", arguments={"x-max-priority": 10}))
    s.save_binding(BindingDef("/", "ex", "q", "queue", "", {"x-match": "any", "k": b"v"}))
    submit_wait(s, [push(i, body=random.Random(i).randbytes(i * 37)) for i in range(1, 201)])
    submit_wait(s, [Delete(i) for i in range(1, 201, 3)] + [Requeue(5), Delete(200)])


def snapshot(s: Store) -> tuple[Any, ...]:
    """Everything in the store, comparable across backends (argument tables by their canonical encoding)."""
    def canon(items: list[Any]) -> list[str]:
        return sorted(repr(dataclasses.replace(x, arguments=encode_value(x.arguments))) if hasattr(x, "arguments")
                      else repr(x) for x in items)

    d = s.load_definitions()
    return (sorted(d.vhosts), canon(d.users), canon(d.permissions), canon(d.exchanges), canon(d.queues),
            canon(d.bindings), list(s.load_messages("/", "q")), s.message_counts(), s.max_message_id())


def test_sqlite_reopen_keeps_everything(db_path: Path) -> None:
    with SqliteStore(db_path) as s:
        fill(s)
        before = snapshot(s)
    assert not db_path.with_name("leveret.db-wal").exists() or db_path.with_name("leveret.db-wal").stat().st_size == 0
    with SqliteStore(db_path) as s:
        after = snapshot(s)
        assert_same(s.load_definitions().exchanges[0].arguments, TRICKY)
    assert after == before
    memory = MemoryStore()
    memory.open()
    fill(memory)
    assert snapshot(memory) == before  # and the same as the reference backend
    assert [m.redelivered for m in before[6] if m.id == 5] == [True]
    assert before[8] == 200


def test_sqlite_schema_version_and_file_marks(db_path: Path) -> None:
    with SqliteStore(db_path):
        pass
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_newer_schema_refused(db_path: Path) -> None:
    with SqliteStore(db_path) as s:
        fill(s)
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(StoreError) as info:
        SqliteStore(db_path).open()
    assert str(info.value) == (
        f"the store {db_path} was written by a newer Leveret (schema {SCHEMA_VERSION + 7}, this version knows "
        f"{SCHEMA_VERSION}); upgrade Leveret or use another --data-dir")
    assert db_path.read_bytes() == before


@pytest.mark.parametrize("garbage", [
    b"this is not a database" * 200,
    b"",  # an empty file is an empty database: accepted (checked below)
    b"SQLite format 3\x00" + random.Random(7).randbytes(8000),  # deterministic: the same garbage every run
    b"\x00" * 4096,
])
def test_sqlite_garbage_file_refused_and_untouched(db_path: Path, garbage: bytes) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(garbage)
    if not garbage:
        with SqliteStore(db_path) as s:
            s.save_vhost("/")
        return
    with pytest.raises(StoreError) as info:
        SqliteStore(db_path).open()
    text = str(info.value)
    assert str(db_path) in text and "damaged" in text and "backup" in text and "move it aside" in text
    assert "\n" not in text
    assert db_path.read_bytes() == garbage
    assert sorted(p.name for p in db_path.parent.iterdir()) in (["leveret.db"], ["leveret.db", "leveret.db.lock"])


def test_sqlite_corrupt_pages_refused_and_untouched(db_path: Path) -> None:
    with SqliteStore(db_path) as s:
        fill(s)
        submit_wait(s, [push(i, body=b"x" * 3000) for i in range(1000, 1400)])
    data = bytearray(db_path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    rng = random.Random(7)
    for p in range(3, len(data) // page, 2):  # scribble over every other page after the schema
        data[p * page + 8: p * page + 200] = bytes(rng.randrange(256) for _ in range(192))
    db_path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged") as info:
        SqliteStore(db_path).open()
    assert "backup" in str(info.value)
    assert db_path.read_bytes() == bytes(data)


def test_sqlite_wal_without_database_refused(db_path: Path) -> None:
    with SqliteStore(db_path) as s:
        fill(s)
        s.run_in_writer(lambda conn: conn.execute("PRAGMA wal_autocheckpoint = 0"))
        submit_wait(s, [push(i) for i in range(1000, 1100)])
        wal = db_path.with_name("leveret.db-wal")
        saved = wal.read_bytes()  # what a kill -9 now would leave
    assert saved
    db_path.unlink()
    wal.write_bytes(saved)
    with pytest.raises(StoreError, match="-wal but not the database"):
        SqliteStore(db_path).open()
    assert wal.read_bytes() == saved and not db_path.exists()


def test_sqlite_foreign_database_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match="not a Leveret store"):
        SqliteStore(db_path).open()
    assert db_path.read_bytes() == before


def test_sqlite_second_opener_refused(db_path: Path) -> None:
    with SqliteStore(db_path), pytest.raises(StoreError, match="in use by another process"):
        SqliteStore(db_path).open()
    with SqliteStore(db_path):
        pass


def test_sqlite_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=str(tmp_path / "file")):
        SqliteStore(tmp_path / "file" / "leveret.db").open()


def _open_as_nobody(path: Path) -> str:
    """Open a store at ``path`` in a forked child that drops root for uid/gid 65534; returns what happened."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                SqliteStore(path).open()
                result = "OPENED"
            except StoreError as exc:
                result = "StoreError: " + str(exc)
            except BaseException as exc:
                result = f"{type(exc).__name__}: {exc}"
            os.write(write_fd, result.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def test_sqlite_read_only_refused() -> None:
    """A read-only directory (no store yet) and a read-only store file are refused, naming the path.

    Root ignores permission bits, so when the tests run as root the opening is done in a forked child that
    drops to uid 65534 (nobody)."""
    as_root = os.geteuid() == 0
    top = Path(tempfile.mkdtemp(prefix="leveret-ro-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        ro_dir = top / "ro"
        ro_dir.mkdir()
        rw_dir = top / "rw"
        rw_dir.mkdir()
        with SqliteStore(rw_dir / "leveret.db") as s:
            s.save_vhost("/")
        os.chmod(rw_dir / "leveret.db", 0o444)
        os.chmod(rw_dir / "leveret.db.lock", 0o666)
        os.chmod(rw_dir, 0o777)
        os.chmod(ro_dir, 0o555)
        before = (rw_dir / "leveret.db").read_bytes()
        for path, named in ((ro_dir / "leveret.db", str(ro_dir)), (rw_dir / "leveret.db", str(rw_dir / "leveret.db"))):
            if as_root:
                outcome = _open_as_nobody(path)
            else:
                try:
                    SqliteStore(path).open()
                    outcome = "OPENED"
                except StoreError as exc:
                    outcome = "StoreError: " + str(exc)
            assert outcome.startswith("StoreError: "), outcome
            assert named in outcome and "read-only" in outcome, outcome
        assert not (ro_dir / "leveret.db").exists()
        assert (rw_dir / "leveret.db").read_bytes() == before
    finally:
        for d in (top / "ro", top / "rw"):
            if d.exists():
                os.chmod(d, 0o755)
        subprocess.run(["rm", "-rf", str(top)], check=False)


def test_sqlite_disk_full_reports_and_recovers(db_path: Path) -> None:
    """SQLITE_FULL during a batch: its callbacks get the error, nothing of it is stored, and the store works
    again once there is room (simulated with PRAGMA max_page_count on the writer's connection)."""
    with SqliteStore(db_path) as s:
        submit_wait(s, [push(1)])
        pages = s._read("PRAGMA page_count")[0][0]
        s.run_in_writer(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages + 5}").fetchall())
        done: list[BaseException | None] = []
        s.submit([push(i, body=os.urandom(4000)) for i in range(2, 100)], done.append)
        s.submit([Delete(1)], done.append)
        s.flush()
        assert len(done) == 2 and all(isinstance(e, StoreError) for e in done), done
        assert "disk full" in str(done[0]) and str(db_path) in str(done[0])
        with pytest.raises(StoreError, match="disk full"):  # definitions report it too
            s.save_queue(QueueDef("/", "big", arguments={"pad": "x" * 50_000}))
        assert ids(s.load_messages("/", "q")) == [1]
        s.run_in_writer(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823").fetchall())
        submit_wait(s, [push(i, body=os.urandom(4000)) for i in range(2, 100)] + [Delete(1)])
        s.save_queue(QueueDef("/", "big"))
        assert ids(s.load_messages("/", "q")) == list(range(2, 100))
    with SqliteStore(db_path) as s:
        assert s.message_counts() == {("/", "q"): 98}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (root only; skipped where mounting is not allowed). Grow it with remount."""
    with small_tmpfs(tmp_path, "1m", " (the max_page_count test covers SQLITE_FULL)") as mount_point:
        yield mount_point


def test_sqlite_real_disk_full(small_disk: Path) -> None:
    """ENOSPC on a real (tmpfs) file system: failed batches report it, confirmed data stays, and the store
    works again once the file system has room."""
    path = small_disk / "leveret.db"
    confirmed: list[int] = []
    failures: list[BaseException] = []
    with SqliteStore(path) as s:
        next_id = 1
        while not failures and next_id < 2000:
            batch = list(range(next_id, next_id + 20))
            next_id += 20

            def done(exc: BaseException | None, batch: list[int] = batch) -> None:
                if exc is None:
                    confirmed.extend(batch)
                else:
                    failures.append(exc)

            s.submit([push(i, body=os.urandom(3000)) for i in batch], done)
            s.flush()
        assert failures, "the file system never filled up"
        assert isinstance(failures[0], StoreError) and "disk full" in str(failures[0]), failures[0]
        with pytest.raises(StoreError, match="disk full"):
            submit_wait(s, [push(i, body=os.urandom(3000)) for i in range(5000, 5040)])
        assert set(ids(s.load_messages("/", "q", with_bodies=False))) == set(confirmed)
        subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
        submit_wait(s, [push(i, body=os.urandom(3000)) for i in range(5000, 5040)])
        s.save_vhost("after")
    with SqliteStore(path) as s:
        assert set(ids(s.load_messages("/", "q", with_bodies=False))) == set(confirmed) | set(range(5000, 5040))
        assert s.load_definitions().vhosts == ["after"]


CHILD = textwrap.dedent("""
    import os, random, sys, time
    from leveret.store.sqlite import SqliteStore
    from leveret.core.storage import Push, Delete

    def say(line):
        os.write(1, (line + "\\n").encode())

    store = SqliteStore(sys.argv[1], max_batch_ops=int(sys.argv[2]))
    store.open()
    rng = random.Random(int(sys.argv[3]))
    next_id = store.max_message_id() + 1
    alive = [m.id for m in store.load_messages("/", "q", with_bodies=False)]
    say("READY")
    while True:
        n = rng.randint(1, 60)
        batch = list(range(next_id, next_id + n))
        next_id += n
        ops = [Push(i, "/", "q", i, "ex", "rk", b"h" * 20, os.urandom(rng.choice((8, 100, 3000)))) for i in batch]
        store.submit(ops, lambda exc, b=batch: say(("P " if exc is None else "E ") + " ".join(map(str, b))))
        alive += batch
        if rng.random() < 0.4 and len(alive) > 50:
            dead = [alive.pop(rng.randrange(len(alive))) for _ in range(rng.randint(1, 30))]
            say("S " + " ".join(map(str, dead)))
            store.submit([Delete(i) for i in dead],
                         lambda exc, d=dead: say(("D " if exc is None else "E ") + " ".join(map(str, d))))
        time.sleep(rng.choice((0, 0, 0.0005, 0.002)))
""")


def test_sqlite_kill_9_loses_nothing_confirmed(db_path: Path) -> None:
    confirmed: set[int] = set()  # done(None) reported for the push
    deleted: set[int] = set()  # done(None) reported for the delete
    doomed: set[int] = set()  # a delete was submitted (it may or may not have been written)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random()
    total_reported = 0
    for cycle in range(5):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db_path), str(rng.choice((50, 500, 10_000))),
                                 str(rng.randrange(1 << 30))], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buffer = b""
        deadline = None
        while True:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                buffer += chunk
                if deadline is None and b"READY\n" in buffer:
                    # kill at a random moment after the store is open (and once, early, during opening)
                    deadline = time.monotonic() + rng.uniform(0.05, 0.6)
            if cycle == 2 and deadline is None:
                deadline = time.monotonic() + 0.02
            if deadline is not None and time.monotonic() >= deadline:
                proc.send_signal(signal.SIGKILL)
                deadline = float("inf")
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, buffer[-500:]
        for line in buffer.decode().splitlines():
            kind, _, rest = line.partition(" ")
            numbers = {int(x) for x in rest.split()}
            if kind == "P":
                confirmed |= numbers
                total_reported += len(numbers)
            elif kind == "D":
                deleted |= numbers
            elif kind == "S":
                doomed |= numbers
            else:
                assert kind in ("READY", ""), line
        with SqliteStore(db_path) as s:  # must open: no corruption, no leftover lock
            stored = set(ids(s.load_messages("/", "q", with_bodies=False)))
            assert s.max_message_id() >= max(confirmed, default=0)
        missing = confirmed - doomed - stored
        assert not missing, f"cycle {cycle}: {len(missing)} confirmed messages lost, e.g. {sorted(missing)[:10]}"
        resurrected = deleted & stored
        assert not resurrected, f"cycle {cycle}: confirmed deletes came back: {sorted(resurrected)[:10]}"
    assert total_reported > 0


def test_policies_round_trip(store: Store) -> None:


    policy = PolicyDef("/", "ttl", "^work\\.", {"message-ttl": 60000, "dead-letter-exchange": "dlx",
                                               "retry-intervals": [15, 30]}, 5, "queues")
    store.save_policy(policy)
    store.save_policy(PolicyDef("/", "ae", ".*", {"alternate-exchange": "unrouted"}, 0, "exchanges"))
    assert store.load_definitions().policies == [policy, PolicyDef("/", "ae", ".*",
                                                                   {"alternate-exchange": "unrouted"}, 0,
                                                                   "exchanges")]
    store.delete_policy("/", "ae")
    assert store.load_definitions().policies == [policy]


def test_limits_saved_replaced_cleared_and_cascaded(store: Store) -> None:
    store.save_vhost("/")
    store.save_vhost("other")
    store.save_user(UserDef("bob", "h"))
    store.save_limits("vhost", "/", {"max-connections": 10, "max-queues": 2})
    store.save_limits("vhost", "other", {"max-queues": 0})
    store.save_limits("user", "bob", {"max-channels": 5})
    store.save_limits("vhost", "/", {"max-queues": 3})  # replaces
    assert sorted(store.load_definitions().limits) == [("user", "bob", {"max-channels": 5}),
                                                      ("vhost", "/", {"max-queues": 3}),
                                                      ("vhost", "other", {"max-queues": 0})]
    store.save_limits("vhost", "/", {})  # empty: removed
    store.delete_vhost("other")
    store.delete_user("bob")
    assert store.load_definitions().limits == []


def test_a_version_2_store_is_migrated_and_keeps_its_definitions(db_path: Path) -> None:
    from leveret.store.sqlite import MIGRATIONS

    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path)
    for migrate in MIGRATIONS[:2]:  # the schema as Leveret wrote it before limits
        migrate(conn)
    conn.execute("INSERT INTO vhosts (name) VALUES ('/')")
    conn.execute("INSERT INTO users (name, password_hash, tags) VALUES ('bob', 'h', '[]')")
    conn.execute("INSERT INTO permissions VALUES ('bob', '/', '^c', '^w', '^r')")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with SqliteStore(db_path) as s:
        d = s.load_definitions()
        assert d.permissions == [PermissionDef("bob", "/", "^c", "^w", "^r")] and d.limits == []
        s.save_limits("user", "bob", {"max-connections": 1})
        assert s.load_definitions().limits == [("user", "bob", {"max-connections": 1})]
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()


# --- task status records (the status book's table, core/status_record.py) -----------------------------------------


def _status(task_id: str, state: str, attempt: int, ts: float, ttl: float = 100.0, **kw: Any) -> StatusRecord:
    return StatusRecord(task_id, "t", "q", state, attempt, ts, ts, ts, ts + ttl, ts if state == "started" else None,
                        **kw)


def test_status_records_merge_read_expire_and_go_with_their_vhost(store: Store) -> None:
    store.save_vhost("/")
    store.save_vhost("v2")
    # blind merges, out of order and in separate submits: the stored record is the fold of all of them
    submit_wait(store, [StatusPut("/", _status("a", "succeeded", 1, 30.0, extra={"result": [1]}))])
    submit_wait(store, [StatusPut("/", _status("a", "started", 0, 10.0)),
                        StatusPut("/", _status("a", "queued", 0, 5.0)),
                        StatusPut("v2", _status("a", "queued", 0, 7.0)),
                        StatusPut("/", _status("b", "queued", 0, 1.0, ttl=10.0))])
    read = StatusRead("/", ["a", "b", "c"], 20.0)
    submit_wait(store, [StatusPut("/", _status("c", "started", 0, 15.0)), read])  # the read sees the put before it
    a = read.records["a"]
    assert (a.state, a.attempt, a.created, a.updated, a.started, a.expires, a.extra) == (
        "succeeded", 1, 5.0, 30.0, 10.0, 130.0, {"result": [1]})
    assert set(read.records) == {"a", "c"}  # b expired at 11.0
    expire = StatusExpire(20.0, 10)
    submit_wait(store, [expire])
    assert expire.deleted == 1
    store.delete_vhost("v2")
    read = StatusRead("v2", ["a"], 0.0)
    submit_wait(store, [read])
    assert read.records == {}


def test_a_version_3_store_gets_the_status_table(db_path: Path) -> None:
    from leveret.store.sqlite import MIGRATIONS

    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path)
    for migrate in MIGRATIONS[:3]:
        migrate(conn)
    conn.execute("INSERT INTO vhosts (name) VALUES ('/')")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with SqliteStore(db_path) as s:
        assert s.load_definitions().vhosts == ["/"]
        read = StatusRead("/", ["x"], 0.0)
        submit_wait(s, [StatusPut("/", _status("x", "queued", 0, 1.0)), read])
        assert read.records["x"].state == "queued"


# --- PostgreSQL only -----------------------------------------------------------------------------------------


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A store URL with a schema of its own (pghelp's postgres_store_url)."""
    return str(request.getfixturevalue("postgres_store_url"))


def _pg(url: str) -> Any:
    import psycopg

    return psycopg.connect(url.partition("?")[0], autocommit=True)


def test_postgres_reopen_keeps_everything(pg_url: str) -> None:
    with PostgresStore(pg_url) as s:
        fill(s)
        before = snapshot(s)
    with PostgresStore(pg_url) as s:
        assert snapshot(s) == before
        assert_same(s.load_definitions().exchanges[0].arguments, TRICKY)
    memory = MemoryStore()
    memory.open()
    fill(memory)
    assert snapshot(memory) == before


def test_postgres_refusals(pg_url: str) -> None:
    """A second node on the same schema, a newer schema version, a schema that is not a Leveret store: one
    line each, nothing touched."""
    schema = pg_url.rpartition("schema=")[2]
    with PostgresStore(pg_url) as s:
        s.save_vhost("/")
        with pytest.raises(StoreError, match="in use by another Leveret node") as info:
            PostgresStore(pg_url, lock_wait=0.2).open()
        assert "\n" not in str(info.value)
    with _pg(pg_url) as conn:
        conn.execute(f"UPDATE {schema}.meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=rf"newer Leveret \(schema 99, this version knows {PG_SCHEMA_VERSION}\)"):
        PostgresStore(pg_url).open()
    with _pg(pg_url) as conn:
        conn.execute(f"DROP TABLE {schema}.meta")
        conn.execute(f"CREATE TABLE {schema}.accounts (id INT)")
    with pytest.raises(StoreError, match="has tables but is not a Leveret store"):
        PostgresStore(pg_url).open()
    with _pg(pg_url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {schema}.vhosts").fetchone()[0] == 1


def test_postgres_down_at_start_retries_then_says_so_in_one_line() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgresStore(f"postgresql://leveret:secret@127.0.0.1:{port}/db", connect_retry=1.2)
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.open()
    assert time.monotonic() - started >= 1.0  # it retried
    text = str(info.value)
    assert text.startswith(f"cannot connect to the PostgreSQL store postgresql://leveret@127.0.0.1:{port}/db:")
    assert "gave up after 1.2 s" in text and "secret" not in text and "\n" not in text


def test_postgres_lost_connection_fails_its_commit_then_reconnects(pg_url: str) -> None:
    """The writer's connection killed on the server: the commit it was in fails (never confirmed), the store
    reports no free space while it is down (the broker's disk alarm blocks publishers), then reconnects."""
    with PostgresStore(pg_url) as s:
        submit_wait(s, [push(1)])
        assert s.free_space() and s.free_space() > 10**12
        schema = pg_url.rpartition("schema=")[2]
        with _pg(pg_url) as conn:
            killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE application_name = %s", (f"leveret writer {schema}",)).fetchall()
        assert killed == [(True,)]
        with pytest.raises(StoreError, match="writing to the PostgreSQL store"):
            submit_wait(s, [push(2)])
        assert s.free_space() == 0
        deadline = time.monotonic() + 20
        while True:  # the writer reconnects with back-off; submits in between fail
            done: list[BaseException | None] = []
            s.submit([push(3)], done.append)
            s.flush()
            if done == [None]:
                break
            assert time.monotonic() < deadline, done
        assert s.free_space() and s.free_space() > 10**12
        assert ids(s.load_messages("/", "q")) == [1, 3]
        s.save_vhost("after")  # definitions work again, and the one-node lock was taken again
        with pytest.raises(StoreError, match="in use by another Leveret node"):
            PostgresStore(pg_url, lock_wait=0.2).open()


def test_postgres_migrations_run_in_order_once(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written by this version is migrated by a later one (a migration appended to MIGRATIONS) and keeps
    its data; the version is recorded, and a store at the current version is not migrated again."""
    from leveret.store import postgres_schema

    with PostgresStore(pg_url) as s:
        fill(s)
        before = snapshot(s)
    later = [*postgres_schema.MIGRATIONS, ("CREATE TABLE later (x INT)", "INSERT INTO later VALUES (42)")]
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", later)
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", len(later))
    for _ in range(2):
        with PostgresStore(pg_url) as s:
            assert snapshot(s) == before
    schema = pg_url.rpartition("schema=")[2]
    with _pg(pg_url) as conn:
        version = conn.execute(f"SELECT value FROM {schema}.meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == str(len(later))
        assert conn.execute(f"SELECT x FROM {schema}.later").fetchall() == [(42,)]


def test_postgres_a_refused_definition_fails_alone(pg_url: str) -> None:
    """PostgreSQL text cannot hold NUL: a durable queue so named is refused (StoreError for that call), while the
    message writes of the same group commit go through."""
    schema = pg_url.rpartition("schema=")[2]
    with PostgresStore(pg_url) as s:
        before = s.commits
        # keep the writer busy, so that the push and the refused definition share the next transaction
        blocker = threading.Thread(target=s._execute, args=("sleep", [("SELECT pg_sleep(0.5)", ())]))
        blocker.start()
        with _pg(pg_url) as conn:
            deadline = time.monotonic() + 10
            while not conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query LIKE"
                                   " '%%pg_sleep%%' AND state = 'active'", (f"leveret writer {schema}",)).fetchall():
                assert time.monotonic() < deadline
        done: list[BaseException | None] = []
        s.submit([push(1)], done.append)
        with pytest.raises(StoreError, match="writing to the PostgreSQL store"):
            s.save_queue(QueueDef("/", "bad\x00name"))
        blocker.join()
        assert s.commits - before == 1  # one transaction: the sleep, the push and the refused definition
        s.submit([push(2)], done.append)
        s.flush()
        assert done == [None, None]
        assert ids(s.load_messages("/", "q")) == [1, 2]
        assert s.load_definitions().queues == []


def test_postgres_a_refused_status_record_does_not_fail_the_messages(pg_url: str) -> None:
    """Status records are advisory: one the server refuses (a task id too long for the index) is logged and
    dropped; the messages of the same transaction are written."""
    with PostgresStore(pg_url) as s:
        done: list[BaseException | None] = []
        long_id = random.Random(5).randbytes(6000).hex()
        s.submit([push(1), StatusPut("/", _status(long_id, "queued", 0, 1.0)),
                  StatusPut("/", _status("ok", "queued", 0, 1.0)), push(2)], done.append)
        s.flush()
        assert done == [None]
        assert ids(s.load_messages("/", "q")) == [1, 2]


# --- deduplication windows (core/dedup.py: DedupPut, load_dedup) ---------------------------------------------


def test_dedup_windows_are_trimmed_read_back_and_go_with_their_owner(store: Store, tmp_path: Path) -> None:
    def put(name: str, seq: int, kind: str = "queue", vhost: str = "/", keep: int = 3) -> DedupPut:
        return DedupPut(vhost, kind, name, seq, f"s{name}{seq}", 1000.0 * seq, keep)

    submit_wait(store, [put("q", seq) for seq in range(1, 5)] + [put("q", 1, "exchange"), put("q", 1, vhost="v")])
    submit_wait(store, [put("q", 5), push(1)])  # with a message, in one commit
    windows = store.load_dedup()
    # at least the newest `keep` (a backend may keep a few older ones: the window keeps the newest)
    assert windows[("/", "queue", "q")][-3:] == [(3, "sq3", 3000.0), (4, "sq4", 4000.0), (5, "sq5", 5000.0)]
    submit_wait(store, [put("q", seq) for seq in range(6, 12)])
    assert [row[0] for row in store.load_dedup()[("/", "queue", "q")]][-3:] == [9, 10, 11]
    assert len(store.load_dedup()[("/", "queue", "q")]) <= 3 + 6  # what fell out of the window went
    assert windows[("/", "exchange", "q")] == [(1, "sq1", 1000.0)]
    assert set(windows) == {("/", "queue", "q"), ("/", "exchange", "q"), ("v", "queue", "q")}
    store.delete_queue("/", "q")
    assert set(store.load_dedup()) == {("/", "exchange", "q"), ("v", "queue", "q")}
    store.delete_exchange("/", "q")
    store.delete_vhost("v")
    assert store.load_dedup() == {}
    if isinstance(store, SqliteStore | PostgresStore):  # durable: reopened, the rows are still there
        submit_wait(store, [put("r", 7, keep=10)])
        store.close()
        store.open()
        assert store.load_dedup() == {("/", "queue", "r"): [(7, "sr7", 7000.0)]}
