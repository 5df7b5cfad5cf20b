"""Training: it learns (tiny profile), SwanLab records match the Trainer, it survives a kill, the
CLI works in a fresh workspace, and the recipe's switches (grouped batching, resume) do what they say."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import checkpoints, models, runs, train
from helpers.workspace import REPO_ROOT, sha256_file
from tests.cli_runner import run_cli
from tests.conftest import stand_in_weights, tiny_spec_for
from tests.memorised import MEMORISED_ANSWER as MEMORISED


def test_loss_falls_clearly(memorised_run):
    _, summary = memorised_run
    first, last = runs.loss_summary(summary["log_history"])
    print(f"tiny memorisation: loss {first:.3f} -> {last:.3f}")
    assert first > 10.0, "a random model starts near or above ln(151936) = 11.9"
    assert last < 1.0 and last < first / 10


def test_greedy_decoding_reproduces_the_answers(memorised_run):
    from peft import PeftModel

    from helpers import data, data_files, validation
    from helpers.models import load_base_model, load_tokenizer

    spec, summary = memorised_run
    tokenizer = load_tokenizer(spec)
    model = PeftModel.from_pretrained(load_base_model(spec), summary["checkpoint"]).eval()
    records = validation.load_records(data_files.course_dataset_path(spec)).records[: spec.data.max_rows]
    assert len(records) == 8 and records[0]["output"] == MEMORISED
    for record in records:
        prompt = data.render_prompt(tokenizer, data.build_messages(record["instruction"]))
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=64, do_sample=False)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        assert new[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>"), "generation must stop at <|im_end|>"
        assert tokenizer.decode(new[:-1]) == record["output"]


def test_swanlab_loss_on_disk_equals_trainer_history(memorised_run):
    from helpers.tracking import read_scalars

    _, summary = memorised_run
    assert summary["swanlab_run"] is not None and summary["swanlab_mode"] == "offline"
    logged = read_scalars(summary["swanlab_run"])["train/loss"]
    history = [(e["step"], e["loss"]) for e in summary["log_history"] if "loss" in e]
    assert len(history) > 10
    assert [s for s, _ in logged] == [s for s, _ in history]
    assert [v for _, v in logged] == pytest.approx([v for _, v in history], rel=1e-6, abs=0)


def test_final_checkpoint_is_complete_and_proves_itself(memorised_run):
    spec, summary = memorised_run
    checkpoint = summary["checkpoint"]
    assert checkpoints.checkpoint_step(checkpoint) == summary["global_step"]
    assert checkpoints.damaged_file(checkpoint) is None
    marker = json.loads((checkpoint / checkpoints.COMPLETE_MARKER).read_text())
    assert {"adapter_model.safetensors", "adapter_config.json", checkpoints.RECIPE_FILE} <= set(marker["files"])
    recipe = json.loads((checkpoint / checkpoints.RECIPE_FILE).read_text())
    assert recipe["system_prompt"] == spec.data.system_prompt and recipe["max_length"] == spec.data.max_length
    assert summary["effective_batch_size"] == \
        spec.training["per_device_train_batch_size"] * spec.training["gradient_accumulation_steps"]
    saved = json.loads((spec.paths.run_dir / runs.RUN_SUMMARY).read_text())
    assert str(REPO_ROOT) not in json.dumps(saved), "the shared run summary holds no machine path"
    assert saved["dataset_sha256"] == sha256_file(spec.paths.dataset)   # what evaluate compares its data with


def test_half_written_checkpoint_is_never_picked(tmp_path):
    good = tmp_path / "checkpoint-10"
    good.mkdir()
    (good / "adapter_model.safetensors").write_bytes(b"x")
    checkpoints.write_marker(good, 10)
    half = tmp_path / "checkpoint-20"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"x")  # no marker: the save was interrupted
    assert checkpoints.find_latest_checkpoint(tmp_path) == good


# --------------------------------------------------------------------------- resume_point


@pytest.fixture
def run_with_two_checkpoints(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    for step in (4, 9):
        shutil.copytree(tiny_checkpoint, run / f"checkpoint-{step}")
    return run


def test_resume_point_given_a_path_is_verified(run_with_two_checkpoints, capsys):
    run = run_with_two_checkpoints
    spec = tiny_spec_for(run)
    assert runs.resume_point(spec, run / "checkpoint-9") == run / "checkpoint-9"
    assert runs.resume_point(spec, str(run / "checkpoint-4")) == run / "checkpoint-4"
    assert runs.resume_point(spec, True) == run / "checkpoint-9"
    assert runs.resume_point(spec, None) is None and runs.resume_point(spec, False) is None

    weights = run / "checkpoint-9" / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 1  # one flipped bit, same size
    weights.write_bytes(bytes(raw))
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"checkpoint-9\W.*adapter_model\.safetensors .*sha256"):
        runs.resume_point(spec, run / "checkpoint-9")
    # asked for no particular one: the damaged one is named and skipped, the previous one used
    capsys.readouterr()
    assert runs.resume_point(spec, True) == run / "checkpoint-4"
    assert "checkpoint-9" in capsys.readouterr().out and re.search(r"adapter_model\.safetensors .*sha256",
                                                                   "".join(checkpoints.latest_good_checkpoint(run).notes()))

    weights.write_bytes(bytes(raw[:100]))
    with pytest.raises(checkpoints.CheckpointError, match=r"adapter_model\.safetensors\D+100\D"):
        runs.resume_point(spec, run / "checkpoint-9")
    (run / "checkpoint-4" / checkpoints.COMPLETE_MARKER).unlink()
    with pytest.raises(checkpoints.CheckpointError, match="checkpoint_complete"):
        runs.resume_point(spec, run / "checkpoint-4")


def test_a_checkpoint_named_by_itself_is_the_runs(run_with_two_checkpoints, tmp_path, monkeypatch):
    """--checkpoint checkpoint-4 (as --help says: checkpoint-N or a run folder) means the run's own checkpoint-4,
    wherever the command runs; a wrong name lists the run's checkpoints."""
    run = run_with_two_checkpoints
    spec = tiny_spec_for(run)
    monkeypatch.chdir(tmp_path)
    assert checkpoints.resolve_checkpoint(spec, "checkpoint-4")[0] == run / "checkpoint-4"
    with pytest.raises(checkpoints.MissingArtifactError, match=r"checkpoint-7 .*checkpoint-4、checkpoint-9"):
        checkpoints.resolve_checkpoint(spec, "checkpoint-7")


def test_resuming_with_other_settings_stops_before_training(run_with_two_checkpoints, tmp_path):
    """A run resumed with another LoRA shape would crash loading the checkpoint, and one resumed with another base
    (QLoRA), other data or another learning rate would mix two recipes in one run: both stop with the two ways on.
    Training longer (max_steps, epochs) is a resume like any other."""
    run = run_with_two_checkpoints
    assert runs.resume_point(tiny_spec_for(run, overrides=["training.max_steps=99"]), True) == run / "checkpoint-9"
    for overrides, config, changed in ((["lora.r=16"], None, "lora.r: 8 → 16"),
                                       ([], "configs/train/tiny-qlora.yaml", "quantization: None → 'nf4'"),
                                       (["data.max_rows=4"], None, "data.max_rows: 8 → 4"),
                                       (["training.learning_rate=0.5"], None, "training.learning_rate")):
        spec = tiny_spec_for(run, config=config, overrides=overrides)
        for resume in (True, run / "checkpoint-4"):
            with pytest.raises(checkpoints.CheckpointError) as refused:
                runs.resume_point(spec, resume)
            assert changed in str(refused.value) and "--no-resume" in str(refused.value)
            assert "--output-dir" in str(refused.value)

    done = run_cli("train", ["--config", "configs/train/tiny.yaml", "--output-dir", str(run), "--set", "lora.r=16",
                             "--set", "swanlab=null"], env=_clean_env(HOME=str(tmp_path)), cwd=REPO_ROOT)
    assert done.code == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "lora.r: 8 → 16" in error and "Loading weights" not in done.stderr    # refused before the model loads
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-4", "checkpoint-9"]


def test_a_checkpoint_at_the_runs_last_step_is_trained_to_end(tiny_checkpoint, tmp_path):
    """Notebook 04 says so before trainer.train, which then trains nothing and reports a training loss of 0.0."""
    spec = tiny_spec_for(tmp_path / "run")
    state = runs.trained_to_end(tiny_checkpoint, train.training_arguments(spec))
    assert state is not None and state.epoch == spec.training["num_train_epochs"]   # tiny trains by epochs
    longer = tiny_spec_for(tmp_path / "run", overrides=[f"training.max_steps={state.global_step + 1}"])
    assert runs.trained_to_end(tiny_checkpoint, train.training_arguments(longer)) is None
    assert runs.trained_to_end(None, train.training_arguments(spec)) is None


def test_resuming_on_other_data_content_stops_before_training(run_with_two_checkpoints, tmp_path):
    """The data's name alone misses an edited file, a same-named file elsewhere, or another file given by
    QWEN3_TUTORIAL_DATASET (its name stays "course"): one run would be trained on two datasets."""
    run = run_with_two_checkpoints
    rows = json.loads((REPO_ROOT / "data" / "huanhuan_sample.json").read_text(encoding="utf-8"))
    rows[0]["output"] += "。"
    edited = tmp_path / "huanhuan_sample.json"
    edited.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    spec = tiny_spec_for(run, QWEN3_TUTORIAL_DATASET=str(edited))
    assert spec.to_dict()["data"] == tiny_spec_for(run).to_dict()["data"]   # the same settings by name
    for resume in (True, run / "checkpoint-4"):
        with pytest.raises(checkpoints.CheckpointError, match=r"数据文件的内容（sha256 [0-9a-f]{12}… → [0-9a-f]{12}…）"):
            runs.resume_point(spec, resume)
    assert runs.resume_point(tiny_spec_for(run), True) == run / "checkpoint-9"   # the same content resumes


# --------------------------------------------------------------------------- the recipe's switches


def test_training_arguments_follow_the_spec(tmp_path):
    spec = tiny_spec_for(tmp_path / "run")
    args = train.training_arguments(spec)
    for key in ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "logging_steps", "seed"):
        assert getattr(args, key) == spec.training[key], key
    assert args.lr_scheduler_type.value == spec.training["lr_scheduler_type"] == "cosine"
    assert Path(args.output_dir) == spec.paths.run_dir
    assert args.report_to == ["swanlab"] and args.train_sampling_strategy != "group_by_length"
    assert train.training_arguments(tiny_spec_for(tmp_path / "run", overrides=["swanlab=null"])).report_to == []
    lora = models.lora_config(spec.lora)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (spec.lora.r, spec.lora.lora_alpha, spec.lora.lora_dropout)
    assert sorted(lora.target_modules) == sorted(spec.lora.target_modules)


def test_grouped_batching_samples_by_length_and_trains(tmp_path, tiny_model_dir):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    spec = tiny_spec_for(tmp_path / "grouped", overrides=[
        "batching=grouped", "swanlab=null", "training.max_steps=3", "training.save_steps=3",
        "training.logging_steps=1", "training.disable_tqdm=true"])
    assert train.training_arguments(spec).train_sampling_strategy == "group_by_length"
    summary = train.train(spec, resume=False)
    trainer = summary["trainer"]
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    assert summary["global_step"] == 3
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    # LengthGroupedSampler puts the longest sample in the first batch (an out-of-memory shows at once)
    lengths = {i: len(s["input_ids"]) for i, s in enumerate(trainer.train_dataset)}
    first = json.loads((spec.paths.run_dir / runs.SAMPLE_LOG).read_text().splitlines()[0])["rows"]
    assert max(lengths, key=lengths.get) in first and len(first) == 4
    assert checkpoints.checkpoint_step(checkpoints.find_latest_checkpoint(spec.paths.run_dir)) == 3


# --------------------------------------------------------------------------- the command line


def _clean_env(**extra) -> dict:
    """A terminal with none of the course's variables: only what Python itself needs."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    return {**env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", **extra}


def _train_args(out: Path, *overrides: str) -> list[str]:
    return ["--config", str(REPO_ROOT / "configs/train/tiny.yaml"), "--output-dir", str(out), "--set", "swanlab=null",
            "--set", "data.max_rows=24", "--set", "training.num_train_epochs=2", "--set", "training.save_steps=3",
            "--set", "training.logging_steps=1", "--set", "training.disable_tqdm=true", *overrides]


def _train_env() -> dict:
    return dict(os.environ, QWEN3_TUTORIAL_PROFILE="tiny", PYTHONUNBUFFERED="1")


def _train_cli(out: Path, *overrides: str) -> subprocess.Popen:
    """``python -m helpers.train`` in a process of its own (one that can be killed)."""
    return subprocess.Popen([sys.executable, "-m", "helpers.train", *_train_args(out, *overrides)], cwd=REPO_ROOT,
                            env=_train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _batches(out: Path, pid: int) -> list[list[int]]:
    lines = (out / runs.SAMPLE_LOG).read_text(encoding="utf-8").splitlines()
    return [entry["rows"] for entry in map(json.loads, lines) if entry["pid"] == pid]


def test_killed_run_resumes_to_the_same_end_with_the_same_data_order(tmp_path, tiny_model_dir):
    # Reference: the same run, never interrupted (in this process).
    ref_out = tmp_path / "reference"
    ref = run_cli("train", _train_args(ref_out, "--no-resume"), env=_train_env(), cwd=REPO_ROOT)
    assert ref.code == 0, ref.output[-3000:]

    # A run killed (SIGKILL, no clean-up) right after its first complete checkpoint.
    out = tmp_path / "crashed"
    victim = _train_cli(out, "--no-resume")
    deadline = time.time() + 240
    while checkpoints.find_latest_checkpoint(out) is None:
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    victim.stdout.close()
    resumed_from = checkpoints.find_latest_checkpoint(out)
    step = checkpoints.checkpoint_step(resumed_from)
    # A checkpoint whose save was interrupted (no marker) must be ignored.
    half = out / "checkpoint-9999"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"truncated")

    resumed = _train_cli(out)
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log

    final = checkpoints.find_latest_checkpoint(out)
    reference_final = checkpoints.find_latest_checkpoint(ref_out)
    assert final.name == reference_final.name == "checkpoint-12"
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["global_step"] == 12

    # Resumed at step, in the same data order: the resumed process trained exactly the reference's
    # remaining micro-batches (the reference ran in this process).
    reference_batches = _batches(ref_out, os.getpid())
    assert len(reference_batches) > step and _batches(out, resumed.pid) == reference_batches[step:]

    # And it ends with the same adapter (same data, same RNG state restored from the checkpoint).
    from safetensors.torch import load_file

    a = load_file(final / "adapter_model.safetensors")
    b = load_file(reference_final / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_a_resumed_run_finds_its_best_checkpoint_without_a_false_warning(tmp_path, tiny_model_dir):
    """trainer_state.json names the best checkpoint by its folder name (no machine path); resuming must neither
    warn that it "does not exist anymore" nor lose track of it."""
    out = tmp_path / "run"
    common = ["--config", "configs/train/tiny.yaml", "--output-dir", str(out), "--set", "swanlab=null",
              "--set", "training.save_steps=2", "--set", "training.eval_steps=2", "--set", "training.disable_tqdm=true"]
    first = run_cli("train", [*common, "--set", "training.max_steps=4"], env=_train_env(), cwd=REPO_ROOT)
    assert first.code == 0, first.output[-3000:]
    best = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert best in ("checkpoint-2", "checkpoint-4")
    resumed = run_cli("train", [*common, "--set", "training.max_steps=6"], env=_train_env(), cwd=REPO_ROOT)
    assert resumed.code == 0, resumed.output[-3000:]
    assert "resumed state does not exist" not in resumed.output
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == f"checkpoint-{state['best_global_step']}"
    assert (out / state["best_model_checkpoint"]).is_dir()


def test_a_printed_command_works_in_a_fresh_relocated_workspace(tmp_path):
    """A terminal user on a fresh clone, workspace on a data disk under ~, no notebook run first:
    the run prepares the tiny model itself, and the paths it prints exist when pasted at the repo root."""
    home = tmp_path / "home"
    workspace = home / "autodl-tmp" / "ws"
    env = _clean_env(HOME=str(home), QWEN3_TUTORIAL_WORKSPACE=str(workspace))
    done = run_cli("train", ["--config", "configs/train/tiny.yaml", "--set", "training.max_steps=2",
                             "--set", "training.save_steps=2", "--set", "training.eval_steps=2"], env=env, cwd=REPO_ROOT)
    assert done.code == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert (workspace / "models" / "tiny-qwen3" / "model.safetensors").is_file(), "the model was built"
    assert re.search(r"工作目录: ~/autodl-tmp/ws[（\n]", out)   # the workspace, as it is pasted into a terminal
    # the course's own lines: the spec banner (before swanlab starts talking) and the run summary
    course_lines = out.split("swanlab:")[0] + out[out.index("\nprofile "):]
    assert str(tmp_path) not in course_lines, "the course prints paths through ~, never the machine path"

    [sync] = re.findall(r"^upload it later / 之后上传 +(swanlab sync .+)$", out, flags=re.M)
    target = sync.split("swanlab sync ", 1)[1].strip()
    assert target.startswith("~/autodl-tmp/ws/swanlog/run-")
    resolved = (REPO_ROOT / Path(target.replace("~", str(home), 1))).resolve()
    assert resolved.is_dir() and list(resolved.glob("run-*.swanlab")), f"{sync} points nowhere"
    for label in ("adapter", "checkpoints", "loss plot"):
        [shown] = re.findall(rf"^{label} +(\S+)", out, flags=re.M)
        assert (REPO_ROOT / shown.replace("~", str(home), 1)).exists(), f"{label}: {shown} does not exist"
    assert checkpoints.find_latest_checkpoint(workspace / "checkpoints" / "tiny").name == "checkpoint-2"


def test_cli_refuses_a_contradiction_and_a_typo_in_one_line(tmp_path):
    common = ["--config", "configs/train/tiny.yaml"]
    env = _clean_env(HOME=str(tmp_path), QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"))
    done = run_cli("train", common, env={**env, "QWEN3_TUTORIAL_PROFILE": "full"}, cwd=REPO_ROOT)
    assert done.code == 2
    assert re.match(r"error: QWEN3_TUTORIAL_PROFILE=full .*configs/train/tiny\.yaml.*profile: tiny", done.stderr)
    assert "Traceback" not in done.stderr and "--debug" in done.stderr
    done = run_cli("train", [*common, "--set", "training.learning_rat=1e-4"], env=env, cwd=REPO_ROOT)
    assert done.code == 2
    assert "training.learning_rat" in done.stderr and "'learning_rate'" in done.stderr   # the key and a suggestion
    assert not (tmp_path / "ws").exists(), "a refused run writes nothing"


# --------------------------------------------------------------------------- memory estimate


def test_memory_estimate_for_qwen3_8b_rests_on_the_real_architecture():
    from peft import get_peft_model

    from helpers.models import lora_config, qwen3_on_meta
    from helpers.recipes import estimate_lora_memory_gb

    with_ckpt = estimate_lora_memory_gb(gradient_checkpointing=True)
    without = estimate_lora_memory_gb(gradient_checkpointing=False)
    params = sum(p.numel() for p in qwen3_on_meta().parameters())
    assert with_ckpt["weights (bf16)"] == pytest.approx(params * 2 / 1e9, abs=0.01)
    trainable, _ = get_peft_model(qwen3_on_meta(), lora_config()).get_nb_trainable_parameters()
    assert with_ckpt["LoRA weights + grads + Adam (fp32)"] == pytest.approx(trainable * 16 / 1e9)
    assert with_ckpt["total"] < 24, "the course recipe fits a 24 GB card"
    assert without["activations"] - with_ckpt["activations"] > 4, "checkpointing saves several GB"
    nf4 = estimate_lora_memory_gb(quantization="nf4")
    # 4-bit linear layers save ~10 GB; prepare_model_for_kbit_training's fp32 embeddings and lm_head give ~2.5 back
    assert nf4["total"] < with_ckpt["total"] - 7


def test_only_rank_0_moves_a_run_aside(tmp_path, monkeypatch, tiny_model_dir):
    """Under a launch, rank 0 holds the run lock; another rank of a --no-resume launch must not move the run
    (when a first training still owns it, rank 0 refuses, and a rank 1 that moved it would break that run)."""
    from helpers.workspace import course_folder

    spec = tiny_spec_for(tmp_path / "run", QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"))
    (spec.paths.workspace / "models").mkdir(parents=True)
    (spec.paths.workspace / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir, target_is_directory=True)
    live = course_folder(spec.paths.run_dir) / "checkpoint-10"
    live.mkdir()

    class Stop(Exception):
        pass

    monkeypatch.setattr(train, "load_tokenizer", lambda spec: (_ for _ in ()).throw(Stop()))
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(Stop):
        train.train(spec, resume=False)
    assert live.is_dir() and not list(tmp_path.glob("run-previous-*"))


@pytest.mark.parametrize("flag", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_qlora_under_fsdp_or_deepspeed_is_refused_before_anything_loads(tmp_path, monkeypatch, flag):
    from helpers.settings import SpecError

    spec = tiny_spec_for(tmp_path / "run", overrides=["quantization=nf4"],
                         QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"))
    monkeypatch.setenv(flag, "true")
    monkeypatch.setattr(train, "prepare_model", lambda spec: pytest.fail("the model was prepared"))
    with pytest.raises(SpecError, match="ddp.yaml"):
        train.train(spec)
    assert not spec.paths.run_dir.exists()


def test_another_rank_waits_for_the_whole_model_folder(tmp_path, monkeypatch):
    from helpers.errors import CourseError

    spec = tiny_spec_for(tmp_path / "run", QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"))
    spec.paths.model_dir.mkdir(parents=True)
    (spec.paths.model_dir / "config.json").write_text("{}", encoding="utf-8")   # not the whole folder yet
    with pytest.raises(CourseError, match=r"tiny-qwen3.*python -m helpers\.download"):
        train._wait_for_model(spec, timeout=0.3, poll=0.1)
    stand_in_weights(spec.paths.model_dir / "model.safetensors")
    train._wait_for_model(spec, timeout=0.3, poll=0.1)


def test_training_again_in_the_same_kernel_stops_with_what_to_rerun(tmp_path, tiny_model_dir):
    """What a learner does in notebooks 04 and 08: train once, then run the training cell again. Without an open
    SwanLab run, or with LoRA weights trained already and nothing to resume, training stops with what to re-run,
    instead of a swanlab error at the first log or a "step 0" run that starts from trained weights."""
    from helpers import data, tracking
    from helpers.tracking import SwanLabSetupError

    (tmp_path / "ws" / "models").mkdir(parents=True)
    (tmp_path / "ws" / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir, target_is_directory=True)
    spec = tiny_spec_for(tmp_path / "run", overrides=["training.max_steps=1", "training.save_steps=1",
                                                      "training.eval_strategy=no", "training.disable_tqdm=true"],
                         QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"))
    tokenizer = models.load_tokenizer(spec)
    samples, _ = data.training_data(spec, tokenizer, verbose=False)
    model = train.add_lora(spec, train.load_model_for_training(spec))
    assert not checkpoints.lora_trained(model)
    trainer = train.build_trainer(spec, model, tokenizer, train.to_train_dataset(samples))
    tracking.finish_run()                                       # no run open (the learner skipped swanlab.init)
    with pytest.raises(SwanLabSetupError, match=r"swanlab\.init.*tracking\.start_run"):
        trainer.train()
    run = tracking.start_run(spec)
    trainer.train()
    tracking.finish_run(run)
    assert checkpoints.lora_trained(model)
    with pytest.raises(checkpoints.TrainingStateError, match=r"LoRA .*from_pretrained.*get_peft_model"):
        trainer.train()                                         # nothing to resume: it would start from trained weights
    with pytest.raises(checkpoints.TrainingStateError):
        runs.start_fresh(spec, model)                           # notebook 04's START_FRESH: refused before any move
    assert (spec.paths.run_dir / "checkpoint-1").is_dir() and not list(tmp_path.glob("run-previous-*"))
    with pytest.raises(SwanLabSetupError, match=r"swanlab\.init.*tracking\.start_run"):   # resuming, after finish_run
        trainer.train(resume_from_checkpoint=str(spec.paths.run_dir / "checkpoint-1"))


def test_a_run_resumed_at_its_end_keeps_its_summary(tmp_path):
    """Run All again in notebook 04 resumes at the last checkpoint and trains nothing: the saved summary (its
    train loss, its SwanLab run) stays as it was, as with python -m helpers.train."""
    from types import SimpleNamespace

    spec = tiny_spec_for(tmp_path / "run")
    checkpoint = spec.paths.run_dir / "checkpoint-60"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 60, "loss": 0.01}]}))
    saved = {"profile": "tiny", "global_step": 60, "train_loss": 1.5, "checkpoint": "checkpoint-60",
             "swanlab_run": "swanlog/run-1", "effective_batch_size": 4, "world_size": 1}
    (spec.paths.run_dir / runs.RUN_SUMMARY).write_text(json.dumps(saved))
    before = (spec.paths.run_dir / runs.RUN_SUMMARY).read_bytes()
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=60, log_history=[]),
                              args=SimpleNamespace(process_index=0))
    summary = runs.record_run(spec, trainer, {"train_loss": 0.0}, tmp_path / "swanlog" / "run-2", checkpoint)
    assert summary["train_loss"] == 1.5 and summary["swanlab_run"] == spec.paths.workspace / "swanlog/run-1"
    assert (spec.paths.run_dir / runs.RUN_SUMMARY).read_bytes() == before


def test_runs_in_folders_of_their_own_keep_their_own_loss_plots(tmp_path):
    """Two runs trained with --output-dir beside the profile's own run: each run summary names its own loss plot,
    and no run overwrites another's."""
    from types import SimpleNamespace

    workspace = tmp_path / "ws"
    plots = {}
    for name, run_dir in (("default", None), ("a", tmp_path / "runs" / "a"), ("other-a", tmp_path / "other" / "a")):
        spec = tiny_spec_for(run_dir, QWEN3_TUTORIAL_WORKSPACE=str(workspace))
        history = [{"step": 1, "loss": 2.0, "learning_rate": 1e-4}, {"step": 2, "loss": 1.0 + len(plots),
                                                                     "learning_rate": 5e-5}]
        trainer = SimpleNamespace(state=SimpleNamespace(global_step=2, log_history=history),
                                  args=SimpleNamespace(process_index=0, per_device_train_batch_size=1,
                                                       gradient_accumulation_steps=1, world_size=1))
        summary = runs.record_run(spec, trainer, {"train_loss": 1.5}, None)
        plots[name] = (summary["plot"], summary["plot"].read_bytes())
        saved = json.loads((spec.paths.run_dir / runs.RUN_SUMMARY).read_text(encoding="utf-8"))
        assert workspace / saved["plot"] == summary["plot"]               # the saved summary names the same file
    assert plots["default"][0] == workspace / "plots" / "train-tiny.png"
    assert len({path for path, _ in plots.values()}) == 3
    for path, content in plots.values():
        assert path.parent == workspace / "plots" and path.read_bytes() == content, f"{path.name} was overwritten"


def test_a_run_folder_holding_only_its_marker_is_not_an_earlier_run(tmp_path):
    """A refused start leaves the run folder with only its marker: moving it aside would make an empty "earlier
    run" that counts toward the two kept, and pushes a real one out."""
    from helpers.workspace import course_folder

    run = course_folder(tmp_path / "tiny", only=checkpoints.RUN_FILES)
    assert checkpoints.move_aside(run) == (None, [])
    assert run.is_dir() and not list(tmp_path.glob("tiny-previous-*"))


def test_a_machine_without_a_chinese_font_gets_one_line_with_the_fix_not_a_warning_per_character(tmp_path, monkeypatch,
                                                                                                  capsys):
    """AutoDL's Ubuntu images may have no CJK font: matplotlib then warned once per Chinese glyph (16 pairs of
    English lines per training); the course says once what to install."""
    import warnings

    import matplotlib

    monkeypatch.setattr(runs, "CJK_FONTS", ("No Such Font SC",))
    runs._no_chinese_font.cache_clear()
    history = [{"step": 1, "loss": 2.0, "learning_rate": 1e-4}, {"step": 2, "loss": 1.0, "learning_rate": 5e-5}]
    with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"]}), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for name in ("a.png", "b.png"):
            runs.plot_history(history, tmp_path / name)
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()
    assert [str(w.message) for w in caught if "missing from font" in str(w.message)] == []
    notes = [line for line in capsys.readouterr().err.splitlines() if "fonts-noto-cjk" in line]
    assert len(notes) == 1       # once per process, however many plots
