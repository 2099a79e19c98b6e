"""The task worker (leveret/tasks/worker.py) against Leveret and, when it runs, RabbitMQ (``broker_port``): the
events it publishes, dead letters for unknown tasks and unreadable messages, logging, back-off retries,
middleware, time limits, rate limits, revoke, links, and reconnection after a broker restart (a Leveret child
process stopped with SIGTERM and killed with SIGKILL under a running worker).

Task messages are written with pika in the wire format of docs/tasks.md, so these tests do not depend on the
producer side; what the worker did is read from the events exchange and the queues."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.tasks import App, Retry, TaskContext, Worker, worker_out
from leveret.tasks.app import CONTROL_EXCHANGE, EVENTS_EXCHANGE
from leveret.tasks.limits import EXIT_HARD_TIME_LIMIT, SoftTimeLimitExceeded, TokenBucket
from leveret.tasks.task import parse_rate_limit
from leveret.tasks.threads import Slots

from serverproc import LeveretProcess


def url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Broker:
    """A pika connection to the broker under test: publish task messages, read queues and events."""

    def __init__(self, port: int, tag: str) -> None:
        self.port = port
        self.tag = tag
        self.conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.ch.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True)
        self.events_queue = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(self.events_queue, EVENTS_EXCHANGE, "#")
        self.events: list[dict[str, Any]] = []
        self.queues: list[str] = []

    def queue(self, name: str) -> str:
        full = f"tw-{self.tag}-{name}"
        self.queues.append(full)
        return full

    def name(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def publish(self, queue: str, task: str, payload: Any = None, *, body: bytes | None = None,
                metadata: dict[str, Any] | None = None, task_id: str | None = None) -> str:
        task_id = task_id or uuid.uuid4().hex
        if body is None:
            meta = {"task": task, "id": task_id, "attempt": 0, **(metadata or {})}
            body = json.dumps({"payload": payload or {}, "metadata": meta}).encode()
        self.ch.basic_publish("", queue, body, pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=task_id, type=task))
        return task_id

    def poll_events(self) -> list[dict[str, Any]]:
        while True:
            method, _props, body = self.ch.basic_get(self.events_queue, auto_ack=True)
            if method is None:
                return self.events
            event = json.loads(body)
            event["_key"] = method.routing_key
            if self.tag in str(event.get("task")) or self.tag in str(event.get("queue")):
                self.events.append(event)

    def states(self, task_id: str) -> list[str]:
        return [e["state"] for e in self.poll_events() if e["id"] == task_id]

    def wait_state(self, task_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.poll_events() if e["id"] == task_id and e["state"] == state), None)

        return wait_until(find, timeout, f"event {state} of {task_id} (got {self.states(task_id)})")

    def get(self, queue: str, timeout: float = 5.0) -> tuple[Any, bytes]:
        def one() -> Any:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            return (props, body) if method is not None else None

        return wait_until(one, timeout, f"a message in {queue}")

    def count(self, queue: str) -> int:
        return int(self.ch.queue_declare(queue, passive=True).method.message_count)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            for q in self.queues:
                for name in (q, f"{q}.dead"):
                    self.ch.queue_delete(name)
            self.conn.close()


@pytest.fixture
def broker(broker_port: int) -> Iterator[Broker]:
    b = Broker(broker_port, uuid.uuid4().hex[:8])
    yield b
    b.close()


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []
    apps: list[App] = []

    def start(app: App, **kwargs: Any) -> Worker:
        if app not in apps:
            apps.append(app)
        worker = Worker(app, **kwargs).start()
        started.append(worker)
        return worker

    yield start
    for w in started:
        w.stop()
    for app in apps:
        app.close()


@pytest.fixture
def late_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """A "started" event goes by itself only for an attempt still running after STARTED_DELAY: far off here, so
    that a slow machine cannot make a short attempt send it."""
    monkeypatch.setattr(worker_out, "STARTED_DELAY", 60.0)


def test_events_result_and_ack(broker: Broker, workers: Callable[..., Worker], broker_port: int,
                               late_started: None) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("ok")

    @app.task(name=broker.name("add"), queue=q)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name=broker.name("quiet"), queue=q, status=False)
    def quiet() -> None:
        return None

    @app.task(name=broker.name("nokeep"), queue=q, keep_result=False)
    async def nokeep() -> int:
        return 7

    workers(app)
    task_id = broker.publish(q, add.name, {"x": 2, "y": 3})
    done = broker.wait_state(task_id, "succeeded")
    assert done["result"] == 5 and done["attempt"] == 0 and done["queue"] == q and done["task"] == add.name
    assert done["_key"] == f"{add.name}.succeeded" and done["ttl"] == 60 and ":" in done["worker"]
    assert broker.states(task_id) == ["succeeded"]  # one event, with the attempt's start
    assert done["started"] <= done["ts"]
    quiet_id = broker.publish(q, quiet.name)
    nokeep_id = broker.publish(q, nokeep.name)
    assert "result" not in broker.wait_state(nokeep_id, "succeeded")
    wait_until(lambda: broker.count(q) == 0, what="the queue drained (acked)")
    assert broker.states(quiet_id) == []  # status=False: no events at all


@pytest.mark.parametrize("kind", ["unknown", "not-json", "json-list", "payload-list"])
def test_bad_input_is_dead_lettered_with_its_reason(kind: str, broker: Broker, workers: Callable[..., Worker],
                                                    broker_port: int, caplog: pytest.LogCaptureFixture) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("bad")
    ran: list[int] = []

    @app.task(name=broker.name("known"), queue=q)
    def known() -> None:
        ran.append(1)

    workers(app)
    bodies = {"not-json": b"\x00not json", "json-list": b"[1, 2]",
              "payload-list": json.dumps({"payload": [1], "metadata": {"task": known.name}}).encode()}
    with caplog.at_level(logging.ERROR, logger="leveret.tasks.worker"):
        task_id = broker.publish(q, broker.name("nobody") if kind == "unknown" else known.name,
                                 body=bodies.get(kind))
        props, body = broker.get(f"{q}.dead")
    reason = "unknown_task" if kind == "unknown" else "undecodable"
    assert props.headers["x-leveret-reason"] == reason
    assert props.message_id == task_id and json.loads(props.headers["x-leveret-error"])["message"]
    if kind != "unknown":
        assert body == bodies[kind]
    event = broker.wait_state(task_id, "gave_up")
    assert event["error"]["type"] in ("LookupError", "BadMessage")
    wait_until(lambda: broker.count(q) == 0, what="not requeued")
    assert ran == []
    assert any(reason in r.getMessage() for r in caplog.records)
    # The worker goes on with good messages.
    good = broker.publish(q, known.name)
    broker.wait_state(good, "succeeded")


def test_track_started_per_app_and_per_task(broker: Broker, workers: Callable[..., Worker], broker_port: int,
                                            late_started: None) -> None:
    """``App(track_started=True)``: "started" then the outcome, per attempt, however short (as before); a task's
    own ``track_started`` overrides the App's, either way."""
    tracking = App(url(broker_port), name="tw", status_ttl=60, track_started=True)
    q = broker.queue("track")

    @tracking.task(name=broker.name("tracked"), queue=q, retry=Retry.intervals([0.05]))
    def tracked(fail: bool = False) -> int:
        if fail:
            raise ValueError("no")
        return 1

    @tracking.task(name=broker.name("untracked"), queue=q, track_started=False)
    def untracked() -> int:
        return 2

    default = App(url(broker_port), name="tw2", status_ttl=60)
    q2 = broker.queue("track2")

    @default.task(name=broker.name("opted"), queue=q2, track_started=True)
    def opted() -> int:
        return 3

    workers(tracking)
    workers(default)
    ok = broker.publish(q, tracked.name)
    ko = broker.publish(q, tracked.name, {"fail": True}, metadata={"retry": tracked.retry.to_wire()})
    alone = broker.publish(q, untracked.name)
    opted_id = broker.publish(q2, opted.name)
    for task_id, state in ((ok, "succeeded"), (ko, "gave_up"), (alone, "succeeded"), (opted_id, "succeeded")):
        broker.wait_state(task_id, state)
    assert broker.states(ok) == ["started", "succeeded"]
    assert broker.states(ko) == ["started", "retrying", "started", "gave_up"]
    assert broker.states(opted_id) == ["started", "succeeded"]
    assert broker.states(alone) == ["succeeded"]
    mine = [e for e in broker.events if e["id"] in (ok, ko, opted_id)]
    assert all("started" not in e for e in mine)  # the start went in its own event
    starts = [e["ts"] for e in mine if e["state"] == "started"]
    finals = [e for e in mine if e["state"] != "started"]
    assert all(any(s <= e["ts"] for s in starts) for e in finals)
    assert next(e for e in broker.events if e["id"] == alone)["started"] > 0



def test_a_task_still_running_after_the_delay_sends_started_first(
        broker: Broker, workers: Callable[..., Worker], broker_port: int) -> None:
    """Default (no track_started): an attempt still running STARTED_DELAY after its start publishes "started" then;
    its final event then carries no ``started`` field."""
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("slow")
    release = threading.Event()

    @app.task(name=broker.name("slow"), queue=q)
    def slow() -> int:
        release.wait(30)
        return 1

    workers(app)
    task_id = broker.publish(q, slow.name)
    try:
        started = broker.wait_state(task_id, "started")  # while the task waits
    finally:
        release.set()
    done = broker.wait_state(task_id, "succeeded")
    assert broker.states(task_id) == ["started", "succeeded"]
    assert "started" not in done and started["ts"] < done["ts"]



def test_failures_are_logged_with_traceback_and_backoff_retries(
        broker: Broker, workers: Callable[..., Worker], broker_port: int, caplog: pytest.LogCaptureFixture,
        late_started: None) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("fail")
    attempts: list[float] = []

    @app.task(name=broker.name("flaky"), queue=q, retry=Retry.backoff(2, base=0.1, factor=2.0, jitter=False))
    def flaky() -> None:
        attempts.append(time.monotonic())
        raise ConnectionError("database down")

    workers(app)
    with caplog.at_level(logging.WARNING, logger="leveret.tasks.worker"):
        task_id = broker.publish(q, flaky.name, metadata={"retry": flaky.retry.to_wire()})
        gave_up = broker.wait_state(task_id, "gave_up")
    assert broker.states(task_id) == ["retrying", "retrying", "gave_up"]
    retrying = [e for e in broker.events if e["id"] == task_id and e["state"] == "retrying"]
    starts = [e["started"] for e in (*retrying, gave_up)]
    assert starts == sorted(starts) and len(set(starts)) == 3  # each attempt its own start
    assert [e["attempt"] for e in retrying] == [0, 1] and gave_up["attempt"] == 2
    assert retrying[0]["next_attempt_at"] > retrying[0]["ts"]
    assert gave_up["error"]["type"] == "ConnectionError" and gave_up["error"]["message"] == "database down"
    assert "Traceback" in gave_up["error"]["traceback"] and "database down" in gave_up["error"]["traceback"]
    assert attempts[1] - attempts[0] >= 0.09 and attempts[2] - attempts[1] >= 0.19  # 0.1 s, then 0.2 s
    lines = [r for r in caplog.records if r.name == "leveret.tasks.worker" and task_id in r.getMessage()]
    assert len(lines) == 3  # one per failed attempt: retrying, retrying, giving up
    assert "retrying" in lines[0].getMessage() and "giving up" in lines[2].getMessage()
    assert all(r.exc_info and r.exc_info[0] is ConnectionError for r in lines)
    _props, body = broker.get(f"{q}.dead")
    assert json.loads(body)["metadata"]["id"] == task_id


def test_retry_backoff_strategy() -> None:
    fixed = Retry.backoff(5, base=1.0, factor=2.0, max_delay=5.0, jitter=False)
    assert [fixed.next_delay(a) for a in range(6)] == [1.0, 2.0, 4.0, 5.0, 5.0, None]
    jittered = Retry.backoff(3, base=2.0)
    for attempt, full in ((0, 2.0), (1, 4.0), (2, 8.0)):
        delays = [jittered.next_delay(attempt) for _ in range(50)]
        assert all(d is not None and full / 2 <= d <= full for d in delays)  # equal jitter
        assert len(set(delays)) > 1
    assert jittered.next_delay(3) is None
    for retry in (fixed, jittered, Retry.backoff(0)):
        assert Retry.from_wire(json.loads(json.dumps(retry.to_wire()))) == retry
    assert Retry.from_wire({"strategy": "backoff", "attempts": 3}) == Retry.backoff(3)
    assert jittered.delays_ms == []  # no fixed schedule: never the queue's x-retry-intervals
    with pytest.raises(ValueError):
        Retry.backoff(3, factor=0.5)


def test_middleware_hooks(broker: Broker, workers: Callable[..., Worker], broker_port: int,
                          caplog: pytest.LogCaptureFixture) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("mw")
    calls: list[tuple[Any, ...]] = []

    class Sync:
        def before_task(self, ctx: TaskContext) -> None:
            calls.append(("before", ctx.task, ctx.metadata.get("trace"), ctx.app is app,
                          threading.current_thread().name.startswith("leveret-task")))

        def after_task(self, ctx: TaskContext, result: Any, exc: BaseException | None) -> None:
            calls.append(("after", result, type(exc).__name__ if exc else None))

    class Async:
        async def on_retry(self, ctx: TaskContext, exc: BaseException, delay: float) -> None:
            calls.append(("retry", ctx.attempt, type(exc).__name__, delay))

        async def before_task(self, ctx: TaskContext) -> None:
            raise RuntimeError("a broken hook")

    app.add_middleware(Sync())
    app.add_middleware(Async())

    @app.task(name=broker.name("twice"), queue=q, retry=Retry.limit(1, delay=0.05))
    def twice(n: int) -> int:
        if not any(c[0] == "retry" for c in calls):
            raise KeyError("first")
        return n * 2

    workers(app)
    with caplog.at_level(logging.ERROR, logger="leveret.tasks.worker"):
        task_id = broker.publish(q, twice.name, {"n": 4}, metadata={"trace": "abc"})
        assert broker.wait_state(task_id, "succeeded")["result"] == 8
    assert calls == [("before", twice.name, "abc", True, True), ("after", None, "KeyError"),
                     ("retry", 0, "KeyError", 0.05), ("before", twice.name, "abc", True, True), ("after", 8, None)]
    assert sum("a broken hook" in (r.exc_text or "") or "before_task" in r.getMessage()
               for r in caplog.records) >= 2


def test_soft_time_limit_interrupts_sync_and_async_tasks(broker: Broker, workers: Callable[..., Worker],
                                                         broker_port: int) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("soft")
    seen: list[str] = []

    @app.task(name=broker.name("spin"), queue=q, soft_time_limit=0.3)
    def spin() -> None:
        try:
            for _ in range(3000):  # 30 s of short sleeps
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            seen.append("sync")
            raise

    @app.task(name=broker.name("nap"), queue=q, soft_time_limit=0.3)
    async def nap() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("async")
            raise

    workers(app, concurrency=2)
    t0 = time.monotonic()
    ids = [broker.publish(q, spin.name), broker.publish(q, nap.name)]
    for task_id in ids:
        error = broker.wait_state(task_id, "gave_up", timeout=20)["error"]
        assert error["type"] == "SoftTimeLimitExceeded" and "0.3 s" in error["message"]
    assert time.monotonic() - t0 >= 0.3
    assert sorted(seen) == ["async", "sync"]
    # The pool thread is fine afterwards.
    assert broker.wait_state(broker.publish(q, spin.name), "gave_up")


def test_hard_time_limit_stops_the_worker_and_the_message_is_redelivered(
        broker: Broker, broker_port: int) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("hard")
    runs: list[int] = []
    release = threading.Event()

    @app.task(name=broker.name("stuck"), queue=q, time_limit=0.3)
    def stuck() -> None:
        runs.append(1)
        release.wait(30)

    events: list[str] = []
    worker = Worker(app, on_event=lambda e, w: events.append(e)).start()
    try:
        task_id = broker.publish(q, stuck.name)
        broker.wait_state(task_id, "started")
        wait_until(lambda: worker._thread is not None and not worker._thread.is_alive(), 10, "the worker to stop")
        assert worker.exit_code == EXIT_HARD_TIME_LIMIT and "hard_time_limit" in events
        wait_until(lambda: broker.count(q) == 1, 10, "the message back in the queue (not acked)")
        assert broker.states(task_id) == ["started"]
    finally:
        release.set()
        worker.stop()
        app.close()


def test_rate_limit(broker: Broker, workers: Callable[..., Worker], broker_port: int) -> None:
    assert parse_rate_limit("10/s") == 10 and parse_rate_limit("120/m") == 2 and parse_rate_limit("3600/h") == 1
    for bad in ("10", "x/s", "0/s", "5/d"):
        with pytest.raises(ValueError):
            parse_rate_limit(bad)
    assert TokenBucket(0.5).capacity == 1
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("rate")
    starts: list[float] = []

    @app.task(name=broker.name("limited"), queue=q, rate_limit="5/s")
    def limited() -> None:
        starts.append(time.monotonic())

    workers(app, concurrency=4)
    ids = [broker.publish(q, limited.name) for _ in range(10)]
    for task_id in ids:
        broker.wait_state(task_id, "succeeded")
    starts.sort()
    assert starts[-1] - starts[0] >= 0.9  # a burst of 5, then 5 more at 5/s: at least ~1 s


def test_revoke_queued_and_running(broker: Broker, workers: Callable[..., Worker], broker_port: int) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("revoke")
    ran: list[str] = []
    interrupted: list[str] = []

    @app.task(name=broker.name("job"), queue=q)
    def job(n: int) -> None:
        ran.append(str(n))
        try:
            for _ in range(3000):
                time.sleep(0.01)
        except BaseException as exc:
            interrupted.append(type(exc).__name__)
            raise

    worker = workers(app, concurrency=2)

    def revoke(task_id: str) -> None:
        broker.ch.exchange_declare(CONTROL_EXCHANGE, "fanout", durable=True)
        broker.ch.basic_publish(CONTROL_EXCHANGE, "", json.dumps({"revoke": task_id, "ts": time.time()}).encode())

    queued = uuid.uuid4().hex
    revoke(queued)
    wait_until(lambda: queued in worker.revoked, what="the worker to learn of the revoke")
    running = broker.publish(q, job.name, {"n": 1})
    broker.wait_state(running, "started")
    revoke(running)
    event = broker.wait_state(running, "revoked")
    assert event["error"]["type"] == "TaskRevoked" and interrupted == ["TaskRevoked"]
    broker.publish(q, job.name, {"n": 2}, task_id=queued)
    broker.wait_state(queued, "revoked")
    assert broker.states(queued) == ["revoked"] and ran == ["1"]
    wait_until(lambda: broker.count(q) == 0, what="both acked")


def test_link_sends_the_next_task_with_the_result(broker: Broker, workers: Callable[..., Worker],
                                                  broker_port: int) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("link")
    got: list[Any] = []

    @app.task(name=broker.name("first"), queue=q)
    def first(x: int) -> int:
        return x + 1

    @app.task(name=broker.name("second"), queue=q)
    def second(value: int, label: str) -> str:
        got.append((value, label))
        return f"{label}={value}"

    @app.task(name=broker.name("third"), queue=q)
    def third(text: str) -> None:
        got.append(text)

    workers(app)
    link = {"task": second.name, "queue": q, "payload": {"label": "v"}, "result_arg": "value",
            "metadata": {"link": {"task": third.name, "queue": q, "payload": {}, "result_arg": "text"}}}
    task_id = broker.publish(q, first.name, {"x": 1}, metadata={"link": link})
    broker.wait_state(task_id, "succeeded")
    wait_until(lambda: len(got) == 2, what="the chain to run")
    assert got == [(2, "v"), "v=2"]
    linked = wait_until(lambda: [e for e in broker.poll_events() if e["task"] == second.name
                                 and e["state"] == "succeeded"], what="the linked task's event")
    assert linked[0]["id"] != task_id and linked[0]["result"] == "v=2"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_worker_reconnects_after_a_broker_restart(how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = LeveretProcess(tmp_path / "data").start()
    app = App(url(server.port), name="tw", status_ttl=60)
    q = "tw-restart"
    done: set[int] = set()
    lock = threading.Lock()
    gate = threading.Event()

    @app.task(name="tw.restart", queue=q)
    def work(n: int) -> None:
        if n == 0:
            gate.wait(20)  # in flight while the broker goes away
        with lock:
            done.add(n)

    states: list[str] = []
    worker = Worker(app, concurrency=4, reconnect_max=1.0, on_event=lambda e, w: states.append(e)).start()
    try:
        broker = Broker(server.port, "restart")
        sent = [broker.publish(q, "tw.restart", {"n": n}) for n in range(5)]  # confirmed by the broker
        wait_until(lambda: len(done) == 4, what="tasks 1-4 done")
        broker.conn.close()
        if how == "sigterm":
            server.stop()
        else:
            server.kill()
        wait_until(lambda: not worker.consuming, what="the worker to notice")
        gate.set()  # task 0 ends while disconnected: its ack is impossible, the broker will redeliver it
        with caplog.at_level(logging.WARNING, logger="leveret.tasks.worker"):
            server.start()
            wait_until(lambda: worker.consuming and worker.connections == 2, 30, "the worker to reconnect")
        broker = Broker(server.port, "restart")
        more = [broker.publish(q, "tw.restart", {"n": n}) for n in range(5, 8)]
        wait_until(lambda: done >= set(range(8)), 20, f"every task done (done: {sorted(done)})")
        assert len(sent) + len(more) == 8
        changes = [s for s in states if s in ("consuming", "not_consuming", "ready")]
        assert changes == ["consuming", "ready", "not_consuming", "consuming"]
        wait_until(lambda: broker.count(q) == 0, what="all acked after the restart")
        broker.conn.close()
    finally:
        gate.set()
        worker.stop()
        app.close()
        server.stop()
        server.kill()
    assert server.proc is not None and server.proc.returncode in (0, -signal.SIGTERM, -signal.SIGKILL)


TESTS = Path(__file__).parents[1] / "support" / "apps"  # tasks_worker_app.py, run from there


def worker_env(port: int, queue: str) -> dict[str, str]:
    return {**os.environ, "LEVERET_TW_URL": url(port), "LEVERET_TW_QUEUE": queue,
            "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}


def health(state_dir: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "leveret", "health", "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


def test_health_says_unhealthy_while_the_worker_is_not_consuming(tmp_path: Path) -> None:
    server = LeveretProcess(tmp_path / "data").start()
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "leveret", "worker", "tasks_worker_app:app", "--state-dir", str(state),
           "--log-level", "warning"]
    supervisor = subprocess.Popen(cmd, cwd=TESTS, env=worker_env(server.port, "tw-health"))
    try:
        wait_until(lambda: (lambda r: r[0] == 0 and " running " in r[1])(health(state)), 30, "a running worker")
        wait_until(lambda: queue_exists(server.port, "tw-health"), 30, "the worker to declare its queue")
        server.kill()
        _code, out = wait_until(lambda: (lambda r: r if r[0] != 0 else None)(health(state)), 30,
                               "leveret health to report the worker")
        assert "not consuming" in out and "UNHEALTHY" in out
        server.start()
        wait_until(lambda: health(state)[0] == 0, 60, "healthy again after the broker came back")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(30)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait(5)
        server.stop()
        server.kill()


def test_hard_time_limit_exits_the_worker_process_with_its_code(tmp_path: Path) -> None:
    server = LeveretProcess(tmp_path / "data").start()
    queue = "tw-hard"
    cmd = [sys.executable, "-m", "leveret", "worker", "tasks_worker_app:app", "--processes", "0",
           "--log-level", "warning"]
    worker = subprocess.Popen(cmd, cwd=TESTS, env=worker_env(server.port, queue), stderr=subprocess.PIPE, text=True)
    try:
        broker = Broker(server.port, "hard")
        wait_until(lambda: queue_exists(server.port, queue), 30, "the worker to declare its queue")
        task_id = broker.publish(queue, "tw.hang")
        assert worker.wait(30) == EXIT_HARD_TIME_LIMIT
        assert worker.stderr is not None and "exceeded its time limit of 0.5 s" in worker.stderr.read()
        wait_until(lambda: broker.count(queue) == 1, 10, "the message back in its queue")
        _props, body = broker.get(queue)
        assert json.loads(body)["metadata"]["id"] == task_id
        broker.conn.close()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)
        server.stop()
        server.kill()


def queue_exists(port: int, queue: str) -> bool:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        conn.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        with contextlib.suppress(Exception):
            conn.close()


class Proxy:
    """A TCP proxy to the broker that can drop every connection through it (a network failure)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.drop()


def test_worker_reconnects_after_a_dropped_connection(broker: Broker, broker_port: int) -> None:
    proxy = Proxy(broker_port)
    app = App(url(proxy.port), name="tw", status_ttl=60)
    q = broker.queue("drop")
    runs: list[int] = []
    gate = threading.Event()

    @app.task(name=broker.name("held"), queue=q)
    def held(n: int) -> int:
        runs.append(n)
        if n == 0 and len(runs) == 1:
            gate.wait(20)  # the first run ends after the drop: its ack must not go to the new connection
        return n

    worker = Worker(app, reconnect_max=1.0).start()
    try:
        first = broker.publish(q, held.name, {"n": 0})
        broker.wait_state(first, "started")
        proxy.drop()
        wait_until(lambda: not worker.consuming, what="the worker to notice the drop")
        gate.set()
        wait_until(lambda: worker.consuming and worker.connections == 2, 20, "the worker to reconnect")
        second = broker.publish(q, held.name, {"n": 1})
        broker.wait_state(second, "succeeded")
        broker.wait_state(first, "succeeded")  # redelivered and run again on the new connection
        assert sorted(runs) == [0, 0, 1]
        wait_until(lambda: broker.count(q) == 0, what="everything acked")
        assert worker.consuming  # no channel error from a stale delivery tag
    finally:
        gate.set()
        worker.stop()
        app.close()
        proxy.close()


def test_a_queue_declared_with_other_arguments_is_an_error_at_start(broker: Broker, broker_port: int) -> None:
    q = broker.queue("clash")
    broker.ch.queue_declare(q, durable=True, arguments={"x-max-length": 5})
    app = App(url(broker_port), name="tw", status_ttl=60)

    @app.task(name=broker.name("any"), queue=q)
    def any_task() -> None:
        return None

    worker = Worker(app)
    try:
        with pytest.raises(Exception, match="PRECONDITION_FAILED"):
            worker.start()
    finally:
        worker.stop()
        app.close()


def test_revoke_interrupts_a_running_async_task(broker: Broker, workers: Callable[..., Worker],
                                                broker_port: int) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("revoke-async")
    cancelled: list[bool] = []

    @app.task(name=broker.name("wait"), queue=q)
    async def wait() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    workers(app)
    task_id = broker.publish(q, wait.name)
    broker.wait_state(task_id, "started")
    broker.ch.exchange_declare(CONTROL_EXCHANGE, "fanout", durable=True)
    broker.ch.basic_publish(CONTROL_EXCHANGE, "", json.dumps({"revoke": task_id, "ts": time.time()}).encode())
    assert broker.wait_state(task_id, "revoked")["error"]["type"] == "TaskRevoked"
    assert cancelled == [True]
    wait_until(lambda: broker.count(q) == 0, what="acked, not retried")


# --- the slots shared by handler threads and the loop (worker.py, threads.py) ------------------------------------


def test_slots_hand_the_slot_to_the_next_waiting_job_in_order() -> None:
    slots = Slots(2)
    assert slots.take_or_queue("a") and slots.take_or_queue("b") and slots.busy == 2
    assert not slots.take_or_queue("c") and not slots.take_or_queue("d")
    assert slots.next_or_release() == "c" and slots.busy == 2  # a finished: c runs with its slot
    assert slots.clear_waiting() == ["d"]
    assert slots.next_or_release() is None and slots.busy == 1  # nothing waits: the slot is free again
    assert slots.take_or_queue("e") and slots.busy == 2


def test_concurrency_bounds_sync_and_async_handlers_together(broker: Broker, workers: Callable[..., Worker],
                                                            broker_port: int) -> None:
    """Sync handlers (which take their next message in their thread) and async ones (on the loop) share the
    worker's ``concurrency`` slots."""
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("mixed")
    lock = threading.Lock()
    running = [0]
    most = [0]

    def enter() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])

    def leave() -> None:
        with lock:
            running[0] -= 1

    @app.task(name=broker.name("sync"), queue=q)
    def sync_job() -> None:
        enter()
        time.sleep(0.05)
        leave()

    @app.task(name=broker.name("async"), queue=q)
    async def async_job() -> None:
        enter()
        await asyncio.sleep(0.05)
        leave()

    workers(app, concurrency=2)
    ids = [broker.publish(q, (sync_job if i % 2 else async_job).name) for i in range(10)]
    for task_id in ids:
        broker.wait_state(task_id, "succeeded")
    assert most[0] == 2


def test_stop_requeues_prefetched_messages_that_did_not_start(broker: Broker, broker_port: int) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("stop")
    ran: list[int] = []
    release = threading.Event()

    @app.task(name=broker.name("block"), queue=q)
    def block(n: int) -> None:
        ran.append(n)
        release.wait(30)

    worker = Worker(app, concurrency=1, prefetch=4, grace=30).start()
    try:
        first = broker.publish(q, block.name, {"n": 0})
        wait_until(lambda: ran == [0], what="the first task to start")
        for n in (1, 2, 3):
            broker.publish(q, block.name, {"n": n})
        wait_until(lambda: broker.count(q) == 0, what="the other three prefetched by the worker")
        worker.request_stop()
        wait_until(lambda: not worker.consuming, what="the worker to stop consuming")  # stopping: start nothing
        release.set()
        assert worker._thread is not None
        worker._thread.join(30)
        assert not worker._thread.is_alive() and worker.unfinished == 0
        assert broker.wait_state(first, "succeeded")
        wait_until(lambda: broker.count(q) == 3, what="the three that did not start back in the queue")
        assert ran == [0]
    finally:
        release.set()
        worker.stop()
        app.close()


def test_revoke_reaches_a_prefetched_message_before_it_starts(broker: Broker, workers: Callable[..., Worker],
                                                              broker_port: int) -> None:
    app = App(url(broker_port), name="tw", status_ttl=60)
    q = broker.queue("revoke-waiting")
    ran: list[int] = []
    release = threading.Event()

    @app.task(name=broker.name("block"), queue=q)
    def block(n: int) -> None:
        ran.append(n)
        release.wait(30)

    worker = workers(app, concurrency=1, prefetch=4)
    try:
        first = broker.publish(q, block.name, {"n": 0})
        wait_until(lambda: ran == [0], what="the first task to start")
        waiting = broker.publish(q, block.name, {"n": 1})
        wait_until(lambda: broker.count(q) == 0, what="the second prefetched by the worker")
        broker.ch.exchange_declare(CONTROL_EXCHANGE, "fanout", durable=True)
        broker.ch.basic_publish(CONTROL_EXCHANGE, "", json.dumps({"revoke": waiting, "ts": time.time()}).encode())
        wait_until(lambda: waiting in worker.revoked, what="the worker to learn of the revoke")
    finally:
        release.set()
    broker.wait_state(first, "succeeded")
    broker.wait_state(waiting, "revoked")
    assert ran == [0] and broker.states(waiting) == ["revoked"]


def test_a_loop_job_cancelled_just_after_it_was_handed_a_slot_passes_the_slot_on() -> None:
    """No broker: the worker's slot logic with stand-ins for a delivered message. A job that runs on the loop (an
    async task) waits for a slot; the slot is handed to it and its task is cancelled (its channel closed) before
    it resumes: the slot must not be lost."""
    from types import SimpleNamespace

    app = App("amqp://guest:guest@127.0.0.1:1/", name="slots")

    @app.task(name="slots.job", queue="slots")
    async def job() -> None:
        return None

    worker = Worker(app, concurrency=1)

    def delivery(tag: int) -> Any:
        props = SimpleNamespace(headers=None, content_type="application/json", message_id=f"id{tag}",
                                correlation_id=None, message_type=job.name)
        body = json.dumps({"payload": {}, "metadata": {"task": job.name, "id": f"id{tag}"}}).encode()
        return SimpleNamespace(header=SimpleNamespace(properties=props), body=body, delivery_tag=tag,
                               channel=SimpleNamespace(is_closed=False))

    async def scenario() -> int:
        worker._loop = asyncio.get_running_loop()
        worker._stopping = asyncio.Event()
        consumer: Any = SimpleNamespace(queue="slots")
        assert worker._slots.take_or_queue("held elsewhere")
        waiting = asyncio.ensure_future(worker._on_message(consumer, delivery(1)))
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(worker._slots.waiting) == 1
        worker._release()  # the holder finished: the slot goes to the waiting job...
        waiting.cancel()  # ...whose channel closes before it resumes
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        return worker._slots.busy

    try:
        assert asyncio.run(scenario()) == 0
    finally:
        worker._threads.shutdown()
        worker._pool.shutdown(wait=False)
        app.close()
