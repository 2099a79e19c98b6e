"""The relay's AMQP client (leveret/server/link.py) against a real Leveret in this process: the handshake, a
refused login, requests and their answers, a body over several frames, a channel closed by the broker, a delivery's
content header and body as sent, and the broker's basic.cancel when the queue goes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from leveret.amqp import codec, spec
from leveret.node import ThreadedServer
from leveret.server import link


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_requests_bodies_over_several_frames_and_deliveries(leveret: ThreadedServer) -> None:
    async def scenario() -> None:
        conn = await link.connect("127.0.0.1", leveret.port, "guest", "guest", "/", "test", 10, 5)
        ch = await conn.channel()
        name, args = await ch.call("queue.declare", (0, "big", False, False, False, False, False, {}))
        assert (name, args) == ("queue.declare-ok", ("big", 0, 0))
        body = bytes(range(256)) * 1200  # 307,200 bytes: three body frames at frame_max 131,072
        properties = codec.encode_properties({"message_id": "m1", "headers": {"k": 1}})
        frames = [codec.method_frame(ch.number, spec.method("basic.publish"), (0, "", "big", False, False))]
        frames += codec.content_frames(ch.number, properties, body, conn.frame_max)
        conn.write(b"".join(frames))
        got = await ch.call("basic.get", (0, "big", False))
        assert got[0] == "basic.get-ok" and got[1][4] == 0  # message_count after it
        assert got[2][12:] == properties and got[3] == body
        ch.send("basic.nack", (got[1][0], False, True))  # back to the queue, redelivered
        delivered: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        ch.on_deliver = lambda args, header, content: delivered.put_nowait((args, header, content))
        cancelled: list[str] = []
        ch.on_cancel = cancelled.append
        consume_ok = await ch.call("basic.consume", (0, "big", "ctag", False, False, False, False, {}))
        assert consume_ok == ("basic.consume-ok", ("ctag",))
        args, header, content = await delivered.get()
        assert args[0] == "ctag" and args[2] is True and content == body and header[12:] == properties
        ch.send("basic.ack", (args[1], False))
        other = await conn.channel()
        await other.call("queue.delete", (0, "big", False, False, False))
        while not cancelled:  # the broker's basic.cancel (the link announces consumer_cancel_notify)
            await asyncio.sleep(0.01)
        assert cancelled == ["ctag"]
        conn.close()

    run(scenario())


def test_a_channel_closed_by_the_broker_fails_its_requests(leveret: ThreadedServer) -> None:
    async def scenario() -> None:
        conn = await link.connect("127.0.0.1", leveret.port, "guest", "guest", "/", "test", 10, 5)
        ch = await conn.channel()
        closed: list[link.LinkError] = []
        ch.on_close = closed.append
        with pytest.raises(link.LinkError) as info:
            await ch.call("basic.get", (0, "nowhere", True))
        assert info.value.code == 404 and "no queue 'nowhere'" in info.value.text
        assert ch.is_closed and closed and closed[0].code == 404
        with pytest.raises(link.LinkError):
            await ch.call("basic.qos", (0, 1, False))  # a closed channel answers nothing more
        again = await conn.channel()  # the connection goes on
        assert (await again.call("basic.qos", (0, 5, False)))[0] == "basic.qos-ok"
        conn.close()
        assert conn.is_closed

    run(scenario())


def test_a_refused_login_is_a_link_error(leveret: ThreadedServer) -> None:
    async def scenario() -> None:
        with pytest.raises(link.LinkError) as info:
            await link.connect("127.0.0.1", leveret.port, "guest", "wrong", "/", "test", 10, 5)
        assert info.value.code == 403

    run(scenario())
