"""Leveret's process supervisor: ``leveret worker --processes N`` and ``leveret run leveret.toml`` keep worker
(and forwarder, and any other) processes alive, restart them with back-off, recycle them at their memory and
task limits, reload them on SIGHUP and stop them gracefully. See docs/supervisor.md."""

from leveret.supervisor.config import ProgramSpec, RunConfigError, Settings, load_run_file, worker_argv
from leveret.supervisor.supervisor import Supervisor, SupervisorError

__all__ = ["ProgramSpec", "RunConfigError", "Settings", "Supervisor", "SupervisorError", "load_run_file",
           "worker_argv"]
