"""The supervisor (leveret.supervisor) as its users run it: ``leveret worker --processes N`` and ``leveret run
leveret.toml`` as real child processes, with workers consuming from a real Leveret (the ``leveret`` fixture).

Each test writes a small task app (``supapp.py``) into its tmp_path; the tasks note what they do in a marks
file (``<pid> <what> <n> ...`` per line), which is how the tests see which process ran what."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.cli import main as cli_main
from leveret.supervisor import RunConfigError, load_run_file

from waiting import hold

ROOT = Path(__file__).parents[2]
QUEUE = "sup"

APP = '''
import os, time
from leveret.tasks import App

VERSION = {version!r}
app = App(os.environ["LEVERET_URL"], name="sup", status_ttl=60)
_kept = []


def mark(*words):
    with open(os.environ["SUP_MARKS"], "a") as f:
        f.write(" ".join(str(w) for w in (os.getpid(), *words)) + "\\n")


def marks():
    try:
        with open(os.environ["SUP_MARKS"]) as f:
            return [line.split() for line in f]
    except FileNotFoundError:
        return []


@app.task(name="record", queue="sup")
def record(n: int) -> None:
    mark("record", n, VERSION)


@app.task(name="slow", queue="sup")
def slow(n: int, seconds: float, once: bool = False) -> None:
    """Sleep ``seconds`` (with ``once``, only on the first attempt)."""
    first = not any(m[1:3] == ["start", str(n)] for m in marks())
    mark("start", n)
    if first or not once:
        time.sleep(seconds)
    mark("done", n)


@app.task(name="leak", queue="sup")
def leak(mb: int) -> None:
    _kept.append(b"x" * (mb * 1024 * 1024))  # kept for the life of the process, as a leak is
    mark("leak", mb)
'''


def wait_for(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str],
             interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


class Supervised:
    """``python -m leveret ARGS`` as a child process; its output collected in a thread."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], state_dir: Path) -> None:
        self.state_dir = state_dir
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "leveret", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state_dir / "supervisor.json").read_text())
        except (OSError, ValueError):
            return None

    def processes(self) -> dict[str, dict[str, Any]]:
        status = self.status() or {}
        return {p["slot"]: p for program in status.get("programs", []) for p in program["processes"]}

    def wait_running(self, count: int, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        def ready() -> dict[str, dict[str, Any]] | None:
            assert self.proc.poll() is None, f"the supervisor exited:\n{self.log}"
            procs = self.processes()
            running = [p for p in procs.values() if p["state"] == "running"]
            return procs if len(running) >= count else None

        return wait_for(ready, timeout, lambda: f"{count} running process(es)\n{self.log}")

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        def find() -> re.Match[str] | None:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            return None

        return wait_for(find, timeout, lambda: f"a log line matching {pattern!r}\n{self.log}")

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its workers notice their parent is gone and exit within a second
                self.proc.wait(10)


class Env:
    def __init__(self, tmp_path: Path, port: int) -> None:
        self.dir = tmp_path
        self.port = port
        self.marks_path = tmp_path / "marks"
        self.state_dir = tmp_path / "state"
        self.env = {**os.environ, "LEVERET_URL": f"amqp://guest:guest@127.0.0.1:{port}/",
                    "SUP_MARKS": str(self.marks_path), "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.started: list[Supervised] = []
        self.write_app("one")

    def write_app(self, version: str) -> None:
        (self.dir / "supapp.py").write_text(APP.format(version=version))

    def worker(self, *options: str) -> Supervised:
        args = ["worker", "supapp:app", "--state-dir", str(self.state_dir), *options]
        sup = Supervised(args, self.dir, self.env, self.state_dir)
        self.started.append(sup)
        return sup

    def run(self, toml: str) -> Supervised:
        path = self.dir / "leveret.toml"
        path.write_text(toml)
        sup = Supervised(["run", str(path)], self.dir, self.env, self.state_dir)
        self.started.append(sup)
        return sup

    def marks(self) -> list[list[str]]:
        try:
            return [line.split() for line in self.marks_path.read_text().splitlines()]
        except FileNotFoundError:
            return []

    def marked(self, *words: Any) -> list[list[str]]:
        want = [str(w) for w in words]
        return [m for m in self.marks() if m[1:1 + len(want)] == want]

    def send(self, task: str, **payload: Any) -> str:
        task_id = uuid.uuid4().hex
        body = json.dumps({"payload": payload, "metadata": {"task": task, "id": task_id}})
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port))
        try:
            channel = conn.channel()
            channel.confirm_delivery()
            channel.basic_publish("", QUEUE, body.encode(), pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=task_id))
        finally:
            conn.close()
        return task_id

    def queue_depth(self) -> int:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port))
        try:
            return int(conn.channel().queue_declare(QUEUE, passive=True).method.message_count)
        finally:
            conn.close()


@pytest.fixture
def env(leveret: Any, tmp_path: Path) -> Iterator[Env]:
    made = Env(tmp_path, leveret.port)
    try:
        yield made
    finally:
        for sup in made.started:
            sup.cleanup()


def pids_of(marks: list[list[str]]) -> list[str]:
    return [m[0] for m in marks]


# --- leveret worker --processes N -----------------------------------------------------------------------------


def test_killed_worker_process_is_replaced_and_its_task_redone(env: Env) -> None:
    sup = env.worker("--processes", "1", "--concurrency", "1")
    first = sup.wait_running(1)["worker[0]"]
    env.send("slow", n=1, seconds=60, once=True)
    wait_for(lambda: env.marked("start", 1), 30, "the task to start")
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: env.marked("done", 1), 60, lambda: f"the task to be redone\n{sup.log}")
    starts = env.marked("start", 1)
    assert len(starts) == 2 and starts[0][0] == str(first["pid"]) and starts[1][0] != str(first["pid"])
    assert env.marked("done", 1)[0][0] == starts[1][0]
    sup.wait_log(rf"worker\[0\] \(pid {first['pid']}\) exited unexpectedly: killed by SIGKILL")
    now = sup.wait_running(1)["worker[0]"]
    assert now["pid"] == int(starts[1][0]) and now["restarts"] == 1 and now["last_exit"] == "killed by SIGKILL"
    assert sup.terminate() == 0


def test_leaking_worker_is_recycled_at_the_memory_limit(env: Env) -> None:
    sup = env.worker("--processes", "1", "--max-memory", "90")
    first = sup.wait_running(1)["worker[0]"]
    env.send("leak", mb=120)
    wait_for(lambda: env.marked("leak"), 30, "the leak")
    match = sup.wait_log(r"recycling worker\[0\] \(pid (\d+)\): RSS (\d+) MB > max_memory 90 MB")
    assert int(match.group(1)) == first["pid"] and int(match.group(2)) > 90
    sup.wait_log(rf"worker\[0\] \(pid {first['pid']}\) stopped \(RSS")
    now = wait_for(lambda: (p := sup.processes()["worker[0]"])["state"] == "running" and p["pid"] != first["pid"]
                   and p, 30, "the replacement")
    assert now["recycles"] == 1 and now["restarts"] == 0
    assert now["rss_mb"] is None or now["rss_mb"] < 90
    env.send("record", n=2)
    done = wait_for(lambda: env.marked("record", 2), 30, "a task on the new process")
    assert done[0][0] == str(now["pid"])
    assert sup.terminate() == 0


def test_max_tasks_recycles_workers(env: Env) -> None:
    sup = env.worker("--processes", "1", "--concurrency", "1", "--max-tasks", "3")
    sup.wait_running(1)
    for n in range(7):
        env.send("record", n=n)
    wait_for(lambda: len(env.marked("record")) >= 7, 60, lambda: f"7 tasks\n{sup.log}")
    records = env.marked("record")
    assert sorted(int(m[2]) for m in records) == list(range(7))  # each once: nothing lost, nothing doubled
    pids = pids_of(records)
    per_process = {pid: pids.count(pid) for pid in pids}
    assert len(per_process) == 3 and all(count <= 3 for count in per_process.values()), per_process
    procs = wait_for(lambda: (p := sup.processes()["worker[0]"])["tasks"] == 7 and p, 20, "the task count")
    assert procs["recycles"] == 2 and procs["restarts"] == 0
    assert len(re.findall(r"recycling worker\[0\] \(pid \d+\): max_tasks 3 reached", sup.log)) == 2
    assert sup.terminate() == 0


def test_sigterm_lets_the_running_task_finish_within_grace(env: Env) -> None:
    sup = env.worker("--processes", "1", "--grace", "30")
    sup.wait_running(1)
    env.send("slow", n=1, seconds=2)
    wait_for(lambda: env.marked("start", 1), 30, "the task to start")
    assert sup.terminate(timeout=60) == 0
    assert len(env.marked("done", 1)) == 1
    assert env.queue_depth() == 0  # acked, not requeued
    assert "stopped (shutdown): exit code 0" in sup.log
    assert "SIGKILL" not in sup.log


def test_sigterm_requeues_the_task_when_grace_expires(env: Env) -> None:
    sup = env.worker("--processes", "1", "--grace", "1")
    sup.wait_running(1)
    task_id = env.send("slow", n=1, seconds=120)
    wait_for(lambda: env.marked("start", 1), 30, "the task to start")
    assert sup.terminate(timeout=60) == 0
    assert not env.marked("done", 1)
    assert "still running after the 1 s grace period" in sup.log
    assert "SIGKILL" not in sup.log  # the worker left by itself at the end of its grace period
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", env.port))
    try:
        method, props, _body = conn.channel().basic_get(QUEUE, auto_ack=True)
    finally:
        conn.close()
    assert method is not None and method.redelivered and props.message_id == task_id


def test_sighup_restarts_workers_with_new_code_without_losing_tasks(env: Env) -> None:
    sup = env.worker("--processes", "2", "--concurrency", "1")
    before = sup.wait_running(2)
    env.send("record", n=1)
    wait_for(lambda: env.marked("record", 1), 30, "a task on the old code")
    assert env.marked("record", 1)[0][3] == "one"
    env.send("slow", n=2, seconds=3)  # running while the reload happens: finished by its old process
    wait_for(lambda: env.marked("start", 2), 30, "the slow task to start")
    env.write_app("second-version")
    sup.proc.send_signal(signal.SIGHUP)
    sup.wait_log(r"reload done", timeout=90)
    old = {p["pid"] for p in before.values()}
    after = wait_for(lambda: (procs := sup.processes()) and all(p["state"] == "running" and p["pid"] not in old
                                                               and not p["draining"] for p in procs.values())
                     and procs, 60, lambda: f"the old processes to be gone\n{sup.log}")
    assert all(p["recycles"] == 1 and p["restarts"] == 0 for p in after.values())
    for n in (3, 4, 5, 6):
        env.send("record", n=n)
    wait_for(lambda: len(env.marked("record")) >= 5, 30, "tasks on the new code")
    assert {m[3] for m in env.marked("record") if m[2] != "1"} == {"second-version"}
    assert len(env.marked("start", 2)) == 1 and len(env.marked("done", 2)) == 1
    assert env.queue_depth() == 0
    assert sup.terminate() == 0


def test_in_process_worker_stops_after_max_tasks(env: Env) -> None:
    proc = Supervised(["worker", "supapp:app", "--processes", "0", "--concurrency", "1", "--max-tasks", "2"],
                      env.dir, env.env, env.state_dir)
    env.started.append(proc)
    proc.wait_log(r"consuming sup")
    for n in range(3):
        env.send("record", n=n)
    assert proc.proc.wait(60) == 0
    assert sorted(int(m[2]) for m in env.marked("record")) == [0, 1]
    assert env.queue_depth() == 1
    assert not (env.state_dir / "supervisor.json").exists()


# --- leveret run leveret.toml, health -------------------------------------------------------------------------


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def health_cli(env: Env, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main(["health", "--state-dir", str(env.state_dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_toml_with_two_programs_and_health(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    sup = env.run(f'''
[supervisor]
state_dir = "state"
health_port = 0

[[worker]]
name = "tasks"
app = "supapp:app"
queues = ["sup"]
processes = 2
concurrency = 2
max_tasks = 100

[[program]]
name = "sidecar"
command = [{json.dumps(sys.executable)}, "-c", "import time; time.sleep(600)"]
grace = 5
''')
    procs = sup.wait_running(3)
    assert set(procs) == {"tasks[0]", "tasks[1]", "sidecar[0]"}
    for n in range(6):
        env.send("record", n=n)
    wait_for(lambda: sum(p["tasks"] for p in sup.processes().values()) == 6, 30, "the task counts")
    assert sorted(int(m[2]) for m in env.marked("record")) == list(range(6))

    status = sup.status()
    assert status is not None and status["healthy"]
    code, body = http_get(status["supervisor"]["health_url"])
    assert code == 200 and body["healthy"] and {p["name"] for p in body["programs"]} == {"tasks", "sidecar"}
    tasks = next(p for p in body["programs"] if p["name"] == "tasks")
    assert tasks["kind"] == "worker" and tasks["max_tasks"] == 100
    assert "--max-tasks" in tasks["argv"] and "--queues" in tasks["argv"]

    code, out, _ = health_cli(env, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"supervisor pid {sup.proc.pid} running since ")
    assert lines[1].split() == ["PROCESS", "STATE", "PID", "SINCE", "TASKS", "RSS", "MB", "RESTARTS", "RECYCLES",
                                "LAST", "EXIT"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"tasks[0]", "tasks[1]", "sidecar[0]"}
    assert rows["sidecar[0]"][1] == "running" and rows["sidecar[0]"][2] == str(procs["sidecar[0]"]["pid"])
    assert sum(int(rows[s][4]) for s in ("tasks[0]", "tasks[1]")) == 6
    code, out, _ = health_cli(env, capsys, "--json")
    assert code == 0 and json.loads(out)["supervisor"]["pid"] == sup.proc.pid

    # a second supervisor on the same state directory is refused
    assert cli_main(["run", str(env.dir / "leveret.toml")]) == 1
    assert "another supervisor" in capsys.readouterr().err

    sidecar = procs["sidecar[0]"]["pid"]
    assert sup.terminate() == 0
    assert re.search(rf"sidecar\[0\] \(pid {sidecar}\) stopped \(shutdown\): killed by SIGTERM", sup.log)
    with pytest.raises(ProcessLookupError):
        os.kill(sidecar, 0)
    code, out, err = health_cli(env, capsys)
    assert code == 1 and "stopped" in err and "stopped" in out


def test_crash_looping_worker_backs_off_and_health_reports_it(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    sup = env.run(f'''
[supervisor]
state_dir = "state"
health_port = 0
backoff = 0.2
backoff_max = 1.6
stable_after = 30

[[worker]]
name = "broken"
app = "no_such_module:app"

[[program]]
name = "fine"
command = [{json.dumps(sys.executable)}, "-c", "import time; time.sleep(600)"]
''')
    looping = wait_for(lambda: (p := sup.processes().get("broken[0]")) and p["restarts"] >= 5 and p, 90,
                       lambda: f"five restarts\n{sup.log}")
    assert looping["crash_looping"] and looping["last_exit"] == "exit code 2"
    delays = [float(d) for d in re.findall(r"broken\[0\] \(pid \d+\) exited unexpectedly: .*restarting in ([\d.]+) s",
                                           sup.log)]
    assert delays[:5] == [0.2, 0.4, 0.8, 1.6, 1.6]  # doubled each time, up to backoff_max
    assert "No module named 'no_such_module'" in sup.log
    assert sup.processes()["fine[0]"]["state"] == "running"

    status = sup.status()
    assert status is not None and not status["healthy"]
    code, body = http_get(status["supervisor"]["health_url"])
    assert code == 503 and not body["healthy"]
    assert {p["name"]: p["crash_looping"] for p in body["programs"]} == {"broken": True, "fine": False}
    code, out, _ = health_cli(env, capsys)
    assert code == 1 and "UNHEALTHY" in out.splitlines()[0]
    assert re.search(r"broken\[0\]\s+\S+ \(crash-looping\)", out)
    assert sup.terminate() == 0


def test_run_file_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        '[[worker]]\napp = "a:app"\nconcurency = 4\n': "[[worker]] #1: unknown key 'concurency' (did you mean "
                                                      "'concurrency'?)",
        '[[worker]]\nqueues = ["a"]\n': "[[worker]] #1: missing app",
        '[[worker]]\napp = "nocolon"\n': "app 'nocolon' is not MODULE:APP",
        '[[worker]]\napp = "a:app"\nprocesses = 0\n': "processes must be an integer >= 1, not 0",
        '[[worker]]\napp = "a:app"\nmax_memory = "lots"\n': "max_memory must be a positive number, not 'lots'",
        '[[forwarder]]\noutbox = "o.db"\n': "[[forwarder]] #1: brokers must be a non-empty list of URLs",
        '[[program]]\nname = "x"\ncommand = "sleep 5"\n': "command must be a list of arguments",
        '[[program]]\ncommand = ["sleep", "5"]\n': "missing name",
        '[[worker]]\nname = "a"\napp = "a:app"\n[[program]]\nname = "a"\ncommand = ["x"]\n':
            "two entries are named 'a'",
        '[supervisor]\nbackof = 2\n[[worker]]\napp = "a:app"\n': "[supervisor]: unknown key 'backof' (did you mean "
                                                                "'backoff'?)",
        '[[workers]]\napp = "a:app"\n': "unknown table 'workers' (did you mean 'worker'?)",
        '[supervisor]\n': "nothing to run",
        '[[worker]\n': "not valid TOML",
    }
    path = tmp_path / "leveret.toml"
    for text, message in cases.items():
        path.write_text(text)
        assert cli_main(["run", str(path)]) == 2, text
        err = capsys.readouterr().err
        assert err.startswith(f"leveret: error: {path}") and message in err and err.count("\n") == 1, (text, err)
    assert cli_main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_run_file_entries_become_command_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "leveret.toml"
    path.write_text('''
[supervisor]
backoff = 0.5

[[worker]]
app = "shop.tasks:app"
queues = "emails,images"
processes = 3
concurrency = 8
prefetch = 16
max_tasks = 500
max_memory = 256
grace = 45
env = { LEVERET_URL = "amqp://guest:guest@10.0.0.5:5672/" }

[[forwarder]]
outbox = "var/outbox.db"
brokers = ["amqp://a:5672/", "amqp://b:5672/"]

[[beat]]
app = "shop.tasks:app"
url = "amqp://a:5672/"
''')
    settings, programs = load_run_file(str(path))
    assert settings.backoff == 0.5 and settings.state_dir == str(tmp_path / "leveret-state")
    worker, forwarder, beat = programs
    assert beat.name == "beat shop.tasks:app" and beat.kind == "beat"
    assert beat.argv == (sys.executable, "-m", "leveret", "beat", "shop.tasks:app", "--log-level", "info",
                         "--url", "amqp://a:5672/")
    assert worker.name == "shop.tasks:app[emails,images]" and worker.kind == "worker" and worker.processes == 3
    assert worker.argv == (sys.executable, "-m", "leveret", "worker", "shop.tasks:app", "--processes", "0",
                           "--concurrency", "8", "--grace", "45", "--log-level", "info", "--queues",
                           "emails,images", "--prefetch", "16", "--max-tasks", "500")
    assert worker.max_memory == 256 and worker.cwd == str(tmp_path)
    assert worker.env == {"LEVERET_URL": "amqp://guest:guest@10.0.0.5:5672/"}
    assert forwarder.name == "forwarder-1" and forwarder.kind == "forwarder"
    assert forwarder.argv == (sys.executable, "-m", "leveret", "forward", "--outbox", str(tmp_path / "var/outbox.db"),
                              "--broker", "amqp://a:5672/", "--broker", "amqp://b:5672/")
    with pytest.raises(RunConfigError):
        load_run_file(str(tmp_path / "nope.toml"))
    assert cli_main(["run", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "shop.tasks:app[emails,images] x3 (worker" in out and " forward --outbox " in out


def test_health_without_a_supervisor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["health", "--state-dir", str(tmp_path)]) == 1
    assert "no supervisor status in" in capsys.readouterr().err


def test_worker_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["worker", "no_such_module_xyz:app", "--state-dir", str(tmp_path)]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
    assert cli_main(["worker", "x:app", "--processes", "-1"]) == 2


def test_run_sighup_rereads_the_file(env: Env) -> None:
    sleeper = f'command = [{json.dumps(sys.executable)}, "-c", "import time; time.sleep(600)"]'
    sup = env.run(f'''
[supervisor]
state_dir = "state"

[[program]]
name = "a"
{sleeper}

[[program]]
name = "b"
{sleeper}
''')
    before = sup.wait_running(2)
    (env.dir / "leveret.toml").write_text(f'''
[supervisor]
state_dir = "state"

[[program]]
name = "a"
command = [{json.dumps(sys.executable)}, "-c", "import time; time.sleep(601)"]

[[program]]
name = "c"
processes = 2
{sleeper}
''')
    sup.proc.send_signal(signal.SIGHUP)
    sup.wait_log(r"reload done", timeout=60)
    after = wait_for(lambda: (procs := sup.processes()) and len(procs) == 3
                     and all(p["state"] == "running" and not p["draining"] for p in procs.values()) and procs,
                     30, lambda: f"a[0], c[0], c[1] running\n{sup.log}")
    assert set(after) == {"a[0]", "c[0]", "c[1]"}
    assert after["a[0]"]["pid"] != before["a[0]"]["pid"] and after["a[0]"]["recycles"] == 1
    status = sup.status()
    assert status is not None
    assert next(p for p in status["programs"] if p["name"] == "a")["argv"][-1] == "import time; time.sleep(601)"
    sup.wait_log(rf"b\[0\] \(pid {before['b[0]']['pid']}\) stopped \(removed from the configuration\)")

    (env.dir / "leveret.toml").write_text('[[program]]\nname = "a"\n')
    sup.proc.send_signal(signal.SIGHUP)
    sup.wait_log(r"SIGHUP: .*missing command.*keeping the configuration as it was")
    assert sup.terminate() == 0
    assert set(sup.processes()) == {"a[0]", "c[0]", "c[1]"}


def test_in_process_worker_stops_over_max_memory(env: Env) -> None:
    proc = Supervised(["worker", "supapp:app", "--processes", "0", "--max-memory", "90"], env.dir, env.env,
                      env.state_dir)
    env.started.append(proc)
    proc.wait_log(r"consuming sup")
    env.send("leak", mb=120)
    assert proc.proc.wait(60) == 0
    assert env.marked("leak", 120)
    assert re.search(r"RSS \d+ MB > max memory 90 MB after 1 tasks: stopping", proc.log)


def test_run_keeps_a_worker_and_a_real_forwarder_alive(env: Env) -> None:
    """One ``leveret run`` file: the outbox's forwarder and a worker. Tasks written to the outbox reach the worker
    through the supervised ``leveret forward``; a SIGKILLed forwarder is restarted and the rest still arrive."""
    from leveret.outbox import Outbox

    sup = env.run(f'''
[supervisor]
state_dir = "state"

[[worker]]
name = "tasks"
app = "supapp:app"
queues = ["{QUEUE}"]

[[forwarder]]
name = "forward"
outbox = "outbox.db"
brokers = ["amqp://guest:guest@127.0.0.1:{env.port}/"]
''')
    procs = sup.wait_running(2)
    assert set(procs) == {"tasks[0]", "forward[0]"}

    def send(n: int) -> None:
        task_id = uuid.uuid4().hex
        body = json.dumps({"payload": {"n": n}, "metadata": {"task": "record", "id": task_id}}).encode()
        outbox.send("", QUEUE, body, properties={"content_type": "application/json", "message_id": task_id})

    with Outbox(str(env.dir / "outbox.db")) as outbox:
        for n in range(5):
            send(n)
        wait_for(lambda: len(env.marked("record")) >= 5, 30, lambda: f"5 tasks through the forwarder\n{sup.log}")

        os.kill(procs["forward[0]"]["pid"], signal.SIGKILL)
        for n in range(5, 10):  # sent while the forwarder is down: they wait in the file
            send(n)
        sup.wait_log(r"forward\[0\].*(restart|start)", 30)
        wait_for(lambda: len(env.marked("record")) >= 10, 60, lambda: f"10 tasks\n{sup.log}")
        assert outbox.count() == 0 or wait_for(lambda: outbox.count() == 0, 10, "an empty outbox")
    assert sorted(int(m[2]) for m in env.marked("record")) == list(range(10))
    assert sup.processes()["forward[0]"]["restarts"] >= 1
    assert sup.terminate() == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_reload_racing_a_crash_leaves_one_process_per_slot(env: Env) -> None:
    """The slot's process dies while a reload waits for its replacement to become ready: the replacement is
    installed and the restart scheduled for the dead one is cancelled (no second, untracked process)."""
    pids = env.dir / "pids"
    script = f"import os, time; open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n'); time.sleep(600)"
    sup = env.run(f'''
[supervisor]
state_dir = "state"
backoff = 2.5

[[program]]
name = "p"
command = [{json.dumps(sys.executable)}, "-c", {json.dumps(script)}]
grace = 2
''')
    first = sup.wait_running(1)["p[0]"]["pid"]
    started = lambda: [int(x) for x in pids.read_text().split()] if pids.exists() else []  # noqa: E731
    sup.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(started()) >= 2, 30, lambda: f"the reload's new process\n{sup.log}")
    os.kill(first, signal.SIGKILL)  # while the new one is not ready yet (a program is ready after 1 s)
    sup.wait_log(r"reload done", timeout=30)
    hold(4, "no third process: the crash's restart would come after its 2.5 s back-off")
    assert len(started()) == 2, sup.log
    second = started()[1]
    assert sup.processes()["p[0]"]["pid"] == second
    assert sup.terminate(timeout=30) == 0
    assert not alive(second)


def test_stop_reaches_the_children_of_a_command(env: Env) -> None:
    """SIGTERM goes to the process group of each command: a shell's children stop with it."""
    child_pid = env.dir / "child.pid"
    sup = env.run(f'''
[supervisor]
state_dir = "state"

[[program]]
name = "sh"
command = ["sh", "-c", "sleep 987 & echo $! > {child_pid}; wait; true"]
grace = 2
''')
    sup.wait_running(1)
    grandchild = wait_for(lambda: child_pid.exists() and child_pid.read_text().strip(), 10, "the grandchild")
    assert alive(int(grandchild))
    assert sup.terminate(timeout=30) == 0
    wait_for(lambda: not alive(int(grandchild)), 5, lambda: f"sleep 987 (pid {grandchild}) to be gone\n{sup.log}")


def test_a_worker_started_through_a_wrapper_command_keeps_running(env: Env) -> None:
    """A ``[[program]]`` that runs ``leveret worker --processes 0`` through ``sh -c`` is not handed the
    supervisor's pipe and variables (it used to take them for its own and exit: "the supervisor is gone")."""
    command = f"cd {env.dir} && {sys.executable} -m leveret worker supapp:app --processes 0 --queues sup; true"
    sup = env.run(f'''
[supervisor]
state_dir = "state"

[[program]]
name = "wrapped"
command = ["sh", "-c", {json.dumps(command)}]
grace = 5
''')
    sup.wait_log(r"consuming sup")
    hold(2, "the children must not think the supervisor is gone (the old parent check ran every 0.5 s)")
    env.send("record", n=1)
    wait_for(lambda: env.marked("record", 1), 30, lambda: f"the task\n{sup.log}")
    assert "supervisor is gone" not in sup.log and "gone" not in sup.log
    assert sup.processes()["wrapped[0]"]["restarts"] == 0
    assert sup.terminate(timeout=30) == 0


def test_max_memory_below_the_baseline_is_a_crash_loop_not_endless_recycling(env: Env) -> None:
    sup = env.run('''
[supervisor]
state_dir = "state"
backoff = 0.2
backoff_max = 0.4
stable_after = 30
check_interval = 0.2

[[worker]]
name = "tiny"
app = "supapp:app"
max_memory = 5
''')
    looping = wait_for(lambda: (p := sup.processes().get("tiny[0]")) and p["crash_looping"] and p, 60,
                       lambda: f"crash-looping\n{sup.log}")
    assert looping["recycles"] == 0 and looping["restarts"] >= 3
    assert "max_memory is below the process's baseline" in sup.log
    assert "recycling" not in sup.log
    status = sup.status()
    assert status is not None and not status["healthy"]
    assert sup.terminate(timeout=30) == 0


def test_health_allows_three_check_intervals_before_calling_a_supervisor_stale(tmp_path: Path) -> None:
    from leveret.supervisor.health import read_status

    def status(age: float, check_interval: float) -> str:
        info = {"pid": os.getpid(), "state": "running", "updated_ts": time.time() - age,
                "check_interval": check_interval}
        (tmp_path / "supervisor.json").write_text(json.dumps({"supervisor": info, "programs": []}))
        return read_status(str(tmp_path))[1]

    assert status(30, 20.0) == ""  # a supervisor checking every 20 s, last seen 30 s ago: alive
    assert "not responding" in status(70, 20.0)
    assert "not responding" in status(20, 1.0)
    assert status(10, 1.0) == ""


def test_two_workers_for_other_queues_run_from_one_directory(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --state-dir each `leveret worker` keeps its status in ./leveret-state/APP[@QUEUES], so workers
    scaled by queue from one directory do not lock each other out."""
    environ = {k: v for k, v in env.env.items() if k != "LEVERET_STATE_DIR"}
    base = env.dir / "leveret-state"
    some = Supervised(["worker", "supapp:app", "--queues", "sup"], env.dir, environ, base / "supapp_app@sup")
    env.started.append(some)
    every = Supervised(["worker", "supapp:app"], env.dir, environ, base / "supapp_app")
    env.started.append(every)
    some.wait_running(1)
    every.wait_running(1)
    assert "another supervisor" not in some.log + every.log
    code = cli_main(["health", "--state-dir", str(base)])  # two below it: which one is asked for
    assert code == 1 and "several supervisors" in capsys.readouterr().err
    assert cli_main(["health", "--state-dir", str(base / "supapp_app@sup")]) == 0
    assert some.terminate() == 0 and every.terminate() == 0
