"""The fast path of ``send()``: task messages framed with Leveret's own codec and written to aiormq's write queue
in one piece per loop turn, their publisher confirms tracked in aiormq's own table. See docs/performance.md.

Why: through aio-pika/aiormq a publish costs ~150 µs of Python (pamqp marshals every property and frame,
aiormq takes a lock, awaits a drain future per message), and a sync ``send()`` paid again for
``run_coroutine_threadsafe`` + a ``concurrent.futures.Future``. Here:

- the caller's thread builds the body and the encoded properties (``Outgoing``); the method frame of a
  queue is encoded once per channel;
- callers hand their messages to a ``Pump``: a deque and one ``call_soon_threadsafe`` per batch (several
  threads sending at once share a wake-up), a ``Waiter`` (a bare ``threading.Lock``) per sync send;
- on the loop, every message of the batch gets the channel's next delivery tag and an aiormq confirmation
  future (``channel.confirmations[tag]``, created by ``channel.create_future()`` so a closing channel fails it,
  exactly as for ``basic_publish``), and the frames of the whole batch go to the write queue as one
  ``ChannelFrame``.

Delivery tags must reach the broker in the order they were given. aiormq's ``basic_publish`` assigns its tag and
queues its frames under the channel lock, without an await in between unless the write queue is full. The fast
path therefore runs only when that lock is free and the write queue has room (tag and write are then one step);
otherwise, and for what it does not handle (no live session, a queue not declared yet on this connection,
delays, RPC replies), a message takes ``App._publish_built`` — the same message, the same id, the old path.
It relies on aiormq 7's channel internals (``delivery_tag``, ``confirmations``, ``write_queue``, the name-mangled
lock): without that lock attribute ``Writer.free`` is False and every send takes the old path.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq.abc import ChannelFrame

from leveret.amqp import codec, spec

if TYPE_CHECKING:
    from leveret.tasks.connection import Session
    from leveret.tasks.task import Task

_PUBLISH = spec.method("basic.publish")

Notify = Callable[[Any, BaseException | None], None]


@dataclass(slots=True)
class Outgoing:
    """One task message, built in the caller's thread: ``header`` is its encoded basic properties."""

    task: Task[Any, Any]
    task_id: str
    body: bytes
    props: dict[str, Any]
    header: bytes
    event: tuple[bytes, bytes, str] | None  # the "queued" event (body, encoded properties, routing key) or None
    notify: Notify  # called on the loop with (result, None) or (None, exception)


class Waiter:
    """A one-shot result for a synchronous caller: a pre-acquired lock the loop releases."""

    __slots__ = ("error", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any, error: BaseException | None) -> None:
        self.value = value
        self.error = error
        self.lock.release()

    def wait(self, timeout: float) -> bool:
        return self.lock.acquire(timeout=timeout)


class Pump:
    """Runs ``handle(batch)`` on ``loop`` with everything submitted since its last run: one wake-up per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handle: Callable[[list[Outgoing]], None]) -> None:
        self.loop = loop
        self.handle = handle
        self.pending: deque[Outgoing] = deque()
        self.scheduled = False
        self.lock = threading.Lock()
        self.thread: int | None = None  # the loop's thread, once known

    def submit(self, item: Outgoing) -> None:
        """From any thread (the loop's own included)."""
        self.pending.append(item)
        with self.lock:
            if self.scheduled:
                return
            self.scheduled = True
        if threading.get_ident() == self.thread:
            self.loop.call_soon(self._run)
        else:
            self.loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        self.thread = threading.get_ident()
        with self.lock:
            self.scheduled = False
        pending = self.pending
        batch = [pending.popleft() for _ in range(len(pending))]
        if batch:
            self.handle(batch)


class Relay:
    """Calls for one event loop (a ``send_async`` caller's) from the App's loop thread: the confirms that arrive
    together settle their callers' futures after one ``call_soon_threadsafe`` (one wake-up of the caller's loop)
    instead of one each."""

    __slots__ = ("lock", "loop", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        self.pending.append((fn, args))
        with self.lock:
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the caller's loop is closed: nobody awaits these any more
            with self.lock:
                self.scheduled = False
            self.pending.clear()

    def _run(self) -> None:
        with self.lock:
            self.scheduled = False
        pending = self.pending
        while pending:
            fn, args = pending.popleft()
            fn(*args)


_relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Relay] = weakref.WeakKeyDictionary()
_relays_lock = threading.Lock()


def relay(loop: asyncio.AbstractEventLoop) -> Relay:
    """The ``Relay`` to ``loop`` (one per loop, dropped with it)."""
    found = _relays.get(loop)
    if found is None:
        with _relays_lock:
            found = _relays.get(loop)
            if found is None:
                found = _relays[loop] = Relay(loop)
    return found


class Writer:
    """Frames and writes batches of ``Outgoing`` on a session's confirm channel (on the App's loop)."""

    def __init__(self) -> None:
        self._method_frames: dict[tuple[int, str, str], bytes] = {}

    def method_frame(self, channel: int, exchange: str, routing_key: str) -> bytes:
        key = (channel, exchange, routing_key)
        frame = self._method_frames.get(key)
        if frame is None:
            frame = codec.method_frame(channel, _PUBLISH, (0, exchange, routing_key, False, False))
            if len(self._method_frames) > 4096:
                self._method_frames.clear()
            self._method_frames[key] = frame
        return frame

    @staticmethod
    def free(channel: aiormq.abc.AbstractChannel) -> bool:
        """Nothing of aiormq's own is between tag and write on ``channel``, and its write queue has room."""
        lock = getattr(channel, "_Channel__lock", None)
        queue = getattr(channel, "write_queue", None)
        return (lock is not None and not lock.locked() and queue is not None and not queue.full()
                and not channel.is_closed)

    def write(self, session: Session, batch: list[Outgoing], stream: bool, slow: Callable[[Outgoing], None],
              confirmed: Callable[[Outgoing, asyncio.Future[Any]], None]) -> None:
        """Write what can go fast; pass the rest to ``slow`` (the old path). ``confirmed(item, confirmation)``
        runs when the broker answers (or the channel closes)."""
        channel = session.raw
        events = session.events
        if not self.free(channel) or (stream and not self.free(events)):
            for item in batch:
                slow(item)
            return
        number = channel.number
        chunk = channel.max_content_size  # type: ignore[attr-defined]
        parts: list[bytes] = []
        declared = session.declared
        for item in batch:
            queue = item.task.queue
            if queue not in declared:
                slow(item)
                continue
            if item.event is not None and stream:
                ev_body, ev_header, ev_key = item.event
                parts.append(self.method_frame(events.number, "leveret.events", ev_key))
                codec.append_content(parts, events.number, ev_header, ev_body, chunk)
            channel.delivery_tag += 1  # type: ignore[attr-defined]
            tag = channel.delivery_tag  # type: ignore[attr-defined]
            confirmation = channel.create_future()  # type: ignore[attr-defined]
            channel.confirmations[tag] = confirmation  # type: ignore[attr-defined]
            confirmation.add_done_callback(partial(confirmed, item))
            parts.append(self.method_frame(number, "", queue))
            codec.append_content(parts, number, item.header, item.body, chunk)
        if parts:
            channel.write_queue.put_nowait(  # type: ignore[attr-defined]
                ChannelFrame(payload=b"".join(parts), should_close=False))
