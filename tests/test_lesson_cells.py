"""Lesson cells teach, check cells prove: the split of notebooks 04-07.

A lesson cell (no ``check`` tag) holds no assert, no nbval marker comment, no profile branch, no
``.get(key, default)`` and no word about the test suite. What nbval verifies sits in a check cell
right after it: tagged ``check``, collapsed for the reader, opening with one Chinese comment line.
"""

import json
import re

import pytest

from helpers.workspace import REPO_ROOT

SPLIT = sorted(p for p in (REPO_ROOT / "notebooks").glob("0[4-7]-*.ipynb"))
NBVAL_TAGS = {"nbval-check-output", "nbval-ignore-output", "nbval-skip", "nbval-raises-exception", "raises-exception"}
FORBIDDEN = {
    r"\bassert\b": "an assert",
    r"NBVAL": "an nbval marker comment (use the cell tags)",
    r"spec\.profile\.(name|weights)\s*[!=]=": "a profile branch",
    r"\.get\([^()]*,": "a .get(key, default)",
    r"tests/": "a word about the test suite",
}
CHINESE = re.compile(r"[\u4e00-\u9fff]")


def code_cells(path):
    return [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", SPLIT, ids=lambda p: p.name)
def test_lesson_cells_hold_no_test_code(path):
    for cell in code_cells(path):
        if "check" in cell["metadata"].get("tags", []):
            continue
        source = "".join(cell["source"])
        for pattern, what in FORBIDDEN.items():
            assert not re.search(pattern, source), f"{path.name}: {what} in a lesson cell: {source[:100]!r}"


@pytest.mark.parametrize("path", SPLIT, ids=lambda p: p.name)
def test_check_cells_are_tagged_collapsed_and_explained(path):
    checks = [c for c in code_cells(path) if "check" in c["metadata"].get("tags", [])]
    assert checks, f"{path.name}: no check cell"
    for cell in checks:
        source = "".join(cell["source"])
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True, f"{path.name}: {source[:60]!r}"
        first = source.splitlines()[0]
        assert first.startswith("# ") and CHINESE.search(first), f"{path.name}: the first line says what it proves"
        assert set(cell["metadata"]["tags"]) <= {"check"} | NBVAL_TAGS
        assert cell.get("execution_count"), f"{path.name}: the check cell ran (make notebooks)"
        assert not any(o.get("output_type") == "error" for o in cell.get("outputs", []))


def test_the_split_check_catches_test_code_in_a_lesson_cell(tmp_path):
    nb = json.loads(SPLIT[0].read_text(encoding="utf-8"))
    lesson = next(c for c in nb["cells"] if c["cell_type"] == "code" and not c["metadata"].get("tags"))
    lesson["source"] = ["x = 1\n", "assert x == 1\n"]
    path = tmp_path / SPLIT[0].name
    path.write_text(json.dumps(nb), encoding="utf-8")
    with pytest.raises(AssertionError, match="an assert"):
        test_lesson_cells_hold_no_test_code(path)
