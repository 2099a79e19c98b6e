"""Where the forwarder sends: broker specs (``[NAME=]URL``) parsed into destinations, URLs shown without their
password, errors described in one line, and a :class:`Destination`'s state (connection, counters, what is
confirmed but not yet deleted)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from leveret.aioconnect import broker_urls
from leveret.outbox.message import DEFAULT_DESTINATION

log = logging.getLogger("leveret.outbox.forwarder")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def parse_brokers(specs: Sequence[str] | Mapping[str, str | Sequence[str]]) -> dict[str, list[str]]:
    """``["amqp://a/", "eu=amqp://b/", "eu=amqp://c/"]`` -> ``{"default": ["amqp://a/"], "eu": [b, c]}``: a
    destination name and the URLs of its broker(s), tried in turn (failover, not multicast). A URL may also be a
    list of them separated by commas (``eu=amqp://b/,amqp://c/``), as may a mapping's value."""
    out: dict[str, list[str]] = {}
    if isinstance(specs, Mapping):
        for name, urls in specs.items():
            out[name] = broker_urls(urls) if urls else []
    else:
        for item in specs:
            name, sep, url = item.partition("=")
            if not sep or "://" in name or not name:
                name, url = DEFAULT_DESTINATION, item
            out.setdefault(name, []).extend(broker_urls(url) if url else [])
    for name, urls in out.items():
        if not urls or not all(u.startswith(("amqp://", "amqps://", "http://", "https://", "stomp://")) for u in urls):
            raise ValueError(f"destination {name!r}: broker URLs must start with amqp://, amqps:// (AMQP), "
                             "http://, https:// (the management API's publish) or stomp:// (STOMP)")
    if not out:
        raise ValueError("no broker to forward to")
    return out


def safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


class Destination:
    def __init__(self, name: str, urls: list[str]) -> None:
        self.name = name
        self.urls = urls
        self.url: str | None = None  # connected to
        self.error: str | None = None
        self.down_since: float | None = None
        self.retry_at: float | None = None
        self.forwarded = 0
        self.parked = 0
        self.reported = 0
        self.careful_until = 0  # after a channel error, messages up to this id are sent one at a time
        self.proven: set[str] = set()  # exchanges that confirmed a message in the current session
        self.alone = 0  # the last message sent alone (the first to its exchange in a session)
        # Settled by the broker but not yet written to the outbox (a local write failed, e.g. disk full): kept
        # here and committed again with a back-off, on the same connection; nothing is fetched meanwhile, so a
        # confirmed message is never sent again because of a local error.
        self.confirmed: list[int] = []
        self.to_park: list[tuple[int, str]] = []
        self.local_error: str | None = None
        self.local_failures = 0
        self.local_retry_at = 0.0  # monotonic


def log_status(destinations: Sequence[Destination], status: Mapping[str, Mapping[str, Any]]) -> None:
    """The forwarder's periodic report: one line per destination from the outbox's ``status()``, and a warning
    for messages addressed to a destination no ``--broker`` names."""
    for dest in destinations:
        info = status.get(dest.name, {})
        link = (f"connected to {safe_url(dest.url)}" if dest.url else
                f"broker down ({dest.error})" if dest.error else "connecting")
        age = info.get("oldest_age")
        log.info("%s: %d pending%s, %d parked, %d forwarded (+%d); %s", dest.name, info.get("pending", 0),
                 f" (oldest {age:.1f} s)" if age is not None else "", info.get("parked", 0), dest.forwarded,
                 dest.forwarded - dest.reported, link)
        dest.reported = dest.forwarded
    known = {d.name for d in destinations}
    for name, info in status.items():
        if name not in known:
            log.warning("%s: %d message(s) for this destination, which this forwarder has no --broker for "
                        "(add --broker %s=URL)", name, info["pending"] + info["parked"], name)
