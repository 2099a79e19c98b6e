"""Job-done notices (Leveret's own): what became of a message, published as it happens to a queue the publisher
named in the message's ``x-leveret-notify`` header.

A message whose headers have ``x-leveret-notify: <queue>`` (the outbox's forwarder sets it on messages sent with
``track=True``, naming a durable queue of its own) makes the broker publish a small JSON notice to that queue
through the default exchange, with the one publish entry (``VHost.publish``), at each step of its life::

    {"id": <message_id>, "event": <event>, "queue": <queue name>, "reason": <text or null>, "ts": <seconds>}

- ``routed``: a publisher's message (or a delayed one when it is due) was routed; ``queues`` lists the queues
  it went to (routing.py). A multicast message is processed once every one of them processed it;
- ``delivered``: it left ``queue`` for a client (``Queue.hand_out``, the one delivery step: a consumer, basic.get,
  the management API's get); each redelivery sends it again;
- ``processed``: a consumer acked it (``Queue.settle_unacked``), or it was delivered without an ack (auto-ack:
  the broker's part ends there);
- ``failed``: it left ``queue`` without being processed (``Queue.drop``): ``reason`` is ``rejected`` (basic.reject
  or nack without requeue), ``expired``, ``maxlen``, ``delivery_limit`` or ``retries_exhausted``, followed by
  ``, dead-lettered`` when the queue has a dead-letter exchange. A rejection that ``x-retry-intervals`` schedules
  again is not a failure.

A notice is persistent when the message is, so the notices of a persistent message in a durable queue survive a
broker restart once the notice queue is durable. A notice queue that does not exist drops them (the default
exchange routes them nowhere), and so does a message naming the queue it is in. Notices carry no
``x-leveret-notify`` themselves. Dead-lettered and moved copies
keep the header, so the queue they reach reports on them too (a ``failed`` before stays the message's outcome).

Cost: one bit test at each hook (``Message.flags & NOTIFY``, set when the record is made: a search of the content
header for ``x-leveret-notify``, ~150 ns, only for a message with headers and a ``message_id``; the notices need
the ``message_id``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .message import NOTIFY, Message, new_message

if TYPE_CHECKING:
    from .queue import Queue
    from .vhost import VHost

NOTIFY_HEADER = "x-leveret-notify"


def target(msg: Message) -> str | None:
    """The notice queue a message names, or None (no header, or an empty one)."""
    if not msg.flags & NOTIFY:
        return None
    name = (msg.headers or {}).get(NOTIFY_HEADER)
    return name if isinstance(name, str) and name else None


def notify(vhost: VHost, msg: Message, event: str, queue: str, reason: str | None = None,
           queues: Sequence[str] | None = None) -> None:
    """Publish the notice of ``event`` for ``msg`` to the queue it names (nothing when it names none)."""
    name = target(msg)
    if name is None or name == queue or (queues is not None and name in queues):
        return  # none asked for, or a queue would report to itself (its own dispatch would nest)
    body: dict[str, object] = {"id": msg.properties.get("message_id"), "event": event, "queue": queue,
                               "reason": reason, "ts": round(vhost.broker.timers.now(), 6)}
    if queues is not None:
        body["queues"] = list(queues)
    props = {"content_type": "application/json", "delivery_mode": 2 if msg.persistent else 1, "type": "notice"}
    notice = new_message("", name, props, json.dumps(body, separators=(",", ":")).encode())
    vhost.publish(vhost.exchanges[""], notice)


def routed(vhost: VHost, msg: Message, queues: Sequence[Queue]) -> None:
    notify(vhost, msg, "routed", "", queues=[q.name for q in queues])


def handed_out(queue: Queue, msg: Message, ack: bool) -> None:
    """The one delivery step: delivered, and processed already when no ack is due."""
    notify(queue.vhost, msg, "delivered", queue.name)
    if not ack:
        notify(queue.vhost, msg, "processed", queue.name)


def processed(queue: Queue, msg: Message) -> None:
    notify(queue.vhost, msg, "processed", queue.name)


def failed(queue: Queue, msg: Message, reason: str) -> None:
    if queue.settings.dead_letter_exchange is not None:
        reason += ", dead-lettered"
    notify(queue.vhost, msg, "failed", queue.name, reason)
