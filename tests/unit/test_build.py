"""setup.py's optional compiled build: when it compiles, and that a failing C compiler leaves pure Python.

The mypyc build itself is tested by .ci/run's compiled pass (the suite's unit tests and the nearest AMQP tests on
the compiled modules); these check the decisions and the fallback, in a second, with a one-line C file."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

import pytest
from setuptools import Distribution, Extension

import leveret
from leveret.amqp.connection import ServerConnection

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("leveret_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() is not called
    return module


def test_pure_python_when_asked_or_editable(setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEVERET_PURE_PYTHON", raising=False)
    monkeypatch.setattr(sys, "argv", ["setup.py", "bdist_wheel"])
    assert setup_py.pure_reason() is None
    monkeypatch.setenv("LEVERET_PURE_PYTHON", "0")
    assert setup_py.pure_reason() is None
    monkeypatch.setenv("LEVERET_PURE_PYTHON", "1")
    assert setup_py.pure_reason() == "LEVERET_PURE_PYTHON is set"
    assert setup_py.compiled_extensions() == []
    monkeypatch.delenv("LEVERET_PURE_PYTHON")
    monkeypatch.setattr(sys, "argv", ["setup.py", "editable_wheel", "--dist-dir", "x"])
    assert setup_py.pure_reason() == "an editable install"
    assert setup_py.compiled_extensions() == []


def test_metadata_commands_do_not_run_mypyc(setup_py: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEVERET_PURE_PYTHON", raising=False)
    for command in ("egg_info", "dist_info", "sdist"):
        monkeypatch.setattr(sys, "argv", ["setup.py", command])
        assert setup_py.compiled_extensions() == []


def test_the_compiled_modules_exist_and_fields_is_not_among_them(setup_py: ModuleType) -> None:
    assert setup_py.COMPILED and all((ROOT / path).is_file() for path in setup_py.COMPILED)
    assert "leveret/amqp/fields.py" not in setup_py.COMPILED  # amqp/ imports only the standard library


def test_a_failing_compiler_leaves_pure_python(setup_py: ModuleType, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "tiny.c"
    source.write_text("int tiny;\n")
    dist = Distribution({"name": "tiny", "ext_modules": [Extension("tiny", [str(source)])]})
    command = setup_py.OptionalBuildExt(dist)
    command.build_lib = str(tmp_path / "lib")
    command.build_temp = str(tmp_path / "temp")
    monkeypatch.setenv("CC", "/bin/false")  # a compiler that fails, as on a machine without one
    command.ensure_finalized()
    command.run()
    assert command.extensions == [] and dist.ext_modules == []
    assert not list(tmp_path.rglob("*.so")) and command.get_outputs() == []
    assert "installing pure Python" in capsys.readouterr().err


def test_build_names_what_runs() -> None:
    compiled = not inspect.isfunction(ServerConnection.receive_data)  # a compiled method is a C descriptor
    assert leveret.build() == ("compiled with mypyc" if compiled else "pure Python")
