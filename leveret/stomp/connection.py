"""One STOMP connection's bytes, sans-IO: bytes in -> :class:`~leveret.stomp.frames.Frame` objects; frames out
-> bytes.

``StompConnection.receive_data(bytes)`` returns every complete frame of the buffer (and keeps the tail for the
next call). Between frames any number of end-of-lines (``\\n`` or ``\\r\\n``) are heart-beats and skipped. A body
is read by ``content-length`` when the frame has one (and must then be followed by NUL), else up to the first
NUL. Input that is not STOMP, or breaks a limit (header section, header count, body size), sets ``error`` (a
:class:`~leveret.stomp.frames.FrameError`) once, after the frames that came before it in the input; the connection
then reads nothing more. ``version`` (set by the
adapter after CONNECT) picks the header escaping; output is queued by :meth:`send` / :meth:`send_heartbeat` and
collected with :meth:`data_to_send`. No sockets, no clock.
"""

from __future__ import annotations

from .frames import UNESCAPED_COMMANDS, Frame, FrameError, serialize, unescape

MAX_HEADER_BYTES = 64 * 1024  # a frame's command and header lines together
MAX_HEADERS = 1000
MAX_BODY = 128 * 1024 * 1024


class StompConnection:
    """The parser and writer of one connection. ``version`` is "1.2" until the adapter negotiates another."""

    def __init__(self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_headers: int = MAX_HEADERS,
                 max_body: int = MAX_BODY) -> None:
        self.version = "1.2"
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body
        self.failed = False
        self.error: FrameError | None = None  # why the input stopped being read, once it has
        self._buf = bytearray()
        self._out: list[bytes] = []
        # a frame whose headers are parsed and whose body is not complete yet: the frame, where its body starts in
        # the buffer, its content-length (None: up to NUL) and how far the buffer was searched for the NUL
        self._pending: tuple[Frame, int, int | None, int] | None = None

    # --- input -------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data``. On input that is not STOMP, the frames before it and ``error`` set
        (once; afterwards the connection ignores its input and returns no frames)."""
        if self.failed:
            return []
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        try:
            while True:
                if self._pending is None:
                    n = len(buf)
                    while pos < n and buf[pos] in (10, 13):  # heart-beats, and the EOLs after a frame's NUL
                        pos += 1
                    if pos >= n or not self._parse_head(buf, pos):
                        break
                end = self._body_end()
                if end < 0:
                    break
                frame, start, _, _ = self._pending  # type: ignore[misc]
                frame.body = bytes(buf[start:end])
                frames.append(frame)
                self._pending = None
                pos = end + 1
        except FrameError as exc:
            self.failed = True
            self.error = exc
            self._buf = bytearray()
            self._pending = None
            return frames
        if pos:
            del buf[:pos]
            if self._pending is not None:
                frame, start, length, scanned = self._pending
                self._pending = (frame, start - pos, length, scanned - pos)
        return frames

    def _parse_head(self, buf: bytearray, pos: int) -> bool:
        """Parse the command and headers of the frame at ``pos`` into ``_pending``; False when they are not all
        in the buffer yet."""
        # the first empty line ends the headers; both searches stop where it could be at most, so that a read
        # of many frames is not searched to its end once per frame
        limit = min(len(buf), pos + self.max_header_bytes + 3)
        lf = buf.find(b"\n\n", pos, limit)
        crlf = buf.find(b"\n\r\n", pos, lf + 1 if lf >= 0 else limit)
        ends = [i for i in (lf, crlf) if i >= 0]
        if not ends:
            if len(buf) - pos > self.max_header_bytes:
                raise FrameError("Headers too large", f"the frame's command and headers exceed "
                                                      f"{self.max_header_bytes} bytes")
            return False
        end = min(ends)
        if end - pos > self.max_header_bytes:
            raise FrameError("Headers too large", f"the frame's command and headers exceed {self.max_header_bytes} "
                                                  "bytes")
        body_start = end + (2 if buf[end + 1] == 10 else 3)
        try:
            text = buf[pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("Malformed frame", "the command and headers are not UTF-8") from None
        lines = text.split("\n")
        command = lines[0].rstrip("\r")
        if len(lines) - 1 > self.max_headers:
            raise FrameError("Too many headers", f"a frame may have at most {self.max_headers} headers")
        version = "1.0" if command in UNESCAPED_COMMANDS else self.version
        # STOMP 1.0 defines no escapes, but RabbitMQ's plugin unescapes a 1.0 client's headers as 1.2's (and an
        # undefined escape is an error), and 1.0 clients that escape rely on it: so does Leveret
        escapes = "1.2" if version == "1.0" and command not in UNESCAPED_COMMANDS else version
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line.endswith("\r"):
                line = line[:-1]
            name, colon, value = line.partition(":")
            if not colon:
                raise FrameError("Malformed header", f"header line '{line[:80]}' has no ':'")
            if version == "1.0":
                value = value.lstrip()  # as RabbitMQ trims STOMP 1.0 header values
            headers.append((unescape(name, escapes), unescape(value, escapes)))
        frame = Frame(command, headers)
        length: int | None = None
        declared = frame.get("content-length")
        if declared is not None:
            declared = declared.strip()
            if not declared.isdigit():
                raise FrameError("Invalid content-length", f"content-length '{declared[:40]}' is not a "
                                                           "non-negative integer")
            length = int(declared)
            if length > self.max_body:
                raise FrameError("Frame too large", f"content-length {length} is over the limit of {self.max_body} "
                                                    "bytes")
        self._pending = (frame, body_start, length, body_start)
        return True

    def _body_end(self) -> int:
        """Where the pending frame's body ends (its NUL), or -1 when that is not in the buffer yet."""
        frame, start, length, scanned = self._pending  # type: ignore[misc]
        buf = self._buf
        if length is not None:
            end = start + length
            if len(buf) <= end:
                return -1
            if buf[end] != 0:
                raise FrameError("Malformed frame", f"the body of {frame.command} (content-length {length}) is not "
                                                    "followed by NUL")
            return end
        end = buf.find(b"\x00", scanned)
        if end < 0:
            if len(buf) - start > self.max_body:
                raise FrameError("Frame too large", f"the body of {frame.command} is over the limit of "
                                                    f"{self.max_body} bytes")
            self._pending = (frame, start, None, len(buf))
            return -1
        return end

    # --- output ------------------------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Queue ``frame``, escaped for ``version``; for 1.0, which defines no escaping, with 1.1's escapes, as
        RabbitMQ writes frames: a newline in a header value (an AMQP header, say) would otherwise end the line."""
        self._out.append(serialize(frame, "1.1" if self.version == "1.0" else self.version))

    def send_heartbeat(self) -> None:
        self._out.append(b"\n")

    def data_to_send(self) -> bytes:
        """Everything queued since the last call."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data
