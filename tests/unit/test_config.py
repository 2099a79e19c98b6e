"""leveret.config: defaults, precedence (CLI > environment > TOML file > defaults), conversion, every error."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from leveret import config as config_module
from leveret.config import (
    FIELD_NAMES,
    Config,
    ConfigError,
    auto_memory_high_watermark,
    env_var,
    load_config,
)


def write(tmp_path: Path, text: str, name: str = "leveret.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(cli: dict[str, Any] | None = None, env: dict[str, str] | None = None, file: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cli or {}, env or {}, file)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults ------------------------------------------------------------------------------------------------


def test_defaults_match_rabbitmq() -> None:
    config = load_config({}, {}, None)
    assert config.bind == "127.0.0.1"
    assert config.port == 5672
    assert config.data_dir == "./leveret-data"
    assert config.log_level == "info"
    assert config.heartbeat == 60
    assert config.frame_max == 131072
    assert config.channel_max == 2047
    assert config.max_message_size == 128 * 1024 * 1024
    assert config.default_user == "guest"
    assert config.default_pass == "guest"
    assert config.loopback_users == ("guest",)
    assert config.default_vhost == "/"


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_memory_watermark_zero_means_auto() -> None:
    auto = Config().memory_high_watermark
    assert auto == auto_memory_high_watermark()
    assert auto > 0
    assert Config(memory_high_watermark=12345).memory_high_watermark == 12345


def test_auto_memory_is_forty_percent_of_usable_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "_usable_memory", lambda: 10_000)
    assert Config().memory_high_watermark == 4_000


def test_usable_memory_respects_a_lower_cgroup_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    limit = write(tmp_path, "1048576\n", "memory.max")
    monkeypatch.setattr(config_module, "_CGROUP_MEMORY_LIMITS", (str(tmp_path / "missing"), limit))
    assert config_module._usable_memory() == 1048576


def test_unlimited_cgroup_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    limit = write(tmp_path, "max\n", "memory.max")
    monkeypatch.setattr(config_module, "_CGROUP_MEMORY_LIMITS", (limit,))
    assert config_module._cgroup_memory_limit() is None


def test_replace_keeps_the_resolved_watermark() -> None:
    config = Config(memory_high_watermark=777)
    assert dataclasses.replace(config, port=1).memory_high_watermark == 777


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"invalid port '70000' in Config\(\): must be between 0 and 65535"):
        Config(port=70000)


# --- precedence ----------------------------------------------------------------------------------------------


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 1111\nbind = "0.0.0.0"\nheartbeat = 30\n')
    env = {"LEVERET_PORT": "2222", "LEVERET_BIND": "::1"}
    config = load_config({"port": "3333"}, env, path)
    assert config.port == 3333  # CLI
    assert config.bind == "::1"  # environment
    assert config.heartbeat == 30  # file
    assert config.frame_max == 131072  # default


def test_cli_none_means_not_given() -> None:
    config = load_config({"port": None, "bind": None}, {"LEVERET_PORT": "5673"}, None)
    assert config.port == 5673
    assert config.bind == "127.0.0.1"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 1234\n")
    assert load_config({}, {"LEVERET_CONFIG": path}, None).port == 1234


def test_config_file_argument_beats_environment(tmp_path: Path) -> None:
    first = write(tmp_path, "port = 1\n", "first.toml")
    second = write(tmp_path, "port = 2\n", "second.toml")
    assert load_config({}, {"LEVERET_CONFIG": first}, second).port == 2


def test_empty_config_env_means_no_file() -> None:
    assert load_config({}, {"LEVERET_CONFIG": ""}, None) == Config()


def test_every_field_has_an_environment_variable() -> None:
    env = {
        "LEVERET_BIND": "0.0.0.0",
        "LEVERET_PORT": "0",
        "LEVERET_DATA_DIR": "/var/lib/leveret",
        "LEVERET_LOG_LEVEL": "DEBUG",
        "LEVERET_HEARTBEAT": "0",
        "LEVERET_FRAME_MAX": "4096",
        "LEVERET_CHANNEL_MAX": "65535",
        "LEVERET_MAX_MESSAGE_SIZE": "1024",
        "LEVERET_MEMORY_HIGH_WATERMARK": "1000000",
        "LEVERET_DEFAULT_USER": "admin",
        "LEVERET_DEFAULT_PASS": "",
        "LEVERET_LOOPBACK_USERS": "guest, admin",
        "LEVERET_DEFAULT_VHOST": "prod",
        "LEVERET_STORE": "Memory",
        "LEVERET_DISK_FREE_LIMIT": "0",
        "LEVERET_QUEUE_MEMORY_BUDGET": "1000",
        "LEVERET_QUEUE_MEMORY_WINDOW": "64",
        "LEVERET_HTTP_BIND": "0.0.0.0",
        "LEVERET_HTTP_PORT": "-1",
        "LEVERET_PLAIN_LISTENER": "no",
        "LEVERET_TLS_PORT": "5999",
        "LEVERET_TLS_CERT_FILE": "/etc/leveret/server.pem",
        "LEVERET_TLS_KEY_FILE": "/etc/leveret/server.key",
        "LEVERET_TLS_KEY_PASSWORD": "secret",
        "LEVERET_TLS_CA_FILE": "/etc/leveret/ca.pem",
        "LEVERET_TLS_VERIFY": "verify_peer",
        "LEVERET_TLS_FAIL_IF_NO_PEER_CERT": "TRUE",
        "LEVERET_TLS_MIN_VERSION": "1.3",
        "LEVERET_TLS_CERT_LOGIN_FROM": "common_name",
        "LEVERET_TLS_EXTERNAL_LOGIN": "yes",
        "LEVERET_HTTP_TLS_PORT": "-1",
        "LEVERET_METRICS_AUTH": "on",
        "LEVERET_STOMP_PORT": "-1",
        "LEVERET_STOMP_TLS_PORT": "0",

        "LEVERET_AUDIT_LOG": "",

        "LEVERET_TRACKING_WINDOW": "60",
        "LEVERET_TRACKING_MAX_EVENTS": "0",
        "LEVERET_WRITE_HOLD_MS": "0",
        "LEVERET_STORE_CONNECT_RETRY": "5",
        "LEVERET_SQLITE_SYNCHRONOUS": "Normal",
        "LEVERET_NODE_NAME": " mq-1 ",
        "LEVERET_CLUSTER": "off",
        "LEVERET_NODE_LEASE": "30",
    }
    assert sorted(env) == sorted(env_var(name) for name in FIELD_NAMES)
    config = load_config({}, env, None)
    assert config == Config(
        bind="0.0.0.0",
        port=0,
        data_dir="/var/lib/leveret",
        log_level="debug",
        heartbeat=0,
        frame_max=4096,
        channel_max=65535,
        max_message_size=1024,
        memory_high_watermark=1000000,
        default_user="admin",
        default_pass="",
        loopback_users=("guest", "admin"),
        default_vhost="prod",
        store="memory",
        disk_free_limit=0,
        queue_memory_budget=1000,
        queue_memory_window=64,
        http_bind="0.0.0.0",
        http_port=-1,
        plain_listener=False,
        tls_port=5999,
        tls_cert_file="/etc/leveret/server.pem",
        tls_key_file="/etc/leveret/server.key",
        tls_key_password="secret",
        tls_ca_file="/etc/leveret/ca.pem",
        tls_verify="peer",
        tls_fail_if_no_peer_cert=True,
        tls_min_version="1.3",
        stomp_port=-1,
        stomp_tls_port=0,
        tls_cert_login_from="common_name",
        tls_external_login=True,
        http_tls_port=-1,
        metrics_auth=True,

        audit_log="",

        tracking_window=60,
        tracking_max_events=0,
        write_hold_ms=0,
        store_connect_retry=5,
        sqlite_synchronous="normal",
        node_name="mq-1",
        cluster=False,
        node_lease=30,
    )


def test_cluster_needs_a_postgresql_store_and_names_its_nodes() -> None:
    from leveret.config import node_name

    url = "postgresql://leveret@db.example/broker"
    with pytest.raises(ConfigError, match="cluster is true but the store is sqlite"):
        load_config({}, {"LEVERET_CLUSTER": "true"}, None)
    with pytest.raises(ConfigError, match="invalid node_lease '1' in LEVERET_NODE_LEASE: must be between 3 and"):
        load_config({}, {"LEVERET_NODE_LEASE": "1"}, None)
    host = os.uname().nodename
    assert node_name(Config()) == f"leveret@{host}"  # as before: one node per host
    assert node_name(Config(store=url, cluster=True, port=5673)) == f"leveret@{host}:5673"
    assert node_name(Config(store=url, cluster=True, port=0)) == f"leveret@{host}:p{os.getpid()}"
    assert node_name(Config(store=url, cluster=True, node_name="mq-2")) == "mq-2"


def test_store_is_a_name_or_a_postgresql_url() -> None:
    url = "postgresql://leveret:Secret@db.example:5433/broker?schema=Prod"
    assert load_config({}, {"LEVERET_STORE": f" {url} "}, None).store == url  # kept as given (case matters)
    assert load_config({"store": "postgres://h/db"}, {}, None).store == "postgres://h/db"
    assert load_config({"store": "SQLite"}, {}, None).store == "sqlite"
    with pytest.raises(ConfigError, match="sqlite, memory or a postgresql:// URL"):
        load_config({"store": "mysql://h/db"}, {}, None)


def test_sqlite_synchronous_is_full_or_normal() -> None:
    assert Config().sqlite_synchronous == "full"
    assert load_config({}, {"LEVERET_SQLITE_SYNCHRONOUS": "NORMAL"}, None).sqlite_synchronous == "normal"
    for refused in ("off", "extra", "1"):
        with pytest.raises(ConfigError, match="must be one of full, normal"):
            load_config({"sqlite_synchronous": refused}, {}, None)


def test_unrelated_environment_variables_are_ignored() -> None:
    assert load_config({}, {"LEVERET_URL": "amqp://x", "PORT": "1"}, None) == Config()


# --- the TOML file -------------------------------------------------------------------------------------------


def test_flat_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_dir = "/srv/q"\nloopback_users = []\nlog_level = "warning"\n')
    config = load_config({}, {}, path)
    assert config.data_dir == "/srv/q"
    assert config.loopback_users == ()
    assert config.log_level == "warning"


def test_leveret_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[leveret]\nport = 5999\nloopback_users = ["guest", "ops"]\n')
    config = load_config({}, {}, path)
    assert config.port == 5999
    assert config.loopback_users == ("guest", "ops")


def test_flat_and_table_together(tmp_path: Path) -> None:
    path = write(tmp_path, 'bind = "0.0.0.0"\n[leveret]\nport = 5999\n')
    config = load_config({}, {}, path)
    assert (config.bind, config.port) == ("0.0.0.0", 5999)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config({}, {}, write(tmp_path, "")) == Config()


# --- conversions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("port", " 5673 ", 5673),
        ("port", 0, 0),
        ("port", "65535", 65535),
        ("heartbeat", "0", 0),
        ("frame_max", "4096", 4096),
        ("channel_max", "1", 1),
        ("max_message_size", "536870912", 536870912),
        ("log_level", "Warning", "warning"),
        ("log_level", " error ", "error"),
        ("bind", " 0.0.0.0 ", "0.0.0.0"),
        ("loopback_users", "", ()),
        ("loopback_users", "a,,b ,", ("a", "b")),
        ("loopback_users", ["x"], ("x",)),
        ("default_pass", " spaced ", " spaced "),
    ],
)
def test_conversion(name: str, given: Any, expected: Any) -> None:
    assert getattr(load_config({name: given}, {}, None), name) == expected


# --- errors --------------------------------------------------------------------------------------------------


def test_bad_port_in_environment() -> None:
    assert error_of(env={"LEVERET_PORT": "abc"}) == "invalid port 'abc' in LEVERET_PORT: not an integer"


def test_bad_port_on_command_line() -> None:
    assert error_of(cli={"port": "70000"}) == "invalid port '70000' in --port: must be between 0 and 65535"


def test_bad_data_dir_on_command_line_names_the_option() -> None:
    assert error_of(cli={"data_dir": ""}) == "invalid data_dir '' in --data-dir: must not be empty"


def test_bad_value_in_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat = -1\n")
    assert error_of(file=path) == f"invalid heartbeat '-1' in {path}: must be between 0 and 65535"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("port", "-1", "must be between 0 and 65535"),
        ("port", "65536", "must be between 0 and 65535"),
        ("port", "1.5", "not an integer"),
        ("port", "", "not an integer"),
        ("heartbeat", "-1", "must be between 0 and 65535"),
        ("frame_max", "4095", "must be between 4096 and 4294967295"),
        ("channel_max", "0", "must be between 1 and 65535"),
        ("channel_max", "65536", "must be between 1 and 65535"),
        ("max_message_size", "0", "must be between 1 and 536870912"),
        ("max_message_size", "536870913", "must be between 1 and 536870912"),
        ("memory_high_watermark", "-5", "must be at least 0"),
        ("log_level", "verbose", "must be one of debug, info, warning, error"),
        ("bind", " ", "must not be empty"),
        ("data_dir", "", "must not be empty"),
        ("default_user", "", "must not be empty"),
        ("default_vhost", "", "must not be empty"),
    ],
)
def test_invalid_environment_value(name: str, value: str, reason: str) -> None:
    var = env_var(name)
    assert error_of(env={var: value}) == f"invalid {name} '{value}' in {var}: {reason}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("port = true", "invalid port 'True' in {path}: not an integer"),
        ("port = 1.0", "invalid port '1.0' in {path}: not an integer"),
        ("bind = 1", "invalid bind '1' in {path}: not a string"),
        ("default_pass = 1", "invalid default_pass '1' in {path}: not a string"),
        ("loopback_users = [1]", "invalid loopback_users '[1]' in {path}: not a list of user names"),
        ("loopback_users = 3", "invalid loopback_users '3' in {path}: not a list of user names"),
        ("log_level = []", "invalid log_level '[]' in {path}: not a string"),
    ],
)
def test_wrong_toml_types(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, line + "\n")
    assert error_of(file=path) == message.format(path=path)


def test_long_values_are_shortened_in_messages() -> None:
    message = error_of(env={"LEVERET_PORT": "9" * 200})
    assert len(message) < 120
    assert "..." in message


def test_unknown_setting_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "prot = 1\n")
    assert error_of(file=path) == f"unknown setting 'prot' in {path} (did you mean 'port'?)"


def test_unknown_setting_without_a_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, "zzz = 1\n")
    assert error_of(file=path) == f"unknown setting 'zzz' in {path}"


def test_unknown_setting_in_leveret_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[leveret]\ndata-dir = 'x'\n")
    assert error_of(file=path) == f"unknown setting 'leveret.data-dir' in {path} (did you mean 'data_dir'?)"


def test_other_tables_are_unknown_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 1\n")
    assert error_of(file=path) == f"unknown setting 'server' in {path}"


def test_leveret_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "leveret = 1\n")
    assert error_of(file=path) == f"invalid setting 'leveret' in {path}: must be a table of settings"


def test_setting_given_flat_and_in_table(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 1\n[leveret]\nport = 2\n")
    assert error_of(file=path) == f"setting 'port' is given twice in {path} (flat and under [leveret])"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "x.toml")
    assert error_of(file=path) == f"cannot read config file {path}: No such file or directory"


def test_missing_file_from_environment(tmp_path: Path) -> None:
    path = str(tmp_path / "x.toml")
    assert error_of(env={"LEVERET_CONFIG": path}) == f"cannot read config file {path}: No such file or directory"


def test_directory_as_file(tmp_path: Path) -> None:
    assert error_of(file=str(tmp_path)) == f"cannot read config file {tmp_path}: Is a directory"


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "port 5672\n")
    message = error_of(file=path)
    assert message.startswith(f"cannot parse config file {path}: ")
    assert "line 1" in message


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'default_user = "\xe9"\n')
    assert error_of(file=str(path)) == f"cannot parse config file {path}: not valid UTF-8"


def test_unknown_cli_key() -> None:
    assert error_of(cli={"prot": "1"}) == "unknown setting 'prot' on the command line"


def test_errors_do_not_chain_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, {"LEVERET_PORT": "x"}, None)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_audit_log_defaults_to_the_data_dir_and_empty_turns_it_off() -> None:
    assert Config().audit_log is None  # the server writes <data_dir>/audit.log
    assert load_config({}, {"LEVERET_AUDIT_LOG": " /var/log/leveret/audit.log "}, None).audit_log == \
        "/var/log/leveret/audit.log"
    assert load_config({}, {"LEVERET_AUDIT_LOG": ""}, None).audit_log == ""
