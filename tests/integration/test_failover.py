"""Client-side failover (docs/cluster.md): the task layer (``App([url_a, url_b])``), the outbox forwarder and
``leveret.aioconnect.open_connection`` take several broker URLs and go on with the next when one is down. Two
independent Leveret brokers (child processes, so one can be stopped and started on its port): the client is on
the first, it is stopped, and what is sent then is confirmed by the second; nothing confirmed is lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.aioconnect import broker_urls, join_urls, open_connection
from leveret.outbox import Forwarder, open_outbox, parse_brokers
from leveret.tasks import App, BrokerUnavailable

from serverproc import LeveretProcess
from waiting import wait_for

pytestmark = pytest.mark.timeout(180)


def url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Callable[[str], LeveretProcess]]:
    made: list[LeveretProcess] = []

    def make(name: str) -> LeveretProcess:
        proc = LeveretProcess(tmp_path / f"broker-{name}").start()
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()


def drain(port: int, queue: str, ids: bool = False) -> list[Any]:
    """The bodies (or message ids) of the messages in ``queue``."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    got = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.append(props.message_id if ids else body)
    conn.close()
    return got


def test_url_lists() -> None:
    assert broker_urls("amqp://u:p,w@a/, amqp://b/;amqps://c/") == ["amqp://u:p,w@a/", "amqp://b/", "amqps://c/"]
    assert broker_urls(["amqp://a/", "amqp://b/,amqp://c/"]) == ["amqp://a/", "amqp://b/", "amqp://c/"]
    assert join_urls(["amqp://a/", "amqp://b/"]) == "amqp://a/,amqp://b/"
    assert parse_brokers(["amqp://a/,amqp://b/", "eu=stomp://c/", "eu=http://d/"]) == {
        "default": ["amqp://a/", "amqp://b/"], "eu": ["stomp://c/", "http://d/"]}
    with pytest.raises(ValueError):
        broker_urls("")


def test_open_connection_takes_the_first_that_opens_and_remembers_it(brokers: Any) -> None:
    a, b = brokers("a"), brokers("b")
    urls = [url(a.port), url(b.port)]

    async def port_of_a_connection() -> int:
        conn = await open_connection(urls, timeout=5)
        try:
            return int(conn.url.port)
        finally:
            await conn.close()

    assert asyncio.run(port_of_a_connection()) == a.port
    a.stop()
    assert asyncio.run(port_of_a_connection()) == b.port
    a.start()
    assert asyncio.run(port_of_a_connection()) == b.port  # the last good one first
    b.stop()
    assert asyncio.run(port_of_a_connection()) == a.port
    a.stop()
    with pytest.raises(Exception) as info:
        asyncio.run(port_of_a_connection())
    told = str(info.value) + "".join(getattr(info.value, "__notes__", []))  # the last error, the others as notes
    assert str(a.port) in told and str(b.port) in told


def test_app_fails_over_to_the_second_broker_without_losing_confirmed_tasks(brokers: Any) -> None:
    a, b = brokers("a"), brokers("b")
    app = App([url(a.port), url(b.port)], name="fo", status_ttl=60, send_timeout=10)

    @app.task(name="fotask", queue="fo-work")
    def work(n: int) -> int:
        return n

    confirmed: list[str] = []
    try:
        for n in range(50):
            confirmed.append(work.send(n=n).id)
        a.stop()  # the App is connected to a; what it sends now goes to b
        sent = 0
        deadline = time.monotonic() + 60
        while sent < 50 and time.monotonic() < deadline:
            sent += 1
            with contextlib.suppress(BrokerUnavailable):  # not confirmed (it may or may not have arrived)
                confirmed.append(work.send(n=sent).id)
        assert len(confirmed) >= 90
    finally:
        app.close()
    a.start()
    on_a, on_b = set(drain(a.port, "fo-work", ids=True)), set(drain(b.port, "fo-work", ids=True))
    assert set(confirmed[:50]) <= on_a  # persistent and confirmed: still on a after its restart
    assert set(confirmed[50:]) <= on_b  # the rest went to b
    assert set(confirmed) <= on_a | on_b


def test_forwarder_fails_over_to_the_second_broker(tmp_path: Path, brokers: Any) -> None:
    a, b = brokers("a"), brokers("b")
    for broker in (a, b):
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
        conn.channel().queue_declare("work", durable=True)
        conn.close()
    outbox = open_outbox(str(tmp_path / "o.db"))
    forwarder = Forwarder(outbox, [f"{url(a.port)},{url(b.port)}"], backoff_initial=0.1, backoff_max=0.5).start()
    try:
        for i in range(200):
            outbox.send("", "work", b"%d" % i)
        wait_for(lambda: outbox.count() == 0, 30, "the first 200 forwarded")
        assert forwarder.snapshot()["default"]["url"] == url(a.port).replace("guest:guest@", "guest@")
        a.stop()
        for i in range(200, 400):
            outbox.send("", "work", b"%d" % i)
        wait_for(lambda: outbox.count() == 0, 30, "the next 200 forwarded")
        assert str(b.port) in (forwarder.snapshot()["default"]["url"] or "")
    finally:
        forwarder.stop()
        outbox.close()
    a.start()
    on_a, on_b = drain(a.port, "work"), drain(b.port, "work")
    assert on_a == [b"%d" % i for i in range(200)]  # persistent, confirmed: still there after the restart
    assert on_b == [b"%d" % i for i in range(200, 400)]


def test_the_documented_pika_and_kombu_settings_fail_over(brokers: Any) -> None:
    """docs/cluster.md, *Client-side failover*: pika with a list of ConnectionParameters, kombu (Celery's
    broker_url) with URLs separated by ';' and failover_strategy: the first broker down, both reach the second."""
    import kombu

    a, b = brokers("a"), brokers("b")
    a.stop()
    params = [pika.ConnectionParameters("127.0.0.1", port, connection_attempts=2, retry_delay=0.2)
              for port in (a.port, b.port)]
    conn = pika.BlockingConnection(params)
    try:
        assert conn._impl.params.port == b.port
    finally:
        conn.close()
    with kombu.Connection(f"{url(a.port)};{url(b.port)}", failover_strategy="round-robin",
                          connect_timeout=2) as k:
        k.ensure_connection(max_retries=3, interval_start=0.1, interval_step=0.1)
        assert k.as_uri().endswith(f":{b.port}//")
        queue = kombu.Queue("kombu-failover", durable=True)
        k.Producer().publish({"n": 1}, routing_key="kombu-failover", declare=[queue], retry=True)
    assert len(drain(b.port, "kombu-failover")) == 1


def test_a_worker_of_an_app_with_two_urls_works_on_the_one_that_is_up(brokers: Any) -> None:
    """The worker connects as its App says (``app.url``, the URLs joined by commas): the first broker down, it
    consumes from the second, where the App sends."""
    from leveret.tasks import Worker

    a, b = brokers("a"), brokers("b")
    a.stop()
    app = App([url(a.port), url(b.port)], name="fow", status_ttl=60)

    @app.task(name="fowtask", queue="fow-work")
    def double(n: int) -> int:
        return 2 * n

    worker = Worker(app, concurrency=1).start()
    try:
        handle = double.send(n=21)
        assert handle.wait(30) == "succeeded" and handle.result() == 42
    finally:
        worker.stop()
        app.close()
