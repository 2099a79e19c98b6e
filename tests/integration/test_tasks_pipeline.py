"""``App.pipeline()`` (leveret/tasks/pipeline.py): many sends from one thread with their confirms in flight
together, on Leveret and on RabbitMQ. Every send whose confirm came back is in the queue; every one that was
refused or lost is reported (``PipelineError``, once) and is not; no more than ``window`` are awaited at once."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leveret.tasks import App, BrokerUnavailable, PipelineError

from amqphelp import delete_queues, drain, url
from serverproc import LeveretProcess


def drain_ids(port: int, queue: str) -> list[str]:
    return [props.message_id for props, _ in drain(port, queue)]


@pytest.fixture
def queue_name(broker_port: int) -> Iterator[str]:
    name = f"pl-{uuid.uuid4().hex[:10]}"
    yield name
    delete_queues(broker_port, name, f"{name}.dead")


@pytest.mark.parametrize("status", [False, True], ids=["nostatus", "status"])
def test_pipelined_sends_are_all_confirmed_within_the_window(broker_port: int, queue_name: str,
                                                             status: bool) -> None:
    app = App(url(broker_port), name="pipeline", status_ttl=60)

    @app.task(name="pl.work", queue=queue_name, status=status)
    def work(i: int, tag: str = "") -> None:
        return None

    try:
        ids: list[str] = []
        most = 0
        with app.pipeline(window=16) as p:
            for i in range(300):
                ids.append(p.send(work, i, tag="x").id)
                most = max(most, p.in_flight)
                assert p.in_flight <= 16
            with pytest.raises(TypeError):  # the payload is checked against the signature, as by task.send
                p.send(work, "a", "b", "c")  # type: ignore[call-arg]
            with pytest.raises(TypeError):  # and by send_with, with or without options
                p.send_with(work, {"j": 1})
        assert p.in_flight == 0 and p.sent == p.confirmed == 300
        assert most > 1  # confirms were in flight together
        assert sorted(drain_ids(broker_port, queue_name)) == sorted(ids)
        assert len(set(ids)) == 300
    finally:
        app.close()


def ctl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leveret", "ctl", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60)


def test_refused_sends_are_reported_once_and_the_rest_kept(tmp_path: Path) -> None:
    """A queue that refuses publishes past 5 messages (a max-length policy with reject-publish): the pipeline
    reports exactly the refused ids (once), and exactly the others are in the queue."""
    broker = LeveretProcess(tmp_path / "data").start()
    app = App(url(broker.port), name="refuse", status_ttl=60)

    @app.task(name="pl.capped", queue="pl-capped", status=False)
    def capped(i: int) -> None:
        return None

    try:
        result = ctl(broker.data_dir, "set-policy", "cap", "^pl-capped$",
                     '{"max-length": 5, "overflow": "reject-publish"}')
        assert result.returncode == 0, result.stderr
        ids: list[str] = []
        p = app.pipeline(window=4)
        with pytest.raises(PipelineError) as caught, p:
            for i in range(20):
                ids.append(p.send(capped, i).id)
        failed = set(caught.value.failed)
        with contextlib.suppress(PipelineError):  # some may have been raised by a send in the loop already
            p.flush()
        kept = drain_ids(broker.port, "pl-capped")
        assert len(kept) == 5 and set(kept) | failed <= set(ids)
        assert p.confirmed == 5 and p.sent == len(ids)
        p.flush()  # each failure is raised once: nothing new since
    finally:
        app.close()
        broker.stop()


@pytest.mark.slow
def test_no_confirmed_send_is_lost_when_the_broker_is_killed(tmp_path: Path) -> None:
    """kill -9 of the broker under a pipeline, then a restart on the same port and data: every send that was
    not reported as failed is in the queue afterwards."""
    broker = LeveretProcess(tmp_path / "data").start()
    app = App(url(broker.port), name="kill", send_timeout=1.5)

    @app.task(name="pl.kill", queue="pl-kill", status=False)
    def work(i: int) -> None:
        return None

    sent: list[str] = []
    failed: set[str] = set()
    stop = threading.Event()
    unknown: list[BaseException] = []

    def producer() -> None:
        p = app.pipeline(window=64)
        i = 0
        while not stop.is_set() and i < 20_000:
            try:
                sent.append(p.send(work, i).id)
            except PipelineError as exc:
                failed.update(exc.failed)
            except BrokerUnavailable as exc:  # nothing confirmed for send_timeout: the outage
                unknown.append(exc)
            i += 1
        while True:
            try:
                p.flush()
                return
            except PipelineError as exc:
                failed.update(exc.failed)
            except BrokerUnavailable as exc:
                unknown.append(exc)

    thread = threading.Thread(target=producer)
    try:
        work.send(-1)
        thread.start()
        deadline = 30.0
        _wait(lambda: len(sent) >= 500, deadline, "500 pipelined sends before the kill")
        broker.kill()
        _wait(lambda: len(failed) > 0 or len(unknown) > 0, deadline, "the outage noticed by the pipeline")
        before = len(sent)
        broker.start()
        _wait(lambda: len(sent) >= before + 500, deadline, "pipelined sends working again")
        stop.set()
        thread.join(60)
        assert not thread.is_alive()
        got = set(drain_ids(broker.port, "pl-kill"))
        lost = [task_id for task_id in sent if task_id not in failed and task_id not in got]
        assert not lost, f"{len(lost)} of {len(sent) - len(failed)} confirmed pipelined tasks lost"
    finally:
        stop.set()
        thread.join(30)
        app.close()
        broker.stop()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)

