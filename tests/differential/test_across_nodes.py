"""The differential scenarios across three nodes of one cluster (docs/cluster.md): every scenario of
``scenarios_<area>.py`` runs against RabbitMQ 3.10 as in test_scenarios.py, and against three Leveret nodes with
``cluster = true`` on one PostgreSQL store, **each connection the scenario opens going to the next node** (the
publisher on one node, the consumer on another, the checks on a third, as clients behind a round-robin load
balancer would be); the two transcripts must be equal, entry by entry.

Skipped, never faked, without RabbitMQ or PostgreSQL. A scenario that does not pass across nodes yet is listed in
``NOT_YET`` with the reason (an expected failure that must fail: if it passes, the list is out of date).
"""

from __future__ import annotations

import itertools
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from conftest import require_rabbitmq

import scenarios_basic  # noqa: F401  (importing a scenario module registers its scenarios)
import scenarios_corners  # noqa: F401
import scenarios_lifecycle  # noqa: F401
import scenarios_raw  # noqa: F401
from harness import SCENARIOS, Run, Scenario, transcript
from pghelp import postgres_url  # noqa: F401 - fixture
from serverproc import LeveretProcess
from waiting import poll

# scenario -> why it does not give RabbitMQ's transcript across nodes (docs/cluster.md says both)
NOT_YET: dict[str, str] = {
    "corners/reply_to_passive_declare": (
        "a passive declare of another node's direct reply-to address answers declare-ok while that node runs, also "
        "after its reply consumer was cancelled: the asking node does not know the consumer is gone"),
    "lifecycle/max_length_bytes": (
        "x-overflow reject-publish cannot nack a publish handed over from another node: the publishing node "
        "confirms at its own commit, before the owner applies the limit (it drops the message and logs it)"),
}

# scenario -> a race across nodes that it loses now and then (an expected failure that may pass: not strict)
RACES: dict[str, str] = {
    "lifecycle/ttl_zero": (
        "an ack relayed from the consumer's node and the next publish through another node race to the owner: with "
        "x-message-ttl 0 the owner may see the publish before the ack gives the consumer credit, and dead-letters it"),
}


class AcrossNodes(Run):
    """A Run whose every connection (pika, py-amqp, raw sockets, the checks and the clean-up) goes to the next
    node: ``port`` answers the next node's port each time it is read.

    Definitions reach the other nodes asynchronously (a NOTIFY and a read: milliseconds, docs/cluster.md), where
    RabbitMQ answers declare-ok once every node has the queue. So before each switch of node the run waits until
    every node agrees on which of the scenario's queues and exchanges exist (polled with passive declares, at
    most 5 s): what is compared is the semantics once a declaration has spread, not the race of the first
    milliseconds (which the docs state)."""

    def __init__(self, ports: list[int], prefix: str) -> None:
        self._all = ports
        self._ports = itertools.cycle(ports)
        self._checkers: dict[int, pika.BlockingConnection] = {}
        super().__init__(ports[0], prefix)

    @property  # type: ignore[override]
    def port(self) -> int:
        if self.queues or self.exchanges:
            self._agree()
        return next(self._ports)

    @port.setter
    def port(self, value: int) -> None:
        pass

    def _exists(self, port: int, kind: str, name: str) -> bool:
        conn = self._checkers.get(port)
        if conn is None or not conn.is_open:
            conn = self._checkers[port] = pika.BlockingConnection(
                pika.ConnectionParameters("127.0.0.1", port, heartbeat=0, connection_attempts=1))
        channel = conn.channel()
        try:
            if kind == "queue":
                channel.queue_declare(name, passive=True)
            else:
                channel.exchange_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            return exc.reply_code != 404  # 405: an exclusive queue of another connection exists
        channel.close()
        return True

    def _agree(self) -> None:
        names = [("queue", q) for q in sorted(self.queues)] + [("exchange", x) for x in sorted(self.exchanges)]
        poll(lambda: all(len({self._exists(port, kind, name) for port in self._all}) == 1 for kind, name in names),
             lambda agreed: agreed, 5.0, 0.01)

    def cleanup(self) -> None:
        super().cleanup()
        for conn in self._checkers.values():
            if conn.is_open:
                conn.close()


def across_nodes(fn: Scenario, ports: list[int], prefix: str) -> list[Any]:
    run = AcrossNodes(ports, prefix)
    try:
        fn(run)
    finally:
        run.cleanup()
    return run.log


@pytest.fixture(scope="module")
def nodes(postgres_url: str) -> Iterator[list[int]]:  # noqa: F811 - the fixture
    import psycopg

    schema = f"across_{uuid.uuid4().hex[:10]}"
    store = f"{postgres_url}?schema={schema}"
    started: list[LeveretProcess] = []
    with tempfile.TemporaryDirectory(prefix="leveret-across-") as tmp:
        try:
            for name in ("node-a", "node-b", "node-c"):
                started.append(LeveretProcess(Path(tmp) / name, env={
                    "LEVERET_STORE": store, "LEVERET_CLUSTER": "true", "LEVERET_NODE_NAME": name}).start())
            yield [node.port for node in started]
        finally:
            for node in started:
                node.kill()
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _marks(name: str) -> list[Any]:
    if name in RACES:
        return [pytest.mark.xfail(reason=RACES[name], strict=False)]
    reason = NOT_YET.get(name)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


@pytest.mark.rabbitmq
@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=_marks(name)) for name in sorted(SCENARIOS)])
def test_same_as_rabbitmq_across_nodes(name: str, nodes: list[int], unique: str) -> None:
    expected = transcript(SCENARIOS[name], require_rabbitmq(), unique)
    actual = across_nodes(SCENARIOS[name], nodes, unique)
    assert expected, "the scenario observed nothing"
    for index, (got, want) in enumerate(zip(actual, expected, strict=False)):
        assert got == want, f"entry {index} differs\n  across nodes: {got!r}\n  rabbitmq:     {want!r}"
    assert len(actual) == len(expected)


def test_not_yet_names_only_scenarios_that_exist() -> None:
    assert set(NOT_YET) | set(RACES) <= set(SCENARIOS)
