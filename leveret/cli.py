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


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (_add_serve,)
