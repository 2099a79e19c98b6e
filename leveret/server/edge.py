"""What the AMQP and STOMP edges share: a client connection's socket and its listener's TLS details.

:class:`EdgeConnection` is the part of :class:`~leveret.server.amqp.AMQPConnection` and
:class:`~leveret.server.stomp.StompAdapter` that does not depend on the protocol: the socket's set-up
(TCP_NODELAY, the peer, TLS and the management API's details), byte and read/write counters, writing with
back-pressure (the transport's pause/resume and the delivery buffer), and the end of the connection. A subclass
sets ``self.conn`` (its sans-IO connection, with ``data_to_send()``), ``self.session``, ``self.server`` and
``self.broker`` before it calls :meth:`_init_edge`, and gives ``PROTOCOL`` (the log lines' name),
``_on_memory_alarm`` and ``_handshake_timeout``. :class:`EdgeListener` is what both listeners answer the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from .tls import PLAIN_DETAILS, peer_tls

if TYPE_CHECKING:
    from leveret.config import Config
    from leveret.core.broker import Broker, Session

    from .tls import PeerTLS

log = logging.getLogger("leveret.connection")

HANDSHAKE_TIMEOUT = 10.0


class EdgeConnection(asyncio.Protocol):
    PROTOCOL = "?"
    conn: Any
    session: Session
    server: Any
    broker: Broker

    def _init_edge(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.peer = "?"
        self.loopback = False
        self.published = False
        self.blocked = False
        self.last_received = self.loop.time()
        self.recv_oct = self.recv_cnt = self.send_oct = self.send_cnt = 0  # bytes and reads/writes, as RabbitMQ's
        self._sent_since_tick = False
        self._flush_scheduled = False
        self._queued = 0  # bytes of deliveries queued since the last flush
        self._transport_paused = False  # pause_writing from the transport: its buffer is over the high mark
        self._held = False  # deliveries stopped: DELIVERY_BUFFER queued in this turn
        self._shut = False  # the transport is closing: nothing more is written
        self._timers: list[asyncio.TimerHandle] = []
        self._closed = False

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
        self._timers.append(self.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout))
        log.info("accepting %s connection %s", self.PROTOCOL, self.peer)

    def _on_memory_alarm(self, on: bool) -> None:
        raise NotImplementedError

    def _handshake_timeout(self) -> None:
        raise NotImplementedError

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
        log.info("closing %s connection %s (vhost '%s', user '%s')%s", self.PROTOCOL, self.peer,
                 vhost.name if vhost else "-", user, f": {exc}" if exc else "")

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
            self.transport.write(data)  # may call pause_writing when the socket does not take it all
        if self._held:
            self._held = False
            if not self._transport_paused and not self._closed:
                self.session.set_writable(True)  # delivers the next DELIVERY_BUFFER, flushed next turn

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)


class EdgeListener:
    """What the AMQP and STOMP listeners tell a new connection: its TLS session and its details."""

    config: Config

    def peer_tls(self, transport: asyncio.BaseTransport) -> PeerTLS | None:
        """The TLS session of a new connection (None for a plain one); its ``login`` (the verified certificate's
        user) only with ``tls_external_login`` (AMQP's EXTERNAL, RabbitMQ's ``stomp.ssl_cert_login``)."""
        login_from = self.config.tls_cert_login_from if self.config.tls_external_login else None
        return peer_tls(transport.get_extra_info("ssl_object"), login_from)

    def connection_details(self, transport: asyncio.BaseTransport, tls: PeerTLS | None) -> dict[str, object]:
        """What the management API shows of a connection besides its peer: the local address and TLS."""
        details: dict[str, object] = dict(PLAIN_DETAILS) if tls is None else tls.details()
        local = transport.get_extra_info("sockname")
        if local:
            details["host"], details["port"] = local[0], local[1]
        return details
