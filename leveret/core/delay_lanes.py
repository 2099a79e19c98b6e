"""What a delayed message is keyed by (core/delays.py holds and fires them): the ``x-delay`` header as the plugin
reads it (:func:`parse_delay`), the pseudo-queue names of durable delays, a *lane* (the delayed messages of one
target: an exchange or a queue of a vhost) and an *entry* (one delayed message in a lane), ordered by
:func:`entry_key` = (due ms << 20 | tie, store id)."""

from __future__ import annotations

import decimal
import re
from typing import Any, Final

from .message import Message
from .storage import DELAYED_PREFIX as DELAYED_PREFIX  # the pseudo-queue names are the port's (core/storage.py)
from .storage import NODE_MARK as NODE_MARK
from .storage import RETRY_PREFIX as RETRY_PREFIX

DELAYED_TYPE: Final = "x-delayed-message"
MAX_DELAY: Final = 4294967295
"""The longest x-delay the plugin honours (Erlang's timer limit, ~49.7 days); longer ones route at once."""

EXCHANGE: Final = "exchange"
QUEUE: Final = "queue"

TIE_BITS = 20
TIE_MASK = (1 << TIE_BITS) - 1
HEADERS_FLAG = 0x2000
TOP = (2**63, 0)  # a fence above every key: the whole lane is in memory
_INTEGER = re.compile(r"[+-]?[0-9]+")

GONE, RESIDENT, UNSYNCED = 0, 1, 2


def parse_delay(value: Any) -> int | None:
    """The x-delay header as the plugin reads it: integer types as they are, floats and decimals truncated,
    strings holding an integer converted; anything else (or nothing) is None (no delay)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float | decimal.Decimal):
        try:
            return int(value)
        except (ValueError, OverflowError, ArithmeticError):
            return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


class Lane:
    """The delayed messages of one target (an exchange or a queue of a vhost), durable or memory-only."""

    __slots__ = ("addresses", "count", "durable", "fence", "kind", "released", "store_name", "tail", "target",
                 "unsynced", "vhost", "window")

    def __init__(self, vhost: str, kind: str, target: str, durable: bool, node_tag: str = "") -> None:
        self.vhost = vhost
        self.kind = kind
        self.target = target
        self.durable = durable
        self.store_name = (DELAYED_PREFIX if kind == EXCHANGE else RETRY_PREFIX) + node_tag + target
        self.count = 0  # pending messages, in memory or not
        self.window: dict[int, Entry] = {}  # durable: store id -> entry, the messages in memory
        self.unsynced: dict[int, Entry] = {}  # durable, after the fence, bodies held until their commit is done
        self.tail = False  # durable: some stored messages (after the fence) are not in memory
        self.fence: tuple[int, int] = TOP
        self.addresses: dict[tuple[str, str], bytes] = {}
        self.released: set[int] = set()  # durable: ids released early from after the fence, delete not committed

    def __repr__(self) -> str:
        return f"<lane {self.store_name!r} of vhost {self.vhost!r}{' durable' if self.durable else ''}>"


class Entry:
    __slots__ = ("id", "lane", "msg", "order", "seq", "size", "state", "synced")

    def __init__(self, lane: Lane, msg: Message, seq: int, store_id: int, size: int) -> None:
        self.lane = lane
        self.msg: Message | None = msg
        self.seq = seq
        self.id = store_id
        self.size = size
        self.state = GONE
        self.order = -1
        self.synced = False

def entry_key(entry: Entry) -> tuple[int, int]:
    return (entry.seq, entry.id)
