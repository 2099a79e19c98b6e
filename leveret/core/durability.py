"""The broker's link to its store: what is written, and the group-commit barrier that confirms wait on.

Message writes are collected as ops while a batch of client input is processed; :meth:`Durability.commit`
hands them to the store in one submit and runs the given callbacks (publisher confirms, tx.commit-ok) once
that submit and every earlier one are durable. A confirm therefore never overtakes the write it covers,
even when the confirmed message itself needed no write. Definitions are written synchronously.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret.store.base import (
    BindingDef,
    Delete,
    ExchangeDef,
    MessageOp,
    Purge,
    Push,
    QueueDef,
    Requeue,
    StatusExpire,
    StatusPut,
    StatusRead,
    Store,
    StoreError,
)
from leveret.store.status import StatusRecord

if TYPE_CHECKING:
    from .broker import MemoryMonitor
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


def _ignore(exc: BaseException | None) -> None:
    """The store's callback for status writes: nothing waits for them (a failed commit is logged by the store)."""


class Durability:
    """Owned by the Broker when it has a store. ``dispatch(fn, *args)`` must run ``fn`` on the broker's own
    thread (the event loop's call_soon_threadsafe): store callbacks come from the writer thread."""

    def __init__(self, store: Store, dispatch: Callable[..., Any]) -> None:
        self.store = store
        self.dispatch = dispatch
        self.ops: list[MessageOp] = []
        self.status_ops: list[MessageOp] = []  # task status records: see put_status
        self.page_out: list[Message] = []
        self.pushed: list[Message] = []  # this batch's pushes: dropped from their queues if the commit fails
        self.in_flight = 0
        self.next_id = store.max_message_id() + 1
        self.durable_id = self.next_id - 1  # every message with a store id up to this one is durable
        self.batch_bytes = 0  # bytes of the pushes collected for the next commit
        self.unwritten = 0  # bytes of pushes submitted and not yet committed
        self.disk_limit = 0  # disk_free_limit: 0 turns the disk alarm off
        self.alarms: MemoryMonitor | None = None
        self.recovering = False
        self.hold = 0.0  # seconds a write nobody waits for may wait for a confirm's commit (see commit)
        self.timers: Timers | None = None
        self._held: TimerHandle | None = None

    # --- messages ----------------------------------------------------------------------------------

    def push(self, queue: Queue, msg: Message, page_out: bool = False) -> None:
        """Store a message; with ``page_out``, its body leaves memory once it is on disk (if still ready)."""
        msg_id = self.next_id
        self.next_id = msg_id + 1
        msg.store_id = msg_id
        self.ops.append(Push(msg_id, queue.vhost.name, queue.name, msg.seq, msg.exchange, msg.routing_key,
                             msg.header, msg.body))
        self.pushed.append(msg)
        self.batch_bytes += len(msg.body) + len(msg.header)
        if page_out:
            self.page_out.append(msg)

    def delivered(self, msg: Message) -> None:
        """The message went to a consumer that must ack it: after a crash it comes back redelivered."""
        self.ops.append(Requeue(msg.store_id))

    def delete(self, msg: Message) -> None:
        self.ops.append(Delete(msg.store_id))
        msg.store_id = 0

    def purge(self, queue: Queue, after_seq: int) -> None:
        """Delete the queue's stored messages with seq > ``after_seq`` (its ready messages on disk only)."""
        self.ops.append(Purge(queue.vhost.name, queue.name, after_seq))

    def commit(self, after: list[Done]) -> None:
        """Submit the pending ops; call each of ``after`` (with None, or the exception of a failed commit)
        once they and every earlier submit are durable. With nothing to wait for, call them now.

        Writes nobody waits for (``after`` empty: acks, deliveries, status records) are held up to ``hold``
        seconds when a timer is set: the next commit somebody waits for (a publisher confirm) takes them along, so
        the writer is not busy with a commit of their own when a confirm's write arrives (one fsync per
        confirm instead of up to two). A message is never confirmed before it is written: held ops go first."""
        if not after and self.hold > 0 and self.timers is not None:
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
        size, self.batch_bytes = self.batch_bytes, 0
        last_id = self.next_id - 1
        self.in_flight += 1
        if size:
            self.unwritten += size
            if self.disk_limit:
                self.check_disk()  # before the write: the alarm blocks publishers while there is still room
        self.store.submit(ops, lambda exc: self.dispatch(self._committed, after, exc, page_out, pushed, last_id,
                                                         size))

    def check_disk(self) -> None:
        """The disk alarm: free space under disk_free_limit plus the headroom SQLite needs for what is being
        written (WAL_FACTOR x the bytes not yet committed) and for its WAL and checkpoints (DISK_HEADROOM)."""
        free = self.store.free_space()
        if free is None or self.alarms is None or not self.disk_limit:
            return
        need = self.disk_limit + DISK_HEADROOM + WAL_FACTOR * self.unwritten
        self.alarms.set_disk_alarm(free < need, free, need)

    def _committed(self, after: list[Done], exc: BaseException | None, page_out: list[Message],
                   pushed: list[Message], last_id: int, size: int) -> None:
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
        """Write everything pending and wait for it (definitions changes and shutdown)."""
        self._submit_status_now()
        if self.ops or self._held is not None:
            self._commit_now([])
        self.store.flush()

    # --- task status records (core/status.py) -----------------------------------------------------
    # Status ops are submitted apart from the message ops: they are advisory, so no publisher confirm or
    # tx.commit-ok waits for them (they are not part of the commit barrier), but they go through the same store
    # writer, in order with one another.

    def put_status(self, vhost: str, record: StatusRecord) -> None:
        """Merge ``record`` into the stored one (a blind write: nothing is read), at the next submit_status."""
        self.status_ops.append(StatusPut(vhost, record))

    def submit_status(self, done: Done | None = None) -> None:
        """Hand the pending status ops to the store (the status book calls it once per loop turn); held like
        the writes nobody waits for (see :meth:`commit`) unless ``done`` waits for them."""
        if done is None and self.status_ops and self.hold > 0 and self.timers is not None:
            if self._held is None:
                self._held = self.timers.call_later(self.hold, self._release)
            return
        self._submit_status_now(done)

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

    # --- definitions -------------------------------------------------------------------------------

    def save_exchange(self, vhost: str, exchange: Exchange) -> None:
        if exchange.durable and not self.recovering:
            self.store.save_exchange(ExchangeDef(vhost, exchange.name, exchange.type_name, True,
                                                 exchange.auto_delete, exchange.internal, dict(exchange.arguments)))

    def delete_exchange(self, vhost: str, exchange: Exchange) -> None:
        if exchange.durable:
            self.flush()
            self.store.delete_exchange(vhost, exchange.name)

    def save_queue(self, queue: Queue) -> None:
        if queue.durable and not self.recovering:
            self.flush()
            self.store.save_queue(QueueDef(queue.vhost.name, queue.name, True, queue.auto_delete,
                                           dict(queue.arguments)))

    def delete_queue(self, queue: Queue) -> None:
        if queue.durable:
            self.flush()
            self.store.delete_queue(queue.vhost.name, queue.name)

    def binding(self, vhost: str, source: Exchange, destination: Any, routing_key: str,
                arguments: dict[str, Any], add: bool) -> None:
        if self.recovering or not source.durable or not getattr(destination, "durable", False):
            return
        kind = "exchange" if hasattr(destination, "type_name") else "queue"
        binding = BindingDef(vhost, source.name, destination.name, kind, routing_key, dict(arguments))
        if add:
            self.store.save_binding(binding)
        else:
            self.store.delete_binding(binding)
