"""A consumer (one basic.consume) and its credit: whether a message could be delivered to it now. A consumer of a
queue another node serves is relayed there (``link``, core/remote.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .channel import Channel
    from .queue import Queue
    from .remote import RemoteLink


class Consumer:
    """One basic.consume: a queue, the channel it delivers on, and its acknowledgement mode and credit."""

    __slots__ = (
        "arguments",
        "channel",
        "exclusive",
        "link",
        "no_ack",
        "prefetch",
        "priority",
        "queue",
        "tag",
        "tag_bytes",
        "unacked",
    )

    def __init__(self, tag: str, queue: Queue, channel: Channel, *, no_ack: bool, exclusive: bool,
                 prefetch: int, arguments: dict[str, Any]) -> None:
        self.tag = tag
        raw = tag.encode()
        self.tag_bytes = bytes((len(raw),)) + raw
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments
        self.priority = 0
        self.link: RemoteLink | None = None  # a consumer relayed to the queue's owner (core/remote.py)

    def has_credit(self) -> bool:
        """True when a message could be delivered to this consumer now."""
        channel = self.channel
        if not channel.deliverable:
            return False
        # the channel-wide limit (global=true) counts ack-required consumer deliveries only (not basic.get), and
        # holds back no-ack consumers too while it is reached; the per-consumer limit ignores no-ack consumers
        if channel.global_prefetch and channel.limited >= channel.global_prefetch:
            return False
        if self.no_ack:
            return True
        return not (self.prefetch and self.unacked >= self.prefetch)
