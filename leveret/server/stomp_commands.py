"""The STOMP frames of a connected client, as core calls: SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT,
ABORT and DISCONNECT, with destinations as RabbitMQ's STOMP plugin maps them onto exchanges and queues.

:class:`StompCommands` is a base class of :class:`~leveret.server.stomp.StompAdapter`; ``COMMANDS`` (at the end)
maps each command to its handler. A handler calls the core through the connection's one core channel: SEND is
``Channel.publish`` (the one publish entry), SUBSCRIBE ``Channel.consume`` + ``Queue.add_consumer``, ACK and NACK
``Channel.ack`` / ``Channel.reject``. Failures raise :class:`StompError` (RabbitMQ's message and text) or core
errors; the adapter turns them into ERROR frames.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from leveret.core.broker import Broker, Session
from leveret.core.channel import Channel
from leveret.core.message import new_message
from leveret.core.queue import Queue
from leveret.stomp import PUBLISH_REFUSED, Destination, DestinationError, Frame, HeaderError, parse_destination
from leveret.stomp.mapping import first_headers, properties_from_headers

# x- headers of SUBSCRIBE (and of a SEND to /queue/) that become queue arguments, as RabbitMQ's plugin takes them
# (others, x-queue-mode or x-overflow say, are ignored, as there)
_STRING_ARGUMENTS = ("x-dead-letter-exchange", "x-dead-letter-routing-key", "x-queue-type", "x-max-age")
_INTEGER_ARGUMENTS = ("x-expires", "x-max-length", "x-max-length-bytes", "x-max-priority", "x-message-ttl",
                      "x-stream-max-segment-size-bytes")
_ACK_MODES = ("auto", "client", "client-individual")
TEMP_QUEUE_PREFIX = "/temp-queue/"


class StompError(Exception):
    """A frame the broker refuses: ``message`` is the ERROR frame's message header, ``detail`` its body."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(f"{message}: {detail}")
        self.message = message
        self.detail = detail


@dataclass
class Subscription:
    """One SUBSCRIBE: its consumer tag (``T_<id>``, or ``Q_<destination>`` without an id), ack mode and queue."""

    tag: str
    destination: str
    ack: str
    queue: Queue
    description: str
    durable_topic: bool = False


def _boolean(value: str | None) -> bool | None:
    return {"true": True, "True": True, "false": False, "False": False}.get(value or "")


class StompCommands:
    """The handlers of a connected client's frames; the connection state is the StompAdapter's."""

    broker: Broker
    session: Session
    session_id: str
    version: str
    channel: Channel

    if TYPE_CHECKING:  # StompAdapter's, which this class is a base of
        def receipt(self, receipt_id: str, then: Callable[[], None] | None = None) -> None: ...
        def receipt_now(self, frame: Frame) -> None: ...
        def close_after_flush(self) -> None: ...
        def after_publish(self) -> None: ...

    def __init__(self) -> None:
        self.subscriptions: dict[str, Subscription] = {}
        self.ack_multiple: dict[str, bool] = {}  # consumer tag -> 'client' mode (cumulative), for the connection's life
        self.transactions: dict[str, list[Frame]] = {}
        self.declared: set[str] = set()  # /queue/ names this connection declared already (RabbitMQ's route state)
        self.reply_queues: dict[str, str] = {}  # /temp-queue/ id -> its queue's name
        self._committing = False  # a COMMIT is running its frames: they are not held again

    # --- helpers -------------------------------------------------------------------------------------

    def in_transaction(self, frame: Frame) -> bool:
        """A SEND, ACK or NACK of an open transaction, held until COMMIT (its receipt too)."""
        return frame.command in ("SEND", "ACK", "NACK") and frame.get("transaction") is not None \
            and not self._committing

    def _hold(self, frame: Frame) -> bool:
        """Keep a transactional frame for its COMMIT; False when ``frame`` is not in a transaction."""
        if not self.in_transaction(frame):
            return False
        tx = frame.get("transaction") or ""
        if tx not in self.transactions:
            raise StompError("Bad transaction", f'Invalid transaction identifier: "{tx}"\n')
        self.transactions[tx].append(frame)
        return True

    def _destination(self, frame: Frame, command: str) -> tuple[Destination, str]:
        text = frame.get("destination")
        if text is None:
            raise StompError("Missing destination", f"\"{command}\" must include a 'destination' header\n")
        try:
            return parse_destination(text), text
        except DestinationError as exc:
            raise StompError(exc.message, exc.detail) from None

    @staticmethod
    def _arguments(headers: dict[str, str]) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        for name in _STRING_ARGUMENTS:
            if name in headers:
                arguments[name] = headers[name].strip()
        for name in _INTEGER_ARGUMENTS:
            if name in headers:
                text = headers[name].strip()
                try:
                    arguments[name] = int(text)
                except ValueError:
                    raise StompError("Invalid header", f"'{name}' must be an integer, not '{text[:40]}'\n") from None
        return arguments

    def _declare(self, name: str, headers: dict[str, str], *, durable: bool, exclusive: bool,
                 auto_delete: bool, private_unless_durable: bool = False) -> Queue:
        """Declare (or find, equivalent) queue ``name`` with the frame's parameters and x- arguments, as this
        connection's user. The ``durable``/``persistent``, ``auto-delete`` and ``exclusive`` headers override the
        defaults given; with ``private_unless_durable`` (a /queue/ destination) a queue the headers make not
        durable is exclusive and auto-deleted, as RabbitMQ 3.10 declares them (so ``persistent:false`` on the
        SEND that declares /queue/NAME makes NAME the connection's own)."""
        params = {"durable": durable, "exclusive": exclusive, "auto_delete": auto_delete}
        for header, param in (("durable", "durable"), ("persistent", "durable"), ("auto-delete", "auto_delete"),
                              ("exclusive", "exclusive")):
            value = _boolean(headers.get(header))
            if value is not None:
                params[param] = value
        if private_unless_durable and not params["durable"]:
            params["exclusive"] = params["auto_delete"] = True
        return self.session.vhost.declare_queue(self.session, name, durable=params["durable"],
                                                exclusive=params["exclusive"], auto_delete=params["auto_delete"],
                                                arguments=self._arguments(headers), access=self.session.access)

    # --- SEND ----------------------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        if self._hold(frame):
            return
        if "message-id" in frame:  # checked before the destination, as RabbitMQ
            raise StompError("Invalid header", "'message-id' is not allowed on 'SEND'.\n")
        dest, text = self._destination(frame, "SEND")
        headers = first_headers(frame.headers)
        if dest.kind == "temp_queue":
            raise StompError("Invalid destination", f"'{text}' is not a valid destination for 'SEND'\n")
        if dest.kind == "queue" and dest.name not in self.declared:
            self._declare(dest.name, headers, durable=True, exclusive=False, auto_delete=False,
                          private_unless_durable=True)
            self.declared.add(dest.name)
        reply_to = headers.get("reply-to")
        if reply_to is not None and reply_to.startswith(TEMP_QUEUE_PREFIX):
            headers["reply-to"] = self._reply_queue(reply_to)
        try:
            props = properties_from_headers(headers)
        except HeaderError:  # RabbitMQ's plugin fails on an integer header that is not one, without a reason
            raise StompError("Processing error", "Processing error") from None
        exchange, routing_key = dest.routing()
        if self.channel.publish(new_message(exchange, routing_key, props, frame.body), False) is False:
            # a full reject-publish queue refused it (AMQP would nack it): no RECEIPT, an ERROR the sender can tell
            # from the others (RabbitMQ's plugin closes the connection without a frame)
            raise StompError(PUBLISH_REFUSED, "a queue refused the message: it is at its length limit "
                                              "(x-overflow reject-publish)\n")
        self.after_publish()

    def _reply_queue(self, reply_to: str) -> str:
        """``reply-to:/temp-queue/ID``: this connection's exclusive, auto-deleted reply queue for ID (made on first
        use, and consumed at once: its messages arrive with ``subscription:/temp-queue/ID``); the name that the
        message carries as its AMQP reply_to."""
        ident = reply_to[len(TEMP_QUEUE_PREFIX):]
        name = self.reply_queues.get(ident)
        if name is not None:
            return name
        queue = self.session.vhost.declare_queue(self.session, "", exclusive=True, auto_delete=True,
                                                 access=self.session.access)
        tag = "T_" + reply_to
        consumer = self.channel.consume(queue, tag, no_ack=True, exclusive=False, arguments={})
        self.subscriptions[tag] = Subscription(tag, reply_to, "auto", queue, f"id='{reply_to}'")
        self.reply_queues[ident] = queue.name
        queue.add_consumer(consumer)
        return queue.name

    # --- SUBSCRIBE, UNSUBSCRIBE ----------------------------------------------------------------------

    def subscribe(self, frame: Frame) -> None:
        headers = first_headers(frame.headers)
        durable_header = headers.get("durable") == "true" or headers.get("persistent") == "true"
        ident = headers.get("id")
        if durable_header and ident is None:
            raise StompError("Missing Header", "Header 'id' is required for durable subscriptions")
        dest, text = self._destination(frame, "SUBSCRIBE")
        if ident is not None and ident.startswith(TEMP_QUEUE_PREFIX):
            raise StompError("Invalid id", f"SUBSCRIBE 'id' may not start with {TEMP_QUEUE_PREFIX}\n")
        tag, description = (f"T_{ident}", f"id='{ident}'") if ident is not None else (f"Q_{text}",
                                                                                       f"destination='{text}'")
        ack = headers.get("ack", "auto")
        if ack not in _ACK_MODES:
            raise StompError("Invalid header", f"ack '{ack}' must be one of {', '.join(_ACK_MODES)}\n")
        prefetch_text = headers.get("prefetch-count", "0").strip()
        if not prefetch_text.isdigit():
            raise StompError("Invalid header", f"prefetch-count '{prefetch_text[:40]}' must be an integer\n")
        if tag in self.subscriptions:
            raise StompError("Duplicated subscription identifier",
                             f"A subscription identified by '{tag}' already exists.")
        queue = self._source(dest, text, ident, headers)
        if self.session.access is not None:
            self.session.access.read("queue", queue.name)
        consumer = self.channel.consume(queue, tag, no_ack=ack == "auto", exclusive=False,
                                        arguments=self._consumer_arguments(headers))
        consumer.prefetch = int(prefetch_text)
        self.subscriptions[tag] = Subscription(tag, text, ack, queue, description,
                                               durable_topic=dest.kind in ("topic", "exchange") and durable_header)
        self.ack_multiple[tag] = ack == "client"
        self.receipt_now(frame)  # as RabbitMQ: the RECEIPT before the queue's first MESSAGE
        if queue.served_by is not None:  # another node's queue: relayed there (server/relay.py)
            assert self.session.broker.remote is not None
            self.session.broker.remote.consume(consumer, lambda exc: self._relay_refused(text, exc))
            return
        queue.add_consumer(consumer)

    def _relay_refused(self, text: str, exc: BaseException | None) -> None:
        if exc is not None:
            self.session.force_close(f"the subscription to '{text}' was refused by the node that serves the queue: "
                                     f"{getattr(exc, 'text', exc)}")

    @staticmethod
    def _consumer_arguments(headers: dict[str, str]) -> dict[str, Any]:
        priority = headers.get("x-priority")
        if priority is None:
            return {}
        try:
            return {"x-priority": int(priority.strip())}
        except ValueError:
            raise StompError("Invalid header", f"'x-priority' must be an integer, not '{priority[:40]}'\n") from None

    def _source(self, dest: Destination, text: str, ident: str | None, headers: dict[str, str]) -> Queue:
        """The queue a SUBSCRIBE to ``dest`` consumes, declared and bound as RabbitMQ's plugin does."""
        vhost = self.session.vhost
        if dest.kind == "queue":  # declared once per connection, as by SEND (RabbitMQ's route state)
            if dest.name in self.declared:
                return vhost.queue(dest.name, self.session)
            queue = self._declare(dest.name, headers, durable=True, exclusive=False, auto_delete=False,
                                  private_unless_durable=True)
            self.declared.add(dest.name)
            return queue
        if dest.kind in ("amqqueue", "reply_queue"):
            return vhost.queue(dest.name, self.session)
        if dest.kind == "temp_queue":
            raise StompError("Invalid destination", f"'{text}' is not a valid destination for 'SUBSCRIBE'\n")
        exchange, pattern = dest.routing()
        vhost.exchange(exchange)  # 404 before a queue is made for it
        durable = _boolean(headers.get("durable")) or _boolean(headers.get("persistent")) or False
        name = headers.get("x-queue-name")
        if name is None:
            digest = hashlib.md5(f"{text}\x00{ident}".encode()).digest() if durable else secrets.token_bytes(16)
            name = "stomp-subscription-" + base64.urlsafe_b64encode(digest).decode().rstrip("=")
        # as RabbitMQ 3.10: a subscription's queue is auto-deleted and not exclusive unless the headers say otherwise
        queue = self._declare(name, headers, durable=False, exclusive=False, auto_delete=True)
        vhost.bind_queue(queue.name, exchange, pattern, {}, self.session, self.session.access)
        return queue

    def unsubscribe(self, frame: Frame) -> None:
        ident = frame.get("id")
        if ident is not None:
            if ident.startswith(TEMP_QUEUE_PREFIX):
                raise StompError("Invalid id", f"UNSUBSCRIBE 'id' may not start with {TEMP_QUEUE_PREFIX}\n")
            tag, description = f"T_{ident}", f"id='{ident}'"
        else:
            text = frame.get("destination")
            if text is None:
                raise StompError("Missing destination or id", "UNSUBSCRIBE must include a 'destination' or 'id' "
                                                              "header")
            tag, description = f"Q_{text}", f"destination='{text}'"
        sub = self.subscriptions.pop(tag, None)
        if sub is None:
            raise StompError("No subscription found", f"UNSUBSCRIBE must refer to an existing subscription.\n"
                                                      f"Subscription to \"{description}\" not found.\n")
        consumer = self.channel.cancel(tag)
        if consumer is None or not consumer.unacked:
            self.ack_multiple.pop(tag, None)  # kept while the subscription's deliveries may still be acked
        if sub.durable_topic and (frame.get("durable") == "true" or frame.get("persistent") == "true"):
            self.session.vhost.delete_queue(sub.queue.name, self.session, access=self.session.access)

    # --- ACK, NACK -----------------------------------------------------------------------------------

    def ack(self, frame: Frame) -> None:
        if self._hold(frame):
            return
        tag, multiple = self._delivery(frame)
        self.channel.ack(tag, multiple)

    def nack(self, frame: Frame) -> None:
        if self._hold(frame):
            return
        tag, multiple = self._delivery(frame)
        self.channel.reject(tag, multiple, _boolean(frame.get("requeue")) is not False)

    def _delivery(self, frame: Frame) -> tuple[int, bool]:
        """The delivery tag an ACK or NACK names (``id`` in 1.2, ``message-id`` before), and whether it settles
        every earlier delivery too (the subscription's ack mode is ``client``)."""
        header = "id" if self.version == "1.2" else "message-id"
        value = frame.get(header)
        if value is None:
            raise StompError("Missing header", f'"{frame.command}" must include the "{header}" header\n')
        parts = value.split("@@")
        if len(parts) != 3 or parts[1] != self.session_id or not parts[2].isdigit():
            raise StompError("Invalid header", f'"{frame.command}" must include a valid "{header}" header\n')
        return int(parts[2]), self.ack_multiple.get(parts[0], False)

    # --- transactions --------------------------------------------------------------------------------

    def _transaction(self, frame: Frame) -> str:
        tx = frame.get("transaction")
        if tx is None:
            raise StompError("Missing transaction", f"\"{frame.command}\" must include a 'transaction' header\n")
        return tx

    def begin(self, frame: Frame) -> None:
        self.transactions[self._transaction(frame)] = []

    def commit(self, frame: Frame) -> None:
        """Run the transaction's SEND, ACK and NACK frames in order (each with its receipt); the COMMIT's own
        receipt follows once they are durable."""
        tx = self._transaction(frame)
        frames = self.transactions.pop(tx, None)
        if frames is None:
            raise StompError("Bad transaction", f'Invalid transaction identifier: "{tx}"\n')
        self._committing = True
        try:
            for held in frames:
                COMMANDS[held.command](self, held)
                receipt = held.get("receipt")
                if receipt is not None:
                    self.receipt(receipt)
        finally:
            self._committing = False

    def abort(self, frame: Frame) -> None:
        tx = self._transaction(frame)
        if self.transactions.pop(tx, None) is None:
            raise StompError("Bad transaction", f'Invalid transaction identifier: "{tx}"\n')

    # --- DISCONNECT ----------------------------------------------------------------------------------

    def disconnect(self, frame: Frame) -> None:
        """The receipt (once what came before is durable), then the connection closes."""
        receipt = frame.get("receipt")
        if receipt is None:
            self.close_after_flush()
        else:
            self.receipt(receipt, then=self.close_after_flush)


# Every command a connected client may send -> its handler (CONNECT and STOMP are the adapter's own).
COMMANDS: dict[str, Callable[[Any, Frame], None]] = {
    "SEND": StompCommands.send,
    "SUBSCRIBE": StompCommands.subscribe,
    "UNSUBSCRIBE": StompCommands.unsubscribe,
    "ACK": StompCommands.ack,
    "NACK": StompCommands.nack,
    "BEGIN": StompCommands.begin,
    "COMMIT": StompCommands.commit,
    "ABORT": StompCommands.abort,
    "DISCONNECT": StompCommands.disconnect,
}
