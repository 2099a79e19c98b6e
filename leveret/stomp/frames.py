"""STOMP frames: the :class:`Frame` record, header escaping per protocol version, and serialising a frame.

A frame is a command, an ordered list of headers and a body. Header names and values are text (UTF-8 on the
wire); where a header is repeated the first one counts (STOMP 1.2, and RabbitMQ for every version), which is
what :meth:`Frame.get` answers. Escaping (STOMP 1.1: ``\\n`` ``\\c`` ``\\\\``; 1.2 adds ``\\r``; 1.0: none)
applies to every frame but CONNECT and CONNECTED, whose headers are never escaped (STOMP 1.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

VERSIONS = ("1.0", "1.1", "1.2")

CLIENT_COMMANDS = frozenset({"CONNECT", "STOMP", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "BEGIN",
                             "COMMIT", "ABORT", "DISCONNECT"})
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
UNESCAPED_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})

_ESCAPES = {
    "1.0": {},
    "1.1": {"\\": "\\\\", "\n": "\\n", ":": "\\c"},
    "1.2": {"\\": "\\\\", "\n": "\\n", ":": "\\c", "\r": "\\r"},
}
_UNESCAPES = {version: {escaped[1]: char for char, escaped in table.items()} for version, table in _ESCAPES.items()}
_ESCAPE_TABLES = {version: str.maketrans(table) for version, table in _ESCAPES.items()}


class FrameError(Exception):
    """Input that is not a STOMP frame (or breaks a limit): ``message`` is the ERROR frame's ``message`` header
    and ``detail`` its body. The connection cannot be read any further."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(f"{message}: {detail}")
        self.message = message
        self.detail = detail


@dataclass
class Frame:
    """One STOMP frame: ``headers`` in wire order (repeats kept; the first counts), ``body`` as bytes."""

    command: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name``, or ``default``."""
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.headers)


def escape(text: str, version: str) -> str:
    """A header name or value as written in a frame of ``version``."""
    return text.translate(_ESCAPE_TABLES[version]) if version != "1.0" else text


def unescape(text: str, version: str) -> str:
    """The header text of a received frame of ``version``; an escape the version does not define is a
    :class:`FrameError` (STOMP 1.1 and 1.2 say it MUST be treated as a fatal protocol error)."""
    if version == "1.0" or "\\" not in text:
        return text
    table = _UNESCAPES[version]
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        if i + 1 >= n or text[i + 1] not in table:
            bad = text[i:i + 2]
            raise FrameError("Bad header escape", f"'{bad}' is not a valid escape sequence in STOMP {version} "
                                                  f"(valid: {', '.join(sorted(_ESCAPES[version].values()))})")
        out.append(table[text[i + 1]])
        i += 2
    return "".join(out)


def serialize(frame: Frame, version: str, trailing_eol: bool = True) -> bytes:
    """The bytes of ``frame`` in ``version``: a ``content-length`` header is added for a non-empty body (any
    given one is replaced), and a newline follows the NUL, as RabbitMQ writes frames."""
    esc = version if frame.command not in UNESCAPED_COMMANDS else "1.0"
    lines = [frame.command]
    for name, value in frame.headers:
        if name == "content-length":
            continue
        lines.append(f"{escape(name, esc)}:{escape(value, esc)}")
    if frame.body:
        lines.append(f"content-length:{len(frame.body)}")
    head = ("\n".join(lines) + "\n\n").encode()
    return head + frame.body + (b"\x00\n" if trailing_eol else b"\x00")
