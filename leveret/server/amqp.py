"""The asyncio edge of AMQP: one Protocol per client connection, adapting leveret.amqp to leveret.core.

It moves bytes between the transport and the sans-IO :class:`ServerConnection`, turns parsed methods into
core calls, translates core errors into channel or connection closes (the one place that happens for
AMQP), applies back-pressure, and keeps heartbeats.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from leveret import RABBITMQ_VERSION, __version__
from leveret.amqp import codec, spec
from leveret.amqp.connection import ProtocolViolation, ServerConnection, State
from leveret.core import errors
from leveret.core.broker import Session
from leveret.core.message import Message

from .commands import ChannelClosed, ChannelCommands
from .edge import EdgeConnection

if TYPE_CHECKING:
    from .listener import AMQPListener

log = logging.getLogger("leveret.connection")

# Domain error -> (reply code, closes the whole connection)
ERROR_CODES: dict[type[errors.BrokerError], tuple[int, bool]] = {
    errors.NotFound: (spec.NOT_FOUND, False),
    errors.AccessRefused: (spec.ACCESS_REFUSED, False),
    errors.PermissionRefused: (spec.ACCESS_REFUSED, False),
    errors.ResourceLocked: (spec.RESOURCE_LOCKED, False),
    errors.PreconditionFailed: (spec.PRECONDITION_FAILED, False),
    errors.NotAllowed: (spec.NOT_ALLOWED, True),
    errors.NotImplementedFeature: (spec.NOT_IMPLEMENTED, True),
    errors.CommandInvalid: (spec.COMMAND_INVALID, True),
    errors.ResourceError: (spec.RESOURCE_ERROR, True),
    errors.InternalError: (spec.INTERNAL_ERROR, True),
}

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}

M = spec.method
_START = M("connection.start")
_TUNE = M("connection.tune")
_OPEN_OK = M("connection.open-ok")
_CLOSE_OK = M("connection.close-ok")
_BASIC_ACK = M("basic.ack")
_BASIC_NACK = M("basic.nack")
_BASIC_RETURN = M("basic.return")
_BASIC_CANCEL = M("basic.cancel")
_CLOSE_TIMEOUT = 3.0
# Bytes of deliveries queued for one connection in a loop turn (not yet handed to the transport) after which its
# consumers get nothing more until they are written: a consumer that does not read its socket stops a queue's
# page-in after this plus the transport's own buffer (asyncio's default high-water mark, 64 KiB).
DELIVERY_BUFFER = 1 << 20
# After close-ok the socket stays open until the client closes it, at most the heartbeat interval or this
# many seconds (RabbitMQ's ?CLOSING_TIMEOUT and rule in rabbit_reader:close_connection).
_LINGER_TIMEOUT = 30.0


@mypyc_attr(native_class=False)  # compiled (setup.py) as a Python class: asyncio.Protocol and two bases
class AMQPConnection(EdgeConnection, ChannelCommands):
    """One client connection. Implements leveret.amqp.connection.Handler and leveret.core.channel.Sink; the
    parsed methods go to the handlers of METHODS (below the class). The socket's part is EdgeConnection's."""

    PROTOCOL = "AMQP"

    def __init__(self, server: AMQPListener) -> None:
        self.server = server
        config = server.config
        self.broker = server.broker
        self.conn = ServerConnection(self, frame_max=config.frame_max, channel_max=config.channel_max,
                                     max_message_size=config.max_message_size)
        self.session = Session(self.broker, self)
        self._init_edge()
        self.client_properties: dict[str, Any] = {}
        self.auth_failure_close = False
        self.blocked_capable = False
        self.heartbeat = 0
        self._held_cancels: list[tuple[int, str]] | None = None  # basic.cancel held back until a reply is sent

    # --- transport callbacks -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        self.recv_oct += len(data)
        self.recv_cnt += 1
        self.conn.receive_data(data)
        self.session.flush()
        self._flush()

    # --- output ------------------------------------------------------------------------------------

    def send_deliver(self, channel: int, consumer_tag: bytes, delivery_tag: int, redelivered: bool,
                     address: bytes, header: bytes, body: bytes) -> None:
        self.conn.send_deliver(channel, consumer_tag, delivery_tag, redelivered, address, header, body)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        self._queued += len(body) + len(header) + 64
        if self._queued >= DELIVERY_BUFFER and not self._held:
            self._held = True  # bytes queued for the socket, not only pause_writing at the next flush
            self.session.set_writable(False)

    def send_return(self, channel: int, reply_code: int, reply_text: str, msg: Message) -> None:
        self.conn.send_content(channel, _BASIC_RETURN, (reply_code, reply_text, msg.exchange, msg.routing_key),
                               msg.header, msg.body)
        self._schedule_flush()

    def send_confirm(self, channel: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        if ack:
            self.conn.send_method(channel, _BASIC_ACK, (delivery_tag, multiple))
        else:
            self.conn.send_method(channel, _BASIC_NACK, (delivery_tag, multiple, False))
        self._schedule_flush()

    def send_cancel(self, channel: int, consumer_tag: str) -> None:
        if self._held_cancels is not None:
            self._held_cancels.append((channel, consumer_tag))
            return
        self.conn.send_method(channel, _BASIC_CANCEL, (consumer_tag, True))
        self._schedule_flush()

    # --- closing -----------------------------------------------------------------------------------

    def close(self, reply_code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Close the connection with connection.close; the socket closes on close-ok or after a timeout."""
        if self._closed or self.transport is None:
            return
        log.warning("closing connection %s: %d %s", self.peer, reply_code, text)
        self.conn.close(reply_code, text, class_id, method_id)
        self._after_close_sent()

    def force_close(self, reason: str) -> None:
        """Sink.force_close: RabbitMQ's text for a connection closed by an operator, e.g.
        ``CONNECTION_FORCED - Closed via management plugin``. Once closing, a second request does nothing."""
        if self.conn.state in (State.CLOSING, State.CLOSED):
            return
        self.close(spec.CONNECTION_FORCED, f"CONNECTION_FORCED - {reason}")

    def _after_close_sent(self) -> None:
        self.session.close()
        self._flush()
        self._timers.append(self.loop.call_later(_CLOSE_TIMEOUT, self._drop))

    def _abort(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()

    def _drop(self) -> None:
        """Close the socket now, discarding unsent output: a peer that stopped reading (its TCP window full)
        would otherwise keep a closing transport, and the session, waiting for a flush that never comes."""
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def _close_transport_after_flush(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _handshake_timeout(self) -> None:
        if self.conn.state not in (State.OPEN, State.CLOSING, State.CLOSED):
            log.warning("closing connection %s: handshake timeout", self.peer)
            self._abort()

    # --- sans-IO handler ---------------------------------------------------------------------------

    def on_protocol_header(self) -> None:
        props = {
            "capabilities": SERVER_CAPABILITIES,
            "cluster_name": self.broker.node_name,
            "copyright": "Copyright (c) Leveret contributors",
            "information": f"Leveret {__version__}, licensed under the MIT License",
            "leveret-version": __version__,
            "platform": "Python",
            "product": "Leveret",
            "version": RABBITMQ_VERSION,  # the RabbitMQ whose behaviour Leveret implements: clients gate on it
        }
        # EXTERNAL only where there is a verified client certificate to take the user name from
        mechanisms = b"AMQPLAIN PLAIN EXTERNAL" if self.tls is not None and self.tls.login else b"AMQPLAIN PLAIN"
        self.conn.send_method(0, _START, (0, 9, props, mechanisms, b"en_US"))

    def on_heartbeat(self) -> None:
        pass

    def on_connection_error(self, error: ProtocolViolation) -> None:
        """The parser found a violation: it has queued connection.close (state CLOSING) unless the peer is not
        speaking AMQP at all or was already being closed (state CLOSED), where the socket just closes."""
        log.warning("connection %s: %d %s", self.peer, error.reply_code, error.text)
        if self.conn.state is State.CLOSED:
            self._close_transport_after_flush()
            return
        self._after_close_sent()  # the client's close-ok is not read (the stream may be out of sync)

    def on_channel_error(self, channel: int, error: ProtocolViolation) -> None:
        self._close_channel(channel, error.reply_code, error.text, error.class_id, error.method_id)

    def close_channel(self, channel: int, code: int, text: str) -> None:
        """Close one channel from the broker's side (a relayed consumer's link failed: server/relay.py)."""
        if channel in self.session.channels:
            self._close_channel(channel, code, text, 0, 0)
            self._schedule_flush()

    def _close_channel(self, channel: int, code: int, text: str, class_id: int, method_id: int) -> None:
        name = spec.REPLY_NAMES.get(code, str(code))
        log.info("closing channel %d of %s: %d %s", channel, self.peer, code, text)
        self.conn.close_channel(channel, code, f"{name} - {text}", class_id, method_id)
        self.session.close_channel(channel)

    def _fail(self, channel: int, exc: Exception, class_id: int, method_id: int) -> None:
        if isinstance(exc, errors.BrokerError):
            code, hard = ERROR_CODES.get(type(exc), (spec.INTERNAL_ERROR, True))
            if hard or channel == 0:
                self.close(code, f"{spec.REPLY_NAMES[code]} - {exc.text}", class_id, method_id)
            else:
                self._close_channel(channel, code, exc.text, class_id, method_id)
            return
        log.exception("internal error handling %s/%s on %s", class_id, method_id, self.peer)
        self.close(spec.INTERNAL_ERROR, f"INTERNAL_ERROR - {type(exc).__name__}: {exc}", class_id, method_id)

    def on_method(self, channel: int, method: spec.MethodSpec, args: tuple[Any, ...]) -> None:
        handler = _HANDLERS.get(method.key)
        if handler is None:
            return
        try:
            handler(self, channel, *args)
        except ChannelClosed:
            pass
        except Exception as exc:
            self._fail(channel, exc, method.class_id, method.method_id)

    def on_publish(self, channel: int, exchange: str, routing_key: str, mandatory: bool, immediate: bool,
                   address: bytes, header: bytes, body: bytes) -> None:
        ch = self.session.channels.get(channel)
        if ch is None:
            return
        try:
            if immediate:
                raise errors.NotImplementedFeature("immediate=true")
            ch.publish(Message(exchange, routing_key, address, header, body), mandatory)
        except Exception as exc:
            self._fail(channel, exc, spec.CLASS_BASIC, 40)
        if not self.published:
            self.published = True
        if self.broker.memory.alarm and not self.blocked:
            self._block()

    def on_ack(self, channel: int, delivery_tag: int, multiple: bool) -> None:
        ch = self.session.channels.get(channel)
        if ch is None:
            return
        try:
            ch.ack(delivery_tag, multiple)
        except Exception as exc:
            self._fail(channel, exc, spec.CLASS_BASIC, 80)

    # --- memory alarm ------------------------------------------------------------------------------

    def _on_memory_alarm(self, alarm: bool) -> None:
        if self.conn.state is State.CLOSED:
            return  # closed, lingering until the client closes: nothing to block, keep draining
        if alarm and self.published and not self.blocked:
            self._block()
        elif not alarm and self.blocked:
            self.blocked = False
            if self.blocked_capable:
                self.conn.send_method(0, M("connection.unblocked"))
                self._schedule_flush()
            if self.transport is not None:
                self.transport.resume_reading()

    def _block(self) -> None:
        self.blocked = True
        if self.blocked_capable:
            self.conn.send_method(0, M("connection.blocked"), (self.broker.memory.reason,))
            self._schedule_flush()
        if self.transport is not None:
            self.transport.pause_reading()

    # --- heartbeats --------------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        if self.heartbeat > 0:
            self._timers.append(self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick))

    def _heartbeat_tick(self) -> None:
        if self._closed or self.conn.state is State.CLOSED:
            return
        now = self.loop.time()
        if now - self.last_received > 2 * self.heartbeat:
            log.warning("missed heartbeats from client %s, timeout: %ss", self.peer, self.heartbeat)
            self._drop()
            return
        if not self._sent_since_tick:
            self.conn.send_heartbeat()
            self._flush()
        self._sent_since_tick = False
        self._timers = [t for t in self._timers if not t.cancelled()]
        self._timers.append(self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick))

    # --- the connection class: handshake and close ------------------------------------------------------

    def connection_start_ok(self, _ch: int, client_properties: dict[str, Any], mechanism: str,
                            response: bytes, locale: str) -> None:
        self.client_properties = client_properties
        caps = client_properties.get("capabilities")
        if isinstance(caps, dict):
            self.auth_failure_close = bool(caps.get("authentication_failure_close"))
            self.blocked_capable = bool(caps.get("connection.blocked"))
            self.session.cancel_notify = bool(caps.get("consumer_cancel_notify"))
        try:
            username, password = self._credentials(mechanism, response)
        except errors.CommandInvalid as exc:
            # RabbitMQ closes the socket without a connection.close for handshake errors other than a refused login
            log.warning("connection %s: %s", self.peer, exc.text)
            self._abort()
            return
        self.session.details["auth_mechanism"] = mechanism
        try:
            if mechanism == "EXTERNAL":
                self.session.user = self.broker.authenticate_certificate(username, self.loopback)
            else:
                self.session.user = self.broker.authenticate(username, password, self.loopback, amqp=True)
        except errors.AccessRefused as exc:
            log.warning("login refused for user '%s' from %s: %s", username, self.peer, exc.text)
            self.broker.audit.record("login.refused", by={"via": "amqp", "address": self.peer}, protocol="amqp",
                                     user=username, peer=self.peer, reason=exc.text)
            if self.auth_failure_close:
                self.close(spec.ACCESS_REFUSED, f"ACCESS_REFUSED - Login was refused using authentication "
                                                f"mechanism {mechanism}. For details see the broker logfile.",
                           spec.CLASS_CONNECTION, 11)
            else:
                self._abort()
            return
        self.conn.send_method(0, _TUNE, (self.server.config.channel_max, self.server.config.frame_max,
                                         self.server.config.heartbeat))

    def _credentials(self, mechanism: str, response: bytes) -> tuple[str, str]:
        if mechanism == "PLAIN":
            # RabbitMQ's rabbit_auth_mechanism_plain takes exactly NUL user NUL password: an authorization identity
            # (text before the first NUL) is not supported, and the socket closes without connection.close
            parts = response.split(b"\x00")
            if len(parts) != 3 or parts[0]:
                raise errors.CommandInvalid("PLAIN response must be NUL user NUL password (no authorization "
                                            "identity)")
            return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
        if mechanism == "AMQPLAIN":
            try:
                table, _ = codec.decode_table(len(response).to_bytes(4, "big") + response, 0)
            except codec.CodecError:
                raise errors.AccessRefused("malformed AMQPLAIN response") from None
            return str(table.get("LOGIN", "")), str(table.get("PASSWORD", ""))
        if mechanism == "EXTERNAL" and self.tls is not None and self.tls.login:
            return self.tls.login, ""  # the response (an authorization identity) is ignored, as RabbitMQ does
        if mechanism == "EXTERNAL":
            raise errors.CommandInvalid("authentication mechanism 'EXTERNAL' is offered only on TLS connections "
                                        "with a verified client certificate")
        raise errors.CommandInvalid(f"unknown authentication mechanism '{mechanism}'")

    def connection_secure_ok(self, _ch: int, response: bytes) -> None:
        raise errors.CommandInvalid("connection.secure-ok without connection.secure")

    def connection_tune_ok(self, _ch: int, channel_max: int, frame_max: int, heartbeat: int) -> None:
        config = self.server.config
        if frame_max and frame_max < spec.FRAME_MIN_SIZE:
            raise errors.NotAllowed(f"frame_max={frame_max} < {spec.FRAME_MIN_SIZE} min size")
        if frame_max > config.frame_max:
            raise errors.NotAllowed(f"frame_max={frame_max} > {config.frame_max} max size")
        if channel_max > config.channel_max:
            raise errors.NotAllowed(f"channel_max={channel_max} > {config.channel_max} max channels")
        self.conn.frame_max = frame_max or config.frame_max
        self.conn.channel_max = channel_max or config.channel_max
        self.heartbeat = heartbeat
        self._start_heartbeat()

    def connection_open(self, _ch: int, virtual_host: str, _capabilities: str, _insist: bool) -> None:
        user = self.session.user.name if self.session.user else "?"
        try:
            self.session.open_vhost(virtual_host)
        except errors.NotAllowed as exc:
            self.broker.audit.record("login.refused", by={"via": "amqp", "address": self.peer}, protocol="amqp",
                                     user=user, peer=self.peer, vhost=virtual_host, reason=exc.text)
            raise
        self.broker.audit.record("login", by={"via": "amqp", "address": self.peer}, protocol="amqp", user=user,
                                 peer=self.peer, vhost=virtual_host)
        log.info("connection %s: user '%s' authenticated and granted access to vhost '%s'", self.peer, user,
                 virtual_host)
        self.conn.send_method(0, _OPEN_OK, ("",))

    def connection_close(self, _ch: int, reply_code: int, reply_text: str, class_id: int,
                         method_id: int) -> None:
        """Answer close-ok and, as RabbitMQ does, leave the socket open: frames the client still had in flight
        are read and discarded (the parser is CLOSED) instead of meeting a reset that could cost the client its
        close-ok. The client closes the socket (EOF closes ours), or the linger timeout does."""
        self.conn.send_method(0, _CLOSE_OK)
        self.session.close()
        self._flush()
        timeout = self.heartbeat if 0 < self.heartbeat < _LINGER_TIMEOUT else _LINGER_TIMEOUT
        self._timers.append(self.loop.call_later(timeout, self._drop))  # abort: a client not reading cannot hold it
        if self.blocked and self.transport is not None:
            self.transport.resume_reading()  # keep draining the socket, so the client can finish its writes

    def connection_close_ok(self, _ch: int) -> None:
        self._close_transport_after_flush()

    def connection_update_secret(self, _ch: int, new_secret: bytes, reason: str) -> None:
        self._reply(0, "connection.update-secret-ok")


# Every AMQP method a client may send, by its name in the specification -> its handler, called with the connection,
# the channel number and the method's arguments. basic.publish and basic.ack also have fast paths in the parser
# (AMQPConnection.on_publish, on_ack). A method the parser accepts that is not listed here is ignored.
METHODS: dict[str, Callable[..., None]] = {
    "connection.start-ok": AMQPConnection.connection_start_ok,
    "connection.secure-ok": AMQPConnection.connection_secure_ok,
    "connection.tune-ok": AMQPConnection.connection_tune_ok,
    "connection.open": AMQPConnection.connection_open,
    "connection.close": AMQPConnection.connection_close,
    "connection.close-ok": AMQPConnection.connection_close_ok,
    "connection.update-secret": AMQPConnection.connection_update_secret,
    "channel.open": ChannelCommands.channel_open,
    "channel.flow": ChannelCommands.channel_flow,
    "channel.flow-ok": ChannelCommands.channel_flow_ok,
    "channel.close": ChannelCommands.channel_close,
    "channel.close-ok": ChannelCommands.channel_close_ok,
    "exchange.declare": ChannelCommands.exchange_declare,
    "exchange.delete": ChannelCommands.exchange_delete,
    "exchange.bind": ChannelCommands.exchange_bind,
    "exchange.unbind": ChannelCommands.exchange_unbind,
    "queue.declare": ChannelCommands.queue_declare,
    "queue.bind": ChannelCommands.queue_bind,
    "queue.unbind": ChannelCommands.queue_unbind,
    "queue.purge": ChannelCommands.queue_purge,
    "queue.delete": ChannelCommands.queue_delete,
    "basic.qos": ChannelCommands.basic_qos,
    "basic.consume": ChannelCommands.basic_consume,
    "basic.cancel": ChannelCommands.basic_cancel,
    "basic.get": ChannelCommands.basic_get,
    "basic.ack": ChannelCommands.basic_ack,
    "basic.reject": ChannelCommands.basic_reject,
    "basic.nack": ChannelCommands.basic_nack,
    "basic.recover-async": ChannelCommands.basic_recover_async,
    "basic.recover": ChannelCommands.basic_recover,
    "confirm.select": ChannelCommands.confirm_select,
    "tx.select": ChannelCommands.tx_select,
    "tx.commit": ChannelCommands.tx_commit,
    "tx.rollback": ChannelCommands.tx_rollback,
}
_HANDLERS = {M(name).key: handler for name, handler in METHODS.items()}
