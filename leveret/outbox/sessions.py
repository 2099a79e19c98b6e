"""The forwarder's sessions on its other transports (the AMQP one is ``Forwarder._session``): HTTP, one publish
at a time (http_transport.py), and STOMP, pipelined SENDs settled by their receipts (stomp_transport.py). Each
runs one connection's life for one destination with the forwarder's own bookkeeping (``settle``, parking,
back-off, shrinking), and returns on a stop or raises to end the session (the forwarder reconnects)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from leveret.outbox.destinations import Destination, describe
from leveret.outbox.frames import Outgoing
from leveret.outbox.http_transport import HttpNacked, HttpTarget, json_properties
from leveret.outbox.message import OutboxError, OutboxMessage
from leveret.outbox.stomp_transport import StompOutage, StompRefused, StompTarget, send_frame

if TYPE_CHECKING:
    from leveret.outbox.forwarder import Forwarder

log = logging.getLogger("leveret.outbox.forwarder")


class LeaseRenewal:
    """A session's hold on the rows it has in flight in a shared (PostgreSQL) outbox: their leases are renewed
    every third of the lease, so that no other forwarder takes them while their confirm or RECEIPT is awaited.
    Every transport's session keeps one (a private outbox has no leases: ``renew`` does nothing)."""

    def __init__(self, outbox: Any) -> None:
        self.lease: float | None = getattr(outbox, "lease", None) if outbox.shared else None
        self.due = time.monotonic() + self.lease / 3 if self.lease else float("inf")

    async def renew(self, fw: Forwarder, dest: Destination, ids: list[int]) -> None:
        now = time.monotonic()
        if self.lease is None or now < self.due:
            return
        self.due = now + self.lease / 3
        if ids:
            assert fw.outbox is not None
            try:
                await fw.outbox.renew_async(dest.name, ids)
            except OutboxError as exc:
                log.warning("%s: could not renew the leases in %s: %s", dest.name, fw.where, describe(exc))


class Nacked(Exception):
    """The broker refused a message for now: the session ends and it is sent again after a back-off."""



async def http_session(fw: Forwarder, dest: Destination, target: HttpTarget) -> None:
    """The HTTP transport: one publish at a time, in id order; settled as http_transport.py says."""
    assert fw.stop_event is not None and fw.outbox is not None
    outbox = fw.outbox
    cursor = 0
    next_revive = 0.0
    while True:
        held = not await fw.settle(dest)
        if fw.stop_event.is_set():
            if dest.confirmed:
                log.error("%s: %d confirmed message(s) could not be deleted from the outbox (%s): they will be "
                          "sent again", dest.name, len(dest.confirmed), dest.local_error)
            return
        if held or time.monotonic() < dest.local_retry_at:
            await fw.sleep(fw.poll_interval)
            continue
        try:
            rows = await asyncio.to_thread(outbox.fetch, dest.name, cursor, min(fw.window, 128))
        except (OutboxError, sqlite3.Error) as exc:
            fw.local_error(dest, exc)
            continue
        done: list[int] = []
        parks: list[tuple[int, str]] = []
        try:
            for row in rows:
                if fw.stop_event.is_set():
                    break
                try:
                    properties = json_properties(Outgoing(row).properties)
                except ValueError as exc:
                    parks.append((row.id, str(exc)))
                    cursor = row.id
                    continue
                try:
                    why = await target.publish(row, properties)
                except HttpNacked as exc:
                    await fw.note_failure(dest, row.id, str(exc))
                    raise Nacked(f"message {row.id} refused by the broker ({exc}); sending it again after "
                                  "a back-off") from None
                cursor = row.id
                if why is None:
                    done.append(row.id)
                else:
                    parks.append((row.id, why))
        finally:
            await fw.settle(dest, done, parks)
        if not rows:
            if outbox.shared:  # rows another forwarder held when the cursor passed them (see _session)
                cursor = 0
            await fw.shrink_when_idle(dest)
            await fw.sleep(fw.poll_interval)
        now = time.monotonic()
        if fw.unroutable_retry > 0 and now >= next_revive and not fw.stop_event.is_set():
            next_revive = now + min(fw.unroutable_retry, 5.0)
            try:
                if await asyncio.to_thread(outbox.parked_due, dest.name, time.time()):
                    await outbox.revive_async(dest.name, time.time())
                    cursor = 0
            except (OutboxError, sqlite3.Error) as exc:
                fw.local_error(dest, exc)


async def stomp_session(fw: Forwarder, dest: Destination, target: StompTarget) -> None:
    """The STOMP transport: up to ``window`` SENDs in flight, one write per batch, each settled by its RECEIPT in
    order; an ERROR ends the session, and the messages it left unsettled are then sent one at a time, so the one
    that gets an ERROR alone is parked (stomp_transport.py)."""
    assert fw.stop_event is not None and fw.outbox is not None
    outbox = fw.outbox
    inflight: deque[tuple[OutboxMessage, asyncio.Future[None]]] = deque()
    leases = LeaseRenewal(outbox)
    cursor = 0
    next_revive = 0.0
    reviving = False
    while True:
        window = 1 if cursor < dest.careful_until else fw.window
        stopping = fw.stop_event.is_set()
        held = not await fw.settle(dest)
        if stopping and ((not inflight and not held) or time.monotonic() > fw.stop_deadline):
            if dest.confirmed:
                log.error("%s: %d confirmed message(s) could not be deleted from the outbox (%s): they will be "
                          "sent again", dest.name, len(dest.confirmed), dest.local_error)
            return
        fetched = 0
        if (not stopping and not reviving and not held and len(inflight) < window
                and time.monotonic() >= dest.local_retry_at):
            try:
                rows = await asyncio.to_thread(outbox.fetch, dest.name, cursor, window - len(inflight))
            except (OutboxError, sqlite3.Error) as exc:
                fw.local_error(dest, exc)
                rows = []
            parks: list[tuple[int, str]] = []
            batch = []
            for row in rows:
                cursor = row.id
                try:
                    batch.append((row, send_frame(row)))
                except ValueError as exc:
                    parks.append((row.id, str(exc)))
            fetched = len(rows)
            if batch:
                try:
                    futures = await target.send([frame for _, frame in batch])
                except (StompRefused, StompOutage):
                    # the connection ended (an ERROR, a loss) before this batch went out: it stays in the outbox;
                    # below, what was RECEIPTed before the end is settled first, then the end is reported
                    futures = []
                    batch = []
                inflight.extend(zip([row for row, _ in batch], futures, strict=True))
            if parks:
                await fw.settle(dest, parks=parks)
        if inflight:
            if fetched == 0 or len(inflight) >= window:
                await asyncio.wait([inflight[0][1]], timeout=fw.poll_interval)
        elif fetched == 0:
            if outbox.shared and not dest.confirmed:
                cursor = 0  # rows another forwarder held when the cursor passed them (see Forwarder._session)
            if stopping:
                await asyncio.sleep(fw.poll_interval)
            else:
                await fw.shrink_when_idle(dest)
                await fw.sleep(fw.poll_interval)
        done: list[int] = []
        while inflight and inflight[0][1].done():
            row, future = inflight[0]
            if future.exception() is not None:
                break
            inflight.popleft()
            done.append(row.id)
        await fw.settle(dest, done)
        failure = inflight[0][1].exception() if inflight and inflight[0][1].done() else None
        if failure is not None:  # (the head may have been receipted while the deletions were written: not failed)
            failed = inflight[0][0]
            if isinstance(failure, StompRefused) and failure.refused:
                # a full reject-publish queue refused it: a nack, sent again after a back-off (never parked); the
                # connection is over, so what was in flight behind it goes again one at a time
                dest.careful_until = max(dest.careful_until, max(row.id for row, _ in inflight))
                raise Nacked(f"message {failed.id} refused by the broker ({failure}); sending it again after a "
                             "back-off")
            if isinstance(failure, StompRefused):
                text = str(failure)
                if len(inflight) == 1 and failed.id <= dest.careful_until:
                    log.warning("%s: message %d got an ERROR from the broker (%s): parking it", dest.name, failed.id,
                                text)
                    await fw.settle(dest, parks=[(failed.id, text)])
                else:
                    # which of the messages in flight caused it? Send them again one at a time
                    dest.careful_until = max(row.id for row, _ in inflight)
                    await fw.note_failure(dest, failed.id, text)
            else:
                # Lost without an ERROR: an outage, or RabbitMQ's plugin, which closes the connection when a queue
                # refuses a publish (reject-publish), and the RECEIPTs of what it stored go with it. Send what was
                # in flight again one at a time, so that a refused one does not take stored ones' receipts along.
                dest.careful_until = max(dest.careful_until, max(row.id for row, _ in inflight))
            raise failure
        if not inflight and target.error is not None:  # lost while idle: reconnect now, not at the next send
            raise target.error
        await leases.renew(fw, dest, [row.id for row, _ in inflight])
        now = time.monotonic()
        if now < dest.local_retry_at:
            continue
        try:
            if fw.unroutable_retry > 0 and now >= next_revive and not stopping:
                next_revive = now + min(fw.unroutable_retry, 5.0)
                if await asyncio.to_thread(outbox.parked_due, dest.name, time.time()):
                    reviving = True
            if reviving and not inflight and not dest.confirmed and not dest.to_park:
                await outbox.revive_async(dest.name, time.time())
                reviving = False
                cursor = 0
        except (OutboxError, sqlite3.Error) as exc:
            fw.local_error(dest, exc)
