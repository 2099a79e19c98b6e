"""Socket-free checks of the split between leveret.amqp.fields (values: field tables, domains, properties; what
the core may import) and leveret.amqp.codec (methods, frames). The encodings themselves are tested in
tests/test_codec.py and tests/test_field_values.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from leveret.amqp import codec, fields, spec


def test_fields_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(fields.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(node.level for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))
    assert all(name.split(".")[0] in sys.stdlib_module_names or name == "__future__" for name in imported), imported


def test_the_core_loads_fields_and_not_the_codec() -> None:
    script = ("import sys, leveret.core.exchanges, leveret.core.message, leveret.core.lifecycle; "
              "print(sorted(m for m in sys.modules if m.startswith('leveret.amqp.')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['leveret.amqp.fields']"


def test_codec_and_spec_name_the_same_objects_as_fields() -> None:
    for name in ("CodecError", "LongInt", "RawField", "encode_table", "decode_table", "decode_properties",
                 "encode_properties", "property_value", "field_type", "MAX_NESTING"):
        assert getattr(codec, name) is getattr(fields, name), name
    assert spec.BASIC_PROPERTIES is fields.BASIC_PROPERTIES and spec.TABLE == fields.TABLE == "table"
    assert codec.CodecError("bad").reply_code == spec.FRAME_ERROR
