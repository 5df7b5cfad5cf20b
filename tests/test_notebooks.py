"""Hygiene of the committed notebooks and their stored outputs."""

import json
import re

import pytest

from helpers.workspace import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))

ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/(?:home|root|Users|tmp|work|usr|opt|var|mnt|data)/[\w.\-/]+|[A-Za-z]:\\\\[\w])")
KEY_LIKE = re.compile(
    r"(sk-[A-Za-z0-9]{20,}|hf_[A-Za-z0-9]{30,}|ghp_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16}"
    r"|(?i:api[_-]?key|secret|token)\s*[=:]\s*['\"]?[A-Za-z0-9_\-]{20,})"
)
# Documentation strings a learner is told to type on AutoDL are allowed.
ALLOWED_PATHS = ("/etc/network_turbo",)


def output_texts(nb):
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                yield cell, "ERROR: " + out.get("ename", "")
            if "text" in out:
                yield cell, "".join(out["text"])
            for key, value in out.get("data", {}).items():
                if key.startswith("text/") or key == "application/json":
                    yield cell, value if isinstance(value, str) else json.dumps(value)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_outputs_and_no_errors(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), "commit the notebook executed (make notebooks)"
    for _, text in output_texts(nb):
        assert not text.startswith("ERROR:"), f"stored error output: {text}"
        assert "Traceback (most recent call last)" not in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_hold_no_paths_or_keys(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for _, text in output_texts(nb):
        paths = [p for p in ABSOLUTE_PATH.findall(text) if not p.startswith(ALLOWED_PATHS)]
        assert not paths, f"absolute machine path in stored output: {paths[:3]}"
        assert not KEY_LIKE.search(text), "something that looks like a key is in a stored output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_deterministic_cells_are_checked(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    if path.name.startswith(("01-", "02-", "03-", "04-", "05-", "06-")):
        assert any("# NBVAL_CHECK_OUTPUT" in s for s in sources)


def test_hygiene_checks_catch_bad_outputs():
    fake = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": "saved to /root/work/x.bin\n"},
        {"output_type": "stream", "name": "stdout", "text": "SWANLAB_API_KEY=abcdefghijklmnopqrstuvwxyz12\n"},
    ]}]}
    texts = [t for _, t in output_texts(fake)]
    assert ABSOLUTE_PATH.search(texts[0])
    assert KEY_LIKE.search(texts[1])


def test_notebook_02_stores_the_original_renderings():
    from tests.test_chat_template import EXPECTED_NO_THINK, EXPECTED_THINK

    nb = json.loads((REPO_ROOT / "notebooks" / "02-chat-template.ipynb").read_text(encoding="utf-8"))
    stdout = ["".join(o["text"]) for c in nb["cells"] for o in c.get("outputs", []) if o.get("name") == "stdout"]
    assert EXPECTED_NO_THINK + "\n" in stdout and EXPECTED_THINK + "\n" in stdout


def test_notebook_01_prints_the_exact_lora_line():
    nb = json.loads((REPO_ROOT / "notebooks" / "01-download.ipynb").read_text(encoding="utf-8"))
    stdout = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "trainable params: 21,823,488 || all params: 8,212,558,848 || trainable%: 0.2657\n" in stdout


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_widget_state_is_committed(path):
    """nbstripout (make notebooks) removes the saved ipywidgets state; it must not come back."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in nb.get("metadata", {}), "saved widget state: run make notebooks (nbstripout)"
    assert WIDGET_STATE not in path.read_text(encoding="utf-8")


def test_widget_state_check_catches_saved_state(tmp_path):
    import subprocess
    import sys

    nb = json.loads((REPO_ROOT / "notebooks" / "00-environment.ipynb").read_text(encoding="utf-8"))
    nb["metadata"]["widgets"] = {WIDGET_STATE: {"state": {}, "version_major": 2, "version_minor": 0}}
    path = tmp_path / "00-environment.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    with pytest.raises(AssertionError):
        test_no_widget_state_is_committed(path)
    subprocess.run([sys.executable, "-m", "nbstripout", "--keep-output", "--keep-count", str(path)], check=True)
    test_no_widget_state_is_committed(path)
    stripped = json.loads(path.read_text(encoding="utf-8"))
    assert [c.get("outputs") for c in stripped["cells"]] == [c.get("outputs") for c in nb["cells"]]


PLUMBING = {
    "tests/": "a cell reads the test suite's files",
    "json.load": "a cell parses data files by hand (use the helpers that validate them)",
    "os.chdir": "a cell depends on the working directory",
    "\"../": "a cell uses a path relative to the working directory",
    "'../": "a cell uses a path relative to the working directory",
    "import bench": "a notebook imports the benchmarks",
    "from bench": "a notebook imports the benchmarks",
    "os.environ": "settings come from the spec, not from the environment",
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_hold_lessons_not_plumbing(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        for needle, why in PLUMBING.items():
            assert needle not in source, f"{path.name}: {why}: {source[:120]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_builds_the_spec(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "build_spec(" in first, f"{path.name}: the first code cell must resolve the settings (build_spec)"


LESSON_CALLS = {
    "03-data.ipynb": ["apply_chat_template(", "AutoTokenizer.from_pretrained("],
    "04-train.ipynb": ["AutoModelForCausalLM.from_pretrained(", "LoraConfig(", "get_peft_model(", "TrainingArguments(",
                       "Trainer(", "assert args.to_dict() == train.training_arguments(spec).to_dict()",
                       "assert lora_config == models.lora_config(spec.lora)"],
    "05-inference.ipynb": ["AutoModelForCausalLM.from_pretrained(", "PeftModel.from_pretrained(", "model.generate(",
                           "TextIteratorStreamer("],
}


@pytest.mark.parametrize("name", sorted(LESSON_CALLS))
def test_lessons_are_visible_in_cells(name):
    nb = json.loads((REPO_ROOT / "notebooks" / name).read_text(encoding="utf-8"))
    sources = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    missing = [call for call in LESSON_CALLS[name] if call not in sources]
    assert not missing, f"{name} does not show {missing}"
