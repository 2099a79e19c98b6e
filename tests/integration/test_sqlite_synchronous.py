"""The ``sqlite_synchronous`` setting reaches the SQLite store's writer connection (docs/configuration.md)."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from leveret.config import Config
from leveret.node import ThreadedServer
from leveret.store.sqlite import SqliteStore

PRAGMA_VALUES = {"full": 2, "normal": 1}  # what PRAGMA synchronous reads back


@pytest.mark.parametrize("setting", [None, "normal", "full"])
def test_the_writer_runs_with_the_configured_synchronous(tmp_path: Path, setting: str | None) -> None:
    config = Config(port=0, data_dir=str(tmp_path / "data"), http_port=-1, stomp_port=-1)
    if setting is not None:
        config = dataclasses.replace(config, sqlite_synchronous=setting)
    server = ThreadedServer(config).start()
    try:
        store = server.server.store
        assert isinstance(store, SqliteStore)
        seen: list[int] = []

        def read(conn: sqlite3.Connection) -> None:
            seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])

        store.run_in_writer(read)
    finally:
        server.stop()
    assert seen == [PRAGMA_VALUES[setting or "full"]]
