"""A minimal blocking AMQP client over a raw socket, for tests that must send what real clients never send
(malformed frames, silence instead of heartbeats) or read exactly what the server answers.

It uses Leveret's own codec to encode and decode; what it checks is the server's behaviour, so the same
script runs against RabbitMQ for comparison.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from leveret.amqp import codec, spec


class RawClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.frame_max = 131072

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_method(self, channel: int, name: str, *args: Any) -> None:
        self.send(codec.method_frame(channel, spec.method(name), args))

    def recv_frame(self, timeout: float | None = None) -> tuple[int, int, bytes] | None:
        """The next frame (type, channel, payload), or None when the server closed the socket."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 7:
                ftype, channel, size = struct.unpack_from(">BHI", self.buf)
                if len(self.buf) >= 8 + size:
                    payload = self.buf[7 : 7 + size]
                    self.buf = self.buf[8 + size :]
                    return ftype, channel, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def recv_method(self, timeout: float | None = None) -> tuple[int, str, tuple[Any, ...]] | None:
        """The next method frame as (channel, "class.method", args), skipping heartbeats and content."""
        while True:
            frame = self.recv_frame(timeout)
            if frame is None:
                return None
            ftype, channel, payload = frame
            if ftype == spec.FRAME_METHOD:
                method, args = codec.decode_method_payload(payload)
                return channel, method.full_name, args

    def handshake(self, user: str = "guest", password: str = "guest", vhost: str = "/", heartbeat: int = 0,
                  capabilities: dict[str, Any] | None = None) -> None:
        self.send(spec.PROTOCOL_HEADER)
        start = self.recv_method()
        assert start is not None and start[1] == "connection.start", start
        props = {"capabilities": capabilities if capabilities is not None else {
            "authentication_failure_close": True, "consumer_cancel_notify": True, "connection.blocked": True,
            "publisher_confirms": True, "basic.nack": True}}
        self.send_method(0, "connection.start-ok", props, "PLAIN", f"\0{user}\0{password}".encode(), "en_US")
        tune = self.recv_method()
        assert tune is not None and tune[1] == "connection.tune", tune
        self.send_method(0, "connection.tune-ok", tune[2][0], tune[2][1], heartbeat)
        self.send_method(0, "connection.open", vhost, "", False)
        opened = self.recv_method()
        assert opened is not None and opened[1] == "connection.open-ok", opened

    def open_channel(self, channel: int = 1) -> None:
        self.send_method(channel, "channel.open", "")
        reply = self.recv_method()
        assert reply is not None and reply[1] == "channel.open-ok", reply

    def publish(self, channel: int, exchange: str, routing_key: str, body: bytes,
                properties: dict[str, Any] | None = None) -> None:
        frames = [codec.method_frame(channel, spec.method("basic.publish"), (0, exchange, routing_key, False, False))]
        frames += codec.content_frames(channel, codec.encode_properties(properties or {}), body, self.frame_max)
        self.send(b"".join(frames))

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the socket within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.recv_frame(max(0.01, deadline - time.monotonic())) is None:
                    return True
            except TimeoutError:
                return False
            except OSError:
                return True
        return False
