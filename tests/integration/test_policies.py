"""Policies set at run time with `leveret ctl`, applied to matching queues and exchanges, kept across restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from leveret.core.errors import PreconditionFailed
from leveret.core.policies import Policy, effective, validate_policy

from serverproc import LeveretProcess
from waiting import hold, poll


def ctl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leveret", "ctl", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=30)


def dead_letter(ch: BlockingChannel) -> tuple[Any, Any, bytes]:
    """The next message of queue "dead" (basic.get, polled until one is there)."""
    got = poll(lambda: ch.basic_get("dead", auto_ack=True), lambda got: got[0] is not None, 10)
    assert got[0] is not None, "nothing was dead-lettered"
    return got


@pytest.fixture
def server() -> Iterator[LeveretProcess]:
    # a short path: the control socket lives in the data directory and AF_UNIX paths are short
    with tempfile.TemporaryDirectory(prefix="lv-", dir="/tmp") as tmp:
        proc = LeveretProcess(Path(tmp) / "d").start()
        try:
            yield proc
        finally:
            proc.stop()


def test_policy_applies_ttl_and_dead_lettering_at_run_time_and_survives_restart(server: LeveretProcess) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
    ch = conn.channel()
    ch.exchange_declare("dlx", "fanout", durable=True)
    ch.queue_declare("dead", durable=True)
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("work.a", durable=True)
    ch.queue_declare("other", durable=True)
    result = ctl(server.data_dir, "set-policy", "short-ttl", "^work\\.",
                 '{"message-ttl": 100, "dead-letter-exchange": "dlx"}', "--apply-to", "queues", "--priority", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "policy 'short-ttl' set"
    ch.basic_publish("", "work.a", b"late", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "other", b"kept")
    _m, props, body = dead_letter(ch)
    assert body == b"late" and props.headers["x-death"][0]["reason"] == "expired"
    assert ch.queue_declare("other", passive=True).method.message_count == 1
    listing = ctl(server.data_dir, "--json", "list-queues")
    policies = {q["name"]: q["policy"] for q in json.loads(listing.stdout)}
    assert policies["work.a"] == "short-ttl" and policies["other"] is None
    conn.close()

    server.stop()
    server.start()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
    ch = conn.channel()
    listed = json.loads(ctl(server.data_dir, "--json", "list-policies").stdout)
    assert listed == [{"vhost": "/", "name": "short-ttl", "pattern": "^work\\.", "apply-to": "queues",
                       "priority": 1, "definition": {"message-ttl": 100, "dead-letter-exchange": "dlx"}}]
    ch.basic_publish("", "work.a", b"after restart")
    assert dead_letter(ch)[2] == b"after restart"
    assert ctl(server.data_dir, "clear-policy", "short-ttl").returncode == 0
    ch.basic_publish("", "work.a", b"no ttl now")
    hold(0.3, "without the policy the message must NOT expire (its TTL was 100 ms)")
    assert ch.queue_declare("work.a", passive=True).method.message_count == 1
    conn.close()


def test_policy_alternate_exchange_and_max_length(server: LeveretProcess) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
    ch = conn.channel()
    ch.exchange_declare("orders", "direct")
    ch.exchange_declare("unrouted", "fanout")
    ch.queue_declare("lost")
    ch.queue_bind("lost", "unrouted")
    ch.queue_declare("capped")
    assert ctl(server.data_dir, "set-policy", "ae", "^orders$", '{"alternate-exchange": "unrouted"}',
               "--apply-to", "exchanges").returncode == 0
    assert ctl(server.data_dir, "set-policy", "cap", "^capped$", '{"max-length": 2}').returncode == 0
    ch.basic_publish("orders", "nobody", b"to the AE")
    for i in range(4):
        ch.basic_publish("", "capped", b"%d" % i)
    assert ch.basic_get("lost", auto_ack=True)[2] == b"to the AE"
    assert [ch.basic_get("capped", auto_ack=True)[2] for _ in range(2)] == [b"2", b"3"]
    conn.close()


def test_ctl_errors_are_one_line(server: LeveretProcess) -> None:
    bad = ctl(server.data_dir, "set-policy", "p", ".*", '{"message-ttl": -1}')
    assert bad.returncode == 1 and bad.stderr.strip() == (
        "leveret: error: policy key 'message-ttl' must be an integer >= 0, not -1")
    missing = ctl(server.data_dir, "clear-policy", "nope")
    assert missing.returncode == 1 and "no policy 'nope' in vhost '/'" in missing.stderr
    nobroker = ctl(server.data_dir / "elsewhere", "status")
    assert nobroker.returncode == 1 and "cannot reach a broker" in nobroker.stderr


def test_highest_priority_policy_wins() -> None:
    low = Policy("/", "low", ".*", {"max-length": 10})
    high = Policy("/", "high", "^q", {"max-length": 5}, priority=2, apply_to="queues")
    exchanges_only = Policy("/", "ex", ".*", {"alternate-exchange": "ae"}, priority=9, apply_to="exchanges")
    policies = {p.name: p for p in (low, high, exchanges_only)}
    assert effective(policies, "queue1", "queue") is high
    assert effective(policies, "x1", "queue") is low
    assert effective(policies, "x1", "exchange") is exchanges_only
    assert effective(policies, "amq.gen-abc", "queue") is None
    with pytest.raises(PreconditionFailed):
        validate_policy(Policy("/", "bad", "(", {"max-length": 1}))
