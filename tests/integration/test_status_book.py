"""The status book (core/status.py, docs/extensions.md): task status records fed by ``leveret.events`` and by
``x-leveret-status`` queues, read with ``amq.leveret.status`` queries and ``GET /api/task-status``.

Behaviour is tested with pika against a real Leveret (SQLite store in the test's data dir); precedence, the
bounded cache, expiry sweeps and the read/write race are tested on the core with a manual clock.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from leveret.config import Config
from leveret.core.broker import Broker, VHost
from leveret.core.message import Message, build_address, build_header
from leveret.core.status import EVENTS_EXCHANGE, QUERY_EXCHANGE, StatusBook
from leveret.core.status_record import StatusRecord
from leveret.core.storage import Store
from leveret.core.timers import ManualTimers
from leveret.node import ThreadedServer
from leveret.store import open_store
from leveret.store.memory import MemoryStore

import waiting
from amqphelp import connect
from httphelp import Client

DEADLINE = 10.0


def event(task_id: str, state: str, attempt: int = 0, ts: float | None = None, ttl: float = 3600.0,
          **more: Any) -> dict[str, Any]:
    return {"id": task_id, "task": "app.add", "queue": "work", "state": state, "attempt": attempt,
            "ts": time.time() if ts is None else ts, "ttl": ttl, **more}


def new_id() -> str:
    return uuid.uuid4().hex


# --- pika helpers --------------------------------------------------------------------------------------------


def events_channel(conn: BlockingConnection) -> BlockingChannel:
    ch = conn.channel()
    ch.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True)
    return ch


def publish_events(ch: BlockingChannel, *events: dict[str, Any] | bytes) -> None:
    for ev in events:
        body = ev if isinstance(ev, bytes) else json.dumps(ev).encode()
        key = "x.y" if isinstance(ev, bytes) else f"{ev['task']}.{ev['state']}"
        ch.basic_publish(EVENTS_EXCHANGE, key, body,
                         pika.BasicProperties(content_type="application/json", delivery_mode=1))


def query(conn: BlockingConnection, body: bytes | dict[str, Any], correlation_id: str = "c-1") -> tuple[Any, Any]:
    """Publish a query with direct reply-to and wait for the answer: (decoded body, properties)."""
    ch = conn.channel()
    got: list[tuple[Any, Any]] = []
    ch.basic_consume("amq.rabbitmq.reply-to", lambda _c, _m, props, b: got.append((json.loads(b), props)),
                     auto_ack=True)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ch.basic_publish(QUERY_EXCHANGE, "", raw,
                     pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=correlation_id))
    deadline = time.monotonic() + DEADLINE
    while not got and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.close()
    assert got, "no reply to the status query"
    return got[0]


def records(conn: BlockingConnection, *ids: str) -> dict[str, Any]:
    answer, props = query(conn, {"ids": list(ids)})
    assert props.content_type == "application/json" and props.correlation_id == "c-1", props
    return answer["records"]  # type: ignore[no-any-return]


def wait_for(check: Callable[[], Any], what: str) -> Any:
    return waiting.wait_for(check, DEADLINE, f"timed out waiting for {what}", interval=0.02)


def state_of(conn: BlockingConnection, task_id: str) -> str | None:
    record = records(conn, task_id)[task_id]
    return None if record is None else record["state"]  # type: ignore[no-any-return]


# --- with a real broker ----------------------------------------------------------------------------------------


def test_events_make_a_record_with_precedence(leveret: ThreadedServer) -> None:
    conn = connect(leveret.port)
    ch = events_channel(conn)
    ch.queue_declare("audit", exclusive=True)
    ch.queue_bind("audit", EVENTS_EXCHANGE, "#")
    a, b, unknown = new_id(), new_id(), new_id()
    t = time.time()
    # out of order: the final event first, then what came before it; a retry (attempt 1) beats attempt 0
    publish_events(ch, event(a, "succeeded", 1, t + 3, result={"sum": 3}, worker="h:1"),
                   event(a, "started", 0, t + 1), event(a, "retrying", 0, t + 2, next_attempt_at=t + 2.5,
                                                        error={"type": "ValueError", "message": "no"}),
                   event(a, "queued", 1, t + 2.5), event(a, "queued", 0, t), event(b, "started", 0, t + 1))
    got = wait_for(lambda: (r := records(conn, a, b, unknown))[a] and r[b] and r, "both records")
    rec = got[a]
    assert rec["state"] == "succeeded" and rec["attempt"] == 1 and rec["result"] == {"sum": 3}
    assert rec["created"] == t and rec["updated"] == t + 3 and rec["finished"] == t + 3
    assert rec["started"] == t + 1 and rec["error"] is None and rec["worker"] == "h:1"
    assert rec["task"] == "app.add" and rec["queue"] == "work" and rec["expires"] == t + 3 + 3600
    assert got[b]["state"] == "started" and got[b]["finished"] is None and got[b]["started"] == t + 1
    assert got[unknown] is None
    # an earlier attempt's late event does not win over the later attempt; a tie on (attempt, rank) goes to the
    # later ts
    publish_events(ch, event(b, "retrying", 0, t + 5, error={"type": "E", "message": "m", "traceback": "tb"}),
                   event(b, "started", 1, t + 6), event(b, "failed", 0, t + 7))
    rec = wait_for(lambda: (r := records(conn, b)[b])["attempt"] == 1 and r, "attempt 1")
    assert rec["state"] == "started" and rec["started"] == t + 6 and rec["updated"] == t + 7
    # the events were routed to the bound queue as well
    assert ch.queue_declare("audit", passive=True).method.message_count == 9
    conn.close()


def test_queued_is_recorded_for_status_queues_only(leveret: ThreadedServer) -> None:
    conn = connect(leveret.port)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("work", durable=True, arguments={"x-leveret-status": True})
    ch.queue_declare("plain", durable=True)
    tracked, untracked, retried, anonymous = new_id(), new_id(), new_id(), new_id()
    ch.basic_publish("", "work", b"{}", pika.BasicProperties(message_id=tracked, type="app.add", delivery_mode=2))
    ch.basic_publish("", "plain", b"{}", pika.BasicProperties(message_id=untracked, type="app.add"))
    ch.basic_publish("", "work", b"{}", pika.BasicProperties(message_id=retried, type="app.mul",
                                                             headers={"x-retry-count": 2}))
    ch.basic_publish("", "work", b"{}", pika.BasicProperties(type="app.none"))  # no message_id: nothing
    got = records(conn, tracked, untracked, retried, anonymous)
    assert got[tracked] is not None and got[tracked]["state"] == "queued"
    assert got[tracked]["task"] == "app.add" and got[tracked]["queue"] == "work" and got[tracked]["attempt"] == 0
    assert got[retried]["attempt"] == 2 and got[retried]["task"] == "app.mul"
    assert got[untracked] is None and got[anonymous] is None
    assert leveret.call(lambda: leveret.broker.status.enqueued) == 2
    conn.close()


def test_redeclare_with_the_argument_switches_it_on(leveret: ThreadedServer) -> None:
    conn = connect(leveret.port)
    ch = conn.channel()
    ch.queue_declare("old", durable=True)
    ch.queue_declare("old", durable=True, arguments={"x-leveret-status": True})  # an upgrade: no 406
    ch.queue_declare("old", durable=True)  # an older client without it: no 406 either, and it stays on
    task = new_id()
    ch.basic_publish("", "old", b"", pika.BasicProperties(message_id=task, type="t"))
    assert records(conn, task)[task]["state"] == "queued"
    queue = leveret.call(lambda: leveret.broker.vhosts["/"].queues["old"])
    assert queue.arguments["x-leveret-status"] is True  # type: ignore[attr-defined]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        conn.channel().queue_declare("bad", arguments={"x-leveret-status": "yes"})
    assert refused.value.reply_code == 406 and "x-leveret-status" in refused.value.reply_text
    conn.close()


def test_malformed_events_are_ignored_and_the_publisher_is_unharmed(leveret: ThreadedServer) -> None:
    conn = connect(leveret.port)
    ch = events_channel(conn)
    ch.confirm_delivery()
    ch.queue_declare("audit", exclusive=True)
    ch.queue_bind("audit", EVENTS_EXCHANGE, "#")
    good = new_id()
    bad = [b"not json", b"[1, 2]", json.dumps({"id": good, "state": "exploded"}).encode(),
           json.dumps(event(good, "started", attempt=-1)).encode(), json.dumps(event("", "started")).encode(),
           json.dumps(event(good, "started", ttl="long")).encode(), b"\xff\xfe"]
    publish_events(ch, *bad)
    publish_events(ch, event(good, "started"))  # the same channel still works, with confirms
    assert state_of(conn, good) == "started"
    book: StatusBook = leveret.broker.status
    assert leveret.call(lambda: (book.events_ignored, book.events)) == (len(bad), 1)
    assert ch.queue_declare("audit", passive=True).method.message_count == len(bad) + 1  # all routed
    conn.close()


def test_queries(leveret: ThreadedServer) -> None:
    conn = connect(leveret.port)
    assert query(conn, b"{oops")[0] == {"error": "the query is not JSON"}
    for body in ({"id": "x"}, {"ids": "x"}, {"ids": [1]}, {"ids": [""]}, [1]):
        answer, props = query(conn, json.dumps(body).encode(), correlation_id="c-bad")
        assert "error" in answer and props.correlation_id == "c-bad", (body, answer)
    assert query(conn, {"ids": []})[0] == {"records": {}}
    # a reply to a named queue; a query without reply_to is dropped (returned when mandatory)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("answers", exclusive=True)
    ch.basic_publish(QUERY_EXCHANGE, "", b'{"ids": ["nope"]}',
                     pika.BasicProperties(reply_to="answers", correlation_id="c-2"))
    _method, props, body = wait_for(lambda: (got := ch.basic_get("answers", auto_ack=True))[0] and got, "a reply")
    assert props.correlation_id == "c-2" and json.loads(body) == {"records": {"nope": None}}
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(QUERY_EXCHANGE, "", b'{"ids": ["nope"]}', mandatory=True)
    # clients may not declare or delete amq.* names; a passive declare tells them the book is there
    ch.exchange_declare(QUERY_EXCHANGE, passive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.exchange_delete(QUERY_EXCHANGE)
    assert refused.value.reply_code == 403
    conn.close()


def test_http_task_status(http_server: ThreadedServer) -> None:
    api = Client(http_server.http_port)
    conn = connect(http_server.port)
    task = new_id()
    publish_events(events_channel(conn), event(task, "started", worker="w:1"))
    record = wait_for(lambda: (r := api.request("GET", f"/api/task-status/%2F/{task}"))[0] == 200 and r[1],
                      "the record over HTTP")
    assert record["id"] == task and record["state"] == "started" and record["worker"] == "w:1"
    status, body, _ = api.request("GET", f"/api/task-status/%2F/{new_id()}")
    assert status == 404 and body["error"] == "not_found"
    assert api.request("GET", "/api/task-status/nope/x")[0] == 404
    assert api.request("GET", f"/api/task-status/%2F/{task}", auth=False)[0] == 401
    api.ok("PUT", "/api/users/watcher", {"password": "pw", "tags": "management"})  # no permission in "/"
    assert Client(http_server.http_port, "watcher", "pw").request("GET", f"/api/task-status/%2F/{task}")[0] == 401
    api.ok("PUT", "/api/permissions/%2F/watcher", {})
    assert Client(http_server.http_port, "watcher", "pw").get(f"/api/task-status/%2F/{task}")["state"] == "started"
    metrics = api.request("GET", "/metrics")[1].decode()
    assert "leveret_task_status_events_total 1.0" in metrics
    conn.close()


def test_expired_records_read_as_null(leveret: ThreadedServer) -> None:
    conn = connect(leveret.port)
    task = new_id()
    publish_events(events_channel(conn), event(task, "started", ttl=0.3))
    wait_for(lambda: state_of(conn, task) is None, "the record to expire")
    conn.close()


def test_records_survive_a_restart(make_config: Callable[..., Config]) -> None:
    config = make_config(http_port=0)
    server = ThreadedServer(config).start()
    conn = connect(server.port)
    ch = conn.channel()
    ch.queue_declare("old", durable=True)
    ch.queue_declare("old", durable=True, arguments={"x-leveret-status": True})
    tasks = [new_id() for _ in range(50)]
    publish_events(events_channel(conn), *(event(t, "succeeded", result=i) for i, t in enumerate(tasks)))
    assert all(records(conn, *tasks).values())
    conn.close()
    server.stop()
    server = ThreadedServer(config).start()
    try:
        conn = connect(server.port)
        got = records(conn, *tasks)
        assert [got[t]["result"] for t in tasks] == list(range(50))
        later = new_id()  # the upgraded queue keeps x-leveret-status after the restart
        conn.channel().basic_publish("", "old", b"", pika.BasicProperties(message_id=later))
        assert state_of(conn, later) == "queued"
        assert Client(server.http_port).get(f"/api/task-status/%2F/{tasks[7]}")["result"] == 7
        conn.close()
    finally:
        server.stop()


def test_queued_records_of_stored_messages_survive_a_restart(make_config: Callable[..., Config]) -> None:
    """A task waiting in a status queue is readable as queued before and after a restart (its record was written
    at shutdown, or is made again by recovery), and its record takes the next events."""
    config = make_config(http_port=0)
    server = ThreadedServer(config).start()
    conn = connect(server.port)
    ch = conn.channel()
    ch.queue_declare("jobs", durable=True, arguments={"x-leveret-status": True})
    waiting_ids = [new_id() for _ in range(3)]
    for task_id in waiting_ids:
        ch.basic_publish("", "jobs", b"{}", pika.BasicProperties(message_id=task_id, type="app.job", delivery_mode=2))
    assert {state_of(conn, t) for t in waiting_ids} == {"queued"}
    conn.close()
    server.stop()
    server = ThreadedServer(config).start()
    try:
        conn = connect(server.port)
        got = records(conn, *waiting_ids)
        assert all(got[t] is not None and got[t]["state"] == "queued" and got[t]["task"] == "app.job"
                   for t in waiting_ids), got
        publish_events(events_channel(conn), event(waiting_ids[0], "succeeded", result=1))
        wait_for(lambda: state_of(conn, waiting_ids[0]) == "succeeded", "the event to be recorded")
        assert Client(server.http_port).get(f"/api/task-status/%2F/{waiting_ids[1]}")["state"] == "queued"
        conn.close()
    finally:
        server.stop()


# --- the core, with a manual clock ----------------------------------------------------------------------------


class Rig:
    """A broker on ``store`` with a manual clock; store callbacks are queued as the event loop would and run by
    :meth:`run`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = SimpleQueue()
        self.timers = ManualTimers()
        self.broker = Broker(store=store, dispatch=lambda fn, *args: self.calls.put((fn, args)), timers=self.timers)
        self.book = self.broker.status
        self.vhost: VHost = self.broker.vhosts["/"]
        self.events = self.vhost.declare_exchange(EVENTS_EXCHANGE, "topic", durable=True)

    def publish(self, *events: dict[str, Any]) -> None:
        for ev in events:
            body = json.dumps(ev).encode()
            msg = Message(EVENTS_EXCHANGE, "k", build_address(EVENTS_EXCHANGE, "k"), build_header({}, len(body)), body)
            self.vhost.publish(self.events, msg)

    def run(self) -> None:
        durability = self.broker.durability
        assert durability is not None
        self.timers.advance(0)  # the book submits its writes on the next loop turn
        if durability.ops:
            durability.commit([])
        self.store.flush()
        while not self.calls.empty():
            fn, args = self.calls.get()
            fn(*args)

    def lookup(self, *ids: str) -> dict[str, StatusRecord | None]:
        found: list[dict[str, StatusRecord | None]] = []
        self.book.lookup("/", list(ids), lambda records, exc: found.append(records))
        self.run()
        assert found
        return found[0]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store = open_store("sqlite", path=tmp_path / "leveret.db")
    try:
        yield Rig(store)
    finally:
        store.close()


def test_core_cache_is_bounded_and_misses_read_the_store(rig: Rig) -> None:
    rig.book.cache_size = 10
    now = rig.timers.now()
    ids = [f"t{i}" for i in range(100)]
    rig.publish(*(event(i, "queued", ts=now) for i in ids))
    rig.run()
    assert rig.book.cached == 0  # events of ids that are not cached are written, not kept
    found = rig.lookup(*ids)
    assert all(found[i] is not None and found[i].state == "queued" for i in ids)  # type: ignore[union-attr]
    assert rig.book.cached == 10
    rig.publish(*(event(i, "started", ts=now + 1) for i in ids))  # cached or not: merged the same
    rig.run()
    assert {r.state for r in rig.lookup(*ids).values() if r is not None} == {"started"}


def test_core_events_during_a_store_read_are_not_lost(rig: Rig) -> None:
    now = rig.timers.now()
    rig.publish(event("a", "queued", ts=now))
    rig.run()
    found: list[dict[str, StatusRecord | None]] = []
    rig.book.lookup("/", ["a"], lambda records, exc: found.append(records))
    rig.store.flush()  # the read is done by the store; its callback has not run yet
    rig.publish(event("a", "started", ts=now + 1))  # arrives before the read's answer is handled
    rig.run()
    assert found and found[0]["a"] is not None and found[0]["a"].state == "started"
    assert rig.lookup("a")["a"].state == "started"  # type: ignore[union-attr]  # the cached record has it too


def test_core_expiry_sweeps_in_bounded_batches() -> None:
    store = MemoryStore()
    store.open()
    rig = Rig(store)
    rig.book.sweep_batch = 7
    now = rig.timers.now()
    rig.publish(*(event(f"s{i}", "queued", ts=now, ttl=10) for i in range(20)))
    rig.publish(event("long", "queued", ts=now, ttl=10_000))
    rig.run()
    assert rig.lookup("s3")["s3"] is not None
    rig.timers.advance(11)
    assert rig.lookup("s3", "long") == {"s3": None, "long": rig.lookup("long")["long"]}  # expired: null
    assert len(store._status) == 21  # not deleted yet: the sweep runs every sweep_interval
    rig.timers.advance(rig.book.sweep_interval)
    rig.run()
    assert len(store._status) == 21 - 7  # one bounded batch; a full batch schedules the next one soon
    for _ in range(5):
        rig.timers.advance(1)
        rig.run()
    assert list(store._status) == [("/", "long")] and rig.book.expired == 20


def _enqueue(rig: Rig, queue: str, *ids: str) -> None:
    for task_id in ids:
        props = {"message_id": task_id, "type": "app.add", "delivery_mode": 2}
        msg = Message("", queue, build_address("", queue), build_header(props, 2), b"{}")
        rig.vhost.publish(rig.vhost.exchanges[""], msg)


def _stored(store: MemoryStore, task_id: str) -> StatusRecord | None:
    return store._status.get(("/", task_id))


def test_core_queued_records_wait_for_the_next_event_and_are_written_once() -> None:
    """A "queued" record the book makes itself is written merged with the task's next event (one write),
    alone once queued_delay passes, and every read sees it before it is written."""
    store = MemoryStore()
    store.open()
    rig = Rig(store)
    rig.vhost.declare_queue(None, "work", durable=True, arguments={"x-leveret-status": True})
    puts: list[str] = []
    submit = store.submit
    store.submit = lambda ops, done: (puts.extend(op.record.state for op in ops  # type: ignore[method-assign]
                                                  if type(op).__name__ == "StatusPut"), submit(ops, done))[1]
    now = rig.timers.now()
    _enqueue(rig, "work", "a", "b")
    rig.run()
    assert puts == [] and _stored(store, "a") is None  # not written yet: the stored message implies it
    found = rig.lookup("a", "b")  # a read merges the pending record with what the store has
    assert found["a"] is not None and found["a"].state == "queued" and found["a"].task == "app.add"
    rig.publish(event("a", "started", ts=now + 0.01), event("a", "succeeded", ts=now + 0.02, result=5))
    rig.run()
    record = _stored(store, "a")
    assert record is not None and record.state == "succeeded" and record.created == now
    assert record.extra["result"] == 5 and record.queue == "work"
    assert puts.count("queued") == 0  # the queued record went merged into the started event's write
    assert _stored(store, "b") is None
    rig.timers.advance(rig.book.queued_delay + 0.01)  # b's delay passed: written alone
    rig.run()
    stored_b = _stored(store, "b")
    assert stored_b is not None and stored_b.state == "queued" and stored_b.created == now
    assert not rig.book._pending


def test_core_pending_queued_records_are_bounded_and_flushed() -> None:
    store = MemoryStore()
    store.open()
    rig = Rig(store)
    rig.book.pending_size = 3
    rig.vhost.declare_queue(None, "work", durable=True, arguments={"x-leveret-status": True})
    _enqueue(rig, "work", *(f"t{i}" for i in range(5)))
    rig.run()
    assert len(rig.book._pending) == 3  # full: the oldest were written at once
    assert [i for i in range(5) if _stored(store, f"t{i}") is not None] == [0, 1]
    durability = rig.broker.durability
    assert durability is not None
    durability.flush()  # shutdown and definition changes write the rest
    rig.run()
    assert all(_stored(store, f"t{i}") is not None for i in range(5)) and not rig.book._pending


def test_core_recovery_remakes_queued_records_that_were_not_written(tmp_path: Path) -> None:
    """A crash before a "queued" record was written loses nothing: recovery makes it again from the stored
    message."""
    store = open_store("sqlite", path=tmp_path / "leveret.db")
    try:
        rig = Rig(store)
        rig.vhost.declare_queue(None, "work", durable=True, arguments={"x-leveret-status": True})
        _enqueue(rig, "work", "lost")
        durability = rig.broker.durability
        assert durability is not None
        durability.commit([])  # the message is stored; its pending record is not (no flush: a crash)
        store.flush()
        assert rig.book._pending
    finally:
        store.close()
    store = open_store("sqlite", path=tmp_path / "leveret.db")
    try:
        rig = Rig(store)
        found = rig.lookup("lost")["lost"]
        assert found is not None and found.state == "queued" and found.queue == "work"
        assert found.task == "app.add"
    finally:
        store.close()


def test_core_event_bodies_decode_as_json_loads_would() -> None:
    from leveret.core.status import decode_event, record_from_event
    bodies = [b'{"id":"a","state":"queued"}', b' {"id":"a"} ', b'\xef\xbb\xbf{"id":"x"}',
              '{"id":"\u00e9"}'.encode("utf-16"), b'[1]', b'{"id":"\\ud800"}']
    for body in bodies:
        assert decode_event(body) == json.loads(body)
    for bad in (b'{"a":1}x', b'{"a":', b"\xff{", b""):
        with pytest.raises(ValueError):
            decode_event(bad)
    # times must be finite numbers of a sane size (a huge integer used to overflow math.isfinite)
    for ts in (10**400, True, float("nan"), "1"):
        assert record_from_event({"id": "a", "state": "queued", "ts": ts}, 1.0, 5.0) is None
    assert record_from_event({"id": "a", "state": "queued", "attempt": True}, 1.0, 5.0) is None
    record = record_from_event({"id": "a", "state": "started", "ts": 7, "ttl": 3}, 1.0, 5.0)
    assert record is not None and (record.at, record.expires, record.started) == (7, 10, 7)


def test_retries_and_dead_letters_are_recorded_as_queued(http_server: ThreadedServer) -> None:
    """A rejected message that x-retry-intervals brings back is queued again with the next attempt; a dead
    letter entering a status queue is queued there; an event published through the HTTP API counts too."""
    conn = connect(http_server.port)
    ch = conn.channel()
    ch.queue_declare("failed", arguments={"x-leveret-status": True})
    ch.queue_declare("work", arguments={"x-leveret-status": True, "x-retry-intervals": [10],
                                        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "failed"})
    task = new_id()
    ch.basic_publish("", "work", b"", pika.BasicProperties(message_id=task, type="app.flaky"))
    for attempt in (0, 1):
        method = wait_for(lambda: ch.basic_get("work")[0], f"attempt {attempt}")
        assert records(conn, task)[task]["attempt"] == attempt
        ch.basic_reject(method.delivery_tag, requeue=False)
    rec = wait_for(lambda: (r := records(conn, task)[task])["queue"] == "failed" and r, "the dead letter")
    assert rec["state"] == "queued" and rec["attempt"] == 1 and rec["task"] == "app.flaky"
    api = Client(http_server.http_port)
    api.ok("PUT", f"/api/exchanges/%2F/{EVENTS_EXCHANGE}", {"type": "topic"})
    api.ok("POST", f"/api/exchanges/%2F/{EVENTS_EXCHANGE}/publish",
           {"routing_key": "app.flaky.gave_up", "payload": json.dumps(event(task, "gave_up", 1)), "properties": {}})
    assert wait_for(lambda: state_of(conn, task) == "gave_up", "the event published over HTTP")
    conn.close()


def test_a_final_event_carrying_its_start_folds_as_started_then_final() -> None:
    """The worker sends one event for a task that ends before its "started" is due (docs/tasks.md, "Events"): the
    final event's ``started`` field. The broker's fold and the RabbitMQ fallback's (leveret.tasks.status.merge)
    make the same record of it as of a separate "started" event followed by the final one, in any order."""
    import itertools

    from leveret.core.status import record_from_event
    from leveret.core.status_record import merge
    from leveret.tasks import status as fallback

    t = time.time()
    queued = event("a", "queued", 0, t)
    started = event("a", "started", 0, t + 1, worker="w:1")
    final = event("a", "succeeded", 0, t + 1.05, result=3, worker="w:1")
    alone = {**final, "started": t + 1}
    retrying = event("a", "retrying", 0, t + 2, next_attempt_at=t + 3, error={"type": "KeyError", "message": "k"})
    retried = event("a", "gave_up", 1, t + 3.5, error={"type": "KeyError", "message": "k"})

    def broker_fold(*events: dict[str, Any]) -> dict[str, Any]:
        record: StatusRecord | None = None
        for body in events:
            new = record_from_event(body, t, 60.0)
            assert new is not None
            record = merge(record, new)
        assert record is not None
        return record.public()

    def fallback_fold(*events: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] | None = None
        for body in events:
            record = fallback.merge(record, dict(body))
        out = fallback.public(record)
        assert out is not None
        return out

    for fold in (broker_fold, fallback_fold):
        for before, now in (((queued, started, final), (queued, alone)), ((started, final), (alone,)),
                            ((queued, started, retrying, {**started, "attempt": 1, "ts": t + 3.4}, retried),
                             (queued, {**retrying, "started": t + 1}, {**retried, "started": t + 3.4}))):
            expected = fold(*before)
            assert expected["started"] is not None
            for order in itertools.permutations(now):
                assert fold(*order) == expected, (fold.__name__, order)
    # Without a prior event the record starts at the start: created is the start, updated the final event's ts.
    rec = broker_fold(alone)
    assert (rec["state"], rec["created"], rec["started"], rec["updated"], rec["finished"]) == \
        ("succeeded", t + 1, t + 1, t + 1.05, t + 1.05)
    # A "started" field that is not a number is ignored, the event still counts.
    odd = record_from_event({**final, "started": "soon"}, t, 60.0)
    assert odd is not None and odd.state == "succeeded" and odd.started is None and odd.created == t + 1.05
    assert fallback_fold({**final, "started": "soon"})["started"] is None
