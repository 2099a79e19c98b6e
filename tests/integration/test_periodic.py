"""Periodic tasks (leveret.tasks.periodic): the schedule arithmetic and the catch-up rule without sockets, then
schedulers against a real Leveret and RabbitMQ (``broker_port``): two schedulers fire each due time once, a
killed leader (SIGKILL of a `leveret beat` process) is replaced without double firing, a restarted scheduler
continues from the token, two tokens left by a crash merge, and a due time the dead leader already sent is not
sent again. Firings are counted on the task queue itself (one message per due time, with its deterministic id)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from leveret.tasks import App
from leveret.tasks.periodic import (
    Decision,
    Schedule,
    Scheduler,
    Token,
    covers,
    decide,
    merge,
    periodic,
    periodic_task_id,
    read_token,
    schedules,
)

import waiting

TESTS = Path(__file__).parents[1] / "support" / "apps"  # periodic_app.py, run from there


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    waiting.wait_for(condition, timeout, f"{what} not met after {timeout} s", interval=0.02)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --- schedules, without a broker ---------------------------------------------------------------------------


def test_every_is_aligned_to_the_epoch() -> None:
    s = Schedule("s", None, every=30)
    assert s.next_after(100.0) == 120.0
    assert s.next_after(120.0) == 150.0
    assert s.latest_due(120.0) == 120.0
    assert s.latest_due(149.9) == 120.0


def test_cron_in_utc_and_in_a_time_zone() -> None:
    s = Schedule("s", None, cron="*/5 * * * *")
    assert s.next_after(ts("2026-01-01T10:00:00+00:00")) == ts("2026-01-01T10:05:00+00:00")
    assert s.latest_due(ts("2026-01-01T10:07:30+00:00")) == ts("2026-01-01T10:05:00+00:00")
    assert s.latest_due(ts("2026-01-01T10:05:00+00:00")) == ts("2026-01-01T10:05:00+00:00")
    paris = Schedule("p", None, cron="0 9 * * *", tz="Europe/Paris")
    assert paris.next_after(ts("2026-07-01T00:00:00+00:00")) == ts("2026-07-01T07:00:00+00:00")  # CEST
    assert paris.next_after(ts("2026-01-01T00:00:00+00:00")) == ts("2026-01-01T08:00:00+00:00")  # CET
    assert Schedule("h", None, cron="@hourly").next_after(ts("2026-01-01T10:30:00+00:00")) == \
        ts("2026-01-01T11:00:00+00:00")


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of"),
    ({"cron": "* * * * *", "every": 5}, "exactly one of"),
    ({"every": 0}, "positive"),
    ({"every": float("inf")}, "positive"),
    ({"cron": "* * * *"}, "5-field"),
    ({"cron": "* * * * * *"}, "5-field"),  # croniter's seconds field: refused, it would mean something else
    ({"cron": "61 * * * *"}, "5-field"),
    ({"every": 5, "catch_up": -1}, "catch_up"),
])
def test_bad_schedules_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule("s", None, **kwargs)


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(KeyError):
        Schedule("s", None, every=5, tz="Mars/Olympus")


def test_catch_up_rule() -> None:
    s = Schedule("s", None, every=10)
    assert decide(s, None, 105.0) == Decision(None, 100.0)            # new: nothing from the past
    assert decide(s, 100.0, 105.0) == Decision(None, 100.0)           # nothing due
    assert decide(s, 100.0, 110.2) == Decision(110.0, 110.0)          # due: fire it
    assert decide(s, 100.0, 155.0) == Decision(150.0, 150.0, 4)       # missed 110..140: only the latest fires
    late = Schedule("s", None, every=10, catch_up=3)
    assert decide(late, 100.0, 112.0) == Decision(110.0, 110.0)       # 2 s late: within catch_up
    assert decide(late, 100.0, 114.0) == Decision(None, 110.0, 1)     # 4 s late: skipped
    assert decide(s, 0.0, 1e9).skipped == 1000                        # the count is bounded


def test_task_ids_are_deterministic() -> None:
    a = periodic_task_id("app", "tick", 120.0)
    assert a == periodic_task_id("app", "tick", 120.0) and len(a) == 32
    assert len({a, periodic_task_id("app", "tick", 130.0), periodic_task_id("app", "tock", 120.0),
                periodic_task_id("other", "tick", 120.0)}) == 4


def test_tokens_merge_by_the_latest_time() -> None:
    assert merge([{"a": 1.0, "b": 5.0}, {"a": 3.0}, {}]) == {"a": 3.0, "b": 5.0}
    assert covers({"a": 3.0, "b": 1.0}, {"a": 2.0}) and not covers({"a": 3.0}, {"a": 2.0, "b": 1.0})
    assert covers({}, {})
    assert read_token(b'{"v": 1, "last": {"a": 3}}') == Token({"a": 3.0})
    assert read_token(b'{"last": {}, "firing": {"a": 4}}') == Token({}, {"a": 4.0})
    for bad in (b"[]", b'{"last": {"a": "x"}}', b"{}", b'{"last": {}, "firing": []}'):
        with pytest.raises(ValueError):
            read_token(bad)


def test_a_token_is_covered_only_when_nothing_it_tells_is_lost() -> None:
    old, firing, fired = Token({"a": 1.0}), Token({"a": 1.0}, {"a": 2.0}), Token({"a": 2.0})
    assert old.covered_by(firing) and old.covered_by(fired)
    assert not firing.covered_by(old)          # the "maybe sent" would be lost
    assert firing.covered_by(fired)            # resolved: 2.0 is recorded as fired
    assert not fired.covered_by(firing)
    assert Token({}).covered_by(Token({}))


def test_periodic_registers_the_task_and_its_schedule() -> None:
    app = App("amqp://guest:guest@127.0.0.1:1/", name="reg")

    @periodic(app, every=60, name="report", payload={"kind": "daily"}, queue="reports")
    def report(kind: str) -> str:
        return kind

    assert app.tasks["report"].queue == "reports"
    assert schedules(app)["report"].payload == {"kind": "daily"}
    with pytest.raises(TypeError, match="payload does not fit"):
        periodic(app, every=60, payload={"nope": 1})(report.fn)
    with pytest.raises(ValueError, match="already has a schedule"):
        periodic(app, every=60, name="report", payload={"kind": "x"})(report.fn)
    with pytest.raises(ValueError, match="no schedule named"):
        Scheduler(app, names=["missing"])


# --- against brokers ---------------------------------------------------------------------------------------


class Collector:
    """Takes the fired task messages off the task queue (basic.get) and keeps (due, message id) of each."""

    def __init__(self, port: int, queue: str) -> None:
        self.queue = queue
        self.conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        self.ch = self.conn.channel()
        self.fired: list[tuple[float, str]] = []

    def poll(self) -> list[tuple[float, str]]:
        while True:
            try:
                method, props, body = self.ch.basic_get(self.queue, auto_ack=True)
            except pika.exceptions.ChannelClosedByBroker:  # not declared yet: nothing fired yet
                self.ch = self.conn.channel()
                return self.fired
            if method is None:
                return self.fired
            data = json.loads(body)
            self.fired.append((data["metadata"]["periodic"]["due"], props.message_id))

    def dues(self) -> Counter[float]:
        return Counter(due for due, _ in self.poll())

    def wait_count(self, n: int, timeout: float = 60.0) -> None:
        wait_for(lambda: len(self.poll()) >= n, timeout, f"{n} firings")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


@pytest.fixture
def env(broker_port: int) -> Iterator[dict[str, Any]]:
    """A unique app name (= task queue) on this broker; its queues are deleted afterwards (RabbitMQ is shared)."""
    name = f"per-{uuid.uuid4().hex[:10]}"
    made: dict[str, Any] = {"name": name, "port": broker_port, "url": f"amqp://guest:guest@127.0.0.1:{broker_port}/",
                            "apps": [], "schedulers": [], "collectors": []}
    yield made
    for scheduler in made["schedulers"]:
        scheduler.stop()
    for app in made["apps"]:
        app.close()
    for collector in made["collectors"]:
        collector.close()
    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker_port))
        ch = conn.channel()
        for queue in (name, f"{name}.dead", f"leveret.schedule.{name}"):
            ch.queue_delete(queue)
        conn.close()


def make_app(env: dict[str, Any], every: float, catch_up: float | None = None) -> App:
    """A fresh App (as in another process) with the periodic task "tick" on queue env["name"]."""
    app = App(env["url"], name=env["name"], status_ttl=60)

    @periodic(app, every=every, name="tick", payload={"n": 1}, catch_up=catch_up)
    def tick(n: int) -> None:
        pass

    env["apps"].append(app)
    return app


def start_scheduler(env: dict[str, Any], app: App) -> Scheduler:
    scheduler = Scheduler(app).start()
    env["schedulers"].append(scheduler)
    return scheduler


def collector(env: dict[str, Any]) -> Collector:
    made = Collector(env["port"], env["name"])
    env["collectors"].append(made)
    return made


def assert_once_each(env: dict[str, Any], fired: list[tuple[float, str]]) -> None:
    counts = Counter(due for due, _ in fired)
    assert all(n == 1 for n in counts.values()), f"fired twice: {[d for d, n in counts.items() if n > 1]}"
    for due, task_id in fired:
        assert task_id == periodic_task_id(env["name"], "tick", due)


def test_two_schedulers_fire_each_due_time_once(env: dict[str, Any]) -> None:
    every = 0.3
    a, b = start_scheduler(env, make_app(env, every)), start_scheduler(env, make_app(env, every))
    got = collector(env)
    got.wait_count(8)
    wait_for(lambda: a.is_leader or b.is_leader, what="a leader")
    assert not (a.is_leader and b.is_leader)
    assert_once_each(env, got.poll())
    follower = b if a.is_leader else a
    assert follower.fired == []


def test_stopped_leader_hands_over_and_restart_keeps_state(env: dict[str, Any]) -> None:
    every = 0.3
    a = start_scheduler(env, make_app(env, every))
    got = collector(env)
    got.wait_count(3)
    wait_for(lambda: a.is_leader, what="a to lead")
    b = start_scheduler(env, make_app(env, every))
    a.stop()
    last_a = max(f.due for f in a.fired)
    wait_for(lambda: b.fired != [], what="b to take over")
    assert min(f.due for f in b.fired) > last_a
    assert b.status_checks == 0  # a clean handover: nothing to check
    got.wait_count(len(a.fired) + 3)
    b.stop()
    last_b = max(f.due for f in b.fired)
    # nobody runs for a few periods; a new scheduler continues from the token: the latest missed due time
    # fires once (catch-up), the older missed ones are skipped, nothing already fired is fired again
    wait_for(lambda: time.time() > last_b + 3 * every, what="three periods")
    c = start_scheduler(env, make_app(env, every))
    wait_for(lambda: len(c.fired) >= 2, what="c to fire")
    c.stop()
    first_c = min(f.due for f in c.fired)
    assert first_c >= last_b + 3 * every - 1e-6
    wait_for(lambda: len(got.poll()) >= len(a.fired) + len(b.fired) + len(c.fired), what="every firing queued")
    assert_once_each(env, got.poll())
    assert len(got.poll()) == len(a.fired) + len(b.fired) + len(c.fired)


def publish_token(port: int, name: str, last: dict[str, float], firing: dict[str, float] | None = None) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(f"leveret.schedule.{name}", durable=True, arguments={"x-single-active-consumer": True})
        body = json.dumps({"v": 1, "last": last, "firing": firing or {}}).encode()
        ch.basic_publish("", f"leveret.schedule.{name}", body,
                         pika.BasicProperties(delivery_mode=2, content_type="application/json"))
    finally:
        conn.close()


def test_two_tokens_left_by_a_crash_merge_to_the_latest(env: dict[str, Any]) -> None:
    """A leader died after publishing its new token and before acking the old one: the old token comes first
    in the queue. The next leader must act on the newer one (here, a due time recorded ahead of now, so that
    acting on the old token would fire a due time at once)."""
    every = 0.5
    s = Schedule("tick", None, every=every)
    ahead = s.latest_due(time.time()) + 3 * every
    publish_token(env["port"], env["name"], {"tick": ahead - 10 * every})  # old
    publish_token(env["port"], env["name"], {"tick": ahead})               # new
    scheduler = start_scheduler(env, make_app(env, every))
    got = collector(env)
    got.wait_count(2)
    assert min(got.dues()) == ahead + every
    wait_for(lambda: scheduler.fired != [], what="send_with to return")
    assert min(f.due for f in scheduler.fired) == ahead + every
    assert_once_each(env, got.poll())


def test_new_leader_does_not_resend_what_the_dead_leader_sent(env: dict[str, Any]) -> None:
    """The dead leader wrote "firing D", sent D, then died before its token said "fired D": the next leader finds
    the task id of D known to the broker (its status) and does not send it again."""
    every = 2.0
    s = Schedule("tick", None, every=every)
    wait_for(lambda: time.time() - s.latest_due(time.time()) < 0.3 * every, what="the start of a period")
    due = s.latest_due(time.time())
    app = make_app(env, every)
    task = app.tasks["tick"]
    task.send_with({"n": 1}, task_id=periodic_task_id(env["name"], "tick", due),  # as the dead leader did
                   metadata={"periodic": {"schedule": "tick", "due": due}})
    publish_token(env["port"], env["name"], {"tick": due - every}, {"tick": due})  # its token, not updated
    scheduler = start_scheduler(env, app)
    got = collector(env)
    got.wait_count(2)
    assert sorted(got.dues())[:2] == [due, due + every]
    assert_once_each(env, got.poll())
    assert due not in [f.due for f in scheduler.fired]
    assert scheduler.status_checks == 1


def test_new_leader_fires_what_the_dead_leader_did_not_send(env: dict[str, Any]) -> None:
    """The dead leader wrote "firing D" and died before sending D: the next leader finds D unknown and sends it."""
    every = 2.0
    s = Schedule("tick", None, every=every)
    wait_for(lambda: time.time() - s.latest_due(time.time()) < 0.3 * every, what="the start of a period")
    due = s.latest_due(time.time())
    publish_token(env["port"], env["name"], {"tick": due - every}, {"tick": due})
    scheduler = start_scheduler(env, make_app(env, every))
    got = collector(env)
    got.wait_count(1)
    assert sorted(got.dues()) == [due]
    wait_for(lambda: scheduler.fired != [], what="send_with to return")  # the message can arrive before that
    assert scheduler.status_checks == 1 and scheduler.fired[0].due == due


# --- `leveret beat` processes, the leader killed -----------------------------------------------------------


class Beat:
    def __init__(self, env: dict[str, Any], every: float) -> None:
        environ = {**os.environ, "PERIODIC_URL": env["url"], "PERIODIC_APP": env["name"],
                   "PERIODIC_EVERY": str(every)}
        self.proc = subprocess.Popen([sys.executable, "-m", "leveret", "beat", "periodic_app:app"], cwd=TESTS,
                                     env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def leads(self) -> bool:
        return any(" leads " in line for line in list(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.mark.slow
def test_killed_leader_is_replaced_without_double_firing(env: dict[str, Any]) -> None:
    every = 0.3
    beats = [Beat(env, every), Beat(env, every)]
    try:
        got = collector(env)
        got.wait_count(5)
        wait_for(lambda: any(b.leads() for b in beats), what="a leader")
        leader = next(b for b in beats if b.leads())
        other = next(b for b in beats if b is not leader)
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(10)
        killed_at = time.time()
        wait_for(other.leads, what="the other scheduler to take over")
        wait_for(lambda: max(got.dues()) > killed_at + 3 * every, what="firings after the kill")
        assert_once_each(env, got.poll())
        assert "Traceback" not in "\n".join(other.lines)
    finally:
        for beat in beats:
            beat.stop()
    assert beats[1 - beats.index(leader)].proc.returncode == 0


def test_beat_without_periodic_tasks_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "plainapp.py").write_text("from leveret.tasks import App\napp = App('amqp://x/')\n")
    proc = subprocess.run([sys.executable, "-m", "leveret", "beat", "plainapp:app"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "has no periodic task" in proc.stderr


# --- a broker restart ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_token_survives_a_broker_restart(tmp_path: Path) -> None:
    """The token is a persistent message in a durable queue: after the broker restarts (SQLite store), a new
    scheduler continues from it, and no due time is fired twice."""
    from serverproc import LeveretProcess

    broker = LeveretProcess(tmp_path / "data").start()
    env: dict[str, Any] = {"name": f"per-{uuid.uuid4().hex[:10]}", "port": broker.port, "apps": [],
                           "url": f"amqp://guest:guest@127.0.0.1:{broker.port}/", "schedulers": [], "collectors": []}
    every = 0.3
    try:
        a = start_scheduler(env, make_app(env, every))
        wait_for(lambda: len(a.fired) >= 3, what="a to fire")
        a.stop()
        env["apps"][0].close()
        broker.stop()
        broker.start()
        b = start_scheduler(env, make_app(env, every))
        wait_for(lambda: len(b.fired) >= 3, what="b to fire after the restart")
        b.stop()
        assert min(f.due for f in b.fired) > max(f.due for f in a.fired)
        got = collector(env)  # every task message was persistent too: all of them are in the queue
        wait_for(lambda: len(got.poll()) >= len(a.fired) + len(b.fired), what="every firing in the queue")
        assert_once_each(env, got.poll())
    finally:
        for app in env["apps"]:
            app.close()
        for made in env["collectors"]:
            made.close()
        broker.stop()
