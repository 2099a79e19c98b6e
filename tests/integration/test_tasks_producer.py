"""The producer side of leveret.tasks (issue 11): the API (typed sends, options, eager mode, validation),
pipelined confirmed sends, task status without a queue per task (Leveret's status book / RabbitMQ's status
stream), revoke, and the App surviving broker restarts (SIGTERM and kill -9) without losing a confirmed task.

Status on Leveret needs the broker's status book (``amq.leveret.status``); the events these tests publish by
hand stand for a worker's, in the contract's format (docs/tasks.md, "Events")."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from conftest import RABBITMQ_PORT

from leveret.tasks import App, BrokerUnavailable, TaskError
from leveret.tasks.app import CONTROL_EXCHANGE, EVENTS_EXCHANGE, server_product

from amqphelp import drain
from serverproc import LeveretProcess


def url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def queue_name(broker_port: int) -> Iterator[str]:
    name = f"tp-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker_port))
        for q in (name, f"{name}.dead"):
            conn.channel().queue_delete(q)
        conn.close()


@pytest.fixture
def app_for(broker_port: int) -> Iterator[Any]:
    apps: list[App] = []

    def make(**kwargs: Any) -> App:
        app = App(url(broker_port), status_ttl=60, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def publish_event(port: int, ev: dict[str, Any]) -> None:
    """A worker's event, as the contract has it (transient JSON on leveret.events, key <task>.<state>)."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        body = {"attempt": 0, "ts": time.time(), "ttl": 60, **ev}
        conn.channel().basic_publish(EVENTS_EXCHANGE, f"{ev['task']}.{ev['state']}", json.dumps(body).encode(),
                                     pika.BasicProperties(content_type="application/json", message_id=ev["id"],
                                                          delivery_mode=1))
    finally:
        conn.close()


# --- the API, without a broker ------------------------------------------------------------------------------


def test_task_options_are_validated_and_stored() -> None:
    app = App(eager=True)

    @app.task(name="limited", rate_limit="100/m", soft_time_limit=1.5, time_limit=3, status=False, keep_result=False)
    def limited(x: int) -> int:
        return x

    assert (limited.rate_limit, limited.rate_per_second, limited.soft_time_limit, limited.time_limit) == (
        "100/m", 100 / 60, 1.5, 3)
    assert limited.status is False and limited.keep_result is False
    for good, per_second in (("10/s", 10.0), ("1000/h", 1000 / 3600), (" 2.5 / s ", 2.5)):
        assert app.task(name=f"ok-{good}", rate_limit=good)(lambda: None).rate_per_second == per_second
    for bad in ("10", "10/d", "fast", "0/s", "-1/s", "/s"):
        with pytest.raises(ValueError, match="rate_limit"):
            app.task(name="bad", rate_limit=bad)(lambda: None)
    with pytest.raises(ValueError, match="time_limit"):
        app.task(name="bad", time_limit=0)(lambda: None)
    assert "bad" not in app.tasks


def test_payload_is_bound_and_checked_at_send_time() -> None:
    app = App(eager=True)

    @app.task(name="shop.greet")
    def greet(name: str, times: int = 1, **extra: Any) -> str:
        return name * times + "".join(sorted(extra))

    assert greet.payload(("ab", 2), {}) == {"name": "ab", "times": 2}
    assert greet.payload(("ab",), {"colour": "red"}) == {"name": "ab", "colour": "red"}
    with pytest.raises(TypeError, match=r"shop\.greet"):
        greet.send(nom="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"shop\.greet"):
        greet.send("a", 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"shop\.greet"):
        greet.send_with({"times": 2})
    with pytest.raises(TypeError, match=r"shop\.greet"):
        greet.request()  # type: ignore[call-arg]
    assert greet("x", 3) == "xxx"  # still a plain function when called

    @app.task(name="varargs")
    def varargs(*items: int) -> int:
        return sum(items)

    with pytest.raises(TypeError, match="varargs"):
        varargs.send(1, 2)


def test_eager_mode_runs_inline() -> None:
    app = App("amqp://guest:guest@127.0.0.1:1/", eager=True)  # nothing listens there: no broker is used
    ran: list[int] = []

    @app.task(name="add")
    def add(x: int, y: int = 1) -> int:
        ran.append(x)
        return x + y

    @app.task(name="boom")
    def boom() -> None:
        raise KeyError("missing")

    @app.task(name="aio")
    async def aio(x: int) -> int:
        return 2 * x

    handle = add.send(1, y=2)
    assert ran == [1] and handle.status() == "succeeded" and handle.result() == 3
    assert handle.info()["result"] == 3 and app.result(handle.id) == 3
    assert add.delay(5).result() == 6
    assert aio.send(21).result() == 42
    failed = boom.send()
    assert failed.wait(1) == "gave_up"
    with pytest.raises(TaskError) as info:
        failed.result()
    assert info.value.remote_type == "KeyError" and info.value.task_id == failed.id
    assert app.status("nope") == "unknown"
    group = app.multicast([add.request(1), add.request(2)])
    assert group.status() == "succeeded"
    assert add.call_sync(2, timeout=1) == 3
    with pytest.raises(TaskError):
        boom.call_sync()
    app.close()


async def test_eager_mode_from_async_code() -> None:
    app = App(eager=True)

    @app.task(name="aio")
    async def aio(x: int) -> int:
        return 2 * x

    handle = await aio.send_async(4)
    assert await handle.result_async() == 8 and await handle.status_async() == "succeeded"


def test_middleware_list() -> None:
    app = App(eager=True)

    class Timing:
        def before_task(self, ctx: Any) -> None:
            pass

    m = Timing()
    app.add_middleware(m)
    assert app.middleware == [m]


# --- against a broker ----------------------------------------------------------------------------------------


def test_sends_are_confirmed_and_pipelined(app_for: Any, queue_name: str, broker_port: int) -> None:
    """Many threads send at once on the App's one channel; every send that returned is in the queue, with the
    task's name as ``type`` and its id as ``message_id``, and nothing is declared per task."""
    app = app_for()

    @app.task(name="tp.work", queue=queue_name, status=False)
    def work(i: int) -> None:
        return None

    assert server_product(app._link.run_sync(app._link.session(5)).conn) == (
        "RabbitMQ" if broker_port == RABBITMQ_PORT else "Leveret")
    ids: list[str] = []
    lock = threading.Lock()

    def sender(base: int) -> None:
        for i in range(50):
            handle = work.send(base + i)
            with lock:
                ids.append(handle.id)

    threads = [threading.Thread(target=sender, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 200
    got = drain(broker_port, queue_name)
    assert sorted(p.message_id for p, _ in got) == sorted(ids)
    assert {p.type for p, _ in got} == {"tp.work"} and {p.delivery_mode for p, _ in got} == {2}
    body = json.loads(got[0][1])
    assert body["metadata"]["task"] == "tp.work" and body["metadata"]["id"] == got[0][0].message_id
    # No status queue per task (the old leveret.status.<id>).
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker_port))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            conn.channel().queue_declare(f"leveret.status.{ids[0]}", passive=True)
    finally:
        conn.close()


def test_status_record_from_events(app_for: Any, queue_name: str, broker_port: int) -> None:
    """queued at send, then whatever the (hand-written) worker events say; result, error, unknown ids.
    On Leveret this reads the broker's status book (needs it: the status-book branch)."""
    app = app_for()

    @app.task(name="tp.add", queue=queue_name)
    def add(x: int, y: int) -> int:
        return x + y

    handle = add.send(1, 2)
    assert handle.status() == "queued"
    assert app.status(uuid.uuid4().hex) == "unknown"
    info = handle.info()
    assert (info["id"], info["task"], info["queue"], info["attempt"]) == (handle.id, "tp.add", queue_name, 0)
    base = {"id": handle.id, "task": "tp.add", "queue": queue_name}
    publish_event(broker_port, {**base, "state": "started", "worker": "host:1"})
    wait_until(lambda: handle.status() == "started", what="started")
    publish_event(broker_port, {**base, "state": "succeeded", "result": 3})
    assert handle.wait(5) == "succeeded"
    assert handle.result(5) == 3 and app.result(handle.id, 1) == 3
    assert handle.info()["finished"] is not None

    failing = add.send(x=1, y=0)
    base = {"id": failing.id, "task": "tp.add", "queue": queue_name}
    publish_event(broker_port, {**base, "state": "retrying", "next_attempt_at": time.time() + 60,
                                "error": {"type": "ZeroDivisionError", "message": "no", "traceback": "tb"}})
    publish_event(broker_port, {**base, "state": "started", "attempt": 1})
    publish_event(broker_port, {**base, "state": "gave_up", "attempt": 1,
                                "error": {"type": "ZeroDivisionError", "message": "still no", "traceback": "tb"}})
    with pytest.raises(TaskError) as err:
        failing.result(5)
    assert (err.value.remote_type, err.value.remote_message, err.value.task_id) == (
        "ZeroDivisionError", "still no", failing.id)
    # Readable from another App, several at once (one query on Leveret).
    other = app_for()
    assert other.status_info(failing.id)["attempt"] == 1
    statuses = other._link.run_sync(_statuses(other, [handle.id, failing.id, "nope"]))
    assert statuses == ["succeeded", "gave_up", "unknown"]


async def _statuses(app: App, ids: list[str]) -> list[str]:
    import asyncio

    return [r["state"] for r in await asyncio.gather(*(app._status(i) for i in ids))]


def test_status_false_means_no_record(app_for: Any, queue_name: str, broker_port: int) -> None:
    """A queue whose tasks all have status=False: no "queued" record (no event on RabbitMQ, no
    x-leveret-status on Leveret)."""
    app = app_for()

    @app.task(name="tp.quiet", queue=queue_name, status=False)
    def quiet() -> None:
        return None

    assert "x-leveret-status" not in app.queue_arguments(queue_name, "Leveret")
    handle = quiet.send()
    assert handle.status() == "unknown"


def test_timeouts_name_the_task(app_for: Any, queue_name: str) -> None:
    app = app_for()

    @app.task(name="tp.slow", queue=queue_name)
    def slow() -> None:
        return None

    handle = slow.send()
    with pytest.raises(TimeoutError, match=rf"tp\.slow \({handle.id}\).*0\.2 s"):
        handle.wait(0.2)
    with pytest.raises(TimeoutError, match=r"tp\.slow \(\w+\)"):
        slow.call_sync(timeout=0.2)


def test_revoke(app_for: Any, queue_name: str, broker_port: int) -> None:
    """revoke() tells the workers (fanout leveret.control) and makes the record final."""
    app = app_for()

    @app.task(name="tp.revoked", queue=queue_name)
    def victim() -> None:
        return None

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker_port))
    try:
        ch = conn.channel()
        ch.exchange_declare(CONTROL_EXCHANGE, "fanout", durable=True)
        control = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(control, CONTROL_EXCHANGE)
        handle = victim.send()
        app.revoke(handle.id)
        wait_until(lambda: ch.queue_declare(control, passive=True).method.message_count == 1, what="control")
        _, _, body = ch.basic_get(control, auto_ack=True)
        assert json.loads(body)["revoke"] == handle.id
    finally:
        conn.close()
    assert handle.wait(5) == "revoked"
    with pytest.raises(TaskError, match="revoked"):
        handle.result(1)


def test_cli_status(app_for: Any, queue_name: str, broker_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    from leveret.cli import main as cli_main

    app = app_for()

    @app.task(name="tp.cli", queue=queue_name)
    def noop() -> None:
        return None

    handle = noop.send()
    assert cli_main(["status", handle.id, "--url", url(broker_port)]) == 0
    assert capsys.readouterr().out.strip() == "queued"
    assert cli_main(["status", handle.id, "--url", url(broker_port), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "tp.cli"


# --- restarts -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_app_survives_broker_restart(tmp_path: Path, sig: int) -> None:
    """Sends run in a thread while the broker is stopped (SIGTERM) or killed (kill -9) and started again on
    the same port: a send during the outage raises BrokerUnavailable naming the URL after its timeout, the
    App reconnects by itself, and every send that returned is in the queue after the restart."""
    broker = LeveretProcess(tmp_path / "data").start()
    app = App(url(broker.port), name="restart", send_timeout=1.5)

    @app.task(name="tp.restart", queue="tp-restart", status=False)
    def work(i: int) -> None:
        return None

    confirmed: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def producer() -> None:
        i = 0
        while not stop.is_set() and i < 5000:
            try:
                confirmed.append(work.send(i).id)
            except BrokerUnavailable as exc:
                errors.append(exc)
            i += 1

    thread = threading.Thread(target=producer)
    try:
        work.send(-1)
        thread.start()
        wait_until(lambda: len(confirmed) >= 50, what="50 sends before the stop")
        if sig == signal.SIGKILL:
            broker.kill()
        else:
            broker.signal(sig)
            broker.wait(20)
        wait_until(lambda: any("within 1.5 s" in str(e) for e in errors), what="a send timing out in the outage")
        assert all(url(broker.port) in str(e) for e in errors)
        before = len(confirmed)
        broker.start()  # the same port and data dir
        wait_until(lambda: len(confirmed) >= before + 50, timeout=30, what="sends working again")
        stop.set()
        thread.join(30)
        work.send(-2)  # the same App, no new one
        got = {p.message_id for p, _ in drain(broker.port, "tp-restart")}
        lost = [task_id for task_id in confirmed if task_id not in got]
        assert not lost, f"{len(lost)} of {len(confirmed)} confirmed tasks lost"
    finally:
        stop.set()
        thread.join(30)
        app.close()
        broker.stop()


@pytest.mark.slow
def test_app_redeclares_its_topology_after_a_restart(tmp_path: Path) -> None:
    """A broker that comes back without the queue (a new data dir): the App declares it again before its next
    send, so the task is not dropped as unroutable."""
    broker = LeveretProcess(tmp_path / "one").start()
    app = App(url(broker.port), name="redeclare", send_timeout=5)

    @app.task(name="tp.redeclare", queue="tp-redeclare", status=False)
    def work(i: int) -> None:
        return None

    try:
        work.send(1)
        broker.stop()
        broker.data_dir = tmp_path / "two"
        broker.start()
        handle = work.send(2)
        assert [p.message_id for p, _ in drain(broker.port, "tp-redeclare")] == [handle.id]
    finally:
        app.close()
        broker.stop()


def test_send_timeout_when_the_broker_is_down() -> None:
    app = App("amqp://guest:guest@127.0.0.1:1/", send_timeout=0.5)

    @app.task(name="tp.down")
    def down() -> None:
        return None

    try:
        with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1/.*0\.5 s"):
            down.send()
        assert isinstance(BrokerUnavailable("x"), ConnectionError)
    finally:
        app.close()
