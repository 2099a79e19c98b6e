"""Message rates of the management API (``message_stats.*_details.rate``): the sampler with a fake clock, then
the API against a real Leveret with pika."""

from __future__ import annotations

import pika
import pytest

from leveret.management.rates import Rates
from leveret.node import ThreadedServer

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


def test_redeliver_counts_and_rates_as_rabbitmqs_message_stats(server: ThreadedServer) -> None:
    api = Client(server.http_port)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port, connection_attempts=1))
    ch = conn.channel()
    ch.queue_declare("bounced")
    api.get("/api/overview")
    api.get("/api/queues/%2F/bounced")
    for i in range(10):
        ch.basic_publish("", "bounced", str(i).encode())
    for _ in range(10):
        method, _, _ = ch.basic_get("bounced")
    ch.basic_nack(method.delivery_tag, multiple=True, requeue=True)  # all ten come back redelivered
    for _ in range(10):
        method, _, _ = ch.basic_get("bounced")
        assert method.redelivered
        ch.basic_ack(method.delivery_tag)
    conn.process_data_events(0.1)
    queue = api.get("/api/queues/%2F/bounced?msg_rates_age=60&msg_rates_incr=5")["message_stats"]
    assert (queue["deliver_get"], queue["redeliver"], queue["ack"]) == (20, 10, 10)
    assert rate(queue, "redeliver") > 0 and queue["redeliver_details"]["samples"][0]["sample"] == 10
    overview = api.get("/api/overview")["message_stats"]
    assert overview["redeliver"] == 10 and rate(overview, "redeliver") > 0
    conn.close()


# --- history: the rings of samples the charts read ---------------------------------------------------------


def test_history_rings_samples_aligned_newest_first_and_bounded() -> None:
    from leveret.management import rates as rates_module
    from leveret.management.rates import History

    clock = Clock()
    values = {"overview": (0, 0, 0, 0, 0, 0, 0)}
    history = History(lambda key: values.get(key), clock, interval=5.0)  # type: ignore[arg-type]
    for i in range(1, 2001):  # 10 000 s of ticks
        clock.now += 5
        values["overview"] = (i, i, 0, 10 * i, 5 * i, 5 * i, i)
        history.tick()
    assert len(history.fine["overview"]) == rates_module.FINE
    assert len(history.coarse) == 167  # one a minute over 10 000 s (bounded by COARSE = 480)
    info = {"queue_totals": {"messages": 2000}, "message_stats": {"publish": 20000}}
    history.annotate({"lengths_age": "60", "lengths_incr": "10", "msg_rates_age": "60", "msg_rates_incr": "10"},
                     "overview", info, "queue_totals")
    samples = info["queue_totals"]["messages_details"]["samples"]
    assert [s["timestamp"] for s in samples] == [int((clock.now - clock.now % 10 - 10 * k) * 1000) for k in range(7)]
    assert samples[0]["sample"] == 2000 and samples[-1]["sample"] == 1988  # one sample per 5 s tick
    publish = info["message_stats"]["publish_details"]
    assert publish["avg_rate"] == 2.0 and publish["samples"][0]["sample"] == 20000
    # hours ago: from the one-a-minute ring
    old = {"queue_totals": {}}
    history.annotate({"lengths_age": "7200", "lengths_incr": "600"}, "overview", old, "queue_totals")
    assert len(old["queue_totals"]["messages_details"]["samples"]) == 13


def test_history_samples_a_queue_while_it_is_asked_for() -> None:
    from leveret.management.rates import WATCH_FOR, History

    clock = Clock()
    values: dict[object, tuple[int, ...] | None] = {"overview": (0,) * 6, ("queue", "/", "q"): (3, 3, 0, 3, 0, 0)}
    history = History(lambda key: values.get(key), clock)  # type: ignore[arg-type]
    key = ("queue", "/", "q")
    query = {"lengths_age": "30", "lengths_incr": "5"}
    first = history.annotate(query, key, {"messages": 3})
    assert [s["sample"] for s in first["messages_details"]["samples"]] == [3]  # now only: no history yet
    for n in range(4, 10):
        clock.now += 5
        values[key] = (n, n, 0, n, 0, 0, 0)
        history.tick()
    got = history.annotate(query, key, {"messages": 9})["messages_details"]
    assert [s["sample"] for s in got["samples"]][:3] == [9, 8, 7] and got["rate"] == 0.2
    clock.now += WATCH_FOR + 1
    history.tick()
    assert key not in history.fine  # no longer asked for: forgotten
    values[key] = None
    history.watch(key)
    assert key not in history.fine  # gone


def test_history_refuses_an_increment_of_zero_and_ignores_words() -> None:
    from leveret.core import errors
    from leveret.management.rates import History

    history = History(lambda key: (0,) * 6)
    with pytest.raises(errors.PreconditionFailed, match="Invalid range parameters: age 60, incr 0"):
        history.annotate({"lengths_age": "60", "lengths_incr": "0"}, "overview", {"queue_totals": {}}, "queue_totals")
    info = history.annotate({"lengths_age": "abc", "lengths_incr": "5"}, "overview", {"queue_totals": {}},
                            "queue_totals")
    assert info == {"queue_totals": {}}


@pytest.mark.parametrize("port", [0, 15672])
def test_samples_in_the_api_as_rabbitmq(port: int, make_config: object) -> None:
    """The overview and a queue answer ``samples`` for RabbitMQ's range parameters, in RabbitMQ's shape."""
    import socket
    import time
    import uuid

    from leveret.config import Config

    server = None
    if port == 0:
        assert callable(make_config)
        config: Config = make_config(http_port=0)
        server = ThreadedServer(config).start()
        port = server.http_port
    else:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            pytest.skip("no RabbitMQ management API on 127.0.0.1:15672")
    try:
        api = Client(port)
        name = f"samples-{uuid.uuid4().hex[:8]}"
        api.ok("PUT", f"/api/queues/%2F/{name}", {"durable": False})
        query = "lengths_age=60&lengths_incr=5&msg_rates_age=60&msg_rates_incr=5"
        overview = api.get(f"/api/overview?{query}")
        details = overview["queue_totals"]["messages_details"]
        assert {"samples", "avg", "avg_rate", "rate"} <= set(details)
        assert details["samples"] and set(details["samples"][0]) == {"sample", "timestamp"}
        assert details["samples"][0]["timestamp"] % 5000 == 0
        assert "samples" in overview["message_stats"]["publish_details"]
        deadline = time.monotonic() + 15  # RabbitMQ has a new queue's statistics after its 5 s interval
        while "messages_ready_details" not in (queue := api.get(f"/api/queues/%2F/{name}?{query}")):
            assert time.monotonic() < deadline, queue
            time.sleep(0.2)
        assert {"samples", "avg", "avg_rate", "rate"} <= set(queue["messages_ready_details"])
        status, value, _ = api.request("GET", "/api/overview?lengths_age=60&lengths_incr=0")
        assert (status, value) == (400, {"error": "bad_request", "reason": "Invalid range parameters: age 60, incr 0"})
        api.ok("DELETE", f"/api/queues/%2F/{name}")
    finally:
        if server is not None:
            server.stop()
