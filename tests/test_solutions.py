"""The exercises: every notebook ends with them, and every solution script runs and passes its asserts.

All scripts run in ONE process (tests/solutions_runner.py: each one as ``__main__``, as
``python solutions/NN_x.py`` runs it) with a clean environment: the tiny profile, a temporary
workspace that shares the session's tiny model folder (a link), and the tiny memorisation
adapter of ``tests/conftest.py`` as the ``adapter_dir`` setting.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.workspace import REPO_ROOT

SOLUTIONS_DIR = REPO_ROOT / "solutions"
SOLUTIONS = sorted(p for p in SOLUTIONS_DIR.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))

SECTION = "## 练习"
EXERCISE = re.compile(r"^### 练习 (\d+)：\S", re.MULTILINE)
SOLUTION_FILE = re.compile(r"solutions/(\d\d_[a-z0-9_]+\.py)")
HINT = re.compile(r"<details><summary>提示</summary>\s*\n(.+?)\n\s*</details>", re.DOTALL)
REGISTERED = re.compile(r"^@exercise\((\d+),", re.MULTILINE)
PASSED = re.compile(r"^--- 练习 (\d+) 通过", re.MULTILINE)
RUN_TIMEOUT = 1800  # seconds, all scripts together; an idle CPU needs well under a minute per script


def registered(script: Path) -> list[int]:
    return sorted(int(n) for n in REGISTERED.findall(script.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- the exercise sections


def notebook_section(path: Path) -> list[str]:
    """The markdown cells from the notebook's "## 练习" cell to its end (the section must end the notebook)."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    starts = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith(SECTION + "\n")]
    assert len(starts) == 1, f"{path.name}: one '{SECTION}' section"
    section = cells[starts[0]:]
    assert all(c.cell_type == "markdown" for c in section), f"{path.name}: the exercises end the notebook"
    return [c.source for c in section]


def exercises_in(sources: list[str]) -> list[tuple[int, str]]:
    """(number, text) of every "### 练习 N：" exercise, one per cell after the section's own cell."""
    found = []
    for text in sources[1:]:
        numbers = EXERCISE.findall(text)
        assert len(numbers) == 1 and text.startswith("### 练习"), f"one exercise per cell: {text[:60]!r}"
        found.append((int(numbers[0]), text))
    assert not EXERCISE.search(sources[0]), "the section's first cell introduces; the exercises follow"
    return found


def check_exercises(label: str, number: str, sources: list[str]) -> set[str]:
    """Every exercise: predict / change / observe, a non-empty collapsible hint, a solution that exists and
    solves exactly that exercise. Returns the solution files named."""
    exercises = exercises_in(sources)
    assert 2 <= len(exercises) <= 3, f"{label}: 2-3 exercises, found {len(exercises)}"
    assert [n for n, _ in exercises] == list(range(1, len(exercises) + 1)), f"{label}: numbered 1, 2, ..."
    named = set()
    for n, text in exercises:
        where = f"{label} exercise {n}"
        for part in ("**预测**", "**动手**", "**观察**"):
            assert part in text, f"{where}: no {part}"
        hint = HINT.search(text)
        assert hint and hint.group(1).strip(), f"{where}: no collapsible hint (<details><summary>提示</summary>)"
        files = set(SOLUTION_FILE.findall(text))
        assert len(files) == 1, f"{where}: names one solutions/ file, found {sorted(files)}"
        name = files.pop()
        assert name.startswith(number + "_"), f"{where}: {name} is not this notebook's solution"
        script = SOLUTIONS_DIR / name
        assert script.is_file(), f"{where}: solutions/{name} does not exist"
        assert n in registered(script), f"{where}: solutions/{name} has no @exercise({n}, ...)"
        assert f"python solutions/{name} {n}" in text, f"{where}: says how to run just this exercise"
        named.add(name)
    return named


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_exercises(path):
    named = check_exercises(path.name, path.name[:2], notebook_section(path))
    assert "solutions/" + sorted(named)[0] in notebook_section(path)[0], "the section says how to run the solution"


def test_every_solution_belongs_to_an_exercise_and_the_readme():
    assert len(NOTEBOOKS) == 9, [p.name for p in NOTEBOOKS]
    named = set()
    for path in NOTEBOOKS:
        named |= check_exercises(path.name, path.name[:2], notebook_section(path))
    assert named == {p.name for p in SOLUTIONS}, "a solution no exercise names, or an exercise without one"
    readme = (SOLUTIONS_DIR / "README.md").read_text(encoding="utf-8")
    assert all(p.name in readme for p in SOLUTIONS)


def test_the_section_checks_catch_a_broken_exercise():
    intro = SECTION + "\n\n`python solutions/02_chat_template.py`"
    good = ("### 练习 1：空思考块\n\n**预测**：…\n\n**动手**：…\n\n**观察**：…\n\n<details><summary>提示</summary>\n\n"
            "看最后一个单元格。\n\n</details>\n\n参考答案：`solutions/02_chat_template.py`（`python solutions/02_chat_template.py 1`）")
    second = good.replace("练习 1", "练习 2").replace(".py 1`", ".py 2`")
    assert check_exercises("fake", "02", [intro, good, second]) == {"02_chat_template.py"}
    broken = {
        "no hint": second.replace("<details>", "<div>"),
        "empty hint": second.replace("看最后一个单元格。", " "),
        "missing solution": second.replace("02_chat_template.py", "02_missing.py"),
        "another notebook's solution": second.replace("02_chat_template.py", "03_data.py"),
        "no way to run just this exercise": second.replace(".py 2`", ".py`"),
    }
    for why, cell in broken.items():
        with pytest.raises(AssertionError):
            check_exercises("fake", "02", [intro, good, cell])
            pytest.fail(f"accepted: {why}")
    # solutions/05_inference.py solves exercises 1 and 2 only: a third one in notebook 05 has no solution
    in_05 = [cell.replace("02_chat_template", "05_inference") for cell in (intro, good, second)]
    third = in_05[2].replace("练习 2", "练习 3").replace(".py 2`", ".py 3`")
    assert check_exercises("fake", "05", in_05) == {"05_inference.py"}
    with pytest.raises(AssertionError, match="no @exercise"):
        check_exercises("fake", "05", [*in_05, third])
    with pytest.raises(AssertionError):
        check_exercises("fake", "02", [intro, good])  # one exercise is too few


# --------------------------------------------------------------------------- the solution scripts


@pytest.fixture(scope="module")
def solutions_env(tmp_path_factory, tiny_model_dir, tiny_checkpoint) -> dict:
    """A clean environment: tiny profile, a fresh workspace sharing the tiny model, the memorisation adapter."""
    workspace = tmp_path_factory.mktemp("solutions-workspace")
    link = workspace / "models" / tiny_model_dir.name
    link.parent.mkdir(parents=True)
    link.symlink_to(tiny_model_dir, target_is_directory=True)
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if key in os.environ}
    env.update({
        "PYTHONPATH": str(REPO_ROOT),
        "QWEN3_TUTORIAL_PROFILE": "tiny",
        "QWEN3_TUTORIAL_WORKSPACE": str(workspace),
        # pinned so that a developer's course-settings.yaml cannot change what the scripts see
        "QWEN3_TUTORIAL_DATASET": str(REPO_ROOT / "data" / "huanhuan_sample.json"),
        "QWEN3_TUTORIAL_ADAPTER_DIR": str(tiny_checkpoint),
        "QWEN3_TUTORIAL_SWANLAB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # the tiny model generates faster on one thread than on two busy ones
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture(scope="module")
def solution_runs(solutions_env, tmp_path_factory) -> dict:
    """Every script run once, all in one process: {script name: what tests/solutions_runner.py recorded}."""
    out = tmp_path_factory.mktemp("solutions") / "runs.json"
    done = subprocess.run([sys.executable, "-m", "tests.solutions_runner", str(out),
                           *(str(p.relative_to(REPO_ROOT)) for p in SOLUTIONS)],
                          cwd=REPO_ROOT, env=solutions_env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0 and out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.parametrize("script", SOLUTIONS, ids=lambda p: p.name)
def test_solution_runs_and_passes(script, solution_runs, solutions_env):
    run = solution_runs[script.name]
    assert run["ok"], f"{script.name} failed:\n{run['error']}\n{run['output_tail'][-3000:]}"
    assert run["finished"] == run["registered"] == registered(script) and len(run["registered"]) >= 2, run
    fallback = Path(solutions_env["QWEN3_TUTORIAL_WORKSPACE"]) / "solutions" / "checkpoints" / "tiny-memorisation"
    assert not fallback.exists(), "the adapter of the test session was not used"
    print(f"{script.name}: {run['seconds']:.1f} s")


def load_common():
    """A fresh copy of solutions/_common.py (its own exercise registry)."""
    import importlib.util

    loader = importlib.util.spec_from_file_location("solutions_common", SOLUTIONS_DIR / "_common.py")
    common = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(common)
    return common


def test_a_script_runs_the_exercises_it_is_asked_for(capsys):
    from helpers.errors import CourseError

    common = load_common()
    ran = []
    common.exercise(1, "one")(lambda: ran.append(1))
    common.exercise(2, "two")(lambda: ran.append(2))
    common.run(["2"])
    assert ran == [2] and PASSED.findall(capsys.readouterr().out) == ["2"]
    common.run([])
    assert ran == [2, 1, 2]
    for asked in (["--help"], ["2", "-h"]):   # lists the exercises and runs none
        common.run(asked)
        assert ran == [2, 1, 2] and re.findall(r"^  (\d+)  ", capsys.readouterr().out, flags=re.M) == ["1", "2"]
    capsys.readouterr()
    for wrong in (["9"], ["two"], ["①"], ["1", "²"]):   # isdigit says yes to "①" and "²", int() says no
        with pytest.raises(SystemExit) as stop:
            common.run(wrong)
        assert stop.value.code == 2 and re.match(r"error: .*\[1, 2\]", capsys.readouterr().err)

    # an error the learner can fix (a setting, a missing file) is one line and exit 2, not a traceback
    def needs_a_fix():
        raise CourseError("适配器文件夹不存在。\n改正路径")

    common.exercise(3, "three")(needs_a_fix)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        common.run(["3"])
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "改正路径" in lines[0], lines


def test_a_reader_that_goes_away_is_no_traceback_in_a_solution(tmp_path):
    """`python solutions/03_data.py | head -1`: the exercises' output has nowhere to go, and that is no error to show."""
    script = tmp_path / "many_lines.py"
    script.write_text(f"import sys\nsys.path[:0] = [{str(REPO_ROOT)!r}, {str(SOLUTIONS_DIR)!r}]\n"
                      "from _common import exercise, run\n"
                      "exercise(1, 'print')(lambda: print('行\\n' * 100_000))\n"
                      "run()\n", encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1 and "Traceback" not in err, err


def test_the_memorised_adapter_is_a_finished_tiny_one(tmp_path, monkeypatch, tiny_checkpoint, tiny_model_dir):
    """Solutions 05 and 06 assert memorised answers: an interrupted notebook-04 run, or an adapter_dir trained
    on another profile, is passed over (with a note) for an adapter that has them."""
    import shutil

    from helpers import checkpoints

    common = load_common()
    fresh = tmp_path / "trained-here"
    monkeypatch.setattr(common, "train_fresh", lambda spec: {"checkpoint": str(fresh)})
    workspace = tmp_path / "workspace"
    (workspace / "models").mkdir(parents=True)
    (workspace / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir, target_is_directory=True)
    for key in ("QWEN3_TUTORIAL_ADAPTER_DIR", "QWEN3_TUTORIAL_MODEL_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("QWEN3_TUTORIAL_WORKSPACE", str(workspace))
    monkeypatch.setenv("QWEN3_TUTORIAL_SWANLAB_MODE", "disabled")
    spec = common.tiny_spec()

    def copy(to: Path, profile: str | None = "tiny", **state_changes) -> Path:
        shutil.copytree(tiny_checkpoint, to)
        state = json.loads((to / "trainer_state.json").read_text(encoding="utf-8"))
        state.update(state_changes)
        (to / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
        recipe = json.loads((to / checkpoints.RECIPE_FILE).read_text(encoding="utf-8"))
        if profile is None:
            (to / checkpoints.RECIPE_FILE).unlink()
        else:
            (to / checkpoints.RECIPE_FILE).write_text(json.dumps({**recipe, "profile": profile}), encoding="utf-8")
        checkpoints.write_marker(to, state["global_step"])
        return to

    state = json.loads((tiny_checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    max_steps, per_epoch = state["max_steps"], state["max_steps"] // state["num_train_epochs"]
    stopped = copy(spec.paths.run_dir / "checkpoint-2", global_step=2, epoch=2 / per_epoch)
    assert checkpoints.latest_good_checkpoint(spec.paths.run_dir).checkpoint == stopped
    assert common.memorised_adapter(spec) == fresh            # interrupted at step 2: trained here instead
    # a run shortened with --set training.max_steps=4: it finished, but not the recipe's steps
    shortened = copy(spec.paths.run_dir / "checkpoint-4", global_step=4, max_steps=4, num_train_epochs=4 // per_epoch,
                     epoch=4 / per_epoch)
    assert checkpoints.latest_good_checkpoint(spec.paths.run_dir).checkpoint == shortened
    assert common.memorised_adapter(spec) == fresh
    finished = copy(spec.paths.run_dir / f"checkpoint-{max_steps}")
    assert common.memorised_adapter(spec) == finished         # notebook 04's finished run
    for name, profile in (("teacher-8b", "full"), ("handed-over", None)):
        monkeypatch.setenv("QWEN3_TUTORIAL_ADAPTER_DIR", str(copy(tmp_path / name, profile=profile)))
        assert common.memorised_adapter(common.tiny_spec()) == finished   # an 8B (or unknown) adapter: not on tiny
    ours = copy(tmp_path / "classmate-tiny", profile="tiny")
    monkeypatch.setenv("QWEN3_TUTORIAL_ADAPTER_DIR", str(ours))
    assert common.memorised_adapter(common.tiny_spec()) == ours
