"""Training: it learns (tiny profile), SwanLab records match the Trainer, and it survives a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import train
from helpers.workspace import REPO_ROOT
from tests.memorised import MEMORISED_ANSWER as MEMORISED


@pytest.fixture(scope="module")
def memorisation_run(tiny_checkpoint):
    """The real tiny-profile training run on the memorisation subset (trained once per test session)."""
    return train.load_config("tiny"), train.load_run_summary(tiny_checkpoint.parent)


def test_loss_falls_clearly(memorisation_run):
    _, summary = memorisation_run
    first, last = train.loss_summary(summary["log_history"])
    print(f"tiny memorisation: loss {first:.3f} -> {last:.3f}")
    assert first > 10.0, "a random model starts near or above ln(151936) = 11.9"
    assert last < 1.0 and last < first / 10


def test_greedy_decoding_reproduces_the_answers(memorisation_run):
    from peft import PeftModel

    from helpers import data
    from helpers.models import load_base_model, load_tokenizer

    config, summary = memorisation_run
    tokenizer = load_tokenizer("tiny")
    model = PeftModel.from_pretrained(load_base_model("tiny"), summary["checkpoint"]).eval()
    records = data.load_records(data.course_dataset_path("tiny")).records[: config["data"]["max_rows"]]
    assert records[0]["output"] == MEMORISED
    for record in records:
        prompt = data.render_prompt(tokenizer, data.build_messages(record["instruction"]))
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=64, do_sample=False)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        assert new[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>"), "generation must stop at <|im_end|>"
        assert tokenizer.decode(new[:-1]) == record["output"]


def test_swanlab_loss_on_disk_equals_trainer_history(memorisation_run):
    from helpers.tracking import read_scalars

    _, summary = memorisation_run
    assert summary["swanlab_run"] is not None
    logged = read_scalars(summary["swanlab_run"])["train/loss"]
    history = [(e["step"], e["loss"]) for e in summary["log_history"] if "loss" in e]
    assert [s for s, _ in logged] == [s for s, _ in history]
    assert [v for _, v in logged] == pytest.approx([v for _, v in history], rel=1e-6, abs=0)


def test_final_checkpoint_is_complete_and_marked(memorisation_run):
    _, summary = memorisation_run
    checkpoint = summary["checkpoint"]
    assert train.checkpoint_step(checkpoint) == summary["global_step"]
    assert (checkpoint / train.COMPLETE_MARKER).is_file()
    assert summary["effective_batch_size"] == 4


def test_half_written_checkpoint_is_never_picked(tmp_path):
    good = tmp_path / "checkpoint-10"
    good.mkdir()
    (good / "adapter_model.safetensors").write_bytes(b"x")
    (good / train.COMPLETE_MARKER).write_text("{}")
    half = tmp_path / "checkpoint-20"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"x")  # no marker: the save was interrupted
    assert train.find_latest_checkpoint(tmp_path) == good


def _train_cli(out: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "helpers.train", "--config", str(REPO_ROOT / "configs/train/tiny.yaml"),
           "--output-dir", str(out), "--set", "swanlab=null", "--set", "data.max_rows=24",
           "--set", "training.num_train_epochs=2", "--set", "training.save_steps=3",
           "--set", "training.logging_steps=1", "--set", "training.disable_tqdm=true", *overrides]
    env = dict(os.environ, QWEN3_TUTORIAL_PROFILE="tiny", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _batches(out: Path, pid: int) -> list[list[int]]:
    lines = (out / train.SAMPLE_LOG).read_text(encoding="utf-8").splitlines()
    return [entry["rows"] for entry in map(json.loads, lines) if entry["pid"] == pid]


def test_killed_run_resumes_to_the_same_end_with_the_same_data_order(tmp_path):
    # Reference: the same run, never interrupted.
    ref_out = tmp_path / "reference"
    ref = _train_cli(ref_out, "--no-resume")
    ref_log, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_log
    assert "Resuming" not in ref_log

    # A run killed (SIGKILL, no clean-up) right after its first complete checkpoint.
    out = tmp_path / "crashed"
    victim = _train_cli(out, "--no-resume")
    deadline = time.time() + 240
    while train.find_latest_checkpoint(out) is None:
        assert victim.poll() is None, victim.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    resumed_from = train.find_latest_checkpoint(out)
    step = train.checkpoint_step(resumed_from)
    # A checkpoint whose save was interrupted (no marker) must be ignored.
    half = out / "checkpoint-9999"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"truncated")

    resumed = _train_cli(out)
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert "Resuming from " in log and f"checkpoint-{step}" in log

    final = train.find_latest_checkpoint(out)
    reference_final = train.find_latest_checkpoint(ref_out)
    assert final.name != "checkpoint-9999"
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12 == train.checkpoint_step(reference_final)

    # Same data order: the resumed process trained exactly the reference's remaining micro-batches.
    assert _batches(out, resumed.pid) == _batches(ref_out, ref.pid)[step:]

    # And it ends with the same adapter (same data, same RNG state restored from the checkpoint).
    from safetensors.torch import load_file

    a = load_file(out / "checkpoint-12" / "adapter_model.safetensors")
    b = load_file(reference_final / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_memory_estimate_for_qwen3_8b():
    with_ckpt = train.estimate_lora_memory_gb(gradient_checkpointing=True)
    without = train.estimate_lora_memory_gb(gradient_checkpointing=False)
    assert 16.3 < with_ckpt["weights (bf16)"] < 16.5
    assert with_ckpt["activations"] < without["activations"]
    assert with_ckpt["total"] < 24 < without["total"] + 24


def test_config_overrides_and_profile_choice():
    config = train.load_config(REPO_ROOT / "configs/train/qwen3-8b.yaml", ["training.max_steps=5", "batching=padded"])
    assert config["training"]["max_steps"] == 5 and config["batching"] == "padded"
    assert config["lora"] == {"r": 8, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    with pytest.raises(ValueError, match="section.key=value"):
        train.load_config("tiny", ["nonsense"])
