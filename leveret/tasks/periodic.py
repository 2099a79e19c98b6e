"""Periodic tasks: schedules (cron or a fixed interval) fired once per due time by any number of schedulers.
See docs/tasks.md, "Periodic tasks".

``periodic(app, cron="*/5 * * * *")`` / ``periodic(app, every=30.0)`` registers a task (through ``app.task``) and
its schedule; a :class:`Scheduler` (``leveret beat MODULE:APP``) fires them. Plain AMQP, so it works on Leveret and
on RabbitMQ alike:

- **One leader.** Every scheduler of an App consumes the durable queue ``leveret.schedule.<app name>``, declared
  with ``x-single-active-consumer: true``: the broker delivers to one of them only; when it goes away (stop,
  crash, lost connection), the broker makes another one active and redelivers what the first had not acked.
- **The token.** The queue holds a persistent "token" message whose JSON body records, per schedule, the last
  due time fired (``last``). The active scheduler keeps it unacked while it leads. To fire due times it first
  publishes a token that names them (``firing``), then sends the tasks (confirmed publishes through the task's
  send path, each with a task id derived from the schedule and the due time), then publishes a token that records
  them in ``last``; each token is confirmed before the older ones are acked. A new leader starts from the token
  it receives.
- **Several tokens.** A crash between "publish the new token" and "ack the old one" leaves two tokens; a
  scheduler that starts while the queue looks empty adds an empty one. Tokens merge by taking, per schedule, the
  latest time (a token can only be behind, never ahead), and a leader takes every token in the queue before it
  trusts the state (it waits until the queue reports no ready message). Tokens that another held token covers
  are acked at once.
- **Takeover check.** A due time that a token names in ``firing`` but no token records in ``last`` may or may
  not have been sent by a leader that died. The new leader asks ``app.status(task_id)``: a task with that id
  already known to the broker is not sent again. A clean handover (a stop, or a crash between firings) needs no
  status read at all.

Catch-up rule: due times that passed while no scheduler ran (or while a takeover was in progress) are
coalesced: only the latest of them is fired, once, and only if it is at most ``catch_up`` seconds late (default:
no limit); older ones are skipped with a log line. A schedule new to the token starts at the first due time
after the leader saw it (nothing before that is fired).

At-least-once window (stated honestly): a due time can be fired twice only if the leader dies after the broker
confirmed the task and before it confirmed the new token, *and* the task's status is not known to the broker
when the next leader checks (a task registered with ``status=False``, a status expired after ``status_ttl``, the
status fallback on RabbitMQ not yet having seen the event, or the status read failing: then it fires). Its task
id is the same both times, so a consumer can drop the duplicate by id. A due time is never fired by two live
leaders at once unless the broker itself gives the queue to a second consumer before the first one's connection
is closed (a network partition, until the heartbeat timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import aio_pika
import aio_pika.abc
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from croniter import croniter

from leveret.aioconnect import open_connection
from leveret.tasks.status import time_ordered_id

if TYPE_CHECKING:
    from leveret.tasks.app import App

log = logging.getLogger("leveret.periodic")

SCHEDULE_PREFIX = "leveret.schedule."
TOKEN_TYPE = "leveret.schedule.token"
PREFETCH = 64  # tokens a leader can hold at once (normally one; more only after a crash or a start)
SYNC_TRIES = 100  # passive declares (20 ms apart) a new leader makes until no token is left in the queue

_SCHEDULES: weakref.WeakKeyDictionary[Any, dict[str, Schedule]] = weakref.WeakKeyDictionary()


# --- schedules -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """When a task is due: ``cron`` (5 fields, or ``@hourly``/``@daily``/..., in time zone ``tz``) or ``every``
    seconds (due at the multiples of ``every`` since the Unix epoch, so that all schedulers agree). Times are
    epoch seconds (floats). Raises ValueError for a bad expression or interval."""

    name: str
    task: Any  # the leveret.tasks Task that is sent
    cron: str | None = None
    every: float | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    tz: str = "UTC"
    catch_up: float | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError(f"schedule {self.name!r}: give exactly one of cron= and every=")
        if self.every is not None and not (self.every > 0 and math.isfinite(self.every)):
            raise ValueError(f"schedule {self.name!r}: every= must be a positive number of seconds")
        if self.cron is not None:
            fields = self.cron.split()
            if not (len(fields) == 5 or (len(fields) == 1 and fields[0].startswith("@"))) \
                    or not croniter.is_valid(self.cron):
                raise ValueError(f"schedule {self.name!r}: {self.cron!r} is not a 5-field cron expression")
        ZoneInfo(self.tz)  # raises ZoneInfoNotFoundError (a KeyError) for an unknown zone
        if self.catch_up is not None and self.catch_up < 0:
            raise ValueError(f"schedule {self.name!r}: catch_up= must be >= 0 seconds")

    def next_after(self, t: float) -> float:
        """The first due time strictly after ``t``."""
        if self.every is not None:
            return (math.floor(t / self.every) + 1) * self.every
        assert self.cron is not None
        return float(croniter(self.cron, datetime.fromtimestamp(t, ZoneInfo(self.tz))).get_next(float))

    def latest_due(self, t: float) -> float:
        """The last due time at or before ``t``."""
        if self.every is not None:
            return math.floor(t / self.every) * self.every
        assert self.cron is not None
        previous = float(croniter(self.cron, datetime.fromtimestamp(t, ZoneInfo(self.tz))).get_prev(float))
        following = self.next_after(previous)
        return following if following <= t else previous


@dataclass(frozen=True)
class Decision:
    """What a leader does for one schedule at one moment: ``fire`` a due time (or None), move its record to
    ``last``, and how many older due times it ``skipped`` (coalesced by the catch-up rule)."""

    fire: float | None
    last: float
    skipped: int = 0


def decide(schedule: Schedule, last: float | None, now: float) -> Decision:
    """The catch-up rule. ``last``: the last due time fired (None: the schedule is new to the token)."""
    if last is None:  # new: start after now, fire nothing from the past
        return Decision(None, schedule.latest_due(now))
    latest = schedule.latest_due(now)
    if latest <= last:
        return Decision(None, last)
    skipped = 0
    due = schedule.next_after(last)
    while due < latest and skipped < 1000:  # counted for the log line only; bounded
        skipped += 1
        due = schedule.next_after(due)
    if schedule.catch_up is not None and now - latest > schedule.catch_up:
        return Decision(None, latest, skipped + 1)
    return Decision(latest, latest, skipped)


def periodic_task_id(app_name: str, schedule_name: str, due: float) -> str:
    """The id of the task fired for ``due``: the same in every scheduler (32 hex digits): a UUIDv7 of the due time
    whose other bits hash the app, the schedule and the due time, so that a status read on RabbitMQ's stream
    starts near the due time instead of replaying the whole retention."""
    key = f"{app_name}\x00{schedule_name}\x00{round(due * 1000)}"
    return time_ordered_id(due, hashlib.sha256(key.encode()).digest())


def schedules(app: App) -> dict[str, Schedule]:
    """The schedules registered on ``app`` (name -> Schedule); a live dict."""
    return _SCHEDULES.setdefault(app, {})


def periodic(app: App, *, cron: str | None = None, every: float | None = None,
             payload: Mapping[str, Any] | None = None, tz: str = "UTC", catch_up: float | None = None,
             **task_options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: register the function as a task (``app.task(**task_options)``) fired on a schedule with the
    keyword arguments ``payload``. One schedule per task; its name is the task's name. Raises ValueError for a
    bad schedule and TypeError when ``payload`` does not fit the function's signature."""

    def register(fn: Callable[..., Any]) -> Any:
        args = dict(payload or {})
        try:
            inspect.signature(fn).bind(**args)
        except TypeError as exc:
            raise TypeError(f"periodic task {fn.__qualname__}: payload does not fit: {exc}") from None
        task = app.task(**task_options)(fn)
        schedule = Schedule(task.name, task, cron=cron, every=every, payload=args, tz=tz, catch_up=catch_up)
        table = schedules(app)
        if schedule.name in table:
            raise ValueError(f"task {schedule.name!r} already has a schedule")
        table[schedule.name] = schedule
        return task

    return register


# --- tokens --------------------------------------------------------------------------------------------------


def merge(states: list[dict[str, float]]) -> dict[str, float]:
    """Per schedule, the latest due time any of the states records."""
    merged: dict[str, float] = {}
    for state in states:
        for name, due in state.items():
            if due > merged.get(name, -math.inf):
                merged[name] = due
    return merged


def covers(big: Mapping[str, float], small: Mapping[str, float]) -> bool:
    """True when ``big`` records every schedule of ``small`` at the same or a later time."""
    return all(big.get(name, -math.inf) >= due for name, due in small.items())


@dataclass(frozen=True)
class Token:
    """A token's content: ``last`` (schedule -> last due time fired) and ``firing`` (schedule -> the due time
    its leader was about to fire when it wrote the token; resolved once ``last`` reaches it)."""

    last: dict[str, float]
    firing: dict[str, float] = field(default_factory=dict)

    def covered_by(self, other: Token) -> bool:
        """True when ``other`` tells everything this token tells (acking this one loses nothing)."""
        return covers(other.last, self.last) and all(
            other.last.get(name, -math.inf) >= due or other.firing.get(name) == due
            for name, due in self.firing.items())


def read_token(body: bytes) -> Token:
    """The content of a token body; ValueError when it is not a token."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("not a schedule token")
    return Token(_times(data.get("last")), _times(data.get("firing", {})))


def _times(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or not all(isinstance(v, int | float) for v in value.values()):
        raise ValueError("not a schedule token")
    return {str(k): float(v) for k, v in value.items()}


@dataclass
class Held:
    message: aio_pika.abc.AbstractIncomingMessage
    token: Token


# --- the scheduler -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fired:
    schedule: str
    due: float
    task_id: str
    at: float


class Scheduler:
    """Fires the schedules of ``app`` (all of them, or ``names``) while it is the leader; see the module doc.

    ``await run()`` until ``request_stop()``; or ``start()`` in a background thread and ``stop()``. It connects to
    ``url`` (default ``app.url``) with its own connection, reconnects with back-off (up to ``backoff_max``
    seconds) when the broker goes away, and sends tasks with ``task.send_with(payload, task_id=..., metadata=
    {"periodic": {"schedule": name, "due": epoch seconds}})``. ``fired`` lists what this scheduler fired;
    ``is_leader`` says whether it holds the token now."""

    def __init__(self, app: App, *, url: str | None = None, names: list[str] | None = None,
                 backoff_max: float = 30.0) -> None:
        self.app = app
        self.url = url or app.url
        table = schedules(app)
        unknown = set(names or ()) - set(table)
        if unknown:
            raise ValueError(f"no schedule named {', '.join(sorted(unknown))}")
        self.schedules = [table[n] for n in (names or sorted(table))]
        self.queue_name = SCHEDULE_PREFIX + app.name
        self.backoff_max = backoff_max
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.fired: list[Fired] = []
        self.status_checks = 0  # takeover checks made (app.status reads)
        self.is_leader = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Lead or stand by until ``request_stop()``; reconnects after connection errors."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                await self._session()
                backoff = 0.2
            except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                self.is_leader = False
                if self._stopping.is_set():
                    break
                log.warning("scheduler %s: %s: %s; reconnecting in %.1f s", self.queue_name, type(exc).__name__,
                            exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                backoff = min(backoff * 2, self.backoff_max)
        self.is_leader = False

    def request_stop(self) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: stopped already
                self._loop.call_soon_threadsafe(self._stopping.set)

    def start(self, timeout: float = 10.0) -> Scheduler:
        """Run in a background thread; returns once it is connected and consuming. TimeoutError when that did
        not happen within ``timeout`` (it keeps trying in the background: call ``stop()``)."""
        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as exc:
                if self._ready.is_set():  # after start() returned: nobody else would see it
                    log.exception("scheduler %s stopped by an error", self.queue_name)
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=main, name="leveret-scheduler", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the scheduler did not connect to the broker within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop (after the firing in progress, if any); as the leader, the token goes back to the queue for
        the next scheduler."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- one connection ----------------------------------------------------------------------------------------

    async def _session(self) -> None:
        assert self._stopping is not None
        conn = await open_connection(self.url, timeout=10)
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage | None] = asyncio.Queue()
        try:
            channel = await conn.channel(publisher_confirms=True)
            conn.close_callbacks.add(lambda *_: inbox.put_nowait(None))
            channel.close_callbacks.add(lambda *_: inbox.put_nowait(None))
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(self.queue_name, durable=True,
                                                arguments={"x-single-active-consumer": True})
            if not queue.declaration_result.message_count:  # maybe the first scheduler ever: seed a token
                await self._publish_token(channel, {})
            await queue.consume(inbox.put)
            self._ready.set()
            await Leadership(self, channel, inbox).run()
        finally:
            self.is_leader = False
            with contextlib.suppress(Exception):
                await conn.close()

    async def _publish_token(self, channel: aio_pika.abc.AbstractChannel, state: dict[str, float],
                             firing: dict[str, float] | None = None) -> None:
        body = json.dumps({"v": 1, "app": self.app.name, "last": state, "firing": firing or {}, "at": time.time(),
                           "by": self.identity})
        await channel.default_exchange.publish(
            aio_pika.Message(body.encode(), content_type="application/json", type=TOKEN_TYPE,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=uuid.uuid4().hex),
            routing_key=self.queue_name)

    async def _next(self, inbox: asyncio.Queue[Any], timeout: float | None) -> Any:
        """The next inbox item (a token, or None when the channel closed), or None after ``timeout``/at stop."""
        assert self._stopping is not None
        if not inbox.empty():
            return inbox.get_nowait()
        get = asyncio.ensure_future(inbox.get())
        stop = asyncio.ensure_future(self._stopping.wait())
        done, pending = await asyncio.wait({get, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for future in pending:
            future.cancel()
        return get.result() if get in done else None

    # --- firing ----------------------------------------------------------------------------------------------

    async def _already_sent(self, task_id: str) -> bool:
        self.status_checks += 1
        try:
            state = await asyncio.to_thread(self.app.status, task_id)
        except Exception as exc:
            log.warning("scheduler %s: cannot read the status of %s (%s: %s): firing it", self.queue_name, task_id,
                        type(exc).__name__, exc)
            return False
        return state != "unknown"

    async def _fire(self, schedule: Schedule, due: float, task_id: str) -> None:
        metadata = {"periodic": {"schedule": schedule.name, "due": due}}
        await asyncio.to_thread(schedule.task.send_with, dict(schedule.payload), task_id=task_id, metadata=metadata)
        self.fired.append(Fired(schedule.name, due, task_id, time.time()))
        log.info("fired %s for %s (task id %s)", schedule.name,
                 datetime.fromtimestamp(due).astimezone().isoformat(timespec="milliseconds"), task_id)


class Leadership:
    """The token-holding loop of one session: stand by until a token arrives, take every token in the queue,
    then fire due times and keep the token up to date until the channel closes or the scheduler stops.

    Firing due times is written to the token in two steps: first a token that says which due times are being
    fired (``firing``), then, once they are sent, one that records them in ``last``. A new leader checks with
    ``app.status`` only the due times a token says were being fired and that no token records as fired."""

    def __init__(self, scheduler: Scheduler, channel: aio_pika.abc.AbstractChannel,
                 inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage | None]) -> None:
        self.scheduler = scheduler
        self.channel = channel
        self.inbox = inbox
        self.held: list[Held] = []
        self.state: dict[str, float] = {}  # schedule -> last due time fired (merged over the tokens)
        self.firing: dict[str, float] = {}  # schedule -> due time a previous leader was firing (merged)
        self.unresolved: dict[str, float] = {}  # after taking over: what may or may not have been sent
        self.leading = False

    async def run(self) -> None:
        s = self.scheduler
        assert s._stopping is not None
        while not s._stopping.is_set():
            item = await s._next(self.inbox, self._wait_time())
            if item is None and self.channel.is_closed:
                raise ConnectionError("the scheduler's channel closed")
            if item is not None:
                await self._take(item)
            if self.held and not self.leading:
                await self._take_over()
            if self.leading and not s._stopping.is_set():
                await self._tick()

    def _wait_time(self) -> float | None:
        if not self.leading:
            return None
        now = time.time()
        soonest = min((sch.next_after(self.state[sch.name]) for sch in self.scheduler.schedules
                       if sch.name in self.state), default=now + 1.0)
        return max(0.0, min(soonest - now, 1.0))  # at least once a second: clock changes, new schedules

    async def _take(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            token = read_token(message.body)
        except ValueError:
            log.warning("scheduler %s: dropping a message that is not a token: %r", self.scheduler.queue_name,
                        message.body[:200])
            await message.ack()
            return
        self.held.append(Held(message, token))
        self.state = merge([self.state, token.last])
        if not self.leading:  # a leader's own firing tokens come back to it: nothing to resolve there
            self.firing = merge([self.firing, token.firing])
        await self._ack_covered()

    async def _ack_covered(self) -> None:
        """Ack held tokens that another held token covers (they add nothing); keep at least one."""
        for held in list(self.held):
            if any(held.token.covered_by(other.token) for other in self.held if other is not held):
                self.held.remove(held)
                await held.message.ack()

    async def _take_over(self) -> None:
        """Just became the active consumer: take every token left in the queue before trusting the state."""
        s = self.scheduler
        for _ in range(SYNC_TRIES):
            queue = await self.channel.declare_queue(s.queue_name, passive=True)
            await asyncio.sleep(0)  # deliveries that arrived before the declare-ok reach the inbox first
            while not self.inbox.empty():
                item = self.inbox.get_nowait()
                if item is None:
                    raise ConnectionError("the scheduler's channel closed")
                await self._take(item)
            if not queue.declaration_result.message_count:
                break
            await asyncio.sleep(0.02)
        else:
            log.warning("scheduler %s: tokens keep arriving; leading with what it has", s.queue_name)
        self.unresolved = {n: d for n, d in self.firing.items() if d > self.state.get(n, -math.inf)}
        self.leading = s.is_leader = True
        log.info("scheduler %s: %s leads (last fired: %s%s)", s.queue_name, s.identity, self.state or "nothing yet",
                 f"; maybe fired by the previous leader: {self.unresolved}" if self.unresolved else "")

    async def _tick(self) -> None:
        s = self.scheduler
        before = dict(self.state)
        due: list[tuple[Schedule, float]] = []
        for schedule in s.schedules:
            decision = decide(schedule, self.state.get(schedule.name), time.time())
            if decision.skipped:
                log.warning("schedule %s: skipped %s missed due time(s) (catch-up fires only the latest%s)",
                            schedule.name, decision.skipped if decision.skipped < 1000 else "1000+",
                            "" if schedule.catch_up is None else f", within {schedule.catch_up} s")
            if decision.fire is None:
                self.state[schedule.name] = decision.last
            else:
                due.append((schedule, decision.fire))
        if due:
            await self._renew(firing={schedule.name: when for schedule, when in due})
            for schedule, when in due:
                if await self._send(schedule, when):
                    self.state[schedule.name] = when
        if self.state != before:
            await self._renew()

    async def _send(self, schedule: Schedule, due: float) -> bool:
        """Fire one due time; True when it is done (sent now, or found sent by the previous leader)."""
        s = self.scheduler
        task_id = periodic_task_id(s.app.name, schedule.name, due)
        if self.unresolved.pop(schedule.name, None) == due and await s._already_sent(task_id):
            log.info("schedule %s: %s was fired by the previous leader", schedule.name, task_id)
            return True
        try:
            await s._fire(schedule, due, task_id)
        except (*CONNECTION_EXCEPTIONS, TimeoutError):
            raise
        except Exception:
            log.exception("schedule %s: firing %s failed; trying again", schedule.name, task_id)
            return False  # its record does not move: the next tick tries again
        return True

    async def _renew(self, firing: dict[str, float] | None = None) -> None:
        """Publish the current state (and the due times about to be fired) as a new token (confirmed), then
        ack the tokens held so far: the new one tells all they told."""
        await self.scheduler._publish_token(self.channel, self.state, firing)
        held, self.held = self.held, []
        for h in held:
            await h.message.ack()
