"""The relay's AMQP client connection (server/relay.py: consuming through any node, docs/cluster.md), on Leveret's own
codec (leveret/amqp/codec.py).

Why not an AMQP client library: the relay hands each delivery on to a client of this node, and the broker's message
format is the content header as received (docs/architecture.md). A library decodes the properties into its own
types and encodes them again (an integer's width in a header table may change) and refuses what it cannot decode (a
short string that is not UTF-8, which Leveret and RabbitMQ carry as bytes: one such message would break the link
at every delivery). Here the header frame's payload goes to the client as it came, and a frame is parsed with no
task and no decoding of the properties.

:class:`LinkConnection` is an ``asyncio.Protocol``: the handshake (PLAIN), heartbeats, then channels
(:class:`LinkChannel`): synchronous requests answered in order (:meth:`LinkChannel.call`), methods without an
answer (:meth:`LinkChannel.send`: acks), deliveries and the owner's basic.cancel to callbacks, and the close of a
channel or of the connection by the owner as a :class:`LinkError` (its reply code and text).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from leveret import __version__
from leveret.amqp import codec, spec

_FRAME_HEAD = struct.Struct(">BHI")
Deliver = Callable[[tuple[Any, ...], bytes, bytes], None]  # basic.deliver's arguments, content header, body


class LinkError(Exception):
    """A channel or the connection closed by the owner (``code``, ``text`` as it sent them), or the connection lost
    (code 0)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


class LinkChannel:
    """One channel of a link."""

    def __init__(self, conn: LinkConnection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.waiting: deque[asyncio.Future[tuple[Any, ...]]] = deque()
        self.error: LinkError | None = None
        self.on_deliver: Deliver | None = None
        self.on_cancel: Callable[[str], None] | None = None
        self.on_close: Callable[[LinkError], None] | None = None
        self._content: tuple[str, tuple[Any, ...]] | None = None
        self._header = b""
        self._body: list[bytes] = []
        self._left = 0

    @property
    def is_closed(self) -> bool:
        return self.error is not None

    def send(self, name: str, args: tuple[Any, ...]) -> None:
        """A method the owner does not answer (basic.ack, basic.nack); nothing once the channel is closed."""
        if self.error is None:
            self.conn.write(codec.method_frame(self.number, spec.method(name), args))

    def call(self, name: str, args: tuple[Any, ...]) -> asyncio.Future[tuple[Any, ...]]:
        """A synchronous method: its answer (name, args, and for basic.get-ok the content header and body), or the
        channel's LinkError."""
        future: asyncio.Future[tuple[Any, ...]] = self.conn.loop.create_future()
        if self.error is not None:
            future.set_exception(self.error)
            return future
        self.waiting.append(future)
        self.conn.write(codec.method_frame(self.number, spec.method(name), args))
        return future

    async def close(self) -> None:
        if self.error is None:
            with contextlib.suppress(LinkError):
                await self.call("channel.close", (spec.REPLY_SUCCESS, "", 0, 0))

    # --- from the owner ------------------------------------------------------------------------------

    def method(self, name: str, args: tuple[Any, ...]) -> None:
        if name in ("basic.deliver", "basic.get-ok"):
            self._content = (name, args)
        elif name == "basic.cancel":
            if self.on_cancel is not None:
                self.on_cancel(args[0])
        elif name == "channel.close":
            self.conn.write(codec.method_frame(self.number, spec.method("channel.close-ok")))
            self.fail(LinkError(args[0], args[1]))
        elif name == "channel.close-ok":
            self.fail(LinkError(spec.REPLY_SUCCESS, "closed"))
        else:
            self._answer((name, args))

    def header(self, payload: bytes) -> None:
        self._header = payload
        self._body = []
        self._left = int.from_bytes(payload[4:12], "big")
        if not self._left:
            self._complete()

    def body(self, payload: bytes) -> None:
        self._body.append(payload)
        self._left -= len(payload)
        if self._left <= 0:
            self._complete()

    def _complete(self) -> None:
        found, self._content = self._content, None
        if found is None:
            return
        name, args = found
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body = []
        if name == "basic.deliver":
            if self.on_deliver is not None:
                self.on_deliver(args, self._header, body)
        else:
            self._answer((name, args, self._header, body))

    def _answer(self, answer: tuple[Any, ...]) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(answer)
                return

    def fail(self, error: LinkError) -> None:
        if self.error is not None:
            return
        self.error = error
        self.conn.channels.pop(self.number, None)
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self.on_close is not None:
            self.on_close(error)


class LinkConnection(asyncio.Protocol):
    """One AMQP client connection of the relay (see the module docstring)."""

    def __init__(self, user: str, password: str, vhost: str, name: str, heartbeat: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.user, self.password, self.vhost, self.name = user, password, vhost, name
        self.heartbeat = heartbeat
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # its waiters report it
        self.channels: dict[int, LinkChannel] = {}
        self.error: LinkError | None = None
        self.on_close: Callable[[LinkError], None] | None = None
        self.transport: asyncio.Transport | None = None
        self.frame_max = 131072
        self._buffer = bytearray()
        self._next = 1
        self._received = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def is_closed(self) -> bool:
        return self.error is not None

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.error is None:
            self.transport.write(data)

    async def channel(self) -> LinkChannel:
        await self.ready
        if self.error is not None:
            raise self.error
        number = self._next
        while number in self.channels:  # numbers wrap at 2047: skip those still open
            number = number % 2047 + 1
        self._next = number % 2047 + 1
        channel = self.channels[number] = LinkChannel(self, number)
        await channel.call("channel.open", ("",))
        return channel

    def close(self) -> None:
        """Close the connection (the owner requeues what it delivered on it unacked)."""
        if self.transport is None or self.error is not None:
            return
        self.write(codec.method_frame(0, spec.method("connection.close"), (spec.REPLY_SUCCESS, "", 0, 0)))
        self._fail(LinkError(spec.REPLY_SUCCESS, "closed"))
        self.loop.call_later(1.0, self.transport.close)  # after close-ok, or a second

    # --- asyncio ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream: Any = transport  # a stream transport (uvloop's is not an asyncio.Transport subclass)
        self.transport = stream
        stream.write(spec.PROTOCOL_HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(LinkError(0, f"connection lost{f': {exc}' if exc else ''}"))
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        self._received = self.loop.time()
        buffer = self._buffer
        buffer += data
        pos = 0
        size_of = len(buffer)
        while size_of - pos >= 8:
            kind, number, size = _FRAME_HEAD.unpack_from(buffer, pos)
            end = pos + 7 + size
            if end >= size_of:
                break
            if buffer[end] != spec.FRAME_END:
                self._abort("a frame without its end octet")
                return
            payload = bytes(buffer[pos + 7:end])
            pos = end + 1
            try:
                self._frame(kind, number, payload)
            except codec.CodecError as exc:
                self._abort(f"a frame it cannot decode: {exc}")
                return
        del buffer[:pos]

    # --- frames ----------------------------------------------------------------------------------------

    def _frame(self, kind: int, number: int, payload: bytes) -> None:
        if kind == spec.FRAME_METHOD:
            method, args = codec.decode_method_payload(payload)
            if number == 0:
                self._connection(method.full_name, args)
                return
            channel = self.channels.get(number)
            if channel is not None:
                channel.method(method.full_name, args)
        elif kind == spec.FRAME_HEADER:
            channel = self.channels.get(number)
            if channel is not None:
                channel.header(payload)
        elif kind == spec.FRAME_BODY:
            channel = self.channels.get(number)
            if channel is not None:
                channel.body(payload)

    def _connection(self, name: str, args: tuple[Any, ...]) -> None:
        if name == "connection.start":
            properties = {"product": "Leveret relay", "version": __version__, "connection_name": self.name,
                          "capabilities": {"consumer_cancel_notify": True, "basic.nack": True,
                                           "authentication_failure_close": True}}
            response = f"\0{self.user}\0{self.password}".encode()
            self.write(codec.method_frame(0, spec.method("connection.start-ok"),
                                          (properties, "PLAIN", response, "en_US")))
        elif name == "connection.tune":
            self.frame_max = min(args[1] or self.frame_max, self.frame_max)
            self.write(codec.method_frame(0, spec.method("connection.tune-ok"), (args[0], self.frame_max,
                                                                                  self.heartbeat)))
            self.write(codec.method_frame(0, spec.method("connection.open"), (self.vhost, "", False)))
            if self.heartbeat:
                self._timer = self.loop.call_later(self.heartbeat / 2, self._beat)
        elif name == "connection.open-ok":
            if not self.ready.done():
                self.ready.set_result(None)
        elif name == "connection.close":
            self.write(codec.method_frame(0, spec.method("connection.close-ok")))
            self._fail(LinkError(args[0], args[1]))
            if self.transport is not None:
                self.transport.close()
        elif name == "connection.close-ok" and self.transport is not None:
            self.transport.close()

    def _beat(self) -> None:
        if self.error is not None or self.transport is None:
            return
        if self.loop.time() - self._received > 2 * self.heartbeat:
            self._abort(f"no heartbeat from the owner for {2 * self.heartbeat} s")
            return
        self.transport.write(codec.HEARTBEAT_FRAME)
        self._timer = self.loop.call_later(self.heartbeat / 2, self._beat)

    def _abort(self, why: str) -> None:
        self._fail(LinkError(0, why))
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: LinkError) -> None:
        if self.error is not None:
            return
        self.error = error
        if not self.ready.done():
            self.ready.set_exception(error)
        for channel in list(self.channels.values()):
            channel.fail(error)
        if self.on_close is not None:
            self.on_close(error)


async def connect(host: str, port: int, user: str, password: str, vhost: str, name: str, heartbeat: int,
                  timeout: float) -> LinkConnection:
    """An open link connection (the handshake done), or a LinkError / OSError / TimeoutError."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(loop.create_connection(
        lambda: LinkConnection(user, password, vhost, name, heartbeat), host, port), timeout)
    try:
        await asyncio.wait_for(asyncio.shield(conn.ready), timeout)
    except BaseException:
        if conn.transport is not None:
            conn.transport.abort()
        raise
    return conn
