"""Non-Python AMQP clients against Leveret: Node's amqplib, PHP's php-amqplib, Go's amqp091-go and rabbitmq-c
(a small C program and the amqp-tools commands).

Each client script under tests/clients/ does a full round trip by itself (declare, bind, publish with
properties and publisher confirms, consume with manual acks, basic.get, clean up) and exits 0 with a line
containing "OK". Each test runs once against Leveret and once against the reference RabbitMQ (``broker_port``),
which proves the script itself is right; the RabbitMQ run is skipped when RabbitMQ is absent.

The toolchains come from ``bash scripts/install-test-deps.sh`` (Debian packages and npm). A test is skipped
only when its toolchain or client library is not installed on this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

CLIENTS = Path(__file__).parents[1] / "clients"
INSTALL = "run `bash scripts/install-test-deps.sh`"
HOST = "127.0.0.1"
RUN_TIMEOUT = 60  # seconds for one client's round trip; each script also stops itself after about 25 s
BUILD_TIMEOUT = 180

GOPATH = Path("/usr/share/gocode")
AMQP091_GO = GOPATH / "src/github.com/rabbitmq/amqp091-go"
PHP_AMQPLIB = Path("/usr/share/php/PhpAmqpLib/autoload.php")
NODE_AMQPLIB = CLIENTS / "node/node_modules/amqplib/package.json"
RABBITMQ_C_HEADER = Path("/usr/include/amqp_tcp_socket.h")
AMQP_TOOLS = ("amqp-declare-queue", "amqp-publish", "amqp-get", "amqp-consume", "amqp-delete-queue")


def require(condition: bool, what: str) -> None:
    if not condition:
        pytest.skip(f"{what} is not installed ({INSTALL})")


def which(command: str, what: str) -> str:
    """The path of ``command``; skips the test when it is not installed."""
    path = shutil.which(command)
    require(path is not None, what)
    assert path is not None
    return path


def run(cmd: Sequence[str | Path], name: str, *, timeout: float = RUN_TIMEOUT, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a command with no stdin; fails the test with its output if it times out or exits non-zero."""
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name} timed out after {timeout}s\nstdout:\n{exc.stdout!r}\nstderr:\n{exc.stderr!r}")
    if proc.returncode != 0:
        pytest.fail(f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def run_client(cmd: Sequence[str | Path], name: str, *, cwd: Path | None = None) -> None:
    proc = run(cmd, name, cwd=cwd)
    assert f"{name}: OK" in proc.stdout, f"no success line from {name}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


# --- builds, once per session ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go client, built offline in GOPATH mode against Debian's golang-github-rabbitmq-amqp091-go-dev."""
    go = which("go", "Go (Debian package golang-go)")
    require(AMQP091_GO.is_dir(), f"amqp091-go source in {AMQP091_GO} (golang-github-rabbitmq-amqp091-go-dev)")
    out = tmp_path_factory.mktemp("go-client")
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOFLAGS="", GOPROXY="off", GOTOOLCHAIN="local")
    if not (env.get("GOCACHE") or env.get("XDG_CACHE_HOME") or env.get("HOME")):
        env["GOCACHE"] = str(out / "cache")
    binary = out / "roundtrip"
    run([go, "build", "-o", binary, "roundtrip.go"], "go build", timeout=BUILD_TIMEOUT, cwd=CLIENTS / "go",
        env=env)
    return binary


@pytest.fixture(scope="session")
def c_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rabbitmq-c client, compiled against Debian's librabbitmq-dev."""
    cc = which("cc" if shutil.which("cc") else "gcc", "A C compiler (Debian package gcc)")
    require(RABBITMQ_C_HEADER.is_file(), "rabbitmq-c (Debian package librabbitmq-dev)")
    binary = tmp_path_factory.mktemp("c-client") / "roundtrip"
    run([cc, "-Wall", "-Werror", "-O1", "-o", binary, CLIENTS / "c/roundtrip.c", "-lrabbitmq"], "cc",
        timeout=BUILD_TIMEOUT)
    return binary


# --- one test per client, against each broker -------------------------------------------------------------


def test_node_amqplib(broker_port: int, unique: str) -> None:
    node = which("node", "Node.js (node)")
    require(NODE_AMQPLIB.is_file(), "amqplib in tests/clients/node/node_modules")
    run_client([node, "roundtrip.js", f"amqp://guest:guest@{HOST}:{broker_port}", unique], "node amqplib",
               cwd=CLIENTS / "node")


def test_php_amqplib(broker_port: int, unique: str) -> None:
    php = which("php", "PHP (Debian package php-cli)")
    require(PHP_AMQPLIB.is_file(), "php-amqplib (Debian package php-amqplib)")
    run_client([php, CLIENTS / "php/roundtrip.php", HOST, str(broker_port), unique], "php php-amqplib")


def test_go_amqp091(go_client: Path, broker_port: int, unique: str) -> None:
    run_client([go_client, f"amqp://guest:guest@{HOST}:{broker_port}/", unique], "go amqp091-go")


def test_c_rabbitmq_c(c_client: Path, broker_port: int, unique: str) -> None:
    run_client([c_client, HOST, str(broker_port), unique], "c rabbitmq-c")


def test_c_amqp_tools(broker_port: int, unique: str) -> None:
    bash = which("bash", "bash")
    missing = [tool for tool in AMQP_TOOLS if shutil.which(tool) is None]
    require(not missing, f"{', '.join(missing)} (Debian package amqp-tools)")
    require(shutil.which("timeout") is not None, "timeout (coreutils)")
    run_client([bash, CLIENTS / "c/amqp_tools.sh", HOST, str(broker_port), unique], "c amqp-tools")
