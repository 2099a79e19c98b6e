"""A PostgreSQL failover under a running Leveret (docs/cluster.md, "High availability of PostgreSQL itself"): a
primary with a synchronous streaming-replication standby (scripts/postgres-pair.sh), the store URL naming both
hosts (libpq's ``host=a,b`` with ``target_session_attrs=read-write``), the primary crashed under a publisher with
confirms and the standby promoted: every confirmed message is on the new primary; the broker blocks or nacks
while no primary answers and goes on by itself once the standby is promoted. Also: a store URL whose first host
is down opens on the second.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from pghelp import postgres_url  # noqa: F401 - fixture
from serverproc import LeveretProcess

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "postgres-pair.sh"
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pair:
    """scripts/postgres-pair.sh in a directory of the test's."""

    def __init__(self, directory: Path) -> None:
        self.env = {**os.environ, "LEVERET_PG_PAIR_DIR": str(directory)}
        out = self._run("start", timeout=120).stdout.split()
        self.primary, self.standby = int(out[1]), int(out[3])

    def _run(self, cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), cmd], capture_output=True, text=True, env=self.env,
                              timeout=timeout, check=True)

    def store_url(self, schema: str) -> str:
        return (f"postgresql://leveret@127.0.0.1:{self.primary},127.0.0.1:{self.standby}/postgres"
                f"?target_session_attrs=read-write&connect_timeout=2&schema={schema}")

    def crash_primary(self) -> None:
        self._run("crash-primary")

    def promote(self) -> None:
        self._run("promote")

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, env=self.env, timeout=60)


@pytest.fixture
def pair(postgres_url: str) -> Iterator[Pair]:  # noqa: F811 - postgres_url: PostgreSQL is installed
    # not under tmp_path: pytest's base directory is private, and the servers run as the user "postgres" when
    # the tests run as root
    with tempfile.TemporaryDirectory(prefix="leveret-pg-pair-") as tmp:
        os.chmod(tmp, 0o755)
        try:
            made = Pair(Path(tmp) / "pair")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"no PostgreSQL pair: scripts/postgres-pair.sh start failed: {exc.stderr.strip()[-300:]}")
        try:
            yield made
        finally:
            made.stop()


def test_a_store_url_whose_first_host_is_down_opens_on_the_next(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    """libpq's multi-host URL goes through Leveret's store URL unchanged: the first host refuses, the second
    serves; what was confirmed is there after a restart."""
    host_port = postgres_url.split("@", 1)[1].split("/", 1)[0]
    url = (f"postgresql://leveret@127.0.0.1:{_free_port()},{host_port}/postgres"
           f"?target_session_attrs=read-write&schema=t_multi_{os.getpid()}")
    server = LeveretProcess(tmp_path / "data", "--store", url).start()
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("multi", durable=True)
        for i in range(20):
            ch.basic_publish("", "multi", b"m%d" % i, PERSISTENT)
        conn.close()
        server.stop()
        server.start()
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        assert conn.channel().queue_declare("multi", passive=True).method.message_count == 20
        conn.close()
    finally:
        server.kill()
        import psycopg

        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS t_multi_{os.getpid()} CASCADE")


class Publisher(threading.Thread):
    """Publishes numbered persistent messages with confirms, one at a time; a nacked or unanswered message is
    published again (the same number) until it is confirmed. Records what was confirmed and when."""

    def __init__(self, port: int, total: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.port, self.total, self.deadline = port, total, deadline
        self.confirmed: list[int] = []
        self.confirmed_at: list[float] = []
        self.nacked: set[int] = set()
        self.blocked = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _connect(self) -> Any:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port, connection_attempts=1))
        conn.add_on_connection_blocked_callback(lambda *_: setattr(self, "blocked", self.blocked + 1))
        ch = conn.channel()
        ch.confirm_delivery()
        return conn, ch

    def _run(self) -> None:
        conn, ch = self._connect()
        n = 0
        while n < self.total and time.monotonic() < self.deadline:
            try:
                ch.basic_publish("", "ha", str(n).encode(), PERSISTENT)
            except pika.exceptions.NackError:
                self.nacked.add(n)
                time.sleep(0.05)  # a pause before trying the same message again, not a synchronisation
                continue
            except (pika.exceptions.AMQPError, OSError):
                self.nacked.add(n)
                if conn.is_open:
                    conn.close()
                time.sleep(0.2)
                conn, ch = self._connect()
                continue
            self.confirmed.append(n)
            self.confirmed_at.append(time.monotonic())
            n += 1
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", [False, True], ids=["one-node", "cluster-node"])
def test_primary_crash_and_promotion_lose_no_confirmed_message(tmp_path: Path, pair: Pair, cluster: bool) -> None:
    """With ``cluster = true`` too: the node's heartbeat and leases move to the new primary with the writer, and
    the node goes on serving (the failover is far shorter than two thirds of ``node_lease``)."""
    env = {"LEVERET_STORE_CONNECT_RETRY": "60"}
    if cluster:
        env.update(LEVERET_CLUSTER="true", LEVERET_NODE_NAME="ha-node")
    server = LeveretProcess(tmp_path / "data", "--store", pair.store_url("ha"), env=env).start()
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        conn.channel().queue_declare("ha", durable=True)
        conn.close()
        publisher = Publisher(server.port, total=600, deadline=time.monotonic() + 120)
        publisher.start()
        deadline = time.monotonic() + 60
        while len(publisher.confirmed) < 200 and time.monotonic() < deadline and publisher.is_alive():
            time.sleep(0.01)
        assert len(publisher.confirmed) >= 200, publisher.error
        crashed_at = time.monotonic()
        before = len(publisher.confirmed)
        pair.crash_primary()
        pair.promote()
        promoted_at = time.monotonic()
        publisher.join(150)
        assert not publisher.is_alive() and publisher.error is None, publisher.error
        assert publisher.confirmed == list(range(600))
        resumed = next(t for t in publisher.confirmed_at[before:] if t > promoted_at)
        print(f"failover: the primary crashed, the standby promoted {promoted_at - crashed_at:.2f} s later; "
              f"first confirm after the promotion {resumed - promoted_at:.2f} s after it; "
              f"{len(publisher.nacked)} messages nacked and published again; blocked {publisher.blocked}x")
        assert server.wait_for_log("connection to PostgreSQL is lost")
        if cluster:  # the heartbeat's own connection found the new primary: the node keeps its leases
            assert server.wait_for_log("the cluster link reconnected to PostgreSQL", timeout=30)
            assert "could not renew its queue leases" not in server.log

        # every confirmed message is on the new primary (the broker restarted reads it back from there); a
        # message whose commit reached the standby but whose confirm was lost with the primary may be there twice
        server.stop()
        server.start()
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port))
        ch = conn.channel()
        got: list[int] = []
        while (answer := ch.basic_get("ha", auto_ack=True))[0] is not None:
            got.append(int(answer[2]))
        conn.close()
        assert set(got) == set(range(600))
        twice = [n for n in set(got) if got.count(n) > 1]
        assert set(twice) <= publisher.nacked, twice
    finally:
        server.kill()
