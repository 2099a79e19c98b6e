"""The supervisor's records of what runs: :class:`Slot` (position ``index`` of a program), :class:`Proc` (one OS
process of a slot), the process groups they lead, and how an exit is described."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from leveret.supervisor.config import ProgramSpec, Settings


def signal_group(p: Proc, sig: int) -> None:
    """Send ``sig`` to ``p``'s process group (each process is started as the leader of its own group), so that
    what a command started (``sh -c "..."``'s children) gets it too; to the process alone if that fails."""
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            p.proc.send_signal(sig)
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            p.proc.send_signal(sig)


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass(eq=False)
class Proc:
    """One OS process of a slot."""

    slot: Slot
    proc: asyncio.subprocess.Process
    started: float  # wall clock
    started_mono: float
    role: str = "candidate"  # candidate (starting for a reload), current, retiring
    reason: str = ""  # why it is retiring
    tasks_done: int = 0
    consuming: bool = True  # a worker says when it is not (lost its broker connection)
    rss: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    read_fd: int = -1
    buffer: bytes = b""
    kill_timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_mono


@dataclass(eq=False)
class Slot:
    """Position ``index`` of a program: at most one current process (plus retiring ones while they drain)."""

    program: ProgramSpec
    index: int
    current: Proc | None = None
    retiring: set[Proc] = field(default_factory=set)
    state: str = "starting"  # starting, running, backoff, stopping, stopped
    starts: int = 0
    restarts: int = 0  # after an unexpected exit
    recycles: int = 0  # planned replacements: max tasks, max memory, reload
    failures: int = 0  # unexpected exits in a row
    tasks_before: int = 0  # tasks done by this slot's earlier processes
    last_exit: str | None = None
    last_exit_at: float | None = None
    next_start: float | None = None
    restart_timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return f"{self.program.name}[{self.index}]"

    def crash_looping(self, settings: Settings) -> bool:
        return self.failures >= settings.crash_loop_after


class ProcessGroups:
    """The process groups of every process started (each leads its own): what is left of a group whose leader
    is gone (a command's children that outlived it) is killed at the end."""

    def __init__(self) -> None:
        self.groups: set[int] = set()

    def add(self, group: int) -> None:
        self.groups.add(group)

    def prune(self, live: set[int]) -> None:
        """Forget the groups with no process left (their id may then be reused by someone else's group);
        ``live`` are the pids of the processes still running."""
        for group in list(self.groups):
            if group not in live:
                try:
                    os.killpg(group, 0)
                except (ProcessLookupError, PermissionError):
                    self.groups.discard(group)

    def kill_leftovers(self, live: set[int]) -> list[int]:
        """SIGKILL what is left of the groups whose leader is not in ``live``, and forget them; the groups that
        still had a process to kill."""
        killed = []
        for group in list(self.groups):
            if group in live:
                continue
            try:
                os.killpg(group, signal.SIGKILL)
                killed.append(group)
            except (ProcessLookupError, PermissionError):
                pass
            self.groups.discard(group)
        return killed
