"""The core's one port to the store: what is written, what is read back, and the group-commit barrier that
confirms wait on. Nothing else in leveret/core touches a store backend or the pending op list.

Message writes are collected as ops while a batch of client input is processed; :meth:`Durability.commit`
hands them to the store in one submit and runs the given callbacks (publisher confirms, tx.commit-ok) once
that submit and every earlier one are durable. A confirm therefore never overtakes the write it covers,
even when the confirmed message itself needed no write. Definitions are written synchronously.

Reads (``load_body``, ``load_bodies``, ``read_queue``, ``stored_counts``, ``load_definitions``) run on the
broker's thread: paging a queue or a delayed lane reads a bounded page, recovery reads everything at start-up
(before the broker serves). Task status reads go through the writer instead (``read_status``), off the event
loop. See core/storage.py for what a backend promises about each.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from leveret.core.message import PAGED
from leveret.core.status_record import StatusRecord
from leveret.core.storage import (
    BindingDef,
    DedupPut,
    DefinitionChange,
    Definitions,
    Delete,
    ExchangeDef,
    HandOver,
    MessageOp,
    NodeRecord,
    PermissionDef,
    PolicyDef,
    Purge,
    Push,
    QueueDef,
    Requeue,
    StatusExpire,
    StatusPut,
    StatusRead,
    Store,
    StoredMessage,
    StoreError,
    TakeHandOver,
    UserDef,
)

if TYPE_CHECKING:
    from .broker import MemoryMonitor
    from .dedup import DedupWindow
    from .exchanges import Exchange
    from .message import Message
    from .queue import Queue
    from .timers import Handle as TimerHandle
    from .timers import Timers

Done = Callable[[BaseException | None], None]
log = logging.getLogger("leveret.store")

# The disk alarm's headroom (docs/memory.md): what SQLite may still need beyond the data itself. The WAL grows
# up to its checkpoint size (WAL_AUTOCHECKPOINT pages, 16 MB) before it is reused, and a checkpoint copies up
# to that much back into the database file; and a message costs its bytes several times in the WAL (whole
# pages for the row, its body overflow pages and the index): ~30 KB for an 8 KB message, 4x.
DISK_HEADROOM = 16 << 20
WAL_FACTOR = 4
SUMMARY_WAIT = 0.5  # seconds a heartbeat waits for the event loop's summary of what this node serves (watch_summary)


_Write = TypeVar("_Write", bound=Callable[..., None])


def _written(method: _Write) -> _Write:
    """A definition write, skipped while another node's change is applied (``Durability.replaying``): that change is
    in the store already."""
    @functools.wraps(method)
    def write(self: Durability, *args: Any) -> None:
        if not self.replaying:
            method(self, *args)

    return write  # type: ignore[return-value]


def _ignore(exc: BaseException | None) -> None:
    """The store's callback for status writes: nothing waits for them (a failed commit is logged by the store)."""


class Durability:
    """Owned by the Broker when it has a store. ``dispatch(fn, *args)`` must run ``fn`` on the broker's own
    thread (the event loop's call_soon_threadsafe): store callbacks come from the writer thread."""

    def __init__(self, store: Store, dispatch: Callable[..., Any]) -> None:
        self.store = store  # the backend: for the composition root and white-box tests, never the core
        self.dispatch = dispatch
        self.ops: list[MessageOp] = []
        self.status_ops: list[MessageOp] = []  # task status records: see put_status
        self.page_out: list[Message] = []
        self.pushed: list[Message] = []  # this batch's pushes: dropped from their queues if the commit fails
        self.dedup_keys: list[tuple[DedupWindow, str]] = []  # this batch's dedup ids: forgotten if it fails
        self.in_flight = 0
        block = store.id_block()  # a store shared by several nodes hands out blocks of ids (core/storage.py)
        if block is None:
            self.next_id, self.id_limit = store.max_message_id() + 1, 2**63 - 1
        else:
            self.next_id, self.id_limit = block
        self.durable_id = self.next_id - 1  # every message with a store id up to this one is durable
        self.batch_bytes = 0  # bytes of the pushes collected for the next commit
        self.unwritten = 0  # bytes of pushes submitted and not yet committed
        self.disk_limit = 0  # disk_free_limit: 0 turns the disk alarm off
        self.alarms: MemoryMonitor | None = None
        self.recovering = False
        self.replaying = False  # applying another node's definition change: it is in the store already
        self.handing = False  # a hand-over is among the pending ops (several nodes): commit without holding
        # several nodes on one store: transient queues, exchanges and bindings are shared definitions too
        self.shared = store.cluster_nodes() is not None
        self.hold = 0.0  # seconds a write nobody waits for may wait for a confirm's commit (see commit)
        self.timers: Timers | None = None
        self._held: TimerHandle | None = None
        self._status_due = False  # a next-turn submit of the status ops is armed (no hold: see submit_status)
        self.drain_status: Callable[[], None] | None = None  # the status book's deferred records (see flush)

    # --- messages ----------------------------------------------------------------------------------

    def push(self, queue: Queue, msg: Message, page_out: bool = False) -> None:
        """Store a message; with ``page_out``, its body leaves memory once it is on disk (if still ready)."""
        msg_id = self.next_id
        if msg_id > self.id_limit:
            msg_id = self._next_block()
        self.next_id = msg_id + 1
        msg.store_id = msg_id
        self.ops.append(Push(msg_id, queue.vhost.name, queue.name, msg.seq, msg.exchange, msg.routing_key,
                             msg.header, msg.body))
        self.pushed.append(msg)
        self.batch_bytes += len(msg.body) + len(msg.header)
        if page_out:
            self.page_out.append(msg)

    def new_id(self) -> int:
        """A store id for a message written with :meth:`push_to` (ids are never reused)."""
        msg_id = self.next_id
        if msg_id > self.id_limit:
            msg_id = self._next_block()
        self.next_id = msg_id + 1
        return msg_id

    def _next_block(self) -> int:
        """The first id of the store's next block (ids still grow: the store's blocks do)."""
        block = self.store.id_block()
        assert block is not None
        first, self.id_limit = block
        return first

    def push_to(self, store_id: int, vhost: str, queue: str, seq: int, msg: Message) -> None:
        """Store ``msg`` under ``store_id`` in a queue the core keeps itself (a delayed lane, core/delays.py)."""
        self.ops.append(Push(store_id, vhost, queue, seq, msg.exchange, msg.routing_key, msg.header, msg.body))

    def hand_over(self, queue: Queue, msg: Message) -> None:
        """Several nodes: ``msg`` goes to ``queue``, which another node owns (core/shared.py), through a hand-over
        row written with this batch (its confirm follows the commit, as for a local persistent message)."""
        body = msg.body
        if body is PAGED:  # a stored message moved on (dead-lettered) whose body is paged out: read it back
            body = self.load_body(msg.store_id) or b""
        self.ops.append(HandOver(self.new_id(), queue.vhost.name, queue.name, queue.served_by or "", msg.exchange,
                                 msg.routing_key, msg.header, body))
        self.handing = True  # another node waits for it: this batch's commit is not held (see commit)

    def take_handed(self, ids: list[int]) -> None:
        """Several nodes: the hand-over rows ``ids`` were taken into their queue (with this batch's pushes)."""
        self.ops.append(TakeHandOver(ids))

    def read_handed(self, vhost: str, queue: str, skip: list[int], limit: int) -> list[StoredMessage]:
        """Several nodes: a page of the hand-over rows waiting for a queue this node owns (id order)."""
        return self.store.load_handed(vhost, queue, skip, limit)

    def advertise(self, amqp: str) -> None:
        """Several nodes: where this node listens for AMQP (``host:port``), for the other nodes' refusals."""
        self.store.advertise(amqp)

    def cluster_secret(self) -> str | None:
        """Several nodes: the secret of the links between nodes (Store.cluster_secret), None for one node."""
        return self.store.cluster_secret()

    def watch_handed(self, handed: Callable[[list[tuple[str, str]]], None]) -> None:
        """``handed(queues)`` on the broker's thread when hand-over rows wait for these queues (Store.watch_handed)."""
        self.store.watch_handed(lambda queues: self.dispatch(handed, queues))

    def watch_summary(self, summary: Callable[[], dict[str, Any]]) -> None:
        """Several nodes: ``summary()`` is computed on the broker's thread at each heartbeat and written to this
        node's row (Store.watch_summary). The backend's thread waits for it at most ``SUMMARY_WAIT`` seconds (a
        busy event loop: that heartbeat writes none, and the others keep the previous one)."""
        def on_loop() -> dict[str, Any] | None:
            done: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

            def run() -> None:
                try:
                    done.set_result(summary())
                except BaseException as exc:  # pragma: no cover - a bug: logged by the waiting side
                    done.set_exception(exc)

            try:
                self.dispatch(run)
            except RuntimeError:  # the event loop is closed: the node is stopping
                return None
            try:
                return done.result(SUMMARY_WAIT)
            except concurrent.futures.TimeoutError:
                return None
            except Exception:  # pragma: no cover - a bug: this heartbeat writes no summary
                log.exception("the cluster summary failed")
                return None

        self.store.watch_summary(on_loop)

    def delivered(self, msg: Message) -> None:
        """The message went to a consumer that must ack it: after a crash it comes back redelivered."""
        self.ops.append(Requeue(msg.store_id))

    def delete(self, msg: Message) -> None:
        self.ops.append(Delete(msg.store_id))
        msg.store_id = 0

    def delete_id(self, store_id: int) -> None:
        self.ops.append(Delete(store_id))

    def dedup_put(self, window: DedupWindow, key: str, seq: int, expires: float) -> None:
        """A durable queue's or exchange's deduplication window took ``key`` (core/dedup.py): stored with this
        batch's messages, so the publish is confirmed only once its id is on disk."""
        self.ops.append(DedupPut(window.vhost, window.kind, window.name, seq, key, expires, window.settings.size))
        self.dedup_keys.append((window, key))

    def read_dedup(self) -> dict[tuple[str, str, str], list[tuple[int, str, float]]]:
        """The stored deduplication windows (recovery)."""
        return self.store.load_dedup()

    def purge(self, queue: Queue, after_seq: int) -> None:
        """Delete the queue's stored messages with seq > ``after_seq`` (its ready messages on disk only)."""
        self.ops.append(Purge(queue.vhost.name, queue.name, after_seq))

    def purge_stored(self, vhost: str, queue: str) -> None:
        """Delete every stored message of ``queue`` (a name the core keeps itself, e.g. a delayed lane)."""
        self.ops.append(Purge(vhost, queue))

    @property
    def pending(self) -> bool:
        """Ops wait for the next commit."""
        return bool(self.ops)

    @property
    def idle(self) -> bool:
        """Nothing waits for a commit and no commit is running: every write so far is durable."""
        return not self.ops and not self.in_flight

    # --- reads (on the broker's thread: bounded, see the module docstring) -------------------------

    def load_body(self, store_id: int) -> bytes | None:
        """The body of a stored message whose body is paged out; None when the store does not have it."""
        return self.store.load_bodies([store_id]).get(store_id)

    def load_bodies(self, ids: Iterable[int]) -> dict[int, bytes]:
        """Bodies of paged-out messages, by store id (one page of a queue's head: see Queue.page_in)."""
        return self.store.load_bodies(ids)

    def read_queue(self, vhost: str, queue: str, *, with_bodies: bool = True, after_seq: int = 0,
                   limit: int | None = None) -> Iterator[StoredMessage]:
        """The stored messages of a queue with seq > ``after_seq`` in seq order, at most ``limit`` (None: all,
        for recovery only)."""
        return self.store.load_messages(vhost, queue, with_bodies=with_bodies, after_seq=after_seq, limit=limit)

    def stored_counts(self) -> dict[tuple[str, str], int]:
        """(vhost, queue) -> stored messages (recovery)."""
        return self.store.message_counts()

    def load_definitions(self) -> Definitions:
        """Everything but messages (recovery)."""
        return self.store.load_definitions()

    def commit(self, after: list[Done]) -> None:
        """Submit the pending ops; call each of ``after`` (with None, or the exception of a failed commit)
        once they and every earlier submit are durable. With nothing to wait for, call them now.

        Writes nobody waits for (``after`` empty: acks, deliveries, status records) are held up to ``hold``
        seconds when a timer is set: the next commit somebody waits for (a publisher confirm) takes them along, so
        the writer is not busy with a commit of their own when a confirm's write arrives (one fsync per
        confirm instead of up to two). A message is never confirmed before it is written: held ops go first. A
        hand-over to another node (several nodes) is not held: that node waits for it."""
        if not after and self.hold > 0 and self.timers is not None and not self.handing:
            if self._held is None:
                self._held = self.timers.call_later(self.hold, self._release)
            return
        self._commit_now(after)

    def _release(self) -> None:
        self._held = None
        try:
            self._commit_now([])
        except StoreError as exc:  # the store closed under the timer (shutdown): nothing waits for these
            log.debug("held writes not submitted: %s", exc)

    def _commit_now(self, after: list[Done]) -> None:
        self.handing = False
        if self._held is not None:
            self._held.cancel()
            self._held = None
        self._submit_status_now()
        if not self.ops and not self.in_flight:
            for callback in after:
                callback(None)
            return
        ops, self.ops = self.ops, []
        page_out, self.page_out = self.page_out, []
        pushed, self.pushed = self.pushed, []
        dedup_keys, self.dedup_keys = self.dedup_keys, []
        size, self.batch_bytes = self.batch_bytes, 0
        last_id = self.next_id - 1
        self.in_flight += 1
        if size:
            self.unwritten += size
            if self.disk_limit:
                self.check_disk()  # before the write: the alarm blocks publishers while there is still room
        self.store.submit(ops, lambda exc: self.dispatch(self._committed, after, exc, page_out, pushed, last_id,
                                                         size, dedup_keys))

    def check_disk(self) -> None:
        """The disk alarm: free space under disk_free_limit plus the headroom SQLite needs for what is being
        written (WAL_FACTOR x the bytes not yet committed) and for its WAL and checkpoints (DISK_HEADROOM)."""
        free = self.store.free_space()
        if free is None or self.alarms is None or not self.disk_limit:
            return
        need = self.disk_limit + DISK_HEADROOM + WAL_FACTOR * self.unwritten
        self.alarms.set_disk_alarm(free < need, free, need)

    def _committed(self, after: list[Done], exc: BaseException | None, page_out: list[Message],
                   pushed: list[Message], last_id: int, size: int,
                   dedup_keys: list[tuple[DedupWindow, str]]) -> None:
        self.in_flight -= 1
        self.unwritten -= size
        queues: dict[int, Queue] = {}
        for msg in pushed:
            queue = msg.queue
            if queue is not None and id(queue) not in queues:
                queues[id(queue)] = queue
        if exc is not None:  # nacked: the messages this commit would have stored leave their queues
            failed: dict[int, list[Message]] = {}
            for msg in pushed:
                if msg.queue is not None and msg.store_id > 0:
                    failed.setdefault(id(msg.queue), []).append(msg)
                else:
                    msg.store_id = -1  # already settled (no-ack, acked) or its queue is gone
            for key, msgs in failed.items():
                queues[key].discard_unstored(msgs)
            for window, dedup_key in dedup_keys:
                window.forget(dedup_key)
        else:
            for msg in page_out:
                if msg.consumer is None and msg.queue is not None:
                    msg.queue.page_out(msg)
        self.durable_id = last_id
        for queue in queues.values():
            queue.spill(last_id)
        for callback in after:
            callback(exc)

    def flush(self) -> None:
        """Write everything pending and wait for it (definitions changes and shutdown), the status book's
        deferred "queued" records included."""
        if self.drain_status is not None:
            self.drain_status()
        self._submit_status_now()
        if self.ops or self._held is not None:
            self._commit_now([])
        self.store.flush()

    # --- task status records (core/status.py) -----------------------------------------------------
    # Status ops are submitted apart from the message ops: they are advisory, so no publisher confirm or
    # tx.commit-ok waits for them (they are not part of the commit barrier), but they go through the same store
    # writer, in order with one another.

    def attach_timers(self, timers: Timers) -> None:
        """The broker's timers, for the deferral of status writes (when the server did not set them)."""
        if self.timers is None:
            self.timers = timers

    def put_status(self, vhost: str, record: StatusRecord) -> None:
        """Merge ``record`` into the stored one (a blind write: nothing is read), deferred (see submit_status)."""
        self.status_ops.append(StatusPut(vhost, record))
        if self._held is None and not self._status_due:
            self.submit_status()

    def submit_status(self, done: Done | None = None) -> None:
        """Hand the pending status ops to the store, unless ``done`` waits for them deferred (the one deferral
        of status writes): held like the writes nobody waits for (see :meth:`commit`), or with no hold until
        the next loop turn, so that one submit carries a turn's records."""
        if done is None and self.status_ops and self.timers is not None:
            if self.hold > 0:
                if self._held is None:
                    self._held = self.timers.call_later(self.hold, self._release)
            elif not self._status_due:
                self._status_due = True
                self.timers.call_later(0, self._status_turn)
            return
        self._submit_status_now(done)

    def _status_turn(self) -> None:
        self._status_due = False
        try:
            self._submit_status_now()
        except StoreError as exc:  # the store closed (shutdown)
            log.debug("status records not written: %s", exc)

    def _submit_status_now(self, done: Done | None = None) -> None:
        if self.status_ops:
            ops, self.status_ops = self.status_ops, []
            self.store.submit(ops, done or _ignore)

    def read_status(self, vhost: str, ids: list[str], now: float,
                    done: Callable[[dict[str, StatusRecord], BaseException | None], None]) -> None:
        """Read the unexpired records of ``ids`` after every status write so far, on the store's writer (off the
        event loop); ``done(records, exc)`` runs on the broker's thread."""
        op = StatusRead(vhost, ids, now)
        self.status_ops.append(op)
        self.submit_status(lambda exc: self.dispatch(done, op.records, exc))

    def expire_status(self, now: float, limit: int, done: Callable[[int, BaseException | None], None]) -> None:
        """Delete at most ``limit`` records expired at ``now``; ``done(deleted, exc)`` on the broker's thread."""
        op = StatusExpire(now, limit)
        self.status_ops.append(op)
        self.submit_status(lambda exc: self.dispatch(done, op.deleted, exc))

    # --- definitions (synchronous: durable when they return) ---------------------------------------
    # While ``replaying`` (another node's change, core/shared.py) nothing is written (@_written): it is in the
    # store already.

    def nodes(self) -> list[NodeRecord] | None:
        """The nodes sharing the store (None: a store of one node)."""
        return self.store.cluster_nodes()

    def watch_definitions(self, apply: Callable[[list[DefinitionChange]], None]) -> None:
        """``apply(changes)`` runs on the broker's thread for the definition changes other nodes make (less those
        this node overtook: a later change of its own to the same object, see Store.superseded)."""
        def current(changes: list[DefinitionChange]) -> None:
            changes = [change for change in changes if not self.store.superseded(change)]
            if changes:
                apply(changes)

        self.store.watch_definitions(lambda changes: self.dispatch(current, changes))

    def claim_queues(self) -> dict[tuple[str, str], str] | None:
        """The owner of every stored queue once this node took what it may serve (None: one node serves all)."""
        return self.store.claim_queues()

    def watch_queues(self, taken: Callable[[list[tuple[str, str]]], None], lost: Callable[[], None],
                     owners: Callable[[dict[tuple[str, str], str]], None]) -> None:
        """``taken(queues)``, ``lost()`` and ``owners(found)`` (see Store.watch_queues), run on the broker's
        thread."""
        self.store.watch_queues(lambda queues: self.dispatch(taken, queues), lambda: self.dispatch(lost),
                                lambda found: self.dispatch(owners, found))

    def watch_lanes(self, taken: Callable[[list[tuple[str, str, int]]], None]) -> None:
        """``taken(lanes)`` (see Store.watch_lanes: a dead node's delayed lanes moved here), on the broker's thread."""
        self.store.watch_lanes(lambda lanes: self.dispatch(taken, lanes))

    # Several nodes on one store (``shared``): transient exchanges, queues and bindings are written too, so that
    # every node knows them (docs/cluster.md: a transient queue is its owner's and goes when its owner does).

    @_written
    def save_exchange(self, vhost: str, exchange: Exchange) -> None:
        if (exchange.durable or self.shared) and not self.recovering:
            self.store.save_exchange(ExchangeDef(vhost, exchange.name, exchange.type_name, exchange.durable,
                                                 exchange.auto_delete, exchange.internal, dict(exchange.arguments)))

    @_written
    def delete_exchange(self, vhost: str, exchange: Exchange) -> None:
        if exchange.durable or self.shared:
            self.flush()
            self.store.delete_exchange(vhost, exchange.name)

    @_written
    def save_queue(self, queue: Queue) -> None:
        """Several nodes on one store: a queue another node declared first (at the same moment) is that node's."""
        if (queue.durable or self.shared) and not self.recovering:
            if queue.durable:  # a transient queue has no stored messages to write first: one commit, not two
                self.flush()
            owner = self.store.save_queue(QueueDef(queue.vhost.name, queue.name, queue.durable, queue.auto_delete,
                                                   dict(queue.arguments), queue.exclusive))
            if owner is not None and owner != queue.vhost.broker.node_name:
                queue.served_by = owner

    @_written
    def delete_queue(self, queue: Queue) -> None:
        """Several nodes: deleted by this node as its owner, the store fences it (Store.delete_queue). A transient
        queue's deletion that cannot be written (the database is away) is logged, not raised: the queue goes here
        all the same (its connection closed, say), and the others drop it when this node stops."""
        if queue.durable:
            self.flush()
            owned = queue.served_by is None and self.nodes() is not None
            self.store.delete_queue(queue.vhost.name, queue.name, queue.vhost.broker.node_name if owned else None)
        elif self.shared:
            try:
                self.store.delete_queue(queue.vhost.name, queue.name)
            except StoreError as exc:
                log.warning("queue '%s' in vhost '%s': its deletion was not written, the other nodes keep it until "
                            "this node stops: %s", queue.name, queue.vhost.name, exc)

    @_written
    def binding(self, vhost: str, source: Exchange, destination: Any, routing_key: str,
                arguments: dict[str, Any], add: bool) -> None:
        if self.recovering:
            return
        if not self.shared and (not source.durable or not getattr(destination, "durable", False)):
            return
        kind = "exchange" if hasattr(destination, "type_name") else "queue"
        binding = BindingDef(vhost, source.name, destination.name, kind, routing_key, dict(arguments))
        if add:
            self.store.save_binding(binding)
        else:
            self.store.delete_binding(binding)

    @_written
    def save_vhost(self, name: str) -> None:
        self.store.save_vhost(name)

    @_written
    def delete_vhost(self, name: str) -> None:
        """Also deletes the vhost's definitions, messages and status records."""
        self.store.delete_vhost(name)

    @_written
    def save_user(self, user: UserDef) -> None:
        self.store.save_user(user)

    @_written
    def delete_user(self, name: str) -> None:
        self.store.delete_user(name)

    @_written
    def save_permission(self, permission: PermissionDef) -> None:
        self.store.save_permission(permission)

    @_written
    def delete_permission(self, user: str, vhost: str) -> None:
        self.store.delete_permission(user, vhost)

    @_written
    def save_limits(self, kind: str, name: str, limits: dict[str, int]) -> None:
        self.store.save_limits(kind, name, limits)

    @_written
    def save_policy(self, policy: PolicyDef) -> None:
        self.store.save_policy(policy)

    @_written
    def delete_policy(self, vhost: str, name: str) -> None:
        self.store.delete_policy(vhost, name)
