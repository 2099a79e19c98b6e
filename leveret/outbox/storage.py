"""What the forwarder needs of an outbox, whatever stores it: SQLite (``Outbox``, the default) or PostgreSQL
(``PostgresOutbox``). ``open_outbox(target)`` picks one from a path or a ``postgresql://`` URL."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from leveret.outbox.message import OutboxMessage
from leveret.outbox.store import Outbox
from leveret.outbox.tracking import Notice


class OutboxStorage(Protocol):
    kind: str  # "sqlite", "postgresql"
    shared: bool  # several forwarders may drain it at once (leases), or one per outbox (a lock file)

    @property
    def where(self) -> str: ...  # for logs: a path, or a URL without its password

    def send(self, exchange: str, routing_key: str, body: bytes, properties: Mapping[str, Any] | None = None,
             destinations: Iterable[str] | None = None, mandatory: bool = True) -> str: ...

    def send_many(self, messages: Iterable[Mapping[str, Any]]) -> list[str]: ...

    async def send_async(self, exchange: str, routing_key: str, body: bytes,
                         properties: Mapping[str, Any] | None = None, destinations: Iterable[str] | None = None,
                         mandatory: bool = True) -> str: ...

    def fetch(self, destination: str, after: int, limit: int) -> list[OutboxMessage]: ...

    def parked_due(self, destination: str, now: float) -> int: ...

    def destinations(self) -> list[str]: ...

    def status(self) -> dict[str, dict[str, Any]]: ...

    def count(self) -> int: ...

    def tracked(self, message_id: str) -> dict[str, Any]: ...

    def close(self) -> None: ...

    def __enter__(self) -> OutboxStorage: ...

    def __exit__(self, *exc_info: object) -> None: ...

    async def mark_done_async(self, destination: str, ids: Sequence[int]) -> None: ...

    async def park_async(self, destination: str, failures: Sequence[tuple[int, str]], retry_at: float) -> None: ...

    async def note_failure_async(self, destination: str, message_id: int, error: str) -> None: ...

    async def revive_async(self, destination: str, now: float) -> None: ...

    async def record_notices_async(self, notices: Sequence[Notice]) -> None: ...

    async def renew_async(self, destination: str, ids: Sequence[int]) -> None: ...

    async def release_async(self, destination: str) -> None: ...

    def free_pages(self) -> int: ...

    async def shrink_async(self, pages: int = ...) -> int: ...


def is_storage(obj: object) -> bool:
    return hasattr(obj, "fetch") and hasattr(obj, "mark_done_async")


def open_outbox(target: str | os.PathLike[str], **options: Any) -> OutboxStorage:
    """A ``postgresql://`` (or ``postgres://``) URL: a :class:`PostgresOutbox`; anything else: the SQLite file."""
    from leveret.outbox.postgres import PostgresOutbox, is_postgres_url

    if is_postgres_url(target):
        options.pop("synchronous", None)  # SQLite's
        return PostgresOutbox(str(target), **options)
    return Outbox(target, **options)
