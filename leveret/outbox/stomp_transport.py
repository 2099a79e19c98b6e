"""The forwarder's STOMP transport: SEND frames with a ``receipt`` each, on an asyncio connection driven by
Leveret's sans-IO STOMP codec (``leveret.stomp``: frames and parsing only, no broker code), for Leveret's STOMP
listener or RabbitMQ's STOMP plugin. See docs/outbox.md, "Transport".

A destination URL ``stomp://user:password@host:port/[vhost]`` (port 61613 by default; the vhost as in an AMQP
URL: none or ``/`` is "/", sent as CONNECT's ``host``). A row becomes one SEND:

- ``destination``: the default exchange with key K is ``/amq/queue/K`` (the default exchange, no declaration:
  ``/queue/K`` would declare the queue), any other exchange ``/exchange/NAME/KEY`` (``/`` in a part as ``%2F``);
- the AMQP properties as docs/stomp.md maps them (``persistent:true`` for delivery mode 2, ``amqp-message-id``,
  ``content-type``, ...), each entry of the headers table as a header of its own, as text: STOMP headers are
  strings, so an integer arrives as a string; bytes that are not UTF-8, nested tables and arrays, and names
  STOMP keeps for itself (``receipt``, ``destination``, ``content-length``, ...) cannot be sent: such a
  message is parked with the reason;
- ``receipt:<outbox id>``. Every SEND has its own receipt (a receipt per batch would settle a batch as a
  whole, but an ERROR must say which messages are stored): the broker answers a persistent message's receipt
  once it is on disk, in order, so a RECEIPT is a publisher confirm and the row is deleted then.

Sends are pipelined (``window`` in flight, one socket write per batch). An ERROR frame (an unknown exchange,
access refused, a store that failed) ends the connection: every message without its RECEIPT is kept and the
session restarts after a back-off, sending those again **one at a time**; one that gets an ERROR when alone is
the culprit and is parked with the broker's message (retried every ``unroutable_retry``), as an AMQP message
that closes the channel. A lost connection is an outage (kept, sent again: at-least-once). STOMP has no
``mandatory``: an unroutable message is dropped by the broker, not parked. A full ``reject-publish`` queue
refuses a SEND with Leveret's ERROR ``Message refused`` (``PUBLISH_REFUSED``), which is a nack: the message is
kept and sent again after a back-off, never parked (RabbitMQ's plugin closes the connection instead: an outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
from typing import Any
from urllib.parse import unquote, urlsplit

from leveret.outbox.frames import Outgoing
from leveret.outbox.message import OutboxMessage
from leveret.stomp import PUBLISH_REFUSED, Frame, StompConnection

DEFAULT_PORT = 61613
HEARTBEAT_MS = 10_000  # asked for both ways: a broker gone without a FIN is noticed within two of its intervals
# headers a SEND carries for STOMP itself or for properties: an entry of the headers table by one of these names
# would be taken for them
_RESERVED = frozenset({"destination", "receipt", "content-length", "transaction", "message-id", "content-type",
                       "content-encoding", "persistent", "priority", "correlation-id", "reply-to", "expiration",
                       "amqp-message-id", "timestamp", "type", "user-id", "app-id", "durable", "auto-delete",
                       "exclusive"})
_PROPERTIES = (("content_type", "content-type"), ("content_encoding", "content-encoding"),
               ("correlation_id", "correlation-id"), ("reply_to", "reply-to"), ("expiration", "expiration"),
               ("message_id", "amqp-message-id"), ("message_type", "type"), ("user_id", "user-id"),
               ("app_id", "app-id"))


class StompOutage(Exception):
    """The broker cannot be reached, refused the login, or the connection was lost: back off and try again."""


class StompRefused(Exception):
    """The broker answered an ERROR frame (``message`` header and body): the connection is over."""

    def __init__(self, message: str, detail: str, receipt: str | None) -> None:
        super().__init__(f"{message}: {detail}".strip().rstrip(":"))
        self.receipt = receipt
        self.refused = message == PUBLISH_REFUSED  # Leveret: a full reject-publish queue refused it (a nack)


def destination(exchange: str, routing_key: str) -> str:
    """The STOMP destination a SEND publishes with ``exchange`` and ``routing_key`` through (RabbitMQ's mapping)."""
    def part(text: str) -> str:
        return text.replace("/", "%2F")

    if exchange == "":
        if not routing_key:
            raise ValueError("STOMP cannot publish to the default exchange with an empty routing key")
        return "/amq/queue/" + part(routing_key)
    return f"/exchange/{part(exchange)}/{part(routing_key)}" if routing_key else f"/exchange/{part(exchange)}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal, str)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            raise ValueError("a header holds bytes that are not UTF-8: STOMP headers are text") from None
    if isinstance(value, datetime.datetime):
        return str(int(value.timestamp()))
    raise ValueError(f"a header holds a {type(value).__name__}: STOMP headers are text")


def send_frame(row: OutboxMessage) -> Frame:
    """The SEND frame of ``row`` (with ``receipt`` = its id). ValueError when STOMP cannot carry it."""
    props = Outgoing(row).properties  # x-delay computed now, the notice header left out (no notices here)
    headers: list[tuple[str, str]] = [("destination", destination(row.exchange, row.routing_key)),
                                      ("receipt", str(row.id))]
    if props.delivery_mode == 2:
        headers.append(("persistent", "true"))
    for name, header in _PROPERTIES:
        value = getattr(props, name, None)
        if value is not None:
            headers.append((header, str(value)))
    if props.priority is not None:
        headers.append(("priority", str(props.priority)))
    if props.timestamp is not None:
        stamp = props.timestamp
        headers.append(("timestamp", str(int(stamp.timestamp()) if isinstance(stamp, datetime.datetime)
                                         else int(stamp))))
    for name, value in (props.headers or {}).items():
        if name in _RESERVED:
            raise ValueError(f"the header {name!r} is one STOMP keeps for itself")
        headers.append((name, _text(value)))
    return Frame("SEND", headers, row.body)


class StompTarget:
    """One STOMP connection to publish through, from ``stomp://user:password@host:port/[vhost]``."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "stomp" or not parts.hostname:
            raise ValueError(f"not a stomp:// URL: {url!r}")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        self.vhost = unquote(path) if path else "/"
        self.host, self.port = parts.hostname, parts.port or DEFAULT_PORT
        self.login, self.passcode = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        self.timeout = timeout
        self.codec = StompConnection()
        self.receipts: dict[str, asyncio.Future[None]] = {}  # receipt id -> its SEND's future, in send order
        self.error: BaseException | None = None  # why the connection is over, once it is
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None

    async def open(self) -> StompTarget:
        """Connect and log in (a refused connection or login: StompOutage)."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
            self._writer = writer
            self.codec.send(Frame("CONNECT", [("accept-version", "1.2"), ("host", self.vhost),
                                              ("login", self.login), ("passcode", self.passcode),
                                              ("heart-beat", f"{HEARTBEAT_MS},{HEARTBEAT_MS}")]))
            writer.write(self.codec.data_to_send())
            async with asyncio.timeout(self.timeout):
                frames: list[Frame] = []
                while not frames:
                    data = await reader.read(65536)
                    if not data:
                        raise StompOutage("the connection was closed before CONNECTED")
                    frames = self.codec.receive_data(data)
        except (OSError, TimeoutError) as exc:
            await self.close()
            raise StompOutage(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self.close()
            raise
        first = frames[0]
        if first.command != "CONNECTED":
            await self.close()
            raise StompOutage(f"{first.get('message', first.command)}: {first.body.decode(errors='replace')}"
                              .strip())
        self.codec.version = first.get("version", "1.0") or "1.0"
        send_every, expect_every = _heartbeats(first.get("heart-beat"))
        self._reader_task = asyncio.ensure_future(self._read(reader, expect_every * 2 or None))
        if send_every:
            self._beat_task = asyncio.ensure_future(self._beat(send_every))
        return self

    async def _beat(self, every: float) -> None:
        """An end-of-line twice per negotiated interval ``every`` (the broker closes a connection silent for
        about two of them: half leaves room for a busy loop)."""
        while self.error is None and self._writer is not None:
            await asyncio.sleep(every / 2)
            self.codec.send_heartbeat()
            self._writer.write(self.codec.data_to_send())

    async def _read(self, reader: asyncio.StreamReader, silence: float | None) -> None:
        error: BaseException = StompOutage("the broker closed the connection")
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), silence)
                except TimeoutError:
                    error = StompOutage(f"nothing from the broker for {silence:g} s (two heart-beat intervals)")
                    return
                if not data:
                    break
                for frame in self.codec.receive_data(data):
                    if frame.command == "RECEIPT":
                        future = self.receipts.pop(frame.get("receipt-id") or "", None)
                        if future is not None and not future.done():
                            future.set_result(None)
                    elif frame.command == "ERROR":
                        error = StompRefused(frame.get("message") or "ERROR",
                                             frame.body.decode(errors="replace").strip(), frame.get("receipt-id"))
                        return
                if self.codec.error is not None:
                    error = StompOutage(f"unreadable input from the broker: {self.codec.error}")
                    return
        except OSError as exc:
            error = StompOutage(f"{type(exc).__name__}: {exc}")
        finally:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        """The connection is over: every SEND without its RECEIPT fails with ``error``."""
        if self.error is None:
            self.error = error
        for future in self.receipts.values():
            if not future.done():
                future.set_exception(self.error)
                future.exception()  # retrieved here: the session reads it when it reaches that message
        self.receipts.clear()
        if self._writer is not None:
            self._writer.close()

    async def send(self, frames: list[Frame]) -> list[asyncio.Future[None]]:
        """Send ``frames`` (SENDs with a ``receipt``) with one write; the futures of their receipts, in order."""
        if self.error is not None:
            raise self.error
        assert self._writer is not None
        loop = asyncio.get_running_loop()
        futures = []
        for frame in frames:
            future: asyncio.Future[None] = loop.create_future()
            self.receipts[frame.get("receipt") or ""] = future
            futures.append(future)
            self.codec.send(frame)
        self._writer.write(self.codec.data_to_send())
        try:
            await self._writer.drain()
        except OSError as exc:
            self._fail(StompOutage(f"{type(exc).__name__}: {exc}"))
        return futures

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                if self.error is None:
                    self.codec.send(Frame("DISCONNECT"))
                    self._writer.write(self.codec.data_to_send())
                self._writer.close()
                await asyncio.wait_for(self._writer.wait_closed(), 5)
        if self._beat_task is not None:
            self._beat_task.cancel()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
            self._reader_task = None
        self._fail(StompOutage("closed"))


def _heartbeats(header: str | None) -> tuple[float, float]:
    """(how often to send, how often the broker sends) in seconds, from CONNECTED's ``heart-beat:sx,sy`` and
    our ``HEARTBEAT_MS`` both ways (0: none)."""
    try:
        sx, sy = (int(part) for part in (header or "0,0").split(","))
    except ValueError:
        return 0.0, 0.0
    send = max(HEARTBEAT_MS, sy) / 1000 if sy else 0.0
    expect = max(HEARTBEAT_MS, sx) / 1000 if sx else 0.0
    return send, expect
