#!/usr/bin/env python3
"""The AMQP codec's per-message cost, without sockets: publishes parsed and deliveries encoded.

Feeds a :class:`~leveret.amqp.connection.ServerConnection` (open, channel 1 open, a handler that only counts)
chunks of 200 complete ``basic.publish`` messages (method, header and one body frame each), then encodes as many
``basic.deliver`` with ``send_deliver``. Prints the best of 5 runs per body size, in microseconds per message.

    python bench/codec_micro.py
"""

from __future__ import annotations

import time
from typing import Any

from leveret.amqp import connection as amqp

N = 200_000
CHUNK = 200


class CountingHandler:
    def __init__(self) -> None:
        self.published = 0

    def on_publish(self, *args: Any) -> None:
        self.published += 1

    def on_ack(self, *args: Any) -> None:
        pass

    def on_method(self, *args: Any) -> None:
        pass

    def on_protocol_header(self) -> None:
        pass


def publish_frames(size: int) -> tuple[bytes, bytes, bytes]:
    """One publish to the default exchange with routing key ``bench-q``, delivery_mode 2: its frames, its
    content header payload and its body."""
    exchange, key = b"", b"bench-q"
    method = b"\x00\x3c\x00\x28\x00\x00" + bytes([len(exchange)]) + exchange + bytes([len(key)]) + key + b"\x00"
    header = b"\x00\x3c\x00\x00" + size.to_bytes(8, "big") + b"\x10\x00" + b"\x02"
    body = b"x" * size
    frame = amqp._FRAME_HEAD.pack
    frames = (frame(1, 1, len(method)) + method + b"\xce" + frame(2, 1, len(header)) + header + b"\xce"
              + frame(3, 1, size) + body + b"\xce")
    return frames, header, body


def run(size: int) -> tuple[float, float]:
    handler = CountingHandler()
    conn = amqp.ServerConnection(handler)  # type: ignore[arg-type]
    conn.state = amqp.State.OPEN
    conn.channels[1] = amqp.CH_OPEN
    one, header, body = publish_frames(size)
    chunk = one * CHUNK
    started = time.perf_counter()
    for _ in range(N // CHUNK):
        conn.receive_data(chunk)
    parse = (time.perf_counter() - started) / N * 1e6
    assert handler.published == N, handler.published
    tag, address = b"\x05ctag1", b"\x00\x07bench-q"
    started = time.perf_counter()
    for i in range(N):
        conn.send_deliver(1, tag, i, False, address, header, body)
        if i % CHUNK == 0:
            conn.data_to_send()
    deliver = (time.perf_counter() - started) / N * 1e6
    return parse, deliver


def main() -> None:
    for size in (16, 1024):
        runs = [run(size) for _ in range(5)]
        parse = min(r[0] for r in runs)
        deliver = min(r[1] for r in runs)
        print(f"body {size} B: publish parsed {parse:.3f} us, basic.deliver encoded {deliver:.3f} us")


if __name__ == "__main__":
    main()
