"""Bad inputs, round 2: nothing the learner made is lost, every documented key works, every known mistake is one line.

Each case runs a command's real entry point, ``helpers.<module>.main(argv)``, in this process with
its own environment (tiny profile, a workspace of its own), working directory, settings file and
captured stdout/stderr, and asserts the exit code, a key phrase of the one error line, and the
sha256 of every file that must not change. A full disk and a folder this user cannot write to (the
tests may run as root, which ignores file modes) are made by making the system call fail.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from helpers import checkpoints, data_files, reset, settings, workspace
from helpers import spec as spec_module
from helpers.errors import CourseError
from helpers.workspace import MADE_MARKER, REPO_ROOT, course_folder, record_made
from tests.conftest import tiny_spec_for

SAMPLE = REPO_ROOT / "data" / "huanhuan_sample.json"


class Result(NamedTuple):
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        # a progress bar (tqdm) may leave its line open before the error: split on \r too
        return [line[line.index("error: "):] for line in re.split(r"[\r\n]", self.err) if "error: " in line]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shas(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the course's own markers left out)."""
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(Path(root).rglob("*"))
            if p.is_file() and p.name != MADE_MARKER}


@pytest.fixture
def arena(tmp_path, monkeypatch, tiny_model_dir):
    """A folder with its own workspace (the tiny model linked in), settings file and environment."""
    for name in list(os.environ):
        if name.startswith("QWEN3_TUTORIAL_"):
            monkeypatch.delenv(name)
    ws = tmp_path / "ws"
    (ws / "models").mkdir(parents=True)
    (ws / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir, target_is_directory=True)
    monkeypatch.setenv(settings.PROFILE_ENV, "tiny")
    monkeypatch.setenv(settings.WORKSPACE_ENV, str(ws))
    monkeypatch.setenv(settings.SWANLAB_MODE_ENV, "disabled")
    file = tmp_path / "course-settings.yaml"
    # every reader of the settings file takes its path as a default argument: point those at this arena
    monkeypatch.setattr(settings.read_settings_file, "__defaults__", (file,))
    monkeypatch.setattr(settings.course_settings, "__defaults__", (None, file))
    monkeypatch.setattr(spec_module.build_spec, "__kwdefaults__",
                        {**spec_module.build_spec.__kwdefaults__, "settings_file": file})
    environment = importlib.import_module("helpers.environment")
    monkeypatch.setattr(environment.write_settings, "__defaults__", (file,))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(module: str, *argv: str) -> Result:
    """``python -m helpers.<module> argv...`` in this process: (exit code, stdout, stderr)."""
    main = importlib.import_module(f"helpers.{module}").main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as stop:   # argparse's own refusals
            code = stop.code if isinstance(stop.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def one_line(result: Result, phrase: str, code: int = 2) -> None:
    assert result.code == code, result
    assert len(result.error_lines) == 1 and phrase in result.error_lines[0], result.err
    assert "Traceback" not in result.err


def fail_with(errno_code: int, *, after: int = 0):
    """A stand-in that works ``after`` times and then fails with ``errno_code`` (a full disk, no rights)."""
    calls = {"n": 0}

    def decorate(original):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(errno_code, os.strerror(errno_code))
            return original(*args, **kwargs)
        return wrapper
    return decorate


# --------------------------------------------------------------------------- 1. reset deletes only what the course made


def course_things(ws: Path) -> list[Path]:
    """A run, an export, a split, encoded data, a plot and SwanLab records, made by the course's own writers."""
    run = course_folder(ws / "checkpoints" / "tiny")
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"a" * 100)
    with workspace.atomic_folder(ws / "export" / "tiny-merged") as partial:
        (partial / "model.safetensors").write_bytes(b"m" * 100)
    split = data_files.grouped_split(json.loads(SAMPLE.read_text(encoding="utf-8")), 0.25)
    data_files.save_split(split, ws / "data" / "split-tiny", source=SAMPLE)
    record_made(data_files.save_encoded([], ws / "data" / "train-tiny.jsonl"))
    with workspace.atomic_path(ws / "plots" / "train-tiny.png") as temporary:
        temporary.write_bytes(b"png")
    record_made(ws / "plots" / "train-tiny.png")
    swanlog_is_new = not (ws / "swanlog").exists()
    course_folder(ws / "swanlog")           # a swanlog folder the learner had already stays the learner's
    return [run, ws / "export" / "tiny-merged", ws / "data" / "split-tiny", ws / "data" / "train-tiny.jsonl",
            ws / "plots" / "train-tiny.png"] + ([ws / "swanlog"] if swanlog_is_new else [])


LEARNERS = ["checkpoints/my-other-project/model.bin", "export/thesis-model/model.safetensors", "plots/mine.png",
            "executed/mine.ipynb", "data/train-mine.jsonl", "models/my-llama/config.json", "swanlog/run-mine/log.txt",
            "thesis.tex"]


def learners_home(home: Path) -> dict[str, str]:
    for name in LEARNERS:
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(f"the learner's {name}", encoding="utf-8")
    return shas(home)


@pytest.mark.parametrize("everything", [False, True])
def test_reset_of_a_home_folder_removes_only_what_the_course_made(arena, monkeypatch, everything):
    home = arena / "home"
    home.mkdir()
    before = learners_home(home)
    made = course_things(home)
    monkeypatch.setenv(settings.WORKSPACE_ENV, str(home))
    planned = reset.plan(home, everything=everything)
    assert {item.path for item in planned} >= {home / "checkpoints" / "tiny", home / "export" / "tiny-merged"}
    expected = {home / "/".join(name.split("/")[:2]) for name in LEARNERS
                if "/" in name and (everything or not name.startswith("models/"))}
    assert expected <= set(planned.left_alone)      # named: not the course's, left alone
    result = cli("reset", *(["--all", "--force"] if everything else []))
    assert result.code == 0, result
    assert all(workspace.display_path(path) in result.out for path in expected)   # the left-alone list names them
    assert shas(home) == before                       # every file of the learner's, byte for byte
    assert not any(path.exists() for path in made)


@pytest.mark.parametrize("word", ["1", "true", "yes", "on", "TRUE", "Yes"])
def test_dry_run_words_remove_nothing(arena, word):
    ws = arena / "ws"
    course_things(ws)
    before = shas(ws)
    result = cli("reset", "--dry-run-value", word)
    assert result.code == 0 and "什么都没有删除" in result.out, result
    assert shas(ws) == before


@pytest.mark.parametrize("flag,word", [("--dry-run-value", "maybe"), ("--dry-run-value", "2"),
                                       ("--force-value", "please")])
def test_unknown_dry_run_or_force_words_are_refused(arena, flag, word):
    ws = arena / "ws"
    course_things(ws)
    before = shas(ws)
    one_line(cli("reset", "--all", flag, word), f"{'DRY_RUN' if flag == '--dry-run-value' else 'FORCE'}={word!r}")
    assert shas(ws) == before


def test_make_reset_dry_run_true_and_without_a_venv(arena):
    """`make reset DRY_RUN=true` lists only; with no .venv the system python3 runs it (no filelock needed)."""
    ws = arena / "ws"
    course_things(ws)
    before = shas(ws)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TUTORIAL_")}
    env.update({settings.WORKSPACE_ENV: str(ws), "PYTHONPATH": str(REPO_ROOT)})
    for extra in (["DRY_RUN=true"], ["DRY_RUN=bogus"], ["PY=/nonexistent/bin/python", "PYTHON=python3"]):
        result = subprocess.run(["make", "--no-print-directory", "reset", f"EXECUTED={arena / 'executed'}", *extra],
                                cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=300)
        if extra == ["DRY_RUN=true"]:
            assert result.returncode == 0 and "什么都没有删除" in result.stdout, result
            assert shas(ws) == before
        elif extra == ["DRY_RUN=bogus"]:
            assert result.returncode != 0 and "DRY_RUN='bogus'" in result.stderr, result
            assert shas(ws) == before
        else:
            assert result.returncode == 0, result.stdout + result.stderr
            assert "已释放" in result.stdout and not (ws / "checkpoints" / "tiny").exists()


@pytest.mark.parametrize("where", ["/", "repo"])
def test_a_workspace_of_the_root_or_the_repository_loses_nothing(where):
    folder = Path("/") if where == "/" else REPO_ROOT
    planned = reset.plan(folder, everything=True)
    assert [item.path for item in planned] == []


def test_output_dir_is_never_the_workspace_or_the_model(arena):
    ws = arena / "ws"
    (ws / "data").mkdir()
    (ws / "data" / "mine.json").write_text("[]", encoding="utf-8")
    before = shas(ws)
    labels = settings.PROTECTED_LABELS
    for target, phrase in ((ws, labels["workspace"]), (ws / "models" / "tiny-qwen3", labels["model_dir"]),
                           (arena, labels["workspace"])):
        one_line(cli("train", "--output-dir", str(target), "--no-resume"), phrase)
        # the fix is a folder in this workspace (the arena's ws), not the default ./workspace
        one_line(cli("train", "--output-dir", str(target), "--no-resume"),
                 f"--output-dir {workspace.shell_path(ws / 'checkpoints' / 'mine')}")
    assert shas(ws) == before


def test_a_folder_of_the_learners_is_not_moved_aside(arena):
    mine = arena / "ws" / "checkpoints" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.md").write_text("mine", encoding="utf-8")
    before = shas(mine)
    # the fix names a free folder beside it, not the workspace of a default setup
    with pytest.raises(workspace.UnsafeWriteError, match=re.escape(f"--output-dir {workspace.display_path(mine)}-run")):
        checkpoints.move_aside(mine)
    assert shas(mine) == before


# --------------------------------------------------------------------------- 2. data.source and every documented key


def test_data_source_takes_a_path_or_course(arena):
    mine = arena / "mine.json"
    mine.write_text(json.dumps(json.loads(SAMPLE.read_text(encoding="utf-8"))[::-1], ensure_ascii=False),
                    encoding="utf-8")
    spec = tiny_spec_for(overrides=[f"data.source={mine}"])
    assert spec.paths.dataset == mine.resolve()
    assert data_files.course_dataset_path(spec) == mine.resolve()
    assert tiny_spec_for(overrides=["data.source=course"]).paths.dataset == SAMPLE
    one_line(cli("train", "--set", "data.source=nope.json"), "data.source='nope.json'")
    assert str(arena / "nope.json") in cli("train", "--set", "data.source=nope.json").err   # where it looked
    one_line(cli("train", "--set", f"data.source={arena}"), f"data.source={str(arena)!r}")
    assert not (arena / "ws" / "checkpoints" / "tiny").exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_missing_data_file_stops_before_any_model_is_made(arena, monkeypatch, tiny_checkpoint, command):
    """On the full profile the model is a 16 GB download: a typo in data.source must stop before it, naming
    where the value came from (here --set)."""
    empty = arena / "empty-ws"
    monkeypatch.setenv("QWEN3_TUTORIAL_WORKSPACE", str(empty))
    extra = ("--checkpoint", str(tiny_checkpoint)) if command == "evaluate" else ()
    result = cli(command, "--set", "data.source=nope.json", *extra)
    one_line(result, "data.source='nope.json'")
    assert "tiny.yaml 加上 --set data.source=nope.json" in result.error_lines[0]
    assert not (empty / "models").exists() and not (empty / "checkpoints").exists()


@pytest.mark.parametrize("named_by", ["--checkpoint", "adapter_dir"])
def test_evaluate_says_a_mistyped_adapter_folder_before_any_model_is_made(arena, monkeypatch, named_by):
    """On the full profile the model is a 16 GB download: a typo in the adapter's path must stop before it."""
    empty = arena / "empty-ws"
    monkeypatch.setenv("QWEN3_TUTORIAL_WORKSPACE", str(empty))
    if named_by == "adapter_dir":
        monkeypatch.setenv("QWEN3_TUTORIAL_ADAPTER_DIR", str(arena / "nope"))
    result = cli("evaluate", *(["--checkpoint", str(arena / "nope")] if named_by == "--checkpoint" else []))
    one_line(result, "nope")
    assert not (empty / "models").exists()


@pytest.mark.parametrize("wrong", ["a-file.txt", "empty-folder"])
def test_a_wrong_adapter_dir_setting_says_where_it_came_from_and_the_way_back(arena, monkeypatch, wrong):
    (arena / "a-file.txt").write_text("mine", encoding="utf-8")
    (arena / "empty-folder").mkdir()
    monkeypatch.setenv("QWEN3_TUTORIAL_ADAPTER_DIR", str(arena / wrong))
    for command in (("evaluate",), ("inference", "ask", "你好")):
        result = cli(*command)
        one_line(result, wrong)
        assert "QWEN3_TUTORIAL_ADAPTER_DIR" in result.error_lines[0]
        assert result.error_lines[0].endswith(checkpoints.ADAPTER_WAY_BACK + "。")   # the variable is unset too


@pytest.mark.parametrize("command", [("train",), ("evaluate",), ("inference", "ask", "你好")])
def test_an_output_dir_that_is_a_file_is_said_at_once(arena, command):
    """evaluate used to offer a train command with the same --output-dir, which then failed."""
    (arena / "notes.txt").write_text("mine", encoding="utf-8")
    for given in ("notes.txt", "notes.txt/run"):
        result = cli(*command, "--output-dir", given)
        one_line(result, "notes.txt")
        assert "helpers.train" not in result.err
    assert (arena / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_a_config_whose_data_file_is_gone_still_chats_and_is_never_downloaded_over(arena, tiny_checkpoint, monkeypatch):
    """Chatting with an adapter needs no data (a classmate's config names a file on their machine); reading the
    data names the file, and a learner's missing huanhuan.json is not mistaken for the course's download."""
    gone = arena / "elsewhere" / "huanhuan.json"
    config = arena / "mine.yaml"
    raw = yaml.safe_load((REPO_ROOT / "configs" / "train" / "tiny.yaml").read_text(encoding="utf-8"))
    config.write_text(yaml.safe_dump({**raw, "data": {**raw["data"], "source": str(gone)}}), encoding="utf-8")
    result = cli("inference", "ask", "你是谁？", "--config", str(config), "--checkpoint", str(tiny_checkpoint),
                 "--max-new-tokens", "2")
    assert result.code == 0, result
    monkeypatch.setattr(data_files, "download_huanhuan", lambda *a, **k: pytest.fail("downloaded over a learner's path"))
    with pytest.raises(data_files.DatasetDownloadError, match=r"data\.source=.*huanhuan\.json'\W+.*mine\.yaml"):
        data_files.course_dataset_path(tiny_spec_for(config=str(config)))
    one_line(cli("train", "--config", str(config)), f"data.source={str(gone)!r}")
    assert not gone.exists()


def config_keys() -> set[str]:
    keys = set()
    for path in sorted((REPO_ROOT / "configs" / "train").glob("*.yaml")):
        for top, value in yaml.safe_load(path.read_text(encoding="utf-8")).items():
            keys |= {f"{top}.{key}" for key in value} if isinstance(value, dict) else {top}
    import dataclasses

    for section, schema in (("data", spec_module.DataSpec), ("lora", spec_module.LoraSpec),
                            ("swanlab", spec_module.SwanLabSpec)):
        keys |= {f"{section}.{field.name}" for field in dataclasses.fields(schema)}
    return keys | set(spec_module.TOP_LEVEL_KEYS) - {"data", "lora", "training", "swanlab"}


#: another valid value of each key (applied to configs/train/tiny.yaml)
OTHER = {"profile": "tiny-qlora", "batching": "padded", "quantization": "nf4", "output_dir": "workspace/checkpoints/x",
         "data.max_rows": 4, "data.max_length": 16, "data.system_prompt": "你是助手", "data.eval_fraction": 0.5,
         "data.split_seed": 7, "lora.r": 4, "lora.lora_alpha": 8, "lora.lora_dropout": 0.0,
         "lora.target_modules": "[q_proj]", "training.per_device_train_batch_size": 2,
         "training.gradient_accumulation_steps": 3, "training.num_train_epochs": 2, "training.max_steps": 3,
         "training.learning_rate": 1.0e-4, "training.lr_scheduler_type": "constant", "training.warmup_steps": 5,
         "training.logging_steps": 3, "training.save_steps": 4, "training.save_total_limit": 1,
         "training.eval_strategy": "epoch", "training.eval_steps": 4, "training.activation_checkpointing": True,
         "training.bf16": True, "training.seed": 1, "swanlab.project": "other", "swanlab.experiment_name": "other",
         "swanlab.enabled": False, "swanlab.mode": "online", "kernels": "liger",
         "training.activation_checkpointing_kwargs": "{use_reentrant: true}", "training.logging_first_step": False,
         "training.save_strategy": "epoch", "training.per_device_eval_batch_size": 2,
         "training.metric_for_best_model": "loss"}


def behaviour(spec, tokenizer) -> dict:
    """What each section's consumer makes of the spec: the data it reads, splits and encodes, the LoRA config,
    the TrainingArguments, the collator, the quantization, SwanLab's init arguments and the run folder."""
    from helpers import data, models, train

    records = json.loads(Path(spec.paths.dataset).read_text(encoding="utf-8"))
    train_rows, held, _ = data_files.split_records(spec, records) if spec.data.eval_fraction < 1 else ([], [], None)
    samples, _ = data.encode_records(train_rows[:4], tokenizer, spec.data.system_prompt, spec.data.max_length)
    said = io.StringIO()
    with contextlib.redirect_stdout(said):      # a setting this machine cannot honour is said (bf16 on a CPU)
        args = train.training_arguments(spec).to_dict()
    return {"rows": [r["instruction"] for r in train_rows], "held": [r["instruction"] for r in held],
            "samples": [s["input_ids"] for s in samples], "lora": models.lora_config(spec.lora).to_dict(),
            "args": args, "collator": type(train.make_collator(spec.batching, tokenizer)).__name__,
            "quantization": repr(models.quantization_config(spec)) if spec.quantization else None,
            "swanlab": (spec.swanlab.project, spec.swanlab.experiment_name, spec.swanlab.enabled),
            "profile": spec.profile.name, "run_dir": str(spec.paths.run_dir), "dataset": str(spec.paths.dataset),
            "said": said.getvalue()}


def test_every_documented_key_changes_behaviour_or_is_refused(arena, tokenizer):
    mine = arena / "mine.json"
    mine.write_text(json.dumps(json.loads(SAMPLE.read_text(encoding="utf-8"))[::-1], ensure_ascii=False),
                    encoding="utf-8")
    other = {**OTHER, "data.source": str(mine)}
    tiny = REPO_ROOT / "configs" / "train" / "tiny.yaml"
    baseline = behaviour(tiny_spec_for(config=str(tiny)), tokenizer)
    unread = []
    for key in sorted(config_keys()):
        assert key in other, f"no other value for {key}: add one to OTHER"
        try:
            changed = behaviour(tiny_spec_for(config=str(tiny), overrides=[f"{key}={other[key]}"]), tokenizer)
        except spec_module.SpecError:
            continue     # refused: fine
        if changed == baseline:
            unread.append(key)
    assert unread == []


# --------------------------------------------------------------------------- 3. splits


def test_split_never_writes_over_its_input_or_a_learners_file(arena):
    mydir = arena / "mydir"
    mydir.mkdir()
    (mydir / "split.json").write_text(SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    before = shas(mydir)
    one_line(cli("data", "split", "mydir/split.json", "mydir"), "mydir/split.json")
    assert shas(mydir) == before
    out = arena / "out"
    out.mkdir()
    (out / "train.json").write_text("my own", encoding="utf-8")
    before = shas(out)
    one_line(cli("data", "split", str(SAMPLE), "out"), "train.json")
    assert shas(out) == before


def test_a_split_into_a_linked_folder_writes_into_the_folder_and_keeps_the_link(arena):
    real = arena / "S 结果"
    real.mkdir()
    (arena / "slink").symlink_to(real, target_is_directory=True)
    result = cli("data", "split", str(SAMPLE), "slink/")
    assert result.code == 0, result
    assert (arena / "slink").is_symlink() and {"train.json", "eval.json", "split.json"} <= set(os.listdir(real))
    assert not list(arena.glob("*.partial"))
    (arena / "dangling").symlink_to(arena / "nowhere", target_is_directory=True)   # a link to nothing: one line
    broken = cli("data", "split", str(SAMPLE), "dangling")
    one_line(broken, "dangling 是一个链接")
    assert "nowhere" in broken.error_lines[0]
    assert (arena / "dangling").is_symlink() and not (arena / "nowhere").exists()


def test_split_is_one_unit_on_a_full_disk(arena, monkeypatch):
    assert cli("data", "split", str(SAMPLE), "out").code == 0
    before = shas(arena / "out")
    monkeypatch.setattr(Path, "write_text", fail_with(errno.ENOSPC, after=1)(Path.write_text))
    result = cli("data", "split", str(SAMPLE), "out", "--seed", "7")
    monkeypatch.undo()
    one_line(result, "磁盘满了")
    assert shas(arena / "out") == before        # the old split whole: no new train file beside an old eval file
    assert not (arena / "out.partial").exists()


@pytest.mark.parametrize("rows,fraction,phrase", [(10, "0.05", "留出 0 条"),
                                                  (1, "0.9", "训练 0 条")])
def test_a_split_side_of_zero_rows_stops_with_the_numbers(arena, rows, fraction, phrase):
    small = arena / "small.json"
    small.write_text(json.dumps(json.loads(SAMPLE.read_text(encoding="utf-8"))[:rows], ensure_ascii=False),
                     encoding="utf-8")
    result = cli("data", "split", "small.json", "out", "--eval-fraction", fraction)
    one_line(result, phrase)
    assert f"{rows} 条数据" in result.err and not (arena / "out").exists()
    assert f"--eval-fraction={fraction}" in result.err and "data.eval_fraction" not in result.err   # the flag it has


def test_a_data_file_no_longer_than_max_rows_names_max_rows(arena):
    """tiny.yaml trains on the first 8 rows (max_rows: 8); a learner's 5-row file leaves nothing to hold out,
    and no eval_fraction could change that: the fix is max_rows."""
    small = arena / "small.json"
    small.write_text(json.dumps(json.loads(SAMPLE.read_text(encoding="utf-8"))[:5], ensure_ascii=False),
                     encoding="utf-8")
    for fraction in ("0.2", "0.5"):
        one_line(cli("train", "--set", f"data.source={small}", "--set", f"data.eval_fraction={fraction}"),
                 "data.max_rows=null")
    assert not (arena / "ws" / "checkpoints" / "tiny").exists()


def test_training_with_a_held_out_side_of_zero_rows_stops_before_training(arena):
    small = arena / "small.json"
    small.write_text(json.dumps(json.loads(SAMPLE.read_text(encoding="utf-8"))[:10], ensure_ascii=False),
                     encoding="utf-8")
    one_line(cli("train", "--set", f"data.source={small}", "--set", "data.max_rows=null",
                 "--set", "data.eval_fraction=0.05"), "留出 0 条")
    assert not (arena / "ws" / "checkpoints" / "tiny").exists()


def test_an_adapter_from_elsewhere_gets_a_report_of_its_own(tmp_path):
    from helpers.runs import report_path

    run = tmp_path / "ws" / "checkpoints" / "tiny"
    assert report_path(run, run / "checkpoint-50") == run / "eval_report.json"
    mine, theirs = tmp_path / "a" / "checkpoint-50", tmp_path / "b" / "checkpoint-50"
    assert report_path(run, mine) != report_path(run, theirs)
    assert report_path(run, mine).parent == run and "checkpoint-50" in report_path(run, mine).name


# --------------------------------------------------------------------------- 5. one line for every known mistake


SETTINGS_CASES = [("gbk", "workspace: 工作目录\n".encode("gbk"), "UTF-8"),
                  ("number", b"workspace: 123\n", 'workspace: "..."'),
                  ("list", b"workspace: [a, b]\n", 'workspace: "..."'),
                  ("yes", b"workspace: yes\n", 'workspace: "..."')]


@pytest.mark.parametrize("name,content,phrase", SETTINGS_CASES, ids=[c[0] for c in SETTINGS_CASES])
def test_a_broken_settings_file_is_one_line(arena, name, content, phrase):
    (arena / "course-settings.yaml").write_bytes(content)
    before = sha(arena / "course-settings.yaml")
    one_line(cli("environment", "check"), phrase)
    result = cli("environment", "check", "--json")
    one_line(result, phrase)
    assert phrase in json.loads(result.out)["error"] and json.loads(result.out)["ok"] is False
    assert sha(arena / "course-settings.yaml") == before
    assert not any(REPO_ROOT.glob("123")) and not (REPO_ROOT / "True").exists()


def test_a_settings_file_that_is_a_folder_or_unreadable_is_one_line(arena):
    (arena / "course-settings.yaml").mkdir()
    one_line(cli("train"), "course-settings.yaml 是文件夹")
    (arena / "course-settings.yaml").rmdir()
    (arena / "course-settings.yaml").symlink_to("course-settings.yaml")   # a loop: no user can read it
    one_line(cli("train"), "无法读取")


def test_setup_refuses_an_unknown_profile(arena):
    one_line(cli("environment", "setup", "--profile", "bogus"), "--profile 'bogus'")
    assert not (arena / "course-settings.yaml").exists()
    # auto (full with CUDA, else tiny) is a value the README lists and a settings file may hold
    assert cli("environment", "setup", "--profile", "auto").code == 0
    assert settings.read_settings_file(arena / "course-settings.yaml")["profile"] == "auto"
    spec = spec_module.build_spec(settings_file=arena / "course-settings.yaml", env={}, cuda=False)
    assert spec.profile.name == "tiny" and "auto" in spec.origin["profile"]   # the file's auto, read back on a CPU


@pytest.mark.parametrize("argv,phrase", [(("--max-new-tokens", "0"), "至少为 1，实际是 0"),
                                         (("--max-new-tokens", "-5"), "至少为 1，实际是 -5")])
def test_ask_refuses_bad_generation_numbers(arena, argv, phrase):
    result = cli("inference", "ask", "你是谁？", *argv)
    assert result.code == 2 and phrase in result.err and "Traceback" not in result.err
    assert "参数 --max-new-tokens：" in result.err and "argument" not in result.err   # argparse's prefix too


def test_ask_refuses_text_that_is_not_utf8(arena):
    message = b"\xff\xfe\xc4\xe3".decode("utf-8", "surrogateescape")   # what a GBK terminal hands Python
    result = cli("inference", "ask", message)
    assert result.code == 2 and "LANG=C.UTF-8" in result.err and "Traceback" not in result.err


def test_paths_that_are_not_utf8_are_one_line_in_every_command(arena, monkeypatch):
    """A GBK terminal: a path argument of any command, or a relative path typed in a folder whose name is not
    UTF-8; the course's folder markers keep such names as the file system has them."""
    gbk = "工作区".encode("gbk").decode("utf-8", "surrogateescape")
    for args in (("train", "--output-dir", f"run-{gbk}"), ("inference", "export", "--target", gbk),
                 ("evaluate", "--output-dir", gbk), ("data", "check", gbk), ("environment", "setup", "--dataset", gbk)):
        one_line(cli(*args), "LANG=C.UTF-8")
    assert not any(gbk in p.name for p in arena.rglob("*"))     # refused before anything was made
    folder = arena / gbk
    folder.mkdir()
    monkeypatch.chdir(folder)
    one_line(cli("environment", "setup", "--workspace", "ws"), "LANG=C.UTF-8")   # resolved to a path with the bytes
    made = course_folder(arena / f"made-{gbk}" / "inner", whole=False)
    record_made(made / f"file-{gbk}").write_text("x", encoding="utf-8")
    assert f"file-{gbk}" in workspace.made_names(made) and workspace.made_names(made.parent) == {"."}


def test_a_home_folder_typo_is_one_line(arena, monkeypatch):
    """`~autodl-tmp/...` typed for `~/autodl-tmp/...` names no user's home: one line with the right spelling."""
    one_line(cli("environment", "setup", "--workspace", "~no-such-user-x/ws"), "~/no-such-user-x/ws")
    for args in (("train", "--output-dir", "~no-such-user-x/run"), ("data", "check", "~no-such-user-x/d.json"),
                 ("data", "encode", str(SAMPLE), "~no-such-user-x/d.jsonl"), ("inference", "export", "--target", "~no-such-user-x/m")):
        one_line(cli(*args), "~/no-such-user-x/")
    assert not list(arena.glob("~*"))       # no folder named "~no-such-user-x" where the command ran
    monkeypatch.setenv(settings.WORKSPACE_ENV, "~no-such-user-x/ws")
    one_line(cli("download"), "~/no-such-user-x/ws")
    one_line(cli("environment", "check"), "~/no-such-user-x/ws")


def test_a_workspace_that_is_a_file_or_not_writable_is_one_line(arena, monkeypatch):
    mkdir = Path.mkdir
    (arena / "file").write_text("x", encoding="utf-8")
    one_line(cli("data", "encode", str(SAMPLE), "file/out.jsonl"), "是文件，不是文件夹")
    one_line(cli("data", "split", str(SAMPLE), "file/out"), "是文件，不是文件夹")
    monkeypatch.setenv(settings.WORKSPACE_ENV, str(arena / "file"))
    one_line(cli("download"), "是文件，不是文件夹")
    one_line(cli("train"), "是文件，不是文件夹")
    for command in (("evaluate",), ("inference", "ask", "你是谁？")):   # they offered a train command that failed
        result = cli(*command)
        one_line(result, "是文件，不是文件夹")
        assert "helpers.train" not in result.err and "environment setup --workspace" in result.err
        assert f"unset {settings.WORKSPACE_ENV}" in result.err     # the variable would beat what setup writes
    assert (arena / "file").read_text(encoding="utf-8") == "x"
    monkeypatch.setenv(settings.WORKSPACE_ENV, str(arena / "locked"))
    monkeypatch.setattr(Path, "mkdir", fail_with(errno.EACCES)(Path.mkdir))   # root ignores modes: refuse the call
    one_line(cli("train"), "Permission denied")
    one_line(cli("data", "split", str(SAMPLE), "locked-out"), "Permission denied")
    monkeypatch.setattr(Path, "mkdir", fail_with(errno.EROFS)(Path.mkdir))    # a read-only disk (AutoDL's /autodl-pub)
    one_line(cli("train"), "Read-only file system")
    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", fail_with(errno.EROFS)(tempfile.mkstemp))
    one_line(cli("data", "encode", str(SAMPLE), str(arena / "out.jsonl")), "Read-only file system")
    assert not (arena / "out.jsonl").exists()


def test_disk_full_during_a_checkpoint_save_is_one_line(arena, monkeypatch):
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "_save_checkpoint", fail_with(errno.ENOSPC)(Trainer._save_checkpoint))
    one_line(cli("train", "--set", "training.max_steps=2", "--set", "training.save_steps=1",
                 "--set", "data.eval_fraction=0"), "checkpoints/tiny")


def test_bf16_on_cpu_is_said_in_one_line(capsys):
    from helpers import train

    assert train.mixed_precision(tiny_spec_for(overrides=["training.bf16=true"])) == (False, False)
    said = [line for line in capsys.readouterr().out.splitlines() if "bf16" in line]
    assert len(said) == 1 and "fp32" in said[0]


@pytest.mark.parametrize("argv", [(), ("--recipe", "auto")], ids=["plain", "recipe-auto"])
def test_profile_full_on_cpu_stops_before_the_download_and_small_does_not(arena, monkeypatch, argv):
    from helpers import train

    def reached(spec):  # stands in for the download
        raise CourseError(f"prepare_model({spec.profile.name})")

    monkeypatch.setattr(train, "prepare_model", reached)
    monkeypatch.setenv(settings.PROFILE_ENV, "full")
    result = cli("train", *argv)
    one_line(result, "要训练 Qwen3-8B，这需要 CUDA GPU")
    # the profile came from the variable: the fix changes the setting, not the config (that would contradict it)
    assert "setup --profile tiny" in result.err and "--config configs/train/tiny.yaml" not in result.err
    monkeypatch.delenv(settings.PROFILE_ENV)
    result = cli("train", "--config", "configs/train/qwen3-8b.yaml", *argv)
    one_line(result, "要训练 Qwen3-8B，这需要 CUDA GPU")
    assert "--config configs/train/tiny.yaml" in result.err
    monkeypatch.setenv(settings.PROFILE_ENV, "small")   # meant for a CPU: it goes on to get its model
    one_line(cli("train", *argv), "prepare_model(small)")


@pytest.mark.parametrize("profile", ["full", "random8b"])
def test_evaluate_and_train_of_the_8b_on_cpu_stop_before_anything_is_fetched(arena, monkeypatch, profile):
    monkeypatch.setenv(settings.PROFILE_ENV, profile)
    one_line(cli("evaluate"), "要评估 Qwen3-8B，这需要 CUDA GPU")
    one_line(cli("train"), "要训练 Qwen3-8B，这需要 CUDA GPU")
    assert not (arena / "ws" / "models" / "modelscope").exists() and not (arena / "ws" / "models" / "Qwen3-8B-random").exists()


def test_rerunning_a_finished_run_keeps_its_summary(arena, monkeypatch):
    from helpers import train

    argv = ("train", "--set", "training.save_steps=2", "--set", "data.eval_fraction=0")
    assert cli(*argv, "--set", "training.max_steps=2").code == 0
    summary = arena / "ws" / "checkpoints" / "tiny" / "run_summary.json"
    before = sha(summary)
    loaded = train.load_model_for_training
    # nothing left to train: the command stops before the model loads (and before a SwanLab run opens)
    monkeypatch.setattr(train, "load_model_for_training", lambda spec: pytest.fail("the model was loaded"))
    result = cli(*argv, "--set", "training.max_steps=2")
    assert result.code == 0, result
    assert sha(summary) == before and "0.0000" not in result.out
    monkeypatch.setattr(train, "load_model_for_training", loaded)   # training longer is a resume
    longer = cli(*argv, "--set", "training.max_steps=4")
    assert longer.code == 0 and "第 3–4 步的平均" in longer.out    # the Trainer's loss covers this call's steps
    assert json.loads(summary.read_text(encoding="utf-8"))["resumed_from_step"] == 2
    assert json.loads(summary.read_text(encoding="utf-8"))["global_step"] == 4
    # killed after its last checkpoint, before the summary was written: the rerun writes it and the plot from the
    # checkpoint's state, still without loading the model (or opening a SwanLab run that would record nothing)
    plot = arena / "ws" / json.loads(summary.read_text(encoding="utf-8"))["plot"]
    summary.unlink()
    plot.unlink()
    monkeypatch.setattr(train, "load_model_for_training", lambda spec: pytest.fail("the model was loaded"))
    assert cli(*argv, "--set", "training.max_steps=4").code == 0
    rebuilt = json.loads(summary.read_text(encoding="utf-8"))
    assert (rebuilt["global_step"], rebuilt["train_loss"], rebuilt["swanlab_run"]) == (4, None, None) and plot.is_file()


def test_a_run_trained_to_its_last_epoch_is_finished(tmp_path):
    from types import SimpleNamespace

    from helpers import runs

    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoint-60"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 60, "epoch": 30.0, "log_history": []}))
    (run_dir / runs.RUN_SUMMARY).write_text(json.dumps({"global_step": 60, "checkpoint": "checkpoint-60"}))
    spec = SimpleNamespace(paths=SimpleNamespace(run_dir=run_dir, workspace=tmp_path))
    assert runs.finished_summary(spec, checkpoint, SimpleNamespace(max_steps=-1, num_train_epochs=30)) is not None
    assert runs.finished_summary(spec, checkpoint, SimpleNamespace(max_steps=-1, num_train_epochs=31)) is None
    assert runs.finished_summary(spec, checkpoint, SimpleNamespace(max_steps=80, num_train_epochs=30)) is None
    assert runs.finished_summary(spec, None, SimpleNamespace(max_steps=60, num_train_epochs=30)) is None


def test_printed_commands_survive_spaces_and_chinese(tmp_path):
    from helpers import tracking

    folder = tmp_path / "我的 运行" / "run-1"
    assert shlex.split(tracking.sync_command(folder)) == ["swanlab", "sync", str(folder.resolve())]
    home = Path.home() / "a b" / "运行"
    assert shlex.split(tracking.sync_command(home))[2] == "~/" + "a b/运行"


def test_written_files_get_the_users_mode(tmp_path):
    old = os.umask(0o022)
    try:
        split = data_files.grouped_split(json.loads(SAMPLE.read_text(encoding="utf-8")), 0.25)
        written = data_files.save_split(split, tmp_path / "split", source=SAMPLE)
        written.append(data_files.save_encoded([], tmp_path / "train.jsonl"))
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o644)}


def test_invisible_characters_are_a_warning_with_row_and_field(arena):
    from helpers import validation

    rows = json.loads(SAMPLE.read_text(encoding="utf-8"))[:5]
    rows[1]["output"] = "臣妾\x07做不到\x1b[31m"
    rows[3]["instruction"] = "皇上\u202e吉祥"
    rows[4]["input"] = "嬛\ufeff嬛"
    (arena / "hidden.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    report = validation.load_records(arena / "hidden.json").report
    assert sorted((p.row, p.field) for p in report.warnings if "U+" in p.reason) == \
        [(2, "output"), (4, "instruction"), (5, "input")]
    assert "U+202E" in next(p.reason for p in report.warnings if p.row == 4)


# --------------------------------------------------------------------------- export and the adapter's recipe


def test_export_keeps_a_learners_file_and_refuses_a_foreign_partial(arena, tiny_checkpoint, monkeypatch):
    assert cli("inference", "export", "--checkpoint", str(tiny_checkpoint)).code == 0
    export = arena / "ws" / "export" / "tiny-merged"
    (export / "NOTES.md").write_text("我的模型卡", encoding="utf-8")
    notes = sha(export / "NOTES.md")
    result = cli("inference", "export", "--checkpoint", str(tiny_checkpoint))
    assert result.code == 0, result
    assert sha(export / "NOTES.md") == notes and (export / "model.safetensors").is_file()
    (export / workspace.MADE_MARKER).write_text(".\n*\n", encoding="utf-8")   # as an older course marked it
    (export / "tokenizer-notes.md").write_text("我的笔记", encoding="utf-8")     # a name like an export file's
    result = cli("inference", "export", "--checkpoint", str(tiny_checkpoint))
    assert result.code == 0, result
    assert sha(export / "NOTES.md") == notes and (export / "tokenizer-notes.md").is_file()
    assert {"NOTES.md", "tokenizer-notes.md"}.isdisjoint(workspace.made_names(export))

    (arena / "mymodel.partial").mkdir()
    (arena / "mymodel.partial" / "keep.txt").write_text("mine", encoding="utf-8")
    before = shas(arena / "mymodel.partial")
    one_line(cli("inference", "export", "--checkpoint", str(tiny_checkpoint), "--target", "mymodel"),
             "mymodel.partial")
    assert shas(arena / "mymodel.partial") == before and not (arena / "mymodel").exists()

    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", fail_with(errno.ENOSPC)(PreTrainedModel.save_pretrained))
    one_line(cli("inference", "export", "--checkpoint", str(tiny_checkpoint), "--target", "full"), "磁盘满了")
    assert not (arena / "full.partial").exists() and not (arena / "full").exists()


def test_a_model_loaded_from_an_export_chats_with_the_system_prompt_it_was_trained_with(arena, tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    from helpers.export import EXPORT_MARKER
    from helpers.inference import trained_system_prompt

    assert cli("inference", "export", "--checkpoint", str(tiny_checkpoint), "--target", "mine").code == 0
    marker = arena / "mine" / EXPORT_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text(encoding="utf-8")), "system_prompt": "你是华妃"},
                                 ensure_ascii=False), encoding="utf-8")
    assert trained_system_prompt(AutoModelForCausalLM.from_pretrained(arena / "mine")) == "你是华妃"
    marker.write_text("{broken", encoding="utf-8")   # a damaged marker: the course's default, never a traceback
    assert trained_system_prompt(AutoModelForCausalLM.from_pretrained(arena / "mine")) == spec_module.DEFAULT_SYSTEM_PROMPT


@pytest.mark.parametrize("sample", [False, True])
def test_ask_says_when_thinking_ran_out_of_tokens_and_when_it_decodes_greedily(arena, tiny_checkpoint, monkeypatch,
                                                                               sample):
    from helpers import inference
    from helpers.data import split_thinking

    monkeypatch.setattr(inference, "generate", lambda *args, **kwargs: split_thinking("<think>\n皇上问我是谁，我要"))
    result = cli("inference", "ask", "你是谁？", "--thinking", "--max-new-tokens", "8",
                 "--checkpoint", str(tiny_checkpoint), *(["--sample"] if sample else []))
    assert result.code == 0, result
    assert "</think>" not in result.out and "--max-new-tokens 8" in result.err
    assert ("--sample" in result.out) is not sample


def test_a_failed_export_keeps_the_old_one_and_blocks_nothing(arena, tiny_checkpoint, monkeypatch):
    from helpers import export

    assert cli("inference", "export", "--checkpoint", str(tiny_checkpoint)).code == 0
    folder = arena / "ws" / "export" / "tiny-merged"
    before = shas(folder)

    def out_of_memory(spec):
        raise MemoryError("the merge ran out of RAM")

    with monkeypatch.context() as patch:
        patch.setattr(export, "_base_for_merge", out_of_memory)
        with pytest.raises(MemoryError):
            cli("inference", "export", "--checkpoint", str(tiny_checkpoint))
    assert shas(folder) == before                      # the merge fails before the old export is touched
    workspace.clear_course_files(folder, legacy=export.EXPORT_FILES)   # what a failure while writing leaves
    result = cli("inference", "export", "--checkpoint", str(tiny_checkpoint))
    assert result.code == 0, result
    assert (folder / "model.safetensors").is_file() and (folder / export.EXPORT_MARKER).is_file()


def test_the_adapters_recipe_wins_over_the_config(arena, tiny_checkpoint):
    recipe = json.loads((tiny_checkpoint / checkpoints.RECIPE_FILE).read_text(encoding="utf-8"))
    assert recipe["quantization"] is None
    qlora = tiny_spec_for(config=str(REPO_ROOT / "configs" / "train" / "tiny-qlora.yaml"))
    assert qlora.quantization == "nf4"
    corrected, notes = checkpoints.spec_as_trained(qlora, tiny_checkpoint)
    assert corrected.quantization is None and len(notes) == 1 and "quantization=None" in notes[0]
    result = cli("inference", "ask", "你是谁？", "--config", "configs/train/tiny-qlora.yaml",
                 "--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "2")
    assert result.code == 0, result
    assert "4-bit NF4" not in result.out + result.err and all(
        word in result.out + result.err for word in ("quantization=None", "quantization=nf4", checkpoints.RECIPE_FILE))


def test_evaluate_refuses_zero_held_out_rows(arena, tiny_checkpoint):
    result = cli("evaluate", "--checkpoint", str(tiny_checkpoint), "--set", "data.eval_fraction=0.01")
    one_line(result, "留出 0 条")
    assert not list((arena / "ws").rglob("eval_report*.json"))


def test_the_made_marker_is_never_a_learners_file(tmp_path):
    """Python's own Path.mkdir is what the course replaced: the marker exists only in folders the course made."""
    existing = tmp_path / "mine"
    existing.mkdir()
    course_folder(existing)
    assert not (existing / MADE_MARKER).exists()
    assert (course_folder(tmp_path / "new" / "run") / MADE_MARKER).read_text(encoding="utf-8").split() == ["*", "."]
    assert sys.version_info >= (3, 10)


def test_ask_and_export_prepare_the_tiny_model_in_an_empty_workspace(arena, tiny_checkpoint, monkeypatch):
    """The README: each command prepares what it needs. A classmate's adapter and nothing else: ask builds the
    tiny model itself; a missing adapter stops before anything is built."""
    empty = arena / "empty-ws"
    monkeypatch.setenv("QWEN3_TUTORIAL_WORKSPACE", str(empty))
    one_line(cli("inference", "ask", "你是谁？", "--checkpoint", str(arena / "nope")), "nope 不存在")
    assert not (empty / "models").exists()
    result = cli("inference", "ask", "你是谁？", "--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "2")
    assert result.code == 0, result
    assert (empty / "models" / "tiny-qwen3" / "model.safetensors").is_file()
