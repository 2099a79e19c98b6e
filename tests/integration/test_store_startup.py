"""`leveret serve` over a store it cannot use: one clear line, a non-zero exit, and the data left as it was."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path


def serve(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leveret", "serve", "--port", "0", "--data-dir", str(data_dir),
                           "--log-level", "warning"], capture_output=True, text=True, timeout=30)


def test_corrupt_store_is_refused_and_left_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "leveret.db"
    garbage = b"this is not a database\x00" * 500
    db.write_bytes(garbage)
    result = serve(data)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leveret: error: "), result.stderr
    assert str(db) in lines[0]
    assert "Traceback" not in result.stderr
    assert db.read_bytes() == garbage


def test_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "leveret.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 9999")
    conn.close()
    before = db.read_bytes()
    result = serve(data)
    assert result.returncode == 1
    assert "newer Leveret" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert db.read_bytes() == before


def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = serve(blocker / "data")
    assert result.returncode == 1
    assert result.stderr.startswith("leveret: error: cannot create the data directory"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_new_store_is_readable_by_the_brokers_user_only(tmp_path: Path) -> None:
    """The store holds password hashes and message bodies: a new data directory is 0700 and the database with
    its -wal and -shm files 0600, whatever the umask."""
    import os
    import stat

    from leveret.store import open_store

    old = os.umask(0o022)
    try:
        store = open_store("sqlite", path=tmp_path / "data" / "leveret.db")
        try:
            store.save_vhost("v")
            mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "data").iterdir()
                    if p.name.startswith("leveret.db") and not p.name.endswith(".lock")}
        finally:
            store.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert mode["leveret.db"] == 0o600 and set(mode) >= {"leveret.db", "leveret.db-wal"}, mode
    assert set(mode.values()) == {0o600}, mode
