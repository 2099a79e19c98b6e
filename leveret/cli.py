"""The ``leveret`` command: ``leveret serve [options]`` and ``leveret --version``.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its options and sets
``handler=_run_<name>``; the handler takes the parsed arguments and returns the exit code. To add a
subcommand, write the pair and list the ``_add_`` function in ``_SUBCOMMANDS``.

Exit codes: 0 success, 1 runtime failure (e.g. cannot listen), 2 usage or configuration error, 130 interrupted.
Expected failures print one line, ``leveret: error: <message>``, on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from leveret import __version__
from leveret.config import ConfigError, load_config

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Reasons worded for a person; other errors use the system's own text.
_LISTEN_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.EACCES: "permission denied",
}

Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has already printed
        return exc.code if isinstance(exc.code, int) else 2
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand; each sets ``handler`` in the parsed namespace."""
    parser = argparse.ArgumentParser(
        prog="leveret", description="Leveret: an AMQP 0-9-1 message broker, a drop-in for RabbitMQ."
    )
    parser.add_argument("--version", action="version", version=f"leveret {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for add_subcommand in _SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def error(message: str) -> None:
    """Print ``leveret: error: <message>`` on stderr, as argparse does for usage errors."""
    print(f"leveret: error: {message}", file=sys.stderr)


def configure_logging(level: str) -> None:
    """Send log records at ``level`` ("debug", "info", ...) and above to stderr in LOG_FORMAT."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


# --- serve ---------------------------------------------------------------------------------------------------


def _add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker until SIGINT or SIGTERM. Options override LEVERET_* variables and the file.",
    )
    serve.add_argument("--bind", metavar="ADDRESS", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", metavar="PORT", help="AMQP port, 0 for any free port (default 5672)")
    serve.add_argument("--data-dir", metavar="DIR", help="where messages and definitions are kept")
    serve.add_argument("--config", metavar="FILE", help="TOML config file (default: $LEVERET_CONFIG, if set)")
    serve.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)")
    serve.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    overrides = {"bind": args.bind, "port": args.port, "data_dir": args.data_dir, "log_level": args.log_level}
    try:
        config = load_config(overrides, os.environ, args.config)
    except ConfigError as exc:
        error(str(exc))
        return 2
    configure_logging(config.log_level)
    from leveret.server.app import serve
    from leveret.store import StoreError

    try:
        return serve(config)
    except StoreError as exc:
        error(str(exc))
        return 1
    except OSError as exc:
        error(describe_listen_error(exc, config.bind, config.port))
        return 1


def describe_listen_error(exc: OSError, bind: str, port: int) -> str:
    """One line for an OSError out of the server's start: a file's error names the file, others the address."""
    reason = _LISTEN_REASONS.get(exc.errno or 0) or _lower_first(exc.strerror or str(exc) or type(exc).__name__)
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    host = f"[{bind}]" if ":" in bind else bind
    return f"cannot listen on {host}:{port}: {reason}"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# --- ctl -----------------------------------------------------------------------------------------------------


def _add_ctl(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = subparsers.add_parser("ctl", help="manage a running broker (policies, queues, status)",
                                description="Talk to a running Leveret through its control socket "
                                            "(<data-dir>/leveret.sock).")
    ctl.add_argument("--data-dir", metavar="DIR", help="the broker's data directory (default ./leveret-data)")
    ctl.add_argument("--json", action="store_true", help="print the answer as JSON")
    commands = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    commands.add_parser("status", help="node, port, connections, alarms")
    setp = commands.add_parser("set-policy", help="add or replace a policy (applied at once)")
    setp.add_argument("name")
    setp.add_argument("pattern", help="regular expression matched against queue/exchange names")
    setp.add_argument("definition", help='JSON object, e.g. \'{"message-ttl": 60000, "dead-letter-exchange": "dlx"}\'')
    setp.add_argument("--priority", type=int, default=0)
    setp.add_argument("--apply-to", choices=("queues", "exchanges", "all"), default="all")
    setp.add_argument("--vhost", default="/")
    clear = commands.add_parser("clear-policy", help="remove a policy")
    clear.add_argument("name")
    clear.add_argument("--vhost", default="/")
    for name in ("list-policies", "list-queues"):
        listing = commands.add_parser(name)
        listing.add_argument("--vhost")
    ctl.set_defaults(handler=_run_ctl)


def _run_ctl(args: argparse.Namespace) -> int:
    import json
    import socket

    from leveret.server.control import socket_path

    data_dir = args.data_dir or os.environ.get("LEVERET_DATA_DIR") or "./leveret-data"
    command = args.ctl_command.replace("-", "_")
    request: dict[str, Any] = {"command": command, "args": {}}
    if command == "set_policy":
        try:
            definition = json.loads(args.definition)
        except json.JSONDecodeError as exc:
            error(f"the policy definition is not valid JSON: {exc}")
            return 2
        request["args"] = {"name": args.name, "pattern": args.pattern, "definition": definition,
                           "priority": args.priority, "apply_to": args.apply_to, "vhost": args.vhost}
    elif command == "clear_policy":
        request["args"] = {"name": args.name, "vhost": args.vhost}
    elif command in ("list_policies", "list_queues") and args.vhost:
        request["args"] = {"vhost": args.vhost}
    path = socket_path(data_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(sock.makefile("rb").readline())
    except OSError as exc:
        error(f"cannot reach a broker at {path}: {exc.strerror or exc} (is `leveret serve --data-dir {data_dir}` "
              "running?)")
        return 1
    if not answer.get("ok"):
        error(answer.get("error", "failed"))
        return 1
    result = answer.get("result")
    if args.json or not isinstance(result, list):
        print(json.dumps(result, indent=2) if args.json or not isinstance(result, str) else result)
    else:
        _print_table(result)
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("(none)")
        return
    columns = list(rows[0])
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_serve,
    _add_ctl,
)
