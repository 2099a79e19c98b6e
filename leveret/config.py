"""The broker's settings: one frozen :class:`Config`, built once at start-up by :func:`load_config`.

This module and :mod:`leveret.cli` are the only places that read the environment and config files; everything
else receives a ``Config``. Precedence, highest first: command line, environment (``LEVERET_<FIELD>``), TOML
file (``--config`` or ``LEVERET_CONFIG``; keys are field names, flat or under a ``[leveret]`` table), defaults.
Every problem is a :class:`ConfigError` whose message is one line naming the setting and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "LEVERET_"
CONFIG_FILE_ENV = "LEVERET_CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")
STORES = ("sqlite", "memory")
SQLITE_SYNCHRONOUS = ("full", "normal")  # the SQLite store's PRAGMA synchronous (OFF and EXTRA are not offered)
STORE_URL_SCHEMES = ("postgresql://", "postgres://")  # store = a PostgreSQL URL (docs/cluster.md)
TLS_VERIFY = ("none", "peer")
TLS_VERSIONS = ("1.2", "1.3")
# RabbitMQ's ssl_cert_login_from values (distinguished_name is its default)
CERT_LOGIN_FROM = ("distinguished_name", "common_name")
# RabbitMQ refuses a max_message_size above 512 MiB; so do we.
MAX_MESSAGE_SIZE_LIMIT = 512 * 1024 * 1024
# Share of the machine's RAM used when memory_high_watermark is 0 (RabbitMQ's vm_memory_high_watermark).
AUTO_MEMORY_FRACTION = 0.4
# Assumed RAM where the platform cannot tell (no os.sysconf, as on Windows).
_FALLBACK_RAM = 1024 * 1024 * 1024
_CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


class ConfigError(Exception):
    """A setting is missing, malformed or out of range; ``str(error)`` is a one-line message for the user."""


@dataclasses.dataclass(frozen=True)
class Config:
    """The broker's settings. Values are validated on construction (raising :class:`ConfigError`).

    ``memory_high_watermark`` given as 0 means "auto" and is replaced on construction by 40% of the
    machine's RAM (or of the container's memory limit, if lower), so readers always see a byte count.
    """

    bind: str = "127.0.0.1"
    port: int = 5672
    data_dir: str = "./leveret-data"
    log_level: str = "info"
    heartbeat: int = 60
    frame_max: int = 131072
    channel_max: int = 2047
    max_message_size: int = 134217728
    memory_high_watermark: int = 0
    default_user: str = "guest"
    default_pass: str = "guest"
    loopback_users: tuple[str, ...] = ("guest",)
    default_vhost: str = "/"
    store: str = "sqlite"
    disk_free_limit: int = 50_000_000
    queue_memory_budget: int = 16_000_000
    queue_memory_window: int = 2048
    http_bind: str = "127.0.0.1"
    http_port: int = 15672
    plain_listener: bool = True
    tls_port: int = 5671
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_key_password: str = ""
    tls_ca_file: str = ""
    tls_verify: str = "none"
    tls_fail_if_no_peer_cert: bool = False
    tls_min_version: str = "1.2"
    tls_cert_login_from: str = "distinguished_name"
    tls_external_login: bool = False
    http_tls_port: int = 15671
    stomp_port: int = 61613  # STOMP (docs/stomp.md); -1: off, 0: any free port
    stomp_tls_port: int = 61614  # STOMP over TLS, when a certificate is configured; -1: off
    metrics_auth: bool = False  # /metrics without a login, as RabbitMQ's Prometheus plugin (docs/management.md)

    audit_log: str | None = None  # None: <data_dir>/audit.log; "": no audit file (docs/security.md)
    tracking_window: int = 300
    tracking_max_events: int = 100_000
    write_hold_ms: int = 2  # store writes nobody waits for wait this long for a confirm's commit (0: never)
    store_connect_retry: int = 60  # seconds a PostgreSQL store that is down at start is retried (docs/cluster.md)
    sqlite_synchronous: str = "full"  # SQLite store: full (power-loss safe) or normal (kill -9 safe)
    node_name: str = ""  # this node's name ("": leveret@HOST, or leveret@HOST:PORT with cluster; docs/cluster.md)
    cluster: bool = False  # several nodes on one PostgreSQL store (docs/cluster.md); false: one node per store
    node_lease: int = 15  # seconds a node of a cluster may go unseen before it counts as down (docs/cluster.md)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = _convert(field.name, getattr(self, field.name), "Config()")
            object.__setattr__(self, field.name, value)
        if self.memory_high_watermark == 0:
            object.__setattr__(self, "memory_high_watermark", auto_memory_high_watermark())
        _check_listeners(self)

    @property
    def tls(self) -> bool:
        """True when a certificate is configured: the AMQPS (and HTTPS) listeners are started."""
        return bool(self.tls_cert_file)


FIELD_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Config))


def env_var(name: str) -> str:
    """The environment variable that sets field ``name``: ``LEVERET_`` and the name upper-cased."""
    return ENV_PREFIX + name.upper()


def load_config(cli_args: Mapping[str, Any], environ: Mapping[str, str], config_file: str | None) -> Config:
    """Build the :class:`Config` from command-line values, the environment and a TOML file.

    ``cli_args`` maps field names to values; ``None`` means "not given". ``config_file`` is the path given on
    the command line; when it is ``None`` the path comes from ``LEVERET_CONFIG`` (empty or unset: no file).
    Raises :class:`ConfigError` for an unknown setting, a bad value, or a file that cannot be read or parsed.
    """
    path = config_file if config_file is not None else environ.get(CONFIG_FILE_ENV) or None
    raw: dict[str, tuple[Any, str]] = {}
    if path is not None:
        raw.update(_read_file(path))
    raw.update(_from_environ(environ))
    raw.update(_from_cli(cli_args))
    values = {name: _convert(name, value, source) for name, (value, source) in raw.items()}
    return Config(**values)


def socket_path(data_dir: str | Path) -> Path:
    """The control socket of the broker whose data directory is ``data_dir`` (what ``leveret ctl`` connects to)."""
    return Path(data_dir) / "leveret.sock"


def node_name(config: Config) -> str:
    """This node's name: ``node_name``, else ``leveret@HOST`` (RabbitMQ's rabbit@HOST), or with ``cluster`` (where
    several nodes may run on one host) ``leveret@HOST:PORT``, and ``leveret@HOST:pPID`` when the port is chosen at
    start (``port = 0``: a generated name, a new one at every start)."""
    if config.node_name:
        return config.node_name
    host = os.uname().nodename
    if not config.cluster:
        return f"leveret@{host}"
    return f"leveret@{host}:{config.port}" if config.port else f"leveret@{host}:p{os.getpid()}"


def auto_memory_high_watermark() -> int:
    """40% of the memory this process can use: the machine's RAM, or the cgroup limit if that is lower."""
    return int(_usable_memory() * AUTO_MEMORY_FRACTION)


# --- sources -------------------------------------------------------------------------------------------------


def _from_cli(cli_args: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    for name, value in cli_args.items():
        if name not in FIELD_NAMES:
            raise ConfigError(f"unknown setting {name!r} on the command line")
        if value is not None:
            found[name] = (value, "--" + name.replace("_", "-"))
    return found


def _from_environ(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    return {name: (environ[env_var(name)], env_var(name)) for name in FIELD_NAMES if env_var(name) in environ}


def _read_file(path: str) -> dict[str, tuple[Any, str]]:
    import tomllib  # here, not at the top: ~1 MiB and a few ms at every start that reads no file

    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot parse config file {path}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    return _settings_from_document(document, path)


def _settings_from_document(document: dict[str, Any], path: str) -> dict[str, tuple[Any, str]]:
    """Flat keys and the keys of a ``[leveret]`` table, each at most once; anything else is an error."""
    found: dict[str, tuple[Any, str]] = {}
    table = document.pop("leveret", {})
    if not isinstance(table, dict):
        raise ConfigError(f"invalid setting 'leveret' in {path}: must be a table of settings")
    keyed = [(key, key, value) for key, value in document.items()]
    keyed += [(key, "leveret." + key, value) for key, value in table.items()]
    for name, written, value in keyed:
        if name not in FIELD_NAMES:
            raise ConfigError(f"unknown setting {written!r} in {path}{_suggestion(name)}")
        if name in found:
            raise ConfigError(f"setting {name!r} is given twice in {path} (flat and under [leveret])")
        found[name] = (value, path)
    return found


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name.replace("-", "_"), FIELD_NAMES, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- conversion and validation -------------------------------------------------------------------------------


def _to_int(low: int, high: int | None) -> Callable[[Any], Any]:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("not an integer")
        if isinstance(value, str):
            try:
                value = int(value.strip(), 10)
            except ValueError:
                raise ValueError("not an integer") from None
        if not isinstance(value, int):
            raise ValueError("not an integer")
        if high is None and value < low:
            raise ValueError(f"must be at least {low}")
        if high is not None and not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return convert


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _to_nonempty_str(value: Any) -> str:
    if not _to_str(value).strip():
        raise ValueError("must not be empty")
    return str(value).strip()


def _to_log_level(value: Any) -> str:
    level = _to_str(value).strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return level


def _to_store(value: Any) -> str:
    text = _to_str(value).strip()
    if text.startswith(STORE_URL_SCHEMES):
        return text
    name = text.lower()
    if name not in STORES:
        raise ValueError("must be one of " + ", ".join(STORES) + " or a postgresql:// URL")
    return name


def _to_user_list(value: Any) -> tuple[str, ...]:
    """A comma-separated string (environment) or a list of strings (TOML, code); empty means nobody."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise ValueError("not a list of user names")
    return tuple(item.strip() for item in items if item.strip())


def _to_bool(value: Any) -> bool:
    """A TOML boolean, or true/false, yes/no, on/off, 1/0 (any case) in the environment."""
    if isinstance(value, bool):
        return value
    text = _to_str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError("must be true or false")


def _to_choice(value: Any, choices: tuple[str, ...], prefix: str = "") -> str:
    """One of ``choices`` (any case); ``prefix`` may be written before it (RabbitMQ's ``verify_peer``)."""
    text = _to_str(value).strip().lower()
    if prefix and text.startswith(prefix):
        text = text[len(prefix):]
    if text not in choices:
        raise ValueError("must be one of " + ", ".join(choices))
    return text


def _check_listeners(config: Config) -> None:
    """Settings that are valid alone but not together (the files themselves are checked by
    :func:`leveret.server.tls.server_context` when the broker starts)."""
    if config.cluster and not config.store.startswith(STORE_URL_SCHEMES):
        raise ConfigError(f"cluster is true but the store is {config.store}: several nodes share a PostgreSQL "
                          "store (store = \"postgresql://...\"; docs/cluster.md)")
    if not config.plain_listener and not config.tls:
        raise ConfigError("plain_listener is false but TLS is off (no tls_cert_file): there would be no AMQP "
                          "listener")
    if not config.tls:
        return
    if not config.tls_key_file:
        raise ConfigError("tls_key_file is not set: tls_cert_file needs the certificate's private key")
    if config.tls_verify == "peer" and not config.tls_ca_file:
        raise ConfigError("tls_ca_file is not set: tls_verify 'peer' needs the CA certificates that client "
                          "certificates are checked against")
    if config.tls_fail_if_no_peer_cert and config.tls_verify != "peer":
        raise ConfigError("tls_fail_if_no_peer_cert is true but tls_verify is 'none': client certificates are "
                          "only asked for with tls_verify 'peer'")


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bind": _to_nonempty_str,
    "port": _to_int(0, 65535),
    "data_dir": _to_nonempty_str,
    "log_level": _to_log_level,
    "heartbeat": _to_int(0, 65535),
    "frame_max": _to_int(4096, 2**32 - 1),
    "channel_max": _to_int(1, 65535),
    "max_message_size": _to_int(1, MAX_MESSAGE_SIZE_LIMIT),
    "memory_high_watermark": _to_int(0, None),
    "default_user": _to_nonempty_str,
    "default_pass": _to_str,
    "loopback_users": _to_user_list,
    "default_vhost": _to_nonempty_str,
    "store": _to_store,
    "disk_free_limit": _to_int(0, None),
    "queue_memory_budget": _to_int(0, None),
    "queue_memory_window": _to_int(4, None),
    "http_bind": _to_nonempty_str,
    "http_port": _to_int(-1, 65535),
    "plain_listener": _to_bool,
    "tls_port": _to_int(0, 65535),
    "tls_cert_file": _to_str,
    "tls_key_file": _to_str,
    "tls_key_password": _to_str,
    "tls_ca_file": _to_str,
    "tls_verify": lambda value: _to_choice(value, TLS_VERIFY, prefix="verify_"),
    "tls_fail_if_no_peer_cert": _to_bool,
    "tls_min_version": lambda value: _to_choice(value, TLS_VERSIONS, prefix="tlsv"),
    "tls_cert_login_from": lambda value: _to_choice(value, CERT_LOGIN_FROM),
    "tls_external_login": _to_bool,
    "http_tls_port": _to_int(-1, 65535),
    "stomp_port": _to_int(-1, 65535),
    "stomp_tls_port": _to_int(-1, 65535),
    "metrics_auth": _to_bool,

    "audit_log": lambda value: None if value is None else _to_str(value).strip(),
    "tracking_window": _to_int(0, None),
    "tracking_max_events": _to_int(0, None),
    "write_hold_ms": _to_int(0, 1000),
    "store_connect_retry": _to_int(0, None),
    "sqlite_synchronous": lambda value: _to_choice(value, SQLITE_SYNCHRONOUS),
    "node_name": lambda value: _to_str(value).strip(),
    "cluster": _to_bool,
    "node_lease": _to_int(3, 3600),
}


def _convert(name: str, value: Any, source: str) -> Any:
    try:
        return _CONVERTERS[name](value)
    except ValueError as exc:
        raise ConfigError(f"invalid {name} {_show(value)} in {source}: {exc}") from None


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return "'" + (text if len(text) <= 40 else text[:37] + "...") + "'"


# --- memory --------------------------------------------------------------------------------------------------


def _usable_memory() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = _FALLBACK_RAM
    if ram <= 0:
        ram = _FALLBACK_RAM
    limit = _cgroup_memory_limit()
    return min(ram, limit) if limit else ram


def _cgroup_memory_limit() -> int | None:
    """The container's memory limit in bytes, or ``None`` where there is none or it cannot be read."""
    for path in _CGROUP_MEMORY_LIMITS:
        try:
            with open(path, encoding="ascii") as file:
                text = file.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit() and 0 < int(text) < 2**60:
            return int(text)
    return None
