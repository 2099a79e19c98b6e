"""The status book: the broker's record of task states, per (vhost, task id) (docs/extensions.md).

Fed by two hooks, each one test on a path every message takes:

- ``VHost.publish`` (core/routing.py; every publish: AMQP, HTTP, delayed release, dead-lettering) calls
  :meth:`StatusBook.observe` when the exchange is ``leveret.events`` (a JSON status event per message; a
  malformed one is counted and ignored, the message is routed as any other) or ``amq.leveret.status`` (a
  query, answered on the default exchange to its ``reply_to``);
- ``Queue._append`` (a message taking its place in a queue) calls :meth:`StatusBook.queued` for a message with a
  ``message_id`` entering a queue declared with ``x-leveret-status: true``.

Records live in the store (``Durability.put_status``: a blind merge, so an event never waits for a read; the
merge is ``leveret.core.status_record.merge``), deferred there (with the write hold, or to the next event-loop turn)
and submitted apart from message writes: no publisher confirm waits for a status record. A "queued" record the
book makes itself is a byproduct of the message it describes, which the store already holds: it waits in memory
(``_pending``, at most ``pending_size``) for the task's next event, up to ``queued_delay`` seconds, and is written
merged with that event, so a task that runs within the delay costs the store one record write instead of two.
It is written alone when the delay passes, when the pending set is full (oldest first) and on
``Durability.flush`` (shutdown, definition changes); after a crash recovery makes it again from the stored
message (:meth:`StatusBook.recovered`). Reads merge the pending record, so none is older than what the book
was told. Memory holds only a
bounded LRU cache of *complete* records (ones read from the store, with every later event merged in); an event
for an id that is not cached is written without being cached. A lookup of an uncached id reads the store in order
after the writes before it (off the event loop, on the store's writer), and events that arrive while that read is
in flight are merged into its result. Expired records read as null; a timer deletes them from the store in
bounded batches.
"""

from __future__ import annotations

import json
import json.scanner
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret.core.status_record import RANKS, StatusRecord, merge
from leveret.core.storage import StoreError

from .errors import PreconditionFailed
from .message import PAGED, Message, build_address, build_header
from .tracking import MESSAGE_ID

if TYPE_CHECKING:
    from .broker import Broker, VHost
    from .exchanges import Exchange
    from .queue import Queue

log = logging.getLogger("leveret.status")

EVENTS_EXCHANGE = "leveret.events"
QUERY_EXCHANGE = "amq.leveret.status"
STATUS_ARGUMENT = "x-leveret-status"
OBSERVED = frozenset((EVENTS_EXCHANGE, QUERY_EXCHANGE))  # VHost.publish's one test
MAX_EVENT_BYTES = 1 << 20  # a larger event body is ignored (a result is at most 64 KB by the contract)
MAX_QUERY_IDS = 1000

Key = tuple[str, str]
Records = dict[str, StatusRecord | None]
Done = Callable[[Records, BaseException | None], None]


def wants_status(arguments: dict[str, Any], queue: str, vhost: str) -> bool:
    """Whether a queue declaration asks for status records (``x-leveret-status``); 406 for a value that is not a
    boolean."""
    value = arguments.get(STATUS_ARGUMENT)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PreconditionFailed(f"invalid arg '{STATUS_ARGUMENT}' for queue '{queue}' in vhost '{vhost}': "
                                 "expected a boolean")
    return value


_DECODER = json.JSONDecoder()
# json's own (C) scanner: what json.loads ends in, without its checks
_SCAN: Any = json.scanner.make_scanner(_DECODER)  # type: ignore[arg-type]
_INT_LIMIT = 1 << 53  # an integral time or ttl beyond this is refused (math.isfinite would overflow on it)


def decode_event(body: bytes) -> Any:
    """``json.loads(body)``: the common case (UTF-8, an object, nothing around it) straight through json's scanner
    (~2 µs less per event); anything else (whitespace around it, a BOM, another encoding, a malformed body)
    through ``json.loads`` itself, so the result and the errors are json.loads's."""
    try:
        text = body.decode()
        if text[:1] == "{":
            value, end = _SCAN(text, 0)
            if end == len(text):
                return value
    except (UnicodeDecodeError, ValueError, StopIteration):
        pass
    return json.loads(body)


def _number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    cls = value.__class__
    if cls is float:
        return bool(value - value == 0)  # False for inf and nan
    if cls is int:
        return -_INT_LIMIT <= value <= _INT_LIMIT
    return isinstance(value, float) and math.isfinite(value)


def record_from_event(data: Any, now: float, default_ttl: float) -> StatusRecord | None:
    """The record of one event (the contract's JSON object), or None when it is malformed."""
    if data.__class__ is not dict:
        return None
    get = data.get
    task_id, state = get("id"), get("state")
    if task_id.__class__ is not str or not task_id or state not in RANKS:
        return None
    attempt = get("attempt", 0)
    ts = get("ts", now)
    ttl = get("ttl", default_ttl)
    task, queue, error = get("task", ""), get("queue", ""), get("error")
    if (attempt.__class__ is not int or attempt < 0 or not _number(ts) or not _number(ttl) or ttl <= 0
            or task.__class__ is not str or queue.__class__ is not str
            or not (error is None or error.__class__ is dict)):
        return None
    extra: dict[str, Any] = {}
    if state == "succeeded" and "result" in data:
        extra["result"] = data["result"]
    next_attempt_at = get("next_attempt_at")
    if next_attempt_at is not None and _number(next_attempt_at):
        extra["next_attempt_at"] = next_attempt_at
    worker = get("worker")
    if worker.__class__ is str:
        extra["worker"] = worker
    created = ts
    if state == "started":
        started = ts
    else:  # a final event that went alone carries its attempt's start (docs/tasks.md, "Events"): folded as if a
        # "started" event at that time had come first
        started = get("started")
        if started is not None:
            if _number(started):
                created = min(ts, started)
            else:  # unreadable: the event counts without it
                started = None
    return StatusRecord(task_id, task, queue, state, attempt, ts, created, ts, ts + ttl, started, error, extra)


def parse_query(body: bytes) -> tuple[list[str], str]:
    """(ids, "") for a well-formed query body, ([], the reason) otherwise."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return [], "the query is not JSON"
    ids = data.get("ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        return [], 'the query must be a JSON object {"ids": [task id strings]}'
    if len(ids) > MAX_QUERY_IDS:
        return [], f"at most {MAX_QUERY_IDS} ids per query"
    return ids, ""


class _Lookup:
    """One lookup waiting for store reads."""

    __slots__ = ("done", "error", "outstanding", "records")

    def __init__(self, records: Records, outstanding: int, done: Done) -> None:
        self.records = records
        self.outstanding = outstanding
        self.done = done
        self.error: BaseException | None = None

    def resolve(self, task_id: str, record: StatusRecord | None, error: BaseException | None) -> None:
        self.records[task_id] = record
        if error is not None:
            self.error = error
        self.outstanding -= 1
        if not self.outstanding:
            self.done(self.records, self.error)


class _Load:
    """A store read of one id in flight: the events that came meanwhile, and who waits for it."""

    __slots__ = ("events", "waiters")

    def __init__(self) -> None:
        self.events: list[StatusRecord] = []
        self.waiters: list[_Lookup] = []


class StatusBook:
    """Owned by the Broker (``broker.status``). Without a store (core tests) the cache is the whole book."""

    cache_size = 10_000  # complete records kept in memory (LRU)
    default_ttl = 86_400.0  # seconds, for "queued" records the broker makes itself and events without a ttl
    sweep_interval = 60.0  # seconds between expiry sweeps of the store
    sweep_batch = 1_000  # records deleted per sweep; a full batch is followed by another soon
    queued_delay = 10.0  # seconds a "queued" record waits for the task's next event before it is written alone
    pending_size = 10_000  # "queued" records waiting (past it, the oldest is written at once)

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.durability = broker.durability
        self.timers = broker.timers
        if self.durability is not None:
            self.durability.attach_timers(broker.timers)
        self._cache: OrderedDict[Key, StatusRecord] = OrderedDict()
        self._loading: dict[Key, _Load] = {}
        self._pending: dict[Key, StatusRecord] = {}  # "queued" records not yet written (due: updated + delay)
        self._pending_timer = False
        self.events = 0  # events recorded
        self.events_ignored = 0  # malformed events
        self.enqueued = 0  # "queued" records made on enqueue
        self.queries = 0
        self.queries_malformed = 0
        self.expired = 0  # records deleted from the store by the sweep
        self.recent_keys: OrderedDict[Key, str] = OrderedDict()  # see recent(), at the end
        if self.durability is not None:
            self.timers.call_later(self.sweep_interval, self._sweep)
            self.durability.drain_status = self.write_pending

    @property
    def cached(self) -> int:
        return len(self._cache)

    # --- feeding -------------------------------------------------------------------------------------

    def observe(self, vhost: VHost, exchange: Exchange, msg: Message) -> None:
        """A message published to ``leveret.events`` or ``amq.leveret.status`` (called by VHost.publish)."""
        if exchange.name == EVENTS_EXCHANGE:
            self.event(vhost.name, msg)
        else:
            self.query(vhost, msg)

    def event(self, vhost: str, msg: Message) -> None:
        body = msg.body
        record = None
        if body is not PAGED and len(body) <= MAX_EVENT_BYTES:
            try:
                record = record_from_event(decode_event(body), self.timers.now(), self.default_ttl)
            except (ValueError, UnicodeDecodeError, RecursionError):
                record = None
        if record is None:
            self.events_ignored += 1
            return
        self.events += 1
        self.apply(vhost, record)

    def queued(self, queue: Queue, msg: Message) -> None:
        """A message with a message_id entered a queue with ``x-leveret-status``: record it as queued (attempt
        from its ``x-retry-count`` header, task from its ``type`` property)."""
        props = msg.properties
        task_id = props.get("message_id")
        if not isinstance(task_id, str) or not task_id:
            return
        headers = props.get("headers")
        attempt = headers.get("x-retry-count", 0) if isinstance(headers, dict) else 0
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
            attempt = 0
        task = props.get("type")
        now = self.timers.now()
        self.enqueued += 1
        record = StatusRecord(task_id, task if isinstance(task, str) else "", queue.name, "queued", attempt, now,
                              now, now, now + self.default_ttl)
        if self.durability is None:
            self.apply(queue.vhost.name, record)
        else:
            self._defer(queue.vhost.name, record)

    def recovered(self, queue: Queue, msg: Message) -> None:
        """A stored message of a status queue, read back at start-up (core/recovery.py): its "queued" record may
        not have been written before a crash, so it is made again (merged, it changes nothing but ``updated``
        and ``expires`` of a record that was written)."""
        if msg.flags & MESSAGE_ID:
            self.queued(queue, msg)

    def _defer(self, vhost: str, record: StatusRecord) -> None:
        key = (vhost, record.id)
        self._note_recent(key, record.state)
        cache = self._cache
        cached = cache.get(key) if cache else None
        if cached is not None:
            cache[key] = merge(cached, record)
            cache.move_to_end(key)
        elif self._loading:
            load = self._loading.get(key)
            if load is not None:
                load.events.append(record)
        pending = self._pending
        old = pending.pop(key, None)
        pending[key] = record if old is None else merge(old, record)
        if len(pending) > self.pending_size:
            key, oldest = next(iter(pending.items()))
            del pending[key]
            self._put(key[0], oldest)
        if not self._pending_timer:
            self._pending_timer = True
            self.timers.call_later(self.queued_delay, self._pending_due)

    def _pending_due(self) -> None:
        """Write the "queued" records whose delay passed (the oldest come first: one due time per record, in
        order), and come back for the next one."""
        self._pending_timer = False
        pending = self._pending
        now = self.timers.now()
        try:
            delay = self.queued_delay
            while pending:
                key, record = next(iter(pending.items()))
                due = record.updated + delay
                if due > now:
                    self._pending_timer = True
                    self.timers.call_later(due - now, self._pending_due)
                    return
                del pending[key]
                self._put(key[0], record)
        except StoreError as exc:  # the store closed (shutdown)
            log.debug("status book: queued records not written: %s", exc)

    def write_pending(self) -> None:
        """Hand every pending "queued" record to the store (``Durability.flush`` calls this first)."""
        pending, self._pending = self._pending, {}
        for key, record in pending.items():
            self._put(key[0], record)

    def _put(self, vhost: str, record: StatusRecord) -> None:
        assert self.durability is not None
        self.durability.put_status(vhost, record)  # deferred there: a loop turn's records in one submit

    def apply(self, vhost: str, record: StatusRecord) -> None:
        key = (vhost, record.id)
        self._note_recent(key, record.state)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache[key] = merge(cached, record)
            self._cache.move_to_end(key)
        elif self.durability is None:
            self._remember(key, record)
        else:
            load = self._loading.get(key)
            if load is not None:
                load.events.append(record)
        if self.durability is not None:
            pending = self._pending.pop(key, None)
            self._put(vhost, record if pending is None else merge(pending, record))

    def forget_vhost(self, vhost: str) -> None:
        """The vhost is deleted (the store deletes its records with it)."""
        for key in [k for k in self._cache if k[0] == vhost]:
            del self._cache[key]
        for key in [k for k in self._pending if k[0] == vhost]:
            del self._pending[key]

    def _remember(self, key: Key, record: StatusRecord) -> None:
        cache = self._cache
        cache[key] = record
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    # --- reading -------------------------------------------------------------------------------------

    def lookup(self, vhost: str, ids: list[str], done: Done) -> None:
        """Call ``done(records, error)`` with the record (or None) of each id: at once when every id is cached,
        otherwise once the store has answered (on the broker's thread)."""
        now = self.timers.now()
        records: Records = {}
        missing: list[str] = []
        cache = self._cache
        for task_id in dict.fromkeys(ids):
            key = (vhost, task_id)
            record = cache.get(key)
            if record is not None:
                if record.expires <= now:
                    del cache[key]
                    records[task_id] = None
                else:
                    cache.move_to_end(key)
                    records[task_id] = record
            elif self.durability is None:
                records[task_id] = None
            else:
                missing.append(task_id)
        if not missing:
            done(records, None)
            return
        lookup = _Lookup(records, len(missing), done)
        to_read: list[str] = []
        for task_id in missing:
            key = (vhost, task_id)
            load = self._loading.get(key)
            if load is None:
                load = self._loading[key] = _Load()
                to_read.append(task_id)
                pending = self._pending.get(key)
                if pending is not None:  # not in the store yet: merged into what the store answers
                    load.events.append(pending)
            load.waiters.append(lookup)
        if to_read:
            assert self.durability is not None
            self.durability.read_status(vhost, to_read, now,
                                        lambda found, exc: self._loaded(vhost, to_read, now, found, exc))

    def _loaded(self, vhost: str, ids: list[str], now: float, found: dict[str, StatusRecord],
                error: BaseException | None) -> None:
        for task_id in ids:
            key = (vhost, task_id)
            load = self._loading.pop(key)
            record: StatusRecord | None = found.get(task_id) if error is None else None
            for event in load.events:
                record = merge(record, event)
            if record is not None and record.expires <= now:
                record = None
            if record is not None and error is None:
                self._remember(key, record)
            for waiter in load.waiters:
                waiter.resolve(task_id, record, error)

    def query(self, vhost: VHost, msg: Message) -> None:
        """A message to ``amq.leveret.status``: answer it on the default exchange to its reply_to (a query
        without one is dropped; routing counts it as unroutable)."""
        self.queries += 1
        props = msg.properties
        reply_to = props.get("reply_to")
        if not isinstance(reply_to, str) or not reply_to:
            return
        correlation_id = props.get("correlation_id")
        ids, reason = parse_query(msg.body) if msg.body is not PAGED else ([], "the query body is not in memory")
        if reason:
            self.queries_malformed += 1
            self._reply(vhost, reply_to, correlation_id, {"error": reason})
            return

        def answer(records: Records, error: BaseException | None) -> None:
            if error is not None:
                self._reply(vhost, reply_to, correlation_id, {"error": f"the store failed: {error}"})
            else:
                self._reply(vhost, reply_to, correlation_id, {"records": {
                    task_id: None if record is None else record.public() for task_id, record in records.items()}})

        self.lookup(vhost.name, ids, answer)

    @staticmethod
    def _reply(vhost: VHost, reply_to: str, correlation_id: Any, answer: dict[str, Any]) -> None:
        if vhost.broker.vhosts.get(vhost.name) is not vhost:
            return  # deleted while the store was read
        body = json.dumps(answer, separators=(",", ":"), default=str).encode()
        props: dict[str, Any] = {"content_type": "application/json", "delivery_mode": 1}
        if isinstance(correlation_id, str):
            props["correlation_id"] = correlation_id
        msg = Message("", reply_to, build_address("", reply_to), build_header(props, len(body)), body)
        vhost.publish(vhost.exchanges[""], msg)

    # --- expiry --------------------------------------------------------------------------------------

    def _sweep(self) -> None:
        durability = self.durability
        assert durability is not None
        try:
            durability.expire_status(self.timers.now(), self.sweep_batch, self._swept)
        except StoreError as exc:  # the store closed (shutdown): no more sweeps
            log.debug("status book: expiry sweep stopped: %s", exc)

    def _swept(self, deleted: int, error: BaseException | None) -> None:
        self.expired += deleted
        full = error is None and deleted >= self.sweep_batch
        self.timers.call_later(0.05 if full else self.sweep_interval, self._sweep)

    # --- recent tasks (the web console's task list) ------------------------------------------------

    recent_size = 1_000  # task ids remembered for listing (of all vhosts), the most recently changed last

    def _note_recent(self, key: Key, state: str) -> None:
        recent = self.recent_keys
        recent[key] = state
        recent.move_to_end(key)
        if len(recent) > self.recent_size:
            recent.popitem(last=False)

    def recent(self, vhost: str, limit: int) -> list[str]:
        """The ids of ``vhost``'s tasks whose records changed most recently, newest first, at most ``limit``:
        the book remembers the last ``recent_size`` ids it recorded since the broker started (memory only;
        their records are read with :meth:`lookup`)."""
        found: list[str] = []
        for key in reversed(self.recent_keys):
            if key[0] == vhost:
                found.append(key[1])
                if len(found) >= limit:
                    break
        return found
