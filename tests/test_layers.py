"""The helpers package's layers point down only, with no import circle (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers.workspace import REPO_ROOT

HELPERS = REPO_ROOT / "helpers"

#: the layers named in helpers/__init__.py's docstring
LAYERS = {
    "errors": 0, "workspace": 0, "hardware": 0,
    "profiles": 1, "settings": 1, "spec": 1,
    "validation": 2, "data_files": 2, "padding": 2, "data": 2, "original": 2,
    "models": 2, "checkpoints": 2, "tracking": 2, "recipes": 2, "metrics": 2,
    "runs": 2,
    "download": 3, "train": 3, "export": 3, "inference": 3, "evaluate": 3, "scale_out": 3, "environment": 3, "reset": 3,
    "chat_app": 4,
}


def helper_imports(source: str, module: str) -> set[str]:
    """The helpers modules one module imports, anywhere in it (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 1 or name == "helpers" or name.startswith("helpers."):
                base = name.removeprefix("helpers").lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:  # from . import a, b
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("helpers."))
    return found - {module}


def import_graph(folder: Path = HELPERS) -> dict[str, set[str]]:
    return {p.stem: helper_imports(p.read_text(encoding="utf-8"), p.stem)
            for p in sorted(folder.glob("*.py")) if p.stem != "__init__"}


def violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Upward imports, and import circles (among modules of one layer)."""
    found = [f"{m} (layer {layers[m]}) imports {t} (layer {layers[t]})"
             for m, targets in graph.items() for t in sorted(targets) if layers[t] > layers[m]]
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append("circle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path
                             else f"circle: {node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_every_module_has_a_layer():
    assert set(import_graph()) == set(LAYERS)


def test_imports_point_down_and_close_no_circle():
    assert violations(import_graph(), LAYERS) == []


def test_the_checker_catches_an_upward_import_and_a_circle(tmp_path):
    for path in HELPERS.glob("*.py"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    spec = tmp_path / "spec.py"
    spec.write_text(spec.read_text(encoding="utf-8") + "\n\ndef f():\n    from .train import train\n",
                    encoding="utf-8")
    assert "spec (layer 1) imports train (layer 3)" in violations(import_graph(tmp_path), LAYERS)
    spec.write_text(spec.read_text(encoding="utf-8").rsplit("\n\ndef f():", 1)[0], encoding="utf-8")
    assert violations(import_graph(tmp_path), LAYERS) == []
    data = tmp_path / "data_files.py"
    data.write_text(data.read_text(encoding="utf-8") + "\n\ndef g():\n    from . import data\n", encoding="utf-8")
    assert any(v.startswith("circle:") and "data_files" in v for v in violations(import_graph(tmp_path), LAYERS))


@pytest.mark.parametrize("folder", ["bench", "solutions", "tests"])
def test_helpers_never_import_bench_solutions_or_tests(folder):
    for path in HELPERS.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not any(name == folder or name.startswith(folder + ".") for name in names), path.name


#: the size limits of one module and one function (lines, docstrings and blank lines included)
MODULE_LINES, FUNCTION_LINES = 500, 60


def oversized(folder: Path = HELPERS) -> list[str]:
    """Modules over MODULE_LINES lines and functions (methods included) over FUNCTION_LINES lines."""
    found = []
    for path in sorted(folder.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > MODULE_LINES:
            found.append(f"{path.name}: {len(source.splitlines())} lines")
        found += [f"{path.name}:{node.lineno} {node.name}(): {node.end_lineno - node.lineno + 1} lines"
                  for node in ast.walk(ast.parse(source))
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.end_lineno - node.lineno + 1 > FUNCTION_LINES]
    return found


def test_no_module_or_function_is_oversized(tmp_path):
    assert oversized() == []
    long_function = "def f():\n" + "    x = 1\n" * FUNCTION_LINES
    (tmp_path / "big.py").write_text(long_function + "\n" * (MODULE_LINES - FUNCTION_LINES), encoding="utf-8")
    assert oversized(tmp_path) == ["big.py: 501 lines", f"big.py:1 f(): {FUNCTION_LINES + 1} lines"]
