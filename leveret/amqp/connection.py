"""The server side of one AMQP 0-9-1 connection, sans-IO.

``ServerConnection.receive_data(bytes)`` parses every complete frame, checks it against the protocol's
state machine (connection handshake, channel open/closing, content assembly) and calls the
:class:`Handler` for each method, publish and heartbeat. Replies are queued with the ``send_*``
methods and collected with :meth:`ServerConnection.data_to_send`. No sockets, no clock.

Protocol violations found while parsing are reported once, through ``Handler.on_connection_error``
(and, for the few channel-level ones, ``Handler.on_channel_error``); after a connection error the
connection parses nothing more.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Protocol

from . import codec, spec
from .codec import CodecError

_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_HEAD = struct.Struct(">HH")
_CONTENT_HEAD = struct.Struct(">HHQ")
_ACK = struct.Struct(">QB")
_PUBLISH_KEY = (spec.CLASS_BASIC << 16) | 40
_ACK_KEY = (spec.CLASS_BASIC << 16) | 80
_DELIVER_HEAD = b"\x00\x3c\x00\x3c"
_PUBLISH_HEAD = b"\x00\x3c\x00\x28"
_Q = struct.Struct(">Q")
_QB = struct.Struct(">Q?")


class State(enum.Enum):
    AWAIT_HEADER = "awaiting protocol header"
    AWAIT_START_OK = "awaiting connection.start-ok"
    AWAIT_TUNE_OK = "awaiting connection.tune-ok"
    AWAIT_OPEN = "awaiting connection.open"
    OPEN = "open"
    CLOSING = "closing"  # we sent connection.close, waiting for close-ok
    CLOSED = "closed"


def _key(name: str) -> int:
    return spec.method(name).key


# Connection-class methods a client may send, by state: (state, method) -> next state.
TRANSITIONS: dict[tuple[State, int], State] = {
    (State.AWAIT_START_OK, _key("connection.start-ok")): State.AWAIT_TUNE_OK,
    (State.AWAIT_TUNE_OK, _key("connection.tune-ok")): State.AWAIT_OPEN,
    (State.AWAIT_OPEN, _key("connection.open")): State.OPEN,
    (State.OPEN, _key("connection.close")): State.CLOSED,
    (State.OPEN, _key("connection.update-secret")): State.OPEN,
    (State.AWAIT_START_OK, _key("connection.close")): State.CLOSED,
    (State.AWAIT_TUNE_OK, _key("connection.close")): State.CLOSED,
    (State.AWAIT_OPEN, _key("connection.close")): State.CLOSED,
    (State.CLOSING, _key("connection.close")): State.CLOSING,
    (State.CLOSING, _key("connection.close-ok")): State.CLOSED,
}

# Before tune-ok, frames are limited to the minimum frame size (as in RabbitMQ).
_UNTUNED = frozenset({State.AWAIT_HEADER, State.AWAIT_START_OK, State.AWAIT_TUNE_OK})

_CHANNEL_OPEN = _key("channel.open")
_CHANNEL_CLOSE = _key("channel.close")
_CHANNEL_CLOSE_OK = _key("channel.close-ok")

# Channel states.
CH_OPEN = 1
CH_CLOSING = 2  # we sent channel.close; everything but close/close-ok is discarded


class ProtocolViolation(Exception):
    """A client broke the protocol: close with ``reply_code`` (connection-level unless ``channel_level``)."""

    def __init__(self, reply_code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.reply_code = reply_code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id


class Handler(Protocol):
    """What a ServerConnection calls as it parses. The adapter (leveret.server) implements it."""

    def on_protocol_header(self) -> None:
        """A valid protocol header arrived: send connection.start."""

    def on_method(self, channel: int, method: spec.MethodSpec, args: tuple[Any, ...]) -> None:
        """A method without content, already checked against the connection and channel states."""

    def on_publish(self, channel: int, exchange: str, routing_key: str, mandatory: bool, immediate: bool,
                   address: bytes, header: bytes, body: bytes) -> None:
        """A complete basic.publish. ``address`` is the exchange and routing key as the two short strings
        of the frame, ``header`` the content header payload as received (class, weight, size, properties)."""

    def on_ack(self, channel: int, delivery_tag: int, multiple: bool) -> None:
        """basic.ack (a fast path of on_method)."""

    def on_heartbeat(self) -> None:
        """A heartbeat frame arrived."""

    def on_channel_error(self, channel: int, error: ProtocolViolation) -> None:
        """A channel-level violation (406 for an oversized message): close the channel."""

    def on_connection_error(self, error: ProtocolViolation) -> None:
        """A connection-level violation: close the connection. Nothing more will be parsed."""


class _Content:
    __slots__ = ("address", "args", "header", "parts", "received", "size")

    def __init__(self, args: tuple[Any, ...], address: bytes) -> None:
        self.args = args
        self.address = address
        self.header = b""
        self.size = -1
        self.parts: list[bytes] = []
        self.received = 0


class ServerConnection:
    """One client connection's protocol state. See the module docstring for the contract."""

    def __init__(self, handler: Handler, *, frame_max: int = 131072, channel_max: int = 2047,
                 max_message_size: int = 134217728) -> None:
        self.handler = handler
        self.state = State.AWAIT_HEADER
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.max_message_size = max_message_size
        self.channels: dict[int, int] = {}
        self._content: dict[int, _Content] = {}
        self._buf = b""
        self._out: list[bytes] = []
        self.bytes_received = 0
        self._last_address: tuple[bytes, str, str] = (b"", "", "")
        self._last_header = b""
        self.failed = False  # a violation was reported: nothing more is parsed, the socket is to be closed

    # --- input -------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Parse ``data`` (any chunk of the stream) and call the handler for every complete frame."""
        if self.state is State.CLOSED or self.failed:
            return  # after a violation the stream may be out of frame sync: nothing more is read
        self.bytes_received += len(data)
        if self._buf:
            data = self._buf + data
            self._buf = b""
        try:
            if self.state is State.AWAIT_HEADER:
                if len(data) < 8:
                    self._buf = data
                    return
                self._check_header(data[:8])
                data = data[8:]
            self._buf = self._parse_frames(data)
        except ProtocolViolation as exc:
            self._buf = b""
            self.failed = True
            if self.state in (State.AWAIT_HEADER, State.CLOSING):
                self.state = State.CLOSED
            else:
                name = spec.REPLY_NAMES.get(exc.reply_code, str(exc.reply_code))
                self.close(exc.reply_code, f"{name} - {exc.text}", exc.class_id, exc.method_id)
            self.handler.on_connection_error(exc)

    def _check_header(self, header: bytes) -> None:
        if header in (spec.PROTOCOL_HEADER, spec.PROTOCOL_HEADER_0_9):
            self.state = State.AWAIT_START_OK
            self.handler.on_protocol_header()
            return
        self._out.append(spec.PROTOCOL_HEADER)
        raise ProtocolViolation(spec.FRAME_ERROR, f"unsupported protocol header {header!r}")

    def _parse_frames(self, data: bytes) -> bytes:
        pos = 0
        n = len(data)
        unpack_head = _FRAME_HEAD.unpack_from
        # RabbitMQ allows a payload of frame_max bytes (its FRAME_SIZE_FUDGE), not just frame_max - 8; before
        # tune-ok, 4096. Recomputed after each channel-0 frame (the only ones that change the state).
        max_payload = spec.FRAME_MIN_SIZE if self.state in _UNTUNED else self.frame_max
        while n - pos >= 8:
            ftype, channel, size = unpack_head(data, pos)
            if size > max_payload:
                raise ProtocolViolation(spec.FRAME_ERROR, f"frame payload of {size} bytes exceeds frame_max "
                                        f"{max_payload}")
            end = pos + 7 + size
            if end >= n:
                break
            if data[end] != 0xCE:
                raise ProtocolViolation(spec.FRAME_ERROR, f"frame end byte {data[end]:#x} is not 0xce")
            payload = data[pos + 7 : end]
            pos = end + 1
            if self.state is State.CLOSING and (channel or ftype != 1):
                continue  # after our connection.close only channel 0's methods count
            if ftype == 1:
                if channel and payload[:4] == _PUBLISH_HEAD and n - end > 22:
                    after = self._publish_fast(channel, payload, data, pos, max_payload)
                    if after:
                        pos = after
                        if self.state is State.CLOSED:
                            return b""
                        continue
                self._on_method_frame(channel, payload)
                if not channel:
                    max_payload = spec.FRAME_MIN_SIZE if self.state in _UNTUNED else self.frame_max
            elif ftype == 3:
                self._on_body_frame(channel, payload)
            elif ftype == 2:
                self._on_header_frame(channel, payload)
            elif ftype == 8:
                if payload:
                    raise ProtocolViolation(spec.FRAME_ERROR, f"heartbeat frame with a {size}-byte payload")
                if channel != 0:
                    raise ProtocolViolation(spec.UNEXPECTED_FRAME, f"heartbeat frame on channel {channel}")
                self.handler.on_heartbeat()
            else:
                raise ProtocolViolation(spec.FRAME_ERROR, f"unknown frame type {ftype}")
            if self.state is State.CLOSED:
                return b""
        return data[pos:]

    def _publish_fast(self, channel: int, payload: bytes, data: bytes, pos: int, max_payload: int) -> int:
        """basic.publish whose content header and single body frame follow it in ``data`` (at ``pos``), on an
        open channel: parsed and handed over in one step, and the position after its last frame returned. 0
        when anything is unusual (another frame type or channel, an oversized or split body, an error to
        report): the caller then takes the general path frame by frame, which reports errors as before."""
        if self.channels.get(channel) != CH_OPEN or channel in self._content or self.state is not State.OPEN:
            return 0
        ftype, hchannel, hsize = _FRAME_HEAD.unpack_from(data, pos)
        hend = pos + 7 + hsize
        if ftype != 2 or hchannel != channel or hsize < 14 or hsize > max_payload or hend >= len(data) \
                or data[hend] != 0xCE:
            return 0
        class_id, _weight, size = _CONTENT_HEAD.unpack_from(data, pos + 7)
        if class_id != 60 or size > self.max_message_size:
            return 0
        if size:
            bpos = hend + 1
            if len(data) - bpos < 8:
                return 0
            ftype, bchannel, bsize = _FRAME_HEAD.unpack_from(data, bpos)
            bend = bpos + 7 + bsize
            if ftype != 3 or bchannel != channel or bsize != size or bsize > max_payload or bend >= len(data) \
                    or data[bend] != 0xCE:
                return 0
            body = data[bpos + 7 : bend]
            after = bend + 1
        else:
            body = b""
            after = hend + 1
        header = data[pos + 7 : hend]
        if header == self._last_header:  # the same properties and size as before: share one object
            header = self._last_header
        else:
            self._last_header = header
        try:
            elen = payload[6]
            rpos = 7 + elen
            rlen = payload[rpos]
            bits_pos = rpos + 1 + rlen
            if bits_pos + 1 != len(payload):
                return 0
            address = payload[6:bits_pos]
            last = self._last_address
            if address == last[0]:
                address, exchange, routing_key = last
            else:
                exchange = payload[7:rpos].decode()
                routing_key = payload[rpos + 1 : bits_pos].decode()
                self._last_address = (address, exchange, routing_key)
            bits = payload[bits_pos]
        except (IndexError, UnicodeDecodeError):
            return 0
        self.handler.on_publish(channel, exchange, routing_key, bool(bits & 1), bool(bits & 2), address, header,
                                body)
        return after

    def _on_method_frame(self, channel: int, payload: bytes) -> None:
        if len(payload) < 4:
            raise ProtocolViolation(spec.FRAME_ERROR, "method frame shorter than its class and method ids")
        class_id, method_id = _METHOD_HEAD.unpack_from(payload, 0)
        key = (class_id << 16) | method_id
        if channel in self._content:
            raise ProtocolViolation(spec.UNEXPECTED_FRAME, f"expected content header for class 60, got a "
                                    f"method frame on channel {channel}", class_id, method_id)
        if channel == 0:
            self._on_connection_method(class_id, method_id, key, payload)
            return
        state = self.channels.get(channel)
        if state != CH_OPEN:
            if state == CH_CLOSING:
                if key == _CHANNEL_CLOSE_OK:
                    del self.channels[channel]
                    self._decode(payload, class_id, method_id)
                    self.handler.on_method(channel, spec.METHODS_BY_KEY[key], ())
                elif key == _CHANNEL_CLOSE:
                    self._out.append(codec.method_frame(channel, spec.method("channel.close-ok")))
                elif key == _CHANNEL_OPEN:
                    raise ProtocolViolation(spec.CHANNEL_ERROR, f"second 'channel.open' seen on channel {channel}",
                                            class_id, method_id)
                return  # everything else on a closing channel is discarded
            if self.state is not State.OPEN:
                raise ProtocolViolation(spec.UNEXPECTED_FRAME, f"method frame on channel {channel} while "
                                        f"{self.state.value}", class_id, method_id)
            # RabbitMQ limits the number of open channels to channel_max, not the channel number.
            if self.channel_max and len(self.channels) >= self.channel_max:
                raise ProtocolViolation(spec.NOT_ALLOWED, f"number of channels opened ({len(self.channels)}) has "
                                        f"reached the negotiated channel_max ({self.channel_max})")
            self._decode(payload, class_id, method_id)
            if key != _CHANNEL_OPEN:
                raise ProtocolViolation(spec.CHANNEL_ERROR, f"expected 'channel.open' on channel {channel}",
                                        class_id, method_id)
            self.channels[channel] = CH_OPEN
            self.handler.on_method(channel, spec.METHODS_BY_KEY[key], ("",))
            return
        if key == _PUBLISH_KEY:
            self._start_publish(channel, payload)
            return
        if key == _ACK_KEY and len(payload) == 13:
            tag, bits = _ACK.unpack_from(payload, 4)
            self.handler.on_ack(channel, tag, bool(bits & 1))
            return
        method, args = self._decode(payload, class_id, method_id)
        if method.content or method.key not in _CLIENT_METHODS:
            raise ProtocolViolation(spec.COMMAND_INVALID, f"{method.full_name} cannot be sent by a client",
                                    class_id, method_id)
        if key == _CHANNEL_OPEN:
            raise ProtocolViolation(spec.CHANNEL_ERROR, f"second 'channel.open' seen on channel {channel}",
                                    class_id, method_id)
        if key == _CHANNEL_CLOSE:
            del self.channels[channel]
        self.handler.on_method(channel, method, args)

    def _decode(self, payload: bytes, class_id: int, method_id: int) -> tuple[spec.MethodSpec, tuple[Any, ...]]:
        try:
            return codec.decode_method_payload(payload)
        except CodecError as exc:
            raise ProtocolViolation(exc.reply_code, str(exc), class_id, method_id) from None

    def _on_connection_method(self, class_id: int, method_id: int, key: int, payload: bytes) -> None:
        method, args = self._decode(payload, class_id, method_id)
        next_state = TRANSITIONS.get((self.state, key))
        if next_state is None:
            if self.state is State.CLOSING:
                return  # after we sent close, the client's other methods are discarded
            # RabbitMQ: "unexpected method in connection state ..." (also for non-connection methods on channel 0)
            raise ProtocolViolation(spec.CHANNEL_ERROR, f"unexpected method {method.full_name} on channel 0 while "
                                    f"{self.state.value}", class_id, method_id)
        self.state = next_state
        self.handler.on_method(0, method, args)

    def _start_publish(self, channel: int, payload: bytes) -> None:
        # reserved short, exchange shortstr, routing-key shortstr, bits
        try:
            n = len(payload)
            elen = payload[6]
            rpos = 7 + elen
            rlen = payload[rpos]
            bpos = rpos + 1 + rlen
            if bpos + 1 != n:
                raise IndexError
            address = payload[6:bpos]
            last = self._last_address
            if address == last[0]:  # the same exchange and key as the previous publish: share the objects
                address, exchange, routing_key = last
            else:
                exchange = payload[7:rpos].decode()
                routing_key = payload[rpos + 1 : bpos].decode()
                self._last_address = (address, exchange, routing_key)
            bits = payload[bpos]
        except (IndexError, UnicodeDecodeError):
            raise ProtocolViolation(spec.FRAME_ERROR, "malformed basic.publish arguments",
                                    spec.CLASS_BASIC, 40) from None
        self._content[channel] = _Content((exchange, routing_key, bool(bits & 1), bool(bits & 2)), address)

    def _on_header_frame(self, channel: int, payload: bytes) -> None:
        content = self._content.get(channel)
        if content is None or content.size >= 0:
            if self.channels.get(channel) == CH_CLOSING:
                return
            raise ProtocolViolation(spec.UNEXPECTED_FRAME, f"unexpected content header frame on channel {channel}")
        if len(payload) < 14:
            raise ProtocolViolation(spec.FRAME_ERROR, "content header frame too short")
        class_id, _weight, size = _CONTENT_HEAD.unpack_from(payload, 0)
        if class_id != spec.CLASS_BASIC:
            raise ProtocolViolation(spec.UNEXPECTED_FRAME, f"content header for class {class_id}, expected 60")
        if size > self.max_message_size:
            del self._content[channel]
            self.handler.on_channel_error(channel, ProtocolViolation(
                spec.PRECONDITION_FAILED, f"message size {size} is larger than configured max size "
                f"{self.max_message_size}", spec.CLASS_BASIC, 40))
            return
        if payload == self._last_header:  # the same properties and size as before: share one object
            payload = self._last_header
        else:
            self._last_header = payload
        content.header = payload
        content.size = size
        if size == 0:
            del self._content[channel]
            self._deliver_content(channel, content, b"")

    def _on_body_frame(self, channel: int, payload: bytes) -> None:
        content = self._content.get(channel)
        if content is None or content.size < 0:
            if self.channels.get(channel) == CH_CLOSING:
                return
            raise ProtocolViolation(spec.UNEXPECTED_FRAME, f"unexpected content body frame on channel {channel}")
        content.received += len(payload)
        if content.received >= content.size:
            if content.received > content.size:
                raise ProtocolViolation(spec.FRAME_ERROR, f"content body longer than the {content.size} bytes "
                                        "its header announced")
            del self._content[channel]
            if content.parts:
                content.parts.append(payload)
                payload = b"".join(content.parts)
            self._deliver_content(channel, content, payload)
        else:
            content.parts.append(payload)

    def _deliver_content(self, channel: int, content: _Content, body: bytes) -> None:
        exchange, routing_key, mandatory, immediate = content.args
        self.handler.on_publish(channel, exchange, routing_key, mandatory, immediate, content.address,
                                content.header, body)

    # --- output ------------------------------------------------------------------------------------

    def send_method(self, channel: int, method: spec.MethodSpec, args: tuple[Any, ...] | list[Any] = ()) -> None:
        self._out.append(codec.method_frame(channel, method, args))

    def send_content(self, channel: int, method: spec.MethodSpec, args: tuple[Any, ...], header: bytes,
                     body: bytes) -> None:
        """A content-carrying method (get-ok, return, deliver) with the header payload as received."""
        out = self._out
        out.append(codec.method_frame(channel, method, args))
        self._append_content(channel, header, body)

    def send_deliver(self, channel: int, consumer_tag: bytes, delivery_tag: int, redelivered: bool,
                     address: bytes, header: bytes, body: bytes) -> None:
        """basic.deliver fast path: ``consumer_tag`` and ``address`` are already short-string encoded."""
        pack = _FRAME_HEAD.pack
        size = len(body)
        if 0 < size <= self.frame_max - 8:  # the usual case: the three frames as one bytes object, one join
            self._out.append(b"".join((
                pack(1, channel, 13 + len(consumer_tag) + len(address)), _DELIVER_HEAD, consumer_tag,
                _QB.pack(delivery_tag, redelivered), address, b"\xce",
                pack(2, channel, len(header)), header, b"\xce", pack(3, channel, size), body, b"\xce")))
            return
        payload = b"".join((_DELIVER_HEAD, consumer_tag, _Q.pack(delivery_tag), b"\x01" if redelivered else b"\x00",
                            address))
        self._out.append(pack(1, channel, len(payload)) + payload + b"\xce")
        self._append_content(channel, header, body)

    def _append_content(self, channel: int, header: bytes, body: bytes) -> None:
        out = self._out
        pack = _FRAME_HEAD.pack
        out.append(pack(2, channel, len(header)) + header + b"\xce")
        size = len(body)
        if not size:
            return
        chunk = self.frame_max - 8
        if size <= chunk:
            out.append(pack(3, channel, size) + body + b"\xce")
            return
        for start in range(0, size, chunk):
            part = body[start : start + chunk]
            out.append(pack(3, channel, len(part)) + part + b"\xce")

    def send_heartbeat(self) -> None:
        self._out.append(codec.HEARTBEAT_FRAME)

    def close_channel(self, channel: int, reply_code: int, reply_text: str, class_id: int = 0,
                      method_id: int = 0) -> None:
        """Send channel.close; the channel then discards all but close/close-ok until the client's close-ok."""
        self._content.pop(channel, None)
        self.channels[channel] = CH_CLOSING
        self.send_method(channel, spec.method("channel.close"), (reply_code, _clip(reply_text), class_id, method_id))

    def close(self, reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Send connection.close; only close-ok (or close) is accepted afterwards."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        self.state = State.CLOSING
        self.send_method(0, spec.method("connection.close"), (reply_code, _clip(reply_text), class_id, method_id))

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call, in order."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def has_output(self) -> bool:
        return bool(self._out)


def _clip(text: str) -> str:
    """A reply text cut to a short string's 255 bytes of UTF-8 (not characters), at a character boundary; a
    character UTF-8 cannot encode (a lone surrogate from undecodable input) becomes '?'."""
    return text.encode(errors="replace")[:255].decode(errors="ignore")


_CLIENT_METHODS = frozenset(
    spec.method(name).key
    for name in (
        "channel.open", "channel.flow", "channel.close",  # close-ok only answers our close (CH_CLOSING)
        "exchange.declare", "exchange.delete", "exchange.bind", "exchange.unbind",
        "queue.declare", "queue.bind", "queue.purge", "queue.delete", "queue.unbind",
        "basic.qos", "basic.consume", "basic.cancel", "basic.get", "basic.ack", "basic.reject",
        "basic.recover-async", "basic.recover", "basic.nack",
        "confirm.select", "tx.select", "tx.commit", "tx.rollback",
    )
)
