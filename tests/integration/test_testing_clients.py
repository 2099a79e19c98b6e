"""The recipes of docs/testing.md, run: a Celery app, a Dramatiq app and kombu against the plugin's fixtures
(``leveret_url``: a fresh vhost on the session's embedded Leveret; ``leveret_broker``: its default vhost), each
with a real worker in this process. These are the conftest snippets a user copies instead of a RabbitMQ
container."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu
import pytest

import waiting


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    waiting.wait_for(condition, timeout, f"{what} not met after {timeout} s", interval=0.02)


# --- Celery ----------------------------------------------------------------------------------------------------

def test_celery_worker_runs_tasks_and_returns_results(leveret_url: str) -> None:
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    app = Celery("leveret_test")  # as docs/testing.md: an app defined elsewhere, pointed at the fixture here
    # broker_heartbeat=0: an in-thread worker otherwise takes 10-60 s to stop (Celery's loop waits for its
    # heartbeat timer; the same against RabbitMQ)
    app.conf.update(broker_url=leveret_url, result_backend="rpc://", broker_heartbeat=0,
                    broker_connection_retry_on_startup=True, task_acks_late=True, worker_prefetch_multiplier=1,
                    worker_hijack_root_logger=False)
    attempts: list[int] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True, max_retries=3, default_retry_delay=0.05)
    def flaky(self: Any) -> str:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise self.retry(exc=RuntimeError("not yet"))
        return "done"

    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=10):
        results = [add.delay(i, 1) for i in range(5)]
        assert [r.get(timeout=30) for r in results] == [1, 2, 3, 4, 5]
        assert flaky.delay().get(timeout=30) == "done"
        assert attempts == [0, 1, 2]
        chained = (add.s(1, 2) | add.s(10)).delay()
        assert chained.get(timeout=30) == 13


# --- Dramatiq --------------------------------------------------------------------------------------------------

def test_dramatiq_worker_runs_actors_with_retries(leveret_url: str) -> None:
    from dramatiq import Worker, actor
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=leveret_url)
    done: list[int] = []
    tries: dict[int, int] = {}
    lock = threading.Lock()

    @actor(broker=broker, max_retries=0)
    def record(n: int) -> None:
        with lock:
            done.append(n)

    @actor(broker=broker, max_retries=3, min_backoff=10, max_backoff=50)
    def fails_twice(n: int) -> None:
        with lock:
            tries[n] = tries.get(n, 0) + 1
            if tries[n] < 3:
                raise RuntimeError("not yet")
            done.append(100 + n)

    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        for n in range(5):
            record.send(n)
        fails_twice.send(7)
        broker.join(record.queue_name, timeout=30_000)  # the queue and its delay queue are empty
        wait_for(lambda: 107 in done, what="the retried actor to succeed")
        worker.join()
        assert sorted(done) == [0, 1, 2, 3, 4, 107]
        assert tries == {7: 3}
    finally:
        worker.stop()
        broker.close()


# --- kombu -----------------------------------------------------------------------------------------------------

def test_kombu_producer_consumer_round_trip(leveret_broker: str) -> None:
    name = f"kombu-{uuid.uuid4().hex[:8]}"  # the session's vhost is shared: a name of this test's own
    exchange = kombu.Exchange(name, "direct", durable=False)
    queue = kombu.Queue(name, exchange, routing_key="jobs", auto_delete=True)
    received: list[dict[str, Any]] = []
    with kombu.Connection(leveret_broker, connect_timeout=5) as connection:
        with connection.Producer() as producer:
            for n in range(3):
                producer.publish({"n": n}, exchange=exchange, routing_key="jobs", declare=[queue],
                                 serializer="json", retry=True)

        def on_message(body: dict[str, Any], message: kombu.Message) -> None:
            received.append(body)
            message.ack()

        with connection.Consumer([queue], callbacks=[on_message], prefetch_count=2):
            deadline = time.monotonic() + 30
            while len(received) < 3 and time.monotonic() < deadline:
                connection.drain_events(timeout=1)
    assert received == [{"n": 0}, {"n": 1}, {"n": 2}]


@pytest.mark.parametrize("fixture", ["leveret_broker", "leveret_url"])
def test_kombu_reads_the_fixture_urls(fixture: str, request: pytest.FixtureRequest) -> None:
    url: str = request.getfixturevalue(fixture)
    with kombu.Connection(url, connect_timeout=5) as connection:
        connection.connect()
        expected = "/" if fixture == "leveret_broker" else url.rsplit("/", 1)[1]
        assert connection.connection.virtual_host == expected  # type: ignore[attr-defined]
