"""The ``leveret`` command: ``leveret serve``, ``ctl``, ``track``, ``tap``, ``worker``, ``beat``, ``status``,
``dead-letters``, ``run``, ``health``, ``forward``, ``outbox`` and ``--version``.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its options and sets
``handler=_run_<name>``; the handler takes the parsed arguments and returns the exit code. To add a
subcommand, write the pair and list the ``_add_`` function in ``_SUBCOMMANDS``. What a handler needs (the
broker for ``serve``: leveret/node.py; the task layer, the supervisor, the outbox) is imported when it runs,
so that building the parser loads nothing heavy: ``leveret ctl`` imports neither the broker nor aiohttp.

Exit codes: 0 success, 1 runtime failure (e.g. cannot listen), 2 usage or configuration error, 130 interrupted.
Expected failures print one line, ``leveret: error: <message>``, on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from leveret import __version__, build
from leveret.config import ConfigError, load_config
from leveret.terminal import configure_logging, error, print_table

# Reasons worded for a person; other errors use the system's own text.
_LISTEN_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.EACCES: "permission denied",
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(serve_only=argv[:1] == ["serve"])  # `leveret serve` starts sooner without the others
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130


def build_parser(serve_only: bool = False) -> argparse.ArgumentParser:
    """The argument parser with every subcommand, or only ``serve``; each sets ``handler`` in the namespace."""
    parser = argparse.ArgumentParser(
        prog="leveret", description="Leveret: an AMQP 0-9-1 message broker, a drop-in for RabbitMQ."
    )
    parser.add_argument("--version", action="version", version=f"leveret {__version__} ({build()})")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for add_subcommand in (_add_serve,) if serve_only else _SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


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
    serve.add_argument("--store", metavar="STORE", help="sqlite (default: <data-dir>/leveret.db), memory, or "
                       "postgresql://USER:PASS@HOST/DB (docs/cluster.md)")
    serve.add_argument("--config", metavar="FILE", help="TOML config file (default: $LEVERET_CONFIG, if set)")
    serve.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)")
    serve.add_argument("--stomp-port", metavar="PORT", help="STOMP port, 0 for any free port, -1 off (default 61613)")
    serve.add_argument("--stomp-tls-port", metavar="PORT",
                       help="STOMP over TLS port, -1 off (default 61614), used when --tls-cert-file is given")
    for name, metavar, text in _TLS_OPTIONS:
        serve.add_argument("--" + name.replace("_", "-"), metavar=metavar, help=text)
    serve.set_defaults(handler=_run_serve)


# TLS settings that also have a command-line option (the others: environment or TOML, see docs/tls.md)
_TLS_OPTIONS = (
    ("tls_port", "PORT", "AMQPS port (default 5671), used when --tls-cert-file is given"),
    ("tls_cert_file", "FILE", "server certificate (PEM); setting it turns TLS on"),
    ("tls_key_file", "FILE", "the certificate's private key (PEM)"),
    ("tls_ca_file", "FILE", "CA certificates that client certificates are verified against (PEM)"),
    ("tls_verify", "MODE", "none (default) or peer: ask for and verify client certificates"),
)


def _run_serve(args: argparse.Namespace) -> int:
    overrides = {"bind": args.bind, "port": args.port, "data_dir": args.data_dir, "log_level": args.log_level,
                 "store": args.store}
    overrides.update({name: getattr(args, name) for name, _, _ in _TLS_OPTIONS})
    overrides.update(stomp_port=args.stomp_port, stomp_tls_port=args.stomp_tls_port)
    try:
        config = load_config(overrides, os.environ, args.config)
    except ConfigError as exc:
        error(str(exc))
        return 2
    configure_logging(config.log_level)
    from leveret.node import serve
    from leveret.store import StoreError

    try:
        return serve(config)
    except ConfigError as exc:  # found when the broker starts: TLS files that cannot be used
        error(str(exc))
        return 2
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
    ctl = subparsers.add_parser("ctl", help="manage a running broker (queues, exchanges, users, policies, ...)",
                                description="Talk to a running Leveret through its control socket "
                                            "(<data-dir>/leveret.sock).")
    ctl.add_argument("--data-dir", metavar="DIR", help="the broker's data directory (default ./leveret-data)")
    ctl.add_argument("--json", action="store_true", help="print the answer as JSON")
    commands = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    from leveret import ctl as ctl_commands

    ctl_commands.add_commands(commands)
    ctl.set_defaults(handler=_run_ctl)


def _run_ctl(args: argparse.Namespace) -> int:
    from leveret import ctl as ctl_commands

    return ctl_commands.run(args)


# --- worker / status (leveret.tasks) -------------------------------------------------------------------------


def _add_worker(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = subparsers.add_parser(
        "worker", help="run the handlers of a task app (leveret.tasks)",
        description="Consume the queues of a leveret.tasks App and run its handlers until SIGINT or SIGTERM "
                    "(in-flight tasks finish first; unacked ones are redelivered if the worker dies).")
    worker.add_argument("app", metavar="MODULE:APP", help="where the App is, e.g. myproject.tasks:app")
    worker.add_argument("--queues", metavar="A,B", help="only these queues (default: all of the app's)")
    worker.add_argument("--concurrency", type=int, default=4, metavar="N", help="handlers at once (default 4)")
    worker.add_argument("--prefetch", type=int, metavar="N",
                        help="unacked messages per queue (default 2 x concurrency)")
    worker.add_argument("--log-level", default="info", metavar="LEVEL", help="debug, info, warning or error")
    worker.add_argument("--processes", type=int, default=1, metavar="N",
                        help="worker processes under a supervisor (default 1); 0 runs the worker in this process "
                             "without a supervisor (debugging, or under systemd)")
    worker.add_argument("--max-tasks", type=int, metavar="N", help="replace a worker process after N tasks")
    worker.add_argument("--max-memory", type=float, metavar="MB",
                        help="replace a worker process whose resident memory exceeds MB megabytes")
    worker.add_argument("--grace", type=float, default=30.0, metavar="S",
                        help="on stop, seconds running tasks get to finish before they go back to the queue "
                             "(default 30)")
    worker.add_argument("--state-dir", metavar="DIR",
                        help="where the supervisor writes its status for `leveret health` (default "
                             "$LEVERET_STATE_DIR, else ./leveret-state/APP[@QUEUES], one per app and queues, so "
                             "that workers for other queues can run from the same directory)")
    worker.add_argument("--health-port", type=int, metavar="PORT",
                        help="serve GET /health (JSON, 200 or 503) on 127.0.0.1:PORT (0: any free port)")
    worker.set_defaults(handler=_run_worker)


def _load_app(spec: str) -> Any:
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not MODULE:APP")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module_name), attr)


def _run_worker(args: argparse.Namespace) -> int:
    from leveret.tasks import Worker

    configure_logging(args.log_level)
    if args.processes < 0 or (args.max_tasks is not None and args.max_tasks < 1) or args.grace <= 0:
        error("--processes must be >= 0, --max-tasks >= 1 and --grace > 0")
        return 2
    try:
        app = _load_app(args.app)
        queues = [q for q in (args.queues or "").split(",") if q] or None
        Worker(app, queues=queues, concurrency=args.concurrency, prefetch=args.prefetch)  # checks the options
    except (ImportError, AttributeError, ValueError) as exc:
        error(str(exc))
        return 2
    if args.processes > 0:
        return _supervise_workers(args, queues)
    from leveret.supervisor.child import run_worker

    try:
        return run_worker(app, queues=queues, concurrency=args.concurrency, prefetch=args.prefetch,
                          grace=args.grace, max_tasks=args.max_tasks, max_memory=args.max_memory)
    except OSError as exc:
        error(f"cannot reach the broker at {app.url}: {exc}")
        return 1


async def _until_signal(run: Callable[[], Awaitable[None]], request_stop: Callable[[], None]) -> None:
    """Await ``run()``, calling ``request_stop`` on SIGINT or SIGTERM (a graceful stop)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    await run()


def _add_beat(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    beat = subparsers.add_parser(
        "beat", help="fire the periodic tasks of a task app (leveret.tasks.periodic)",
        description="Run a scheduler for the periodic tasks of a leveret.tasks App until SIGINT or SIGTERM. Run "
                    "one or several: one leads and fires each due time once, the others take over when it goes "
                    "away (docs/tasks.md, periodic tasks).")
    beat.add_argument("app", metavar="MODULE:APP", help="where the App is, e.g. myproject.tasks:app")
    beat.add_argument("--url", metavar="URL", help="the broker (default: the App's URL)")
    beat.add_argument("--log-level", default="info", metavar="LEVEL", help="debug, info, warning or error")
    beat.set_defaults(handler=_run_beat)


def _run_beat(args: argparse.Namespace) -> int:
    import asyncio

    from leveret.tasks.periodic import Scheduler

    configure_logging(args.log_level)
    try:
        scheduler = Scheduler(_load_app(args.app), url=args.url)
    except (ImportError, AttributeError, ValueError) as exc:
        error(str(exc))
        return 2
    if not scheduler.schedules:
        error(f"{args.app} has no periodic task")
        return 2

    asyncio.run(_until_signal(scheduler.run, scheduler.request_stop))
    return 0


def _supervise_workers(args: argparse.Namespace, queues: list[str] | None) -> int:
    from leveret.supervisor import ProgramSpec, Settings, worker_argv
    from leveret.supervisor.config import DEFAULT_STATE_DIR
    from leveret.supervisor.supervisor import run_supervisor

    argv = worker_argv(args.app, queues=queues, concurrency=args.concurrency, prefetch=args.prefetch,
                       max_tasks=args.max_tasks, grace=args.grace, log_level=args.log_level)
    program = ProgramSpec(name="worker", argv=argv, kind="worker", processes=args.processes,
                          max_memory=args.max_memory, max_tasks=args.max_tasks, grace=args.grace, cwd=os.getcwd())
    state_dir = (args.state_dir or os.environ.get("LEVERET_STATE_DIR")
                 or os.path.join(DEFAULT_STATE_DIR, _worker_state_name(args.app, queues)))
    settings = Settings(state_dir=state_dir, health_port=args.health_port, log_level=args.log_level)
    return run_supervisor([program], settings)


def _worker_state_name(app: str, queues: list[str] | None) -> str:
    """The default state directory of ``leveret worker`` under ./leveret-state: ``APP`` or ``APP@Q1+Q2`` with the
    characters other than letters, digits and ``._-`` as ``_`` (``myproject.tasks_app@emails+images``)."""
    import hashlib
    import re

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", text)

    name = safe(app) + ("@" + "+".join(safe(q) for q in sorted(set(queues))) if queues else "")
    if len(name) > 120:  # a file name has at most 255 bytes
        name = name[:100] + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return name


def _add_status(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = subparsers.add_parser(
        "status", help="the status of a task (leveret.tasks)",
        description="Print the last known state of a task sent with leveret.tasks: queued, started, retrying, "
                    "succeeded, gave_up, revoked, or unknown.")
    status.add_argument("id", help="the task id (send() returns it in its handle)")
    status.add_argument("--url", help="broker URL (default $LEVERET_URL or amqp://guest:guest@127.0.0.1:5672/)")
    status.add_argument("--json", action="store_true", help="print everything recorded about the state")
    status.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for the answer (default 5; on RabbitMQ an id that is not a UUIDv7 "
                             "reads the whole status stream)")
    status.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    import json

    from leveret.tasks import App, StatusUnavailable

    url = args.url or os.environ.get("LEVERET_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    configure_logging("critical")  # the one-line error below says it all
    app = App(url, send_timeout=args.timeout)
    try:
        info = app.status_info(args.id)
    except TimeoutError:
        error(f"cannot read the status from the broker at {url}: no answer within {args.timeout:g} s "
              "(--timeout sets how long to wait)")
        return 1
    except (OSError, StatusUnavailable) as exc:
        error(f"cannot read the status from the broker at {url}: {exc}")
        return 1
    finally:
        app.close()
    print(json.dumps(info, indent=2) if args.json else info.get("state", "unknown"))
    return 0


def _add_dead_letters(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dead = subparsers.add_parser(
        "dead-letters", help="inspect or replay a task queue's dead letters (leveret.tasks)",
        description="List the tasks that exhausted their retries (in <queue>.dead) without removing them, or "
                    "with --replay move them back to <queue> as new attempts.")
    dead.add_argument("queue", help="the task queue (its dead letters are in <queue>.dead)")
    dead.add_argument("--replay", action="store_true", help="move them back to the queue")
    dead.add_argument("--limit", type=int, default=None, help="at most this many")
    dead.add_argument("--url", help="broker URL (default $LEVERET_URL or amqp://guest:guest@127.0.0.1:5672/)")
    dead.add_argument("--json", action="store_true", help="print the list as JSON")
    dead.set_defaults(handler=_run_dead_letters)


def _run_dead_letters(args: argparse.Namespace) -> int:
    import json

    from leveret.tasks import App

    url = args.url or os.environ.get("LEVERET_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    configure_logging("critical")
    app = App(url)
    try:
        if args.replay:
            moved = app.replay_dead(args.queue, args.limit)
            print(f"replayed {moved} task(s) from {args.queue}.dead to {args.queue}")
            return 0
        letters = app.dead_letters(args.queue, args.limit if args.limit is not None else 100)
    except OSError as exc:
        error(f"cannot reach the broker at {url}: {exc}")
        return 1
    finally:
        app.close()
    if args.json:
        print(json.dumps(letters, indent=2, default=str))
    else:
        print_table([{k: v for k, v in letter.items() if k != "body"} for letter in letters])
    return 0


# --- run / health (leveret.supervisor) ------------------------------------------------------------------------


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run", help="keep the workers and forwarders of a leveret.toml running (supervisor)",
        description="Run every [[worker]], [[forwarder]] and [[program]] of the file as supervised child "
                    "processes until SIGINT or SIGTERM; SIGHUP replaces them one by one. See docs/supervisor.md.")
    run.add_argument("file", nargs="?", default="leveret.toml", help="the TOML file (default ./leveret.toml)")
    run.add_argument("--state-dir", metavar="DIR", help="status directory (default: [supervisor] state_dir, "
                                                        "or leveret-state beside the file)")
    run.add_argument("--health-port", type=int, metavar="PORT", help="serve GET /health on PORT (0: any free)")
    run.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (default info)")
    run.add_argument("--check", action="store_true", help="check the file, print the commands, run nothing")
    run.set_defaults(handler=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    import shlex

    from leveret.supervisor import RunConfigError, load_run_file
    from leveret.supervisor.supervisor import run_supervisor

    overrides = {"state_dir": args.state_dir, "health_port": args.health_port,
                 "log_level": args.log_level.lower() if args.log_level else None}
    try:
        settings, programs = load_run_file(args.file, overrides=overrides)
    except RunConfigError as exc:
        error(str(exc))
        return 2
    if args.check:
        for program in programs:
            print(f"{program.name} x{program.processes} ({program.kind}, cwd {program.cwd}): "
                  f"{shlex.join(program.argv)}")
        return 0
    configure_logging(settings.log_level)
    return run_supervisor(programs, settings, lambda: load_run_file(args.file, overrides=overrides))


def _add_health(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = subparsers.add_parser(
        "health", help="what a supervisor (leveret worker / leveret run) is running",
        description="Print the processes of the supervisor that uses the state directory: state, pid, since, "
                    "tasks done, memory, restarts. Exit 0 when healthy, 1 when a program is crash-looping or "
                    "the supervisor is not running.")
    health.add_argument("--state-dir", metavar="DIR",
                        help="the supervisor's state directory (default $LEVERET_STATE_DIR or ./leveret-state)")
    health.add_argument("--json", action="store_true", help="print the whole status as JSON")
    health.set_defaults(handler=_run_health)


def _run_health(args: argparse.Namespace) -> int:
    import json

    from leveret.supervisor.config import DEFAULT_STATE_DIR
    from leveret.supervisor.health import format_status, read_status

    state_dir = args.state_dir or os.environ.get("LEVERET_STATE_DIR") or DEFAULT_STATE_DIR
    status, problem = read_status(state_dir)
    if status is not None:
        print(json.dumps(status, indent=2) if args.json else format_status(status))
    if problem:
        error(problem)
        return 1
    return 0 if status is not None and status.get("healthy") else 1

# --- forward / outbox (leveret.outbox) ------------------------------------------------------------------------


def _add_forward(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    forward = subparsers.add_parser(
        "forward", help="forward an outbox to its broker(s) (leveret.outbox)",
        description="Publish the messages of an outbox file with publisher confirms, deleting each once its "
                    "broker(s) confirmed it, until SIGINT or SIGTERM (in-flight confirms finish first). Safe to "
                    "restart at any moment: unconfirmed messages are sent again.")
    forward.add_argument("--outbox", required=True, metavar="PATH|URL",
                         help="the outbox: an SQLite file, or a postgresql:// URL (a shared PostgreSQL outbox)")
    forward.add_argument("--broker", action="append", metavar="[NAME=]URL",
                         help="a broker for destination NAME (default: \"default\"): amqp[s]://, http[s]://, stomp://; "
                              "repeat for more destinations, or with the same NAME (or URLs joined by commas) for "
                              "failover (default: $LEVERET_URL or amqp://guest:guest@127.0.0.1:5672/)")
    forward.add_argument("--status", action="store_true", help="print the backlog per destination and exit")
    forward.add_argument("--json", action="store_true", help="with --status: print it as JSON")
    forward.add_argument("--window", type=int, default=1024, metavar="N",
                         help="unconfirmed messages in flight per destination (default 1024)")
    forward.add_argument("--backoff-max", type=float, default=30.0, metavar="SECONDS",
                         help="longest wait between reconnection attempts (default 30)")
    forward.add_argument("--unroutable-retry", type=float, default=30.0, metavar="SECONDS",
                         help="retry parked (unroutable) messages after this long; 0 never (default 30)")
    forward.add_argument("--report-interval", type=float, default=30.0, metavar="SECONDS",
                         help="log the backlog this often (default 30)")
    forward.add_argument("--lease", type=float, default=60.0, metavar="SECONDS",
                         help="PostgreSQL outbox: how long other forwarders leave the messages this one fetched "
                              "(renewed while in flight; after a crash they are sent again then) (default 60)")
    forward.add_argument("--notify-queue", metavar="NAME", help="the queue of tracked messages' job-done notices "
                         "on Leveret (default: leveret.outbox.notices.<hash of the outbox>)")
    forward.add_argument("--log-level", default="info", metavar="LEVEL", help="debug, info, warning or error")
    forward.set_defaults(handler=_run_forward)


def _run_forward(args: argparse.Namespace) -> int:
    if args.status:
        return _print_outbox_status(args.outbox, args.json)
    import asyncio

    from leveret.outbox import Forwarder

    configure_logging(args.log_level)
    brokers = args.broker or [os.environ.get("LEVERET_URL") or "amqp://guest:guest@127.0.0.1:5672/"]
    try:
        forwarder = Forwarder(args.outbox, brokers, window=args.window, backoff_max=args.backoff_max,
                              unroutable_retry=args.unroutable_retry, report_interval=args.report_interval,
                              lease=args.lease, notify_queue=args.notify_queue)
    except ValueError as exc:
        error(str(exc))
        return 2

    from leveret.outbox import OutboxError

    try:
        asyncio.run(_until_signal(forwarder.run, forwarder.request_stop))
    except OutboxError as exc:
        error(str(exc))
        return 1
    return 0


def _add_outbox(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = subparsers.add_parser("outbox", help="inspect an outbox file (leveret.outbox)",
                                   description="Inspect an outbox file written by leveret.outbox.Outbox.")
    commands = outbox.add_subparsers(dest="outbox_command", metavar="COMMAND", required=True)
    status = commands.add_parser("status", help="messages waiting per destination, oldest age, last error")
    status.add_argument("path", help="the outbox file, or a postgresql:// URL")
    status.add_argument("id", nargs="?", help="a message_id sent with track=True: its state per destination")
    status.add_argument("--json", action="store_true", help="print it as JSON")
    outbox.set_defaults(handler=_run_outbox)


def _run_outbox(args: argparse.Namespace) -> int:
    if args.id:
        return _print_tracked(args.path, args.id, args.json)
    return _print_outbox_status(args.path, args.json)


def _print_tracked(path: str, message_id: str, as_json: bool) -> int:
    import json

    from leveret.outbox import OutboxError, open_outbox
    from leveret.outbox.postgres import is_postgres_url

    if not is_postgres_url(path) and not os.path.exists(path):
        error(f"no outbox at {path}")
        return 1
    try:
        with open_outbox(path) as outbox:
            status = outbox.tracked(message_id)
    except OutboxError as exc:
        error(str(exc))
        return 1
    if as_json:
        print(json.dumps(status, indent=2))
    else:
        print(f"message {message_id}: {status['state']}")
        print_table([{"destination": name, "state": info["state"],
                      "sent_at": "" if info["sent_at"] is None else f"{info['sent_at']:.3f}",
                      "queues": ", ".join(f"{q}: {st}" for q, st in sorted(info.get("queues", {}).items())),
                      "error": info["error"] or ""} for name, info in sorted(status["destinations"].items())])
    return 0 if status["state"] != "unknown" else 1


def _print_outbox_status(path: str, as_json: bool) -> int:
    import json

    from leveret.outbox import OutboxError, open_outbox
    from leveret.outbox.postgres import is_postgres_url

    if not is_postgres_url(path) and not os.path.exists(path):
        error(f"no outbox at {path}")
        return 1
    try:
        with open_outbox(path) as outbox:
            status = outbox.status()
            total = outbox.count()
            path = outbox.where
    except OutboxError as exc:
        error(str(exc))
        return 1
    if as_json:
        print(json.dumps({"messages": total, "destinations": status}, indent=2))
        return 0
    rows = [{"destination": name, "pending": info["pending"], "parked": info["parked"],
             "oldest_age_s": "" if info["oldest_age"] is None else f"{info['oldest_age']:.1f}",
             "last_error": info["last_error"] or ""} for name, info in sorted(status.items())]
    print(f"{total} message(s) in {path}")
    print_table(rows)
    return 0


def _add_track(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from leveret.ctl import add_track

    add_track(subparsers)


def _add_tap(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from leveret.tap import add_tap

    add_tap(subparsers)


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_serve,
    _add_ctl,
    _add_track,
    _add_tap,
    _add_worker,
    _add_beat,
    _add_status,
    _add_dead_letters,
    _add_run,
    _add_health,
    _add_forward,
    _add_outbox,
)
