"""One SQLite writer thread with group commit: the broker's store (store/sqlite.py) and the outbox
(outbox/store.py) both write through it. Standard library only, at the top level: the outbox is a client library
and imports nothing of the broker.

:meth:`Writer.submit` appends ``(payload, done)`` to a deque and returns (it never blocks on I/O). One thread,
with its own connection, takes everything queued (until the :class:`Batch` says it is full, but always at least
one whole submit), writes it in one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), then calls the callbacks
of that transaction in submit order: with None once the commit returned (durable, given the connection's
``PRAGMA synchronous``), or with the error of a failed commit, which is rolled back (the next transaction starts
afresh; a connection whose rollback fails is reopened). The sqlite3 module releases the GIL while SQLite works,
so the submitter's thread keeps running during the writes and the fsync, and while the writer commits, the next
transaction piles up.

With ``gather`` (seconds; 0, the default, turns it off) a writer that is saturated (its last transaction took at
least ``GATHER_AFTER`` submits, and more arrived while it ran) waits that long before the next one, unless
``GATHER_SUBMITS`` submits already wait: more submits share one commit, and the commits, fsyncs and done
callbacks per message go down (the broker's store: docs/performance.md, "The persistent path"). A writer that
finds its queue empty after a commit, or that commits a trickle (one publisher waiting for each confirm, with a
consumer's acks), never waits, so a lone submit is not delayed.

What a payload means is the owner's business: a :class:`Batch` (one per transaction, made by ``new_batch``) is
given each payload in order (``add``) and writes what it collected (``write``) before the commit and before
any :class:`Call` queued among the payloads runs, so calls and payloads stay in submit order. :meth:`Writer.call`
runs a function in the writer's transaction after everything submitted so far and waits for its commit
(definitions, maintenance, tests).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

Done = Callable[[BaseException | None], None]


class Call:
    """A queued item that runs ``fn(connection)`` in the writer's transaction."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        self.fn = fn


class Batch(Protocol):
    """The work of one transaction, as its owner defines it."""

    def add(self, conn: sqlite3.Connection, payload: Any) -> None:
        """Take one submitted payload (write it now, or collect it for ``write``)."""

    def full(self) -> bool:
        """True when no further submit should join this transaction."""

    def write(self, conn: sqlite3.Connection) -> None:
        """Write what ``add`` collected (before a Call runs, and before COMMIT); may be called more than once."""

    def committed(self) -> None:
        """The transaction committed."""


GATHER_AFTER = 8  # a writer is saturated when its last transaction took this many submits and more wait
GATHER_SUBMITS = 64  # a saturated writer does not wait for more (gather) when this many submits already wait


class WriterStopped(Exception):
    """The writer is closed, or was asked to wait for itself (a call from one of its own callbacks)."""


class Writer:
    """``connect()`` opens the writer's connection (configured: PRAGMAs) and reopens it after a failed rollback;
    ``describe(exc)`` turns an sqlite3 error into the owner's error type (the text its callers see); ``label``
    starts every log line (e.g. "store /var/lib/leveret/leveret.db")."""

    def __init__(self, *, name: str, label: str, conn: sqlite3.Connection,
                 connect: Callable[[], sqlite3.Connection], new_batch: Callable[[], Batch],
                 describe: Callable[[sqlite3.Error], BaseException], log: logging.Logger,
                 gather: float = 0.0) -> None:
        self.label = label
        self.gather = gather  # seconds a saturated writer waits before its next transaction (module docstring)
        self.gathers = 0  # how many times it did
        self._last_size = 0  # submits in the last transaction
        self.conn = conn
        self._connect = connect
        self._new_batch = new_batch
        self._describe = describe
        self._log = log
        self._queue: collections.deque[tuple[Any, Done]] = collections.deque()
        self._wake = threading.Event()
        self._idle = False
        self.closing = False
        self._failing = 0  # consecutive failed commits
        self._last_failure_log = float("-inf")
        self.commits = 0
        self.failed_commits = 0
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    # --- the submitters' side ------------------------------------------------------------------------------

    def submit(self, payload: Any, done: Done) -> None:
        """Queue ``payload`` (or a :class:`Call`) after every earlier submit; ``done`` is called on the writer's
        thread once its transaction committed or failed. The caller checks that the writer is open."""
        self._queue.append((payload, done))
        if self._idle:
            self._wake.set()

    def call(self, fn: Callable[[sqlite3.Connection], object]) -> BaseException | None:
        """Run ``fn`` in the writer's transaction after everything submitted so far and wait for the commit;
        returns the commit's error (None when it is durable). Raises WriterStopped from the writer's thread."""
        return self.wait(Call(fn))

    def wait(self, payload: Any) -> BaseException | None:
        """Submit ``payload`` (or a :class:`Call`) and wait for its commit; returns the commit's error."""
        if self.in_writer():
            raise WriterStopped(f"{self.label}: a call from the writer's own thread would wait for itself")
        finished = threading.Event()
        outcome: list[BaseException | None] = []

        def done(exc: BaseException | None) -> None:
            outcome.append(exc)
            finished.set()

        self.submit(payload, done)
        self._wake.set()
        while not finished.wait(1.0):
            if not self._thread.is_alive():  # pragma: no cover - the writer never exits early
                raise WriterStopped(f"{self.label}: the writer has stopped")
        return outcome[0]

    def in_writer(self) -> bool:
        return self._thread is threading.current_thread()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Write what is queued (its callbacks are called), then stop the thread. The connection stays open."""
        if self.in_writer():
            raise WriterStopped(f"{self.label}: close() called from the writer's thread")
        self.closing = True
        self._wake.set()
        self._thread.join()

    # --- the writer's thread -------------------------------------------------------------------------------

    def _main(self) -> None:
        queue = self._queue
        wake = self._wake
        saturated = False  # submits arrived while the last transaction ran
        while True:
            if not queue:
                saturated = False
                if self.closing:
                    return
                self._idle = True
                if not queue and not self.closing:
                    wake.wait()
                    wake.clear()
                self._idle = False
                continue
            if saturated and self.gather > 0 and len(queue) < GATHER_SUBMITS and not self.closing:
                self.gathers += 1
                time.sleep(self.gather)  # more submits join this transaction (the GIL is free meanwhile)
            try:
                self._transaction()
            except BaseException:  # pragma: no cover - _transaction reports its own errors
                self._log.exception("%s: writer error", self.label)
            saturated = self._last_size >= GATHER_AFTER and bool(queue)

    def _transaction(self) -> None:
        queue = self._queue
        conn = self.conn
        items: list[tuple[Any, Done]] = []
        popleft = queue.popleft
        keep = items.append
        batch = self._new_batch()
        error: BaseException | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            while queue and not batch.full():
                item = popleft()
                keep(item)
                payload = item[0]
                if payload.__class__ is Call:
                    batch.write(conn)
                    payload.fn(conn)
                else:
                    batch.add(conn, payload)
            batch.write(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            error = self._describe(exc) if isinstance(exc, sqlite3.Error) else exc
            if error is not exc:
                error.__cause__ = exc
            self.failed_commits += 1
            self._failing += 1
            now = time.monotonic()
            if now - self._last_failure_log >= 10.0:  # at most one line per 10 s while it keeps failing
                self._last_failure_log = now
                self._log.error("%s: a commit of %d submits failed (%d failed so far): %s", self.label, len(items),
                                self._failing, error)
            self._rollback()
        else:
            self.commits += 1
            batch.committed()
            if self._failing:
                self._log.warning("%s: commits work again after %d failed", self.label, self._failing)
                self._failing = 0
                self._last_failure_log = float("-inf")
        self._last_size = len(items)
        for _, done in items:
            try:
                done(error)
            except Exception:
                self._log.exception("%s: a done callback failed", self.label)

    def _rollback(self) -> None:
        conn = self.conn
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return
        except sqlite3.Error as exc:
            self._log.warning("%s: rollback failed (%s): reopening the writer's connection", self.label, exc)
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        while True:
            try:
                self.conn = self._connect()
                return
            except sqlite3.Error as exc:  # pragma: no cover - the disk is gone
                self._log.error("%s: cannot reopen the writer's connection (%s); retrying", self.label, exc)
                time.sleep(1.0)
