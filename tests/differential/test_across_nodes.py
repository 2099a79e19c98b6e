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

import pytest
from conftest import require_rabbitmq

import scenarios_basic  # noqa: F401  (importing a scenario module registers its scenarios)
import scenarios_corners  # noqa: F401
import scenarios_lifecycle  # noqa: F401
import scenarios_raw  # noqa: F401
from harness import SCENARIOS, Run, Scenario, transcript
from pghelp import postgres_url  # noqa: F401 - fixture
from serverproc import LeveretProcess

# scenario -> why it does not give RabbitMQ's transcript across nodes (docs/cluster.md says both)
NOT_YET: dict[str, str] = {
    "corners/reply_to_passive_declare": (
        "a passive declare of another node's direct reply-to address answers declare-ok while that node runs, also "
        "after its reply consumer was cancelled: the asking node does not know the consumer is gone"),
    "lifecycle/max_length_bytes": (
        "x-overflow reject-publish cannot nack a publish handed over from another node: the publishing node "
        "confirms at its own commit, before the owner applies the limit (it drops the message and logs it)"),
}


class AcrossNodes(Run):
    """A Run whose every connection (pika, py-amqp, raw sockets, the checks and the clean-up) goes to the next
    node: ``port`` answers the next node's port each time it is read."""

    def __init__(self, ports: list[int], prefix: str) -> None:
        self._ports = itertools.cycle(ports)
        super().__init__(ports[0], prefix)

    @property  # type: ignore[override]
    def port(self) -> int:
        return next(self._ports)

    @port.setter
    def port(self, value: int) -> None:
        pass


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
    assert set(NOT_YET) <= set(SCENARIOS)
