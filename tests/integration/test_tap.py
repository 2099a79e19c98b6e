"""The firehose tracer (amq.rabbitmq.trace, core/tracing.py) and `leveret tap`: trace messages in RabbitMQ's
format, the traced messages' flow unchanged (returns, alternate exchanges, confirms, queue counts), and the tap
command's output for routed and unroutable messages."""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika.adapters.blocking_connection import BlockingChannel

from leveret.config import Config
from leveret.core.exchanges import create_exchange
from leveret.core.tracing import set_tracing
from leveret.node import ThreadedServer
from leveret.tap import TopicFilter

from amqphelp import connect
from waiting import poll


@pytest.fixture
def server(make_config: Callable[..., Config]) -> Iterator[ThreadedServer]:
    # a short data dir: the control socket (for `leveret tap`) lives there and AF_UNIX paths are short
    data_dir = tempfile.mkdtemp(prefix="lv-", dir="/tmp")
    srv = ThreadedServer(make_config(data_dir=data_dir, store="memory")).start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def tracing(server: ThreadedServer, on: bool, vhost: str = "/") -> None:
    server.call(lambda: set_tracing(server.broker.vhosts[vhost], on))


def drain(ch: BlockingChannel, queue: str, limit: int = 100) -> list[tuple[str, dict[str, Any], bytes]]:
    """(routing key, headers, body) of every message in ``queue`` now."""
    found = []
    for _ in range(limit):
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        found.append((method.routing_key, props.headers or {}, body))
    return found


def scenario(ch: BlockingChannel, trace_queue: str, prefix: str) -> dict[str, Any]:
    """Publish and consume a little in ``ch``'s vhost with a queue bound to the trace exchange; what was traced."""
    ch.queue_declare(trace_queue, exclusive=True)
    ch.queue_bind(trace_queue, "amq.rabbitmq.trace", "#")
    ch.exchange_declare(f"{prefix}-orders", "topic", auto_delete=True)
    ch.queue_declare(f"{prefix}-billing", exclusive=True)
    ch.queue_bind(f"{prefix}-billing", f"{prefix}-orders", "order.*")
    ch.confirm_delivery()
    ch.basic_publish(f"{prefix}-orders", "order.new", b'{"id": 1}',
                     pika.BasicProperties(content_type="application/json", message_id="id-1", delivery_mode=2,
                                          headers={"h": "v"}))
    ch.basic_publish(f"{prefix}-orders", "nobody.listens", b"lost")
    method, _p, _b = ch.basic_get(f"{prefix}-billing")
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _p, _b = ch.basic_get(f"{prefix}-billing", auto_ack=True)
    poll(lambda: ch.queue_declare(trace_queue, passive=True).method.message_count >= 4, timeout=5)  # async on RabbitMQ
    return {"traced": drain(ch, trace_queue), "billing": ch.queue_declare(f"{prefix}-billing", passive=True)}


def test_firehose_messages_have_rabbitmq_headers(server: ThreadedServer) -> None:
    tracing(server, True)
    connection = connect(server.port)
    traced = scenario(connection.channel(), "firehose", "t")["traced"]
    connection.close()
    assert [key for key, _h, _b in traced] == ["publish.t-orders", "publish.t-orders", "deliver.t-billing",
                                               "deliver.t-billing"]  # none for the trace queue's own gets
    (_k, routed, body), (_k2, lost, lost_body), (_k3, first, _b3), (_k4, again, _b4) = traced
    assert body == b'{"id": 1}' and lost_body == b"lost"
    assert routed["exchange_name"] == "t-orders" and routed["routing_keys"] == ["order.new"]
    assert routed["routed_queues"] == ["t-billing"] and lost["routed_queues"] == []
    assert routed["properties"] == {"content_type": "application/json", "headers": {"h": "v"}, "delivery_mode": 2,
                                    "message_id": "id-1"}
    assert routed["user"] == "guest" and routed["channel"] == 1 and routed["node"].startswith("leveret@")
    assert routed["connection"].startswith("127.0.0.1:")
    assert first["redelivered"] == 0 and again["redelivered"] == 1 and first["exchange_name"] == "t-orders"


def test_flow_is_unchanged_by_tracing(server: ThreadedServer) -> None:
    """Each step runs with tracing off and then on (with a tap queue bound to everything): the client sees the
    same returns, alternate-exchange routing, confirms and queue counts."""

    def run(tag: str) -> dict[str, Any]:
        connection = connect(server.port)
        ch = connection.channel()
        ch.queue_declare(f"tap-{tag}", exclusive=True)
        ch.queue_bind(f"tap-{tag}", "amq.rabbitmq.trace", "#")
        ch.exchange_declare(f"ae-{tag}", "fanout", auto_delete=True)
        ch.queue_declare(f"unrouted-{tag}", exclusive=True)
        ch.queue_bind(f"unrouted-{tag}", f"ae-{tag}")
        ch.exchange_declare(f"main-{tag}", "direct", arguments={"alternate-exchange": f"ae-{tag}"})
        ch.exchange_declare(f"plain-{tag}", "direct")
        ch.queue_declare(f"q-{tag}", exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
        ch.queue_bind(f"q-{tag}", f"main-{tag}", "k")
        ch.confirm_delivery()
        outcome: dict[str, Any] = {}
        try:
            ch.basic_publish(f"plain-{tag}", "k", b"x", mandatory=True)
            outcome["returned"] = False
        except pika.exceptions.UnroutableError:
            outcome["returned"] = True
        try:
            ch.basic_publish("", f"no-such-queue-{tag}", b"x", mandatory=True)
            outcome["default_returned"] = False
        except pika.exceptions.UnroutableError:
            outcome["default_returned"] = True
        ch.basic_publish(f"main-{tag}", "other", b"to the AE", mandatory=True)  # AE: routed, not returned
        confirms = []
        for i in range(3):
            try:
                ch.basic_publish(f"main-{tag}", "k", b"%d" % i)
                confirms.append("ack")
            except pika.exceptions.NackError:
                confirms.append("nack")
        outcome["confirms"] = confirms
        outcome["q"] = ch.queue_declare(f"q-{tag}", passive=True).method.message_count
        outcome["unrouted"] = ch.queue_declare(f"unrouted-{tag}", passive=True).method.message_count
        outcome["traced"] = len(drain(ch, f"tap-{tag}"))
        connection.close()
        return outcome

    off = run("off")
    tracing(server, True)
    on = run("on")
    assert off == {"returned": True, "default_returned": True, "confirms": ["ack", "ack", "nack"], "q": 2,
                   "unrouted": 1, "traced": 0}
    assert on == {**off, "traced": 6}


def test_tracing_is_per_vhost(server: ThreadedServer) -> None:
    server.call(lambda: server.broker.add_vhost("other"))
    server.call(lambda: server.broker.set_permission("guest", "other"))
    tracing(server, True, "other")
    connection = connect(server.port)
    ch = connection.channel()
    ch.queue_declare("firehose", exclusive=True)
    ch.queue_bind("firehose", "amq.rabbitmq.trace", "#")
    ch.basic_publish("amq.fanout", "", b"x")
    ch.queue_declare("firehose", passive=True)
    assert drain(ch, "firehose") == []
    connection.close()


@pytest.mark.rabbitmq
def test_firehose_format_matches_rabbitmq(server: ThreadedServer, rabbitmq_port: int) -> None:
    """The same scenario on RabbitMQ (tracing switched on with rabbitmqctl in a vhost of its own) and on Leveret:
    the same trace routing keys, header names and properties."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed: cannot switch RabbitMQ's tracing on")
    vhost = f"trace-{uuid.uuid4().hex[:8]}"

    def rabbitmqctl(*args: str) -> None:
        result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            pytest.skip(f"rabbitmqctl {args[0]} failed: {result.stderr.strip()[:200]}")

    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        rabbitmqctl("trace_on", "-p", vhost)
        params = pika.ConnectionParameters("127.0.0.1", rabbitmq_port, vhost, connection_attempts=1)
        connection = pika.BlockingConnection(params)
        theirs = scenario(connection.channel(), "firehose", "t")
        connection.close()
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)
    tracing(server, True)
    connection = connect(server.port)
    ours = scenario(connection.channel(), "firehose", "t")
    connection.close()

    def shape(traced: list[tuple[str, dict[str, Any], bytes]]) -> list[tuple[str, list[str], Any, Any, bytes]]:
        return [(key, sorted(headers), headers.get("properties"), headers.get("routed_queues"), body)
                for key, headers, body in traced]

    assert shape(ours["traced"]) == shape(theirs["traced"])


class Tap:
    """`leveret tap` as a child process, started once it says it is tapping."""

    def __init__(self, server: ThreadedServer, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leveret", "tap", *args, "--data-dir", server.config.data_dir, "--url",
             f"amqp://guest:guest@127.0.0.1:{server.port}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        assert self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stderr], [], [], 30)
        started = self.proc.stderr.readline() if ready else ""
        if not started.startswith("tapping"):
            self.proc.kill()
            raise AssertionError(f"leveret tap did not start: {started}{self.proc.stderr.read()}")

    def finish(self) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err


def tracing_on(server: ThreadedServer) -> bool:
    return server.call(lambda: server.broker.vhosts["/"].tracer is not None)  # type: ignore[return-value]


def test_leveret_tap_prints_routed_and_unroutable_messages(server: ThreadedServer, tmp_path: Path) -> None:
    connection = connect(server.port)
    ch = connection.channel()
    ch.exchange_declare("orders", "topic")
    ch.queue_declare("billing")
    ch.queue_bind("billing", "orders", "order.created")
    ch.confirm_delivery()
    tap = Tap(server, "orders", "order.#", "--count", "2")
    assert tracing_on(server)
    ch.basic_publish("orders", "order.created", b'{"id": 7}', pika.BasicProperties(content_type="application/json",
                                                                                  message_id="m-7"))
    ch.basic_publish("orders", "invoice.sent", b"not matching the pattern")
    with pytest.raises(pika.exceptions.UnroutableError):  # the tap does not make it routable
        ch.basic_publish("orders", "order.lost", b"\xff\x00binary", mandatory=True)
    code, out, err = tap.finish()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert " orders 'order.created' -> billing [content_type=application/json message_id=m-7] 9 B '{\"id\": 7}'" \
        in lines[0]
    assert " orders 'order.lost' -> (unroutable) 8 B 'base64:/wBiaW5hcnk='" in lines[1]
    assert ch.queue_declare("billing", passive=True).method.message_count == 1
    assert not tracing_on(server)  # it switched tracing on, so it switched it off

    output = tmp_path / "tap.jsonl"
    tracing(server, True)  # already on: the tap leaves it on
    tap = Tap(server, "orders", "--output", str(output), "--count", "1")
    ch.basic_publish("orders", "anything", b"hello")
    code, out, err = tap.finish()
    assert code == 0 and out == "", err
    (item,) = [json.loads(line) for line in output.read_text().splitlines()]
    assert {k: item[k] for k in ("exchange", "routing_key", "routed_queues", "body", "body_encoding", "vhost",
                                 "user")} == {"exchange": "orders", "routing_key": "anything", "routed_queues": [],
                                              "body": "hello", "body_encoding": "utf-8", "vhost": "/",
                                              "user": "guest"}
    assert tracing_on(server)
    connection.close()


def test_leveret_tap_errors(server: ThreadedServer, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "leveret", "tap", "x", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot reach a broker" in result.stderr
    result = subprocess.run([sys.executable, "-m", "leveret", "tap", "x", "--vhost", "nope", "--data-dir",
                             server.config.data_dir], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == "leveret: error: no vhost 'nope'"


_WORDS = st.sampled_from(["a", "b", "", "*", "#"])


@given(pattern=st.lists(_WORDS, max_size=5), key=st.lists(st.sampled_from(["a", "b", ""]), max_size=5))
@settings(max_examples=400, deadline=None)
def test_tap_filter_matches_as_the_topic_exchange_routes(pattern: list[str], key: list[str]) -> None:
    """The tap's PATTERN (leveret/tap.py, which imports nothing of the broker) follows the topic exchange's rules."""
    exchange = create_exchange("topic", "t")
    exchange.bind("q", ".".join(pattern))
    routing_key = ".".join(key)
    assert TopicFilter(".".join(pattern)).matches([routing_key]) == bool(exchange.route(routing_key, None))


def test_leveret_ctl_and_tap_load_neither_the_broker_nor_aiohttp() -> None:
    code = ("import sys; from leveret.cli import build_parser; build_parser(); "
            "import leveret.ctl, leveret.tap; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'aio_pika', 'asyncio') "
            "or m.startswith(('leveret.core', 'leveret.server', 'leveret.http', 'leveret.node'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
