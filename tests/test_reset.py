"""``make reset`` keeps the downloaded model and dataset; ``make reset-all`` removes them only when told to.

A fake workspace holds what the course makes (models, the dataset, encoded data and its split,
checkpoints, an export, plots, SwanLab records, the scale-out demo, executed notebooks) plus a
file the course did not make. The reset runs as a learner runs it: through the CLI and through
``make``, with ``QWEN3_TUTORIAL_WORKSPACE`` pointing at the fake workspace and stdin not a terminal.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import reset
from helpers.checkpoints import lock_run
from helpers.settings import WORKSPACE_ENV
from helpers.workspace import MADE_MARKER, REPO_ROOT, course_folder, display_path, record_made
from tests.cli_runner import run_cli

MODEL_BYTES = 3_000_000
DERIVED = ["checkpoints/tiny/checkpoint-10/adapter_model.safetensors", "checkpoints/tiny-previous-1/run_summary.json",
           "export/tiny-merged/model.safetensors", "plots/loss.png", "swanlog/run-1/logs.txt",
           "data/train-tiny.jsonl", "data/split-tiny/train.json", "scale-out-demo/checkpoints/x.bin",
           "executed/04-train.ipynb"]
KEPT = ["models/modelscope/Qwen/Qwen3-8B/model-00001-of-00005.safetensors", "models/tiny-qwen3/config.json",
        "data/huanhuan.json", "my-notes.txt"]


#: folders the course makes whole (a run, an export, a split, a downloaded model ...), each marked so
COURSE_FOLDERS = ["checkpoints/tiny", "checkpoints/tiny-previous-1", "export/tiny-merged", "swanlog", "data/split-tiny",
                  "scale-out-demo", "executed", "models/modelscope/Qwen/Qwen3-8B", "models/tiny-qwen3"]


def make_workspace(root: Path) -> Path:
    """The course's own things made through its marking helpers; ``my-notes.txt`` is the learner's."""
    workspace = root / "workspace"
    for name in DERIVED + KEPT:
        path = workspace / name
        folder = next((f for f in COURSE_FOLDERS if name.startswith(f + "/")), None)
        if folder:
            course_folder(workspace / folder)
        course_folder(path.parent, whole=False) if name != "my-notes.txt" else path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * (MODEL_BYTES if name.endswith("safetensors") and "models" in name else 1000))
        if folder is None and name != "my-notes.txt":
            record_made(path)
    return workspace


def present(workspace: Path) -> set[str]:
    return {p.relative_to(workspace).as_posix() for p in workspace.rglob("*") if p.is_file() and p.name != MADE_MARKER}


def run_reset(workspace: Path, *args: str, make: bool = False, **make_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TUTORIAL_")}
    env[WORKSPACE_ENV] = str(workspace)
    env["PYTHONPATH"] = str(REPO_ROOT)
    if make:
        command = ["make", "--no-print-directory", *args, f"PY={sys.executable}",
                   f"EXECUTED={workspace.parent / 'executed-elsewhere'}", *(f"{k}={v}" for k, v in make_vars.items())]
    else:
        command = [sys.executable, "-m", "helpers.reset", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)


def test_reset_keeps_the_model_and_the_dataset(tmp_path):
    workspace = make_workspace(tmp_path)
    result = run_reset(workspace)
    assert result.returncode == 0, result.stdout + result.stderr
    assert present(workspace) == set(KEPT)
    for derived in ("checkpoints", "export", "plots", "swanlog", "scale-out-demo", "executed", "data/train-tiny.jsonl",
                    "data/split-tiny"):
        assert f"  {display_path(workspace / derived)} " in result.stdout
    assert "已释放 9.0 kB" in result.stdout      # nine derived files of 1,000 bytes
    assert "保留：" in result.stdout and display_path(workspace / "models") in result.stdout


def test_make_reset_keeps_the_model_and_the_dataset(tmp_path):
    workspace = make_workspace(tmp_path)
    elsewhere = tmp_path / "executed-elsewhere"      # make run's EXECUTED folder outside the workspace
    elsewhere.mkdir()
    (elsewhere / "00-environment.ipynb").write_text("{}", encoding="utf-8")
    record_made(elsewhere / "00-environment.ipynb")        # what `make run` records beside each notebook
    (elsewhere / "my-own.ipynb").write_text("{}", encoding="utf-8")      # the learner's: stays
    (elsewhere / "not-a-notebook.txt").write_text("keep", encoding="utf-8")
    result = run_reset(workspace, "reset", make=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert present(workspace) == set(KEPT)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["my-own.ipynb", "not-a-notebook.txt"]


def test_dry_run_lists_and_removes_nothing(tmp_path):
    workspace = make_workspace(tmp_path)
    before = present(workspace)
    result = run_reset(workspace, "reset", make=True, DRY_RUN="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert present(workspace) == before
    listed = result.stdout.split("将删除（")[1].splitlines()[1:-1]
    assert len(listed) == 8, result.stdout      # 6 folders, the encoded file and the split
    assert "什么都没有删除" in result.stdout


def test_reset_all_without_force_and_without_a_terminal_stops(tmp_path):
    workspace = make_workspace(tmp_path)
    before = present(workspace)
    result = run_reset(workspace, "reset-all", make=True)
    assert result.returncode != 0
    assert "FORCE=1" in result.stderr and "什么都没有删除" in result.stderr
    assert present(workspace) == before


def test_reset_all_asks_before_removing_a_downloaded_dataset_even_without_a_model(tmp_path):
    """`--all` asks first (the help says so) for the dataset too: without a terminal and --force it removes nothing."""
    workspace = make_workspace(tmp_path)
    shutil.rmtree(workspace / "models")
    before = present(workspace)
    result = run_reset(workspace, "--all")
    assert result.returncode == 2 and "--force" in result.stderr, result.stdout + result.stderr
    assert present(workspace) == before and "data/huanhuan.json" in before


def test_reset_all_with_force_removes_the_models(tmp_path):
    workspace = make_workspace(tmp_path)
    result = run_reset(workspace, "reset-all", make=True, FORCE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert present(workspace) == {"my-notes.txt"}      # only what the course did not make
    assert not (workspace / "models").exists()
    freed = MODEL_BYTES + 9 * 1000 + 2 * 1000       # the 8B shard, the derived files, tiny config, dataset
    assert f"已释放 {reset.human(freed)}。" in result.stdout


def test_reset_all_asks_on_a_terminal(tmp_path, monkeypatch):
    workspace = make_workspace(tmp_path)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    out = io.StringIO()
    assert reset.reset(workspace, everything=True, out=out) == 0   # Ctrl-D at the question (end of input): a no
    assert "没有确认" in out.getvalue() and present(workspace) >= set(DERIVED + KEPT)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert reset.reset(workspace, everything=True, out=out) == 0
    assert "没有确认" in out.getvalue()
    assert "models/modelscope/Qwen/Qwen3-8B/model-00001-of-00005.safetensors" in present(workspace)
    assert "checkpoints/tiny/checkpoint-10/adapter_model.safetensors" in present(workspace)

    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or "n")
    shutil.rmtree(workspace / "models")     # the question names what is there: here only the dataset
    reset.reset(workspace, everything=True, out=out)
    assert "数据集" in asked[0] and "模型" not in asked[0]

    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    reset.reset(workspace, everything=True, out=out)
    assert present(workspace) == {"my-notes.txt"}


def test_a_training_in_progress_stops_the_reset(tmp_path):
    workspace = make_workspace(tmp_path)
    before = present(workspace)
    with lock_run(workspace / "checkpoints" / "tiny"):
        with pytest.raises(reset.ResetRefused, match="checkpoints/tiny"):
            reset.reset(workspace, out=io.StringIO())
    assert present(workspace) - {"checkpoints/tiny.run.lock", "checkpoints/tiny.run.lock.pid"} == before
    reset.reset(workspace, out=io.StringIO())   # the lock released: the reset goes ahead
    assert present(workspace) == set(KEPT)
    deeper = course_folder(workspace / "checkpoints" / "sweep" / "a")   # --output-dir one folder deeper
    with lock_run(deeper), pytest.raises(reset.ResetRefused, match="checkpoints/sweep/a"):
        reset.reset(workspace, out=io.StringIO())
    assert deeper.is_dir()


def test_links_are_removed_not_followed(tmp_path):
    workspace = make_workspace(tmp_path)
    outside = tmp_path / "shared-model"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"w" * 100)
    (workspace / "export" / "linked").symlink_to(outside, target_is_directory=True)
    reset.reset(workspace, out=io.StringIO())
    assert (outside / "weights.bin").is_file()


def test_make_run_writes_into_the_relocated_workspace_and_make_reset_removes_it(tmp_path):
    """`make run` puts the executed notebooks in the workspace every notebook uses (here moved by the
    environment, into a folder with a space), marked as the course's, so `make reset` finds them there."""
    import nbformat

    workspace = tmp_path / "data disk" / "workspace"
    notebook = tmp_path / "00-hello.ipynb"      # a one-cell stand-in for the course's notebooks
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), notebook)
    stamp = tmp_path / "venv-ready"
    stamp.touch()                               # newer than the requirements: make does not rebuild the venv
    result = run_reset(workspace, "run", make=True, NOTEBOOKS=str(notebook), STAMP=str(stamp), EXECUTED="")
    assert result.returncode == 0, result.stdout + result.stderr
    executed = workspace / "executed" / "00-hello.ipynb"
    assert nbformat.read(executed, as_version=4).cells[0].outputs[0]["text"] == "42\n"
    assert not (REPO_ROOT / "workspace" / "executed" / "00-hello.ipynb").exists()
    mine = workspace / "executed" / "my copy 我的.ipynb"     # a learner's own copy beside the executed notebooks
    mine.write_text("{}", encoding="utf-8")
    result = run_reset(workspace, "reset", make=True, EXECUTED="")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in (workspace / "executed").iterdir() if p.name != MADE_MARKER] == [mine.name]
    mine.unlink()
    result = run_reset(workspace, "reset", make=True, EXECUTED="")
    assert result.returncode == 0 and not (workspace / "executed").exists()


def test_a_run_folder_first_made_by_evaluating_a_shared_adapter_is_reset_whole(tmp_path, tiny_model_dir):
    """A student evaluates the teacher's adapter (the report goes into their empty run folder), then trains
    into that folder: make reset removes the report and the checkpoints, not only what evaluate wrote."""
    from helpers import evaluate
    from tests.conftest import tiny_spec_for

    workspace = tmp_path / "ws"
    spec = tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(workspace))
    report = evaluate.save_report(spec, {"sets": {}}, adapter=tmp_path / "teacher-adapter" / "checkpoint-60")
    assert report.parent == spec.paths.run_dir
    course_folder(spec.paths.run_dir)                           # what train does before its first checkpoint
    (spec.paths.run_dir / "checkpoint-2").mkdir()
    (spec.paths.run_dir / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    plan = reset.plan(workspace)
    assert not plan.left_alone
    assert any(spec.paths.run_dir.is_relative_to(item.path) for item in plan)


def test_a_learners_file_in_a_run_folder_is_kept_by_reset_and_by_start_fresh(tmp_path):
    from helpers import evaluate, runs
    from helpers.checkpoints import RUN_FILES, move_aside
    from helpers.workspace import listed

    # the patterns name what the course writes there, by the names its writers use
    assert all(listed(set(RUN_FILES), name) for name in (runs.RUN_SUMMARY, runs.SAMPLE_LOG, evaluate.REPORT_FILE,
                                                          "checkpoint-60"))
    workspace = tmp_path / "ws"
    run = course_folder(workspace / "checkpoints" / "tiny", only=RUN_FILES)   # as train and notebook 04 mark it
    for name in ("checkpoint-2/adapter_model.safetensors", "run_summary.json", "sample_log.jsonl",
                 "eval_report.json", "eval_report-teacher-checkpoint-60-0a1b2c3d.json"):
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_bytes(b"x")
    (run / "我的笔记.md").write_text("笔记", encoding="utf-8")
    found = reset.plan(workspace)
    assert found.left_alone == [run / "我的笔记.md"]
    assert {item.path.name for item in found} == {"checkpoint-2", "run_summary.json", "sample_log.jsonl",
                                                   "eval_report.json", "eval_report-teacher-checkpoint-60-0a1b2c3d.json"}
    # start fresh moves runs aside and prunes all but the newest two: never one holding a learner's file
    for _ in range(3):
        (run / "checkpoint-2").mkdir(parents=True, exist_ok=True)
        moved, removed = move_aside(run)
        assert not removed
        course_folder(run, only=RUN_FILES)
    assert len(list(run.parent.glob("tiny-previous-*"))) == 3


def test_what_the_notebooks_and_solutions_write_is_removed_by_reset(tmp_path):
    """Notebook 04's run folder (made by the Trainer, not by the CLI), a fresh start's new one, notebook 03's demo file,
    notebook 08's template and the solutions' workspace are the course's: ``make reset`` removes them. A folder of the
    learner's given as the run folder is never claimed."""
    from types import SimpleNamespace

    from helpers import train
    from tests.conftest import tiny_spec_for

    spec = tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"))
    workspace, run_dir = spec.paths.workspace, spec.paths.run_dir
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, best_global_step=None)

    def notebook_04(fresh_start: bool = False) -> None:
        callback = train.CheckpointComplete(spec)      # train.course_callbacks(spec), passed to Trainer(...)
        run_dir.mkdir(parents=True, exist_ok=True)     # Trainer.__init__: os.makedirs(output_dir)
        if fresh_start:                                # START_FRESH = True: runs.start_fresh(spec)
            run_dir.rename(run_dir.with_name("tiny-previous-1"))
        callback.on_train_begin(SimpleNamespace(output_dir=str(run_dir), world_size=1), state, None)
        (run_dir / "checkpoint-2").mkdir(exist_ok=True)   # the Trainer saves

    notebook_04()
    notebook_04(fresh_start=True)
    record_made(workspace / "data" / "broken-demo.jsonl").write_text("{}\n", encoding="utf-8")         # notebook 03
    record_made(workspace / "checkpoints" / "tiny-trl-chat_template.jinja").write_text("x", encoding="utf-8")  # 08
    course_folder(workspace / "solutions" / "checkpoints" / "lr-sweep")                                # solutions
    sample = REPO_ROOT / "data" / "huanhuan_sample.json"    # notebook 03's command-line twins, as it writes them
    for command in (("encode", sample, workspace / "data" / "train.jsonl"), ("split", sample, workspace / "data" / "split")):
        assert run_cli("data", command, env={**os.environ, WORKSPACE_ENV: str(workspace)}, cwd=REPO_ROOT).code == 0
    removed = {item.path.relative_to(workspace).as_posix() for item in reset.plan(workspace)}
    assert {"checkpoints/tiny", "checkpoints/tiny-previous-1", "data/broken-demo.jsonl", "data/train.jsonl",
            "data/split", "checkpoints/tiny-trl-chat_template.jinja", "solutions"} <= removed, removed

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("my notes", encoding="utf-8")
    spec = tiny_spec_for(mine, QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"))
    run_dir = spec.paths.run_dir
    callback = train.CheckpointComplete(spec)
    callback.on_train_begin(SimpleNamespace(output_dir=str(run_dir), world_size=1), state, None)
    assert (mine / MADE_MARKER).exists() is False      # a learner's folder is never claimed

    # a run folder an older course marked whole ("*"): training into it again marks only what the course writes
    old = course_folder(tmp_path / "ws" / "checkpoints" / "old")
    (old / "checkpoint-2").mkdir()
    (old / "笔记.md").write_text("笔记", encoding="utf-8")
    callback = train.CheckpointComplete(tiny_spec_for(old, QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws")))
    callback.on_train_begin(SimpleNamespace(output_dir=str(old), world_size=1), state, None)
    assert old / "笔记.md" in reset.plan(workspace).left_alone


def test_a_learners_note_in_a_split_folder_is_kept_and_named(tmp_path):
    """data/split-<profile> is marked by name (``.``, eval.json, split.json, train.json): a note the learner put
    there was deleted with the folder; now the split's files go and the note is listed as kept."""
    workspace = tmp_path / "ws"
    split = course_folder(workspace / "data" / "split-tiny", whole=False)
    for name in ("eval.json", "split.json", "train.json"):
        record_made(split / name).write_text("[]", encoding="utf-8")
    (split / "my-split-note.txt").write_text("why this split", encoding="utf-8")
    found = reset.plan(workspace)
    assert sorted(item.path.name for item in found) == ["eval.json", "split.json", "train.json"]
    assert found.left_alone == [split / "my-split-note.txt"]
    reset.reset(workspace, out=io.StringIO())
    assert sorted(p.name for p in split.iterdir() if p.name != MADE_MARKER) == ["my-split-note.txt"]


def test_an_export_folder_left_with_a_learners_note_takes_the_next_export(tmp_path):
    """After a reset that kept a NOTES.md in export/tiny-merged, the marker still named the deleted export files,
    so the next export (notebook 05, ``inference export``) was refused as a folder the course did not write."""
    from helpers import export
    from helpers.workspace import CREATED, made_names

    workspace = tmp_path / "ws"
    target = course_folder(workspace / "export" / "tiny-merged", whole=False)
    checkpoint = course_folder(tmp_path / "run" / "checkpoint-2")
    (target / "NOTES.md").write_text("my export notes", encoding="utf-8")   # the learner's, before the export
    for name in ("model.safetensors", "config.json", "tokenizer.json"):      # as notebook 05's cell writes them
        (target / name).write_text("x", encoding="utf-8")
    export.write_export_marker(target, checkpoint)
    found = reset.plan(workspace)
    assert found.left_alone == [target / "NOTES.md"]                 # the export marker does not claim the note
    reset.reset(workspace, out=io.StringIO())
    assert [p.name for p in target.iterdir() if p.name != MADE_MARKER] == ["NOTES.md"]
    assert CREATED in made_names(target)                            # still the course's folder
    export.check_export_target(target, [checkpoint])                 # the next export may use the folder


def test_a_link_is_listed_as_itself_not_as_where_it_points(tmp_path):
    """A learner's link to a checkpoint was listed as kept under the checkpoint's own path, which the same reset
    listed as deleted."""
    workspace = make_workspace(tmp_path)
    (workspace / "plots" / "ckpt-link").symlink_to(workspace / "checkpoints" / "tiny" / "checkpoint-10",
                                                   target_is_directory=True)
    out = io.StringIO()
    reset.reset(workspace, dry_run=True, out=out)
    kept = out.getvalue().split("将删除")[0]
    assert display_path(workspace / "checkpoints" / "tiny" / "checkpoint-10") not in kept
    assert f"{display_path(workspace / 'plots')}/ckpt-link" in kept


def test_an_executed_folder_that_does_not_exist_is_named(tmp_path):
    workspace = make_workspace(tmp_path)
    done = run_reset(workspace, "--dry-run", "--executed", str(tmp_path / "typo"))
    assert done.returncode == 0 and str(tmp_path / "typo") in done.stderr


def test_training_after_a_reset_that_kept_a_note_in_the_split_folder_carries_the_note(tmp_path):
    """The reset keeps a learner's note in data/split-<profile>; the next split (chosen by the course, not the
    learner) must not refuse that folder, and the note stays."""
    import json

    from helpers import data_files

    workspace = tmp_path / "ws"
    sample = REPO_ROOT / "data" / "huanhuan_sample.json"
    split = data_files.grouped_split(json.loads(sample.read_text(encoding="utf-8")), 0.25)
    folder = workspace / "data" / "split-tiny"
    data_files.save_split(split, folder, source=sample)
    (folder / "NOTES.md").write_text("why this split", encoding="utf-8")
    reset.reset(workspace, out=io.StringIO())
    assert [p.name for p in folder.iterdir() if p.name != MADE_MARKER] == ["NOTES.md"]
    written = data_files.save_split(split, folder, source=sample)
    assert all(path.is_file() for path in written)
    assert (folder / "NOTES.md").read_text(encoding="utf-8") == "why this split"
    assert [item.path.name for item in reset.plan(workspace)] == sorted(path.name for path in written)
    mine = tmp_path / "mine"                        # a folder of the learner's own is still refused
    mine.mkdir()
    (mine / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(data_files.UnsafeWriteError):
        data_files.save_split(split, mine, source=sample)
