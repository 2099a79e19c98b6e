"""Handlers that move messages: ``POST /api/exchanges/{vhost}/{name}/publish`` and
``POST /api/queues/{vhost}/{name}/get`` (RabbitMQ's management publish and get, for people and tests, not
for throughput), and ``POST /api/queues/{vhost}/{name}/actions`` (RabbitMQ's queue actions, with Leveret's
``move`` and ``replay_dead_letters``: server-side moves through core/dead_letter.py ``move``, and ``retry_now``: a
waiting retry released early through core/delays.py ``release_now``). All are checked
as the AMQP writes and reads they stand for, and answer once the store has what they changed."""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

from aiohttp import web

from leveret.core import errors
from leveret.core.access import Access
from leveret.core.dead_letter import death_origin, move
from leveret.core.exchanges import Exchange
from leveret.core.message import NOTIFY, Message, build_address, build_header
from leveret.core.routing import Peer, validate
from leveret.core.tracking import MESSAGE_ID
from leveret.management.context import Management
from leveret.management.validation import bad_request, exchange_name, not_authorised, parse_dict

from .call import Call, reply

if TYPE_CHECKING:
    from leveret.core.queue import Queue


async def publish(api: Management, call: Call) -> web.Response:
    body = await call.body()
    vhost = api.vhost(call.params["vhost"])
    try:  # RabbitMQ's API answers a refused publish with the channel error, as a bad request
        call.access(vhost).write("exchange", exchange_name(call.params["name"]))
    except errors.PermissionRefused as exc:
        raise bad_request(f"403 ACCESS_REFUSED - {exc.text}") from None
    exchange = vhost.exchange_for_publish(exchange_name(call.params["name"]))
    routing_key = body.get("routing_key", "")
    payload = body.get("payload", "")
    encoding = body.get("payload_encoding", "string")
    properties = parse_dict(body, "properties")
    if not isinstance(routing_key, str) or not isinstance(payload, str):
        raise bad_request("'routing_key' and 'payload' must be strings")
    if encoding == "string":
        raw = payload.encode()
    elif encoding == "base64":
        try:
            raw = base64.b64decode(payload, validate=True)
        except ValueError:  # binascii.Error, or a str that is not ASCII
            raise bad_request("payload is not valid base64") from None
    else:
        raise bad_request("'payload_encoding' must be string or base64")
    try:
        header = build_header(properties, len(raw))
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise bad_request(f"invalid properties: {exc}") from None
    msg = Message(exchange.name, routing_key, build_address(exchange.name, routing_key), header, raw)
    try:  # the checks of AMQP's basic.publish (expiration, CC/BCC; job-done notices: core/notices.py)
        validate(msg)
        if msg.flags & NOTIFY:
            call.access(vhost).write("exchange", "")
    except errors.PreconditionFailed as exc:
        raise bad_request(f"406 PRECONDITION_FAILED - {exc.text}") from None
    except errors.PermissionRefused as exc:
        raise bad_request(f"403 ACCESS_REFUSED - {exc.text}") from None
    origin = Peer(f"http {call.user.name}@{call.request.remote}", call.user.name)
    taken = vhost.publish(exchange, msg, origin)  # the one publish entry (core/routing.py)
    await api.durable()
    if taken is False:  # a queue refused it (x-overflow reject-publish): what AMQP would nack, RabbitMQ's 400
        raise bad_request("rejected Unable to publish message. Check queue limits.")
    return reply({"routed": taken is not None})


async def get_messages(api: Management, call: Call) -> web.Response:
    body = await call.body()
    vhost = api.vhost(call.params["vhost"])
    try:  # RabbitMQ's API answers a refused get with the channel error's text, before looking the queue up
        call.access(vhost).read("queue", call.params["name"])
    except errors.PermissionRefused as exc:
        raise not_authorised(f"ACCESS_REFUSED - {exc.text}") from None
    queue = vhost.queue(call.params["name"])
    count = body.get("count", 1)
    if isinstance(count, str) and count.isdigit():
        count = int(count)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise bad_request("'count' must be a positive integer")
    ackmode = body.get("ackmode", "ack_requeue_true")
    if ackmode not in ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false"):
        raise bad_request(f"unknown ackmode '{ackmode}'")
    encoding = body.get("encoding", "auto")
    if encoding not in ("auto", "base64"):
        raise bad_request("'encoding' must be auto or base64")
    truncate = body.get("truncate")
    if truncate is not None and (isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 0):
        raise bad_request("'truncate' must be a non-negative integer")
    if queue.served_by is not None and api.broker.remote is not None:  # another node's: got there (docs/cluster.md)
        return reply(await _relayed_get(api, queue, count, ackmode, encoding, truncate))
    taken: list[Message] = []
    result = []
    tracker, who = api.broker.tracker, f"http {call.user.name}@{call.request.remote}"
    origin = Peer(who, call.user.name)
    for _ in range(count):
        msg = queue.get()
        if msg is None:
            break
        queue.hand_out(msg, ackmode != "ack_requeue_false")  # the one delivery step (core/queue.py)
        taken.append(msg)
        if msg.flags & MESSAGE_ID and tracker is not None:
            tracker.record(vhost.name, msg, "got", queue.name, who, 0, msg.redelivered, True)
        if vhost.tracer is not None:
            vhost.tracer.delivered(queue, msg, origin)
        payload = msg.body if truncate is None else msg.body[:truncate]
        if encoding == "auto":
            try:
                text, payload_encoding = payload.decode(), "string"
            except UnicodeDecodeError:
                text, payload_encoding = base64.b64encode(payload).decode(), "base64"
        else:
            text, payload_encoding = base64.b64encode(payload).decode(), "base64"
        result.append({"payload_bytes": len(msg.body), "redelivered": msg.redelivered,
                       "exchange": msg.exchange, "routing_key": msg.routing_key,
                       "message_count": queue.message_count, "properties": msg.properties,
                       "payload": text, "payload_encoding": payload_encoding})
    if tracker is not None:
        for msg in taken:
            if msg.flags & MESSAGE_ID:
                if ackmode == "ack_requeue_false":
                    tracker.record(vhost.name, msg, "acked", queue.name, who, 0)
                elif ackmode.endswith("requeue_true"):
                    tracker.record(vhost.name, msg, "requeued", queue.name, "management get", who, 0)
                else:
                    tracker.record(vhost.name, msg, "rejected", queue.name, False, who, 0)
    if ackmode.endswith("requeue_true"):
        queue.requeue(taken)
    elif ackmode == "reject_requeue_false":
        for msg in taken:
            queue.drop_unacked(msg)
    await api.durable()
    return reply(result)


async def _relayed_get(api: Management, queue: Queue, count: int, ackmode: str, encoding: str,
                       truncate: int | None) -> list[dict[str, Any]]:
    """The get of a queue another node serves, on that node over a link (server/relay.py): the same answer."""
    assert api.broker.remote is not None
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    requeue = None if ackmode == "ack_requeue_false" else ackmode.endswith("requeue_true")
    api.broker.remote.get_many(queue, count, requeue, answer.set_result)
    got = await answer
    if isinstance(got, BaseException):
        raise got
    result = []
    for _link, _tag, redelivered, exchange, routing_key, header, body, message_count in got:
        msg = Message(exchange, routing_key, b"", header, body)
        payload = body if truncate is None else body[:truncate]
        text, payload_encoding = _payload(payload, encoding)
        result.append({"payload_bytes": len(body), "redelivered": redelivered, "exchange": exchange,
                       "routing_key": routing_key, "message_count": message_count, "properties": msg.properties,
                       "payload": text, "payload_encoding": payload_encoding})
    return result


def _payload(payload: bytes, encoding: str) -> tuple[str, str]:
    if encoding == "auto":
        try:
            return payload.decode(), "string"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(payload).decode(), "base64"


async def queue_action(api: Management, call: Call) -> web.Response:
    """RabbitMQ's ``sync`` and ``cancel_sync`` (no mirrors here: nothing to do, 204 as for a synchronised
    queue), and Leveret's ``move`` (``destination``: a queue of the same vhost) and ``replay_dead_letters``
    (each message back to the queue its latest ``x-death`` names; without one, from a ``<queue>.dead`` queue,
    where leveret.tasks workers put the tasks that gave up, to ``<queue>``; with a fresh ``x-retry-count``).
    Both move at most ``count`` ready messages
    (default: all), read from this queue and written to the default exchange as a client's get and publish
    would be checked; the answer says how many moved and how many are left. Leveret's ``retry_now``
    (``message_id``) releases at once the message with that id waiting for its next attempt into this queue
    (core/delays.py ``release_now``), checked as ``move`` is: 200 ``{"released": true}``, 404 when no such
    message is waiting."""
    body = await call.body()
    vhost = api.vhost(call.params["vhost"])
    queue = vhost.queue(call.params["name"])
    action = body.get("action")
    if action in ("sync", "cancel_sync"):
        return reply(None, 204)
    if action not in ("move", "replay_dead_letters", "retry_now"):
        raise bad_request("'action' must be sync, cancel_sync, move, replay_dead_letters or retry_now")
    access = call.access(vhost)
    if action == "retry_now":
        message_id = body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise bad_request("'message_id' must be a non-empty string")
        _check_move(access, queue.name)
        if not api.broker.delays.release_now(vhost.name, queue.name, message_id):
            raise errors.NotFound(f"no message '{message_id}' waiting for a retry into queue '{queue.name}' in "
                                  f"vhost '{vhost.name}'")
        await api.durable()
        return reply({"released": True})
    count = body.get("count", queue.message_count)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise bad_request("'count' must be a non-negative integer")
    _check_move(access, queue.name)
    default = vhost.exchanges[""]
    if action == "move":
        destination = body.get("destination")
        if not isinstance(destination, str) or not destination:
            raise bad_request("'destination' must be the name of a queue")
        if destination == queue.name:
            raise bad_request("'destination' must be another queue")
        vhost.queue(destination)  # 404 when it does not exist

        def target(msg: Message) -> tuple[Exchange, str] | None:
            return (default, destination) if destination in vhost.queues else None
    else:
        base = queue.name[: -len(".dead")] if queue.name.endswith(".dead") else None

        def target(msg: Message) -> tuple[Exchange, str] | None:
            origin = death_origin(msg) or base
            return (default, origin) if origin in vhost.queues and origin != queue.name else None

    moved = move(vhost, queue, count, target, f"http {call.user.name}@{call.request.remote}",
                 ("x-retry-count",) if action == "replay_dead_letters" else ())
    await api.durable()
    return reply({"moved": moved, "left": queue.message_count})


def _check_move(access: Access, queue: str) -> None:
    """The rights of a basic.get on ``queue`` and of a publish to the default exchange (401 otherwise)."""
    try:
        access.read("queue", queue)
        access.write("exchange", "")
    except errors.PermissionRefused as exc:
        raise not_authorised(f"ACCESS_REFUSED - {exc.text}") from None
