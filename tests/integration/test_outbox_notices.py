"""Job-done notices end to end: ``outbox.send(..., track=True)``, the forwarder, a pika consumer that acks or
rejects, and the sender seeing ``processed`` or ``failed`` (Leveret's notices: core/notices.py, outbox/notices.py).
On RabbitMQ the states stop at ``sent``. Each test runs once per broker (``broker_port``); the Leveret-only ones
skip RabbitMQ."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.cli import main as cli_main
from leveret.outbox import Forwarder, Outbox, open_outbox
from leveret.outbox.notices import NOTICE_PREFIX

from pghelp import postgres_db, postgres_url  # noqa: F401 - fixtures
from serverproc import LeveretProcess
from waiting import hold, wait_for

pytestmark = pytest.mark.timeout(120)


def on_leveret(port: int) -> bool:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        return bool(conn._impl.server_properties.get("product") == "Leveret")
    finally:
        conn.close()


@pytest.fixture
def channel(broker_port: int) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker_port))
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path, broker_port: int) -> Iterator[Any]:
    """A tracked outbox (SQLite, or PostgreSQL when there is a server) and its forwarder to the broker."""
    box = Outbox(tmp_path / "o.db") if request.param == "sqlite" else open_outbox(
        request.getfixturevalue("postgres_db"))
    forwarder = Forwarder(box, [f"amqp://guest:guest@127.0.0.1:{broker_port}/"], backoff_initial=0.05,
                          backoff_max=0.2).start()
    try:
        yield box
    finally:
        forwarder.stop()
        box.close()


def get(channel: Any, queue: str) -> tuple[Any, Any, bytes]:
    """The next message of ``queue`` (basic.get with ack), waiting for it."""
    return wait_for(lambda: (lambda r: r if r[0] is not None else None)(channel.basic_get(queue)), 30,
                    f"nothing in {queue}", interval=0.02)


def test_a_message_acked_by_a_consumer_is_processed(outbox: Any, channel: Any, broker_port: int,
                                                     unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    channel.queue_declare(unique, auto_delete=True)
    msg = outbox.send("", unique, b"job", track=True)
    method, props, body = get(channel, unique)
    assert body == b"job" and props.headers["x-deduplication-header"] == msg
    if not on_leveret(broker_port):  # RabbitMQ: no notices, the forwarder leaves the header out
        assert "x-leveret-notify" not in props.headers
        channel.basic_ack(method.delivery_tag)
        assert msg.wait("sent", timeout=30)["state"] == "sent"  # type: ignore[attr-defined]
        hold(0.5, "RabbitMQ sends no notices: the state stays sent")
        assert msg.status()["state"] == "sent"  # type: ignore[attr-defined]
        return
    assert props.headers["x-leveret-notify"].startswith(NOTICE_PREFIX)
    status = msg.wait("delivered", timeout=30)  # type: ignore[attr-defined]
    assert status["state"] == "delivered"
    assert status["destinations"]["default"]["queues"] == {unique: "delivered"}
    channel.basic_ack(method.delivery_tag)
    status = msg.wait("processed", timeout=30)  # type: ignore[attr-defined]
    entry = status["destinations"]["default"]
    assert status["state"] == "processed" and entry["queues"] == {unique: "processed"}
    assert entry["sent_at"] and entry["delivered_at"] <= entry["processed_at"]
    assert cli_main(["outbox", "status", str(getattr(outbox, "path", None) or outbox.url), msg]) == 0
    out = capsys.readouterr().out
    assert f"message {msg}: processed" in out and f"{unique}: processed" in out


def test_a_rejected_message_fails_with_its_reason(outbox: Any, channel: Any, broker_port: int,
                                                  unique: str) -> None:
    if not on_leveret(broker_port):
        pytest.skip("job-done notices are Leveret's: on RabbitMQ the states stop at sent (the test above)")
    channel.queue_declare(unique, auto_delete=True)
    msg = outbox.send("", unique, b"job", track=True)
    method, _, _ = get(channel, unique)
    channel.basic_reject(method.delivery_tag, requeue=False)
    status = msg.wait("processed", timeout=30)  # type: ignore[attr-defined]  # returns at failed
    assert status["state"] == "failed"
    assert status["destinations"]["default"]["error"] == f"{unique}: rejected"


def test_a_message_routed_to_two_queues_is_processed_once_both_processed_it(outbox: Any, channel: Any,
                                                                            broker_port: int, unique: str) -> None:
    if not on_leveret(broker_port):
        pytest.skip("job-done notices are Leveret's")
    channel.exchange_declare(unique, "fanout", auto_delete=True)
    for queue in (f"{unique}.a", f"{unique}.b"):
        channel.queue_declare(queue, auto_delete=True)
        channel.queue_bind(queue, unique)
    msg = outbox.send(unique, "", b"job", track=True)
    first, _, _ = get(channel, f"{unique}.a")
    channel.basic_ack(first.delivery_tag)
    wait_for(lambda: msg.status()["destinations"]["default"].get("queues", {}).get(f"{unique}.a")  # type: ignore[attr-defined]
             == "processed", 30, "a's ack not recorded")
    status = msg.status()  # type: ignore[attr-defined]
    assert status["state"] == "delivered"  # not processed: b has not even delivered it
    assert status["destinations"]["default"]["queues"] == {f"{unique}.a": "processed", f"{unique}.b": "sent"}
    second, _, _ = get(channel, f"{unique}.b")
    wait_for(lambda: msg.status()["destinations"]["default"]["queues"][f"{unique}.b"]  # type: ignore[attr-defined]
             == "delivered", 30, "b's delivery not recorded")
    assert msg.status()["state"] == "delivered"  # type: ignore[attr-defined]
    channel.basic_ack(second.delivery_tag)
    assert msg.wait("processed", timeout=30)["state"] == "processed"  # type: ignore[attr-defined]


def test_notices_that_arrive_while_no_forwarder_runs_wait_for_the_next_one(tmp_path: Path, channel: Any,
                                                                         broker_port: int, unique: str) -> None:
    if not on_leveret(broker_port):
        pytest.skip("job-done notices are Leveret's")
    url = f"amqp://guest:guest@127.0.0.1:{broker_port}/"
    channel.queue_declare(unique, auto_delete=True)
    with Outbox(tmp_path / "o.db") as box:
        forwarder = Forwarder(box, [url], backoff_initial=0.05, backoff_max=0.2).start()
        msg = box.send("", unique, b"job", track=True)
        method, props, _ = get(channel, unique)
        msg.wait("delivered", timeout=30)  # type: ignore[attr-defined]
        forwarder.stop()
        channel.basic_ack(method.delivery_tag)  # its notice waits in the durable notice queue
        notice_queue = props.headers["x-leveret-notify"]
        wait_for(lambda: channel.queue_declare(notice_queue, passive=True).method.message_count == 1, 30,
                 "the processed notice did not reach the notice queue")
        assert msg.status()["state"] == "delivered"  # type: ignore[attr-defined]
        forwarder = Forwarder(box, [url], backoff_initial=0.05, backoff_max=0.2).start()
        try:
            assert msg.wait("processed", timeout=30)["state"] == "processed"  # type: ignore[attr-defined]
        finally:
            forwarder.stop()
        channel.queue_delete(notice_queue)


def test_notices_survive_a_broker_restart(tmp_path: Path) -> None:
    """The notice queue is durable and the notices of a persistent message are persistent: a notice published
    while no forwarder runs is still there after the broker restarts (SIGTERM, then kill -9)."""
    broker = LeveretProcess(tmp_path / "broker").start()
    try:
        url = f"amqp://guest:guest@127.0.0.1:{broker.port}/"
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
        ch = conn.channel()
        ch.queue_declare("work", durable=True)
        with Outbox(tmp_path / "o.db") as box:
            forwarder = Forwarder(box, [url], backoff_initial=0.05, backoff_max=0.2).start()
            first = box.send("", "work", b"1", track=True)
            second = box.send("", "work", b"2", track=True)
            one, props, _ = get(ch, "work")
            two, _, _ = get(ch, "work")
            wait_for(lambda: second.status()["state"] == "delivered", 30, "not delivered")  # type: ignore[attr-defined]
            forwarder.stop()
            notice_queue = props.headers["x-leveret-notify"]
            ch.basic_ack(one.delivery_tag)
            ch.basic_reject(two.delivery_tag, requeue=False)
            wait_for(lambda: ch.queue_declare(notice_queue, passive=True).method.message_count == 2, 30,
                     "the notices did not reach the notice queue")
            conn.close()
            assert broker.stop() == 0
            broker.start()
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
            assert conn.channel().queue_declare(notice_queue, passive=True).method.message_count == 2
            conn.close()
            broker.kill()  # kill -9: what was recovered is still on disk
            broker.start()
            url = f"amqp://guest:guest@127.0.0.1:{broker.port}/"
            forwarder = Forwarder(box, [url], backoff_initial=0.05, backoff_max=0.2).start()
            try:
                assert first.wait("processed", timeout=30)["state"] == "processed"  # type: ignore[attr-defined]
                assert second.wait("processed", timeout=30)["state"] == "failed"  # type: ignore[attr-defined]
            finally:
                forwarder.stop()
    finally:
        broker.kill()


def test_without_permission_for_the_notice_queue_the_forwarder_forwards_without_notices(
        leveret: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    leveret.call(leveret.broker.add_user, "app", "secret", (), {"/"})
    leveret.call(leveret.broker.set_permission, "app", "/", "^work$", ".*", ".*")  # may not declare its own queue
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leveret.port))
    ch = conn.channel()
    ch.queue_declare("work")
    with Outbox(tmp_path / "o.db") as box:
        forwarder = Forwarder(box, [f"amqp://app:secret@127.0.0.1:{leveret.port}/"], backoff_initial=0.05,
                              backoff_max=0.2).start()
        try:
            msg = box.send("", "work", b"job", track=True)
            method, props, _ = get(ch, "work")
            assert "x-leveret-notify" not in props.headers
            ch.basic_ack(method.delivery_tag)
            assert msg.wait("sent", timeout=30)["state"] == "sent"  # type: ignore[attr-defined]
        finally:
            forwarder.stop()
    conn.close()
    assert any("no job-done notices" in r.getMessage() for r in caplog.records)



def test_the_notice_queue_is_declared_at_the_first_tracked_message(tmp_path: Path, leveret: Any,
                                                                   unique: str) -> None:
    """No tracked message, no notice queue; the first one declares it (``--notify-queue`` names it); a later
    forwarder consumes it from the start of its session although it has no tracked message to send."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leveret.port))
    ch = conn.channel()
    ch.queue_declare(unique, durable=True)
    path = tmp_path / "o.db"
    box = Outbox(path)
    notify = f"{unique}-notices"

    def notice_queue_exists() -> bool:
        probe = conn.channel()
        try:
            probe.queue_declare(notify, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        probe.close()
        return True

    def forward() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "leveret", "forward", "--outbox", str(path), "--broker",
                                 f"amqp://guest:guest@127.0.0.1:{leveret.port}/", "--notify-queue", notify],
                                stderr=subprocess.PIPE, text=True)

    proc = forward()
    try:
        box.send("", unique, b"untracked")
        wait_for(lambda: box.count() == 0, 30, "the untracked message was not forwarded")
        assert not notice_queue_exists()
        msg = box.send("", unique, b"tracked", track=True)
        wait_for(lambda: box.count() == 0, 30, "the tracked message was not forwarded")
        assert notice_queue_exists()
        proc.terminate()
        assert proc.wait(30) == 0
        for body in (b"untracked", b"tracked"):
            method, props, got = get(ch, unique)
            assert got == body
            assert props.headers.get("x-leveret-notify") == (notify if body == b"tracked" else None)
            ch.basic_ack(method.delivery_tag)  # the processed notice waits in the notice queue
        wait_for(lambda: ch.queue_declare(notify, passive=True).method.message_count >= 1, 30, "no notice")
        assert msg.status()["state"] == "sent"  # type: ignore[attr-defined]
        proc = forward()  # nothing to send: it consumes the queue that exists
        assert msg.wait("processed", timeout=30)["state"] == "processed"  # type: ignore[attr-defined]
    finally:
        proc.terminate()
        proc.wait(30)
        box.close()
        ch.queue_delete(notify)
        conn.close()
