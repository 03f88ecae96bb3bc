"""The .pyi stub names what the module has (and nothing it lacks)."""

import ast
from pathlib import Path

import msr

STUB = Path(__file__).resolve().parents[1] / "msr" / "_msr.pyi"


def members(cls_node):
    return {n.name for n in cls_node.body if isinstance(n, ast.FunctionDef)}


def test_stub_matches_module():
    tree = ast.parse(STUB.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert set(classes) == {"Model", "Session"}
    for name, node in classes.items():
        runtime = {m for m in dir(getattr(msr, name)) if not m.startswith("_")}
        stub = {m for m in members(node) if not m.startswith("_")}
        assert stub == runtime, (name, stub ^ runtime)
        for m in stub:
            fn = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == m)
            has_doc = ast.get_docstring(fn) is not None or getattr(msr, name).__dict__[m].__doc__
            assert has_doc, f"{name}.{m} has no docstring"
