"""Message deduplication (x-message-deduplication, core/dedup.py) with real clients against a real Leveret child
process: a duplicate is dropped and still confirmed; the window of a durable queue survives kill -9 of the broker;
and the outbox's forwarder, killed again and again while forwarding into a deduplicating queue, delivers every
message exactly once."""

from __future__ import annotations

import base64
import json
import random
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.outbox import Outbox

from serverproc import LeveretProcess
from waiting import hold, wait_for

pytestmark = pytest.mark.timeout(240)

DEDUP = {"x-message-deduplication": True, "x-cache-size": 10000}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LeveretProcess]:
    proc = LeveretProcess(tmp_path / "broker").start()
    try:
        yield proc
    finally:
        proc.kill()


def confirm_channel(port: int) -> pika.adapters.blocking_connection.BlockingChannel:
    ch = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1)).channel()
    ch.confirm_delivery()
    return ch


def props(key: str) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=2, headers={"x-deduplication-header": key})


def api(broker: LeveretProcess, path: str) -> dict[str, Any]:
    """GET the broker's management API (its port is in its log)."""
    port = next(int(m.group(1)) for line in broker.lines
                if (m := re.search(r"management API listening on http://[^:]+:(\d+)/", line)))
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}",
                                     headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return dict(json.loads(answer.read()))


def bodies(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> list[bytes]:
    out = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def test_duplicates_are_dropped_and_confirmed_by_a_queue_and_an_exchange(broker: LeveretProcess) -> None:
    ch = confirm_channel(broker.port)
    ch.queue_declare("q", durable=True, arguments=DEDUP)
    ch.exchange_declare("x", "fanout", durable=True, arguments={"x-message-deduplication": True})
    ch.queue_declare("q1", durable=True)
    ch.queue_declare("q2", durable=True)
    ch.queue_bind("q1", "x")
    ch.queue_bind("q2", "x")
    for body, key in ((b"1", "a"), (b"2", "a"), (b"3", "b")):  # mandatory: a return would raise UnroutableError
        ch.basic_publish("", "q", body, props(key), mandatory=True)
        ch.basic_publish("x", "", body, props(key), mandatory=True)
    assert bodies(ch, "q") == [b"1", b"3"]
    assert bodies(ch, "q1") == [b"1", b"3"] and bodies(ch, "q2") == [b"1", b"3"]
    assert api(broker, "queues/%2F/q")["message_stats"]["dedup"] == 1  # LavinMQ's counter of dropped duplicates
    assert api(broker, "exchanges/%2F/x")["message_stats"]["dedup"] == 1
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-cache-size header not a Int"):
        ch.queue_declare("bad", arguments={"x-message-deduplication": True, "x-cache-size": "many"})
    ch.connection.close()


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_the_window_of_a_durable_queue_and_exchange_survives_a_broker_restart(broker: LeveretProcess,
                                                                              how: str) -> None:
    ch = confirm_channel(broker.port)
    ch.queue_declare("q", durable=True, arguments=DEDUP)
    ch.exchange_declare("x", "fanout", durable=True, arguments={"x-message-deduplication": True})
    ch.queue_declare("qx", durable=True)
    ch.queue_bind("qx", "x")
    ch.basic_publish("", "q", b"first", props("X"))  # confirmed: its id is on disk
    ch.basic_publish("x", "", b"first", props("X"))
    if how == "sigkill":
        broker.kill()
    else:
        ch.connection.close()
        assert broker.stop() == 0
    broker.start()
    ch = confirm_channel(broker.port)
    ch.basic_publish("", "q", b"again", props("X"), mandatory=True)
    ch.basic_publish("x", "", b"again", props("X"), mandatory=True)
    ch.basic_publish("", "q", b"other", props("Y"))
    assert bodies(ch, "q") == [b"first", b"other"]
    assert bodies(ch, "qx") == [b"first"]
    ch.connection.close()


def test_forwarder_killed_ten_times_delivers_each_message_exactly_once(broker: LeveretProcess,
                                                                       tmp_path: Path) -> None:
    """kill -9 of the forwarder at random points while it forwards 5,000 messages (window 256), ten times, then
    a forwarder that finishes: with the destination queue deduplicating, 0 lost and 0 duplicates."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    total = 5000
    ch = confirm_channel(broker.port)
    ch.queue_declare("work", durable=True, arguments=DEDUP)
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        outbox.send_many([{"exchange": "", "routing_key": "work", "body": b"%d" % i} for i in range(total)])
    cmd = [sys.executable, "-m", "leveret", "forward", "--outbox", str(path), "--broker",
           f"amqp://guest:guest@127.0.0.1:{broker.port}/", "--window", "256", "--report-interval", "60"]
    kills = 0
    with Outbox(path) as outbox:
        for _ in range(10):
            left = outbox.count()
            if left == 0:
                break
            target = left - rng.randint(1, min(left, 500))  # a random point of this run's forwarding
            proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
            try:
                wait_for(lambda t=target: outbox.count() <= t, 60, "the forwarder made no progress", interval=0.005)
                hold(rng.uniform(0, 0.02), "a random point of the forwarding to kill it at")
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            kills += 1 if outbox.count() > 0 else 0
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: outbox.count() == 0, 60, "outbox not empty")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    got = bodies(ch, "work")
    ch.connection.close()
    dropped = api(broker, "queues/%2F/work")["message_stats"]["dedup"]
    print(f"seed {seed}: {kills} kills while forwarding, {dropped} resends dropped as duplicates, "
          f"{len(got)} messages received")
    assert kills >= 5, f"seed {seed}: the forwarder finished too early to be killed mid-batch"
    assert sorted(got, key=int) == [b"%d" % i for i in range(total)], f"seed {seed}"  # none lost, none twice
    assert dropped > 0, f"seed {seed}: no resend reached the queue: the kills tested nothing"
