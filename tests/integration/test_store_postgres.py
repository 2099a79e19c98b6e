"""``leveret serve --store postgresql://...`` as a child process, with real clients (pika with confirms): kill -9
under load, a database that is down at start, a database that goes away while the broker runs. The restart tests
of test_durability.py run on PostgreSQL too (its ``server`` fixture). The PostgreSQL server is
scripts/postgres.sh's (tests/support/pghelp.py: skipped, saying why, without one); each test has a schema of its
own.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from soak.crash_soak import CrashRun

from pghelp import own_role, postgres_store_url, postgres_url  # noqa: F401 - fixtures
from serverproc import LeveretProcess

PERSISTENT = pika.BasicProperties(delivery_mode=2)


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("postgres_store_url"))


def connect(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_minus_9_on_postgresql_loses_no_confirmed_message(tmp_path: Path, store_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/soak/crash_soak.py (publisher with confirms, consumer acking, the broker killed at random moments)
    on a PostgreSQL store: no confirmed message is lost, none is delivered twice after its ack was durable."""
    monkeypatch.setenv("LEVERET_STORE", store_url)  # LeveretProcess passes the environment on
    seed = int(os.environ.get("LEVERET_CRASH_SEED", random.randrange(2**32)))
    # 8 cycles end it (~15 s); the time cap only stops it early on a very loaded machine (it needs 6 cycles)
    run = CrashRun(tmp_path / "data", cycles=8, seconds=60, seed=seed, max_backlog=3000).run()
    summary = run.summary()
    print(f"crash test on PostgreSQL (seed {seed}):", " ".join(f"{k}={v}" for k, v in summary.items()))
    assert run.violations == [], f"seed {seed}"
    assert summary["cycles"] >= 6, summary
    assert summary["confirmed"] >= 6 * 50, summary
    assert summary["consumed"] >= summary["confirmed"], summary
    assert run.final_count == 0


def test_database_down_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "LEVERET_HTTP_PORT": "-1", "LEVERET_STORE_CONNECT_RETRY": "1"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir", str(tmp_path),
                           "--store", f"postgresql://leveret:secret@127.0.0.1:{port}/db"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started >= 1.0  # it retried
    errors = [line for line in proc.stderr.splitlines() if line.startswith("leveret: error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"leveret: error: cannot connect to the PostgreSQL store "
                                f"postgresql://leveret@127.0.0.1:{port}/db: ")
    assert "gave up after 1 s" in errors[0]
    assert "retrying in" in proc.stderr and "secret" not in proc.stderr


def test_a_second_node_on_the_same_store_is_refused(tmp_path: Path, store_url: str) -> None:
    """One node per store today (docs/cluster.md): a second ``leveret serve`` on the same URL and schema stops with
    one line while the first one keeps serving."""
    first = LeveretProcess(tmp_path / "a", "--store", store_url).start()
    try:
        env = {**os.environ, "LEVERET_HTTP_PORT": "-1"}
        second = subprocess.run([sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir",
                                 str(tmp_path / "b"), "--store", store_url], capture_output=True, text=True, env=env,
                                timeout=60)
        assert second.returncode == 1, second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith("leveret: error: the PostgreSQL store ")
        assert "is in use by another Leveret node" in second.stderr
        conn = connect(first.port)  # the first one still serves
        conn.channel().queue_declare("still-here", durable=True)
        conn.close()
    finally:
        first.kill()


def _until(conn: pika.BlockingConnection, flag: list[Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not flag and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    return bool(flag)


def test_database_lost_while_running_blocks_publishers_then_recovers(
        tmp_path: Path, postgres_url: str, own_role: tuple[str, str]) -> None:  # noqa: F811 - the fixture
    """The database refuses the broker (its role locked out, its sessions ended): the publish in flight is nacked,
    never confirmed; publishers get connection.blocked (the disk alarm); once the database is back the broker
    reconnects, unblocks them, and what was confirmed is all there after a restart."""
    import psycopg

    role, url = own_role
    server = LeveretProcess(tmp_path / "data", "--store", url).start()
    try:
        conn = connect(server.port)
        blocked: list[Any] = []
        unblocked: list[Any] = []
        conn.add_on_connection_blocked_callback(lambda *a: blocked.append(a))
        conn.add_on_connection_unblocked_callback(lambda *a: unblocked.append(a))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("pg-outage", durable=True)
        for i in range(10):
            ch.basic_publish("", "pg-outage", b"before-%d" % i, PERSISTENT)

        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {role} NOLOGIN")
            admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", "pg-outage", b"lost", PERSISTENT)
        assert _until(conn, blocked, 15), "no connection.blocked while the database was away"
        assert server.wait_for_log("connection to PostgreSQL is lost")

        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {role} LOGIN")
        assert _until(conn, unblocked, 30), "not unblocked once the database was back"
        for i in range(10):
            ch.basic_publish("", "pg-outage", b"after-%d" % i, PERSISTENT)
        conn.close()

        server.stop()
        server.start()
        conn = connect(server.port)
        ch = conn.channel()
        got = []
        while (answer := ch.basic_get("pg-outage", auto_ack=True))[0] is not None:
            got.append(answer[2])
        assert got == [b"before-%d" % i for i in range(10)] + [b"after-%d" % i for i in range(10)]
        conn.close()
        assert server.wait_for_log(r"recovered 1 queues and 20 messages from postgresql ")
        assert "pw-secret" not in server.log
    finally:
        server.kill()
