"""The asyncio edge of STOMP: one Protocol per client connection, adapting leveret.stomp to leveret.core.

A STOMP connection is a core :class:`~leveret.core.session.Session` with one core
:class:`~leveret.core.channel.Channel` (number 1): SEND publishes through ``Channel.publish`` (the one publish
entry, as AMQP's basic.publish), each SUBSCRIBE is a core consumer on that channel, and messages arrive through
``Queue.hand_out`` / ``Channel.deliver`` at :meth:`StompAdapter.send_deliver` (this class is the core
:class:`~leveret.core.channel.Sink`), which writes them as MESSAGE frames. The frame handlers are
:class:`~leveret.server.stomp_commands.StompCommands`; this module has the transport, CONNECT, heart-beats,
receipts and ERROR frames (the one place a failure becomes an ERROR frame and a close), and
:class:`StompListener` (the plain and TLS listeners).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret import __version__
from leveret.amqp import spec
from leveret.amqp.fields import decode_properties
from leveret.config import Config
from leveret.core import errors
from leveret.core.broker import Broker, Session
from leveret.core.message import Message
from leveret.stomp import VERSIONS, Frame, StompConnection, format_destination
from leveret.stomp.mapping import first_headers, headers_from_properties

from .amqp import DELIVERY_BUFFER, ERROR_CODES
from .stomp_commands import COMMANDS, StompCommands, StompError, Subscription
from .tls import PLAIN_DETAILS, handshake_timeout, peer_tls

if TYPE_CHECKING:
    from .tls import PeerTLS

log = logging.getLogger("leveret.connection")

DEFAULT_STOMP_PORT = 61613
DEFAULT_STOMP_TLS_PORT = 61614
# RabbitMQ's stomp.default_user: the login of a CONNECT without a login header
DEFAULT_LOGIN = ("guest", "guest")
_HANDSHAKE_TIMEOUT = 10.0
_SUPPORTED = ",".join(VERSIONS)
# a receipt for these waits until what the frame did (and everything before it) is durable; others go at once
_DURABLE_RECEIPTS = frozenset({"SEND", "COMMIT"})


class StompAdapter(asyncio.Protocol, StompCommands):
    """One STOMP client connection: transport, CONNECT, heart-beats, receipts, errors; the core's Sink."""

    def __init__(self, server: StompListener) -> None:
        self.server = server
        self.broker = server.broker
        self.conn = StompConnection(max_body=server.config.max_message_size)
        self.session = Session(self.broker, self)
        self.session.protocol = "STOMP 1.0"
        self.session.cancel_notify = True  # a deleted queue's subscription gets an ERROR frame, as in RabbitMQ
        self.session_id = "session-" + secrets.token_urlsafe(16)
        self.version = ""  # negotiated by CONNECT
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.peer = "?"
        self.loopback = False
        self.client_properties: dict[str, Any] = {"product": "STOMP client"}  # what RabbitMQ's plugin shows
        self.recv_oct = self.recv_cnt = self.send_oct = self.send_cnt = 0
        self.last_received = self.loop.time()
        self.send_interval = 0.0  # heart-beats we send, seconds; 0: none
        self.recv_interval = 0.0  # heart-beats we expect, seconds; 0: none
        self.published = False
        self.blocked = False
        self._sent_since_tick = False
        self._flush_scheduled = False
        self._queued = 0
        self._transport_paused = False
        self._held = False
        self._closing = False  # an ERROR or DISCONNECT was handled: nothing more is read
        self._shut = False  # the transport is closing: nothing more is written
        self._receipted = False  # the frame being handled has had its RECEIPT (receipt_now)
        self._last_header = b""  # the content header of the last delivery, and its MESSAGE headers
        self._last_headers: list[tuple[str, str]] = []
        self._closed = False
        self._timers: list[asyncio.TimerHandle] = []
        StompCommands.__init__(self)

    # --- transport callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.loopback = peer[0].startswith("127.") or peer[0] in ("::1", "::ffff:127.0.0.1")
        self.session.peer = self.peer
        self.tls: PeerTLS | None = self.server.peer_tls(transport)
        self.session.details = self.server.connection_details(transport, self.tls)
        self.server.connections.add(self)
        self.broker.memory.listeners.append(self._on_memory_alarm)
        self._timers.append(self.loop.call_later(_HANDSHAKE_TIMEOUT, self._handshake_timeout))
        log.info("accepting STOMP connection %s", self.peer)

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        self.recv_oct += len(data)
        self.recv_cnt += 1
        if self._closing:
            return
        for frame in self.conn.receive_data(data):
            if self._closing:
                break
            self.handle(frame)
        if self.conn.error is not None:  # after the good frames that came before it
            self.error(self.conn.error.message, self.conn.error.detail)
        self.session.flush()
        self._flush()

    def traffic(self) -> dict[str, int]:
        """Bytes and socket reads/writes so far, under RabbitMQ's connection field names (management API)."""
        return {"recv_oct": self.recv_oct, "recv_cnt": self.recv_cnt, "send_oct": self.send_oct,
                "send_cnt": self.send_cnt}

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self.server.connections.discard(self)
        with contextlib.suppress(ValueError):
            self.broker.memory.listeners.remove(self._on_memory_alarm)
        self.session.close()
        user = self.session.user.name if self.session.user else "-"
        vhost = self.session.opened_vhost
        log.info("closing STOMP connection %s (vhost '%s', user '%s')%s", self.peer, vhost.name if vhost else "-",
                 user, f": {exc}" if exc else "")

    def pause_writing(self) -> None:
        self._transport_paused = True
        self.session.set_writable(False)

    def resume_writing(self) -> None:
        self._transport_paused = False
        self._flush()
        if not self._held:
            self.session.set_writable(True)

    # --- output ------------------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._queued = 0
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self._closed and not self._shut:
            self._sent_since_tick = True
            self.send_oct += len(data)
            self.send_cnt += 1
            self.transport.write(data)
        if self._held:
            self._held = False
            if not self._transport_paused and not self._closed:
                self.session.set_writable(True)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_frame(self, command: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.conn.send(Frame(command, headers, body))
        self._schedule_flush()

    # --- the core's Sink ---------------------------------------------------------------------------

    def send_deliver(self, channel: int, consumer_tag: bytes, delivery_tag: int, redelivered: bool,
                     address: bytes, header: bytes, body: bytes) -> None:
        tag = consumer_tag[1:].decode()
        sub = self.subscriptions.get(tag)
        exchange_len = address[0]
        exchange = address[1:1 + exchange_len].decode()
        routing_key = address[2 + exchange_len:].decode()
        message_id = f"{tag}@@{self.session_id}@@{delivery_tag}"
        headers: list[tuple[str, str]] = []
        if tag.startswith("T_"):
            headers.append(("subscription", tag[2:]))
        headers += [("destination", format_destination(exchange, routing_key)), ("message-id", message_id),
                    ("redelivered", "true" if redelivered else "false")]
        if sub is not None and sub.ack != "auto" and self.version == "1.2":
            headers.append(("ack", message_id))
        if header != self._last_header:  # messages in a row often have the same properties
            self._last_header = header
            self._last_headers = headers_from_properties(decode_properties(header[12:]))
        headers += self._last_headers
        self.conn.send(Frame("MESSAGE", headers, body))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        self._queued += len(body) + len(header) + 128
        if self._queued >= DELIVERY_BUFFER and not self._held:
            self._held = True
            self.session.set_writable(False)

    def send_return(self, channel: int, reply_code: int, reply_text: str, msg: Message) -> None:
        """STOMP publishes are never mandatory: nothing is returned."""

    def send_confirm(self, channel: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        """Receipts wait for the durable write through Session.after_durable, not publisher confirms."""

    def send_cancel(self, channel: int, consumer_tag: str) -> None:
        """The subscription's queue was deleted: RabbitMQ's ERROR frame (the connection stays open)."""
        sub = self.subscriptions.pop(consumer_tag, None)
        description = sub.description if sub is not None else consumer_tag
        ident = consumer_tag[2:] if consumer_tag.startswith("T_") else f"Unknown[{consumer_tag}]"
        self.send_frame("ERROR", [("message", "Server cancelled subscription"), ("content-type", "text/plain"),
                                  ("version", _SUPPORTED), ("subscription", ident)],
                        f"The server has canceled a subscription.\nNo more messages will be delivered for "
                        f"\"{description}\".\n".encode())

    def force_close(self, reason: str) -> None:
        """Closed by an operator (management API, ``leveret ctl``) or a deleted user or vhost."""
        if self._closing or self._closed:
            return
        self.error("Connection forced", reason)
        self._flush()

    # --- frames ------------------------------------------------------------------------------------

    def handle(self, frame: Frame) -> None:
        """One frame from the client: CONNECT first, then the handler of COMMANDS; a receipt once what the frame
        did is durable; any failure an ERROR frame (with the frame's receipt-id), and the connection closes."""
        receipt = frame.get("receipt")
        self._receipted = False
        try:
            if frame.command in ("CONNECT", "STOMP"):
                if self.session.user is not None:
                    raise StompError("Bad CONNECT", "already connected")
                self.connect(frame)
                return
            if self.session.user is None:
                raise StompError("Illegal command", "You must log in using CONNECT first")
            handler = COMMANDS.get(frame.command)
            if handler is None:
                raise StompError("Bad command", f'Could not interpret command "{frame.command}"\n')
            handler(self, frame)
        except StompError as exc:
            self.error(exc.message, exc.detail, receipt)
            return
        except errors.BrokerError as exc:
            code, _ = ERROR_CODES.get(type(exc), (spec.INTERNAL_ERROR, True))
            name = spec.REPLY_NAMES[code]
            self.error(name.lower(), f"{name} - {exc.text}", receipt)
            return
        except Exception:
            log.exception("internal error handling %s on STOMP connection %s", frame.command, self.peer)
            self.error("Processing error", "Processing error", receipt)  # RabbitMQ's text; the cause is logged
            return
        if receipt is not None and not self._receipted and frame.command != "DISCONNECT" \
                and not self.in_transaction(frame):
            if frame.command in _DURABLE_RECEIPTS:
                self.receipt(receipt)
            else:
                self.send_frame("RECEIPT", [("receipt-id", receipt)])
        self._receipted = False

    def receipt_now(self, frame: Frame) -> None:
        """A handler's early RECEIPT for ``frame`` (SUBSCRIBE: before the queue's first MESSAGE)."""
        receipt = frame.get("receipt")
        if receipt is not None:
            self.send_frame("RECEIPT", [("receipt-id", receipt)])
            self._receipted = True

    def receipt(self, receipt_id: str, then: Callable[[], None] | None = None) -> None:
        """Send RECEIPT once everything done so far is durable (a persistent SEND's write, a COMMIT's)."""
        def send(exc: BaseException | None) -> None:
            if self._closed or self._closing:
                return
            if exc is not None:
                self.error("Processing error", f"could not write to the store: {exc}", receipt_id)
            else:
                self.send_frame("RECEIPT", [("receipt-id", receipt_id)])
            if then is not None:
                then()

        self.session.after_durable(send)

    def error(self, message: str, detail: str, receipt: str | None = None) -> None:
        """Send an ERROR frame (RabbitMQ's headers, and the offending frame's receipt-id) and close the connection
        once it is written; nothing more is read."""
        if self._closing:
            return
        log.warning("STOMP connection %s: ERROR %s: %s", self.peer, message, detail.strip())
        headers = [("message", message), ("content-type", "text/plain"), ("version", _SUPPORTED)]
        if receipt is not None:
            headers.append(("receipt-id", receipt))
        self.conn.send(Frame("ERROR", headers, detail.encode()))
        self.close_after_flush()

    def close_after_flush(self) -> None:
        self._closing = True
        self._flush()
        self._shut = True
        self.session.close()
        if self.transport is not None and not self._closed:
            self.transport.close()  # after the buffered output is written

    def _handshake_timeout(self) -> None:
        if self.session.user is None and not self._closed:
            log.warning("closing STOMP connection %s: no CONNECT in %.0f s", self.peer, _HANDSHAKE_TIMEOUT)
            if self.transport is not None:
                self.transport.abort()

    # --- CONNECT -----------------------------------------------------------------------------------

    def connect(self, frame: Frame) -> None:
        headers = first_headers(frame.headers)
        offered = [v.strip() for v in headers.get("accept-version", "1.0").split(",")]
        common = [v for v in VERSIONS if v in offered]
        if not common:
            raise StompError("Version mismatch", f"Supported versions are {_SUPPORTED}\n")
        self.version = self.conn.version = common[-1]
        self.session.protocol = f"STOMP {self.version}"
        try:
            cx, cy = (int(part) for part in headers.get("heart-beat", "0,0").split(","))
        except ValueError:
            raise StompError("Invalid header", f"heart-beat '{headers.get('heart-beat')}' must be two integers "
                                               "separated by a comma") from None
        vhost = headers.get("host", "/")
        login = headers.get("login")
        certificate = self.tls.login if self.tls is not None and login is None else None
        username, password = (login, headers.get("passcode", "")) if login is not None else DEFAULT_LOGIN
        try:
            if certificate is not None:  # no login header, a verified client certificate: its user (as RabbitMQ)
                username = certificate
                self.session.details["auth_mechanism"] = "EXTERNAL"
                self.session.user = self.broker.authenticate_certificate(certificate, self.loopback)
            else:
                self.session.details["auth_mechanism"] = "STOMP"
                self.session.user = self.broker.authenticate(username, password, self.loopback)
        except errors.AccessRefused as exc:
            self._refused(username, vhost, exc.text)
            if "via localhost" in exc.text:
                raise StompError("Bad CONNECT", "non-loopback access denied") from None
            raise StompError("Bad CONNECT", f"Access refused for user '{username}'\n") from None
        try:
            self.session.open_vhost(vhost)
        except errors.NotAllowed as exc:
            self._refused(username, vhost, exc.text)
            self.session.user = None
            if "connection limit" in exc.text:
                raise StompError("Bad CONNECT", "Connection refused: vhost connection limit reached") from None
            raise StompError("Bad CONNECT", f"Virtual host '{vhost}' access denied") from None
        self.broker.audit.record("login", by={"via": "stomp", "address": self.peer}, protocol="stomp",
                                 user=username, peer=self.peer, vhost=vhost)
        log.info("STOMP connection %s: user '%s' authenticated and granted access to vhost '%s'", self.peer,
                 username, vhost)
        self.channel = self.session.open_channel(1)
        send_ms = _seconds(cy) * 1000
        recv_ms = _seconds(cx) * 1000
        self.send_interval, self.recv_interval = send_ms / 1000, recv_ms / 1000
        self.send_frame("CONNECTED", [("server", f"Leveret/{__version__}"), ("session", self.session_id),
                                      ("heart-beat", f"{send_ms},{recv_ms}"), ("version", self.version)])
        if self.send_interval:
            self._timers.append(self.loop.call_later(self.send_interval, self._send_tick))
        if self.recv_interval:
            self._timers.append(self.loop.call_later(self.recv_interval, self._recv_tick))

    def _refused(self, username: str, vhost: str, reason: str) -> None:
        log.warning("STOMP login refused for user '%s' from %s: %s", username, self.peer, reason)
        self.broker.audit.record("login.refused", by={"via": "stomp", "address": self.peer}, protocol="stomp",
                                 user=username, peer=self.peer, vhost=vhost, reason=reason)

    # --- heart-beats -------------------------------------------------------------------------------

    def _send_tick(self) -> None:
        if self._closed or self._closing:
            return
        if not self._sent_since_tick:
            self.conn.send_heartbeat()
            self._flush()
        self._sent_since_tick = False
        self._timers = [t for t in self._timers if not t.cancelled()]
        self._timers.append(self.loop.call_later(self.send_interval, self._send_tick))

    def _recv_tick(self) -> None:
        """Close a client that sent nothing (no frame, no heart-beat) for two of its heart-beat intervals."""
        if self._closed:
            return
        if self.loop.time() - self.last_received > 2 * self.recv_interval:
            log.warning("missed heart-beats from STOMP client %s, timeout: %ss", self.peer, self.recv_interval)
            if self.transport is not None:
                self.transport.abort()
            return
        self._timers.append(self.loop.call_later(self.recv_interval, self._recv_tick))

    # --- memory alarm ------------------------------------------------------------------------------

    def _on_memory_alarm(self, alarm: bool) -> None:
        """As AMQP's connection.blocked, without the notification (STOMP has none): a connection that has
        published is not read while the alarm lasts."""
        if self._closing or self.transport is None:
            return
        if alarm and self.published and not self.blocked:
            self.blocked = True
            self.transport.pause_reading()
        elif not alarm and self.blocked:
            self.blocked = False
            self.transport.resume_reading()

    def after_publish(self) -> None:
        self.published = True
        if self.broker.memory.alarm and not self.blocked:
            self._on_memory_alarm(True)


def _seconds(millis: int) -> int:
    """RabbitMQ's heart-beat granularity: whole seconds, at least one."""
    if millis <= 0:
        return 0
    return max(1, millis // 1000)


class StompListener:
    """STOMP over TCP (``config.stomp_port``) and over TLS (``config.stomp_tls_port``, with the AMQPS listener's
    SSL context), both over one broker. The default port already in use logs a warning and STOMP stays off;
    any other port that cannot be bound is an OSError from :meth:`start`."""

    def __init__(self, config: Config, ssl_context: ssl.SSLContext | None) -> None:
        self.config = config
        self.broker: Broker = None  # type: ignore[assignment]  # given to start(), on the event loop
        self.ssl_context = ssl_context
        self.connections: set[StompAdapter] = set()
        self.port = -1
        self.tls_port = -1
        self._servers: list[tuple[str, asyncio.base_events.Server, int]] = []

    async def start(self, broker: Broker) -> None:
        self.broker = broker
        plain = await self._listen(self.config.stomp_port, DEFAULT_STOMP_PORT, None, "STOMP")
        if plain is not None:
            self.port = plain
        if self.ssl_context is not None:
            tls = await self._listen(self.config.stomp_tls_port, DEFAULT_STOMP_TLS_PORT, self.ssl_context,
                                     "STOMP over TLS")
            if tls is not None:
                self.tls_port = tls

    async def _listen(self, port: int, default: int, context: ssl.SSLContext | None, what: str) -> int | None:
        if port < 0:
            return None
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: StompAdapter(self), self.config.bind, port, reuse_address=True, backlog=1024, ssl=context,
                ssl_handshake_timeout=handshake_timeout() if context is not None else None)
        except OSError as exc:
            if port == default:
                log.warning("cannot listen for %s on %s:%d (%s): STOMP is off; set stomp_port (-1 for none)", what,
                            self.config.bind, port, exc.strerror or exc)
                return None
            self.close()
            host = f"[{self.config.bind}]" if ":" in self.config.bind else self.config.bind
            raise OSError(exc.errno, exc.strerror, f"cannot listen for {what} on {host}:{port}") from None
        bound = server.sockets[0].getsockname()[1]
        self._servers.append(("stomp/ssl" if context is not None else "stomp", server, bound))
        return int(bound)

    def log_listening(self) -> None:
        for protocol, _server, port in self._servers:
            log.info("Leveret listening for %s on %s:%d", "STOMP over TLS" if protocol == "stomp/ssl" else "STOMP",
                     self.config.bind, port)

    def close(self) -> None:
        for _protocol, server, _port in self._servers:
            server.close()

    async def stop(self, grace: float) -> None:
        """Send every connection an ERROR frame and close it; wait up to ``grace`` seconds, abort what is left."""
        for conn in list(self.connections):
            conn.force_close("broker forced connection closure with reason 'shutdown'")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for _protocol, server, _port in self._servers:
            await server.wait_closed()

    def listeners(self) -> list[dict[str, object]]:
        return [{"node": self.broker.node_name, "protocol": protocol, "ip_address": self.config.bind, "port": port}
                for protocol, _server, port in self._servers]

    def peer_tls(self, transport: asyncio.BaseTransport) -> PeerTLS | None:
        """The TLS session of a new connection; its ``login`` (the verified certificate's user) only with
        ``tls_external_login``, as AMQP's EXTERNAL (RabbitMQ's ``stomp.ssl_cert_login``)."""
        login_from = self.config.tls_cert_login_from if self.config.tls_external_login else None
        return peer_tls(transport.get_extra_info("ssl_object"), login_from)

    def connection_details(self, transport: asyncio.BaseTransport, tls: PeerTLS | None) -> dict[str, object]:
        details: dict[str, object] = dict(PLAIN_DETAILS) if tls is None else tls.details()
        local = transport.get_extra_info("sockname")
        if local:
            details["host"], details["port"] = local[0], local[1]
        return details


__all__ = ["StompAdapter", "StompListener", "Subscription"]
