"""Layer rules that import-linter cannot see (the import contracts are in pyproject.toml, run by .ci/run).

- No module of leveret/ reads another module's private attributes: ``x._name`` where ``x`` is not ``self``,
  ``cls`` or ``super()`` and ``_name`` is not defined in the same module (as a function, class, module name or
  ``self._name``/``cls._name`` attribute). Whoever needs it gets a public property or method on the owner.
- amqp/ imports only the standard library and itself (import-linter holds it to the packages it is told of;
  this checks every import against the standard library's list).

ALLOWED is the short, explicit list of exceptions; an entry that no longer occurs fails too, so the list can
only shrink. PENDING lists reads that other parts of issue 13 are removing at the same time (each owner adds a
public name): allowed while they last, and to be emptied once those changes are in.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

import pytest

import leveret

ROOT = Path(leveret.__file__).resolve().parent

# The namedtuple API is public despite its underscores (``parts._replace(...)``).
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}

# (file under leveret/, expression as written) -> why it is allowed.
ALLOWED: dict[tuple[str, str], str] = {
    # the standard library's own spelling
    **{(path, "argparse._SubParsersAction"): "the type argparse's add_subparsers returns has no public name"
       for path in ("cli.py", "ctl.py", "tap.py")},
    ("supervisor/child.py", "os._exit"): "exit a forked child without running the parent's cleanup",
}

PENDING: dict[tuple[str, str], str] = {}


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _defined_here(tree: ast.AST) -> set[str]:
    """Names a module defines itself: functions, classes, assigned or imported names, self/cls attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)
    return names


def _own(value: ast.expr) -> bool:
    """``self``, ``cls`` or ``super()``: an object's access to its own attributes."""
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def private_reads(source: str) -> list[tuple[int, str]]:
    """(line, expression) of each ``x._name`` in ``source`` that reaches into another module's privates."""
    tree = ast.parse(source)
    here = _defined_here(tree)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__")
                and node.attr not in NAMEDTUPLE_API and node.attr not in here and not _own(node.value)):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_the_check_finds_what_it_should() -> None:
    source = (
        "import other\n"
        "class A:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def m(self, peer, session):\n"
        "        return self._mine + peer._mine + super()._x + session._vhost + other._helper()\n"
        "def _local():\n"
        "    return parts._replace(a=1), _local, A()._mine, type(x).__name__\n"
    )
    assert private_reads(source) == [(6, "other._helper"), (6, "session._vhost")]


def test_no_module_reads_another_modules_private_attributes() -> None:
    seen: Counter[tuple[str, str]] = Counter()
    unexpected = []
    for path in _modules():
        name = path.relative_to(ROOT).as_posix()
        for line, expression in private_reads(path.read_text()):
            seen[name, expression] += 1
            if (name, expression) not in ALLOWED and (name, expression) not in PENDING:
                unexpected.append(f"leveret/{name}:{line}: {expression}")
    assert not unexpected, "private attributes read across modules (add a public name on the owner):\n" + \
        "\n".join(unexpected)
    gone = [f"{name}: {expression}" for name, expression in ALLOWED if not seen[name, expression]]
    assert not gone, "no longer read: remove from ALLOWED in tests/test_layers.py:\n" + "\n".join(gone)


@pytest.mark.parametrize("path", sorted((ROOT / "amqp").glob("*.py")), ids=lambda p: p.name)
def test_amqp_imports_only_the_standard_library(path: Path) -> None:
    tree = ast.parse(path.read_text())
    outside = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue  # relative imports stay inside amqp/
        for module in names:
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top != "__future__" and not module.startswith("leveret.amqp"):
                outside.append(f"line {node.lineno}: {module}")
    assert not outside, f"amqp/{path.name} imports beyond the standard library: {outside}"
