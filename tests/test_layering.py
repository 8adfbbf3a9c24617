"""Imports point one way: the engine never imports the facade; pure modules import no Ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "raypool"

# module -> raypool modules it may import
ALLOWED = {
    "_version": set(),
    "_errors": set(),
    "_config": set(),
    "_outcome": set(),
    "_lifecycle": set(),
    "_serialization": {"_errors"},
    "_batching": set(),
    "_keys": {"_serialization"},
    "_store": {"_config", "_errors", "_keys", "_lifecycle", "_serialization"},
    "_runtime": {"_errors", "_lifecycle", "_outcome"},
    "_cancel": {"_lifecycle"},
    "_worker": {"_cancel", "_config", "_errors", "_outcome", "_serialization"},
    "_runners": {"_lifecycle", "_worker"},
    "_backend": {
        "_cancel",
        "_config",
        "_errors",
        "_outcome",
        "_runners",
        "_runtime",
        "_serialization",
        "_worker",
    },
    "_scheduler": {"_batching", "_config", "_errors", "_keys", "_outcome", "_store"},
    "_engine": {
        "_backend",
        "_config",
        "_lifecycle",
        "_keys",
        "_runtime",
        "_scheduler",
        "_serialization",
        "_store",
        "_worker",
    },
    "_dispatch": {"_lifecycle", "_outcome", "_scheduler"},
    "_results": {"_dispatch", "_errors", "_outcome"},
    "_lanes": {
        "_backend",
        "_lifecycle",
        "_config",
        "_dispatch",
        "_engine",
        "_outcome",
        "_results",
        "_scheduler",
        "_serialization",
        "_worker",
    },
    "_pool": {
        "_config",
        "_dispatch",
        "_engine",
        "_errors",
        "_lanes",
        "_lifecycle",
        "_results",
        "_runtime",
        "_worker",
    },
    "_cli": {"_config", "_errors", "_store"},
    "joblib": {"_pool", "_runtime", "_serialization"},
    "__main__": {"_cli"},
}
RAY_FREE = {
    "_version",
    "_lifecycle",
    "_scheduler",
    "_dispatch",
    "_results",
    "_errors",
    "_config",
    "_outcome",
    "_serialization",
    "_keys",
    "_batching",
    "_store",
    "_cli",
    "__main__",
}


def _imports(module: str) -> tuple[set[str], set[str]]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    internal, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level and node.module:
                internal.add(node.module.split(".")[0])
            elif node.level:  # from . import _module
                internal.update(alias.name for alias in node.names)
            elif node.module:
                external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    return internal, external


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_import_direction(module: str) -> None:
    internal, external = _imports(module)
    assert internal <= ALLOWED[module], internal - ALLOWED[module]
    if module in RAY_FREE:
        assert "ray" not in external


def test_every_module_is_listed() -> None:
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    assert modules == set(ALLOWED)


def test_dill_only_in_serialization() -> None:
    users = {m for m in ALLOWED if "dill" in _imports(m)[1]}
    assert users == {"_serialization"}


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    first = body[0]
    if len(body) > 1 and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        first = body[1]  # after the docstring
    return (node.end_lineno or node.lineno) - first.lineno + 1


def test_no_function_body_is_over_60_lines() -> None:
    long = [
        f"{path.name}:{node.lineno} {node.name} ({_body_lines(node)} lines)"
        for path in sorted(SRC.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > 60
    ]
    assert long == []
