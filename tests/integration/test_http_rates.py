"""Message rates of the management API (``message_stats.*_details.rate``): the sampler with a fake clock, then
the API against a real Leveret with pika."""

from __future__ import annotations

import pika
import pytest

from leveret.http.rates import Rates
from leveret.server.app import ThreadedServer

from httphelp import Client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rate(stats: dict[str, object], name: str) -> float:
    details = stats[f"{name}_details"]
    assert isinstance(details, dict)
    return float(details["rate"])


def test_rate_is_the_increase_over_the_window() -> None:
    clock = Clock()
    rates = Rates(clock, window=5.0)
    first = rates.stats("q", {"publish": 0, "ack": 0})
    assert first == {"publish": 0, "publish_details": {"rate": 0.0}, "ack": 0, "ack_details": {"rate": 0.0}}
    clock.now += 2
    assert rate(rates.stats("q", {"publish": 50, "ack": 10}), "publish") == 25.0
    clock.now += 2
    stats = rates.stats("q", {"publish": 100, "ack": 30})
    assert (rate(stats, "publish"), rate(stats, "ack")) == (25.0, 7.5)  # over 4 s since the first sample
    for _ in range(4):  # the counters stop: after the window the rate is 0
        clock.now += 2
        stats = rates.stats("q", {"publish": 100, "ack": 30})
    assert (rate(stats, "publish"), rate(stats, "ack")) == (0.0, 0.0)


def test_objects_are_separate_and_a_reset_counter_starts_again() -> None:
    clock = Clock()
    rates = Rates(clock)
    rates.stats("a", {"publish": 0})
    rates.stats("b", {"publish": 1000})
    clock.now += 1
    assert rate(rates.stats("a", {"publish": 10}), "publish") == 10.0
    assert rate(rates.stats("b", {"publish": 3}), "publish") == 0.0  # deleted and declared again: no negative
    clock.now += 1
    assert rate(rates.stats("b", {"publish": 5}), "publish") == 2.0


def test_samples_of_objects_no_longer_read_are_forgotten() -> None:
    clock = Clock()
    rates = Rates(clock)
    for i in range(100):
        rates.stats(("queue", i), {"publish": i})
    clock.now += 120
    rates.stats("overview", {"publish": 0})
    assert list(rates._samples) == ["overview"]


@pytest.fixture
def server(http_server: ThreadedServer) -> ThreadedServer:
    return http_server


def test_overview_and_queue_rates_after_publishing_with_pika(server: ThreadedServer) -> None:
    api = Client(server.http_port)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port, connection_attempts=1))
    ch = conn.channel()
    ch.queue_declare("rated")
    before = api.get("/api/overview")["message_stats"]
    assert before["publish"] == 0 and rate(before, "publish") == 0.0
    api.get("/api/queues/%2F/rated")
    for i in range(200):
        ch.basic_publish("", "rated", str(i).encode())
    for _ in range(50):
        method, _, _ = ch.basic_get("rated")
        assert method is not None
        ch.basic_ack(method.delivery_tag)
    conn.process_data_events(0.1)
    stats = api.get("/api/overview")["message_stats"]
    assert (stats["publish"], stats["deliver_get"], stats["ack"]) == (200, 50, 50)
    assert rate(stats, "publish") > 0 and rate(stats, "deliver_get") > 0 and rate(stats, "ack") > 0
    queue = api.get("/api/queues/%2F/rated")
    assert queue["message_stats"]["publish"] == 200 and rate(queue["message_stats"], "publish") > 0
    assert queue["messages_ready"] == 150
    conn.close()
