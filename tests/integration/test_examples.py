"""The scenarios of examples/ run end to end, as a user would run them: each example program is a subprocess
with LEVERET_URL pointing at a real Leveret on an ephemeral port (and, where RabbitMQ runs, at a fresh vhost of
the reference RabbitMQ), and the test checks what the example's README claims from their output and effects.
Every wait is bounded; no assertion is about speed."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from leveret.node import ThreadedServer

from waiting import wait_for

EXAMPLES = Path(__file__).parents[2] / "examples"
WAIT = 20.0  # seconds any one expected output may take (generous: the machine is shared)


# --- fixtures and helpers -----------------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(params=["leveret", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A broker URL: a fresh Leveret, or a fresh vhost of the reference RabbitMQ (the examples use fixed names,
    so each RabbitMQ run gets a vhost of its own, deleted afterwards)."""
    if request.param == "leveret":
        server: ThreadedServer = request.getfixturevalue("leveret")
        yield f"amqp://guest:guest@127.0.0.1:{server.port}/"
        return
    port = request.getfixturevalue("rabbitmq_port")  # skips when RabbitMQ is not running
    vhost = f"examples-{uuid.uuid4().hex[:10]}"
    try:
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot make a RabbitMQ vhost with rabbitmqctl: {exc}")
    try:
        yield f"amqp://guest:guest@127.0.0.1:{port}/{vhost}"
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            rabbitmqctl("delete_vhost", vhost)


class Program:
    """An example program run as a subprocess; its output lines are collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.args = args
        self.lines: list[str] = []
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=cwd)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def matching(self, pattern: str) -> list[str]:
        return [line for line in list(self.lines) if re.search(pattern, line)]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = WAIT) -> list[str]:
        """The output lines matching ``pattern`` once there are at least ``count`` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.matching(pattern)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                self._reader.join(2)
                found = self.matching(pattern)
                if len(found) >= count:
                    return found
                break
            time.sleep(0.05)
        raise AssertionError(f"{count} x {pattern!r} not seen from {self.args[1:]} "
                             f"(exit {self.proc.poll()}); output:\n{self.output}")

    def finish(self, timeout: float = WAIT) -> str:
        """Wait for a one-shot program; its output, checked for exit status 0."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.args[1:]} did not finish; output:\n{self.output}") from None
        self._reader.join(5)
        assert code == 0, f"{self.args[1:]} exited {code}:\n{self.output}"
        return self.output

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def run(broker_url: str, tmp_path: Path) -> Iterator[Callable[..., Program]]:
    """``run("01-image-upload/upload.py", "cat.jpg", env={...})`` starts an example program against the
    test's broker, from a scratch working directory; everything still running is stopped afterwards."""
    started: list[Program] = []

    def start(script: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              command: list[str] | None = None) -> Program:
        full_env = {**os.environ, "LEVERET_URL": broker_url, "PYTHONUNBUFFERED": "1", **(env or {})}
        argv = command if command is not None else [sys.executable, str(EXAMPLES / script), *args]
        program = Program(argv, full_env, cwd or tmp_path)
        started.append(program)
        return program

    yield start
    for program in started:
        program.stop()


def load(script: str) -> ModuleType:
    """Import an example's module by path (the directories are not packages); its siblings importable."""
    path = EXAMPLES / script
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"example_{path.parent.name[:2]}_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- 01-image-upload ----------------------------------------------------------------------------------------


def test_01_image_upload(run: Callable[..., Program]) -> None:
    consumers = run("01-image-upload/consumers.py", "resize", "notify", "points", "log")
    consumers.wait_for(r": ready$", count=4)

    first = run("01-image-upload/upload.py", "cat.jpg", "--user", "ann").finish().split()[-1]
    for role in ("resize", "notify", "points", "log"):  # each independent consumer gets its own copy
        consumers.wait_for(rf"^{role}: .*{first}")
    assert consumers.matching(r"^points: ann has 10 points")

    # A new consumer, and the producer unchanged: from now on it gets every new image as well.
    moderate = run("01-image-upload/moderate.py")
    moderate.wait_for(r"^moderate: ready$")
    second = run("01-image-upload/upload.py", "dog.png", "--user", "ann").finish().split()[-1]
    moderate.wait_for(rf"^moderate: image {second} of ann")
    for role in ("resize", "notify", "points", "log"):
        consumers.wait_for(rf"^{role}: .*{second}")
    assert not moderate.matching(first)  # it subscribed after the first upload

    # Consumers that are down miss nothing: their queues keep the events until they are back.
    assert consumers.stop() == 0
    third = run("01-image-upload/upload.py", "owl.gif", "--user", "bob").finish().split()[-1]
    consumers = run("01-image-upload/consumers.py", "resize", "notify", "points", "log")
    for role in ("resize", "notify", "points", "log"):
        consumers.wait_for(rf"^{role}: .*{third}")
    moderate.wait_for(rf"^moderate: image {third} of bob")
    for line in consumers.lines:  # nothing twice: what was acked before the restart stays done
        assert first not in line and second not in line
    assert len(moderate.matching(second)) == 1


# --- 02-outgoing-email --------------------------------------------------------------------------------------

MAIL_ENV = {"MAIL_RETRY_INTERVALS": "0.3,0.6,1.2", "MAIL_WARN_AFTER": "2", "MAILER_DAEMON": "MAILER-DAEMON@test"}


@pytest.fixture
def smtp_sink() -> Iterator[Callable[[int], Any]]:
    """The example's own SMTP sink (aiosmtpd) on a free port of 127.0.0.1: ``smtp_sink(fail_first)``."""
    pytest.importorskip("aiosmtpd", reason="aiosmtpd is not installed (pip install -e '.[test]')")
    sink_module = load("02-outgoing-email/smtp_sink.py")
    controllers: list[Any] = []

    def start(fail_first: int) -> Any:
        port = free_port()
        controller, sink = sink_module.start(port, fail_first)
        controllers.append(controller)
        sink.port = port
        return sink

    yield start
    for controller in controllers:
        controller.stop()


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return wait_for(check, timeout, f"timed out waiting for {what}", interval=0.05)


def mails_to(sink: Any, address: str, subject: str = "") -> list[Any]:
    return [m for frm, rcpts, m in list(sink.delivered) if address in rcpts and subject in str(m["Subject"])]


def task_status(broker_url: str, task_id: str) -> str:
    from leveret.tasks import App

    app = App(broker_url)
    try:
        return app.status(task_id)
    finally:
        app.close()


def test_02_outgoing_email_retried_until_delivered(run: Callable[..., Program], smtp_sink: Callable[[int], Any],
                                                   broker_url: str) -> None:
    sink = smtp_sink(2)  # the first two mails are answered "451 try again later"
    env = {**MAIL_ENV, "SMTP_PORT": str(sink.port)}
    worker = run("02-outgoing-email/worker.py", env=env)
    task_id = run("02-outgoing-email/producer.py", "bob@example.com", "--subject", "Your order",
                  "--from", "alice@example.com", env=env).finish().split()[-1]
    wait_until(lambda: mails_to(sink, "bob@example.com", "Your order"), "the mail to bob")
    (mail,) = mails_to(sink, "bob@example.com", "Your order")
    assert mail["From"] == "alice@example.com"
    worker.wait_for(r"attempt 2 to bob@example.com failed: .*451.*next attempt at")
    # Two failures: the sender was warned, with the null envelope sender, as an MTA does.
    warning = wait_until(lambda: mails_to(sink, "alice@example.com", "Delivery delayed: Your order"), "the warning")
    assert "YOU DO NOT NEED TO RESEND" in warning[0].get_content()
    assert [frm for frm, rcpts, m in sink.delivered if "alice@example.com" in rcpts] == ["<>"]
    assert wait_until(lambda: task_status(broker_url, task_id) == "succeeded", "status succeeded")
    assert not mails_to(sink, "alice@example.com", "Undelivered")

    # The PHP producer queues the same task; the same worker sends it.
    php = shutil.which("php")
    if php is None or not Path("/usr/share/php/PhpAmqpLib/autoload.php").is_file():
        pytest.skip("php and php-amqplib are not installed (run `bash scripts/install-test-deps.sh`)")
    out = run("", command=[php, str(EXAMPLES / "02-outgoing-email/producer.php"), "dave@example.com", "From PHP",
                           "Hello from PHP", "carol@example.com"], env=env).finish()
    php_id = out.split()[-1]
    (mail,) = wait_until(lambda: mails_to(sink, "dave@example.com", "From PHP"), "the mail sent from PHP")
    assert mail.get_content().strip() == "Hello from PHP" and mail["From"] == "carol@example.com"
    assert wait_until(lambda: task_status(broker_url, php_id) == "succeeded", "status of the PHP task")


def test_02_outgoing_email_gives_up_and_tells_the_sender(run: Callable[..., Program],
                                                         smtp_sink: Callable[[int], Any], broker_url: str) -> None:
    sink = smtp_sink(0)
    env = {**MAIL_ENV, "SMTP_PORT": str(sink.port)}
    worker = run("02-outgoing-email/worker.py", env=env)
    task_id = run("02-outgoing-email/producer.py", "carol@unreachable.example", "--subject", "Invoice 7",
                  "--body", "Please pay.", "--from", "alice@example.com", env=env).finish().split()[-1]
    (bounce,) = wait_until(lambda: mails_to(sink, "alice@example.com", "Undelivered Mail Returned to Sender"),
                           "the failure notice")
    assert bounce["Subject"] == "Undelivered Mail Returned to Sender: Invoice 7"
    assert bounce["From"] == "MAILER-DAEMON@test"
    text = bounce.get_content()
    assert "<carol@unreachable.example>" in text and "gave up after 4 attempts" in text and "Please pay." in text
    assert len(mails_to(sink, "alice@example.com", "Delivery delayed: Invoice 7")) == 1  # warned once, before
    worker.wait_for(r"attempt 4 to carol@unreachable.example failed: .*giving up")
    assert wait_until(lambda: task_status(broker_url, task_id) == "gave_up", "status gave_up")
    assert not mails_to(sink, "carol@unreachable.example")
    # The message is kept in the dead-letter queue, for `leveret dead-letters outgoing-email [--replay]`.
    out = run("", command=[sys.executable, "-m", "leveret", "dead-letters", "outgoing-email", "--json",
                           "--url", broker_url]).finish()
    (dead,) = json.loads(out)
    assert dead["id"] == task_id and dead["task"] == "mail.send"


# --- 03-payment-pipeline ------------------------------------------------------------------------------------


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return response.status, json.loads(response.read())


def test_03_payment_pipeline(run: Callable[..., Program], broker_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {"SHOP_DB": str(tmp_path / "shop.db"), "WEB_PORT": str(port), "PAYMENT_PROVIDER_FLAKY": "1"}
    web = run("03-payment-pipeline/web.py", env=env)
    web.wait_for(r"Running on http://127\.0\.0\.1")
    base = f"http://127.0.0.1:{port}"

    # No worker runs yet: the web handler answers at once all the same; the work waits in the queues.
    status, answer = http("POST", f"{base}/checkout", {"user": "ann", "email": "ann@example.com", "amount": 25})
    assert status == 202
    order, jobs = answer["order"], answer["jobs"]
    assert set(jobs) == {"create_invoice", "confirm_payment"}
    for task_id in jobs.values():
        assert http("GET", f"{base}/jobs/{task_id}")[1]["state"] == "queued"
    steps = http("GET", f"{base}/orders/{order}")[1]["steps"]
    assert steps["send_invoice_email"]["state"] == "not sent yet"

    # The worker, started as the README says: `leveret worker shop:app` from the example's directory.
    worker = run("", env=env, cwd=EXAMPLES / "03-payment-pipeline",
                  command=[sys.executable, "-m", "leveret", "worker", "shop:app"])

    def all_done(order: int) -> dict[str, Any] | None:
        steps = http("GET", f"{base}/orders/{order}")[1]["steps"]
        return steps if all(step["state"] == "succeeded" for step in steps.values()) else None

    steps = wait_until(lambda: all_done(order), "every step of the order to succeed")
    assert set(steps) == {"create_invoice", "send_invoice_email", "confirm_payment", "refresh_wallet",
                          "update_stats"}
    worker.wait_for(r"invoice e-mail for order \d+ sent to ann@example.com")
    # The provider timed out once: the payment task was retried, and only then sent the next steps.
    events = [m for m in worker.lines if "shop:" in m]
    confirmed = next(i for i, line in enumerate(events) if "payment for order" in line)
    assert confirmed < next(i for i, line in enumerate(events) if "wallet of ann refreshed" in line)
    with contextlib.closing(sqlite3.connect(tmp_path / "shop.db")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM invoices").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM payments").fetchone() == (1,)
        assert conn.execute("SELECT user, paid_total, orders FROM wallets").fetchall() == [("ann", 25.0, 1)]
        assert conn.execute("SELECT orders, revenue FROM stats").fetchall() == [(1, 25.0)]
        assert conn.execute("SELECT recipient FROM emails").fetchall() == [("ann@example.com",)]
    # Job status from a shell, as the README shows it.
    out = run("", command=[sys.executable, "-m", "leveret", "status", jobs["confirm_payment"], "--json",
                           "--url", broker_url]).finish()
    info = json.loads(out)
    assert info["state"] == "succeeded" and info["attempt"] == 1  # the second attempt succeeded

    # A second order while the worker runs goes through the same way.
    order2 = http("POST", f"{base}/checkout", {"user": "ann", "email": "ann@example.com", "amount": 5})[1]["order"]
    assert order2 != order
    wait_until(lambda: all_done(order2), "every step of the second order to succeed")
    with contextlib.closing(sqlite3.connect(tmp_path / "shop.db")) as conn:
        assert conn.execute("SELECT paid_total, orders FROM wallets").fetchall() == [(30.0, 2)]


# --- 04-dashboard-rpc ---------------------------------------------------------------------------------------


def test_04_dashboard_rpc(run: Callable[..., Program]) -> None:
    services = run("04-dashboard-rpc/services.py", env={"RECOMMENDATIONS_DELAY": "4"})
    services.wait_for(r"^services: answering")

    # One timeout for all four: the slow service is shown as unavailable, the three others are there.
    out = run("04-dashboard-rpc/dashboard.py", "--user", "7", "--timeout", "1.5").finish()
    assert "dashboard of user 7" in out
    assert "active ads: ['bike #701', 'sofa #702']" in out
    assert "observed ads: ['camera #777']" in out
    assert "messages: {'unread': 2, 'from': ['bob', 'eve']}" in out
    assert "recommendations: unavailable (no answer within 1.5 s)" in out

    # Given the time, all four answer.
    out = run("04-dashboard-rpc/dashboard.py", "--user", "8", "--timeout", "15").finish()
    assert "recommendations: ['tent', 'lamp']" in out and "active ads: ['bike #801', 'sofa #802']" in out
    assert "unavailable" not in out

    # A service that is not running at all: the same, its request waits in its queue.
    services.stop()
    only_fast = run("04-dashboard-rpc/services.py", "ads", "observed-ads")
    only_fast.wait_for(r"^services: answering ads, observed-ads")
    out = run("04-dashboard-rpc/dashboard.py", "--user", "9", "--timeout", "1").finish()
    assert "active ads: ['bike #901', 'sofa #902']" in out
    assert "messages: unavailable (no answer within 1.0 s)" in out
    assert "recommendations: unavailable" in out


# --- 05-serialized-db-writer --------------------------------------------------------------------------------


def ledger(*runs: tuple[int, int]) -> dict[str, int]:
    """The balances after the producer's runs (start, count) applied in order, as the example defines them."""
    writes = load("05-serialized-db-writer/producer.py").writes
    balances: dict[str, int] = {}
    for start, count in runs:
        for write in writes(start, count):
            if write["op"] == "open":
                balances[write["account"]] = 0
            else:
                balances[write["account"]] += write["amount"] if write["op"] == "deposit" else -write["amount"]
                assert balances[write["account"]] >= 0
    return balances


def rejected_count(run: Callable[..., Program]) -> int:
    code = ("import asyncio, os, aio_pika\n"
            "async def main():\n"
            "    async with await aio_pika.connect(os.environ['LEVERET_URL']) as c:\n"
            "        q = await (await c.channel()).declare_queue('db-writes.rejected', passive=True)\n"
            "        print(q.declaration_result.message_count)\n"
            "asyncio.run(main())\n")
    return int(run("", command=[sys.executable, "-c", code]).finish().strip())


def test_05_serialized_db_writer(run: Callable[..., Program], tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    writer = ["--db", str(db), "--batch", "50"]
    # Writes queued before any writer runs.
    assert "queued 300 writes" in run("05-serialized-db-writer/producer.py", "--count", "300").finish()
    a = run("05-serialized-db-writer/writer.py", *writer, "--name", "A")
    a.wait_for(r"^writer A: committed .*seq \d+-300\)")
    # A second writer stands by: everything sent now is still written by A.
    b = run("05-serialized-db-writer/writer.py", *writer, "--name", "B")
    b.wait_for(r"^writer B: ready")
    run("05-serialized-db-writer/producer.py", "--start", "301", "--count", "700", "--overdraw").finish()
    a.wait_for(r"^writer A: committed .*seq \d+-1000\)")
    a.wait_for(r"^writer: rejected seq 1001: CHECK constraint failed")
    assert not b.matching("committed")

    # A dies (kill -9) in the middle of a stream of writes: B takes over where A stopped.
    producer = run("05-serialized-db-writer/producer.py", "--start", "1002", "--count", "1000")
    a.wait_for(r"^writer A: committed .*seq 1[0-9]{3}-", timeout=60)
    a.stop(signal.SIGKILL)
    producer.finish(timeout=60)
    run("05-serialized-db-writer/producer.py", "--start", "2002", "--count", "100").finish()
    b.wait_for(r"^writer B: committed .*seq \d+-2101\)", timeout=60)

    with contextlib.closing(sqlite3.connect(db)) as conn:
        seqs = [s for (s,) in conn.execute("SELECT seq FROM applied ORDER BY rowid")]
        balances = dict(conn.execute("SELECT name, balance FROM accounts").fetchall())
        batches = dict(conn.execute("SELECT writer, COUNT(*) FROM batches GROUP BY writer").fetchall())
        sizes = [s for (s,) in conn.execute("SELECT size FROM batches")]
    # Every write once, in the order sent (1001, the overdraft, was rejected: it is in db-writes.rejected).
    assert seqs == [s for s in range(1, 2102) if s != 1001]
    assert balances == ledger((1, 1000), (1002, 1100))
    assert set(batches) == {"A", "B"} and max(sizes) > 1 and len(sizes) < 2100  # several writes per transaction
    assert rejected_count(run) == 1


# --- 06-wire-tap-and-detour ---------------------------------------------------------------------------------


def test_06_wire_tap_and_detour(run: Callable[..., Program]) -> None:
    control = run("06-wire-tap-and-detour/control_bus.py")
    control.wait_for(r"^control: ready")
    consumers = run("06-wire-tap-and-detour/consumers.py", "processor", "validator", "inspector")
    consumers.wait_for(r": ready$", count=3)

    def send(start: int) -> None:
        out = run("06-wire-tap-and-detour/producer.py", "--start", str(start), "--count", "4").finish()
        assert out.count("sent order") == 4

    def switch(*args: str) -> dict[str, Any]:
        return json.loads(run("06-wire-tap-and-detour/switch.py", *args).finish())

    def seen(role: str, order: int) -> list[str]:
        return consumers.matching(rf"^{role}: .*(order {order}\b|\"id\": {order}\b)")

    # Both switches off: straight to the processor (the invalid order 4 too), nothing copied.
    send(1)
    for order in range(1, 5):
        consumers.wait_for(rf"^processor: order {order} processed")

    answer = switch("tap", "on")
    assert answer["tap"] is True and answer["detour"] is False
    send(5)
    for order in range(5, 9):  # processed, and a copy for the inspector
        consumers.wait_for(rf"^processor: order {order} processed")
        consumers.wait_for(rf'^inspector: saw .*"id": {order}\b')

    assert switch("detour", "on")["detour"] is True
    send(9)
    consumers.wait_for(r"^validator: order 12 rejected: amount must be positive")
    for order in (9, 10, 11):  # through the validator, then processed
        consumers.wait_for(rf"^validator: order {order} ok")
        consumers.wait_for(rf"^processor: order {order} processed")
    for order in range(9, 13):
        consumers.wait_for(rf'^inspector: saw .*"id": {order}\b')
    status = switch("status")
    assert status["queues"]["orders.invalid"] == 1 and status == {**status, "tap": True, "detour": True}

    switch("tap", "off")
    switch("detour", "off")
    send(13)
    for order in range(13, 17):
        consumers.wait_for(rf"^processor: order {order} processed")
    assert not seen("processor", 12)  # the invalid order never reached the processor
    for order in range(1, 17):  # every order processed at most once, validated only while the detour was on
        assert len(seen("processor", order)) == (0 if order == 12 else 1)
        assert bool(seen("validator", order)) == (9 <= order <= 12)
        assert bool(seen("inspector", order)) == (5 <= order <= 12)
    assert control.matching(r"^control: detour off") and control.matching(r"^control: tap on")
