"""The client side of ``leveret ctl`` and ``leveret track``: subcommands and the control-socket call.

Each subcommand is a :class:`Command`: its options, how the parsed options become the request's ``args``
(the broker side is leveret/server/control.py), and for listings the columns of the table printed by
default (``--json`` prints the broker's records whole, in the management API's shape). It imports nothing of
the broker: one JSON line to the socket, one back.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leveret.config import socket_path
from leveret.terminal import cell, error, print_table

Parser = argparse.ArgumentParser
Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]


class CtlError(Exception):
    """The broker refused the command or could not be reached; ``str()`` is one line for the user."""


def data_dir_of(args: argparse.Namespace) -> str:
    return getattr(args, "data_dir", None) or os.environ.get("LEVERET_DATA_DIR") or "./leveret-data"


def call(data_dir: str, command: str, request_args: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    """Send one command to the broker whose data directory is ``data_dir``; its result, or CtlError."""
    path = socket_path(data_dir)
    request = {"command": command, "args": request_args or {}}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            line = sock.makefile("rb").readline()
    except OSError as exc:
        raise CtlError(f"cannot reach a broker at {path}: {exc.strerror or exc} (is `leveret serve --data-dir "
                       f"{data_dir}` running?)") from None
    try:
        answer = json.loads(line)
    except ValueError:
        raise CtlError(f"the broker at {path} sent no answer") from None
    if not answer.get("ok"):
        raise CtlError(answer.get("error", "failed"))
    return answer.get("result")


# --- commands ----------------------------------------------------------------------------------------------


@dataclass
class Command:
    name: str
    help: str
    options: Callable[[Parser], None] = lambda p: None
    request: Callable[[argparse.Namespace], dict[str, Any]] = lambda a: {}
    columns: tuple[str, ...] | None = None  # a listing: printed as a table of these columns
    output: Callable[[argparse.Namespace, Any], int] | None = None  # custom printing
    prepare: Callable[[argparse.Namespace], None] | None = None  # client-side work before the call
    aliases: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        return self.name.replace("-", "_")


def _vhost_filter(p: Parser) -> None:
    p.add_argument("--vhost", "-p", help="only this vhost (default: all)")


def _vhost(p: Parser) -> None:
    p.add_argument("--vhost", "-p", default="/", help="the vhost (default /)")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"x-max-length\": 10}'")
    return value


def _arguments(p: Parser) -> None:
    p.add_argument("--arguments", type=_json_object, default={}, metavar="JSON", help="x-arguments as a JSON object")


def _listing(name: str, help: str, columns: tuple[str, ...], options: Callable[[Parser], None] = _vhost_filter,
             request: Callable[[argparse.Namespace], dict[str, Any]] | None = None) -> Command:
    return Command(name, help, options, request or (lambda a: {"vhost": a.vhost}), columns)


def _queue_options(p: Parser) -> None:
    p.add_argument("name")
    _vhost(p)
    p.add_argument("--transient", action="store_true", help="not durable (default: durable)")
    p.add_argument("--auto-delete", action="store_true")
    _arguments(p)


def _exchange_options(p: Parser) -> None:
    p.add_argument("name")
    p.add_argument("type", help="direct, fanout, topic, headers or x-delayed-message")
    _vhost(p)
    p.add_argument("--transient", action="store_true", help="not durable (default: durable)")
    p.add_argument("--auto-delete", action="store_true")
    p.add_argument("--internal", action="store_true", help="clients cannot publish to it")
    _arguments(p)


def _binding_options(p: Parser) -> None:
    p.add_argument("source", help="the exchange")
    p.add_argument("destination", help="the queue (or exchange, with --destination-type exchange)")
    p.add_argument("--routing-key", "-k", default="", metavar="KEY")
    p.add_argument("--destination-type", choices=("queue", "exchange"), default="queue")
    _vhost(p)
    _arguments(p)


def _binding_request(a: argparse.Namespace) -> dict[str, Any]:
    return {"vhost": a.vhost, "source": a.source, "destination": a.destination, "routing_key": a.routing_key,
            "destination_type": a.destination_type, "arguments": a.arguments}


def _name(p: Parser, what: str = "name") -> None:
    p.add_argument("name", help=what)


def _named_in_vhost(p: Parser) -> None:
    p.add_argument("name")
    _vhost(p)


def _user_password(p: Parser) -> None:
    p.add_argument("name", help="the user")
    p.add_argument("password", nargs="?", help="the password (default: prompt, or one line from standard input)")


def _read_password(args: argparse.Namespace) -> None:
    if args.password is None:
        if sys.stdin.isatty():
            args.password = getpass.getpass(f"password for '{args.name}': ")
        else:
            args.password = sys.stdin.readline().rstrip("\n")
    if not args.password:
        raise CtlError(f"no password given for '{args.name}' (a blank password never logs in)")


def _permission_options(p: Parser) -> None:
    p.add_argument("user")
    p.add_argument("configure", nargs="?", default=".*", help="regular expression (default .*)")
    p.add_argument("write", nargs="?", default=".*", help="regular expression (default .*)")
    p.add_argument("read", nargs="?", default=".*", help="regular expression (default .*)")
    _vhost(p)


def _delete_queue_options(p: Parser) -> None:
    _named_in_vhost(p)
    p.add_argument("--if-unused", action="store_true", help="only if it has no consumers")
    p.add_argument("--if-empty", action="store_true", help="only if it has no ready messages")


def _delete_exchange_options(p: Parser) -> None:
    _named_in_vhost(p)
    p.add_argument("--if-unused", action="store_true", help="only if it has no bindings")


def _add_user_options(p: Parser) -> None:
    _user_password(p)
    p.add_argument("--tags", default="", help="comma-separated, e.g. administrator or management,policymaker")


def _tags_options(p: Parser) -> None:
    p.add_argument("name", help="the user")
    p.add_argument("tags", nargs="*", help="e.g. administrator, monitoring, management, policymaker")


def _permissions_filter(p: Parser) -> None:
    _vhost_filter(p)
    p.add_argument("--user", help="only this user")


def _user_in_vhost(p: Parser) -> None:
    p.add_argument("user")
    _vhost(p)


def _import_options(p: Parser) -> None:
    p.add_argument("file", help="the JSON file, or - for standard input")


def _export_options(p: Parser) -> None:
    p.add_argument("file", nargs="?", default="-", help="where to write (default: standard output)")


def _write_definitions(args: argparse.Namespace, result: Any) -> int:
    text = json.dumps(result, indent=2) + "\n"
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(args.file).write_text(text)
    except OSError as exc:
        raise CtlError(f"cannot write {args.file}: {exc.strerror or exc}") from None
    print(f"definitions exported to {args.file}", file=sys.stderr)
    return 0


def _read_definitions(args: argparse.Namespace) -> None:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        raise CtlError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    try:
        args.definitions = json.loads(text)
    except ValueError as exc:
        raise CtlError(f"{args.file} is not valid JSON: {exc}") from None


def _limits(p: Parser) -> None:
    p.add_argument("limits", type=_json_object, metavar="JSON",
                   help='a JSON object, e.g. \'{"max-connections": 100}\' (negative: no limit)')


def _vhost_limits_options(p: Parser) -> None:
    _limits(p)
    _vhost(p)


def _user_limits_options(p: Parser) -> None:
    p.add_argument("user")
    _limits(p)


def _clear_user_limits_options(p: Parser) -> None:
    p.add_argument("user")
    p.add_argument("name", nargs="?", default="all", help="max-connections, max-channels or all (default)")


def _close_connection_options(p: Parser) -> None:
    p.add_argument("name", help="the connection's name as list-connections shows it ('peer -> listener')")
    p.add_argument("--reason", default="Closed via leveret ctl", help="what the client is told")


def _policy_options(p: Parser) -> None:
    p.add_argument("name")
    p.add_argument("pattern", help="regular expression matched against queue/exchange names")
    p.add_argument("definition", type=_json_object, metavar="JSON",
                   help='a JSON object, e.g. \'{"message-ttl": 60000, "dead-letter-exchange": "dlx"}\'')
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--apply-to", choices=("queues", "exchanges", "all"), default="all")
    _vhost(p)


def _user_filter(p: Parser) -> None:
    p.add_argument("--user", help="only this user (default: all)")


def _trace_output(args: argparse.Namespace, result: Any) -> int:
    state = "on" if result["tracing"] else "off"
    was = "was already " if result["was_on"] == result["tracing"] else "now "
    print(f"tracing {was}{state} in vhost '{result['vhost']}'")
    return 0


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("status", "node, port, connections, vhosts, memory, alarms, tracing, tracking"),
    Command("set-policy", "add or replace a policy (applied at once)", _policy_options,
            lambda a: {"vhost": a.vhost, "name": a.name, "pattern": a.pattern, "definition": a.definition,
                       "priority": a.priority, "apply_to": a.apply_to}),
    Command("clear-policy", "remove a policy", _named_in_vhost, lambda a: {"vhost": a.vhost, "name": a.name}),
    _listing("list-queues", "queues with their message and consumer counts",
             ("vhost", "name", "messages", "messages_ready=ready", "messages_unacknowledged=unacked", "consumers",
              "durable", "policy")),
    Command("declare-queue", "declare a queue (durable unless --transient)", _queue_options,
            lambda a: {"vhost": a.vhost, "name": a.name, "durable": not a.transient, "auto_delete": a.auto_delete,
                       "arguments": a.arguments}),
    Command("delete-queue", "delete a queue and its messages", _delete_queue_options,
            lambda a: {"vhost": a.vhost, "name": a.name, "if_unused": a.if_unused, "if_empty": a.if_empty}),
    Command("purge-queue", "remove a queue's ready messages", _named_in_vhost,
            lambda a: {"vhost": a.vhost, "name": a.name}),
    _listing("list-exchanges", "exchanges",
             ("vhost", "name", "type", "durable", "auto_delete", "internal", "arguments")),
    Command("declare-exchange", "declare an exchange (durable unless --transient)", _exchange_options,
            lambda a: {"vhost": a.vhost, "name": a.name, "type": a.type, "durable": not a.transient,
                       "auto_delete": a.auto_delete, "internal": a.internal, "arguments": a.arguments}),
    Command("delete-exchange", "delete an exchange and its bindings", _delete_exchange_options,
            lambda a: {"vhost": a.vhost, "name": a.name, "if_unused": a.if_unused}),
    _listing("list-bindings", "bindings (including each queue's default-exchange binding)",
             ("vhost", "source", "destination", "destination_type", "routing_key", "arguments")),
    Command("bind", "bind a queue (or exchange) to an exchange", _binding_options, _binding_request),
    Command("unbind", "remove a binding", _binding_options, _binding_request),
    _listing("list-connections", "open client connections", ("name", "user", "vhost", "channels", "state")),
    Command("close-connection", "close a client connection (320 CONNECTION_FORCED with the reason)",
            _close_connection_options, lambda a: {"name": a.name, "reason": a.reason}),
    _listing("list-users", "users and their tags", ("name", "tags"), lambda p: None, lambda a: {}),
    Command("add-user", "add a user", _add_user_options,
            lambda a: {"name": a.name, "password": a.password, "tags": a.tags}, prepare=_read_password),
    Command("delete-user", "delete a user", _name, lambda a: {"name": a.name}),
    Command("change-password", "set a user's password", _user_password,
            lambda a: {"name": a.name, "password": a.password}, prepare=_read_password),
    Command("set-user-tags", "replace a user's tags (none: no tags)", _tags_options,
            lambda a: {"name": a.name, "tags": a.tags}),
    _listing("list-permissions", "which users may use which vhosts",
             ("user", "vhost", "configure", "write", "read"),
             _permissions_filter,
             lambda a: {"vhost": a.vhost, "user": a.user}),
    Command("set-permissions", "let a user use a vhost", _permission_options,
            lambda a: {"user": a.user, "vhost": a.vhost, "configure": a.configure, "write": a.write,
                       "read": a.read}),
    Command("clear-permissions", "take a vhost away from a user", _user_in_vhost,
            lambda a: {"user": a.user, "vhost": a.vhost}),
    _listing("list-vhosts", "virtual hosts",
             ("name", "messages", "messages_ready=ready", "messages_unacknowledged=unacked", "tracing"),
             lambda p: None, lambda a: {}),
    Command("add-vhost", "add a virtual host", _name, lambda a: {"name": a.name}),
    Command("delete-vhost", "delete a virtual host with everything in it", _name, lambda a: {"name": a.name}),
    _listing("list-policies", "policies", ("vhost", "name", "pattern", "apply-to", "priority", "definition")),
    Command("set-vhost-limits", "replace a vhost's limits (max-connections, max-queues), as rabbitmqctl's",
            _vhost_limits_options, lambda a: {"vhost": a.vhost, "limits": a.limits}),
    Command("clear-vhost-limits", "remove a vhost's limits", _vhost, lambda a: {"vhost": a.vhost}),
    _listing("list-vhost-limits", "vhosts' limits", ("vhost", "limits")),
    Command("set-user-limits", "set a user's limits (max-connections, max-channels), merged with its others",
            _user_limits_options, lambda a: {"user": a.user, "limits": a.limits}),
    Command("clear-user-limits", "remove one limit of a user, or all", _clear_user_limits_options,
            lambda a: {"user": a.user, "name": a.name}),
    _listing("list-user-limits", "users' limits", ("user", "limits"),
             _user_filter, lambda a: {"user": a.user}),
    Command("export-definitions", "write users, vhosts, permissions, policies, queues, exchanges and bindings "
            "as RabbitMQ's definitions JSON", _export_options, output=_write_definitions),
    Command("import-definitions", "load a definitions JSON file (RabbitMQ's format; - for standard input)",
            _import_options, lambda a: {"definitions": a.definitions},
            prepare=_read_definitions),
    Command("trace-on", "switch the firehose tracer on (amq.rabbitmq.trace)", _vhost, lambda a: {"vhost": a.vhost},
            output=_trace_output),
    Command("trace-off", "switch the firehose tracer off", _vhost, lambda a: {"vhost": a.vhost},
            output=_trace_output),
)}


def add_commands(commands: Subparsers) -> None:
    """Add every Command to ``leveret ctl``'s subparsers."""
    for command in COMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.help[:1].upper()
                                  + command.help[1:] + ".")
        command.options(sub)
        if command.columns is not None:
            sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                             help="print the records as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Run a ``leveret ctl`` subcommand of COMMANDS; errors are one line on stderr and exit code 1."""
    command = COMMANDS[args.ctl_command]
    try:
        if command.prepare is not None:
            command.prepare(args)
        result = call(data_dir_of(args), command.command, command.request(args))
        if command.output is not None:
            return command.output(args, result)
    except CtlError as exc:
        error(str(exc))
        return 1
    if getattr(args, "json", False) or (command.columns is None and not isinstance(result, str)):
        print(json.dumps(result, indent=2))
    elif command.columns is not None:
        print_table(result, command.columns)
    else:
        print(result)
    return 0


# --- leveret track ---------------------------------------------------------------------------------------------


def add_track(subparsers: Subparsers) -> None:
    track = subparsers.add_parser(
        "track", help="what happened to a message, by its message_id",
        description="Print what the broker recorded about the messages with this message_id (the AMQP "
                    "message_id property): published, routed, delivered, acked, rejected, dead-lettered, "
                    "expired, ... Kept for tracking_window seconds (see docs/operations.md).")
    track.add_argument("message_id")
    track.add_argument("--vhost", "-p", default="/", help="the vhost (default /)")
    track.add_argument("--data-dir", metavar="DIR", help="the broker's data directory (default ./leveret-data)")
    track.add_argument("--json", action="store_true", help="print the events as JSON")
    track.set_defaults(handler=run_track)


def run_track(args: argparse.Namespace) -> int:
    try:
        events = call(data_dir_of(args), "track", {"vhost": args.vhost, "message_id": args.message_id})
    except CtlError as exc:
        error(str(exc))
        return 1
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    rows = [{"time": e["time"], "event": e["event"],
             "details": " ".join(f"{k}={cell(v) if v != [] else '[]'}" for k, v in e.items()
                                 if k not in ("time", "timestamp", "event"))}
            for e in events]
    print_table(rows, ("time", "event", "details"))
    return 0
