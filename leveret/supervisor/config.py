"""What the supervisor runs: ``ProgramSpec`` (a name, an argv, how many processes, limits) and ``Settings``
(back-off, health, state directory), built from ``leveret worker`` options or read from a ``leveret.toml``
file by ``load_run_file``. Every mistake in the file is a ``RunConfigError`` with one readable line."""

from __future__ import annotations

import difflib
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_STATE_DIR = "leveret-state"


class RunConfigError(ValueError):
    """A leveret.toml (or option) that cannot be used; the message names the file, the entry and the key."""


@dataclass(frozen=True)
class ProgramSpec:
    """One program: ``processes`` copies of ``argv``, each restarted when it dies and recycled at the limits.

    ``kind`` is "worker" (a ``leveret worker`` that reports readiness and task counts over the supervisor
    pipe), "forwarder" or "program" (any command; ready once it has been up a second). ``max_memory`` is in MB
    (resident set size, checked by the supervisor); ``max_tasks`` is enforced by the worker itself and shown
    here for the status. ``grace`` is how long a stop waits for the process before SIGKILL (a worker gets
    ``grace`` to finish its running tasks; the supervisor kills at ``grace`` + a few seconds)."""

    name: str
    argv: tuple[str, ...]
    kind: str = "program"
    processes: int = 1
    max_memory: float | None = None
    max_tasks: int | None = None
    grace: float = 30.0
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def reports(self) -> bool:
        return self.kind == "worker"


@dataclass(frozen=True)
class Settings:
    """How the supervisor behaves (the ``[supervisor]`` table of leveret.toml; options of ``leveret worker``).

    A process that exits on its own is restarted after ``backoff`` seconds, doubled for each further exit in
    a row, at most ``backoff_max``; the count resets once a process stayed up ``stable_after`` seconds. A
    program whose processes failed ``crash_loop_after`` times in a row is reported as crash-looping (health
    503)."""

    state_dir: str = DEFAULT_STATE_DIR
    health_port: int | None = None
    health_bind: str = "127.0.0.1"
    backoff: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 10.0
    crash_loop_after: int = 3
    check_interval: float = 1.0
    ready_timeout: float = 60.0
    log_level: str = "info"


def worker_argv(app: str, *, queues: list[str] | None = None, concurrency: int = 4, prefetch: int | None = None,
                max_tasks: int | None = None, grace: float = 30.0, log_level: str = "info") -> tuple[str, ...]:
    """The command line of one worker process: ``leveret worker APP --processes 0 ...`` (in-process)."""
    argv = [sys.executable, "-m", "leveret", "worker", app, "--processes", "0", "--concurrency", str(concurrency),
            "--grace", _num(grace), "--log-level", log_level]
    if queues:
        argv += ["--queues", ",".join(queues)]
    if prefetch is not None:
        argv += ["--prefetch", str(prefetch)]
    if max_tasks is not None:
        argv += ["--max-tasks", str(max_tasks)]
    return tuple(argv)


def forwarder_argv(outbox: str, brokers: list[str]) -> tuple[str, ...]:
    """The command line of the outbox forwarder: ``leveret forward --outbox PATH --broker URL ...``."""
    argv = [sys.executable, "-m", "leveret", "forward", "--outbox", outbox]
    for url in brokers:
        argv += ["--broker", url]
    return tuple(argv)


def beat_argv(app: str, *, url: str | None = None, log_level: str = "info") -> tuple[str, ...]:
    """The command line of a periodic-task scheduler: ``leveret beat APP [--url URL]``."""
    argv = [sys.executable, "-m", "leveret", "beat", app, "--log-level", log_level]
    if url:
        argv += ["--url", url]
    return tuple(argv)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --- leveret.toml ---------------------------------------------------------------------------------------------

_SETTINGS_KEYS = {"state_dir", "health_port", "health_bind", "backoff", "backoff_max", "stable_after",
                  "crash_loop_after", "check_interval", "ready_timeout", "log_level"}
_COMMON_KEYS = {"name", "processes", "max_memory", "grace", "cwd", "env"}
_ENTRY_KEYS = {
    "worker": _COMMON_KEYS | {"app", "queues", "concurrency", "prefetch", "max_tasks", "log_level"},
    "forwarder": _COMMON_KEYS | {"outbox", "brokers"},
    "beat": _COMMON_KEYS | {"app", "url", "log_level"},
    "program": _COMMON_KEYS | {"command"},
}
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def load_run_file(path: str, *, overrides: Mapping[str, Any] | None = None) -> tuple[Settings, list[ProgramSpec]]:
    """Read and check ``path``: ``[supervisor]`` settings, ``[[worker]]``, ``[[forwarder]]``, ``[[beat]]`` and
    ``[[program]]`` entries. ``overrides`` (options given on the command line, None values ignored) win over the file.
    Relative paths (``cwd``, ``outbox``, ``state_dir``) are taken from the file's directory, which is also
    each program's default working directory."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise RunConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RunConfigError(f"{path}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise RunConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_run_document(document, path, overrides=overrides)


def parse_run_document(document: dict[str, Any], path: str, *,
                       overrides: Mapping[str, Any] | None = None) -> tuple[Settings, list[ProgramSpec]]:
    base = os.path.dirname(os.path.abspath(path))
    for key in document:
        if key not in ("supervisor", *_ENTRY_KEYS):
            raise RunConfigError(f"{path}: unknown table {key!r}{_suggest(key, ['supervisor', *_ENTRY_KEYS])} "
                                 "(expected [supervisor], [[worker]], [[forwarder]], [[beat]], [[program]])")
    settings = _parse_settings(document.get("supervisor", {}), path, base, overrides or {})
    programs: list[ProgramSpec] = []
    for kind in _ENTRY_KEYS:
        entries = document.get(kind, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise RunConfigError(f"{path}: {kind!r} must be an array of tables, written [[{kind}]]")
        for number, entry in enumerate(entries, 1):
            programs.append(_parse_entry(kind, number, entry, path, base, settings))
    if not programs:
        raise RunConfigError(f"{path}: nothing to run (add a [[worker]], [[forwarder]], [[beat]] or [[program]] entry)")
    seen: set[str] = set()
    for program in programs:
        if program.name in seen:
            raise RunConfigError(f"{path}: two entries are named {program.name!r} (give each a distinct name =)")
        seen.add(program.name)
    return settings, programs


def _parse_settings(table: Any, path: str, base: str, overrides: Mapping[str, Any]) -> Settings:
    if not isinstance(table, dict):
        raise RunConfigError(f"{path}: [supervisor] must be a table")
    where = f"{path}: [supervisor]"
    _check_keys(table, _SETTINGS_KEYS, where)
    values: dict[str, Any] = {}
    if "state_dir" in table:
        values["state_dir"] = os.path.join(base, _string(table, "state_dir", where))
    else:
        values["state_dir"] = os.path.join(base, DEFAULT_STATE_DIR)
    if "health_port" in table:
        values["health_port"] = _integer(table, "health_port", where, low=0, high=65535)
    if "health_bind" in table:
        values["health_bind"] = _string(table, "health_bind", where)
    for key in ("backoff", "backoff_max", "stable_after", "check_interval", "ready_timeout"):
        if key in table:
            values[key] = _number(table, key, where, positive=True)
    if "crash_loop_after" in table:
        values["crash_loop_after"] = _integer(table, "crash_loop_after", where, low=1)
    if "log_level" in table:
        values["log_level"] = _log_level(table, where)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def _parse_entry(kind: str, number: int, entry: dict[str, Any], path: str, base: str,
                 settings: Settings) -> ProgramSpec:
    label = entry.get("name") if isinstance(entry.get("name"), str) else None
    where = f"{path}: [[{kind}]] #{number}" + (f" ({label})" if label else "")
    _check_keys(entry, _ENTRY_KEYS[kind], where)
    common: dict[str, Any] = {"kind": kind}
    common["processes"] = _integer(entry, "processes", where, low=1) if "processes" in entry else 1
    if "max_memory" in entry:
        common["max_memory"] = _number(entry, "max_memory", where, positive=True)
    common["grace"] = _number(entry, "grace", where, positive=True) if "grace" in entry else 30.0
    common["cwd"] = os.path.join(base, _string(entry, "cwd", where)) if "cwd" in entry else base
    if "env" in entry:
        env = entry["env"]
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise RunConfigError(f"{where}: env must be a table of strings, e.g. env = {{ LEVERET_URL = \"...\" }}")
        common["env"] = dict(env)
    if kind in ("worker", "beat"):
        app = _app(entry, where)
    if kind == "beat":
        url = _string(entry, "url", where) if "url" in entry else None
        log_level = _log_level(entry, where) if "log_level" in entry else settings.log_level
        return ProgramSpec(name=label or f"beat {app}", argv=beat_argv(app, url=url, log_level=log_level), **common)
    if kind == "worker":
        queues = _queues(entry, where)
        concurrency = _integer(entry, "concurrency", where, low=1) if "concurrency" in entry else 4
        prefetch = _integer(entry, "prefetch", where, low=1) if "prefetch" in entry else None
        max_tasks = _integer(entry, "max_tasks", where, low=1) if "max_tasks" in entry else None
        log_level = _log_level(entry, where) if "log_level" in entry else settings.log_level
        name = label or (app if not queues else f"{app}[{','.join(queues)}]")
        argv = worker_argv(app, queues=queues, concurrency=concurrency, prefetch=prefetch, max_tasks=max_tasks,
                           grace=common["grace"], log_level=log_level)
        return ProgramSpec(name=name, argv=argv, max_tasks=max_tasks, **common)
    if kind == "forwarder":
        if "outbox" not in entry:
            raise RunConfigError(f"{where}: missing outbox (the path of the outbox to forward)")
        outbox = _string(entry, "outbox", where)
        if "://" not in outbox:  # a file, relative to the run file; a postgresql:// URL as it is
            outbox = os.path.join(base, outbox)
        brokers = entry.get("brokers")
        if not isinstance(brokers, list) or not brokers or not all(isinstance(b, str) and b for b in brokers):
            raise RunConfigError(f"{where}: brokers must be a non-empty list of URLs, "
                                 "e.g. brokers = [\"amqp://guest:guest@127.0.0.1:5672/\"]")
        return ProgramSpec(name=label or f"forwarder-{number}", argv=forwarder_argv(outbox, brokers), **common)
    command = entry.get("command")
    if isinstance(command, str):
        raise RunConfigError(f"{where}: command must be a list of arguments, e.g. command = [\"python\", "
                             "\"-m\", \"myproject.daemon\"] (no shell)")
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise RunConfigError(f"{where}: missing command (a non-empty list of strings)")
    if label is None:
        raise RunConfigError(f"{where}: missing name (a [[program]] needs one)")
    return ProgramSpec(name=label, argv=tuple(command), **common)


def _app(entry: dict[str, Any], where: str) -> str:
    if "app" not in entry:
        raise RunConfigError(f"{where}: missing app (e.g. app = \"myproject.tasks:app\")")
    app = _string(entry, "app", where)
    module, _, attr = app.partition(":")
    if not module or not attr:
        raise RunConfigError(f"{where}: app {app!r} is not MODULE:APP (e.g. \"myproject.tasks:app\")")
    return app


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise RunConfigError(f"{where}: unknown key {key!r}{_suggest(key, allowed)}")


def _suggest(key: str, choices: Any) -> str:
    close = difflib.get_close_matches(key, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _string(table: dict[str, Any], key: str, where: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise RunConfigError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


def _integer(table: dict[str, Any], key: str, where: str, *, low: int = 0, high: int | None = None) -> int:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise RunConfigError(f"{where}: {key} must be an integer {bound}, not {value!r}")
    return value


def _number(table: dict[str, Any], key: str, where: str, *, positive: bool = False) -> float:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or (positive and value <= 0):
        raise RunConfigError(f"{where}: {key} must be a {'positive ' if positive else ''}number, not {value!r}")
    return float(value)


def _log_level(table: dict[str, Any], where: str) -> str:
    value = table["log_level"]
    if not isinstance(value, str) or value.lower() not in _LOG_LEVELS:
        raise RunConfigError(f"{where}: log_level must be one of {', '.join(_LOG_LEVELS)}, not {value!r}")
    return value.lower()


def _queues(entry: dict[str, Any], where: str) -> list[str] | None:
    if "queues" not in entry:
        return None
    value = entry["queues"]
    if isinstance(value, str):
        value = [q.strip() for q in value.split(",") if q.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(q, str) and q for q in value):
        raise RunConfigError(f"{where}: queues must be a list of queue names, e.g. queues = [\"emails\"]")
    return value
