"""``leveret tap EXCHANGE [PATTERN]``: a live wire tap on an exchange, built on the firehose tracer.

It switches tracing on in the vhost through the control socket (if it was off), consumes from an exclusive
queue bound to ``amq.rabbitmq.trace`` with ``publish.<EXCHANGE>``, keeps the messages whose routing key matches
PATTERN (topic-style: ``*`` one word, ``#`` any number), and prints one line per message, or writes JSON lines
with ``--output``. When it leaves it switches tracing off again if it switched it on and nothing else is
bound to the trace exchange. The tapped messages' own routing is not changed (see leveret/core/tracing.py).
It imports nothing of the broker; aio-pika is loaded when the tap starts.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import signal
import sys
import urllib.parse
from functools import lru_cache
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from leveret.ctl import CtlError, call, data_dir_of
from leveret.terminal import configure_logging, error

if TYPE_CHECKING:
    import aio_pika.abc

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
TRACE_EXCHANGE = "amq.rabbitmq.trace"  # RabbitMQ's firehose exchange (leveret/core/tracing.py publishes to it)


def add_tap(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tap = subparsers.add_parser(
        "tap", help="print the messages passing through an exchange (a wire tap)",
        description="Print the messages published to EXCHANGE whose routing key matches PATTERN, as they pass, "
                    "without changing where they go. Uses the firehose tracer (amq.rabbitmq.trace): switches "
                    "tracing on in the vhost if it is off, and off again on exit.")
    tap.add_argument("exchange", help="the exchange to tap ('' or amq.default for the default exchange)")
    tap.add_argument("pattern", nargs="?", default="#", help="topic pattern on the routing key (default #: all)")
    tap.add_argument("--vhost", "-p", default="/", help="the vhost (default /)")
    tap.add_argument("--url", help=f"broker URL for the tap's connection (default $LEVERET_URL or {DEFAULT_URL}); "
                                   "its vhost is replaced by --vhost")
    tap.add_argument("--data-dir", metavar="DIR", help="the broker's data directory, for its control socket "
                                                       "(default ./leveret-data)")
    tap.add_argument("--output", "-o", metavar="FILE", help="append JSON lines to FILE instead of printing")
    tap.add_argument("--count", "-n", type=int, metavar="N", help="stop after N messages")
    tap.add_argument("--body", type=int, default=80, metavar="BYTES", help="body preview length (default 80)")
    tap.set_defaults(handler=run_tap)


class TopicFilter:
    """PATTERN matched against routing keys with the topic exchange's rules: dot-separated words, ``*`` exactly
    one word, ``#`` zero or more; words may be empty ("a..b" is a, "", b) and the key "" has no words."""

    def __init__(self, pattern: str) -> None:
        self.match_all = pattern == "#"
        self.pattern = tuple(_words(pattern))

    def matches(self, keys: list[str]) -> bool:
        return self.match_all or any(_match(self.pattern, tuple(_words(key))) for key in keys)


def _words(key: str) -> list[str]:
    return key.split(".") if key else []


@lru_cache(maxsize=4096)  # bounded: a long tap sees many keys; '#' would otherwise backtrack
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[skip:]) for skip in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])


def tap_url(url: str, vhost: str) -> str:
    """``url`` with its vhost replaced by ``vhost`` (quoted, as AMQP URLs write it)."""
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    return f"{scheme}{sep}{authority}/{quote(vhost, safe='')}"


def record(message_headers: dict[str, Any], body: bytes) -> dict[str, Any]:
    """One tapped message as a JSON-able dict, from a firehose message's headers and body."""
    try:
        text, encoding = body.decode(), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode(), "base64"
    keys = [str(k) for k in message_headers.get("routing_keys") or []]
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "vhost": message_headers.get("vhost"), "exchange": message_headers.get("exchange_name", ""),
        "routing_key": keys[0] if keys else "", "routing_keys": keys,
        "routed_queues": [str(q) for q in message_headers.get("routed_queues") or []],
        "properties": message_headers.get("properties") or {},
        "connection": message_headers.get("connection"), "channel": message_headers.get("channel"),
        "user": message_headers.get("user"), "body": text, "body_encoding": encoding, "body_size": len(body),
    }


def line(item: dict[str, Any], body_bytes: int) -> str:
    """One readable line: time, exchange, routing key, where it went, properties, body preview."""
    routed = item["routed_queues"]
    where = f"-> {','.join(routed)}" if routed else "-> (unroutable)"
    props = " ".join(f"{k}={_short(v)}" for k, v in item["properties"].items())
    body = item["body"] if item["body_encoding"] == "utf-8" else f"base64:{item['body']}"
    preview = body[:body_bytes] + ("..." if len(body) > body_bytes else "")
    exchange = item["exchange"] or "(default)"
    return (f"{item['time']} {exchange} {item['routing_key']!r} {where}" + (f" [{props}]" if props else "")
            + f" {item['body_size']} B {preview!r}")


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return json.dumps(value, default=str, separators=(",", ":")) if not isinstance(value, str) else value


async def _tap(args: argparse.Namespace, url: str, out: IO[str]) -> int:
    import asyncio

    from leveret.aioconnect import open_connection

    exchange = "" if args.exchange == "amq.default" else args.exchange
    keep = TopicFilter(args.pattern)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    seen = 0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen
        if stop.is_set():
            return
        item = record(dict(message.headers or {}), message.body)
        if not keep.matches(item["routing_keys"]):
            return
        if args.output:
            out.write(json.dumps(item, default=str) + "\n")
        else:
            out.write(line(item, args.body) + "\n")
        out.flush()
        seen += 1
        if args.count is not None and seen >= args.count:
            stop.set()

    connection = await open_connection(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(TRACE_EXCHANGE, "publish." + exchange)
        await queue.consume(on_message, no_ack=True)
        print(f"tapping exchange '{exchange}' in vhost '{args.vhost}' (routing keys matching '{args.pattern}'); "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
        await stop.wait()
    return 0


def _without_password(url: str) -> str:
    """The URL to show in a message: its password replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def run_tap(args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: `leveret --help` and `leveret ctl` load this module's parser only

    configure_logging("critical")  # the one-line errors below say it all
    data_dir = data_dir_of(args)
    url = tap_url(args.url or os.environ.get("LEVERET_URL") or DEFAULT_URL, args.vhost)
    try:  # the output first: a file that cannot be written must not leave tracing on
        out: IO[str] = open(args.output, "a") if args.output else sys.stdout  # noqa: SIM115
    except OSError as exc:
        error(f"cannot write {args.output}: {exc.strerror or exc}")
        return 1
    try:
        was_on = call(data_dir, "trace_on", {"vhost": args.vhost})["was_on"]
    except CtlError as exc:
        if out is not sys.stdout:
            out.close()
        error(str(exc))
        return 1
    try:
        return asyncio.run(_tap(args, url, out))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        error(f"cannot reach the broker at {_without_password(url)}: {exc}")
        return 1
    except Exception as exc:  # the broker refused: a channel or connection error from aio-pika
        error(f"tap failed: {exc}")
        return 1
    finally:
        if out is not sys.stdout:
            out.close()
        if not was_on:
            with contextlib.suppress(CtlError):
                call(data_dir, "trace_off", {"vhost": args.vhost, "if_unused": True})
