"""Store and forward: a durable local outbox (``Outbox``) and the forwarder that drains it into brokers
(``Forwarder``, ``leveret forward``). See docs/outbox.md."""

from leveret.outbox.forwarder import Forwarder, parse_brokers
from leveret.outbox.store import DEFAULT_DESTINATION, Outbox, OutboxError, OutboxMessage

__all__ = ["DEFAULT_DESTINATION", "Forwarder", "Outbox", "OutboxError", "OutboxMessage", "parse_brokers"]
