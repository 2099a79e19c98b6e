"""A PostgreSQL for the outbox's PostgreSQL storage tests: scripts/postgres.sh's throwaway cluster.

``postgres_url`` (session): $LEVERET_TEST_POSTGRES_URL, else the cluster ``scripts/postgres.sh`` runs (``url``),
else one it starts for this session in a temporary directory (never installing packages: .ci/run does that)
and stops at the end. The test is skipped, saying why, when none can be had (or psycopg is missing).
``postgres_db``: a fresh database on it per test, dropped afterwards; its URL. ``postgres_store_url``: a
Leveret store URL (``?schema=`` a fresh PostgreSQL schema, dropped afterwards), cheaper than a database.
``own_role``: a login role of its own and a store URL with it, so that a test can cut a broker off the database.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    url = os.environ.get("LEVERET_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    found = subprocess.run(["bash", str(SCRIPT), "url"], capture_output=True, text=True)
    if found.returncode == 0:
        yield found.stdout.strip()
        return
    with tempfile.TemporaryDirectory(prefix="leveret-pg-") as tmp:
        os.chmod(tmp, 0o755)  # the cluster runs as the user "postgres" when the tests run as root
        env = {**os.environ, "LEVERET_PG_DIR": str(Path(tmp) / "pg"), "LEVERET_PG_NO_INSTALL": "1"}
        started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, env=env,
                                 timeout=120)
        if started.returncode != 0:
            pytest.skip(f"no PostgreSQL: scripts/postgres.sh start failed: {started.stderr.strip()[-300:]}")
        try:
            yield subprocess.run(["bash", str(SCRIPT), "url"], capture_output=True, text=True, env=env,
                                 check=True).stdout.strip()
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, env=env, timeout=60)


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    import psycopg
    from psycopg import conninfo

    name = f"outbox_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield conninfo.make_conninfo(postgres_url, dbname=name) if "://" not in postgres_url else \
        postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_store_url(postgres_url: str) -> Iterator[str]:
    """A Leveret store URL on the test server with a schema of its own (``?schema=``), dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_url}?schema={name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def own_role(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A login role of its own and a store URL with it (``?schema=s_<role>``, which the role creates): a test can
    lock a broker out of the database. The URL carries a password (trust authentication ignores it): tests check
    that it never reaches a log."""
    import psycopg

    role = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT CREATE ON DATABASE {conn.info.dbname} TO {role}")
    url = postgres_url.replace("://leveret@", f"://{role}:pw-secret@", 1) + f"?schema=s_{role}"
    assert role in url
    yield role, url
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        conn.execute(f"DROP SCHEMA IF EXISTS s_{role} CASCADE")
        conn.execute(f"REVOKE CREATE ON DATABASE {conn.info.dbname} FROM {role}")
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def schema_db(url: str) -> Any:
    """An autocommit psycopg connection to a store URL's database, its search path the URL's ``?schema=``."""
    import psycopg

    conn = psycopg.connect(url.partition("?")[0], autocommit=True)
    conn.execute(f"SET search_path TO {url.rpartition('schema=')[2]}")
    return conn


def submit_wait(store: Any, ops: list[Any]) -> None:
    """Submit ``ops`` to a store and wait until they are written; they must have committed."""
    done: list[BaseException | None] = []
    store.submit(ops, done.append)
    store.flush()
    assert done == [None]
