"""Workflows: ``signature``, ``chain``, ``group`` and ``chord`` (Celery's canvas, small and typed). See
docs/workflows.md.

Built only on the task-layer contract (docs/tasks.md, notes of issue 11):

- a chain is one message whose metadata carries ``"link"`` (the next task, which carries the next link, ...):
  the worker sends the link when the task succeeds, with the result as ``payload[result_arg]``. Every id of
  the chain is chosen here, up front (``link["task_id"]``), so the caller knows the last task's id at once;
- a group is one ``send_with`` per member, with ids chosen up front;
- a chord is a group plus the internal task ``leveret.chord_unlock``, sent with a delay to the callback's
  queue: it reads the members' status records (their ``result``), and sends the callback (fixed id) once every
  member succeeded, fails the chord when one gave up, or sends itself again with a capped back-off.

The callback's id is the chord's id. A chord that fails gets, under that id, the internal task
``leveret.chord_failed``, which gives up at once with a ``ChordError`` naming the member: the chord's status is
then "gave_up" with that error, read like any task's.

The chord's unlock lives in ``leveret.tasks.chord_unlock``, reading status records in ``leveret.tasks.records``;
their names stay importable from here.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, overload

from leveret.tasks.chord_unlock import (
    DEFAULT_MAX_WAIT,
    FAILED_STATES,
    FAILED_TASK,
    UNLOCK_CAP,
    UNLOCK_FIRST,
    UNLOCK_TASK,
    AlreadyDone,
    ChordError,
    Decision,
    FailChord,
    SendCallback,
    WaitMore,
    backoff,
    decide,
    install,
    on_queue,
    send_unlock,
    unlock,
    unlock_id,
)
from leveret.tasks.records import StatusReader, poll, reader_of, result_of, state_of, task_error
from leveret.tasks.status import FINAL_STATES, new_task_id

__all__ = ["DEFAULT_MAX_WAIT", "FAILED_STATES", "FAILED_TASK", "UNLOCK_CAP", "UNLOCK_FIRST", "UNLOCK_TASK",
    "AlreadyDone", "Chain", "ChainResult", "Chord", "ChordError", "ChordResult", "Decision", "FailChord", "Group",
    "GroupResult", "SendCallback", "SendableTask", "Signature", "StatusReader", "WaitMore", "WorkflowError",
    "backoff", "chain", "check_not_eager", "chord", "decide", "group", "install", "link_of", "new_id", "on_queue",
    "parameters", "poll", "reader_of", "resolve_result_arg", "result_of", "send_unlock", "signature", "state_of",
    "takes_any_keyword", "task_error", "unlock", "unlock_id"]

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

class WorkflowError(ValueError):
    """A workflow that cannot be built (raised by ``chain``/``chord``/``signature`` before anything is sent)."""


class SendableTask(Protocol[R_co]):
    """What the canvas needs of a registered task (``leveret.tasks.Task[P, R]``)."""

    @property
    def name(self) -> str: ...

    @property
    def queue(self) -> str: ...

    @property
    def fn(self) -> Callable[..., R_co]: ...

    @property
    def app(self) -> Any: ...

    def send_with(self, payload: dict[str, Any], *, delay: float | None = None, eta: Any = None,
                  priority: int | None = None, task_id: str | None = None,
                  metadata: dict[str, Any] | None = None) -> Any: ...


def new_id() -> str:
    return new_task_id()  # time-ordered: a status read on RabbitMQ's stream starts near the task's creation


def check_not_eager(app: Any) -> None:
    """WorkflowError for an ``App(eager=True)``: its sends run inline under ids of their own, without links."""
    if getattr(app, "eager", False):
        raise WorkflowError("workflows do not run with App(eager=True) yet (eager sends keep neither fixed ids "
                            "nor links); test them against a broker (leveret.testing)")


# --- signatures -------------------------------------------------------------------------------------------------

_UNSET: Any = object()


@dataclass(frozen=True)
class Signature(Generic[R]):
    """A task with (part of) its payload and send options, not yet sent. ``result_arg``: the parameter that
    receives the previous step's result in a chain or the list of results in a chord; unset (the default), it
    is found when the signature is placed in a workflow (``resolve_result_arg``); None: this step takes no
    result (Celery's immutable signature)."""

    task: SendableTask[R]
    payload: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # send_with options: delay, eta, priority
    result_arg: str | None = _UNSET

    def set(self, **options: Any) -> Signature[R]:
        """A copy with send options (``delay``, ``eta``, ``priority``) added."""
        unknown = set(options) - {"delay", "eta", "priority"}
        if unknown:
            raise WorkflowError(f"unknown send option(s) {', '.join(sorted(unknown))} for {self.task.name!r}")
        return dataclasses.replace(self, options={**self.options, **options})

    def receiving(self, result_arg: str | None) -> Signature[R]:
        """A copy whose previous result goes to parameter ``result_arg`` (None: it takes no result)."""
        if result_arg is not None and result_arg not in parameters(self.task):
            raise WorkflowError(f"task {self.task.name!r} has no parameter {result_arg!r}")
        return dataclasses.replace(self, result_arg=result_arg)

    def check(self, receives: str | None = None) -> None:
        """WorkflowError when the payload (plus the received result, if any) does not fit the function."""
        payload = dict(self.payload)
        if receives is not None:
            payload[receives] = None
        try:
            inspect.signature(self.task.fn).bind(**payload)
        except TypeError as exc:
            raise WorkflowError(f"bad payload for task {self.task.name!r} in a workflow: {exc}") from None

    def send(self, *, task_id: str | None = None, metadata: dict[str, Any] | None = None) -> Any:
        """Send this task alone (``send_with`` with its options); returns its Handle."""
        self.check()
        return self.task.send_with(dict(self.payload), task_id=task_id, metadata=metadata, **self.options)


def signature(task: SendableTask[R], /, **payload: Any) -> Signature[R]:
    """``task`` with (part of) its payload: Celery's ``task.s(**payload)``. WorkflowError for a name the task's
    function does not take, or a task registered with ``status=False`` (a workflow follows its steps through
    their status records)."""
    if getattr(task, "status", True) is False:
        raise WorkflowError(f"task {task.name!r} has status=False: workflows need its status records")
    unknown = set(payload) - set(parameters(task)) if not takes_any_keyword(task) else set()
    if unknown:
        raise WorkflowError(f"task {task.name!r} has no parameter(s) {', '.join(sorted(unknown))}")
    return Signature(task, dict(payload))


def parameters(task: SendableTask[Any]) -> list[str]:
    """The names a keyword payload can fill, in order (no *args, no **kwargs, no positional-only)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(task.fn).parameters.values() if p.kind in kinds]


def takes_any_keyword(task: SendableTask[Any]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(task.fn).parameters.values())


def resolve_result_arg(sig: Signature[Any]) -> str | None:
    """The parameter of ``sig`` that receives the previous result: the one set with ``receiving``, else the one
    parameter not given in its payload (the required ones first). WorkflowError when there is none or more
    than one candidate."""
    if sig.result_arg is not _UNSET:
        return sig.result_arg
    params = inspect.signature(sig.task.fn).parameters
    missing = [name for name in parameters(sig.task) if name not in sig.payload]
    required = [name for name in missing if params[name].default is inspect.Parameter.empty]
    candidates = required or missing
    if not candidates:
        raise WorkflowError(f"task {sig.task.name!r} has no parameter left for the previous result (all are in "
                            f"its payload); use .receiving(name) or .receiving(None)")
    if len(candidates) > 1:
        raise WorkflowError(f"task {sig.task.name!r}: which of {', '.join(candidates)} receives the previous "
                            f"result? give the others in the payload, or use .receiving(name)")
    return candidates[0]


def link_of(sig: Signature[Any], task_id: str, then: dict[str, Any] | None) -> dict[str, Any]:
    """The contract's ``metadata["link"]`` for ``sig`` (its id fixed as ``task_id``; ``then``: its own link)."""
    if sig.options:
        raise WorkflowError(f"task {sig.task.name!r}: send options ({', '.join(sorted(sig.options))}) are only "
                            f"for the first task of a chain (a link carries none)")
    result_arg = resolve_result_arg(sig)
    sig.check(result_arg)
    return {"task": sig.task.name, "queue": sig.task.queue, "payload": dict(sig.payload), "result_arg": result_arg,
            "task_id": task_id, "metadata": {"link": then} if then is not None else {}}


# --- chain ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain(Generic[R]):
    """Tasks run one after the other, each receiving the previous one's result (see ``chain``)."""

    steps: tuple[Signature[Any], ...]

    def links(self, ids: Sequence[str]) -> dict[str, Any] | None:
        """The link of the second step (which holds the third's, ...), with the given ids; None for one step."""
        then: dict[str, Any] | None = None
        for sig, task_id in reversed(list(zip(self.steps[1:], ids[1:], strict=True))):
            then = link_of(sig, task_id, then)
        return then

    def send(self) -> ChainResult[R]:
        """Send the first task with the rest of the chain as its link; the result's id is the last task's."""
        check_not_eager(self.steps[0].task.app)
        ids = [new_id() for _ in self.steps]
        then = self.links(ids)
        self.steps[0].send(task_id=ids[0], metadata={"link": then} if then is not None else None)
        return ChainResult(self.steps[0].task.app, ids, [s.task.name for s in self.steps])


@overload
def chain(s1: Signature[R], /) -> Chain[R]: ...
@overload
def chain(s1: Signature[Any], s2: Signature[R], /) -> Chain[R]: ...
@overload
def chain(s1: Signature[Any], s2: Signature[Any], s3: Signature[R], /) -> Chain[R]: ...
@overload
def chain(s1: Signature[Any], s2: Signature[Any], s3: Signature[Any], s4: Signature[R], /) -> Chain[R]: ...
@overload
def chain(*steps: Signature[Any]) -> Chain[Any]: ...


def chain(*steps: Signature[Any]) -> Chain[Any]:
    """``steps[0]``, then ``steps[1]`` with the first's result as its ``result_arg``, and so on. Checked when built
    (WorkflowError): every later step must have exactly one parameter to receive the result, and the payloads
    must fit; nothing is sent until ``send()``."""
    if not steps:
        raise WorkflowError("a chain needs at least one task")
    built: Chain[Any] = Chain(tuple(steps))
    steps[0].check()
    built.links([new_id() for _ in steps])  # resolves and checks every link now
    return built


class ChainResult(Generic[R_co]):
    """A sent chain: ``id`` is the last task's. ``status()`` is "gave_up"/"revoked" as soon as one step is, the
    last step's state once it has one, "pending" before; ``result()`` is the last step's result, or the
    TaskError of the step that failed (the steps after it never run)."""

    def __init__(self, app: Any, ids: list[str], names: list[str]) -> None:
        self.app = app
        self.ids = ids
        self.names = names

    @property
    def id(self) -> str:
        return self.ids[-1]

    def __repr__(self) -> str:
        return f"ChainResult({self.ids!r})"

    @staticmethod
    def _done(records: list[dict[str, Any] | None]) -> bool:
        return any(state_of(r) in FAILED_STATES for r in records) or state_of(records[-1]) in FINAL_STATES

    def status(self) -> str:
        records = [reader_of(self.app)(i) for i in self.ids]
        failed = [state_of(r) for r in records if state_of(r) in FAILED_STATES]
        return failed[0] if failed else state_of(records[-1])

    def wait(self, timeout: float = 30.0) -> str:
        poll(reader_of(self.app), self.ids, self._done, timeout, f"chain {self.names} (last id {self.id})")
        return self.status()

    def result(self, timeout: float = 30.0) -> R_co:
        records = poll(reader_of(self.app), self.ids, self._done, timeout, f"chain {self.names} (last id {self.id})")
        for task_id, record in zip(self.ids, records, strict=True):
            if record is not None and record.get("state") in FAILED_STATES:
                raise task_error(self.app, record, task_id)
        last = records[-1]
        assert last is not None
        result: R_co = result_of(self.app, last, self.id)
        return result


# --- group ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group(Generic[R]):
    """Tasks run in parallel (see ``group``)."""

    members: tuple[Signature[R], ...]

    def send(self, ids: Sequence[str] | None = None) -> GroupResult[R]:
        """Send every member (its own send options apply); ``ids``: fixed ids, one per member."""
        check_not_eager(self.members[0].task.app)
        ids = list(ids) if ids is not None else [new_id() for _ in self.members]
        for sig, task_id in zip(self.members, ids, strict=True):
            sig.send(task_id=task_id)
        return GroupResult(self.members[0].task.app, ids, [s.task.name for s in self.members])


def group(*members: Signature[R]) -> Group[R]:
    """Members sent together, run in parallel; results in the members' order. WorkflowError when empty or a
    payload does not fit."""
    if not members:
        raise WorkflowError("a group needs at least one task")
    for sig in members:
        sig.check()
    return Group(tuple(members))


class GroupResult(Generic[R_co]):
    """A sent group: ``ids`` in the members' order."""

    def __init__(self, app: Any, ids: list[str], names: list[str]) -> None:
        self.app = app
        self.ids = ids
        self.names = names

    def __repr__(self) -> str:
        return f"GroupResult({self.ids!r})"

    def states(self) -> list[str]:
        read = reader_of(self.app)
        return [state_of(read(i)) for i in self.ids]

    def status(self) -> str:
        """"succeeded" when every member did, "gave_up" once all are done and one did not, "pending" before."""
        states = self.states()
        if all(s == "succeeded" for s in states):
            return "succeeded"
        return "gave_up" if all(s in FINAL_STATES for s in states) else "pending"

    def wait(self, timeout: float = 30.0) -> str:
        poll(reader_of(self.app), self.ids, lambda rs: all(state_of(r) in FINAL_STATES for r in rs), timeout,
             f"group {self.names}")
        return self.status()

    def results(self, timeout: float = 30.0) -> list[R_co]:
        """The members' results in order once all are done; the first member's TaskError (in order) when one
        gave up; TimeoutError (naming the pending members) after ``timeout``."""
        records = poll(reader_of(self.app), self.ids, lambda rs: all(state_of(r) in FINAL_STATES for r in rs),
                       timeout, f"group {self.names}")
        return [result_of(self.app, r, i) for i, r in zip(self.ids, records, strict=True) if r is not None]


# --- chord ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chord(Generic[R]):
    """A group, then a callback with the list of its results (see ``chord``)."""

    header: Group[Any]
    callback: Signature[R]
    result_arg: str
    max_wait: float = DEFAULT_MAX_WAIT

    def send(self) -> ChordResult[R]:
        """Send the members, then the first unlock (delayed) to the callback's queue; the result's id is the
        callback's, chosen now."""
        app = self.callback.task.app
        check_not_eager(app)
        install(app)
        member_ids = [new_id() for _ in self.header.members]
        callback_id = new_id()
        names = [s.task.name for s in self.header.members]
        self.header.send(member_ids)
        spec: dict[str, Any] = {"members": member_ids, "names": names,
                "callback": {"task": self.callback.task.name, "queue": self.callback.task.queue,
                             "payload": dict(self.callback.payload), "result_arg": self.result_arg,
                             "options": {k: v for k, v in self.callback.options.items() if k != "eta"}},
                "callback_id": callback_id, "started": time.time(), "max_wait": self.max_wait}
        send_unlock(app, spec, 0)
        return ChordResult(app, callback_id, GroupResult(app, member_ids, names), self.callback.task.name)


def chord(header: Group[Any] | Sequence[Signature[Any]], callback: Signature[R], *,
          max_wait: float = DEFAULT_MAX_WAIT) -> Chord[R]:
    """Run ``header``'s members in parallel; once every one succeeded, run ``callback`` once with the list of
    their results (in order) as its ``result_arg``. If a member gives up (or is revoked), the callback does not
    run and the chord gives up with a ``ChordError`` naming the member; likewise when a member's result was not
    kept (over 64 KiB of JSON, or ``keep_result=False``), or when the members are not all done after
    ``max_wait`` seconds. WorkflowError at build time when the callback cannot take the results."""
    members = header if isinstance(header, Group) else group(*header)
    for sig in members.members:
        if getattr(sig.task, "keep_result", True) is False:
            raise WorkflowError(f"chord member {sig.task.name!r} keeps no result (keep_result=False)")
    if callback.options.get("eta") is not None:
        raise WorkflowError("a chord's callback runs when its members are done: eta= does not apply")
    result_arg = resolve_result_arg(callback)
    if result_arg is None:
        raise WorkflowError(f"chord callback {callback.task.name!r} must receive the results (not .receiving(None))")
    callback.check(result_arg)
    if max_wait <= 0:
        raise WorkflowError("max_wait must be > 0 seconds")
    return Chord(members, callback, result_arg, max_wait)


class ChordResult(Generic[R_co]):
    """A sent chord: ``id`` is the callback's; ``group`` the members'. ``status()`` is "pending" until the
    unlock sent the callback (or failed the chord), then the callback's state."""

    def __init__(self, app: Any, callback_id: str, members: GroupResult[Any], callback: str) -> None:
        self.app = app
        self.id = callback_id
        self.group = members
        self.callback = callback

    def __repr__(self) -> str:
        return f"ChordResult({self.id!r})"

    def status(self) -> str:
        return state_of(reader_of(self.app)(self.id))

    def wait(self, timeout: float = 30.0) -> str:
        return state_of(self._poll(timeout))

    def result(self, timeout: float = 30.0) -> R_co:
        """The callback's result; TaskError("ChordError", ...) when the chord failed, or the callback's own."""
        result: R_co = result_of(self.app, self._poll(timeout), self.id)
        return result

    def _poll(self, timeout: float) -> dict[str, Any]:
        records = poll(reader_of(self.app), [self.id], lambda rs: state_of(rs[0]) in FINAL_STATES, timeout,
                       f"chord {self.group.names} -> {self.callback} (id {self.id})")
        assert records[0] is not None
        return records[0]
