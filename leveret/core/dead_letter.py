"""Dead-lettering, as RabbitMQ 3.10's: a message leaving a queue without being consumed (rejected without
requeue, expired, dropped by a length limit or a delivery limit, retries used up) is republished to the queue's
dead-letter exchange with an ``x-death`` header, through the one publish entry
(:meth:`~leveret.core.routing.Routing.publish`).

- :func:`dead_letter` is what a queue calls (``Queue.drop``);
- :func:`move` is the same kind of move on request (the management API's queue actions ``move`` and
  ``replay_dead_letters``): each message taken from its queue is republished through the one publish entry and
  settled in its queue in the same synchronous step, so the store gets the push and the delete in one
  durability batch (after a crash the message is in one queue or the other, never both, never neither);
- :func:`death_origin` is where a dead letter came from (its latest ``x-death`` entry's queue);
- :func:`dead_letter_copy` builds the republished message and its routing keys, :func:`group_deaths` merges
  old-style ``x-death`` entries, :func:`is_cycle` finds a fully automatic loop (dropped, as RabbitMQ does).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from leveret.amqp.fields import LongInt

from .message import Message, new_message
from .routing import Origin
from .tracking import MESSAGE_ID

if TYPE_CHECKING:
    from collections.abc import Callable

    from .exchanges import Exchange
    from .queue import Queue
    from .vhost import VHost


def dead_letter(vhost: VHost, queue: Queue, msg: Message, reason: str) -> None:
    """Republish a message leaving ``queue`` for ``reason`` to the queue's dead-letter exchange, with
    RabbitMQ's x-death header; a missing exchange or a fully automatic cycle drops it."""
    settings = queue.settings
    exchange = vhost.exchanges.get(settings.dead_letter_exchange or "")
    if exchange is None:
        return
    copy, keys = dead_letter_copy(msg, queue.name, reason, exchange.name, settings.dead_letter_routing_key,
                                  vhost.broker.timers.now())
    vhost.publish(exchange, copy, _DeadLettered(queue, msg, reason), keys=keys, again=True)  # not a duplicate


def move(vhost: VHost, queue: Queue, count: int, target: Callable[[Message], tuple[Exchange, str] | None],
         who: str, drop_headers: tuple[str, ...] = ()) -> int:
    """Move up to ``count`` ready messages of ``queue``, from its head, each to ``target(msg)`` (an exchange and
    a routing key), with its properties and body unchanged but for the headers in ``drop_headers``; returns how
    many moved. Dead-lettering's path: taken
    as a delivery (``Queue.get``, ``hand_out``), republished as a new record through the one publish entry
    (``VHost.publish``; message tracking records ``moved`` by ``who``), then settled, all in one synchronous
    step (one durability batch). A message with no target, or that its destination does not take (unroutable, x-overflow
    reject-publish), is put back at its place (marked redelivered) and the move stops there."""
    moved = 0
    while moved < count:
        msg = queue.get()
        if msg is None:
            break
        queue.hand_out(msg, True, notify=False)  # no notices for the original: the copy reports where it goes
        queue.reload_body(msg)
        found = target(msg)
        props = msg.properties
        if drop_headers and any(name in (props.get("headers") or {}) for name in drop_headers):
            props = {**props, "headers": {k: v for k, v in props["headers"].items() if k not in drop_headers}}
        if found is None or vhost.publish(found[0], new_message(found[0].name, found[1], props, msg.body),
                                          _Moved(queue, msg, who), again=True) is not True:
            queue.requeue([msg])
            break
        queue.settle_unacked(msg, notify=False)
        moved += 1
    return moved


def death_origin(msg: Message) -> str | None:
    """The queue a dead letter last died in (its latest ``x-death`` entry), or None."""
    deaths = (msg.headers or {}).get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        name = deaths[0].get("queue")
        return name if isinstance(name, str) else None
    return None


class _Moved(Origin):
    """The origin of a moved copy: records ``moved`` (from which queue, to which, by whom) for the original."""

    __slots__ = ("msg", "queue", "who")

    def __init__(self, queue: Queue, msg: Message, who: str) -> None:
        self.queue = queue
        self.msg = msg
        self.who = who

    def routed(self, vhost: VHost, exchange: Exchange, msg: Message, queues: Sequence[Queue],
               mandatory: bool) -> Sequence[Queue]:
        tracker = vhost.broker.tracker
        if self.msg.flags & MESSAGE_ID and tracker is not None:
            tracker.record(vhost.name, self.msg, "moved", self.queue.name, tuple([q.name for q in queues]), self.who)
        return queues


class _DeadLettered(Origin):
    """The origin of a dead-lettered copy: leaves out the queues that would close a fully automatic cycle and
    records ``dead_lettered`` for the original message."""

    __slots__ = ("msg", "queue", "reason")
    always = True

    def __init__(self, queue: Queue, msg: Message, reason: str) -> None:
        self.queue = queue
        self.msg = msg
        self.reason = reason

    def held(self, vhost: VHost, msg: Message) -> None:
        self._record(vhost, vhost.exchanges[msg.exchange], ())

    def routed(self, vhost: VHost, exchange: Exchange, msg: Message, queues: Sequence[Queue],
               mandatory: bool) -> Sequence[Queue]:
        if self.reason != "rejected":
            deaths = msg.properties["headers"]["x-death"]
            queues = [q for q in queues if not is_cycle(q.name, deaths)]
        self._record(vhost, exchange, queues)
        return queues

    def _record(self, vhost: VHost, exchange: Exchange, queues: Sequence[Queue]) -> None:
        original = self.msg
        tracker = vhost.broker.tracker
        if original.flags & MESSAGE_ID and tracker is not None:
            tracker.record(vhost.name, original, "dead_lettered", self.queue.name, self.reason, exchange.name,
                           tuple([q.name for q in queues]))


def _sorted(table: dict[str, Any]) -> dict[str, Any]:
    """A table with its keys in RabbitMQ's (Erlang's byte-wise) order."""
    return dict(sorted(table.items(), key=lambda item: item[0].encode()))


def dead_letter_copy(msg: Message, queue_name: str, reason: str, exchange: str, routing_key: str | None,
                     now: float) -> tuple[Message, list[str]]:
    """The message as it is dead-lettered from ``queue_name`` for ``reason``, with the ``x-death`` header
    exactly as RabbitMQ 3.10 builds it, published to ``exchange``; and the routing keys to route it with
    (``routing_key`` if given, else the original key, CC and BCC keys)."""
    props = dict(msg.properties)
    headers = dict(props.get("headers") or {})
    keys = [msg.routing_key]
    cc = headers.get("CC")
    if isinstance(cc, list):
        keys.extend(k for k in cc if isinstance(k, str))
    entry: dict[str, Any] = {
        "count": LongInt(1),
        "reason": reason,
        "queue": queue_name,
        "time": datetime.datetime.fromtimestamp(int(now), datetime.UTC),
        "exchange": msg.exchange,
        "routing-keys": list(keys),
    }
    expiration = props.pop("expiration", None)
    if expiration is not None:
        entry["original-expiration"] = expiration
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths:
        deaths = group_deaths(deaths)
        for index, old in enumerate(deaths):
            if isinstance(old, dict) and old.get("queue") == queue_name and old.get("reason") == reason:
                updated = dict(old)
                count = updated.get("count")
                updated["count"] = LongInt((count if isinstance(count, int) else 0) + 1)
                deaths = [_sorted(updated), *deaths[:index], *deaths[index + 1 :]]
                break
        else:
            deaths = [_sorted(entry), *deaths]
    else:
        deaths = [entry]
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue_name
        headers["x-first-death-exchange"] = msg.exchange
    headers["x-death"] = deaths
    if routing_key is not None:
        headers.pop("CC", None)
    props["headers"] = _sorted(headers)
    body = msg.body
    new_key = routing_key if routing_key is not None else msg.routing_key
    copy = new_message(exchange, new_key, props, body)
    return copy, ([routing_key] if routing_key is not None else keys + (msg.bcc or []))


def group_deaths(deaths: list[Any]) -> list[Any]:
    """Merge ``x-death`` entries written by RabbitMQ before 3.5 (one per event) into one per (queue, reason), as
    RabbitMQ 3.10 does before it adds a death: the first entry of each pair stands for the group (groups in
    the reverse order of their first appearance), and one without a ``count`` gets the number
    of entries of its pair as its first field (one that has a ``count`` keeps it)."""
    if len(deaths) < 2 or not all(isinstance(death, dict) for death in deaths):
        return deaths
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for death in deaths:
        groups.setdefault((death.get("queue"), death.get("reason")), []).append(death)
    grouped: list[Any] = []
    for members in groups.values():
        first = members[0]
        if "count" not in first:
            first = {"count": LongInt(len(members)), **first}
        grouped.insert(0, first)
    return grouped


def is_cycle(queue_name: str, deaths: list[Any]) -> bool:
    """RabbitMQ's rabbit_dead_letter:is_cycle: dead-lettering into ``queue_name`` again would close a loop
    with no rejection in it (so the message would circulate for ever)."""
    for index, death in enumerate(deaths):
        if isinstance(death, dict) and death.get("queue") == queue_name:
            return all(isinstance(d, dict) and d.get("reason") != "rejected" for d in deaths[: index + 1])
    return False
