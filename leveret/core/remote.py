"""Several nodes (docs/cluster.md): what a node answers for a queue another node serves (``Queue.served_by``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from .errors import ResourceLocked

if TYPE_CHECKING:
    from .queue import Queue


def refuse_remote(queue: Queue) -> NoReturn:
    """A consume, get or purge of a queue another node serves (``Queue.served_by``): refused, naming that node and,
    when known, where it listens for AMQP (docs/cluster.md)."""
    durability = queue.durability
    nodes = (durability.nodes() if durability is not None else None) or []
    amqp = next((node.amqp for node in nodes if node.name == queue.served_by and node.running), None)
    where = f" (AMQP at {amqp})" if amqp else ""
    raise ResourceLocked(f"queue '{queue.name}' in vhost '{queue.vhost.name}' is served by node "
                         f"'{queue.served_by}'{where}: consume from it there (consuming through another node is "
                         "not built yet)")
