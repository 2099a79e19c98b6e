"""Message rates and their history for the management API, as RabbitMQ's ``message_stats``: each counter
``name`` comes with ``name_details: {"rate": per second}`` (:class:`Rates`), and, when asked with RabbitMQ's
``lengths_age``/``lengths_incr`` and ``msg_rates_age``/``msg_rates_incr``, with ``samples`` from the bounded
rings of :class:`History` that the web page's charts draw.

The core keeps plain counters (``Queue.stats_published``, ``stats_delivered``, ``stats_acked``,
``stats_redelivered``); nothing is
sampled on a timer. Each time an object's stats are read, its counters are sampled (at most one kept sample
per second) and the rate is the increase since the oldest sample of the last ``window`` seconds, divided by
the time between them. So a client that polls every few seconds sees the rate over its polling interval, a
counter that stops moving shows 0 after ``window`` seconds, and an object read once shows 0 (no history yet).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from leveret.core import errors

if TYPE_CHECKING:
    from leveret.core.broker import Broker

WINDOW = 5.0  # seconds; RabbitMQ's collect_statistics_interval is 5 s
_KEEP_EVERY = 1.0  # seconds between kept samples
_FORGET_AFTER = 60.0  # seconds without a read before an object's samples are dropped


class Rates:
    def __init__(self, clock: Callable[[], float] = time.monotonic, window: float = WINDOW) -> None:
        self.clock = clock
        self.window = window
        self._samples: dict[Hashable, deque[tuple[float, tuple[int, ...]]]] = {}
        self._last_prune = clock()

    def stats(self, key: Hashable, counters: dict[str, int]) -> dict[str, object]:
        """``counters`` with a ``<name>_details: {"rate": ...}`` beside each, for the object ``key``."""
        now = self.clock()
        values = tuple(counters.values())
        samples = self._samples.setdefault(key, deque())
        if samples and any(v < old for v, old in zip(values, samples[-1][1], strict=True)):
            samples.clear()  # counters went back: the object was deleted and made again
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()  # keep one sample at or before the window's start as the reference
        rates = [0.0] * len(values)
        if samples:
            then, old = samples[0]
            elapsed = now - then
            if elapsed > 0:
                rates = [round((v - o) / elapsed, 1) for v, o in zip(values, old, strict=True)]
        if not samples or now - samples[-1][0] >= _KEEP_EVERY:
            samples.append((now, values))
        self._prune(now)
        result: dict[str, object] = {}
        for (name, value), rate in zip(counters.items(), rates, strict=True):
            result[name] = value
            result[f"{name}_details"] = {"rate": rate}
        return result

    def _prune(self, now: float) -> None:
        if now - self._last_prune < _FORGET_AFTER:
            return
        self._last_prune = now
        for key in [k for k, s in self._samples.items() if not s or s[-1][0] < now - _FORGET_AFTER]:
            del self._samples[key]


# --- history: bounded rings of samples per object, for charts -------------------------------------------

LENGTHS = ("messages", "messages_ready", "messages_unacknowledged")
COUNTERS = ("publish", "deliver_get", "ack", "redeliver")
FIELDS = LENGTHS + COUNTERS  # the values of one sample, in this order
INTERVAL = 5.0  # seconds between samples (RabbitMQ's collect_statistics_interval)
FINE = 720  # samples of INTERVAL kept per object: one hour
COARSE_EVERY = 60.0  # the overview also keeps one sample a minute ...
COARSE = 480  # ... for eight hours
WATCH_FOR = 600.0  # a queue is sampled for this long after its samples were last asked for
MAX_WATCHED = 200  # at most this many queues sampled at once (the ones asked for most recently)
MAX_POINTS = 1000  # at most this many samples in one answer

Sample = tuple[float, tuple[int, ...]]  # (wall-clock seconds, the FIELDS values)


class History:
    """Rings of samples per object, taken every ``interval`` seconds by :meth:`tick` (driven by :meth:`running`
    on the event loop): the overview always (one hour at ``interval`` and eight hours at one a minute), a queue
    for ``WATCH_FOR`` seconds after its samples were asked for (``?lengths_age=&lengths_incr=`` on its page),
    at most ``MAX_WATCHED`` queues. ``sample(key)`` gives an object's FIELDS now, None once it is gone. Memory
    is bounded: (1 + MAX_WATCHED) * FINE + COARSE samples of seven integers."""

    def __init__(self, sample: Callable[[Hashable], tuple[int, ...] | None], clock: Callable[[], float] = time.time,
                 interval: float = INTERVAL) -> None:
        self.sample = sample
        self.clock = clock
        self.interval = interval
        self.fine: dict[Hashable, deque[Sample]] = {"overview": deque(maxlen=FINE)}
        self.coarse: deque[Sample] = deque(maxlen=COARSE)
        self.watched: dict[Hashable, float] = {}  # queue key -> when its samples were last asked for

    def watch(self, key: Hashable) -> None:
        now = self.clock()
        first = key not in self.watched
        self.watched.pop(key, None)
        self.watched[key] = now  # most recent last
        while len(self.watched) > MAX_WATCHED:
            oldest = next(iter(self.watched))
            del self.watched[oldest]
            self.fine.pop(oldest, None)
        if first:
            self._record(key, now)

    def tick(self) -> None:
        now = self.clock()
        for key in [k for k, asked in self.watched.items() if asked < now - WATCH_FOR]:
            del self.watched[key]
            self.fine.pop(key, None)
        values = self._record("overview", now)
        if values is not None and (not self.coarse or now - self.coarse[-1][0] >= COARSE_EVERY - self.interval / 2):
            self.coarse.append((now, values))
        for key in list(self.watched):
            self._record(key, now)

    def _record(self, key: Hashable, now: float) -> tuple[int, ...] | None:
        values = self.sample(key)
        if values is None:  # the queue is gone
            self.watched.pop(key, None)
            self.fine.pop(key, None)
            return None
        self.fine.setdefault(key, deque(maxlen=FINE)).append((now, values))
        return values

    async def running(self, app: object) -> AsyncIterator[None]:
        """For ``aiohttp.web.Application.cleanup_ctx``: sample every ``interval`` seconds while the server runs."""
        async def loop() -> None:
            while True:
                self.tick()
                await asyncio.sleep(self.interval)

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()

    def points(self, key: Hashable, age: float, incr: float) -> list[Sample]:
        """The samples at ``now - k * incr`` for k = 0 .. age / incr, newest first, times aligned to ``incr``
        as RabbitMQ's: the newest is the object's values now, each other the last sample taken at or before its
        time (none before the first)."""
        current = self.sample(key)
        if current is None:
            return []
        rings = [list(self.fine.get(key, ()))]
        if key == "overview":
            rings.append(list(self.coarse))
        now = self.clock()
        newest = now - now % incr
        found: list[Sample] = [(newest, current)]
        for k in range(1, min(int(age // incr), MAX_POINTS - 1) + 1):
            at = newest - k * incr
            for ring in rings:
                if ring and ring[0][0] <= at:
                    index = bisect.bisect_right(ring, at, key=lambda s: s[0]) - 1
                    found.append((at, ring[index][1]))
                    break
            else:
                break  # older than any sample
        return found

    def annotate(self, query: Mapping[str, str], key: Hashable, info: dict[str, Any],
                 lengths_in: str | None = None) -> dict[str, Any]:
        """``info`` (an overview or a queue as the API answers it) with RabbitMQ's ``<name>_details``
        ``samples``, ``avg`` and ``avg_rate`` for the message counts (in ``info[lengths_in]``, or ``info``) when
        ``lengths_age`` and ``lengths_incr`` are given and for ``info["message_stats"]`` when ``msg_rates_age``
        and ``msg_rates_incr`` are. Raises PreconditionFailed for an ``incr`` of 0, as RabbitMQ (400)."""
        for prefix, names, target in (("lengths", LENGTHS, info if lengths_in is None else info.get(lengths_in)),
                                      ("msg_rates", COUNTERS, info.get("message_stats"))):
            age, incr = _integer(query.get(f"{prefix}_age")), _integer(query.get(f"{prefix}_incr"))
            if age is None or incr is None or not isinstance(target, dict):
                continue
            if incr <= 0 or age < 0:
                raise errors.PreconditionFailed(f"Invalid range parameters: age {age}, incr {incr}")
            if key != "overview":
                self.watch(key)
            points = self.points(key, age, incr)
            for name in names:
                index = FIELDS.index(name)
                values = [(t, v[index]) for t, v in points]
                details = dict(target.get(f"{name}_details") or {})
                details["samples"] = [{"sample": v, "timestamp": int(t * 1000)} for t, v in values]
                details["avg"] = round(sum(v for _, v in values) / len(values), 1) if values else 0.0
                span = values[0][0] - values[-1][0] if values else 0
                details["avg_rate"] = round((values[0][1] - values[-1][1]) / span, 1) if span > 0 else 0.0
                details.setdefault("rate", _last_rate(values))
                target[f"{name}_details"] = details
        return info


def _last_rate(values: list[tuple[float, int]]) -> float:
    if len(values) < 2 or values[0][0] <= values[1][0]:
        return 0.0
    return round((values[0][1] - values[1][1]) / (values[0][0] - values[1][0]), 1)


def _integer(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # ignored, as RabbitMQ ignores a range it cannot read


def broker_sample(broker: Broker, key: Hashable) -> tuple[int, ...] | None:
    """The FIELDS of the overview (sums over every queue) or of the queue ``("queue", vhost, name)`` now."""
    if key == "overview":
        queues = [q for v in broker.vhosts.values() for q in v.queues.values()]
    else:
        assert isinstance(key, tuple)
        vhost = broker.vhosts.get(str(key[1]))
        queue = vhost.queues.get(str(key[2])) if vhost is not None else None
        if queue is None:
            return None
        queues = [queue]
    ready = sum(q.message_count for q in queues)
    unacked = sum(q.unacked_count for q in queues)
    return (ready + unacked, ready, unacked, sum(q.stats_published for q in queues),
            sum(q.stats_delivered for q in queues), sum(q.stats_acked for q in queues),
            sum(q.stats_redelivered for q in queues))
