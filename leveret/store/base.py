"""The persistence interface: one API, several backends (memory, sqlite; postgres later).

What is stored: vhosts, users and permissions, durable exchanges, durable queues (with their arguments),
bindings between durable objects, and persistent messages in durable queues. Definitions are written
synchronously (they are rare); message writes go through :meth:`Store.submit`, which batches them into
group commits on one writer and calls back once the batch is durable.

Message verbs (LavinMQ's five, adapted): ``push`` a message into a queue, ``delete`` (acked, dropped or
expired), ``requeue`` (mark redelivered; position is kept by ``seq``), ``purge`` a queue, and reading back
with :meth:`Store.load_messages` / :meth:`Store.load_bodies`.

Task status records (the broker's status book, core/status.py) go through :meth:`Store.submit` too, as ops of
their own: ``StatusPut`` merges a record into the stored one (no read needed), ``StatusRead`` reads records in
order with the writes before it, ``StatusExpire`` deletes a bounded batch of expired ones. Deleting a vhost
deletes its status records.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .status import StatusRecord


class StoreError(Exception):
    """The store cannot be used. ``str(error)`` is one line that says what is wrong and what to do."""


@dataclass(frozen=True)
class ExchangeDef:
    vhost: str
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueDef:
    vhost: str
    name: str
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BindingDef:
    vhost: str
    source: str
    destination: str
    destination_kind: str  # "queue" or "exchange"
    routing_key: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UserDef:
    name: str
    password_hash: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class PermissionDef:
    user: str
    vhost: str
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"


@dataclass(frozen=True)
class PolicyDef:
    vhost: str
    name: str
    pattern: str
    definition: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    apply_to: str = "all"


@dataclass
class Definitions:
    vhosts: list[str] = field(default_factory=list)
    users: list[UserDef] = field(default_factory=list)
    permissions: list[PermissionDef] = field(default_factory=list)
    exchanges: list[ExchangeDef] = field(default_factory=list)
    queues: list[QueueDef] = field(default_factory=list)
    bindings: list[BindingDef] = field(default_factory=list)
    policies: list[PolicyDef] = field(default_factory=list)
    # (kind, name, limits): kind "vhost" (max-connections, max-queues) or "user" (max-connections, max-channels)
    limits: list[tuple[str, str, dict[str, int]]] = field(default_factory=list)


@dataclass(slots=True)
class StoredMessage:
    """A message as stored. ``body`` is None when loaded without bodies (see load_messages)."""

    id: int
    vhost: str
    queue: str
    seq: int
    exchange: str
    routing_key: str
    header: bytes
    body: bytes | None
    redelivered: bool


@dataclass(slots=True)
class Push:
    id: int
    vhost: str
    queue: str
    seq: int
    exchange: str
    routing_key: str
    header: bytes
    body: bytes


@dataclass(slots=True)
class Delete:
    id: int


@dataclass(slots=True)
class Requeue:
    id: int


@dataclass(slots=True)
class Purge:
    """Delete the queue's messages (those with seq > ``after_seq``: a queue's ready messages on disk only)."""

    vhost: str
    queue: str
    after_seq: int = 0


@dataclass(slots=True)
class StatusPut:
    """Merge ``record`` into the stored status record of (vhost, record.id) (store/status.py's ``merge``): a
    write that needs no read first."""

    vhost: str
    record: StatusRecord


@dataclass(slots=True)
class StatusRead:
    """Read status records, ordered with the ops submitted before it: ``records`` is filled by the store with the
    records of ``ids`` that exist and have not expired at ``now`` (before ``done`` is called)."""

    vhost: str
    ids: list[str]
    now: float
    records: dict[str, StatusRecord] = field(default_factory=dict)


@dataclass(slots=True)
class StatusExpire:
    """Delete at most ``limit`` status records that expired at or before ``now``; the store sets ``deleted``."""

    now: float
    limit: int
    deleted: int = 0


MessageOp = Push | Delete | Requeue | Purge | StatusPut | StatusRead | StatusExpire


class Store(abc.ABC):
    """A backend. Every method may raise :class:`StoreError`; none of them is called concurrently except
    :meth:`submit`, whose callbacks run on the writer's thread (the caller hands them to its event loop)."""

    @abc.abstractmethod
    def open(self) -> None:
        """Open or create the store and migrate its schema. Raises StoreError when it cannot be used
        (corrupt, newer schema version, read-only, disk full) without touching the data."""

    @abc.abstractmethod
    def close(self) -> None:
        """Finish pending writes (their callbacks are called) and release the store."""

    # definitions (synchronous, durable when they return)

    @abc.abstractmethod
    def load_definitions(self) -> Definitions: ...

    @abc.abstractmethod
    def save_vhost(self, name: str) -> None: ...

    @abc.abstractmethod
    def delete_vhost(self, name: str) -> None:
        """Also deletes the vhost's exchanges, queues, bindings, permissions, messages and status records."""

    @abc.abstractmethod
    def save_user(self, user: UserDef) -> None: ...

    @abc.abstractmethod
    def delete_user(self, name: str) -> None: ...

    @abc.abstractmethod
    def save_permission(self, permission: PermissionDef) -> None: ...

    @abc.abstractmethod
    def delete_permission(self, user: str, vhost: str) -> None: ...

    @abc.abstractmethod
    def save_policy(self, policy: PolicyDef) -> None: ...

    @abc.abstractmethod
    def save_limits(self, kind: str, name: str, limits: dict[str, int]) -> None:
        """Replace the limits of a vhost (``kind`` "vhost") or a user ("user"); an empty dict removes them.
        Deleting the vhost or the user also deletes its limits."""

    @abc.abstractmethod
    def delete_policy(self, vhost: str, name: str) -> None: ...

    @abc.abstractmethod
    def save_exchange(self, exchange: ExchangeDef) -> None: ...

    @abc.abstractmethod
    def delete_exchange(self, vhost: str, name: str) -> None:
        """Also deletes the bindings whose source or destination it is."""

    @abc.abstractmethod
    def save_queue(self, queue: QueueDef) -> None: ...

    @abc.abstractmethod
    def delete_queue(self, vhost: str, name: str) -> None:
        """Also deletes its bindings and its messages."""

    @abc.abstractmethod
    def save_binding(self, binding: BindingDef) -> None: ...

    @abc.abstractmethod
    def delete_binding(self, binding: BindingDef) -> None: ...

    # messages

    @abc.abstractmethod
    def submit(self, ops: Sequence[MessageOp], done: Callable[[BaseException | None], None]) -> None:
        """Queue ``ops`` for the writer, in order after every earlier submit. ``done(None)`` is called once
        they are durable (group commit: one transaction covers many submits); ``done(exc)`` if the commit
        failed. Never blocks on I/O."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Block until everything submitted so far is durable (for shutdown and tests)."""

    @abc.abstractmethod
    def load_messages(self, vhost: str, queue: str, *, with_bodies: bool = True, after_seq: int = 0,
                      limit: int | None = None) -> Iterator[StoredMessage]:
        """The queue's messages with seq > after_seq in seq order (at most ``limit``)."""

    @abc.abstractmethod
    def load_bodies(self, ids: Iterable[int]) -> dict[int, bytes]:
        """Bodies by message id, for messages whose bodies were not kept in memory."""

    @abc.abstractmethod
    def message_counts(self) -> dict[tuple[str, str], int]:
        """(vhost, queue) -> number of stored messages."""

    @abc.abstractmethod
    def max_message_id(self) -> int:
        """The highest message id ever stored (ids are never reused across restarts)."""

    def free_space(self) -> int | None:
        """Bytes free for the store on its file system (for the disk alarm); None when it uses no disk."""
        return None
