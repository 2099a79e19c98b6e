"""Workflows (leveret.tasks.canvas, docs/workflows.md).

- Without a broker: signatures and how the parameter receiving a result is found, the links a chain is built
  into, build-time errors, and the chord unlock's decisions and actions with a fake status reader and a fake
  app that records what is sent.
- Against Leveret and RabbitMQ (``broker_port``), with a real worker: a chain of 3 passing results, a group's
  results in order, a chord summing 10 members, a chord whose member gives up, a chain whose middle task fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from leveret.tasks import App, TaskError, Worker
from leveret.tasks.canvas import (
    FAILED_TASK,
    UNLOCK_CAP,
    UNLOCK_FIRST,
    UNLOCK_TASK,
    AlreadyDone,
    ChordError,
    FailChord,
    SendCallback,
    Signature,
    WaitMore,
    WorkflowError,
    backoff,
    chain,
    chord,
    decide,
    group,
    install,
    resolve_result_arg,
    signature,
    unlock,
    unlock_id,
)
from leveret.tasks.status import MAX_RESULT_BYTES

# --- a fake app: records what is sent, answers status from a dict --------------------------------------------


@dataclasses.dataclass
class FakeTask:
    app: Any
    name: str
    fn: Callable[..., Any]
    queue: str
    keep_result: bool = True

    def send_with(self, payload: dict[str, Any], *, delay: float | None = None, eta: Any = None,
                  priority: int | None = None, task_id: str | None = None,
                  metadata: dict[str, Any] | None = None) -> str:
        task_id = task_id or uuid.uuid4().hex
        self.app.sent.append({"task": self.name, "queue": self.queue, "payload": payload, "delay": delay,
                              "priority": priority, "task_id": task_id, "metadata": metadata})
        self.app.records[task_id] = {"id": task_id, "task": self.name, "state": "queued"}
        return task_id


class FakeApp:
    def __init__(self) -> None:
        self.name = "fake"
        self.tasks: dict[str, FakeTask] = {}
        self.sent: list[dict[str, Any]] = []
        self.records: dict[str, dict[str, Any]] = {}

    def task(self, *, name: str, queue: str | None = None, keep_result: bool = True,
             **_options: Any) -> Callable[[Callable[..., Any]], FakeTask]:
        def register(fn: Callable[..., Any]) -> FakeTask:
            self.tasks[name] = FakeTask(self, name, fn, queue or self.name, keep_result)
            return self.tasks[name]

        return register

    def status_info(self, task_id: str) -> dict[str, Any]:
        return self.records.get(task_id) or {"id": task_id, "state": "unknown"}


def fake_tasks() -> tuple[FakeApp, FakeTask, FakeTask, FakeTask]:
    app = FakeApp()

    @app.task(name="add", queue="math")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="scale", queue="math")
    def scale(value: int, factor: int = 2, note: str = "") -> int:
        return value * factor

    @app.task(name="total", queue="sums")
    def total(values: list[int], label: str = "sum") -> str:
        return f"{label}={sum(values)}"

    return app, add, scale, total


# --- signatures and result_arg --------------------------------------------------------------------------------


def test_signature_checks_names() -> None:
    _, add, _, _ = fake_tasks()
    assert signature(add, x=1) == Signature(add, {"x": 1})
    with pytest.raises(WorkflowError, match=r"no parameter.*z"):
        signature(add, z=1)
    silent = dataclasses.replace(add, name="silent")
    silent.status = False  # type: ignore[attr-defined]  # Task(status=False): no records to follow
    with pytest.raises(WorkflowError, match="status=False"):
        signature(silent, x=1)
    with pytest.raises(WorkflowError, match="unknown send option"):
        signature(add, x=1).set(queue="other")
    assert signature(add, x=1).set(priority=3).options == {"priority": 3}


def test_result_arg_resolution() -> None:
    _, add, scale, total = fake_tasks()
    assert resolve_result_arg(signature(add, x=1)) == "y"
    # Only required parameters compete; optional ones left out keep their defaults.
    assert resolve_result_arg(signature(scale)) == "value"
    assert resolve_result_arg(signature(total, label="n")) == "values"
    # All given, but one optional left: that one.
    assert resolve_result_arg(signature(scale, value=1, factor=3)) == "note"
    with pytest.raises(WorkflowError, match="which of x, y"):
        resolve_result_arg(signature(add))
    with pytest.raises(WorkflowError, match="no parameter left"):
        resolve_result_arg(signature(add, x=1, y=2))
    assert resolve_result_arg(signature(add).receiving("x")) == "x"
    assert resolve_result_arg(signature(add, x=1, y=2).receiving(None)) is None
    with pytest.raises(WorkflowError, match="no parameter 'nope'"):
        signature(add).receiving("nope")


# --- building chains, groups and chords ----------------------------------------------------------------------


def test_chain_builds_nested_links_with_fixed_ids() -> None:
    app, add, scale, _ = fake_tasks()

    def with_values(values: int) -> int:
        return values

    app.tasks["wrap"] = FakeTask(app, "wrap", with_values, "sums")
    built = chain(signature(add, x=1, y=2), signature(scale, factor=10), signature(app.tasks["wrap"]))
    result = built.send()
    assert len(result.ids) == 3 and result.id == result.ids[-1]
    (first,) = app.sent  # only the first task is sent; the worker sends the links
    assert first["task"] == "add" and first["payload"] == {"x": 1, "y": 2} and first["task_id"] == result.ids[0]
    link = first["metadata"]["link"]
    assert link == {"task": "scale", "queue": "math", "payload": {"factor": 10}, "result_arg": "value",
                    "task_id": result.ids[1], "metadata": {"link": {
                        "task": "wrap", "queue": "sums", "payload": {}, "result_arg": "values",
                        "task_id": result.ids[2], "metadata": {}}}}
    # One step: no link at all.
    app.sent.clear()
    chain(signature(add, x=1, y=2)).send()
    assert app.sent[0]["metadata"] is None


def test_chain_and_chord_refuse_at_build_time() -> None:
    app, add, scale, total = fake_tasks()
    with pytest.raises(WorkflowError, match="at least one"):
        chain()
    with pytest.raises(WorkflowError, match="bad payload for task 'add'"):
        chain(signature(add, x=1), signature(scale))  # the first task must have its whole payload
    with pytest.raises(WorkflowError, match="which of x, y"):
        chain(signature(add, x=1, y=2), signature(add))
    with pytest.raises(WorkflowError, match="only for the first task"):
        chain(signature(add, x=1, y=2), signature(scale).set(delay=5))
    with pytest.raises(WorkflowError, match="no parameter left"):
        chord([signature(add, x=1, y=2)], signature(add, x=1, y=2))
    with pytest.raises(WorkflowError, match="must receive"):
        chord([signature(add, x=1, y=2)], signature(total).receiving(None))
    app.tasks["quiet"] = FakeTask(app, "quiet", add.fn, "math", keep_result=False)
    with pytest.raises(WorkflowError, match="keeps no result"):
        chord([signature(app.tasks["quiet"], x=1, y=2)], signature(total))
    with pytest.raises(WorkflowError, match="at least one"):
        group()
    assert app.sent == []  # nothing was sent by a refused workflow


def test_chord_send_sends_members_then_a_delayed_unlock_to_the_callback_queue() -> None:
    app, add, _, total = fake_tasks()
    result = chord(group(*(signature(add, x=i, y=i) for i in range(3))), signature(total, label="t")).send()
    assert UNLOCK_TASK in app.tasks and FAILED_TASK in app.tasks  # installed by the chord
    members, unlock_msg = app.sent[:3], app.sent[3]
    assert [m["task_id"] for m in members] == result.group.ids
    assert [m["payload"] for m in members] == [{"x": i, "y": i} for i in range(3)]
    assert unlock_msg["task"] == UNLOCK_TASK and unlock_msg["queue"] == "sums"
    assert unlock_msg["delay"] == UNLOCK_FIRST and unlock_msg["task_id"] == unlock_id(result.id, 0)
    spec = unlock_msg["payload"]["chord"]
    assert spec["members"] == result.group.ids and spec["callback_id"] == result.id
    assert spec["callback"]["result_arg"] == "values" and spec["callback"]["payload"] == {"label": "t"}
    assert len(app.sent) == 4
    assert result.status() == "pending"


def test_workflows_refuse_an_eager_app() -> None:
    app, add, _, total = fake_tasks()
    app.eager = True  # type: ignore[attr-defined]
    for flow in (chain(signature(add, x=1, y=2)), group(signature(add, x=1, y=2)),
                 chord([signature(add, x=1, y=2)], signature(total))):
        with pytest.raises(WorkflowError, match="eager"):
            flow.send()
    assert app.sent == []


# --- the unlock's decisions (pure) --------------------------------------------------------------------------


def spec_of(n: int, started: float = 1000.0, max_wait: float = 60.0) -> dict[str, Any]:
    return {"members": [f"m{i}" for i in range(n)], "names": ["add"] * n, "callback_id": "cb",
            "callback": {"task": "total", "queue": "sums", "payload": {}, "result_arg": "values", "options": {}},
            "started": started, "max_wait": max_wait}


def reader(records: dict[str, dict[str, Any]]) -> Callable[[str], dict[str, Any] | None]:
    return records.get


def done(result: Any) -> dict[str, Any]:
    return {"state": "succeeded", "result": result}


def test_decide_sends_results_in_member_order() -> None:
    records = {f"m{i}": done(i * 10) for i in (2, 0, 1)}
    assert decide(spec_of(3), 0, reader(records), 1001.0) == SendCallback([0, 10, 20])
    records["m1"] = done(None)  # a None result is a result
    assert decide(spec_of(3), 0, reader(records), 1001.0) == SendCallback([0, None, 20])


def test_decide_waits_with_capped_backoff_then_times_out() -> None:
    records = {"m0": done(1), "m1": {"state": "started"}}
    assert decide(spec_of(3), 0, reader(records), 1001.0) == WaitMore(UNLOCK_FIRST)
    assert decide(spec_of(3), 2, reader(records), 1001.0) == WaitMore(UNLOCK_FIRST * 4)
    assert decide(spec_of(3), 40, reader(records), 1001.0) == WaitMore(UNLOCK_CAP)
    assert [backoff(a) for a in range(6)] == [0.2, 0.4, 0.8, 1.6, 3.2, 3.2]
    # The last wait does not go past max_wait; at max_wait the chord fails, naming what is pending.
    last = decide(spec_of(3), 40, reader(records), 1059.0)
    assert isinstance(last, WaitMore) and last.delay == pytest.approx(1.0)
    failed = decide(spec_of(3), 41, reader(records), 1060.0)
    assert isinstance(failed, FailChord)
    assert "not done after 60 s" in failed.reason and "1 (m1: started)" in failed.reason
    assert "2 (m2: pending)" in failed.reason and "m0" not in failed.reason


def test_decide_fails_when_a_member_gave_up_or_was_revoked() -> None:
    records = {"m0": done(1), "m1": {"state": "gave_up", "error": {"type": "ValueError", "message": "boom"}},
               "m2": {"state": "started"}}
    decision = decide(spec_of(3), 0, reader(records), 1001.0)
    assert decision == FailChord("chord member 1 (add, id m1) gave_up: ValueError: boom")
    records["m1"] = {"state": "revoked", "error": None}
    assert decide(spec_of(3), 0, reader(records), 1001.0) == FailChord("chord member 1 (add, id m1) revoked: revoked")


def test_decide_fails_when_a_result_was_not_kept() -> None:
    records = {"m0": done(1), "m1": {"state": "succeeded"}}  # too large, or keep_result=False
    decision = decide(spec_of(2), 0, reader(records), 1001.0)
    assert isinstance(decision, FailChord)
    assert "member 1" in decision.reason and str(MAX_RESULT_BYTES) in decision.reason


def test_decide_does_nothing_twice() -> None:
    records = {"m0": done(1), "cb": {"state": "queued"}}
    assert decide(spec_of(1), 3, reader(records), 1001.0) == AlreadyDone("queued")
    records["cb"] = {"state": "gave_up"}
    assert decide(spec_of(1), 3, reader(records), 5000.0) == AlreadyDone("gave_up")


# --- the unlock's actions (fake app) ----------------------------------------------------------------------


def test_unlock_sends_callback_once_with_its_fixed_id() -> None:
    app, *_ = fake_tasks()
    install(app)
    spec = spec_of(2, started=time.time())
    spec["callback"]["payload"] = {"label": "n"}
    app.records.update({"m0": done(3), "m1": done(4)})
    assert unlock(app, spec, 5) == "sent callback cb"
    assert app.sent == [{"task": "total", "queue": "sums", "payload": {"label": "n", "values": [3, 4]},
                         "delay": None, "priority": None, "task_id": "cb", "metadata": None}]
    # A duplicate unlock (redelivered after a worker died) sees the callback's record and sends nothing.
    assert unlock(app, spec, 5) == "callback cb already queued"
    assert len(app.sent) == 1


def test_unlock_sends_itself_again_to_the_callback_queue() -> None:
    app, *_ = fake_tasks()
    install(app)
    spec = spec_of(2, started=time.time())
    app.records["m0"] = done(3)
    assert unlock(app, spec, 1).startswith("waiting")
    (again,) = app.sent
    assert again["task"] == UNLOCK_TASK and again["queue"] == "sums"  # not the app's default queue "fake"
    assert again["task_id"] == unlock_id("cb", 2) and again["delay"] == backoff(1)
    assert again["payload"] == {"chord": spec, "attempt": 2}
    assert app.tasks[UNLOCK_TASK].queue == "fake"  # registered there; only sent elsewhere


def test_unlock_fails_the_chord_under_the_callback_id() -> None:
    app, *_ = fake_tasks()
    install(app)
    spec = spec_of(2, started=time.time())
    app.records.update({"m0": done(3), "m1": {"state": "gave_up", "error": {"type": "KeyError", "message": "k"}}})
    assert unlock(app, spec, 0).startswith("failed chord cb: chord member 1")
    (failed,) = app.sent
    assert failed["task"] == FAILED_TASK and failed["queue"] == "sums" and failed["task_id"] == "cb"
    with pytest.raises(ChordError, match=r"chord member 1 .* KeyError: k"):
        app.tasks[FAILED_TASK].fn(**failed["payload"])
    # The unlock task's body is the same function, with the app bound.
    app.sent.clear()
    app.records.pop("cb")
    assert app.tasks[UNLOCK_TASK].fn(chord=spec, attempt=0).startswith("failed chord")


def test_unlock_fails_when_the_callback_is_not_registered_here() -> None:
    app, *_ = fake_tasks()
    install(app)
    spec = spec_of(1, started=time.time())
    spec["callback"]["task"] = "elsewhere"
    app.records["m0"] = done(1)
    assert "'elsewhere' is not a task of app 'fake'" in unlock(app, spec, 0)
    assert app.sent[0]["task"] == FAILED_TASK


def test_unlock_looks_again_when_records_cannot_be_read() -> None:
    app, *_ = fake_tasks()
    install(app)

    def unreadable(task_id: str) -> dict[str, Any]:
        raise ConnectionError("broker restarting")

    app.status_info = unreadable  # type: ignore[method-assign]
    spec = spec_of(1, started=time.time())
    assert unlock(app, spec, 2) == f"waiting {backoff(2):g} s"
    assert app.sent[0]["task"] == UNLOCK_TASK and app.sent[0]["task_id"] == unlock_id("cb", 3)
    app.sent.clear()
    spec["started"] = time.time() - 61  # past max_wait: the chord fails, saying why
    assert "cannot read the members' status records after 60 s: broker restarting" in unlock(app, spec, 3)
    assert app.sent[0]["task"] == FAILED_TASK and app.sent[0]["task_id"] == "cb"


# --- against a broker, with a worker ----------------------------------------------------------------------------


def url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


@pytest.fixture
def flow(broker_port: int) -> Iterator[dict[str, Any]]:
    """An App with unique names (RabbitMQ's vhost is shared), canvas installed, and a way to start its worker;
    its queues (with dead-letter and wait queues) are deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    app = App(url(broker_port), name=f"cv-{tag}", status_ttl=120)
    install(app)
    workers: list[Worker] = []

    def start() -> Worker:
        worker = Worker(app, concurrency=4).start()
        workers.append(worker)
        return worker

    yield {"app": app, "tag": tag, "queue": f"cv-{tag}-work", "start": start}
    for worker in workers:
        worker.stop()
    app.close()
    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker_port))
        ch = conn.channel()
        waits = {round(backoff(a) * 1000) for a in range(8)}
        for q in app.queues:
            for name in (q, f"{q}.dead", *(f"{q}.retry.{ms}" for ms in waits)):
                ch.queue_delete(name)
        conn.close()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def test_chain_of_three_passes_results(flow: dict[str, Any]) -> None:
    app, q = flow["app"], flow["queue"]

    @app.task(name=f"add-{flow['tag']}", queue=q)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name=f"scale-{flow['tag']}", queue=q)
    def scale(value: int, factor: int) -> int:
        return value * factor

    @app.task(name=f"show-{flow['tag']}", queue=q)
    def show(number: int, unit: str) -> str:
        return f"{number} {unit}"

    flow["start"]()
    result = chain(signature(add, x=2, y=3), signature(scale, factor=10), signature(show, unit="kg")).send()
    assert result.result(timeout=20) == "50 kg"
    assert result.status() == "succeeded"
    assert [app.status(i) for i in result.ids] == ["succeeded"] * 3
    assert app.status_info(result.ids[1])["result"] == 50


def test_group_results_in_order(flow: dict[str, Any]) -> None:
    app, q = flow["app"], flow["queue"]

    @app.task(name=f"square-{flow['tag']}", queue=q)
    def square(n: int) -> int:
        time.sleep((9 - n) * 0.01)  # the first members finish last
        return n * n

    flow["start"]()
    result = group(*(signature(square, n=n) for n in range(10))).send()
    assert result.results(timeout=20) == [n * n for n in range(10)]
    assert result.status() == "succeeded"
    assert len(set(result.ids)) == 10


def test_chord_sums_ten_members(flow: dict[str, Any]) -> None:
    app, q = flow["app"], flow["queue"]
    calls: list[list[int]] = []

    @app.task(name=f"double-{flow['tag']}", queue=q)
    def double(n: int) -> int:
        time.sleep(0.01 * (n % 3))
        return 2 * n

    @app.task(name=f"total-{flow['tag']}", queue=q)
    def total(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    flow["start"]()
    result = chord(group(*(signature(double, n=n) for n in range(10))), signature(total)).send()
    assert result.result(timeout=30) == 90
    assert calls == [[2 * n for n in range(10)]]  # once, in member order
    assert result.group.results(timeout=5) == [2 * n for n in range(10)]


def test_chord_fails_when_a_member_gives_up(flow: dict[str, Any]) -> None:
    app, q = flow["app"], flow["queue"]
    calls: list[list[int]] = []

    @app.task(name=f"check-{flow['tag']}", queue=q)
    def check(n: int) -> int:
        if n == 3:
            raise ValueError("three is not allowed")
        return n

    @app.task(name=f"collect-{flow['tag']}", queue=q)
    def collect(values: list[int]) -> int:
        calls.append(values)
        return len(values)

    flow["start"]()
    result = chord([signature(check, n=n) for n in range(5)], signature(collect)).send()
    assert result.wait(timeout=30) == "gave_up"
    with pytest.raises(TaskError) as info:
        result.result(timeout=5)
    assert info.value.remote_type == "ChordError"
    assert f"member 3 (check-{flow['tag']}, id {result.group.ids[3]})" in info.value.remote_message
    assert "ValueError: three is not allowed" in info.value.remote_message
    assert result.group.status() == "gave_up"
    assert calls == []


def test_chain_stops_at_a_failing_middle_task(flow: dict[str, Any]) -> None:
    app, q = flow["app"], flow["queue"]
    ran: list[str] = []
    last_ran = threading.Event()

    @app.task(name=f"first-{flow['tag']}", queue=q)
    def first(n: int) -> int:
        ran.append("first")
        return n + 1

    @app.task(name=f"middle-{flow['tag']}", queue=q)
    def middle(n: int) -> int:
        ran.append("middle")
        raise RuntimeError(f"middle got {n}")

    @app.task(name=f"last-{flow['tag']}", queue=q)
    def last(n: int) -> int:
        last_ran.set()
        return n

    flow["start"]()
    result = chain(signature(first, n=1), signature(middle), signature(last)).send()
    assert result.wait(timeout=20) == "gave_up"
    with pytest.raises(TaskError) as info:
        result.result(timeout=5)
    assert info.value.remote_type == "RuntimeError" and info.value.remote_message == "middle got 2"
    assert info.value.task_id == result.ids[1]
    assert ran == ["first", "middle"]
    # The last task was never sent: no record, and its function never runs.
    assert app.status(result.ids[2]) == "unknown"
    assert not last_ran.is_set()


def test_chord_results_none_and_too_large(flow: dict[str, Any]) -> None:
    """A member returning None passes None on (its record holds "result": null); a member whose result is over
    64 KiB of JSON is not kept in its record, and the chord fails saying so rather than passing something else."""
    app, q = flow["app"], flow["queue"]
    calls: list[list[Any]] = []

    @app.task(name=f"maybe-{flow['tag']}", queue=q)
    def maybe(n: int) -> str | None:
        return None if n == 0 else "x" * n

    @app.task(name=f"gather-{flow['tag']}", queue=q)
    def gather(values: list[Any]) -> int:
        calls.append(values)
        return len(values)

    flow["start"]()
    fine = chord([signature(maybe, n=0), signature(maybe, n=3)], signature(gather)).send()
    assert fine.result(timeout=30) == 2
    assert calls == [[None, "xxx"]]
    big = chord([signature(maybe, n=3), signature(maybe, n=MAX_RESULT_BYTES)], signature(gather)).send()
    with pytest.raises(TaskError) as info:
        big.result(timeout=30)
    assert info.value.remote_type == "ChordError"
    assert f"member 1 (maybe-{flow['tag']}, id {big.group.ids[1]}) succeeded but its result is not kept" in \
        info.value.remote_message
    assert calls == [[None, "xxx"]]
