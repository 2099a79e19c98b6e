"""leveret.tasks against Leveret and, when it runs, RabbitMQ (``broker_port``): sending from sync and async
code, the JSON wire format both ways, retries and dead letters, events and hooks, RPC and gather, status,
delays, priorities, serial queues, binary payloads, and a worker killed mid-task."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from conftest import RABBITMQ_PORT

from leveret.cli import main as cli_main
from leveret.tasks import App, Retry, TaskContext, TaskError, Worker, worker_out
from leveret.tasks.status import new_task_id

TESTS = Path(__file__).parents[1] / "support" / "apps"  # tasks_app.py, run from there


def url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def on_leveret(port: int) -> bool:
    """Which broker ``broker_port`` is, from the fixture (not from what the App detected)."""
    return port != RABBITMQ_PORT


@pytest.fixture
def names(broker_port: int) -> Iterator[dict[str, Any]]:
    """Unique queue/task names for this test (RabbitMQ's vhost is shared); the queues are deleted after."""
    tag = uuid.uuid4().hex[:10]
    made: dict[str, Any] = {"tag": tag, "queues": []}

    def queue(name: str) -> str:
        full = f"tt-{tag}-{name}"
        made["queues"].append(full)
        return full

    made["queue"] = queue
    yield made
    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker_port))
        ch = conn.channel()
        for q in made["queues"]:
            for name in (q, f"{q}.dead", *(f"{q}.retry.{ms}" for ms in (100, 200, 300, 50, 400))):
                ch.queue_delete(name)
        conn.close()


def raw_channel(port: int) -> tuple[Any, Any]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    return conn, conn.channel()


def raw_get(ch: Any, queue: str, timeout: float = 3.0) -> tuple[Any, Any, bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, props, body
        time.sleep(0.02)
    raise AssertionError(f"nothing in {queue} after {timeout} s")


@pytest.fixture
def make_app(broker_port: int) -> Iterator[Any]:
    apps: list[App] = []
    workers: list[Worker] = []

    def make() -> App:
        app = App(url(broker_port), name="t", status_ttl=60)
        apps.append(app)
        return app

    make.workers = workers  # type: ignore[attr-defined]
    yield make
    for w in workers:
        w.stop()
    for app in apps:
        app.close()


def start(make_app: Any, app: App, **kwargs: Any) -> Worker:
    worker = Worker(app, **kwargs).start()
    make_app.workers.append(worker)
    return worker


def test_send_from_sync_code_and_status(make_app: Any, names: dict[str, Any], broker_port: int) -> None:
    app = make_app()
    q = names["queue"]("work")
    done: list[tuple[str, int]] = []

    @app.task(name=f"greet-{names['tag']}", queue=q)
    def greet(name: str, times: int = 1) -> str:
        done.append((name, times))
        return name * times

    with pytest.raises(TypeError):
        greet.send(nom="x")  # the payload is checked against the handler's signature
    handle = greet.send(name="ab", times=2)
    assert len(handle.id) == 32
    assert app.product == ("Leveret" if on_leveret(broker_port) else "RabbitMQ")  # server_product() works
    assert handle.status() == "queued"  # no worker yet
    assert app.status(uuid.uuid4().hex) == "unknown"
    start(make_app, app, concurrency=2)
    assert handle.wait(5) == "succeeded"
    assert done == [("ab", 2)]
    # Readable from another process's App and from the CLI.
    other = App(url(broker_port))
    try:
        assert other.status(handle.id) == "succeeded"
    finally:
        other.close()


def test_status_from_cli(make_app: Any, names: dict[str, Any], broker_port: int,
                         capsys: pytest.CaptureFixture[str]) -> None:
    app = make_app()

    @app.task(name=f"noop-{names['tag']}", queue=names["queue"]("work"))
    def noop() -> None:
        return None

    handle = noop.send()
    assert cli_main(["status", handle.id, "--url", url(broker_port)]) == 0
    assert capsys.readouterr().out.strip() == "queued"
    # an id as send() makes them (a UUIDv7 tells its time, so on RabbitMQ only the stream since then is read)
    assert cli_main(["status", new_task_id(), "--url", url(broker_port)]) == 0
    assert capsys.readouterr().out.strip() == "unknown"
    # any other text is looked up too (on RabbitMQ through the whole retention: a longer timeout)
    assert cli_main(["status", "no-such-id", "--url", url(broker_port), "--timeout", "60"]) == 0
    assert capsys.readouterr().out.strip() == "unknown"


async def test_send_async(make_app: Any, names: dict[str, Any]) -> None:
    app = make_app()

    @app.task(name=f"double-{names['tag']}", queue=names["queue"]("work"))
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    handle = await double.send_async(x=21)
    assert await app.status_async(handle.id) == "queued"
    start(make_app, app)
    assert await handle.wait_async(5) == "succeeded"


def test_wire_format_both_ways(make_app: Any, names: dict[str, Any], broker_port: int) -> None:
    app = make_app()
    q = names["queue"]("wire")
    task_name = f"mail-{names['tag']}"
    seen: list[dict[str, Any]] = []

    @app.task(name=task_name, queue=q, retry=Retry.intervals([15, 30]))
    def mail(to: str, subject: str) -> None:
        seen.append({"to": to, "subject": subject})

    handle = mail.send(to="a@example.com", subject="hi")
    conn, ch = raw_channel(broker_port)
    try:
        _, props, body = raw_get(ch, q)
        assert props.content_type == "application/json"
        assert props.delivery_mode == 2
        assert props.message_id == handle.id
        data = json.loads(body)
        assert data["payload"] == {"to": "a@example.com", "subject": "hi"}
        meta = data["metadata"]
        assert meta["task"] == meta["className"] == task_name
        assert meta["id"] == handle.id and meta["attempt"] == 0
        assert meta["retry"] == {"strategy": "intervals", "intervals": [15.0, 30.0]}
        assert "T" in meta["sent_at"] and meta["eta"] is None
        # A message written by hand (as a PHP producer would) is processed by the worker.
        hand_id = f"hand-{names['tag']}"
        hand = {"payload": {"to": "b@example.com", "subject": "by hand"},
                "metadata": {"className": task_name, "id": hand_id, "retry": {"strategy": "ignore"}}}
        ch.basic_publish("", q, json.dumps(hand).encode(),
                         pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=hand_id))
    finally:
        conn.close()
    start(make_app, app)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == [{"to": "b@example.com", "subject": "by hand"}]
    deadline = time.monotonic() + 3
    while app.status(hand_id) != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.status(hand_id) == "succeeded"


def test_binary_payload(make_app: Any, names: dict[str, Any], broker_port: int) -> None:
    app = make_app()
    got: list[bytes] = []

    @app.task(name=f"blob-{names['tag']}", queue=names["queue"]("blob"))
    def blob(data: bytes) -> int:
        got.append(data)
        return len(data)

    start(make_app, app)
    handle = blob.send_bytes(b"\x00\xffimage")
    assert handle.wait(5) == "succeeded"
    assert got == [b"\x00\xffimage"]


def test_retry_intervals_then_dead_queue(make_app: Any, names: dict[str, Any], broker_port: int) -> None:
    app = make_app()
    q = names["queue"]("retry")
    attempts: list[tuple[float, int]] = []
    hooks: list[tuple[int, bool]] = []

    @app.task(name=f"flaky-{names['tag']}", queue=q, retry=Retry.intervals([0.1, 0.2]))
    def flaky(n: int) -> None:
        attempts.append((time.monotonic(), n))
        raise ValueError("database down")

    @flaky.on_failure
    def failed(ctx: TaskContext, exc: Exception) -> None:
        hooks.append((ctx.attempt, ctx.will_retry))

    start(make_app, app)
    handle = flaky.send(n=7)
    assert handle.wait(5) == "gave_up"
    assert len(attempts) == 3
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(attempts)]
    assert 0.09 <= gaps[0] < 0.6 and 0.19 <= gaps[1] < 0.8, gaps
    assert hooks == [(0, True), (1, True), (2, False)]
    conn, ch = raw_channel(broker_port)
    try:
        _, props, body = raw_get(ch, f"{q}.dead")
        assert json.loads(body)["metadata"]["id"] == handle.id
        death = props.headers["x-death"][0]
        assert death["queue"] == q
        # Leveret's x-retry-intervals dead-letters with its own reason; RabbitMQ sees a plain reject.
        assert death["reason"] == ("retries_exhausted" if on_leveret(broker_port) else "rejected")
    finally:
        conn.close()


@pytest.mark.parametrize("strategy,expected", [(Retry.limit(2), 3), (Retry.ignore(), 1)])
def test_limit_and_ignore(make_app: Any, names: dict[str, Any], broker_port: int, strategy: Retry,
                          expected: int) -> None:
    app = make_app()
    q = names["queue"]("lim")
    attempts: list[int] = []

    @app.task(name=f"bad-{names['tag']}", queue=q, retry=strategy)
    def bad() -> None:
        attempts.append(1)
        raise RuntimeError("no")

    start(make_app, app)
    assert bad.send().wait(5) == "gave_up"
    assert len(attempts) == expected
    conn, ch = raw_channel(broker_port)
    try:
        raw_get(ch, f"{q}.dead")
    finally:
        conn.close()


@pytest.mark.parametrize("track", [False, True], ids=["default", "track_started"])
def test_events_and_success_hook(make_app: Any, names: dict[str, Any], broker_port: int, track: bool,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Per attempt one final event carrying its start (default), or "started" then the final event
    (``track_started=True``); the status record is the same either way (docs/tasks.md, "Events")."""
    # "started" goes by itself only for an attempt still running after STARTED_DELAY: far off here, so that a slow
    # machine cannot make a short attempt send it (that path: test_tasks_worker.py, the hard time limit test).
    monkeypatch.setattr(worker_out, "STARTED_DELAY", 60.0)
    app = make_app()
    app.track_started = track
    tag = names["tag"]
    conn, ch = raw_channel(broker_port)
    ch.exchange_declare("leveret.events", "topic", durable=True)
    events_q = ch.queue_declare("", exclusive=True).method.queue
    for key in (f"ok-{tag}.*", f"ko-{tag}.*"):
        ch.queue_bind(events_q, "leveret.events", key)
    succeeded: list[Any] = []

    @app.task(name=f"ok-{tag}", queue=names["queue"]("ev"))
    def ok(x: int) -> int:
        return x + 1

    @app.task(name=f"ko-{tag}", queue=names["queue"]("ev2"), retry=Retry.intervals([0.05]))
    def ko() -> None:
        raise KeyError("missing")

    ok.on_success(lambda ctx, result: succeeded.append((ctx.task, result)))
    start(make_app, app)
    expected = 6 if track else 3
    try:
        handle = ok.send(x=1)
        assert handle.wait(5) == "succeeded"
        assert ko.send().wait(5) == "gave_up"
        got: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + 3
        while len(got) < expected and time.monotonic() < deadline:
            method, _, body = ch.basic_get(events_q, auto_ack=True)
            if method is None:
                time.sleep(0.02)
                continue
            if not method.routing_key.endswith(".queued"):  # the producer's own, on RabbitMQ (the status stream)
                got.append((method.routing_key, json.loads(body)))
        record = app.status_info(handle.id)
    finally:
        conn.close()
    keys = [k for k, _ in got]
    events = [e for _, e in got]
    if track:  # per attempt one "started" and one outcome
        assert keys[:2] == [f"ok-{tag}.started", f"ok-{tag}.succeeded"]
        assert keys[2:] == [f"ko-{tag}.{s}" for s in ("started", "retrying", "started", "gave_up")]
        assert all("started" not in e for e in events)
        start_ts = events[0]["ts"]
    else:  # per attempt its outcome alone, with the attempt's start
        assert keys == [f"ok-{tag}.succeeded", f"ko-{tag}.retrying", f"ko-{tag}.gave_up"]
        assert all(e["started"] <= e["ts"] for e in events)
        assert events[1]["started"] < events[2]["started"]  # each attempt its own
        start_ts = events[0]["started"]
    final = got[1 if track else 0][1]
    retrying = dict(got)[f"ko-{tag}.retrying"]
    assert retrying["next_attempt_at"] and retrying["error"]["type"] == "KeyError"
    assert succeeded == [(f"ok-{tag}", 2)]
    # The record: as before the change, whichever way the start came.
    assert record["state"] == "succeeded" and record["attempt"] == 0 and record["result"] == 2
    assert record["started"] == start_ts and record["created"] <= start_ts
    assert record["updated"] == record["finished"] == final["ts"]


async def test_rpc_call_gather_and_timeout(make_app: Any, names: dict[str, Any]) -> None:
    app = make_app()
    tag = names["tag"]

    @app.task(name=f"add-{tag}", queue=names["queue"]("rpc"))
    async def add(x: int, y: int) -> int:
        return x + y

    runs: list[tuple[float, float]] = []

    @app.task(name=f"mul-{tag}", queue=names["queue"]("rpc"))
    def mul(x: int, y: int) -> int:
        began = time.monotonic()
        time.sleep(0.2)
        runs.append((began, time.monotonic()))
        return x * y

    @app.task(name=f"fail-{tag}", queue=names["queue"]("rpc"))
    def fail(why: str) -> None:
        raise PermissionError(why)

    @app.task(name=f"nobody-{tag}", queue=names["queue"]("unserved"))
    def nobody() -> None:
        return None

    worker = Worker(app, queues=[names["queue"]("rpc")], concurrency=4)
    await asyncio.to_thread(worker.start)
    make_app.workers.append(worker)
    assert await add.call(x=2, y=3, timeout=3) == 5
    with pytest.raises(TaskError) as info:
        await fail.call(why="not yours", timeout=3)
    assert info.value.remote_type == "PermissionError" and info.value.remote_message == "not yours"
    results = await app.gather([add.request(x=1, y=1), mul.request(x=3, y=4), mul.request(x=5, y=5)], timeout=3)
    assert results == [2, 12, 25]
    # sent at once, run concurrently: the two multiplications overlap in time
    assert len(runs) == 2 and max(began for began, _ in runs) < min(ended for _, ended in runs), runs
    with pytest.raises(TimeoutError):
        await app.gather([add.request(x=1, y=2), nobody.request()], timeout=0.5)
    # return_exceptions: the answers that came, an exception in place of each one that failed or did not come
    got = await app.gather([add.request(x=1, y=2), nobody.request(), fail.request(why="no"), mul.request(x=0, y=1)],
                           timeout=1.5, return_exceptions=True)
    assert got[0] == 3 and got[3] == 0
    assert isinstance(got[1], TimeoutError) and f"nobody-{tag}" in str(got[1])
    assert isinstance(got[2], TaskError) and got[2].remote_type == "PermissionError"
    assert await app.gather([], timeout=0.1, return_exceptions=True) == []


def test_delay_and_eta(make_app: Any, names: dict[str, Any]) -> None:
    app = make_app()
    ran: list[float] = []

    @app.task(name=f"later-{names['tag']}", queue=names["queue"]("later"))
    def later() -> None:
        ran.append(time.monotonic())

    start(make_app, app)
    t0 = time.monotonic()
    assert later.send_with({}, delay=0.4).wait(5) == "succeeded"
    assert 0.38 <= ran[0] - t0 < 2.0


def test_priority(make_app: Any, names: dict[str, Any], broker_port: int) -> None:
    app = make_app()
    q = names["queue"]("prio")

    @app.task(name=f"p-{names['tag']}", queue=q, priority=1)
    def p(n: int) -> None:
        return None

    p.send(n=1)
    p.send_with({"n": 2}, priority=9)
    conn, ch = raw_channel(broker_port)
    try:
        assert json.loads(raw_get(ch, q)[2])["payload"] == {"n": 2}
        assert json.loads(raw_get(ch, q)[2])["payload"] == {"n": 1}
    finally:
        conn.close()


def test_serial_queue_runs_one_at_a_time(make_app: Any, names: dict[str, Any]) -> None:
    app = make_app()
    lock = threading.Lock()
    running = [0, 0]  # now, max
    order: list[int] = []

    @app.task(name=f"db-{names['tag']}", queue=names["queue"]("serial"), serial=True)
    def db(n: int) -> None:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.02)
        order.append(n)
        with lock:
            running[0] -= 1

    handles = [db.send(n=i) for i in range(6)]
    start(make_app, app, concurrency=4)
    start(make_app, app, concurrency=4)  # a second worker: single active consumer keeps it idle
    for h in handles:
        assert h.wait(5) == "succeeded"
    assert running[1] == 1
    assert order == list(range(6))


def test_killed_worker_loses_no_task(names: dict[str, Any], broker_port: int, tmp_path: Path) -> None:
    marker = tmp_path / "attempts"
    env = {**os.environ, "LEVERET_TASKS_URL": url(broker_port), "LEVERET_TASKS_QUEUE": names["queue"]("kill"),
           "LEVERET_TASKS_TASK": f"slow-{names['tag']}", "LEVERET_TASKS_MARKER": str(marker),
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    os.environ.update({k: env[k] for k in ("LEVERET_TASKS_URL", "LEVERET_TASKS_QUEUE", "LEVERET_TASKS_TASK")})
    sys.path.insert(0, str(TESTS))
    try:
        import importlib

        import tasks_app

        importlib.reload(tasks_app)
        app = tasks_app.app
        handle = tasks_app.slow.send(n=21)
        cmd = [sys.executable, "-m", "leveret", "worker", "tasks_app:app", "--concurrency", "1",
               "--log-level", "warning", "--state-dir", str(tmp_path / "state")]
        first = subprocess.Popen(cmd, cwd=TESTS, env=env)
        second = None
        try:
            deadline = time.monotonic() + 10
            while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert marker.exists(), "the first worker never started the task"
            deadline = time.monotonic() + 5  # the worker's events are not confirmed: poll for "started"
            while app.status(handle.id) != "started" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert app.status(handle.id) == "started"
            first.send_signal(signal.SIGKILL)
            first.wait(5)
            second = subprocess.Popen(cmd, cwd=TESTS, env=env)
            assert handle.wait(10) == "succeeded"
            assert len(marker.read_text().splitlines()) == 2
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
            app.close()
    finally:
        sys.path.remove(str(TESTS))
        for k in ("LEVERET_TASKS_URL", "LEVERET_TASKS_QUEUE", "LEVERET_TASKS_TASK"):
            os.environ.pop(k, None)


def test_dead_letters_replay(make_app: Any, names: dict[str, Any]) -> None:
    app = make_app()
    q = names["queue"]("replay")
    fixed = threading.Event()
    ran: list[int] = []

    @app.task(name=f"pay-{names['tag']}", queue=q, retry=Retry.ignore())
    def pay(n: int) -> None:
        ran.append(n)
        if not fixed.is_set():
            raise ConnectionError("bank down")

    start(make_app, app)
    handles = [pay.send(n=i) for i in range(2)]
    for h in handles:
        assert h.wait(5) == "gave_up"
    dead = app.dead_letters(q)
    assert sorted(d["id"] for d in dead) == sorted(h.id for h in handles)
    assert {d["task"] for d in dead} == {f"pay-{names['tag']}"}
    assert len(app.dead_letters(q)) == 2  # looking does not remove
    cli = [sys.executable, "-m", "leveret", "dead-letters", "--url", app.url, q]
    listed = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert sorted(d["id"] for d in json.loads(listed.stdout)) == sorted(h.id for h in handles)
    fixed.set()
    replayed = subprocess.run([*cli, "--replay"], capture_output=True, text=True, timeout=30)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == f"replayed 2 task(s) from {q}.dead to {q}"
    for h in handles:
        assert h.wait(5) == "succeeded"
    assert app.dead_letters(q) == []
    assert sorted(ran) == [0, 0, 1, 1]


def test_multicast_done_when_all_done(make_app: Any, names: dict[str, Any]) -> None:
    app = make_app()
    tag = names["tag"]
    slow_done = threading.Event()

    @app.task(name=f"resize-{tag}", queue=names["queue"]("resize"))
    def resize(image: int) -> None:
        time.sleep(0.3)
        slow_done.set()

    @app.task(name=f"notify-{tag}", queue=names["queue"]("notify"))
    def notify(image: int) -> None:
        return None

    start(make_app, app, concurrency=2)
    group = app.multicast([resize.request(image=1), notify.request(image=1)])
    assert len(group.ids) == 2
    assert group.wait(5) == "succeeded"
    assert slow_done.is_set()


def php_producer_source() -> str:
    doc = (Path(__file__).parents[2] / "docs/tasks.md").read_text()
    match = re.search(r"<!-- php-producer -->\n```php\n(.*?)```\n<!-- /php-producer -->", doc, re.S)
    assert match, "the PHP producer block of docs/tasks.md"
    return match.group(1)


def test_php_producer(make_app: Any, names: dict[str, Any], broker_port: int, tmp_path: Path) -> None:
    """The PHP example of docs/tasks.md, run as is: its message is processed by a Python worker."""
    php = shutil.which("php")
    if php is None or not Path("/usr/share/php/PhpAmqpLib/autoload.php").is_file():
        pytest.skip("php and php-amqplib are not installed (run `bash scripts/install-test-deps.sh`)")
    script = tmp_path / "producer.php"
    script.write_text(php_producer_source())
    app = make_app()
    q = names["queue"]("php")
    got: list[dict[str, Any]] = []

    @app.task(name=f"post-{names['tag']}", queue=q, retry=Retry.intervals([15, 30, 60, 300, 86400]))
    def post(user_id: int, text: str) -> None:
        got.append({"user_id": user_id, "text": text})

    start(make_app, app)
    proc = subprocess.run([php, str(script), "127.0.0.1", str(broker_port), q, f"post-{names['tag']}"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    task_id = proc.stdout.strip()
    deadline = time.monotonic() + 5
    while app.status(task_id) != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.status(task_id) == "succeeded"
    assert got == [{"user_id": 42, "text": "hello from PHP"}]


def test_retry_strategies_on_the_wire() -> None:
    assert Retry.from_wire({"strategy": "ignore"}) == Retry.ignore()
    assert Retry.from_wire({"strategy": "repeat", "retryLimit": 3}) == Retry.limit(3)
    assert Retry.from_wire({"strategy": "repeat", "retryInterval": [15, 30]}) == Retry.intervals([15, 30])
    assert Retry.from_wire({"strategy": "limit", "limit": 2, "delay": 1.5}) == Retry.limit(2, delay=1.5)
    assert Retry.from_wire({"strategy": "nonsense"}) is None and Retry.from_wire("x") is None
    for retry in (Retry.ignore(), Retry.limit(4, 2.0), Retry.intervals([15, 30, 60, 300, 86400])):
        assert Retry.from_wire(json.loads(json.dumps(retry.to_wire()))) == retry
    assert Retry.intervals([0.1, 0.2]).delays_ms == [100, 200]
    assert Retry.limit(2).next_delay(1) == 0.0 and Retry.limit(2).next_delay(2) is None


def test_producer_and_worker_with_different_status_retention(names: dict[str, Any], broker_port: int) -> None:
    """Two Apps with different status_ttl: on RabbitMQ the status stream keeps the max-age of whoever declared it
    first and the other App still reads and writes it."""
    producer, consumer = App(url(broker_port), status_ttl=60), App(url(broker_port), status_ttl=30)
    q = names["queue"]("ttl")
    try:
        for app in (producer, consumer):
            @app.task(name=f"t-{names['tag']}", queue=q)
            def t() -> int:
                return 1
        handle = producer.tasks[f"t-{names['tag']}"].send()
        worker = Worker(consumer).start()
        try:
            assert handle.wait(5) == "succeeded"
        finally:
            worker.stop()
    finally:
        producer.close()
        consumer.close()
