"""The supervisor: keeps ``processes`` copies of each program running, as gunicorn's arbiter and Celery's
prefork pool do.

- A process that exits on its own is restarted after an exponential back-off (``Settings.backoff`` doubled per
  exit in a row, at most ``backoff_max``; reset once a process stayed up ``stable_after`` seconds).
- Recycling: a process is replaced when its RSS exceeds the program's ``max_memory`` (checked every
  ``check_interval``) or when a worker reports that it reached its ``max_tasks``. The replacement is started
  first; the old process is stopped gracefully (SIGTERM, then SIGKILL after its grace period).
- SIGTERM/SIGINT: every process gets SIGTERM (a worker stops consuming, finishes its running tasks within its
  grace period, and leaves the rest unacked so that the broker requeues them); the supervisor exits 0 when all
  are gone. A second SIGTERM/SIGINT kills what is left at once.
- SIGHUP: the processes are replaced one by one by new ones (which import the code again); each old one is
  stopped only once its replacement is ready (a worker: consuming). A replacement that fails to start stops the
  reload and the old process keeps running.

Each process is given a pipe (``LEVERET_SUPERVISOR_FD``, see child.py) to report readiness and task counts.
The state of everything is written to ``<state_dir>/supervisor.json`` (read by ``leveret health``) and served
as JSON over HTTP with ``health_port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from leveret.supervisor.child import FD_VARIABLE, PID_VARIABLE, SLOT_VARIABLE, rss_mb
from leveret.supervisor.config import ProgramSpec, RunConfigError, Settings
from leveret.supervisor.process import Proc, ProcessGroups, Slot, describe_exit, iso, signal_group
from leveret.supervisor.status import STATUS_FILE, StateDir, SupervisorError

__all__ = ["STATUS_FILE", "Supervisor", "SupervisorError", "run_supervisor"]

log = logging.getLogger("leveret.supervisor")

KILL_MARGIN = 5.0  # seconds after a process's grace period before SIGKILL
PROGRAM_READY_AFTER = 1.0  # a program that does not report is ready once it has been up this long


class Supervisor:
    def __init__(self, programs: list[ProgramSpec], settings: Settings,
                 reread: Callable[[], tuple[Settings, list[ProgramSpec]]] | None = None) -> None:
        """``reread`` (``leveret run``) reads the configuration again on SIGHUP; it raises RunConfigError."""
        self.programs = programs
        self.reread = reread
        self.settings = settings
        self.slots = [Slot(p, i) for p in programs for i in range(p.processes)]
        self.state = "starting"
        self.started = time.time()
        self.health_url: str | None = None
        self._stop = asyncio.Event()
        self._procs: set[Proc] = set()
        self._groups = ProcessGroups()  # of every process started: what is left of them is killed at the end
        self._reload_task: asyncio.Task[None] | None = None
        self._state_dir = StateDir(settings.state_dir)
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- main ----------------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return 0 once every process is gone."""
        loop = asyncio.get_running_loop()
        self._state_dir.lock()
        runner = None
        try:
            if self.settings.health_port is not None:
                from leveret.supervisor.health import start_http

                runner, self.health_url = await start_http(self.health, self.settings.health_bind,
                                                           self.settings.health_port)
                log.info("health endpoint on %s", self.health_url)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_stop_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            log.info("supervisor %d starting %s", os.getpid(),
                     ", ".join(f"{p.name} x{p.processes}" for p in self.programs))
            for slot in self.slots:
                await self._start(slot, "start")
            self.state = "running"
            self.write_status()
            monitor = asyncio.ensure_future(self._monitor())
            await self._stop.wait()
            monitor.cancel()
            await self._shutdown()
        finally:
            for p in list(self._procs):  # only after an error: do not leave processes behind
                signal_group(p, signal.SIGTERM)
            self._kill_leftover_groups()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if runner is not None:
                await runner.cleanup()
            self.state = "stopped"
            self.write_status()
            self._state_dir.unlock()
        log.info("supervisor %d stopped", os.getpid())
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    def _on_stop_signal(self, sig: int) -> None:
        if self.state == "stopping":
            log.warning("%s again: killing %d process(es) now", signal.Signals(sig).name, len(self._procs))
            for p in list(self._procs):
                signal_group(p, signal.SIGKILL)
            self._kill_leftover_groups()
            return
        log.info("%s: stopping (workers finish their running tasks within their grace period)",
                 signal.Signals(sig).name)
        self._stop.set()

    def request_reload(self) -> None:
        if self.state != "running":
            return
        if self._reload_task is not None and not self._reload_task.done():
            log.warning("SIGHUP: a reload is already running; ignored")
            return
        log.info("SIGHUP: replacing %d process(es) one by one with fresh ones", len(self.slots))
        self._reload_task = asyncio.ensure_future(self._reload())

    # --- starting and stopping processes -------------------------------------------------------------------

    async def _spawn(self, slot: Slot, role: str) -> Proc | None:
        program = slot.program
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in (FD_VARIABLE, PID_VARIABLE, SLOT_VARIABLE)}
        env.update(program.env)
        if program.reports:  # only a worker gets the pipe: any other command would hand it on to its children
            env.update({FD_VARIABLE: str(write_fd), PID_VARIABLE: str(os.getpid()), SLOT_VARIABLE: slot.name})
        try:
            proc = await asyncio.create_subprocess_exec(
                *program.argv, cwd=program.cwd, env=env, pass_fds=(write_fd,) if program.reports else (),
                stdin=subprocess.DEVNULL,
                process_group=0)  # its own group: a terminal's Ctrl-C reaches the supervisor only
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            log.error("cannot start %s (%s): %s", slot.name, program.argv[0], exc.strerror or exc)
            self._after_failure(slot, f"cannot start: {exc.strerror or exc}", 0.0)
            return None
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        p = Proc(slot, proc, time.time(), time.monotonic(), role=role, read_fd=read_fd)
        self._procs.add(p)
        self._groups.add(proc.pid)
        slot.starts += 1
        asyncio.get_running_loop().add_reader(read_fd, self._read_pipe, p)
        self._spawn_task(self._watch(p))
        if not program.reports:
            asyncio.get_running_loop().call_later(PROGRAM_READY_AFTER, self._on_ready, p)
        return p

    def _on_ready(self, p: Proc) -> None:
        if p.ready.is_set() or p.exited.is_set() or p.role == "retiring":
            return
        limit = p.slot.program.max_memory
        rss = rss_mb(p.pid) if limit is not None else None
        if limit is not None and rss is not None and rss > limit and not self._stop.is_set():
            p.rss = rss
            what = f"RSS {rss:.0f} MB > max_memory {limit:g} MB when ready"
            log.error("%s (pid %d): %s, before any task: max_memory is below the process's baseline (raise it); "
                      "stopped, counted as a failure", p.slot.name, p.pid, what)
            was_current = p.role == "current"
            self._retire(p, what)
            if was_current:
                self._after_failure(p.slot, f"{what} (max_memory below the baseline)", p.uptime, pid=p.pid)
            self.write_status()
            return
        p.ready.set()
        if p.role == "current":
            p.slot.state = "running"
        log.debug("%s (pid %d) ready", p.slot.name, p.pid)
        self.write_status()

    async def _start(self, slot: Slot, why: str) -> Proc | None:
        """Start the slot's current process (first start, restart after a crash, replacement)."""
        slot.restart_timer = None
        slot.next_start = None
        if self._stop.is_set() or slot.current is not None:  # it has a process already (a reload installed one)
            return None
        p = await self._spawn(slot, "current")
        if p is None:
            return None
        slot.current = p
        slot.state = "starting"
        log.info("started %s (pid %d): %s", slot.name, p.pid, why)
        self.write_status()
        return p

    def _retire(self, p: Proc, reason: str, *, signal_it: bool = True) -> None:
        """Stop ``p`` gracefully: SIGTERM now (unless it is already stopping by itself), SIGKILL after grace."""
        slot = p.slot
        if slot.current is p:
            slot.current = None
        p.role = "retiring"
        p.reason = reason
        slot.retiring.add(p)
        if signal_it:
            signal_group(p, signal.SIGTERM)
        if p.kill_timer is None:
            p.kill_timer = asyncio.get_running_loop().call_later(slot.program.grace + KILL_MARGIN, self._kill, p)

    def _kill(self, p: Proc) -> None:
        if p.proc.returncode is None:
            log.warning("%s (pid %d) still running %g s after SIGTERM: SIGKILL", p.slot.name, p.pid,
                        p.slot.program.grace + KILL_MARGIN)
            signal_group(p, signal.SIGKILL)

    async def _recycle(self, slot: Slot, reason: str, *, already_stopping: bool = False) -> None:
        old = slot.current
        if old is None:
            return
        slot.recycles += 1
        log.info("recycling %s (pid %d): %s", slot.name, old.pid, reason)
        self._retire(old, reason, signal_it=not already_stopping)
        await self._start(slot, f"replaces pid {old.pid} ({reason})")

    async def _watch(self, p: Proc) -> None:
        code = await p.proc.wait()
        self._read_pipe(p, final=True)
        if p.kill_timer is not None:
            p.kill_timer.cancel()
        self._procs.discard(p)
        self._prune_groups()
        p.exited.set()
        slot = p.slot
        uptime = p.uptime
        slot.tasks_before += p.tasks_done
        how = f"{describe_exit(code)} after {uptime:.1f} s, {p.tasks_done} task(s) done"
        if p.role == "retiring":
            slot.retiring.discard(p)
            log.info("%s (pid %d) stopped (%s): %s", slot.name, p.pid, p.reason, how)
        elif p.role == "candidate":
            log.warning("%s: new process (pid %d) exited while starting: %s", slot.name, p.pid, how)
        elif self._stop.is_set():
            slot.current = None
            log.info("%s (pid %d) stopped: %s", slot.name, p.pid, how)
        else:
            slot.current = None
            self._after_failure(slot, describe_exit(code), uptime, pid=p.pid, how=how)
        if self._stop.is_set() and slot.current is None and not slot.retiring:
            slot.state = "stopped"
        self.write_status()

    def _after_failure(self, slot: Slot, what: str, uptime: float, pid: int = 0, how: str = "") -> None:
        """An unexpected exit (or a failed start): schedule the restart after the back-off."""
        if uptime >= self.settings.stable_after:
            slot.failures = 0
        slot.failures += 1
        slot.last_exit = what
        slot.last_exit_at = time.time()
        delay = min(self.settings.backoff_max, self.settings.backoff * 2 ** (slot.failures - 1))
        looping = " (crash-looping)" if slot.crash_looping(self.settings) else ""
        log.warning("%s%s exited unexpectedly: %s; restarting in %g s (failure %d in a row)%s", slot.name,
                    f" (pid {pid})" if pid else "", how or what, delay, slot.failures, looping)
        if self._stop.is_set():
            slot.state = "stopped"
            return
        slot.state = "backoff"
        slot.next_start = time.time() + delay
        slot.restarts += 1

        def restart() -> None:
            self._spawn_task(self._start(slot, f"restart after {what}"))

        slot.restart_timer = asyncio.get_running_loop().call_later(delay, restart)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- what processes report -----------------------------------------------------------------------------

    def _read_pipe(self, p: Proc, final: bool = False) -> None:
        if p.read_fd < 0:
            return
        eof = False
        while True:
            try:
                chunk = os.read(p.read_fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            p.buffer += chunk
        *lines, p.buffer = p.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._on_report(p, line)
        if eof or final:
            asyncio.get_running_loop().remove_reader(p.read_fd)
            os.close(p.read_fd)
            p.read_fd = -1

    def _on_report(self, p: Proc, line: bytes) -> None:
        try:
            report = json.loads(line)
            event = report["event"]
        except (ValueError, KeyError, TypeError):
            log.warning("%s (pid %d): unreadable report %r", p.slot.name, p.pid, line[:200])
            return
        slot = p.slot
        if event == "ready":
            self._on_ready(p)
        elif event == "tasks":
            p.tasks_done = int(report.get("done", p.tasks_done))
        elif event == "consuming":
            p.consuming = bool(report.get("consuming"))
            self.write_status()
        elif event == "recycle":
            reason = str(report.get("reason") or "asked to be recycled")
            if p.role == "current" and not self._stop.is_set():
                self._spawn_task(self._recycle(slot, reason, already_stopping=True))
            elif p.role != "retiring":
                self._retire(p, reason, signal_it=False)

    # --- periodic checks: memory, stable processes, status file --------------------------------------------

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_interval)
            try:
                await self._check()
            except Exception:
                log.exception("supervisor check failed")

    async def _check(self) -> None:
        self._prune_groups()
        for slot in self.slots:
            for p in [slot.current, *slot.retiring]:
                if p is not None:
                    p.rss = rss_mb(p.pid)
            current = slot.current
            if current is None:
                continue
            if slot.failures and current.uptime >= self.settings.stable_after:
                slot.failures = 0  # it stayed up: the next crash starts the back-off from the beginning
            limit = slot.program.max_memory
            # not before it did something or stayed up a while: a fresh process over the limit is caught by
            # _on_ready (its replacement would be over it too)
            if (limit is not None and current.rss is not None and current.rss > limit
                    and not self._stop.is_set() and current.role == "current"
                    and (current.tasks_done > 0 or current.uptime >= self.settings.stable_after)):
                await self._recycle(slot, f"RSS {current.rss:.0f} MB > max_memory {limit:g} MB")
        self.write_status()

    # --- reload and shutdown -------------------------------------------------------------------------------

    def _reconfigure(self) -> None:
        """Read the configuration again (SIGHUP under ``leveret run``): programs are matched by name; a changed
        one gets its new command and limits (its processes are replaced below), a new one is started, a removed
        one is stopped, and ``processes`` changes add or stop slots. The state directory and health address stay
        as they are until a restart. A file with an error changes nothing."""
        assert self.reread is not None
        try:
            settings, programs = self.reread()
        except RunConfigError as exc:
            log.error("SIGHUP: %s; keeping the configuration as it was", exc)
            return
        self.settings = replace(settings, state_dir=self.settings.state_dir, health_port=self.settings.health_port,
                                health_bind=self.settings.health_bind)
        wanted = {p.name: p for p in programs}
        kept: list[Slot] = []
        for slot in self.slots:
            program = wanted.get(slot.program.name)
            if program is None or slot.index >= program.processes:
                why = "removed from the configuration" if program is None else "processes reduced"
                if slot.restart_timer is not None:
                    slot.restart_timer.cancel()
                if slot.current is not None:
                    log.info("stopping %s (pid %d): %s", slot.name, slot.current.pid, why)
                    self._retire(slot.current, why)
                continue
            slot.program = program
            kept.append(slot)
        for program in programs:
            have = sum(1 for s in kept if s.program is program)
            kept += [Slot(program, i) for i in range(have, program.processes)]
        order = {p.name: n for n, p in enumerate(programs)}
        self.slots = sorted(kept, key=lambda s: (order[s.program.name], s.index))
        self.programs = programs

    async def _reload(self) -> None:
        if self.reread is not None:
            self._reconfigure()
        for slot in list(self.slots):
            if self._stop.is_set():
                return
            if slot not in self.slots:
                continue
            if slot.starts == 0:
                await self._start(slot, "added by reload")
                continue
            if slot.restart_timer is not None:  # in back-off: start it now, with the new code
                slot.restart_timer.cancel()
                await self._start(slot, "reload")
                continue
            old = slot.current
            new = await self._spawn(slot, "candidate")
            if new is None:
                log.error("reload stopped: cannot start a new %s; the old processes keep running", slot.name)
                return
            ready = asyncio.ensure_future(new.ready.wait())
            exited = asyncio.ensure_future(new.exited.wait())
            await asyncio.wait({ready, exited}, timeout=self.settings.ready_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            exited.cancel()
            if not new.ready.is_set() or new.exited.is_set() or self._stop.is_set():
                if not new.exited.is_set():
                    self._retire(new, "reload failed")
                if not self._stop.is_set():
                    log.error("reload stopped: the new %s did not become ready within %g s; the old processes "
                              "keep running", slot.name, self.settings.ready_timeout)
                return
            if old is not None and slot.current is old:
                slot.recycles += 1
                self._retire(old, "reload")
            elif slot.current is not None:  # it was replaced meanwhile (recycled): reload that one too
                self._retire(slot.current, "reload")
            if slot.restart_timer is not None:  # the old one crashed meanwhile: the new one replaces it
                slot.restart_timer.cancel()
                slot.restart_timer = None
            slot.next_start = None
            new.role = "current"
            slot.current = new
            slot.state = "running"
            log.info("reload: %s is now pid %d%s", slot.name, new.pid, f" (was {old.pid})" if old else "")
            self.write_status()
        log.info("reload done")

    async def _shutdown(self) -> None:
        self.state = "stopping"
        if self._reload_task is not None:
            self._reload_task.cancel()
        for slot in self.slots:
            if slot.restart_timer is not None:
                slot.restart_timer.cancel()
                slot.restart_timer = None
            slot.next_start = None
            slot.state = "stopping" if (slot.current or slot.retiring) else "stopped"
            if slot.current is not None:
                self._retire(slot.current, "shutdown")
            for p in list(slot.retiring):
                if p.reason != "shutdown":
                    signal_group(p, signal.SIGTERM)
        for p in list(self._procs):  # candidates of a reload, and any process no slot holds
            if p.role != "retiring":
                self._retire(p, "shutdown")
        self.write_status()
        longest = max((p.grace for p in self.programs), default=0.0) + 2 * KILL_MARGIN
        deadline = time.monotonic() + longest
        while self._procs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._kill_leftover_groups()
        for task in list(self._tasks):  # the watchers record the last exits
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 1.0)

    def _prune_groups(self) -> None:
        self._groups.prune({p.pid for p in self._procs})

    def _kill_leftover_groups(self) -> None:
        for group in self._groups.kill_leftovers({p.pid for p in self._procs}):
            log.warning("killed what was left of process group %d", group)

    # --- state directory and status ------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self._state_dir.path

    def health(self) -> tuple[dict[str, Any], bool]:
        """What the health endpoint serves: the snapshot, and whether it is healthy."""
        return self.snapshot(), self.healthy()

    def healthy(self) -> bool:
        return (self.state == "running" and not any(s.crash_looping(self.settings) for s in self.slots)
                and not any(s.current is not None and not s.current.consuming for s in self.slots))

    def snapshot(self) -> dict[str, Any]:
        """Everything ``leveret health`` and the HTTP endpoint show."""
        programs = []
        for program in self.programs:
            slots = [s for s in self.slots if s.program is program]
            processes = []
            for slot in slots:
                p = slot.current
                processes.append({
                    "slot": slot.name, "state": slot.state, "pid": p.pid if p else None,
                    "since": iso(p.started) if p else None, "uptime": round(p.uptime, 1) if p else None,
                    "tasks": slot.tasks_before + (p.tasks_done if p else 0),
                    "tasks_this_process": p.tasks_done if p else None,
                    "consuming": p.consuming if p else None,
                    "rss_mb": round(p.rss, 1) if p and p.rss is not None else None,
                    "starts": slot.starts, "restarts": slot.restarts, "recycles": slot.recycles,
                    "failures_in_a_row": slot.failures, "crash_looping": slot.crash_looping(self.settings),
                    "last_exit": slot.last_exit, "last_exit_at": iso(slot.last_exit_at),
                    "next_start": iso(slot.next_start),
                    "draining": [{"pid": r.pid, "reason": r.reason, "tasks_this_process": r.tasks_done}
                                 for r in slot.retiring],
                })
            programs.append({"name": program.name, "kind": program.kind, "argv": list(program.argv),
                             "max_tasks": program.max_tasks, "max_memory": program.max_memory,
                             "crash_looping": any(s.crash_looping(self.settings) for s in slots),
                             "processes": processes})
        return {"supervisor": {"pid": os.getpid(), "state": self.state, "since": iso(self.started),
                               "updated": iso(time.time()), "updated_ts": time.time(),
                               "state_dir": str(self.state_dir), "health_url": self.health_url,
                               "check_interval": self.settings.check_interval},
                "healthy": self.healthy(), "programs": programs}

    def write_status(self) -> None:
        self._state_dir.write_status(self.snapshot())


def run_supervisor(programs: list[ProgramSpec], settings: Settings,
                   reread: Callable[[], tuple[Settings, list[ProgramSpec]]] | None = None) -> int:
    """Run a Supervisor to the end (the ``leveret worker`` / ``leveret run`` entry point); 1 if it cannot start."""
    try:
        return asyncio.run(Supervisor(programs, settings, reread).run())
    except SupervisorError as exc:
        import sys

        print(f"leveret: error: {exc}", file=sys.stderr)
        return 1
