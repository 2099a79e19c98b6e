"""The PostgreSQL store's schema, its migrations, connecting (with retries) and the checks that refuse a schema.

Where
    Every table lives in one PostgreSQL schema (namespace), ``leveret`` by default (``?schema=NAME`` in the
    store's URL picks another), created if missing; each connection sets its ``search_path`` to it. So one
    database can hold several independent stores (tests use one schema each).

Tables (version in ``meta``: key ``schema_version``; MIGRATIONS is append-only)
    ``meta`` (schema_version, ``opened_at``, ``definitions_version``), ``vhosts``,
    ``users``, ``permissions``, ``limits``, ``exchanges``, ``queues``, ``bindings``, ``policies`` (as in the
    SQLite file; argument tables as tagged JSON, store/tagged_json.py; each has a ``pos`` identity column so
    definitions load in creation order), ``messages`` (id BIGINT PRIMARY KEY, vhost, queue, seq, exchange,
    routing_key, header, body, redelivered) indexed on (vhost, queue, seq, id), and ``task_status``; the names in
    these two (a client's routing key may hold NUL, which PostgreSQL text cannot) go through :func:`text_in`. Bodies
    stay in ``messages``: PostgreSQL moves a value over ~2 KB out of line by itself (TOAST; storage EXTERNAL, so
    it does not try to compress message bodies), so a scan without bodies does not read large ones.

Nodes (docs/cluster.md)
    ``nodes`` records each node that opened the store (name, host, pid, started_at, seen_at, stopped_at; times are
    the database server's clock, seconds since the epoch). The writer's connection holds session advisory locks:
    without ``cluster`` an exclusive one on the schema (``LOCK_CLASS``, hashtext(schema)), so a second node is
    refused; with ``cluster`` a shared one on the same key (so a node without ``cluster`` and the nodes of a
    cluster refuse each other) and an exclusive one on the node's name (``hashtext('leveret node ' || schema)``,
    hashtext(name)), so two nodes of one name are refused. ``queues`` has ``owner`` / ``lease_until`` columns
    (the queue leases: postgres_cluster.py).

Message ids (schema 3)
    The sequence ``message_ids`` counts in blocks of ``ID_BLOCK``: each ``nextval`` hands a node the ids
    ``(value - ID_BLOCK, value]``, which no other node gets. (Schemas 1 and 2 kept a high-water mark,
    ``max_message_id`` in ``meta``; migration 3 starts the sequence above it and above every stored id.)

Shared definitions (schema 3; store/postgres_cluster.py)
    ``changes`` is the log of definition changes (version, node, at, what, args): every definition write appends
    its row in the same transaction, numbered by ``meta.definitions_version`` (an UPDATE, whose row lock orders
    the writers: versions commit in order), and NOTIFYs the schema's channel (:func:`channel`).

Routing between nodes (schema 4; docs/cluster.md)
    ``handover`` holds messages routed on one node to a durable queue another node owns (id from the writing
    node's block, vhost, queue, node that wrote it, exchange, routing_key, header, body), indexed on (vhost,
    queue, id). The owner deletes the rows it takes in the transaction that stores their messages in ``messages``.

The cluster view (schema 5; docs/cluster.md)
    ``nodes.summary``: what the node serves (its queues' counts, its connections, its totals) as JSON, written
    with each heartbeat (postgres_cluster.py), read by the other nodes' management API.

Timers across nodes (schema 6; store/postgres_leases.py)
    ``lanes`` (node, owner, lease_until): who holds each node's delayed lanes (its stored delayed messages) and
    until when; taken over like a queue's lease, with the lane messages moved to the taker in the same transaction.

Refusals (:class:`StoreError`)
    A schema with tables but no ``meta`` (not a Leveret store), a schema version newer than this code, a store
    already in use by another node (without ``cluster``) or by a node of the same name, a database that cannot be
    reached within ``connect_retry`` seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from leveret.core.storage import StoreError

try:  # optional: pip install 'leveret[postgres]'
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - reported when a PostgresStore is made
    psycopg = None  # type: ignore[assignment]
    sql = None  # type: ignore[assignment]

log = logging.getLogger("leveret.store")

LOCK_CLASS = 0x4C565253  # pg_advisory_lock(LOCK_CLASS, hashtext(schema)): "LVRS", one node per store schema
ID_BLOCK = 10_000  # message ids a node takes from the sequence at a time (schema 3: INCREMENT BY this)
DEFAULT_SCHEMA = "leveret"
LOCK_WAIT = 5.0  # seconds open() waits for the one-node lock before it refuses the store
# TCP keepalives: a writer whose server vanished without a FIN notices within ~30 s
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 4}

_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO meta (key, value) VALUES ('max_message_id', '0')",
    "CREATE TABLE vhosts (pos BIGINT GENERATED ALWAYS AS IDENTITY, name TEXT PRIMARY KEY)",
    """CREATE TABLE users (pos BIGINT GENERATED ALWAYS AS IDENTITY, name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL, tags TEXT NOT NULL)""",
    """CREATE TABLE permissions (pos BIGINT GENERATED ALWAYS AS IDENTITY,
        username TEXT NOT NULL, vhost TEXT NOT NULL,
        configure TEXT NOT NULL, write TEXT NOT NULL, read TEXT NOT NULL,
        PRIMARY KEY (username, vhost))""",
    """CREATE TABLE limits (pos BIGINT GENERATED ALWAYS AS IDENTITY, kind TEXT NOT NULL, name TEXT NOT NULL,
        limits TEXT NOT NULL, PRIMARY KEY (kind, name))""",
    """CREATE TABLE exchanges (pos BIGINT GENERATED ALWAYS AS IDENTITY,
        vhost TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
        durable BOOLEAN NOT NULL, auto_delete BOOLEAN NOT NULL, internal BOOLEAN NOT NULL,
        arguments TEXT NOT NULL,
        PRIMARY KEY (vhost, name))""",
    """CREATE TABLE queues (pos BIGINT GENERATED ALWAYS AS IDENTITY,
        vhost TEXT NOT NULL, name TEXT NOT NULL,
        durable BOOLEAN NOT NULL, auto_delete BOOLEAN NOT NULL, arguments TEXT NOT NULL,
        owner TEXT, lease_until DOUBLE PRECISION,
        PRIMARY KEY (vhost, name))""",
    """CREATE TABLE bindings (pos BIGINT GENERATED ALWAYS AS IDENTITY,
        vhost TEXT NOT NULL, source TEXT NOT NULL,
        destination TEXT NOT NULL, destination_kind TEXT NOT NULL,
        routing_key TEXT NOT NULL, arguments TEXT NOT NULL)""",
    # a binding is identified by all its fields, arguments included; by their md5 in the index, since a b-tree
    # entry must stay under ~2.7 KB and a headers binding's arguments may be longer
    """CREATE UNIQUE INDEX bindings_identity ON bindings
        (vhost, source, destination_kind, destination, routing_key, md5(arguments))""",
    "CREATE INDEX bindings_destination ON bindings (vhost, destination_kind, destination)",
    """CREATE TABLE policies (pos BIGINT GENERATED ALWAYS AS IDENTITY,
        vhost TEXT NOT NULL, name TEXT NOT NULL, pattern TEXT NOT NULL, definition TEXT NOT NULL,
        priority INTEGER NOT NULL, apply_to TEXT NOT NULL,
        PRIMARY KEY (vhost, name))""",
    """CREATE TABLE messages (
        id BIGINT PRIMARY KEY,
        vhost TEXT NOT NULL, queue TEXT NOT NULL, seq BIGINT NOT NULL,
        exchange TEXT NOT NULL, routing_key TEXT NOT NULL,
        header BYTEA NOT NULL, body BYTEA NOT NULL,
        redelivered BOOLEAN NOT NULL DEFAULT false)""",
    "ALTER TABLE messages ALTER COLUMN body SET STORAGE EXTERNAL",
    "CREATE INDEX messages_queue_seq ON messages (vhost, queue, seq, id)",
    """CREATE TABLE task_status (
        vhost TEXT NOT NULL, id TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (vhost, id))""",
    "CREATE INDEX task_status_expires ON task_status (expires)",
    """CREATE TABLE nodes (name TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
        started_at DOUBLE PRECISION NOT NULL, seen_at DOUBLE PRECISION NOT NULL)""",
)

# 2: dedup, the deduplication windows (postgres_dedup.py).
_V2 = (
    """CREATE TABLE dedup (
        vhost TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, seq BIGINT NOT NULL, last BIGINT NOT NULL,
        ids TEXT NOT NULL,
        PRIMARY KEY (vhost, kind, name, seq))""",
)

# 3: several nodes (docs/cluster.md): message ids from a sequence in blocks (above the old high-water mark and
# every stored id), the shared definitions' change log and version, and when a node stopped.
_V3 = (
    f"CREATE SEQUENCE message_ids AS BIGINT INCREMENT BY {ID_BLOCK} MINVALUE 0 START WITH 0",
    """SELECT setval('message_ids', greatest((SELECT value::bigint FROM meta WHERE key = 'max_message_id'),
        coalesce((SELECT max(id) FROM messages), 0)))""",
    "DELETE FROM meta WHERE key = 'max_message_id'",
    "INSERT INTO meta (key, value) VALUES ('definitions_version', '0')",
    """CREATE TABLE changes (version BIGINT PRIMARY KEY, node TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
        what TEXT NOT NULL, args TEXT NOT NULL)""",
    "ALTER TABLE nodes ADD COLUMN stopped_at DOUBLE PRECISION",
)

# 4: routing between nodes (docs/cluster.md): the hand-over rows of messages routed on one node to a durable queue
# another node owns, taken by the owner in id order.
_V4 = (
    """CREATE TABLE handover (
        id BIGINT PRIMARY KEY,
        vhost TEXT NOT NULL, queue TEXT NOT NULL, node TEXT NOT NULL,
        exchange TEXT NOT NULL, routing_key TEXT NOT NULL,
        header BYTEA NOT NULL, body BYTEA NOT NULL)""",
    "ALTER TABLE handover ALTER COLUMN body SET STORAGE EXTERNAL",
    "CREATE INDEX handover_queue ON handover (vhost, queue, id)",
    "ALTER TABLE nodes ADD COLUMN amqp TEXT",  # where a node listens for AMQP (host:port), told to clients
)

# 5: the cluster view (docs/cluster.md): each node's summary of what it serves (JSON), written with its heartbeat
_V5 = (
    "ALTER TABLE nodes ADD COLUMN summary TEXT",
)

# 6: timers across nodes (docs/cluster.md, store/postgres_leases.py): the lease on each node's delayed lanes, held
# by the node itself or by the node that took them over; every known node's starts expired (it takes it back at start)
_V6 = (
    "CREATE TABLE lanes (node TEXT PRIMARY KEY, owner TEXT, lease_until DOUBLE PRECISION NOT NULL DEFAULT 0)",
    "INSERT INTO lanes (node, owner, lease_until) SELECT name, name, 0 FROM nodes",
)

# 7: several nodes share transient definitions too (docs/cluster.md): a non-durable queue's row (durable false,
# removed when its owner is gone) says whether it is exclusive (to its declaring connection on its owner)
_V7 = (
    "ALTER TABLE queues ADD COLUMN exclusive BOOLEAN NOT NULL DEFAULT false",
)

# MIGRATIONS[i] takes a store from schema_version i to i + 1. Append only; never edit a released one.
MIGRATIONS: list[tuple[str, ...]] = [_V1, _V2, _V3, _V4, _V5, _V6, _V7]
SCHEMA_VERSION = len(MIGRATIONS)


def split_url(url: str) -> tuple[str, str]:
    """(the libpq URL, the schema): ``?schema=NAME`` is Leveret's, the rest of the query goes to libpq."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    kept = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    if not schema or len(schema) > 63:
        raise StoreError(f"bad schema name {schema!r} in the store URL (1 to 63 characters)")
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept))), schema


def where(url: str, schema: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    shown = f"{user}@{netloc[2]}" if netloc[1] else netloc[2]
    text = urllib.parse.urlunsplit(parts._replace(netloc=shown, query=""))
    return text if schema == DEFAULT_SCHEMA else f"{text}?schema={schema}"


def reason(exc: BaseException) -> str:
    """One line from a psycopg error (libpq's messages span lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def connect(url: str, schema: str, timeout: float, role: str = "reader") -> Any:
    """One autocommit connection whose search_path is the store's schema (migrate() creates it); its
    application_name ("leveret writer <schema>", "leveret reader <schema>") shows in pg_stat_activity."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)),
                           application_name=f"leveret {role} {schema}"[:63], **KEEPALIVES)
    try:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    except BaseException:
        conn.close()
        raise
    return conn


def connect_retrying(url: str, schema: str, shown: str, timeout: float, retry: float,
                     sleep: Callable[[float], None] = time.sleep) -> Any:
    """connect(), retried with back-off (0.5 s doubling to 5 s) for ``retry`` seconds; one log line per failed
    attempt. Raises StoreError (one line) once ``retry`` has passed."""
    deadline = time.monotonic() + retry
    delay = 0.5
    while True:
        try:
            return connect(url, schema, timeout, "writer")
        except psycopg.Error as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreError(f"cannot connect to the PostgreSQL store {shown}: {reason(exc)} (gave up after "
                                 f"{retry:g} s: check that the server runs and the URL)") from None
            wait = min(delay, left)
            log.error("cannot connect to the PostgreSQL store %s: %s; retrying in %.1f s (giving up in %.1f s)",
                      shown, reason(exc), wait, left)
            sleep(wait)
            delay = min(delay * 2, 5.0)


def take_lock(conn: Any, schema: str, shown: str, wait: float = LOCK_WAIT, *, node: str = "",
              cluster: bool = False) -> None:
    """The session advisory locks of this node (released with the connection): without ``cluster`` the one that
    makes it the store's only user; with ``cluster`` a share of that one and the lock on its name. Tried for
    ``wait`` seconds: after a kill -9 the server may take a moment to end the old node's session."""
    deadline = time.monotonic() + wait
    store_lock = "pg_try_advisory_lock_shared" if cluster else "pg_try_advisory_lock"
    while not conn.execute(f"SELECT {store_lock}(%s, hashtext(%s))", (LOCK_CLASS, schema)).fetchone()[0]:
        if time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        if cluster:
            raise StoreError(f"the PostgreSQL store {shown} is in use by a Leveret node that does not run with "
                             "cluster = true: stop it, or start every node of the store with cluster = true")
        raise StoreError(f"the PostgreSQL store {shown} is in use by another Leveret node: stop it, or use "
                         "another schema (?schema=NAME in the URL); several nodes on one store need cluster = true "
                         "on each (docs/cluster.md)")
    if not cluster:
        return
    while not conn.execute("SELECT pg_try_advisory_lock(hashtext('leveret node ' || %s), hashtext(%s))",
                           (schema, node)).fetchone()[0]:
        if time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        conn.execute("SELECT pg_advisory_unlock_shared(%s, hashtext(%s))", (LOCK_CLASS, schema))
        raise StoreError(f"a Leveret node named {node!r} already runs on the PostgreSQL store {shown}: give each "
                         "node of a cluster a name of its own (node_name)")


def migrate(conn: Any, schema: str, shown: str, node: str) -> int:
    """Create or upgrade the schema (under a transaction advisory lock, so that nodes starting together do not
    race), register this node as ``node``, and make one real write. Returns the message id high-water mark (the
    sequence's last block and every stored id are below it)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS + 1, schema))
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))}
        version = 0
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
        elif tables:
            raise StoreError(f"the schema {schema!r} of {shown} has tables but is not a Leveret store: use another "
                             "schema (?schema=NAME in the URL); Leveret does not touch it")
        if version > SCHEMA_VERSION:
            raise StoreError(f"the PostgreSQL store {shown} was written by a newer Leveret (schema {version}, this "
                             f"version knows {SCHEMA_VERSION}); upgrade Leveret or use another schema")
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                conn.execute(statement)
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE"
                         " SET value = excluded.value", (str(number + 1),))
            log.info("store %s: schema migrated to version %d", shown, number + 1)
        now = conn.execute(NOW).fetchone()[0]  # the database's clock: the same for every node
        conn.execute("INSERT INTO meta (key, value) VALUES ('opened_at', %s) ON CONFLICT (key) DO UPDATE"
                     " SET value = excluded.value", (repr(now),))
        conn.execute("INSERT INTO nodes (name, host, pid, started_at, seen_at, stopped_at)"
                     " VALUES (%s, %s, %s, %s, %s, NULL)"
                     " ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                     " started_at = excluded.started_at, seen_at = excluded.seen_at, stopped_at = NULL",
                     (node, socket.gethostname(), os.getpid(), now, now))
        return int(conn.execute(MAX_MESSAGE_ID).fetchone()[0])


def text_in(value: str) -> str:
    """A name as a PostgreSQL text value: text cannot hold NUL, which a client may put in a routing key or a
    queue name (valid UTF-8), and one such row would fail a whole group commit. A string holding NUL (or starting
    with the marker \\x01) is stored as \\x01 + its JSON; every other string as it is (the usual case costs one
    scan)."""
    if "\x00" in value or value[:1] == "\x01":
        return "\x01" + json.dumps(value)
    return value


def text_out(value: str) -> str:
    """The name :func:`text_in` stored."""
    return json.loads(value[1:]) if value[:1] == "\x01" else value  # type: ignore[no-any-return]


def default_node_name() -> str:
    """The node name of a store opened without one (as the broker's default: leveret@HOST)."""
    return f"leveret@{os.uname().nodename}"


def channel(schema: str) -> str:
    """The schema's NOTIFY channel (a name of at most 63 bytes whatever the schema's)."""
    return "leveret_" + hashlib.sha1(schema.encode()).hexdigest()[:24]


NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"
MAX_MESSAGE_ID = ("SELECT greatest((SELECT last_value FROM message_ids),"
                  " coalesce((SELECT max(id) FROM messages), 0))")
NEXT_ID_BLOCK = "SELECT nextval('message_ids')"
