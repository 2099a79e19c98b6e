"""Message tracking (core/tracking.py) of lifecycle events on the core alone, with a manual clock (``corekit``):
dead-lettering after a reject and after a TTL, delayed messages and retries, at their due times. The other event
kinds, the API and ``leveret track`` are tested end to end with real clients in integration/test_tracking.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from corekit import Client, Core


@pytest.fixture
def core() -> Iterator[Core]:
    core = Core(tracking_window=300, tracking_max_events=100_000)
    try:
        yield core
    finally:
        core.close()


@pytest.fixture
def client(core: Core) -> Client:
    return core.client()


def events(core: Core, message_id: str) -> list[dict[str, Any]]:
    tracker = core.broker.tracker
    assert tracker is not None
    return tracker.events("/", message_id)


def kinds(found: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in found]


def test_dead_lettered_after_reject_and_expired(core: Core, client: Client) -> None:
    client.exchange("dlx", "fanout")
    client.declare("dead")
    client.bind("dead", "dlx")
    client.declare("jobs", **{"x-dead-letter-exchange": "dlx"})
    client.declare("short", **{"x-dead-letter-exchange": "dlx", "x-message-ttl": 50})
    client.publish("jobs", b"bad", message_id="m-dl")
    got = client.get("jobs", no_ack=False)
    assert got is not None
    client.reject(got[0], requeue=False)
    dead = events(core, "m-dl")
    assert kinds(dead) == ["published", "got", "rejected", "dead_lettered"]
    assert {k: dead[-1][k] for k in ("queue", "reason", "exchange", "queues")} == {
        "queue": "jobs", "reason": "rejected", "exchange": "dlx", "queues": ["dead"]}

    client.publish("short", b"late", message_id="m-ttl")
    core.advance(0.049)
    assert kinds(events(core, "m-ttl")) == ["published"]
    core.advance(0.002)
    expired = events(core, "m-ttl")
    assert kinds(expired) == ["published", "expired", "dead_lettered"]
    assert expired[1]["queue"] == "short" and expired[2]["reason"] == "expired"


def test_delayed_and_retried(core: Core, client: Client) -> None:
    client.exchange("later", "x-delayed-message", **{"x-delayed-type": "direct"})
    client.declare("soon")
    client.bind("soon", "later", "k")
    client.publish("k", b"x", exchange="later", message_id="m-delay", headers={"x-delay": 50})
    core.advance(0.049)
    assert kinds(events(core, "m-delay")) == ["delayed"]
    core.advance(0.002)
    delayed = events(core, "m-delay")
    assert kinds(delayed) == ["delayed", "delay_ended"]
    assert delayed[0]["exchange"] == "later" and delayed[0]["delay_ms"] == 50 and delayed[1]["queues"] == ["soon"]

    client.declare("flaky", **{"x-retry-intervals": [50]})
    client.publish("flaky", b"x", message_id="m-retry")
    got = client.get("flaky", no_ack=False)
    assert got is not None
    client.reject(got[0], requeue=False)
    core.advance(0.049)
    assert kinds(events(core, "m-retry")) == ["published", "got", "rejected", "retried"]
    core.advance(0.002)
    retried = events(core, "m-retry")
    assert kinds(retried) == ["published", "got", "rejected", "retried", "retry_due"]
    assert retried[3]["attempt"] == 1 and retried[3]["delay_ms"] == 50
