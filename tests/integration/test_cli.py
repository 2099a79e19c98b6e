"""leveret.cli: --version, configuration errors (exit 2) and a port in use (exit 1), one line, no traceback."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import leveret
from leveret.cli import build_parser, describe_listen_error, main

REPO_ROOT = Path(__file__).resolve().parents[2]


def clean_env() -> dict[str, str]:
    """The current environment without LEVERET_* variables, with the repository importable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEVERET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_leveret(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leveret", *args],
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_error_line(stderr: str, expected: str | None = None) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("leveret: error: "), stderr
    if expected is not None:
        assert lines[0] == "leveret: error: " + expected
    return lines[0]


@pytest.fixture
def no_leveret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LEVERET_"):
            monkeypatch.delenv(key)


# --- in process ----------------------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"leveret {leveret.__version__} ({leveret.build()})"
    assert leveret.__version__ == "0.1.0"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: leveret" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--nope"]) == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


def test_serve_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--bind", "--port", "--data-dir", "--config", "--log-level"):
        assert option in out


def test_serve_options_parse() -> None:
    args = build_parser().parse_args(
        ["serve", "--bind", "0.0.0.0", "--port", "1", "--data-dir", "d", "--config", "c.toml", "--log-level", "debug"]
    )
    given = (args.bind, args.port, args.data_dir, args.config, args.log_level)
    assert given == ("0.0.0.0", "1", "d", "c.toml", "debug")


@pytest.mark.usefixtures("no_leveret_env")
def test_bad_port_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "abc"]) == 2
    captured = capsys.readouterr()
    assert_one_error_line(captured.err, "invalid port 'abc' in --port: not an integer")
    assert captured.out == ""


@pytest.mark.usefixtures("no_leveret_env")
def test_bad_log_level_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--log-level", "loud"]) == 2
    expected = "invalid log_level 'loud' in --log-level: must be one of debug, info, warning, error"
    assert_one_error_line(capsys.readouterr().err, expected)


def test_bad_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LEVERET_FRAME_MAX", "100")
    assert main(["serve"]) == 2
    expected = "invalid frame_max '100' in LEVERET_FRAME_MAX: must be between 4096 and 4294967295"
    assert_one_error_line(capsys.readouterr().err, expected)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.EADDRINUSE, "Address already in use"), "address already in use"),
        (OSError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.EADDRNOTAVAIL, "x"), "address not available on this machine"),
        (socket.gaierror(-2, "Name or service not known"), "name or service not known"),
        (OSError("something odd"), "something odd"),
    ],
)
def test_describe_listen_error(exc: OSError, expected: str) -> None:
    assert describe_listen_error(exc, "127.0.0.1", 5672) == "cannot listen on 127.0.0.1:5672: " + expected


def test_describe_listen_error_names_a_file() -> None:
    exc = OSError(errno.EACCES, "Permission denied", "/srv/data")
    assert describe_listen_error(exc, "127.0.0.1", 5672) == "/srv/data: permission denied"


def test_describe_listen_error_brackets_ipv6() -> None:
    exc = OSError(errno.EADDRINUSE, "Address already in use")
    assert describe_listen_error(exc, "::1", 5672) == "cannot listen on [::1]:5672: address already in use"


# --- as a process: what a user sees --------------------------------------------------------------------------


def test_version_as_a_process(tmp_path: Path) -> None:
    result = run_leveret("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() in ("leveret 0.1.0 (pure Python)", "leveret 0.1.0 (compiled with mypyc)")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("port = 'abc'\n", "invalid port 'abc' in bad.toml: not an integer"),
        ("prot = 5672\n", "unknown setting 'prot' in bad.toml (did you mean 'port'?)"),
        ("port = \n", None),
        ("[leveret]\nframe_max = 10\n", "invalid frame_max '10' in bad.toml: must be between 4096 and 4294967295"),
    ],
)
def test_bad_config_file_exits_2_with_one_line(tmp_path: Path, content: str, expected: str | None) -> None:
    (tmp_path / "bad.toml").write_text(content, encoding="utf-8")
    result = run_leveret("serve", "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    line = assert_one_error_line(result.stderr, expected)
    if expected is None:
        assert line.startswith("leveret: error: cannot parse config file bad.toml: ")
    assert result.stdout == ""


def test_missing_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_leveret("serve", "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "cannot read config file bad.toml: No such file or directory")


def test_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_leveret(
            "serve", "--bind", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data"),
            "--log-level", "warning", cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert_one_error_line(result.stderr, f"cannot listen on 127.0.0.1:{port}: address already in use")
