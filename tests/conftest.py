"""Shared pytest fixtures for the Leveret test suite.

- ``leveret``: a real Leveret broker on an ephemeral port of 127.0.0.1, in a background thread of this
  process (a fresh broker per test). ``leveret.port``, ``leveret.broker`` (the core, for inspection through
  ``leveret.call(fn)``).
- ``rabbitmq_port``: 5672 when the reference RabbitMQ answers there; the test is skipped otherwise.
- ``broker_port``: parametrised over both brokers ("leveret", "rabbitmq") for differential tests: a test
  using it runs once against each, and the RabbitMQ run is skipped when RabbitMQ is absent.
- ``make_config``: a Config for tests (ephemeral port, data dir in tmp_path).
- ``http_server``: as ``leveret``, with the management API on another ephemeral port (``.http_port``).
- ``stomp_server``: as ``leveret``, with STOMP on another ephemeral port (``.stomp_port``); ``stomp_broker``:
  ``(amqp_port, stomp_port)`` of it or of RabbitMQ (5672, 61613), parametrised as ``broker_port``.
- ``conn``: a pika BlockingConnection to ``broker_port`` (so it runs against both brokers), closed afterwards.
- ``broker``: a differential ``Run`` (tests/differential/harness.py) on ``broker_port``: connections and names,
  what was declared is deleted at the end.

Parallel runs (``.ci/run``: pytest-xdist, ``-n 4 --dist loadgroup``): a test that uses the reference RabbitMQ is
marked ``rabbitmq`` here (see ``uses_rabbitmq``) and all of them run in one worker, one after another; the others,
each on brokers of its own, are spread over the workers; a module may put its tests into a group of its own
(``pytest.mark.xdist_group("name")``: tests/integration/test_cluster_kill.py, three nodes per test) so that they run
one after another. ``-n 0`` runs serially.

The tests are in unit/ (no sockets), integration/ (real clients against a real Leveret), differential/ (the same
client code against Leveret and RabbitMQ) and support/ (helpers, importable by name: see ``pythonpath`` in
pyproject.toml). This one conftest.py serves them all (a second one would shadow ``from conftest import``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pika.adapters.blocking_connection import BlockingConnection

from leveret.config import Config
from leveret.node import ThreadedServer

from amqphelp import connect

RABBITMQ_HOST = "127.0.0.1"
RABBITMQ_PORT = 5672
RABBITMQ_HTTP_PORT = 15672  # its management API (tests/support/httphelp.py)
RABBITMQ_STOMP_PORT = 61613  # its STOMP plugin


def rabbitmq_available() -> bool:
    try:
        with socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=0.5) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            sock.settimeout(2)
            return sock.recv(1) == b"\x01"
    except OSError:
        return False


_RABBITMQ: bool | None = None


def require_rabbitmq() -> int:
    global _RABBITMQ
    if _RABBITMQ is None:
        _RABBITMQ = rabbitmq_available()
    if not _RABBITMQ:
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672 (start it with ../shared/scripts/rabbitmq.sh)")
    return RABBITMQ_PORT


def uses_rabbitmq(item: pytest.Item) -> bool:
    """Whether a test talks to the reference RabbitMQ: marked ``rabbitmq``, asks for ``rabbitmq_port``, or is
    parametrised with "rabbitmq" (``broker_port``, ``stomp_broker`` and the modules' own such fixtures) or with
    one of its well-known ports."""
    if item.get_closest_marker("rabbitmq") or "rabbitmq_port" in getattr(item, "fixturenames", ()):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any((isinstance(value, str) and value == "rabbitmq")
               or (type(value) is int and value in (RABBITMQ_PORT, RABBITMQ_HTTP_PORT, RABBITMQ_STOMP_PORT))
               for value in params.values())


XDIST_GROUP = "rabbitmq"


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under pytest-xdist (``-n N --dist loadgroup``, the default of ``.ci/run``) every test that uses the one
    shared RabbitMQ runs in the same worker, one after another as in a serial run: several of them use fixed names
    or change server-wide state (users, vhost limits, permissions) there. The tests on Leveret alone are spread
    over the workers (each has its own broker on an ephemeral port and its own tmp_path). Marked here, before
    ``-m`` selects: ``-m "not rabbitmq"`` leaves them out."""
    if uses_rabbitmq(item):
        item.add_marker(pytest.mark.rabbitmq)
        item.add_marker(pytest.mark.xdist_group(XDIST_GROUP))


def _set_nodeid(item: pytest.Item, nodeid: str) -> None:
    structured = getattr(item, "_id", None)
    if hasattr(structured, "parse"):  # pytest 9 keeps a NodeId (the same string once formatted)
        item._id = type(structured).parse(nodeid)  # type: ignore[attr-defined]
    else:  # pytest 8
        item._nodeid = nodeid


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Nodeids pytest-xdist can schedule by: pytest-xdist 3.8 puts a test of an ``xdist_group`` into its group by
    appending ``@group`` to its nodeid, which pytest 9 no longer lets it do (the nodeid is no longer the
    ``_nodeid`` it sets), so the suffix is set here; and schemathesis gives each API operation's test
    (test_http_openapi.py) the nodeid of the test function, so xdist would run one of them for all: each gets
    its own. A serial run keeps its nodeids but for that."""
    grouping = bool(getattr(config.option, "loadgroup", False))  # set on xdist's workers for --dist loadgroup
    for item in items:
        nodeid = item.nodeid
        module, _, name = nodeid.rpartition("::")
        if module and "@" not in name and name != item.name:
            nodeid = f"{module}::{item.name}"
        groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                         for mark in item.iter_markers("xdist_group")})  # as xdist names a group
        if grouping and groups and not nodeid.endswith("@" + "_".join(groups)):
            nodeid += "@" + "_".join(groups)
        if nodeid != item.nodeid:
            _set_nodeid(item, nodeid)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {"port": 0, "data_dir": str(tmp_path / "data"), "log_level": "warning",
                                  # the management API only where a test asks for it; HTTPS too (it starts on
                                  # 15671 with TLS: two TLS tests in parallel workers would both bind it)
                                  "http_port": -1, "http_tls_port": -1,
                                  "stomp_port": -1, "stomp_tls_port": -1}  # STOMP too (stomp_server)
        values.update(overrides)
        return Config(**values)

    return make


@pytest.fixture
def leveret(make_config: Callable[..., Config]) -> Iterator[ThreadedServer]:
    server = ThreadedServer(make_config()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_server(make_config: Callable[..., Config]) -> Iterator[ThreadedServer]:
    server = ThreadedServer(make_config(http_port=0)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stomp_server(make_config: Callable[..., Config]) -> Iterator[ThreadedServer]:
    """A fresh Leveret with STOMP on an ephemeral port (``.stomp_port``; ``.port`` is AMQP's)."""
    server = ThreadedServer(make_config(stomp_port=0)).start()
    try:
        yield server
    finally:
        server.stop()



def rabbitmq_stomp_available() -> bool:
    """True when RabbitMQ's STOMP plugin answers a CONNECT on 127.0.0.1:61613 with CONNECTED."""
    try:
        with socket.create_connection((RABBITMQ_HOST, RABBITMQ_STOMP_PORT), timeout=0.5) as sock:
            sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
            sock.settimeout(2)
            return sock.recv(9).startswith(b"CONNECTED")
    except OSError:
        return False


@pytest.fixture(params=["leveret", "rabbitmq"])
def stomp_broker(request: pytest.FixtureRequest) -> tuple[int, int]:
    """``(amqp_port, stomp_port)`` of a fresh Leveret (stomp_server) or of the reference RabbitMQ (5672, 61613),
    skipped when RabbitMQ or its STOMP plugin is not there."""
    if request.param == "rabbitmq":
        port = require_rabbitmq()
        if not rabbitmq_stomp_available():
            pytest.skip("RabbitMQ's STOMP plugin is not listening on 127.0.0.1:61613 (rabbitmq-plugins enable "
                        "rabbitmq_stomp)")
        return port, RABBITMQ_STOMP_PORT
    server: ThreadedServer = request.getfixturevalue("stomp_server")
    return server.port, server.stomp_port


@pytest.fixture
def rabbitmq_port() -> int:
    return require_rabbitmq()


@pytest.fixture(params=["leveret", "rabbitmq"])
def broker_port(request: pytest.FixtureRequest) -> int:
    if request.param == "rabbitmq":
        return require_rabbitmq()
    server: ThreadedServer = request.getfixturevalue("leveret")
    return server.port


@pytest.fixture
def unique() -> str:
    """A name unique to this test run (tests against RabbitMQ share its vhost)."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conn(broker_port: int) -> Iterator[BlockingConnection]:
    connection = connect(broker_port)
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


@pytest.fixture
def broker(broker_port: int, unique: str) -> Iterator[Any]:
    from harness import Run  # tests/differential/harness.py

    run = Run(broker_port, unique)
    try:
        yield run
    finally:
        run.cleanup()


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, size: str, why: str = "") -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "64m") mounted below ``tmp_path`` for the test, unmounted afterwards; the test
    is skipped where mounting is not allowed (root on Linux only). ``why`` is added to the skip reason."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip(f"mounting a small tmpfs needs root on Linux{why}")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
