"""Store and forward: a durable outbox (``Outbox``: a local SQLite file; ``PostgresOutbox``: a shared PostgreSQL
database) and the forwarder that drains it into brokers (``Forwarder``, ``leveret forward``). See docs/outbox.md."""

from leveret.outbox.forwarder import Forwarder, parse_brokers
from leveret.outbox.message import DEFAULT_DESTINATION, OutboxError, OutboxMessage
from leveret.outbox.postgres import PostgresOutbox
from leveret.outbox.storage import OutboxStorage, open_outbox
from leveret.outbox.store import Outbox

__all__ = ["DEFAULT_DESTINATION", "Forwarder", "Outbox", "OutboxError", "OutboxMessage", "OutboxStorage",
           "PostgresOutbox", "open_outbox", "parse_brokers"]
