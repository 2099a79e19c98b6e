"""A raw STOMP 1.0/1.1/1.2 client for tests that must see the wire exactly: frames as the broker sent them
(header lines still escaped, in their order, repeated ones kept), bodies byte for byte, and whether the broker
closed the connection. Client libraries (stomp.py, PHP's stomp extension) hide all of that; the differential
STOMP tests compare exactly that with RabbitMQ's STOMP plugin.

- ``StompWire(port)``: a socket to a STOMP listener; ``send(command, headers, body)`` escapes header values for
  the version given to ``connect`` (none for 1.0, and never on CONNECT), ``send_raw(data)`` sends bytes as they
  are (malformed frames); ``recv(timeout)`` returns the next ``Frame``, or None when nothing came in ``timeout``
  seconds, and raises ``Closed`` when the broker closed the connection (heart-beat EOLs are skipped).
- ``escape`` / ``unescape``: the header escaping of STOMP 1.1 (``\\\\ \\n \\c``) and 1.2 (also ``\\r``).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

NUL = b"\x00"


class Closed(Exception):
    """The broker closed the connection (what it had sent before is in ``Frame``s already returned)."""


_ESCAPES_11 = [("\\", "\\\\"), ("\n", "\\n"), (":", "\\c")]
_ESCAPES_12 = [*_ESCAPES_11, ("\r", "\\r")]


def escape(value: str, version: str) -> str:
    if version == "1.0":
        return value
    for plain, escaped in _ESCAPES_12 if version == "1.2" else _ESCAPES_11:
        value = value.replace(plain, escaped)
    return value


def unescape(value: str, version: str) -> str:
    """The header value a 1.1/1.2 client reads (ValueError on an undefined escape sequence)."""
    if version == "1.0":
        return value
    table = {"\\": "\\", "n": "\n", "c": ":"} | ({"r": "\r"} if version == "1.2" else {})
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        nxt = next(chars, "")
        if nxt not in table:
            raise ValueError(f"undefined escape \\{nxt} in {value!r}")
        out.append(table[nxt])
    return "".join(out)


@dataclass
class Frame:
    command: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # raw (escaped) header lines, in order
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (STOMP: the first of repeated headers wins), still escaped."""
        for key, value in self.headers:
            if key == name:
                return value
        return default


class StompWire:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        self.version = "1.0"
        self.closed = False
        self.heartbeats = 0  # EOLs received between frames

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    # --- sending -----------------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:  # the broker may have closed already (after an ERROR)
            raise Closed(str(exc)) from exc

    def encode(self, command: str, headers: list[tuple[str, str]] | dict[str, str] | None = None,
               body: bytes = b"") -> bytes:
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        version = "1.0" if command in ("CONNECT", "STOMP") else self.version
        lines = [command] + [f"{escape(k, version)}:{escape(v, version)}" for k, v in items]
        return ("\n".join(lines) + "\n\n").encode() + body + NUL

    def send(self, command: str, headers: list[tuple[str, str]] | dict[str, str] | None = None,
             body: bytes = b"") -> None:
        self.send_raw(self.encode(command, headers, body))

    def connect(self, headers: dict[str, str] | None = None, *, command: str = "CONNECT",
                timeout: float = 3.0) -> Frame | None:
        """CONNECT with ``headers`` (default: 1.2 as guest on "/"); the reply. Sets the escaping version."""
        if headers is None:
            headers = {"accept-version": "1.2", "host": "/", "login": "guest", "passcode": "guest"}
        self.send(command, headers)
        reply = self.recv(timeout)
        if reply is not None and reply.command == "CONNECTED":
            self.version = reply.get("version", "1.0") or "1.0"
        return reply

    # --- receiving ---------------------------------------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at the deadline; Closed when the peer closed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError as exc:
            self.closed = True
            raise Closed(str(exc)) from exc
        if not data:
            self.closed = True
            raise Closed("connection closed by the broker")
        self.buffer += data
        return True

    def recv(self, timeout: float = 3.0) -> Frame | None:
        """The next frame, or None if none arrived within ``timeout`` seconds; Closed if the broker closed."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            if not self._fill(deadline):
                return None

    def _parse(self) -> Frame | None:
        buf = self.buffer.lstrip(b"\r\n")  # heart-beats
        self.heartbeats += self.buffer[: len(self.buffer) - len(buf)].count(b"\n")
        self.buffer = buf
        end_of_headers = buf.find(b"\n\n")
        crlf = buf.find(b"\r\n\r\n")
        if end_of_headers < 0 and crlf < 0:
            return None
        if crlf >= 0 and (end_of_headers < 0 or crlf < end_of_headers):
            head, start = buf[:crlf].replace(b"\r\n", b"\n"), crlf + 4
        else:
            head, start = buf[:end_of_headers].replace(b"\r\n", b"\n"), end_of_headers + 2
        lines = head.decode("utf-8", "replace").split("\n")
        headers = []
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers.append((key, value))
        frame = Frame(lines[0], headers)
        length = frame.get("content-length")
        if length is not None and length.isdigit():
            stop = start + int(length)
            if len(buf) < stop + 1:
                return None
            frame.body = buf[start:stop]
            rest = buf[stop + 1 :]
        else:
            nul = buf.find(NUL, start)
            if nul < 0:
                return None
            frame.body = buf[start:nul]
            rest = buf[nul + 1 :]
        self.buffer = rest
        return frame
