"""The outbox in PostgreSQL (psycopg 3): ``PostgresOutbox("postgresql://...")``, the same API as the SQLite
:class:`~leveret.outbox.store.Outbox`, so that a fleet of web servers can share one outbox database and
several forwarders can drain it. See docs/outbox.md.

Tables (created if missing, under an advisory lock so that processes starting together do not race):
``leveret_outbox_messages`` (id BIGSERIAL, created, exchange, routing_key, mandatory, header = the AMQP
properties' wire form, body) and ``leveret_outbox_pending`` (destination, id, state 0 = to send / 1 = parked,
attempts, error, retry_at, leased_by, lease_until), as in the SQLite file.

Several forwarders
    A forwarder *leases* what it fetches: ``fetch`` picks the next rows of a destination that nobody else
    holds (``SELECT ... FOR UPDATE SKIP LOCKED``: two forwarders fetching at once never pick the same row) and
    marks them ``leased_by`` = its own id until ``lease_until`` (the database's clock + ``lease`` seconds),
    renewed while they are in flight. Another forwarder skips leased rows until the lease expires (its holder
    died) or is released (its holder stopped). So no message is sent by two forwarders at once; after a
    forwarder's death its unconfirmed messages are sent again once the lease expires (at-least-once, as after a
    crash with SQLite).

Connections
    One connection per thread (``send`` from many threads does not serialise on one connection), opened on
    first use, dropped after an error (the next call reconnects). Every call is one transaction; it returns
    once it committed (PostgreSQL's ``synchronous_commit``: durable when the server's is on). Errors are
    :class:`OutboxError` (the message was not saved).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from leveret.outbox.message import (
    DEFAULT_DESTINATION,
    PARKED,
    TO_SEND,
    OutboxError,
    OutboxMessage,
    Row,
    check_destinations,
    destination_stats,
    prepare_message,
)
from leveret.outbox.tracking import TRACK_KEEP, Notice, TrackedMessage, summarise

try:  # optional: pip install 'leveret[postgres]'
    import psycopg
except ImportError:  # pragma: no cover - reported when a PostgresOutbox is made
    psycopg = None  # type: ignore[assignment]

MESSAGES = "leveret_outbox_messages"
PENDING = "leveret_outbox_pending"
TRACKING = "leveret_outbox_tracking"
NOTICES = "leveret_outbox_notices"  # the broker's job-done notices about tracked messages (outbox/notices.py)
_NOW = "extract(epoch from clock_timestamp())"
_SCHEMA_LOCK = 0x4C564F42  # pg_advisory_xact_lock key ("LVOB")

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {MESSAGES} (
        id BIGSERIAL PRIMARY KEY,
        created DOUBLE PRECISION NOT NULL,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        mandatory BOOLEAN NOT NULL,
        header BYTEA NOT NULL,
        body BYTEA NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {PENDING} (
        destination TEXT NOT NULL,
        id BIGINT NOT NULL REFERENCES {MESSAGES} (id) ON DELETE CASCADE,
        state SMALLINT NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        retry_at DOUBLE PRECISION,
        leased_by TEXT,
        lease_until DOUBLE PRECISION,
        PRIMARY KEY (destination, id))""",
    f"CREATE INDEX IF NOT EXISTS {PENDING}_id ON {PENDING} (id)",  # a message's rows, whatever the destination
    f"""CREATE TABLE IF NOT EXISTS {TRACKING} (
        message_id TEXT NOT NULL,
        destination TEXT NOT NULL,
        id BIGINT NOT NULL,
        sent_at DOUBLE PRECISION,
        PRIMARY KEY (message_id, destination, id))""",
    f"CREATE INDEX IF NOT EXISTS {TRACKING}_id ON {TRACKING} (id, destination)",
    f"""CREATE TABLE IF NOT EXISTS {NOTICES} (
        message_id TEXT NOT NULL,
        destination TEXT NOT NULL,
        queue TEXT NOT NULL,
        event TEXT NOT NULL,
        reason TEXT,
        ts DOUBLE PRECISION NOT NULL,
        queues TEXT,
        PRIMARY KEY (message_id, destination, queue, event))""",
)


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


class PostgresOutbox:
    """An outbox in the PostgreSQL database at ``url`` (``postgresql://user:password@host:port/dbname``).
    ``lease``: seconds a forwarder holds the messages it fetched before another may send them (renewed while
    they are in flight)."""

    kind = "postgresql"
    shared = True

    def __init__(self, url: str, *, default_destinations: Sequence[str] = (DEFAULT_DESTINATION,),
                 lease: float = 60.0, connect_timeout: float = 10.0) -> None:
        if psycopg is None:
            raise OutboxError("a PostgreSQL outbox needs psycopg 3: pip install 'leveret[postgres]'")
        self.url = url
        self.default_destinations = check_destinations(default_destinations)
        self.lease = lease
        self.connect_timeout = connect_timeout
        self.owner = uuid.uuid4().hex  # this process's leases
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._next_prune = 0.0
        self._run(lambda cur: [cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,)),
                               *(cur.execute(statement) for statement in _SCHEMA)])

    def __repr__(self) -> str:
        return f"PostgresOutbox({self.where!r})"

    @property
    def where(self) -> str:
        """The URL without its password, for logs."""
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        return f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', 5432)}/" \
               f"{info.get('dbname', '')}"

    def __enter__(self) -> PostgresOutbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()

    # --- one transaction per call, one connection per thread ---------------------------------------------------

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)))
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _run(self, fn: Any) -> Any:
        if self._closed:
            raise OutboxError(f"the outbox {self.where} is closed")
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                return fn(cur)
        except psycopg.Error as exc:
            conn = getattr(self._local, "conn", None)
            if conn is not None and (conn.closed or conn.broken):
                self._local.conn = None
            raise OutboxError(f"{self.where}: {type(exc).__name__}: {exc}".strip()) from exc

    # --- sending -----------------------------------------------------------------------------------------------

    def _insert(self, rows: list[Row]) -> None:
        def run(cur: Any) -> None:
            for row in rows:
                cur.execute(f"INSERT INTO {MESSAGES} (created, exchange, routing_key, mandatory, header, body)"
                            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                            (row.created, row.exchange, row.routing_key, row.mandatory, row.header, row.body))
                message_id = cur.fetchone()[0]
                cur.executemany(f"INSERT INTO {PENDING} (destination, id) VALUES (%s, %s)",
                                [(d, message_id) for d in row.destinations])
                if row.track is not None:
                    cur.executemany(f"INSERT INTO {TRACKING} (message_id, destination, id) VALUES (%s, %s, %s)",
                                    [(row.track, d, message_id) for d in row.destinations])

        self._run(run)

    def send(self, exchange: str, routing_key: str, body: bytes, properties: Mapping[str, Any] | None = None,
             destinations: Iterable[str] | None = None, mandatory: bool = True, track: bool = False) -> str:
        """Save one message; return its message_id once committed (raises OutboxError when not saved); with
        ``track=True`` a :class:`TrackedMessage`."""
        row, message_id = prepare_message(self.default_destinations, exchange, routing_key, body, properties,
                                          destinations, mandatory, track)
        self._insert([row])
        return TrackedMessage(message_id, self) if track else message_id

    def send_many(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        prepared = [prepare_message(self.default_destinations, **m) for m in messages]
        if prepared:
            self._insert([row for row, _ in prepared])
        return [TrackedMessage(message_id, self) if row.track else message_id for row, message_id in prepared]

    async def send_async(self, exchange: str, routing_key: str, body: bytes,
                         properties: Mapping[str, Any] | None = None, destinations: Iterable[str] | None = None,
                         mandatory: bool = True, track: bool = False) -> str:
        return await asyncio.to_thread(self.send, exchange, routing_key, body, properties, destinations, mandatory,
                                       track)

    # --- reading -----------------------------------------------------------------------------------------------

    def fetch(self, destination: str, after: int, limit: int) -> list[OutboxMessage]:
        """Lease and return up to ``limit`` messages for ``destination`` with id > ``after`` that no other
        forwarder holds, in id order."""

        def run(cur: Any) -> list[OutboxMessage]:
            cur.execute(
                f"WITH picked AS (SELECT destination, id FROM {PENDING} WHERE destination = %(d)s AND state = 0"
                f" AND id > %(after)s AND (lease_until IS NULL OR lease_until < {_NOW} OR leased_by = %(me)s)"
                " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                f" UPDATE {PENDING} p SET leased_by = %(me)s, lease_until = {_NOW} + %(lease)s FROM picked"
                " WHERE p.destination = picked.destination AND p.id = picked.id RETURNING p.id",
                {"d": destination, "after": after, "limit": limit, "me": self.owner, "lease": self.lease})
            ids = [r[0] for r in cur.fetchall()]
            if not ids:
                return []
            cur.execute(f"SELECT id, exchange, routing_key, mandatory, header, body FROM {MESSAGES}"
                        " WHERE id = ANY(%s) ORDER BY id", (ids,))
            return [OutboxMessage(i, e, r, bool(m), bytes(h), bytes(b)) for i, e, r, m, h, b in cur.fetchall()]

        result: list[OutboxMessage] = self._run(run)
        return result

    def parked_due(self, destination: str, now: float) -> int:
        return int(self._run(lambda cur: cur.execute(
            f"SELECT count(*) FROM {PENDING} WHERE destination = %s AND state = 1 AND retry_at <= %s",
            (destination, now)).fetchone()[0]))

    def destinations(self) -> list[str]:
        return [r[0] for r in self._run(lambda cur: cur.execute(
            f"SELECT DISTINCT destination FROM {PENDING} ORDER BY 1").fetchall())]

    def status(self) -> dict[str, dict[str, Any]]:
        """As ``Outbox.status``: per destination ``pending``, ``parked``, ``oldest_age``, ``last_error``."""

        def run(cur: Any) -> tuple[list[Any], dict[str, str]]:
            rows = cur.execute(f"SELECT p.destination, p.state, count(*), min(m.created) FROM {PENDING} p JOIN"
                               f" {MESSAGES} m ON m.id = p.id GROUP BY p.destination, p.state").fetchall()
            errors = dict(cur.execute(f"SELECT DISTINCT ON (destination) destination, error FROM {PENDING}"
                                      " WHERE error IS NOT NULL ORDER BY destination, id DESC").fetchall())
            return rows, errors

        rows, errors = self._run(run)
        now = time.time()
        return destination_stats(rows, errors, now)

    def tracked(self, message_id: str) -> dict[str, Any]:
        """The state of a message sent with ``track=True`` (tracking.py)."""
        rows, notices = self._run(lambda cur: (cur.execute(
            f"SELECT t.destination, t.sent_at, p.state, p.error FROM {TRACKING} t LEFT JOIN {PENDING} p"
            " ON p.id = t.id AND p.destination = t.destination WHERE t.message_id = %s ORDER BY t.id",
            (message_id,)).fetchall(), cur.execute(
            f"SELECT destination, queue, event, reason, ts, queues FROM {NOTICES} WHERE message_id = %s",
            (message_id,)).fetchall()))
        return summarise(message_id, rows, notices)

    def count(self) -> int:
        return int(self._run(lambda cur: cur.execute(f"SELECT count(*) FROM {MESSAGES}").fetchone()[0]))

    # --- the forwarder's writes --------------------------------------------------------------------------------

    def mark_done(self, destination: str, ids: Sequence[int]) -> None:
        """``destination`` confirmed ``ids``: drop their pending rows, and the messages no destination wants.
        The messages are locked first, so that two forwarders settling the last two destinations of one
        message at once cannot both leave it behind."""
        ids = list(ids)

        def run(cur: Any) -> None:
            cur.execute(f"SELECT id FROM {MESSAGES} WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
            cur.execute(f"DELETE FROM {PENDING} WHERE destination = %s AND id = ANY(%s)", (destination, ids))
            cur.execute(f"UPDATE {TRACKING} SET sent_at = {_NOW} WHERE id = ANY(%s) AND destination = %s",
                        (ids, destination))
            cur.execute(f"DELETE FROM {MESSAGES} m WHERE m.id = ANY(%s) AND NOT EXISTS"
                        f" (SELECT 1 FROM {PENDING} p WHERE p.id = m.id)", (ids,))

        self._run(run)

    def park(self, destination: str, failures: Sequence[tuple[int, str]], retry_at: float) -> None:
        self._run(lambda cur: cur.executemany(
            f"UPDATE {PENDING} SET state = {PARKED}, attempts = attempts + 1, error = %s, retry_at = %s,"
            " leased_by = NULL, lease_until = NULL WHERE destination = %s AND id = %s",
            [(error, min(retry_at, 1e300), destination, i) for i, error in failures]))

    def note_failure(self, destination: str, message_id: int, error: str) -> None:
        self._run(lambda cur: cur.execute(
            f"UPDATE {PENDING} SET attempts = attempts + 1, error = %s WHERE destination = %s AND id = %s",
            (error, destination, message_id)))

    def revive(self, destination: str, now: float) -> None:
        self._run(lambda cur: cur.execute(
            f"UPDATE {PENDING} SET state = {TO_SEND} WHERE destination = %s AND state = {PARKED} AND retry_at <= %s",
            (destination, now)))

    def renew(self, destination: str, ids: Sequence[int]) -> None:
        """Extend this process's leases of ``ids`` (in flight, not confirmed yet)."""
        self._run(lambda cur: cur.execute(
            f"UPDATE {PENDING} SET lease_until = {_NOW} + %s WHERE destination = %s AND leased_by = %s"
            " AND id = ANY(%s)", (self.lease, destination, self.owner, list(ids))))

    def release(self, destination: str) -> None:
        """Give up this process's leases for ``destination`` (a session ended: another forwarder may take them)."""
        self._run(lambda cur: cur.execute(
            f"UPDATE {PENDING} SET leased_by = NULL, lease_until = NULL WHERE destination = %s AND leased_by = %s",
            (destination, self.owner)))

    async def record_notices_async(self, notices: Sequence[Notice]) -> None:
        """Keep the broker's notices about tracked messages (the first of each event per queue)."""
        await asyncio.to_thread(self._run, lambda cur: cur.executemany(
            f"INSERT INTO {NOTICES} (message_id, destination, queue, event, reason, ts, queues)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", list(notices)))

    async def mark_done_async(self, destination: str, ids: Sequence[int]) -> None:
        await asyncio.to_thread(self.mark_done, destination, ids)

    async def park_async(self, destination: str, failures: Sequence[tuple[int, str]], retry_at: float) -> None:
        await asyncio.to_thread(self.park, destination, failures, retry_at)

    async def note_failure_async(self, destination: str, message_id: int, error: str) -> None:
        await asyncio.to_thread(self.note_failure, destination, message_id, error)

    async def revive_async(self, destination: str, now: float) -> None:
        await asyncio.to_thread(self.revive, destination, now)

    async def renew_async(self, destination: str, ids: Sequence[int]) -> None:
        await asyncio.to_thread(self.renew, destination, ids)

    async def release_async(self, destination: str) -> None:
        await asyncio.to_thread(self.release, destination)

    def free_pages(self) -> int:
        """PostgreSQL's autovacuum gives the space back: the forwarder only prunes old tracking rows (shrink),
        once a minute."""
        return 1 if time.monotonic() >= self._next_prune else 0

    async def shrink_async(self, pages: int = 0) -> int:
        """Prune the tracking rows of messages sent more than TRACK_KEEP seconds ago; 0 (nothing left to do)."""
        self._next_prune = time.monotonic() + 60.0
        await asyncio.to_thread(self._run, lambda cur: [cur.execute(
            f"DELETE FROM {table} WHERE {column} < {_NOW} - %s", (TRACK_KEEP,))
            for table, column in ((TRACKING, "sent_at"), (NOTICES, "ts"))])
        return 0
