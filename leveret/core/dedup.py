"""Message deduplication (LavinMQ's): a bounded window of recent ids per queue or exchange.

A queue or an exchange declared with the argument ``x-message-deduplication: true`` keeps the ids of the
messages it took most recently; a message whose id is in that window is a duplicate: it is dropped (not
enqueued, not routed), and the publish still succeeds (a publisher confirm acks it, a ``mandatory`` publish is
not returned, it is not counted as unroutable). The id is the value of the message header named by the
argument ``x-deduplication-header`` (default: the header ``x-deduplication-header`` itself); a message without
it is never a duplicate. Arguments, as LavinMQ's:

- ``x-cache-size``: how many ids the window keeps (default 128; the oldest is forgotten first; 0 counts as 1);
- ``x-cache-ttl``: milliseconds an id stays in the window (default: until pushed out by newer ones); a message
  header ``x-cache-ttl`` overrides it for that message;
- ``x-deduplication-header``: the name of the header that carries the id.

An id enters the window only once the message was taken (a queue that refuses it, ``x-overflow:
reject-publish``, does not remember it, so the publisher's retry after the nack goes through; an exchange
remembers it only when every queue took it). The check is in the one publish entry (:meth:`Routing.publish
<leveret.core.routing.Routing.publish>`, for exchanges) and in :meth:`Queue.enqueue
<leveret.core.queue.Queue.enqueue>` (for queues), so every path that publishes or enqueues goes through it; a
message the broker moves (dead-lettered, retried, a delayed one when due, the management API's move) is passed
with ``again``/``checked`` and not deduplicated again.

The window of a durable queue or exchange is durable: each id taken is a store op (``DedupPut``,
core/storage.py) in the same commit as the message, so a publish is confirmed only once its id is on disk,
and recovery reloads the windows (``Store.load_dedup``); a failed commit takes its ids out again (the
publishes are nacked and may be sent again). Deleting the queue or exchange deletes its window.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import PreconditionFailed
from .tracking import MESSAGE_ID

if TYPE_CHECKING:
    from .durability import Durability
    from .message import Message
    from .queue import Queue
    from .timers import Timers
    from .tracking import Tracker

DEDUP_ARGUMENT = "x-message-deduplication"
HEADER_ARGUMENT = "x-deduplication-header"
SIZE_ARGUMENT = "x-cache-size"
TTL_ARGUMENT = "x-cache-ttl"
DEFAULT_SIZE = 128  # LavinMQ's default cache size
_TTL_KEY = b"\x0b" + TTL_ARGUMENT.encode()


class DedupSettings(NamedTuple):
    size: int
    ttl: int | None  # milliseconds
    header: str


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_dedup(arguments: dict[str, Any]) -> DedupSettings | None:
    """The deduplication settings of a queue's or exchange's arguments, None when it does not deduplicate.
    Raises PreconditionFailed (LavinMQ's texts) for an argument of the wrong type or a negative number."""
    enabled = arguments.get(DEDUP_ARGUMENT)
    if enabled is None:
        return None
    if not isinstance(enabled, bool):
        raise PreconditionFailed(f"{DEDUP_ARGUMENT} header not a Bool")
    size = arguments.get(SIZE_ARGUMENT)
    ttl = arguments.get(TTL_ARGUMENT)
    header = arguments.get(HEADER_ARGUMENT)
    for name, value in ((SIZE_ARGUMENT, size), (TTL_ARGUMENT, ttl)):
        if value is not None and (not _int(value) or value < 0):
            raise PreconditionFailed(f"{name} header not a Int" if not _int(value) else
                                     f"{name} has to be larger than or equal to 0")
    if header is not None and not isinstance(header, str):
        raise PreconditionFailed(f"{HEADER_ARGUMENT} header not a String")
    if not enabled:
        return None
    return DedupSettings(max(1, size) if size is not None else DEFAULT_SIZE, ttl, header or HEADER_ARGUMENT)


def key_text(value: Any) -> str | None:
    """A header value as the window's key: its type and its value (a string "1" and an integer 1 differ)."""
    if isinstance(value, str):
        return "s" + value
    if isinstance(value, bytes | bytearray):
        return "b" + bytes(value).hex()
    if _int(value):
        return "i" + str(int(value))
    if value is None:
        return None
    return "r" + repr(value)


class DedupWindow:
    """The recent ids of one queue or exchange (``kind`` "queue" or "exchange"), oldest first. ``durability``
    is given for a durable owner: the ids it takes are stored with the messages."""

    def __init__(self, settings: DedupSettings, kind: str, vhost: str, name: str, timers: Timers,
                 durability: Durability | None = None, tracker: Tracker | None = None) -> None:
        self.settings = settings
        self.kind = kind
        self.vhost = vhost
        self.name = name
        self.timers = timers
        self.durability = durability
        self.tracker = tracker
        self.entries: OrderedDict[str, float] = OrderedDict()  # key -> expires at (ms since the epoch; 0: never)
        self.seq = 0  # the store's order of the ids taken
        self.duplicates = 0  # messages dropped as duplicates
        name_bytes = settings.header.encode()
        self._needle = bytes([len(name_bytes)]) + name_bytes  # the header's name as a field table key

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, msg: Message) -> str | None:
        """The message's deduplication key, None when it has none. Read from the content header without decoding
        the properties when the value is a long string (what clients send; decoding them costs several µs): the
        header's name, a table key, then ``S``, a length and UTF-8 bytes; anything else is decoded. (The last
        occurrence of the name is read: a nested table with that key, a corner no client has reason to send,
        would give the id of the message's own choosing all the same.)"""
        if not msg.flags & 0x2000:  # no headers
            return None
        header = msg.header
        at = header.rfind(self._needle, 14)
        if at < 0:  # every key of the table is there as a short string: this one is not
            return None
        at += len(self._needle)
        if header[at:at + 1] == b"S":
            size = int.from_bytes(header[at + 1:at + 5], "big")
            raw = header[at + 5:at + 5 + size]
            if len(raw) == size:
                try:
                    return "s" + raw.decode()
                except UnicodeDecodeError:
                    pass
        headers = msg.headers
        return key_text(headers.get(self.settings.header)) if headers else None

    def seen(self, key: str) -> bool:
        """Whether ``key`` is in the window (an expired entry is forgotten)."""
        expires = self.entries.get(key)
        if expires is None:
            return False
        if expires and expires <= self.timers.now() * 1000:
            del self.entries[key]
            return False
        return True

    def enqueue(self, queue: Queue, msg: Message) -> bool:
        """:meth:`Queue.enqueue` of a deduplicating queue: a duplicate is dropped (True: a confirm acks it); the
        id of a message the queue takes enters the window."""
        key = self.key(msg)
        if key is None:
            return queue.enqueue(msg, checked=True)
        if self.seen(key):
            self.duplicate(msg)
            return True
        taken = queue.enqueue(msg, checked=True)
        if taken:
            self.add(key, msg)
        return taken

    def duplicate(self, msg: Message) -> None:
        """``msg`` is a duplicate and is dropped: count it (and track it)."""
        self.duplicates += 1
        if self.tracker is not None and msg.flags & MESSAGE_ID:
            self.tracker.record(self.vhost, msg, "deduplicated", self.kind, self.name)

    def add(self, key: str, msg: Message) -> None:
        """``msg`` was taken: remember its key (and store it with the message when the owner is durable)."""
        ttl = self.settings.ttl
        if msg.header.find(_TTL_KEY, 14) >= 0:  # a per-message x-cache-ttl (decoded only then)
            override = (msg.headers or {}).get(TTL_ARGUMENT)
            if isinstance(override, int) and not isinstance(override, bool) and override >= 0:
                ttl = override
        expires = self.timers.now() * 1000 + ttl if ttl is not None else 0.0
        entries = self.entries
        entries[key] = expires  # a new key (``seen`` said so): at the end, the newest
        while len(entries) > self.settings.size:
            entries.popitem(last=False)
        self.seq += 1
        if self.durability is not None:
            self.durability.dedup_put(self, key, self.seq, expires)

    def forget(self, key: str) -> None:
        """The commit that stored ``key`` failed: its message was nacked and may come again."""
        self.entries.pop(key, None)

    def load(self, rows: Iterable[tuple[int, str, float]]) -> None:
        """Recovery: the stored ids (seq, key, expires) in seq order."""
        now = self.timers.now() * 1000
        for seq, key, expires in rows:
            self.seq = max(self.seq, seq)
            if expires and expires <= now:
                continue
            self.entries.pop(key, None)
            self.entries[key] = expires
        while len(self.entries) > self.settings.size:
            self.entries.popitem(last=False)


def make_window(arguments: dict[str, Any], kind: str, vhost: str, name: str, durable: bool, broker: Any) -> \
        DedupWindow | None:
    """The window of a new queue or exchange (None when its arguments do not ask for one)."""
    settings = parse_dedup(arguments)
    if settings is None:
        return None
    return DedupWindow(settings, kind, vhost, name, broker.timers, broker.durability if durable else None,
                       broker.tracker)
