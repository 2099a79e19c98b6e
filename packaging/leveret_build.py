"""The build backend: setuptools' own, asking for mypy (mypyc) as well when a compiled build is wanted.

setup.py compiles the hot path with mypyc when it can; this adds mypy to what a wheel build installs first,
unless ``LEVERET_PURE_PYTHON`` is set. Editable builds never compile and never ask for it.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (every hook not redefined here is setuptools')

MYPYC = "mypy>=2.4"  # mypyc ships with mypy; the build was made and tested with mypy 2.4.1 (docs/performance.md)


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires = list(_setuptools.get_requires_for_build_wheel(config_settings))
    if os.environ.get("LEVERET_PURE_PYTHON", "") in ("", "0"):
        requires.append(MYPYC)
    return requires
