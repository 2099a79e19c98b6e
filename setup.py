"""Leveret's build: pure Python, with the per-message hot path optionally compiled by mypyc.

The metadata is pyproject.toml's; this file adds only the optional compiled build. ``pip install .`` compiles the
modules of :data:`COMPILED` with mypyc (mypy's compiler: C extensions built from the same, type-annotated Python
source) and installs pure Python instead, with a warning, whenever that cannot be done: no C compiler, mypyc
missing or failing. The Python source is installed either way; an extension module, when present, is imported
in preference to its ``.py`` file. ``leveret --version`` says which of the two runs, and so does the log line
``Leveret ... (pure Python | compiled: ...)`` at start.

Always pure Python: editable installs (``pip install -e``: the tree is the code that runs) and builds with
``LEVERET_PURE_PYTHON=1`` in the environment. The build backend (packaging/leveret_build.py) asks for mypy only
when a compiled build is wanted. docs/performance.md ("Compiled with mypyc") has what it gains.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The modules of a message's way through the broker: frame parsing and encoding, the AMQP handler, the core's
# publish, route, enqueue, dispatch, deliver and ack, and the session, vhost and access checks on the way.
# Compiled together, as one group (mypyc calls across them natively).
COMPILED = [
    "leveret/amqp/codec.py",
    "leveret/amqp/connection.py",
    "leveret/server/amqp.py",
    "leveret/server/commands.py",
    "leveret/core/channel.py",
    "leveret/core/consumer.py",
    "leveret/core/message.py",
    "leveret/core/paging.py",
    "leveret/core/queue.py",
    "leveret/core/routing.py",
    "leveret/core/session.py",
    "leveret/core/vhost.py",
    "leveret/core/access.py",
    "leveret/core/remote.py",  # RemoteMessage subclasses Message: both compiled (no interpreted subclass of it)
    "leveret/core/exchanges/__init__.py",
    "leveret/core/exchanges/base.py",
    "leveret/core/exchanges/delayed.py",
    "leveret/core/exchanges/direct.py",
    "leveret/core/exchanges/erlang.py",
    "leveret/core/exchanges/fanout.py",
    "leveret/core/exchanges/headers.py",
    "leveret/core/exchanges/topic.py",
]
GROUP = "leveret"  # mypyc's shared library: the top-level module leveret__mypyc


def pure_reason() -> str | None:
    """Why this build is pure Python without trying to compile, or None."""
    if os.environ.get("LEVERET_PURE_PYTHON", "") not in ("", "0"):
        return "LEVERET_PURE_PYTHON is set"
    if "editable_wheel" in sys.argv or "develop" in sys.argv:
        return "an editable install"
    return None


def _warn(text: str) -> None:
    print(f"leveret: {text}; installing pure Python", file=sys.stderr)


def compiled_extensions() -> list[Extension]:
    """mypyc's extensions for COMPILED, when this setup.py run builds (not when it is only asked for metadata);
    [] for pure Python."""
    reason = pure_reason()
    if reason is not None or not {"bdist_wheel", "build", "build_ext", "install"} & set(sys.argv):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        _warn(f"mypyc is not available ({exc})")
        return []
    try:
        return mypycify(COMPILED, group_name=GROUP)
    except (Exception, SystemExit) as exc:  # mypyc reports a type error with sys.exit
        _warn(f"mypyc failed ({type(exc).__name__}: {exc})")
        return []


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python, removing whatever it built, when the C compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, a compiler error: distutils' CCompilerError, DistutilsExecError...
            _warn(f"the compiled build failed ({type(exc).__name__}: {exc})")
            for ext in self.extensions:
                fullname = self.get_ext_fullname(ext.name)
                Path(self.get_ext_fullpath(fullname)).unlink(missing_ok=True)
                if self.inplace:  # the copy next to the source too
                    Path(self.get_ext_filename(fullname)).unlink(missing_ok=True)
            self.extensions = self.distribution.ext_modules = list[Extension]()

    def get_outputs(self) -> list[str]:
        return [path for path in super().get_outputs() if os.path.exists(path)]


if __name__ == "__main__":  # also under pip: setuptools' build backend runs this file as __main__
    setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
