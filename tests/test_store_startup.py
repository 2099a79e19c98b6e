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
