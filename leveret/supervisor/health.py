"""Health of a supervisor: the HTTP endpoint (``GET /health``: 200 when every program runs, 503 while one is
crash-looping, a worker is not consuming (it lost its broker connection and is reconnecting) or the supervisor
is stopping) and, for ``leveret health``, reading and printing the status file
``<state_dir>/supervisor.json`` that the supervisor rewrites on every change and every ``check_interval``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leveret.supervisor.status import STATUS_FILE, SupervisorError

if TYPE_CHECKING:
    from aiohttp import web

STALE_AFTER = 15.0  # seconds without a rewrite of the status file before it is not trusted (at least)


def stale_after(info: dict[str, Any]) -> float:
    """How old the status may be: 15 s, or three of the supervisor's ``check_interval`` when that is longer."""
    try:
        interval = float(info.get("check_interval") or 0)
    except (TypeError, ValueError):
        interval = 0.0
    return max(STALE_AFTER, 3 * interval)


async def start_http(status: Callable[[], tuple[dict[str, Any], bool]], bind: str,
                     port: int) -> tuple[web.AppRunner, str]:
    """Serve ``GET /health`` (and ``/``) on ``bind:port`` (0: any free port): ``status()`` is the document and
    whether it is healthy (200, else 503). Returns the runner and the URL."""
    from aiohttp import web

    async def health(_request: web.Request) -> web.Response:
        document, healthy = status()
        return web.json_response(document, status=200 if healthy else 503,
                                 dumps=lambda data: json.dumps(data, indent=1))

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, bind, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SupervisorError(f"cannot listen for health checks on {bind}:{port}: {exc.strerror or exc}") from None
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    actual = sockets[0].getsockname()[1] if sockets else port
    host = f"[{bind}]" if ":" in bind else bind
    return runner, f"http://{host}:{actual}/health"


def read_status(state_dir: str) -> tuple[dict[str, Any] | None, str]:
    """(status, problem): the status document of the supervisor using ``state_dir`` and, when it cannot be
    trusted (no file, supervisor gone, stale), why."""
    path = Path(state_dir) / STATUS_FILE
    if not path.exists():  # `leveret worker` keeps its status in <state_dir>/<app>[@<queues>]
        below = sorted(p for p in Path(state_dir).glob(f"*/{STATUS_FILE}"))
        if len(below) == 1:
            path = below[0]
        elif below:
            names = ", ".join(str(p.parent) for p in below)
            return None, f"several supervisors keep their status under {state_dir}: give --state-dir, one of {names}"
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"no supervisor status in {state_dir} (is `leveret worker` or `leveret run` running there?)"
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"
    info = status.get("supervisor", {})
    if info.get("state") == "stopped":
        return status, f"the supervisor (pid {info.get('pid')}) stopped at {info.get('updated')}"
    if not _alive(int(info.get("pid") or 0)):
        return status, f"the supervisor (pid {info.get('pid')}) is not running (last status {info.get('updated')})"
    age = time.time() - float(info.get("updated_ts") or 0)
    if age > stale_after(info):
        return status, f"the status is {age:.0f} s old: the supervisor (pid {info.get('pid')}) is not responding"
    return status, ""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_status(status: dict[str, Any]) -> str:
    """A table for a person: one line per process."""
    info = status.get("supervisor", {})
    lines = [f"supervisor pid {info.get('pid')} {info.get('state')} since {info.get('since')}"
             + (f", health {info['health_url']}" if info.get("health_url") else "")
             + ("" if status.get("healthy") else "  UNHEALTHY")]
    rows = [("PROCESS", "STATE", "PID", "SINCE", "TASKS", "RSS MB", "RESTARTS", "RECYCLES", "LAST EXIT")]
    for program in status.get("programs", []):
        for p in program.get("processes", []):
            state = p.get("state", "?")
            if p.get("crash_looping"):
                state += " (crash-looping)"
            elif p.get("consuming") is False:
                state += " (not consuming: no broker connection)"
            elif state == "backoff" and p.get("next_start"):
                state += f" until {p['next_start']}"
            rows.append((p.get("slot", "?"), state, str(p.get("pid") or "-"), str(p.get("since") or "-"),
                         str(p.get("tasks", 0)), "-" if p.get("rss_mb") is None else f"{p['rss_mb']:.0f}",
                         str(p.get("restarts", 0)), str(p.get("recycles", 0)), p.get("last_exit") or "-"))
            for d in p.get("draining", []):
                rows.append(("", f"draining ({d.get('reason')})", str(d.get("pid")), "",
                             str(d.get("tasks_this_process", 0)), "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
