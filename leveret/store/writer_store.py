"""What the stores that write through one group-commit writer thread share (SqliteStore, PostgresStore).

A subclass sets ``self._writer`` (an object with ``submit(ops, done)``, ``call(fn) -> exception or None``,
``in_writer()``, ``closing``, ``commits`` and ``failed_commits``: leveret/sqlite_writer.py's Writer, the PostgreSQL
store's PgWriter) while it is open, ``self._is_open``, and ``where`` (how messages name the store).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from leveret.core.storage import MessageOp, Store, StoreError


class WriterStore(Store):
    _writer: Any
    _is_open: bool

    @property
    def where(self) -> str:
        raise NotImplementedError

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer is not None else 0

    @property
    def failed_commits(self) -> int:
        return self._writer.failed_commits if self._writer is not None else 0

    def __enter__(self) -> Any:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, ops: Sequence[MessageOp], done: Callable[[BaseException | None], None]) -> None:
        writer = self._open_writer()
        writer.submit(ops if isinstance(ops, list) else list(ops), done)

    def flush(self) -> None:
        """Wait until every earlier submit has been written or has failed (its ``done`` says which: flush
        itself does not raise for a failed commit)."""
        if self._is_open:
            self._wait(lambda conn: None, "flush", raise_failure=False)

    def _open_writer(self) -> Any:
        writer = self._writer
        if not self._is_open or writer is None or writer.closing:
            raise StoreError(f"the store {self.where} is closed")
        return writer

    def _wait(self, fn: Callable[[Any], object], what: str, raise_failure: bool = True) -> None:
        """Run ``fn`` in the writer's transaction, after everything submitted so far, and wait for its commit."""
        writer = self._open_writer()
        if writer.in_writer():
            raise StoreError(f"{what} called from a store callback (the writer thread) would wait for itself")
        exc = writer.call(fn)
        if exc is not None and raise_failure:
            raise exc

    def _execute(self, what: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run definition statements in the writer's transaction and wait for their commit."""
        def run(conn: Any) -> None:
            for sql, params in statements:
                conn.execute(sql, params)

        self._wait(run, what)
