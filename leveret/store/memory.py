"""A store that keeps everything in dicts: nothing survives the process (``--store memory``, and tests).

It follows the same contract as the durable backends (the shared suite in tests/unit/test_store.py checks it), with
one simplification: :meth:`MemoryStore.submit` applies the ops and calls ``done`` at once, in the caller's
thread. Argument tables are deep-copied on the way in and out, so callers cannot alter what is "stored" by
mutating a dict they passed or got back, just as with a real database.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence

from leveret.core.status_record import StatusRecord, merge
from leveret.core.storage import (
    BindingDef,
    DedupPut,
    Definitions,
    Delete,
    ExchangeDef,
    HandOver,
    MessageOp,
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

from .tagged_json import encode_value

log = logging.getLogger("leveret.store")

_BindingKey = tuple[str, str, str, str, str, str]


def _binding_key(binding: BindingDef) -> _BindingKey:
    # Bindings are identified by all their fields, arguments included (as in RabbitMQ), compared by the same
    # canonical encoding as the SQLite backend's (nested keys sorted, types kept: 1, 1.0 and True differ).
    return (binding.vhost, binding.source, binding.destination_kind, binding.destination, binding.routing_key,
            encode_value(binding.arguments))


class MemoryStore(Store):
    """Everything in dicts; ``submit`` is done immediately."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._open = False
        self._vhosts: dict[str, None] = {}
        self._users: dict[str, UserDef] = {}
        self._permissions: dict[tuple[str, str], PermissionDef] = {}
        self._exchanges: dict[tuple[str, str], ExchangeDef] = {}
        self._queues: dict[tuple[str, str], QueueDef] = {}
        self._bindings: dict[_BindingKey, BindingDef] = {}
        self._policies: dict[tuple[str, str], PolicyDef] = {}
        self._limits: dict[tuple[str, str], dict[str, int]] = {}
        # (vhost, queue) -> id -> message, and id -> (vhost, queue)
        self._messages: dict[tuple[str, str], dict[int, StoredMessage]] = {}
        self._where: dict[int, tuple[str, str]] = {}
        self._max_id = 0
        self._status: dict[tuple[str, str], StatusRecord] = {}  # (vhost, task id) -> record
        # deduplication windows: (vhost, kind, name) -> seq -> (key, expires), in seq order
        self._dedup: dict[tuple[str, str, str], OrderedDict[int, tuple[str, float]]] = {}

    # lifecycle

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        self._open = False

    def __enter__(self) -> MemoryStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("the store is not open (call open() first, or it was closed)")

    # definitions

    def load_definitions(self) -> Definitions:
        self._check_open()
        with self._lock:
            return copy.deepcopy(Definitions(
                vhosts=list(self._vhosts),
                users=list(self._users.values()),
                permissions=list(self._permissions.values()),
                exchanges=list(self._exchanges.values()),
                queues=list(self._queues.values()),
                bindings=list(self._bindings.values()),
                policies=list(self._policies.values()),
                limits=[(kind, name, limits) for (kind, name), limits in self._limits.items()],
            ))

    def save_vhost(self, name: str) -> None:
        self._check_open()
        with self._lock:
            self._vhosts[name] = None

    def delete_vhost(self, name: str) -> None:
        self._check_open()
        with self._lock:
            self._vhosts.pop(name, None)
            self._limits.pop(("vhost", name), None)
            for pkey in [k for k in self._permissions if k[1] == name]:
                del self._permissions[pkey]
            for xkey in [k for k in self._exchanges if k[0] == name]:
                del self._exchanges[xkey]
            for qkey in [k for k in self._queues if k[0] == name]:
                del self._queues[qkey]
            for bkey in [k for k in self._bindings if k[0] == name]:
                del self._bindings[bkey]
            for pkey2 in [k for k in self._policies if k[0] == name]:
                del self._policies[pkey2]
            for mkey in [k for k in self._messages if k[0] == name]:
                self._drop_queue_messages(mkey)
            for skey in [k for k in self._status if k[0] == name]:
                del self._status[skey]
            for dkey in [k for k in self._dedup if k[0] == name]:
                del self._dedup[dkey]

    def save_user(self, user: UserDef) -> None:
        self._check_open()
        with self._lock:
            self._users[user.name] = dataclasses.replace(user, tags=tuple(user.tags))

    def delete_user(self, name: str) -> None:
        """Also deletes the user's permissions."""
        self._check_open()
        with self._lock:
            self._users.pop(name, None)
            self._limits.pop(("user", name), None)
            for key in [k for k in self._permissions if k[0] == name]:
                del self._permissions[key]

    def save_permission(self, permission: PermissionDef) -> None:
        self._check_open()
        with self._lock:
            self._permissions[(permission.user, permission.vhost)] = permission

    def delete_permission(self, user: str, vhost: str) -> None:
        self._check_open()
        with self._lock:
            self._permissions.pop((user, vhost), None)

    def save_limits(self, kind: str, name: str, limits: dict[str, int]) -> None:
        self._check_open()
        with self._lock:
            if limits:
                self._limits[(kind, name)] = dict(limits)
            else:
                self._limits.pop((kind, name), None)

    def save_exchange(self, exchange: ExchangeDef) -> None:
        self._check_open()
        with self._lock:
            self._exchanges[(exchange.vhost, exchange.name)] = copy.deepcopy(exchange)

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._check_open()
        with self._lock:
            self._exchanges.pop((vhost, name), None)
            self._dedup.pop((vhost, "exchange", name), None)
            for key, b in list(self._bindings.items()):
                if b.vhost == vhost and (b.source == name or (b.destination_kind == "exchange"
                                                              and b.destination == name)):
                    del self._bindings[key]

    def save_policy(self, policy: PolicyDef) -> None:
        self._check_open()
        with self._lock:
            self._policies[(policy.vhost, policy.name)] = copy.deepcopy(policy)

    def delete_policy(self, vhost: str, name: str) -> None:
        self._check_open()
        with self._lock:
            self._policies.pop((vhost, name), None)

    def save_queue(self, queue: QueueDef) -> None:
        self._check_open()
        with self._lock:
            self._queues[(queue.vhost, queue.name)] = copy.deepcopy(queue)

    def delete_queue(self, vhost: str, name: str, owner: str | None = None) -> None:
        self._check_open()
        with self._lock:
            self._queues.pop((vhost, name), None)
            self._dedup.pop((vhost, "queue", name), None)
            for key, b in list(self._bindings.items()):
                if b.vhost == vhost and b.destination_kind == "queue" and b.destination == name:
                    del self._bindings[key]
            self._drop_queue_messages((vhost, name))

    def save_binding(self, binding: BindingDef) -> None:
        self._check_open()
        with self._lock:
            self._bindings[_binding_key(binding)] = copy.deepcopy(binding)

    def delete_binding(self, binding: BindingDef) -> None:
        self._check_open()
        with self._lock:
            self._bindings.pop(_binding_key(binding), None)

    # messages

    def submit(self, ops: Sequence[MessageOp], done: Callable[[BaseException | None], None]) -> None:
        self._check_open()
        error: BaseException | None = None
        bad = [op for op in ops if not isinstance(op, (Push, Delete, Requeue, Purge, StatusPut, StatusRead,
                                                       StatusExpire, DedupPut))]
        if bad:  # nothing of the submit is applied, as when a backend's commit fails
            error = TypeError(f"not a message op: {bad[0]!r}")
        else:
            with self._lock:
                for op in ops:
                    self._apply(op)
        try:
            done(error)
        except Exception:
            log.exception("store: a done callback failed")

    def _apply(self, op: MessageOp) -> None:
        if isinstance(op, Push):
            self._remove(op.id)
            key = (op.vhost, op.queue)
            self._messages.setdefault(key, {})[op.id] = StoredMessage(
                op.id, op.vhost, op.queue, op.seq, op.exchange, op.routing_key, op.header, op.body, False)
            self._where[op.id] = key
            if op.id > self._max_id:
                self._max_id = op.id
        elif isinstance(op, Delete):
            self._remove(op.id)
        elif isinstance(op, Requeue):
            where = self._where.get(op.id)
            if where is not None:
                messages = self._messages[where]
                messages[op.id] = dataclasses.replace(messages[op.id], redelivered=True)
        elif isinstance(op, Purge) and op.after_seq:
            for message in list(self._messages.get((op.vhost, op.queue), {}).values()):
                if message.seq > op.after_seq:
                    self._remove(message.id)
        elif isinstance(op, Purge):
            self._drop_queue_messages((op.vhost, op.queue))
        elif isinstance(op, DedupPut):
            window = self._dedup.setdefault((op.vhost, op.kind, op.name), OrderedDict())
            window[op.seq] = (op.key, op.expires)
            while window:  # seqs only grow: the oldest are first (an OrderedDict finds its first in O(1))
                oldest = next(iter(window))
                if oldest > op.seq - op.keep:
                    break
                del window[oldest]
        elif isinstance(op, HandOver | TakeHandOver):  # routing between nodes: a store shared by several only
            raise TypeError(f"not an op of a store of one node: {op!r}")
        else:
            self._apply_status(op)

    def _apply_status(self, op: StatusPut | StatusRead | StatusExpire) -> None:
        status = self._status
        if isinstance(op, StatusPut):
            key = (op.vhost, op.record.id)
            status[key] = merge(status.get(key), copy.deepcopy(op.record))
        elif isinstance(op, StatusRead):
            for task_id in op.ids:
                found = status.get((op.vhost, task_id))
                if found is not None and found.expires > op.now:
                    op.records[task_id] = copy.deepcopy(found)
        else:
            expired = []
            for key, record in status.items():  # a scan: this backend is for tests and small brokers
                if record.expires <= op.now:
                    expired.append(key)
                    if len(expired) >= op.limit:
                        break
            for key in expired:
                del status[key]
            op.deleted = len(expired)

    def _remove(self, message_id: int) -> None:
        key = self._where.pop(message_id, None)
        if key is not None:
            messages = self._messages[key]
            del messages[message_id]
            if not messages:
                del self._messages[key]

    def _drop_queue_messages(self, key: tuple[str, str]) -> None:
        messages = self._messages.pop(key, None)
        if messages:
            for message_id in messages:
                del self._where[message_id]

    def flush(self) -> None:
        """Nothing to wait for: submit is synchronous."""

    def load_messages(self, vhost: str, queue: str, *, with_bodies: bool = True, after_seq: int = 0,
                      limit: int | None = None) -> Iterator[StoredMessage]:
        self._check_open()
        with self._lock:
            selected = sorted((m for m in self._messages.get((vhost, queue), {}).values() if m.seq > after_seq),
                              key=lambda m: (m.seq, m.id))
        if limit is not None:
            selected = selected[:max(limit, 0)]
        if not with_bodies:
            selected = [dataclasses.replace(m, body=None) for m in selected]
        return iter(selected)

    def load_bodies(self, ids: Iterable[int]) -> dict[int, bytes]:
        self._check_open()
        bodies: dict[int, bytes] = {}
        with self._lock:
            for message_id in ids:
                key = self._where.get(message_id)
                if key is not None:
                    body = self._messages[key][message_id].body
                    assert body is not None
                    bodies[message_id] = body
        return bodies

    def message_counts(self) -> dict[tuple[str, str], int]:
        self._check_open()
        with self._lock:
            return {key: len(messages) for key, messages in self._messages.items() if messages}

    def max_message_id(self) -> int:
        self._check_open()
        return self._max_id

    def load_dedup(self) -> dict[tuple[str, str, str], list[tuple[int, str, float]]]:
        self._check_open()
        with self._lock:
            return {owner: [(seq, *window[seq]) for seq in sorted(window)]
                    for owner, window in self._dedup.items() if window}
