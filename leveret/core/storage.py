"""The persistence interface: one API, several backends (memory, sqlite; PostgreSQL next).

What is stored: vhosts, users and permissions, durable exchanges, durable queues (with their arguments),
bindings between durable objects, and persistent messages in durable queues. Definitions are written
synchronously (they are rare); message writes go through :meth:`Store.submit`, which batches them into
group commits on one writer and calls back once the batch is durable.

Message verbs (LavinMQ's five, adapted): ``push`` a message into a queue, ``delete`` (acked, dropped or
expired), ``requeue`` (mark redelivered; position is kept by ``seq``), ``purge`` a queue, and reading back
with :meth:`Store.load_messages` / :meth:`Store.load_bodies`.

Deduplication windows (core/dedup.py) are ops too: ``DedupPut`` stores one id of a durable queue's or exchange's
window with the message it came with and trims the window to its size; :meth:`Store.load_dedup` reads the windows
back at start-up.

Task status records (the broker's status book, core/status.py) go through :meth:`Store.submit` too, as ops of
their own: ``StatusPut`` merges a record into the stored one (no read needed), ``StatusRead`` reads records in
order with the writes before it, ``StatusExpire`` deletes a bounded batch of expired ones. Deleting a vhost
deletes its status records.

Where each method runs (what a backend whose writes are remote, e.g. PostgreSQL, must keep in mind)
    The broker calls every method from its event loop thread (through ``core/durability.py``, the core's only
    port to a store) except that ``done`` callbacks run on the backend's own thread. So:

    - :meth:`Store.submit` must never block: queue the ops for a writer of the backend's own (a thread, or a
      connection driven elsewhere) and call ``done`` once they are durable, in submit order; a failure calls
      ``done(exc)`` for every submit of the failed transaction and the next one starts afresh. Publisher
      confirms are sent from ``done``, so ``done(None)`` must mean durable.
    - Definition writes and :meth:`Store.flush` block the event loop until durable (one commit, one round trip):
      they are rare (a durable queue or exchange declared or deleted, users, policies, shutdown).
    - Reads while serving, bounded, on the event loop: :meth:`Store.load_bodies` (at most 512 ids / 4 MB of
      bodies: the next paged-out bodies at a queue's head, or one body of a message dead-lettered or retried) and
      :meth:`Store.load_messages` with a ``limit`` (a page of a long queue or of a delayed lane: half the queue
      memory window, records without bodies; or up to ~1,000 delayed messages with bodies). They see committed
      data only, and must be fast: one indexed range or key lookup each.
    - Reads at start-up only, before the broker serves: :meth:`Store.load_definitions`,
      :meth:`Store.message_counts`, :meth:`Store.max_message_id`, :meth:`Store.claim_queues` and
      :meth:`Store.load_messages` without a limit (recovery reads every queue's records; a node of several also
      reads a queue it takes over).
    - :meth:`Store.id_block`: at start-up and once per block of ids (one short round trip on the event loop).
    - Several nodes on one store: :meth:`Store.watch_definitions`, :meth:`Store.watch_queues` and
      :meth:`Store.watch_lanes` call back on a thread of the backend; a commit refused by the store's fence fails
      with :class:`FencedError` (the node must stop serving); :meth:`Store.cluster_nodes` and
      :meth:`Store.superseded` answer from memory.
    - :meth:`Store.free_space`: at every commit that writes messages and every second (the disk alarm): cache it.
    - Status reads (``StatusRead``, ``StatusExpire``) are ops: the writer runs them in order with the writes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .policies import Policy
from .status_record import StatusRecord

REPLY_TO = "amq.rabbitmq.reply-to"
"""Direct reply-to: the pseudo-queue a client consumes from; its replies go to ``<REPLY_TO>.<node>.<token>``."""


def reply_prefix(node: str) -> str:
    """The start of every direct reply-to address of ``node`` (core/replies.py): the node's name in hex, so that a
    store shared by several nodes finds the hand-over rows of a node's replies by their queue name (docs/cluster.md)."""
    return f"{REPLY_TO}.{node.encode().hex()}."


class StoreError(Exception):
    """The store cannot be used. ``str(error)`` is one line that says what is wrong and what to do."""


class FencedError(StoreError):
    """Several nodes (docs/cluster.md): a commit was refused because this node no longer owns, with a live lease,
    a queue or the delayed lanes it wrote for (another node may serve them now). Nothing of that transaction was
    written; the node must stop serving what it lost."""


# The names of the pseudo-queues that hold durable delayed messages (core/delays.py): part of the port, since a
# store shared by several nodes moves a dead node's lanes to the node that takes them (docs/cluster.md).
DELAYED_PREFIX = "amq.leveret.delayed."
"""Pseudo-queue (in the store) of the durable delayed messages of an x-delayed-message exchange."""
RETRY_PREFIX = "amq.leveret.retry."
"""Pseudo-queue (in the store) of the durable messages waiting to be re-enqueued into a queue."""
NODE_MARK = "\x1e"
"""Several nodes on one store: a node's pseudo-queues are named ``<prefix><node><NODE_MARK><target>``, so that
each node holds and recovers its own delayed messages (and those of the dead nodes whose lanes it took)."""


def lane_node(name: str) -> str | None:
    """The node whose tag a stored queue name carries (a delayed lane of several nodes), None for any other name."""
    for prefix in (DELAYED_PREFIX, RETRY_PREFIX):
        if name.startswith(prefix):
            node, mark, _ = name[len(prefix):].partition(NODE_MARK)
            return node if mark else None
    return None


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
    exclusive: bool = False  # several nodes: transient queues are shared too (docs/cluster.md); never durable


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


PolicyDef = Policy
"""A stored policy is the core's own record (core/policies.py)."""


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
    """Merge ``record`` into the stored status record of (vhost, record.id) (core/status_record.py's ``merge``): a
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


@dataclass(slots=True)
class DedupPut:
    """Remember a deduplication id of a durable queue or exchange (core/dedup.py): (vhost, kind, name) owns it,
    ``seq`` orders it (it grows), and the owner's window holds its last ``keep`` ids: older ones may be
    forgotten. ``kind`` is "queue" or "exchange"; ``key`` is text; ``expires`` is ms since the epoch, 0 for
    never. Deleting the queue, the exchange or the vhost deletes its ids; :meth:`Store.load_dedup` reads them
    back at start-up. A backend writes it in the same transaction as the messages submitted with it (and may
    group a transaction's ids of one owner in one row: store/sqlite_dedup.py)."""

    vhost: str
    kind: str
    name: str
    seq: int
    key: str
    expires: float
    keep: int


@dataclass(slots=True)
class HandOver:
    """Several nodes (docs/cluster.md): a message routed here to a durable queue another node owns (``owner``, as
    this node knows it), written as a hand-over row in the same transaction as the other ops submitted with it and
    announced to ``owner`` at its commit. ``id`` is a message id of this node's (unique in the store); the
    queue's owner takes the row (:class:`TakeHandOver`) into the queue in id order."""

    id: int
    vhost: str
    queue: str
    owner: str
    exchange: str
    routing_key: str
    header: bytes
    body: bytes


@dataclass(slots=True)
class TakeHandOver:
    """Several nodes: delete the hand-over rows ``ids`` (their messages are pushed in the same transaction). The
    transaction fails if any of them is gone: another node took it (it owns the queue now)."""

    ids: list[int]


MessageOp = Push | Delete | Requeue | Purge | StatusPut | StatusRead | StatusExpire | DedupPut | HandOver | TakeHandOver


@dataclass(frozen=True)
class NodeRecord:
    """A node of a cluster as the shared store knows it (times: seconds since the epoch, the store's clock).
    ``running``: seen within the node lease and not stopped."""

    name: str
    host: str
    pid: int
    started_at: float
    seen_at: float
    running: bool
    amqp: str | None = None  # where it listens for AMQP (host:port), once it does
    # what it serves, as of its last heartbeat (Store.watch_summary: management/cluster.py's shape), if any
    summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class DefinitionChange:
    """A definition change another node of a cluster made: the Store method it called (``what``: "save_queue",
    "delete_binding", ...) and that call's arguments (``args``: names, limits, the *Def records), numbered by
    ``version`` in the order the store committed them."""

    version: int
    node: str
    what: str
    args: tuple[Any, ...]


class Store(abc.ABC):
    """A backend. Every method may raise :class:`StoreError`; none of them is called concurrently except
    :meth:`submit`, whose callbacks run on the writer's thread (the caller hands them to its event loop). See the
    module docstring for which calls may block the event loop and for how long."""

    @abc.abstractmethod
    def open(self) -> None:
        """Open or create the store and migrate its schema. Raises StoreError when it cannot be used
        (corrupt, newer schema version, read-only, disk full) without touching the data."""

    @abc.abstractmethod
    def close(self) -> None:
        """Finish pending writes (their callbacks are called) and release the store."""

    # definitions (synchronous, durable when they return; they block the event loop for one commit)

    @abc.abstractmethod
    def load_definitions(self) -> Definitions: ...

    @abc.abstractmethod
    def save_vhost(self, name: str) -> None: ...

    @abc.abstractmethod
    def delete_vhost(self, name: str) -> None:
        """Also deletes the vhost's exchanges, queues, bindings, permissions, messages, status records and
        deduplication windows."""

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
        """Also deletes the bindings whose source or destination it is, and its deduplication window."""

    @abc.abstractmethod
    def save_queue(self, queue: QueueDef) -> str | None:
        """Store a durable queue's definition (several nodes: also a transient one, ``durable`` false, which the
        store removes when its owner is gone). A store shared by several nodes returns the name of the node that
        owns the queue (this one for a new queue; another one's if it was there first); the others return None."""

    @abc.abstractmethod
    def delete_queue(self, vhost: str, name: str, owner: str | None = None) -> None:
        """Also deletes its bindings, its messages and its deduplication window. Several nodes: ``owner`` is this
        node's name when it deletes the queue as its owner (x-expires, auto-delete, its own client's delete): a
        store shared by nodes then refuses it (:class:`FencedError`) if the node no longer holds the queue's lease.
        A store of one node ignores it."""

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
        """Block until everything submitted so far is durable or failed (before a definition change that must
        follow the message writes, shutdown, tests)."""

    @abc.abstractmethod
    def load_messages(self, vhost: str, queue: str, *, with_bodies: bool = True, after_seq: int = 0,
                      limit: int | None = None) -> Iterator[StoredMessage]:
        """The queue's messages with seq > after_seq in seq order (at most ``limit``), committed ones only. With a
        ``limit`` it runs on the event loop while serving (one bounded page); without, only at start-up."""

    @abc.abstractmethod
    def load_bodies(self, ids: Iterable[int]) -> dict[int, bytes]:
        """Bodies by message id, for messages whose bodies were not kept in memory (committed ones; a missing id
        is left out). On the event loop while serving: at most 512 ids at a time."""

    @abc.abstractmethod
    def message_counts(self) -> dict[tuple[str, str], int]:
        """(vhost, queue) -> number of stored messages (start-up only)."""

    @abc.abstractmethod
    def max_message_id(self) -> int:
        """The highest message id ever stored (ids are never reused across restarts; start-up only). A backend
        shared by several nodes hands out id blocks instead (:meth:`id_block`)."""

    def load_dedup(self) -> dict[tuple[str, str, str], list[tuple[int, str, float]]]:
        """The stored deduplication windows (start-up only): (vhost, kind, name) -> [(seq, key, expires)] in seq
        order, at least each owner's newest ``keep`` ids (see :class:`DedupPut`; older ones may be there too, the
        window keeps the newest). A backend that does not implement it keeps no window across restarts (and must
        refuse DedupPut ops)."""
        return {}

    def id_block(self) -> tuple[int, int] | None:
        """A block of message ids [first, last] that nobody else gets (a store shared by several nodes hands each
        node blocks of its sequence; start-up, and then once per block on the event loop: one short round trip).
        None (the default): the node numbers its messages itself, from :meth:`max_message_id` + 1."""
        return None

    def cluster_nodes(self) -> list[NodeRecord] | None:
        """The nodes sharing this store (a cached list: no I/O), None for a store of one node (the default)."""
        return None

    def watch_definitions(self, apply: Callable[[list[DefinitionChange]], None]) -> None:
        """Hand the definition changes other nodes make from now on to ``apply`` (called on a thread of the
        backend, in the order they were committed, each change once). A store of one node (the default) never
        calls it."""
        return None

    def claim_queues(self) -> dict[tuple[str, str], str] | None:
        """Several nodes: take the leases of the durable queues this node may serve (no owner, an expired lease,
        or its own) and return every stored queue's owner by (vhost, name) (start-up, before recovery reads
        messages). None (the default): a store of one node, which serves every queue."""
        return None

    def watch_queues(self, taken: Callable[[list[tuple[str, str]]], None], lost: Callable[[], None],
                     owners: Callable[[dict[tuple[str, str], str]], None] | None = None) -> None:
        """Several nodes: ``taken(queues)`` when this node took over queues whose owner's lease expired (it must
        load their messages), ``lost()`` once when it could not renew its leases in time, or when a commit was
        fenced (:class:`FencedError`: it must stop serving them at once), and ``owners(found)`` with the owner of
        every queue another node owns, by (vhost, name), when another node took queues over (and at each
        heartbeat, the safety net), so that this node names the new owner. Called on a thread of the backend. A
        store of one node (the default) never calls them."""
        return None

    def watch_lanes(self, taken: Callable[[list[tuple[str, str, int]]], None]) -> None:
        """Several nodes: ``taken(lanes)`` (on a thread of the backend) when this node took over the delayed lanes
        of a node whose lease ran out: their stored messages were moved, in the transaction that took the lease,
        into this node's lanes of the same targets; ``lanes`` lists (vhost, stored lane name, messages moved) for
        the node to read in. (At start the same is done by :meth:`claim_queues`, before recovery reads.) A store of
        one node (the default) never calls it."""
        return None

    def advertise(self, amqp: str) -> None:
        """Several nodes: record where this node listens for AMQP (``host:port``: NodeRecord.amqp)."""
        return None

    def cluster_secret(self) -> str | None:
        """Several nodes: the secret the nodes' internal links log in with (core/remote.py), made once by the
        first node and kept in the store; None for a store of one node (the default)."""
        return None

    def watch_summary(self, summary: Callable[[], dict[str, Any] | None]) -> None:
        """Several nodes: at each heartbeat, ``summary()`` (called on a thread of the backend) is written to this
        node's row, where the others read it (NodeRecord.summary: the management API's cluster view). A store of
        one node (the default) never calls it."""
        return None

    def load_handed(self, vhost: str, queue: str, skip: Sequence[int], limit: int) -> list[StoredMessage]:
        """Several nodes: at most ``limit`` hand-over rows of a queue (:class:`HandOver`), in id order, those of
        ``skip`` left out (being taken). A store of one node has none."""
        return []

    def watch_handed(self, handed: Callable[[list[tuple[str, str]]], None]) -> None:
        """Several nodes: ``handed(queues)`` (on a thread of the backend) when hand-over rows wait for queues this
        node owns, or for its direct reply-to addresses (:func:`reply_prefix`): told by the node that wrote them,
        and checked at each heartbeat. A store of one node never calls it."""
        return None

    def superseded(self, change: DefinitionChange) -> bool:
        """Whether this node changed the same object after ``change`` was made (on the broker's thread, before
        ``change`` is applied): two nodes that change one object at once end with the change the store kept."""
        return False

    def free_space(self) -> int | None:
        """Bytes free for the store on its file system (for the disk alarm); None when it uses no disk. Called at
        every commit of new messages: a backend asks its file system at most about once a second."""
        return None
