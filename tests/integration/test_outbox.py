"""leveret.outbox: sends that never wait for a broker, and a forwarder that gets every message to every
destination through outages, crashes and restarts. Brokers are real Leveret child processes (serverproc) so
they can be stopped and started on the same port; the forwarder runs in a thread (``Forwarder.start()``) or
as ``leveret forward`` in a child process where it is killed."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.cli import main as cli_main
from leveret.outbox import Forwarder, Outbox, OutboxError, PostgresOutbox, open_outbox
from leveret.outbox.message import decode_properties
from leveret.tasks import App, Worker

from pghelp import postgres_db, postgres_url  # noqa: F401 - fixtures
from serverproc import LeveretProcess
from waiting import hold, wait_for

pytestmark = pytest.mark.timeout(180)


def url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    return wait_for(check, timeout, f"{what} not reached after {timeout} s", interval=0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the outbox is: an SQLite file, or a fresh PostgreSQL database (skipped when there is none). The
    tests that take it run on both storages."""
    if request.param == "sqlite":
        return str(tmp_path / "o.db")
    return str(request.getfixturevalue("postgres_db"))


@pytest.fixture(params=["amqp", "http", "stomp"])
def transport(request: pytest.FixtureRequest) -> str:
    """How the forwarder publishes: AMQP with confirms, the management API's publish endpoint, or STOMP SENDs
    with receipts."""
    return str(request.param)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_url(transport: str, amqp_port: int, http_port: int | None = None, stomp_port: int | None = None) -> str:
    if transport == "http":
        return f"http://guest:guest@127.0.0.1:{http_port}/"
    if transport == "stomp":
        return f"stomp://guest:guest@127.0.0.1:{stomp_port}/"
    return url(amqp_port)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Callable[[str], LeveretProcess]]:
    made: list[LeveretProcess] = []

    def make(name: str, env: dict[str, str] | None = None) -> LeveretProcess:
        proc = LeveretProcess(tmp_path / f"broker-{name}", env=env).start()
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()


def channel(port: int) -> Any:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)).channel()


def declare(port: int, *queues: str, **arguments: Any) -> None:
    ch = channel(port)
    for queue in queues:
        ch.queue_declare(queue, durable=True, arguments=arguments or None)
    ch.connection.close()


def drain(port: int, queue: str, expect: int, timeout: float = 30.0) -> list[bytes]:
    """Every message of ``queue`` once ``expect`` are there (and a moment more, to see extra ones)."""
    ch = channel(port)
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    while time.monotonic() < deadline:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            got.append(body)
            continue
        if len(got) >= expect:
            quiet_until = quiet_until or time.monotonic() + 0.5
            if time.monotonic() > quiet_until:
                break
        time.sleep(0.02)
    ch.connection.close()
    return got


def outbox_ids(path: Path) -> set[str]:
    """The message ids stored in an outbox file, read with plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        return {decode_properties(h).message_id for (h,) in conn.execute("SELECT header FROM messages")}
    finally:
        conn.close()


def forward_process(path: Path, *brokers: str, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    args = [a for b in brokers for a in ("--broker", b)]
    return subprocess.Popen([sys.executable, "-m", "leveret", "forward", "--outbox", str(path), *args,
                             "--report-interval", "1", *extra], stderr=subprocess.PIPE, text=True)


# --- the outbox alone -----------------------------------------------------------------------------------------


def test_send_saves_locally_and_checks_its_arguments(tmp_path: Path, target: str) -> None:
    path = tmp_path / "sub" / "outbox.db" if target.endswith(".db") else target
    with open_outbox(path) as outbox:
        first = outbox.send("", "q", b"\x00\xffbinary", properties={"headers": {"k": b"\x01", "n": 5}, "priority": 7})
        second = outbox.send("ex", "key", b"two", properties={"message_id": "mine", "type": "t"},
                             destinations=["a", "b"])
        assert second == "mine" and len(first) == 32
        with pytest.raises(TypeError):
            outbox.send("", "q", "text")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not AMQP basic properties"):
            outbox.send("", "q", b"x", properties={"colour": "red"})
        with pytest.raises(ValueError, match="bad AMQP properties"):
            outbox.send("", "q", b"x", properties={"priority": 300})
        with pytest.raises(ValueError, match="bad AMQP properties"):
            outbox.send("", "q", b"x", properties={"headers": {"x": object()}})
        with pytest.raises(ValueError):
            outbox.send("", "q" * 256, b"x")
        with pytest.raises(ValueError):
            outbox.send("", "q", b"x", destinations=[])
        status = outbox.status()
        assert {k: (v["pending"], v["parked"]) for k, v in status.items()} == {"default": (1, 0), "a": (1, 0),
                                                                                "b": (1, 0)}
        assert outbox.count() == 2
    with open_outbox(path) as outbox:  # still there after closing
        rows = outbox.fetch("default", 0, 10)
        assert [r.body for r in rows] == [b"\x00\xffbinary"]
        props = rows[0].properties
        assert props.message_id == first and props.delivery_mode == 2 and props.priority == 7
        assert props.headers == {"x-deduplication-header": first, "k": bytearray(b"\x01"), "n": 5}
    with pytest.raises(OutboxError, match="closed"):
        outbox.send("", "q", b"x")
    if isinstance(outbox, PostgresOutbox):
        return
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(OutboxError, match="not a Leveret outbox"):
        Outbox(other)


async def test_send_async_and_send_many(target: str) -> None:
    with open_outbox(target, synchronous="NORMAL") as outbox:
        ids = [await outbox.send_async("", "q", b"%d" % i) for i in range(5)]
        ids += outbox.send_many([{"exchange": "", "routing_key": "q", "body": b"%d" % i} for i in range(5, 8)])
        assert len(set(ids)) == 8
        assert [r.body for r in outbox.fetch("default", 0, 100)] == [b"%d" % i for i in range(8)]


def test_concurrent_senders_share_commits(tmp_path: Path) -> None:
    threads, each = 16, 100
    with Outbox(tmp_path / "o.db") as outbox:
        def sender(t: int) -> None:
            for i in range(each):
                outbox.send("", "q", f"{t}:{i}".encode())

        workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        bodies = [r.body.decode() for r in outbox.fetch("default", 0, threads * each + 1)]
        assert len(bodies) == threads * each
        for t in range(threads):  # each thread's messages in its order
            assert [b for b in bodies if b.startswith(f"{t}:")] == [f"{t}:{i}" for i in range(each)]
        assert outbox.commits < threads * each  # senders shared commits (group commit)


def test_outbox_survives_kill9_of_the_sending_process(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    script = textwrap.dedent(f"""
        import sys, threading
        from leveret.outbox import Outbox
        outbox = Outbox({str(path)!r})
        lock = threading.Lock()
        def send(t):
            for i in range(100000):
                mid = outbox.send("", "q", b"x" * 100)
                with lock:
                    sys.stdout.write(mid + "\\n")
                    sys.stdout.flush()
        for t in range(4):
            threading.Thread(target=send, args=(t,), daemon=True).start()
        threading.Event().wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    returned: list[str] = []
    for line in proc.stdout:
        returned.append(line)
        if len(returned) >= 500:
            break
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    returned += rest.splitlines(keepends=True)
    done = {line.strip() for line in returned if line.endswith("\n")}  # a torn last line was not reported
    assert len(done) >= 500
    stored = outbox_ids(path)
    assert done <= stored  # everything send() returned for is in the file
    with Outbox(path) as outbox:  # and the file opens and works after the crash
        outbox.send("", "q", b"after")
        assert outbox.count() == len(stored) + 1


# --- forwarding -----------------------------------------------------------------------------------------------


def test_sends_while_the_broker_is_down_arrive_once_in_order(target: str, transport: str, brokers: Any) -> None:
    http_port, stomp_port = free_port(), free_port()
    broker = brokers("a", env={"LEVERET_HTTP_PORT": str(http_port), "LEVERET_STOMP_PORT": str(stomp_port)})
    declare(broker.port, "work")
    broker.stop()
    outbox = open_outbox(target)
    forwarder = Forwarder(outbox, [broker_url(transport, broker.port, http_port, stomp_port)], backoff_initial=0.1,
                          backoff_max=0.5).start()
    try:
        for i in range(300):
            outbox.send("", "work", b"%d" % i)  # returns: nothing waits for the broker
        wait_until(lambda: forwarder.snapshot()["default"]["error"], what="the forwarder knows the broker is down")
        assert outbox.status()["default"]["pending"] == 300
        broker.start()
        wait_until(lambda: outbox.count() == 0, what="outbox empty")
        for i in range(300, 400):
            outbox.send("", "work", b"%d" % i)
        wait_until(lambda: outbox.count() == 0, what="outbox empty")
    finally:
        forwarder.stop()
        outbox.close()
    assert drain(broker.port, "work", 400) == [b"%d" % i for i in range(400)]


def test_forwarder_killed_mid_batch_loses_nothing(target: str, brokers: Any) -> None:
    broker = brokers("a")
    declare(broker.port, "work")
    path = target
    total = 20000
    with open_outbox(path) as outbox:
        outbox.send_many([{"exchange": "", "routing_key": "work", "body": b"%d" % i} for i in range(total)])
    proc = forward_process(path, url(broker.port), extra=("--window", "256", "--lease", "2"))
    try:
        with open_outbox(path) as outbox:
            wait_until(lambda: outbox.count() < total - 200, what="forwarding started")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait(10)
    with open_outbox(path) as outbox:
        left = outbox.count()
    assert 0 < left < total  # killed in the middle
    proc = forward_process(path, url(broker.port), extra=("--lease", "2"))
    try:
        with open_outbox(path) as outbox:
            # 20,000 messages through a child process: a bound for a machine loaded by parallel tests
            wait_until(lambda: outbox.count() == 0, timeout=90, what="outbox empty after restart")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "forwarder stopped" in err
    finally:
        proc.kill()
    got = drain(broker.port, "work", total)
    assert set(got) == {b"%d" % i for i in range(total)}
    assert len(got) - total <= 256  # duplicates only of the unconfirmed window in flight at the kill
    first_seen = list(dict.fromkeys(got))
    if not target.startswith("postgresql://"):  # a shared outbox: the dead one's leased rows go once its lease ends
        assert first_seen == [b"%d" % i for i in range(total)]  # in order


def test_multicast_one_destination_down(target: str, brokers: Any) -> None:
    a, b = brokers("a"), brokers("b")
    declare(a.port, "work")
    declare(b.port, "work")
    b.stop()
    outbox = open_outbox(target)
    forwarder = Forwarder(outbox, {"a": url(a.port), "b": url(b.port)}, backoff_initial=0.1,
                          backoff_max=0.5).start()
    try:
        for i in range(100):
            outbox.send("", "work", b"both-%d" % i, destinations=["a", "b"])
            if i % 2:
                outbox.send("", "work", b"a-%d" % i, destinations="a")
        wait_until(lambda: outbox.status().get("a", {}).get("pending", 0) == 0, what="a done")
        status = outbox.status()
        assert status["b"]["pending"] == 100 and "a" not in status
        assert outbox.count() == 100  # kept for b only
        b.start()
        wait_until(lambda: outbox.count() == 0, what="outbox empty")
    finally:
        forwarder.stop()
        outbox.close()
    expect_a = [body for i in range(100) for body in ([b"both-%d" % i] + ([b"a-%d" % i] if i % 2 else []))]
    assert drain(a.port, "work", len(expect_a)) == expect_a
    assert drain(b.port, "work", 100) == [b"both-%d" % i for i in range(100)]


def test_forward_to_leveret_and_rabbitmq(target: str, broker_port: int, unique: str) -> None:
    """Properties arrive as sent; unroutable and refused messages are parked, the rest delivered in order
    (the same on Leveret and RabbitMQ)."""
    ch = channel(broker_port)
    ch.queue_declare(unique, auto_delete=False, arguments={"x-max-priority": 10})
    ch.exchange_declare(f"{unique}-internal", "direct", internal=True, auto_delete=True)
    outbox = open_outbox(target)
    outbox.send("", unique, b"\x00first", properties={
        "content_type": "application/x-test", "content_encoding": "gzip", "headers": {"s": "x", "n": 7, "b": b"\xff",
                                                                                    "l": [1, "a"], "t": {"k": True}},
        "priority": 4, "correlation_id": "c1", "reply_to": "r1", "expiration": 60000, "message_id": "m1",
        "timestamp": 1_700_000_000, "type": "kind", "app_id": "app"})
    outbox.send("", f"{unique}-nowhere", b"unroutable")
    outbox.send(f"{unique}-internal", "k", b"refused")
    for i in range(20):
        outbox.send("", unique, b"%d" % i)
    forwarder = Forwarder(outbox, [url(broker_port)], backoff_initial=0.05, backoff_max=0.2,
                          unroutable_retry=3600).start()
    try:
        wait_until(lambda: outbox.status().get("default", {}).get("pending") == 0, what="settled")
        assert outbox.status()["default"]["parked"] == 2
        _, props, body = ch.basic_get(unique, auto_ack=True)
        assert body == b"\x00first"
        assert (props.content_type, props.content_encoding, props.priority, props.correlation_id, props.reply_to,
                props.expiration, props.message_id, props.timestamp, props.type, props.app_id,
                props.delivery_mode) == ("application/x-test", "gzip", 4, "c1", "r1", "60000", "m1", 1_700_000_000,
                                         "kind", "app", 2)
        assert props.headers == {"x-deduplication-header": "m1", "s": "x", "n": 7, "b": b"\xff", "l": [1, "a"],
                                 "t": {"k": True}}
        assert drain(broker_port, unique, 20) == [b"%d" % i for i in range(20)]
    finally:
        forwarder.stop()
        outbox.close()
        ch.queue_delete(unique)
        ch.connection.close()


def test_unroutable_is_parked_then_retried(target: str, brokers: Any) -> None:
    broker = brokers("a")
    path = target
    outbox = open_outbox(path)
    forwarder = Forwarder(outbox, [url(broker.port)], unroutable_retry=0.5).start()
    try:
        outbox.send("", "later", b"1")
        outbox.send("no-such-exchange", "k", b"2")
        outbox.send("", "later", b"3", mandatory=False)  # dropped by the broker, as asked
        wait_until(lambda: outbox.status().get("default", {}).get("parked") == 2, what="parked")
        wait_until(lambda: outbox.count() == 2, what="3 confirmed and deleted")  # may come after 2's parking
        assert cli_main(["outbox", "status", str(path)]) == 0
        declare(broker.port, "later")
        wait_until(lambda: outbox.status().get("default", {}).get("parked") == 1, what="retried")
        assert "no exchange" in outbox.status()["default"]["last_error"]
    finally:
        forwarder.stop()
        outbox.close()
    assert drain(broker.port, "later", 1) == [b"1"]


def test_a_message_that_closes_the_channel_is_parked(target: str, brokers: Any) -> None:
    broker = brokers("a")
    declare(broker.port, "work")
    ch = channel(broker.port)
    ch.exchange_declare("internal-x", "direct", durable=True, internal=True)  # publishing to it: 403
    ch.connection.close()
    outbox = open_outbox(target)
    forwarder = Forwarder(outbox, [url(broker.port)], backoff_initial=0.05, backoff_max=0.2,
                          unroutable_retry=3600).start()
    try:
        outbox.send("", "work", b"before")
        outbox.send("internal-x", "k", b"refused")
        for i in range(3):
            outbox.send("", "work", b"after-%d" % i)
        wait_until(lambda: outbox.status().get("default", {}).get("pending") == 0, what="all settled")
        status = outbox.status()["default"]
        assert status["parked"] == 1 and "ACCESS_REFUSED" in status["last_error"].upper()
    finally:
        forwarder.stop()
        outbox.close()
    got = drain(broker.port, "work", 4)
    # "before" may come twice: its confirm can be lost with the channel (at-least-once after a channel error)
    assert list(dict.fromkeys(got)) == [b"before", b"after-0", b"after-1", b"after-2"] and len(got) <= 5


def test_nacks_are_sent_again_in_order(target: str, transport: str, brokers: Any) -> None:
    """A full reject-publish queue refuses: AMQP nacks, HTTP answers 400 "rejected", Leveret's STOMP an ERROR
    "Message refused" (no RECEIPT); each is kept and sent again after a back-off, in order, none lost."""
    http_port, stomp_port = free_port(), free_port()
    broker = brokers("a", env={"LEVERET_HTTP_PORT": str(http_port), "LEVERET_STOMP_PORT": str(stomp_port)})
    declare(broker.port, "small", **{"x-max-length": 5, "x-overflow": "reject-publish"})
    outbox = open_outbox(target)
    forwarder = Forwarder(outbox, [broker_url(transport, broker.port, http_port, stomp_port)], backoff_initial=0.1,
                          backoff_max=0.3).start()
    try:
        for i in range(12):
            outbox.send("", "small", b"%d" % i)
        wait_until(lambda: outbox.count() == 7, what="5 accepted, 7 nacked")
        got: list[bytes] = []
        ch = channel(broker.port)
        deadline = time.monotonic() + 30
        while len(got) < 12 and time.monotonic() < deadline:
            method, _, body = ch.basic_get("small", auto_ack=True)
            if method is None:
                time.sleep(0.05)
            else:
                got.append(body)
        ch.connection.close()
        assert got == [b"%d" % i for i in range(12)]
        wait_until(lambda: outbox.count() == 0, what="outbox empty")
    finally:
        forwarder.stop()
        outbox.close()


def test_through_connection_blocked(target: str, brokers: Any) -> None:
    broker = brokers("a", env={"LEVERET_MEMORY_HIGH_WATERMARK": "200000"})
    declare(broker.port, "big")
    outbox = open_outbox(target)
    forwarder = Forwarder(outbox, [url(broker.port)]).start()
    try:
        for i in range(60):  # 600 KB of transient bodies: the broker blocks its publishers past 200 KB
            outbox.send("", "big", b"%03d" % i + b"x" * 10_000, properties={"delivery_mode": 1})
        wait_until(lambda: broker.wait_for_log("memory alarm set", 0.1), what="memory alarm")
        hold(0.5, "while the alarm is on, the messages must NOT be forwarded (held back, not lost)")
        assert outbox.count() > 0
        got = [body[:3] for body in drain(broker.port, "big", 60, timeout=60)]
        assert got == [b"%03d" % i for i in range(60)]
        assert outbox.count() == 0
    finally:
        forwarder.stop()
        outbox.close()


def test_cli_status_and_sigterm(tmp_path: Path, target: str, brokers: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = target
    with open_outbox(path) as outbox:
        outbox.send("", "q", b"x", destinations=["eu", "us"])
    assert cli_main(["forward", "--status", "--outbox", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 message(s)" in out and "eu" in out and "us" in out
    assert cli_main(["outbox", "status", str(path), "--json"]) == 0
    assert '"pending": 1' in capsys.readouterr().out
    assert cli_main(["outbox", "status", str(tmp_path / "missing.db")]) == 1
    broker = brokers("a")
    declare(broker.port, "q")
    proc = forward_process(path, f"eu={url(broker.port)}")  # no broker for "us": reported, kept
    try:
        with open_outbox(path) as outbox:
            wait_until(lambda: "eu" not in outbox.status(), what="eu forwarded")
            assert outbox.status()["us"]["pending"] == 1
        proc.send_signal(signal.SIGTERM)  # the forwarder reports once more as it stops
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "no --broker for" in err and "forwarding the outbox" in err
    assert "guest:guest" not in err  # no password in the log
    assert drain(broker.port, "q", 1) == [b"x"]


# --- the task layer -----------------------------------------------------------------------------------------


def test_task_layer_sends_through_the_outbox(tmp_path: Path, brokers: Any) -> None:
    broker = brokers("a")
    app = App(url(broker.port), name="obt", status_ttl=60, outbox=tmp_path / "tasks.db")
    done: list[int] = []

    @app.task(name="obtask", queue="ob-work")
    def work(n: int) -> int:
        done.append(n)
        return n

    broker.stop()  # sending needs no broker
    handles = [work.send(n=n) for n in range(5)]
    group = app.multicast([work.request(n=5), work.request(n=6)])
    assert app.outbox is not None and app.outbox.count() == 7
    broker.start()
    forwarder = Forwarder(app.outbox, [url(broker.port)], unroutable_retry=0.5, backoff_initial=0.1).start()
    worker = None
    try:
        # No queue yet: the forwarder parks the tasks until a worker declares it, then sends them again.
        wait_until(lambda: app.outbox.status().get("default", {}).get("parked", 0) > 0, what="parked")  # type: ignore[union-attr]
        worker = Worker(app, concurrency=2).start()
        for handle in handles:
            assert handle.wait(30) == "succeeded"
        assert group.wait(30) == "succeeded"
        assert sorted(done) == list(range(7))
        wait_until(lambda: app.outbox.count() == 0, what="outbox empty")  # type: ignore[union-attr]
    finally:
        if worker is not None:
            worker.stop()
        forwarder.stop()
        app.close()


def test_task_layer_sends_through_a_postgresql_outbox(postgres_db: str, brokers: Any) -> None:  # noqa: F811
    """``App(url, outbox="postgresql://...")``: the tasks go to the shared PostgreSQL outbox (open_outbox)."""
    broker = brokers("a")
    app = App(url(broker.port), name="obpg", status_ttl=60, outbox=postgres_db)
    done: list[int] = []

    @app.task(name="obpgtask", queue="obpg-work")
    def work(n: int) -> int:
        done.append(n)
        return n

    worker = Worker(app, concurrency=2).start()  # declares the queue
    handles = [work.send(n=n) for n in range(3)]
    assert isinstance(app.outbox, PostgresOutbox) and app.outbox.count() == 3
    forwarder = Forwarder(app.outbox, [url(broker.port)], backoff_initial=0.1).start()
    try:
        for handle in handles:
            assert handle.wait(30) == "succeeded"
        assert sorted(done) == [0, 1, 2]
    finally:
        forwarder.stop()
        worker.stop()
        app.close()


def test_forwarder_waits_for_the_lock_of_another(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    first = Forwarder(path, ["amqp://guest:guest@127.0.0.1:1/"], backoff_max=0.2).start()
    second = Forwarder(path, ["amqp://guest:guest@127.0.0.1:1/"], backoff_max=0.2)
    thread = threading.Thread(target=lambda: __import__("asyncio").run(second.run()), daemon=True)
    thread.start()
    hold(1.0, "the second forwarder must NOT start while the first one holds the lock")
    assert not second._ready.is_set()
    first.stop()
    wait_until(second._ready.is_set, 10, "second took over")
    # really running (_ready is also set when run() ends, e.g. if it crashed): it holds the lock and the outbox
    assert thread.is_alive() and second._error is None
    assert second.holds_lock() and second.outbox is not None
    second.request_stop()
    thread.join(10)
    assert not thread.is_alive()
    assert os.path.exists(str(path) + ".forwarder.lock")


def test_a_failed_local_delete_does_not_send_confirmed_messages_again(target: str, brokers: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The broker confirmed them but deleting them from the outbox fails for a while (disk full): they are
    kept in memory and deleted later on the same connection, not sent again after a reconnection."""
    broker = brokers("a")
    declare(broker.port, "work")

    base: Any = PostgresOutbox if target.startswith("postgresql://") else Outbox
    fails = [3]

    class DiskFullOutbox(base):  # type: ignore[misc,valid-type]
        async def mark_done_async(self, destination: str, ids: Any) -> None:
            if fails[0] > 0:
                fails[0] -= 1
                raise OutboxError("not saved: database or disk is full")
            await super().mark_done_async(destination, ids)

    outbox = DiskFullOutbox(target)
    outbox.send_many([{"exchange": "", "routing_key": "work", "body": b"%d" % i} for i in range(10)])
    forwarder = Forwarder(outbox, [url(broker.port)], backoff_initial=0.1, backoff_max=0.3).start()
    try:
        wait_until(lambda: outbox.count() == 0, what="outbox empty")
        for i in range(10, 15):
            outbox.send("", "work", b"%d" % i)
        wait_until(lambda: outbox.count() == 0, what="outbox empty")
    finally:
        forwarder.stop()
        outbox.close()
    assert fails == [0]
    assert drain(broker.port, "work", 15) == [b"%d" % i for i in range(15)]
    assert forwarder.snapshot()["default"]["forwarded"] == 15
    errors = [r.getMessage() for r in caplog.records if r.name == "leveret.outbox.forwarder"
              and r.levelname == "ERROR"]
    assert errors and all("local outbox error" in e and "disk is full" in e for e in errors), errors
    assert not any(f"127.0.0.1:{broker.port}" in r.getMessage() and "retrying" in r.getMessage()
                   for r in caplog.records)  # never reconnected to the broker because of it


def test_a_delayed_task_is_not_delayed_by_its_wait_in_the_outbox(tmp_path: Path) -> None:
    """x-delay is computed when the forwarder publishes, from the due time saved with the message."""
    from leveret.outbox.frames import Outgoing as _Outgoing

    app = App("amqp://guest:guest@127.0.0.1:1/", name="obd", outbox=tmp_path / "tasks.db")

    @app.task(name="obdelayed", queue="obd-work")
    def work() -> None:
        pass

    try:
        before = time.time()
        work.send_with({}, delay=10)
        assert app.outbox is not None
        (row,) = app.outbox.fetch("default", 0, 10)
        due = row.properties.headers["x-leveret-due"]
        assert before * 1000 + 10_000 - 1 <= due <= time.time() * 1000 + 10_000 + 1
        published = _Outgoing(row, now=due / 1000 - 4).properties.headers  # forwarded 6 s after the send
        assert published["x-delay"] == 4000
        assert "x-leveret-due" not in published
        assert _Outgoing(row, now=due / 1000 + 60).properties.headers["x-delay"] == 0  # overdue: at once
    finally:
        app.close()


def test_a_failed_connection_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """aio_pika.connect() drops a connection that failed to open without closing it (its __del__ then may
    leave a 'coroutine Connection.close was never awaited'): the forwarder closes it."""
    import aio_pika

    made: list[Any] = []
    init = aio_pika.Connection.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(aio_pika.Connection, "__init__", recording_init)
    forwarder = Forwarder(tmp_path / "o.db", ["amqp://guest:guest@127.0.0.1:1/"], backoff_initial=0.05,
                          backoff_max=0.1).start()
    try:
        wait_until(lambda: forwarder.snapshot()["default"]["error"], 10, "a failed connection")
    finally:
        forwarder.stop()
    assert made and all(conn.is_closed for conn in made)


# --- the file gives its space back -------------------------------------------------------------------------------


def test_the_file_shrinks_after_a_backlog_drains(tmp_path: Path, brokers: Any) -> None:
    broker = brokers("a")
    declare(broker.port, "work")
    path = tmp_path / "o.db"
    outbox = Outbox(path, synchronous="NORMAL")
    for _ in range(8):
        outbox.send_many([{"exchange": "", "routing_key": "work", "body": os.urandom(2000)} for _ in range(500)])
    outbox.shrink()  # a checkpoint: the backlog is in the main file
    full = path.stat().st_size
    assert full > 8_000_000
    forwarder = Forwarder(outbox, [url(broker.port)]).start()
    try:
        wait_until(lambda: outbox.count() == 0, what="backlog forwarded")
        wait_until(lambda: path.stat().st_size < full // 10, what="the file shrank")
        assert outbox.free_pages() < 100
    finally:
        forwarder.stop()
        outbox.close()
    assert len(drain(broker.port, "work", 4000)) == 4000


def test_an_outbox_file_without_auto_vacuum_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        outbox.send("", "q", b"kept")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("VACUUM")  # as files made before incremental vacuum
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    with Outbox(path) as outbox:
        assert outbox.count() == 1
        outbox.send_many([{"exchange": "", "routing_key": "q", "body": os.urandom(4000)} for _ in range(500)])
        outbox.call(lambda c: c.execute("DELETE FROM pending"))
        outbox.call(lambda c: c.execute("DELETE FROM messages"))
        assert outbox.free_pages() > 400
        while outbox.shrink(100):
            pass
        assert outbox.free_pages() == 0
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    conn.close()


# --- a PostgreSQL outbox shared by several forwarders ---------------------------------------------------------------


def test_several_forwarders_share_a_postgresql_outbox_without_sending_twice(
        postgres_db: str, brokers: Any) -> None:  # noqa: F811 - the fixture
    broker = brokers("a")
    declare(broker.port, "work")
    total = 3000
    senders = [PostgresOutbox(postgres_db) for _ in range(3)]  # three web servers
    forwarders = [Forwarder(PostgresOutbox(postgres_db, lease=30), [url(broker.port)], window=64).start()
                  for _ in range(3)]
    try:
        wait_until(lambda: all(f.snapshot()["default"]["url"] for f in forwarders), what="all connected")
        for n, outbox in enumerate(senders):  # the three forwarders poll the outbox all at once
            outbox.send_many([{"exchange": "", "routing_key": "work", "body": b"%d-%d" % (n, i)}
                              for i in range(total // 3)])
        wait_until(lambda: senders[0].count() == 0, what="outbox empty")
        shares = [f.snapshot()["default"]["forwarded"] for f in forwarders]
    finally:
        for forwarder in forwarders:
            forwarder.stop()
            assert forwarder.outbox is not None
            forwarder.outbox.close()
        for outbox in senders:
            outbox.close()
    got = drain(broker.port, "work", total)
    assert len(got) == total and len(set(got)) == total  # each message once: no two forwarders sent one
    assert sum(shares) == total and sum(1 for share in shares if share) >= 2, shares  # they shared the work


# --- the HTTP transport against RabbitMQ's management API ----------------------------------------------------------


@pytest.mark.rabbitmq
def test_http_transport_on_rabbitmq_nacks_parks_and_keeps_order(target: str, rabbitmq_port: int,
                                                                 unique: str) -> None:
    """RabbitMQ's publish endpoint: a full reject-publish queue answers 400 "rejected" (sent again later, in
    order), an unroutable mandatory message routed: false (parked), a missing exchange 400 404 (parked)."""
    try:
        socket.create_connection(("127.0.0.1", 15672), timeout=2).close()
    except OSError:
        pytest.skip("RabbitMQ's management API is not on 127.0.0.1:15672")
    ch = channel(rabbitmq_port)
    ch.queue_declare(unique, arguments={"x-max-length": 5, "x-overflow": "reject-publish"})
    outbox = open_outbox(target)
    forwarder = Forwarder(outbox, ["http://guest:guest@127.0.0.1:15672/"], backoff_initial=0.1, backoff_max=0.3,
                          unroutable_retry=3600).start()
    try:
        outbox.send("", f"{unique}-nowhere", b"unroutable")
        outbox.send(f"{unique}-no-such-exchange", "k", b"no exchange")
        for i in range(12):
            outbox.send("", unique, b"%d" % i, properties={"headers": {"n": i, "s": b"text"}})
        wait_until(lambda: outbox.count() == 9, what="5 accepted, 7 refused, 2 parked")
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 12 and time.monotonic() < deadline:
            method, props, body = ch.basic_get(unique, auto_ack=True)
            if method is None:
                time.sleep(0.05)
            else:
                assert props.headers == {"x-deduplication-header": props.message_id, "n": int(body), "s": "text"}
                got.append(body)
        assert got == [b"%d" % i for i in range(12)]
        wait_until(lambda: outbox.count() == 2, what="all but the parked sent")
        status = outbox.status()["default"]
        assert status["parked"] == 2 and status["pending"] == 0
    finally:
        forwarder.stop()
        outbox.close()
        ch.queue_delete(unique)
        ch.connection.close()


# --- send(track=True) ------------------------------------------------------------------------------------------------


def test_tracked_messages_go_from_saved_to_sent(target: str, brokers: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """saved -> sent per destination, from the outbox's own records (kept after the message is deleted);
    parked with its reason; unknown for a message that was not tracked."""
    a, b = brokers("a"), brokers("b")
    declare(a.port, "work")
    declare(b.port, "work")
    b.stop()
    outbox = open_outbox(target)
    try:
        msg = outbox.send("", "work", b"x", destinations=["a", "b"], track=True)
        lost = outbox.send("", "nowhere", b"y", destinations=["a"], track=True)
        plain = outbox.send("", "work", b"z", destinations=["a"])
        assert isinstance(msg, str) and len(msg) == 32  # still the message_id
        assert msg.status()["state"] == "saved"  # type: ignore[attr-defined]
        assert outbox.tracked(plain)["state"] == "unknown"
        forwarder = Forwarder(outbox, {"a": url(a.port), "b": url(b.port)}, backoff_initial=0.1,
                              backoff_max=0.3, unroutable_retry=3600).start()
        try:
            wait_until(lambda: msg.status()["destinations"]["a"]["state"] == "sent",  # type: ignore[attr-defined]
                       what="sent to a")
            status = msg.status()  # type: ignore[attr-defined]
            assert status["state"] == "saved" and status["destinations"]["b"]["state"] == "saved"
            wait_until(lambda: lost.status()["state"] == "parked", what="parked")  # type: ignore[attr-defined]
            assert "NO_ROUTE" in lost.status()["destinations"]["a"]["error"]  # type: ignore[attr-defined]
            b.start()
            status = msg.wait("sent", timeout=30)  # type: ignore[attr-defined]
            assert set(status["destinations"]) == {"a", "b"}
            # "sent" may come from b's notices before the forwarder recorded b's confirm (tracking.py): then sent_at
            wait_until(lambda: all(d["sent_at"] for d in msg.status()["destinations"].values()),  # type: ignore
                       what="the confirms of a and b recorded")
        finally:
            forwarder.stop()
        assert cli_main(["outbox", "status", target, msg]) == 0
        out = capsys.readouterr().out
        assert f"message {msg}: sent" in out
        assert cli_main(["outbox", "status", target, "no-such-id", "--json"]) == 1
        assert '"state": "unknown"' in capsys.readouterr().out
    finally:
        outbox.close()
