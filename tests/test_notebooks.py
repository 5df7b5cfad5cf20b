"""Hygiene of the committed notebooks and their stored outputs."""

import ast
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
def test_notebook_is_valid_nbformat(path):
    """Valid as stored (every cell has an id): nbformat would otherwise warn now and refuse in a later version."""
    import warnings

    import nbformat

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nbformat.validate(json.loads(path.read_text(encoding="utf-8")))


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
    if path.name.startswith(("01-", "02-", "03-", "04-", "05-", "06-", "07-")):
        assert any("nbval-check-output" in cell_tags(c) for c in nb["cells"] if c["cell_type"] == "code")


# --------------------------------------------------------------------------- lesson cells and check cells
# A lesson cell reads like a textbook; what nbval must verify lives in a check cell right after it: tagged
# ``check`` (plus ``nbval-check-output`` when its output is compared), collapsed, opening with one Chinese
# comment line that says what it proves. Covers every notebook (00-07).

CHECK_TAG = "check"
#: nbval 0.11's cell tags (nbval/plugin.py: metadata_tags)
NBVAL_TAGS = {"nbval-check-output", "nbval-ignore-output", "nbval-skip", "nbval-raises-exception", "raises-exception"}
CJK = re.compile(r"[\u4e00-\u9fff]")
LESSON_FORBIDDEN = {
    re.compile(r"^\s*assert\b", re.MULTILINE): "an assert (it belongs in a check cell)",
    re.compile(r"NBVAL", re.IGNORECASE): "an nbval comment (use the cell tags)",
    re.compile(r"\.get\([^()]*,[^()]*\)"): "a .get(key, default) (values come from the config or the spec)",
    re.compile(r"\bif\b[^\n]*\bprofile\b"): "a profile branch (the cell must read the same on every profile)",
    re.compile(r"\bprofile\.(name|weights|source)\s*[!=]="): "a profile comparison",
    re.compile(r"\btests/"): "a word about the test suite",
}


def cell_tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def split_problems(nb) -> list[str]:
    """Every way the notebook's code cells break the lesson / check split."""
    problems = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        tags = cell_tags(cell)
        unknown = [t for t in tags if t != CHECK_TAG and t not in NBVAL_TAGS]
        if unknown:
            problems.append(f"[{index}] unknown tags {unknown}")
        if CHECK_TAG in tags:
            first = source.lstrip().splitlines()[0] if source.strip() else ""
            if not (first.startswith("#") and CJK.search(first)):
                problems.append(f"[{index}] check cell does not open with a Chinese comment saying what it proves")
            if cell.get("metadata", {}).get("jupyter", {}).get("source_hidden") is not True:
                problems.append(f"[{index}] check cell is not collapsed (metadata.jupyter.source_hidden)")
            if "NBVAL" in source.upper():
                problems.append(f"[{index}] check cell carries an nbval comment (use the cell tags)")
            continue
        for pattern, what in LESSON_FORBIDDEN.items():
            if pattern.search(source):
                problems.append(f"[{index}] lesson cell holds {what}: {source[:80]!r}")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lesson_cells_and_check_cells_are_split(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = split_problems(nb)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_check_cells_ran(path):
    """The check cells were executed with the lesson (nbval runs them again); a notebook with code has some."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    checks = [c for c in nb["cells"] if c["cell_type"] == "code" and CHECK_TAG in cell_tags(c)]
    assert checks, f"{path.name} has no check cell"
    for cell in checks:
        assert cell.get("execution_count"), f"{path.name}: a check cell was not executed"
        source = "".join(cell["source"])
        assert re.search(r"^\s*assert\b", source, re.MULTILINE) or "nbval-check-output" in cell_tags(cell), \
            f"{path.name}: a check cell that checks nothing: {source[:80]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lessons_open_with_goals_and_close_with_a_summary(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    markdown = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert "## 本课目标" in markdown[0], f"{path.name}: the first cell states 本课目标"
    assert re.search(r"tiny.*24 GB|24 GB.*tiny", markdown[0], re.DOTALL), f"{path.name}: 本课目标 gives the time"
    summary = [i for i, text in enumerate(markdown) if text.startswith("## 本课小结")]
    exercises = [i for i, text in enumerate(markdown) if text.startswith("## 练习")]
    assert summary and exercises and summary[0] < exercises[0], f"{path.name}: 本课小结 closes the lesson"
    assert "工作目录" in markdown[summary[0]], f"{path.name}: 本课小结 says what the lesson left in the workspace"
    numbers = [int(m) for text in markdown for m in re.findall(r"^## (\d+)\. ", text, re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: headings numbered in order: {numbers}"


def test_the_split_check_catches_a_test_harness_cell():
    def notebook(*cells):
        return {"cells": [{"cell_type": "code", "source": source, "metadata": meta} for source, meta in cells]}

    good_check = ("# 证明：模型目录完整\nassert ok", {"tags": ["check"], "jupyter": {"source_hidden": True}})
    assert split_problems(notebook(("x = 1", {}), good_check)) == []
    bad = {
        "assert in a lesson": ("x = 1\nassert x", {}),
        "nbval comment": ("# NBVAL_CHECK_OUTPUT\nprint(1)", {}),
        "get with default": ("lr = t.get('learning_rate', 1e-4)", {}),
        "profile branch": ("if spec.profile.weights == 'random':\n    pass", {}),
        "tests mentioned": ("print('see tests/test_data.py')", {}),
        "check not collapsed": ("# 证明：x\nassert x", {"tags": ["check"]}),
        "check without comment": ("assert x", {"tags": ["check"], "jupyter": {"source_hidden": True}}),
        "unknown tag": ("print(1)", {"tags": ["nbval-check"]}),
    }
    for why, cell in bad.items():
        assert split_problems(notebook(cell)), f"accepted: {why}"


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


def test_notebook_04_prints_the_exact_lora_line():
    """LoRA's parameter count sits next to LoRA's explanation (notebook 04), printed by PEFT itself."""
    nb = json.loads((REPO_ROOT / "notebooks" / "04-train.ipynb").read_text(encoding="utf-8"))
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
    "01-download.ipynb": ["snapshot_download(", "AutoTokenizer.from_pretrained(", "AutoModelForCausalLM.from_config("],
    "02-chat-template.ipynb": ["AutoTokenizer.from_pretrained(", "apply_chat_template("],
    "03-data.ipynb": ["apply_chat_template(", "AutoTokenizer.from_pretrained(", "[-100] * len(prompt_ids)"],
    "04-train.ipynb": ["AutoModelForCausalLM.from_pretrained(", "LoraConfig(", "get_peft_model(", "TrainingArguments(",
                       "Trainer(", "swanlab.init(", "report_to=", "trainer.train(resume_from_checkpoint=",
                       "START_FRESH = False", "print_trainable_parameters()"],
    "05-inference.ipynb": ["AutoModelForCausalLM.from_pretrained(", "PeftModel.from_pretrained(", "model.generate(",
                           "do_sample=", "temperature=", "top_p=", "max_new_tokens=", "prompt_ids_as_text(",
                           "TextIteratorStreamer(", "with model.disable_adapter():", "merge_and_unload()",
                           "save_pretrained("],
    "06-evaluate.ipynb": ["metrics.generate_replies(", "metrics.mean_rouge_l(", "metrics.degeneration(", "metrics.answer_loss("],
}


@pytest.mark.parametrize("name", sorted(LESSON_CALLS))
def test_lessons_are_visible_in_cells(name):
    nb = json.loads((REPO_ROOT / "notebooks" / name).read_text(encoding="utf-8"))
    lessons = [c for c in nb["cells"] if c["cell_type"] == "code" and CHECK_TAG not in cell_tags(c)]
    sources = "\n".join("".join(c["source"]) for c in lessons)
    missing = [call for call in LESSON_CALLS[name] if call not in sources]
    assert not missing, f"{name} does not show {missing}"


def numbers_named(path) -> set[str]:
    """The notebook numbers a helpers module's or solution's docstring and CLI description name as its own."""
    text = path.read_text(encoding="utf-8")
    own = [text.split("\n", 1)[0]] + re.findall(r'description="([^"]*)', text)
    return {n for line in own for n in re.findall(r"[Nn]otebook (\d\d)\b", line)}


def test_modules_and_solutions_name_their_own_notebook():
    by_topic = {p.stem[3:].replace("-", "_"): p.stem[:2] for p in NOTEBOOKS}
    named = {path: numbers_named(path) for path in (REPO_ROOT / "helpers").glob("*.py")}
    named.update({path: numbers_named(path) for path in (REPO_ROOT / "solutions").glob("[0-9][0-9]_*.py")})
    wrong = {}
    for path, numbers in named.items():
        topic = path.stem[3:] if path.parent.name == "solutions" else path.stem
        if topic in by_topic and numbers - {by_topic[topic]}:
            wrong[f"{path.parent.name}/{path.name}"] = sorted(numbers)
    assert not wrong, f"these name another notebook than their topic's: {wrong}"
    assert numbers_named(REPO_ROOT / "helpers" / "evaluate.py") == {"06"}   # the check reads what it should


def _loads_bitsandbytes(node) -> bool:
    """An import that loads bitsandbytes (peft, trl, transformers' Trainer)."""
    root = (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else node.names[0].name
    names = {alias.name for alias in node.names}
    return root in ("peft", "trl") or (root == "transformers" and any("Trainer" in n for n in names))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_helpers_is_imported_before_bitsandbytes(path):
    """helpers quiets bitsandbytes' missing-kernel warning only when it is imported first."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    imports = [n for n in ast.parse(first).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    own = [i for i, n in enumerate(imports) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("helpers")]
    late = [i for i, n in enumerate(imports) if _loads_bitsandbytes(n)]
    assert not late or (own and own[0] < late[0]), f"{path.name}: import helpers before peft / trl / the Trainer"


def test_make_run_executes_into_the_executed_folder_without_the_kernels_english_warning(tmp_path):
    """``make run`` (the README's first command), on a one-cell notebook: the executed copy lands in EXECUTED and
    the terminal shows no ipykernel warning about its local TCP connection (English, on every kernel start)."""
    import subprocess
    import sys

    import nbformat

    notebook = tmp_path / "00-one-cell.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), notebook)
    executed = tmp_path / "executed"
    stamp = tmp_path / "stamp"   # -o: the venv counts as built (this test's Python is the course's)
    done = subprocess.run(["make", "--no-print-directory", "-o", str(stamp), "run", f"STAMP={stamp}",
                           f"PY={sys.executable}", f"NOTEBOOKS={notebook}", f"EXECUTED={executed}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = nbformat.read(executed / notebook.name, as_version=4).cells[0].outputs
    assert [o.get("text") for o in outputs] == ["42\n"]
    assert "without encryption" not in done.stdout + done.stderr and "WARNING" not in done.stderr
