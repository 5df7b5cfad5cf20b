"""The one prepared GPU check, run on the CPU with the tiny model, as the GPU box will run it.

The GPU box has no network and lacks packages the course's CPU environment has (no pyarrow, so no
``datasets``; no swanlab, matplotlib, modelscope, liger-kernel, flash-attn). The check runs here with
those hidden from it (``sys.modules[name] = None`` in a ``sitecustomize``: ``import`` fails and
``importlib.util.find_spec`` says "not installed", as on the box), so a dependency on them fails here
first. Every stage must succeed; QLoRA may be skipped only where bitsandbytes is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import STAGES, markdown_table
from helpers.download import TINY_CONFIG
from helpers.workspace import REPO_ROOT

#: what the GPU box does not have (see bench/RESULTS.md)
ABSENT_ON_GPU_BOX = ("datasets", "pyarrow", "pandas", "swanlab", "matplotlib", "modelscope", "liger_kernel",
                     "flash_attn")
STEPS, RESUME_STEPS = 3, 1


@pytest.fixture(scope="module")
def check(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("gpu-check")
    hide = folder / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nfor name in " + repr(ABSENT_ON_GPU_BOX) + ":\n    sys.modules[name] = None\n", encoding="utf-8")
    out = folder / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), str(REPO_ROOT)]), PYTHONUNBUFFERED="1")
    for name in ("QWEN3_TUTORIAL_PROFILE", "QWEN3_TUTORIAL_WORKSPACE", "QWEN3_TUTORIAL_DATASET", "HUANHUAN_JSON"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--tiny", "--steps", str(STEPS), "--resume-steps",
         str(RESUME_STEPS), "--out", str(out), "--workdir", str(folder / "work")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), proc, folder


def test_the_packages_really_are_hidden(check):
    result, _, _ = check
    assert result["versions"]["torch"] and result["versions"]["transformers"] and result["versions"]["peft"]
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('datasets'))"],
                           env=dict(os.environ, PYTHONPATH=str(check[2] / "hide")), capture_output=True, text=True)
    assert probe.stdout.strip() == "None"


def test_every_stage_ran_and_succeeded(check):
    result, proc, folder = check
    stages = result["stages"]
    assert list(stages) == list(STAGES), proc.stdout[-3000:]
    expected_qlora = "ok" if importlib.util.find_spec("bitsandbytes") else "skipped: bitsandbytes missing"
    statuses = {name: s["status"] for name, s in stages.items()}
    assert statuses == {**dict.fromkeys(STAGES, "ok"), "qlora": expected_qlora}, \
        {name: s.get("error") for name, s in stages.items()}
    assert proc.returncode == 0 and result["finished"] is True
    assert result["profile"] == "tiny" and result["device"]["cuda"] is None
    for name, stage in stages.items():
        assert stage["wall_s"] > 0 and stage["rss_gib"] > 0, name
    assert not (folder / "work").exists() or not any((folder / "work").iterdir())  # scratch removed
    text = (folder / "gpu_check.json").read_text(encoding="utf-8")
    assert str(REPO_ROOT) not in text and str(Path.home()) not in text  # committed later: no machine paths


def test_training_saves_and_resumes_at_the_right_step(check):
    stages = check[0]["stages"]
    trained, resumed = stages["train_bf16"], stages["resume"]
    assert trained["global_step"] == STEPS and trained["checkpoint"] == f"checkpoint-{STEPS}"
    assert {"adapter_model.safetensors", "checkpoint_complete", "trainer_state.json"} <= set(trained["checkpoint_files"])
    assert [step for step, _ in trained["losses"]] == list(range(1, STEPS + 1))
    assert resumed["resumed_from"] == f"checkpoint-{STEPS}"
    assert resumed["global_step"] == STEPS + RESUME_STEPS and resumed["resumed_steps_ok"]
    assert resumed["steps_after_resume"] == list(range(STEPS + 1, STEPS + RESUME_STEPS + 1))
    assert resumed["checkpoint"] == f"checkpoint-{STEPS + RESUME_STEPS}"
    # the resumed run continues the trained history: the first losses are the saved ones
    assert resumed["losses"][:STEPS] == trained["losses"]


def test_generation_streams_what_generate_returns(check):
    generated = check[0]["stages"]["generate"]
    assert generated["adapter"] == f"checkpoint-{STEPS + RESUME_STEPS}"
    assert generated["pieces"] >= 1 and generated["new_tokens"] >= 1
    assert generated["same_as_generate"] is True


def test_merged_model_computes_what_the_adapter_computes(check):
    merged = check[0]["stages"]["merge"]
    assert merged["lora_parameters_left"] == 0
    assert merged["max_abs_logit_diff_adapter_effect"] > 1e-3  # the adapter changes the logits ...
    assert merged["max_abs_logit_diff_merged"] < merged["max_abs_logit_diff_adapter_effect"] / 100  # ... and merging keeps that


def test_export_writes_a_plain_model_folder(check):
    exported = check[0]["stages"]["export"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "course_export.json"} <= set(exported["files"])
    assert exported["size_gb"] > 0


def test_qlora_trains_4bit_layers(check):
    qlora = check[0]["stages"]["qlora"]
    if importlib.util.find_spec("bitsandbytes") is None:
        assert qlora["status"] == "skipped: bitsandbytes missing"
        return
    assert qlora["global_step"] == STEPS
    assert qlora["linear4bit_modules"] == 7 * TINY_CONFIG["num_hidden_layers"]  # every projection of every layer
    assert qlora["trainable_parameters"] == check[0]["stages"]["train_bf16"]["trainable_parameters"]


def test_recipes_stage_runs_the_gpu_benchmark(check):
    recipes = check[0]["stages"]["recipes"]["recipes"]
    assert set(recipes) == {"original", "ours"}
    assert all(r["status"] == "ok" for r in recipes.values()), recipes
    assert recipes["ours"]["padding_share"] == 0 and recipes["original"]["padding_share"] > 0
    assert recipes["ours"]["computed_tokens"] == recipes["ours"]["real_tokens"] > 0


def test_table_mode_prints_every_stage(check):
    result, _, folder = check
    table = markdown_table(result)
    for name in STAGES:
        assert f"| {name} | {result['stages'][name]['status']} |" in table
    printed = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--table", str(folder / "gpu_check.json")],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0 and printed.stdout.strip() == table
