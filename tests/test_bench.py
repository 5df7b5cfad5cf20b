"""The benchmark harness: it runs, and every ratio comes from two sides measured in the same run.

Smoke tests with tiny settings; nothing here is timed or asserts a speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import bench, data, train
from helpers.workspace import REPO_ROOT


def _run(cmd: list[str], huanhuan_path, timeout: int = 300) -> str:
    env = dict(os.environ, QWEN3_TUTORIAL_PROFILE="tiny", HUANHUAN_JSON=str(huanhuan_path), PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_cpu_benchmark_quick_writes_ratios_of_both_sides(tmp_path, huanhuan_path, tiny_model_dir):
    out = tmp_path / "cpu.json"
    printed = _run([sys.executable, "-m", "helpers.bench", "--quick", "--out", str(out)], huanhuan_path)
    result = json.loads(out.read_text(encoding="utf-8"))
    assert "speed-up" in printed and "ratios:" in printed

    enc = result["encode"]
    assert enc["original_s"] > 0 and enc["ours_s"] > 0
    assert enc["speedup"] == pytest.approx(enc["original_s"] / enc["ours_s"])

    pad = result["padding"]
    assert pad["rows"] == 3729
    table = {row["strategy"]: row for row in pad["table"]}
    assert table["original"]["computed"] == 379_557 and table["original"]["real"] == 269_343  # the count
    assert table["ours_packed"]["padding"] == 0
    assert pad["computed_tokens_ratio"] == pytest.approx(
        table["original"]["computed"] / table["ours_packed"]["computed"])

    recipes = result["train"]["recipes"]
    original, ours = recipes["original"], recipes["ours"]
    for side in (original, ours):
        assert side["measured_steps"] >= 1 and side["seconds"] > 0 and side["real_tokens"] > 0
    assert original["recipe"]["activation_checkpointing"] and original["recipe"]["batching"] == "padded"
    assert ours["recipe"]["batching"] == "packed" and not ours["recipe"]["activation_checkpointing"]
    assert original["recipe"]["per_device_train_batch_size"] * original["recipe"]["gradient_accumulation_steps"] \
        == ours["recipe"]["per_device_train_batch_size"] * ours["recipe"]["gradient_accumulation_steps"]
    assert ours["padding_share"] == 0 and original["padding_share"] > 0
    assert ours["speedup_real_tokens_per_s"] == pytest.approx(
        ours["real_tokens_per_s"] / original["real_tokens_per_s"])
    assert result["ratios"]["train_samples_per_s_speedup"] == pytest.approx(
        ours["samples_per_s"] / original["samples_per_s"])
    assert result["loss_equivalence"]["abs_diff"] < 1e-4


def test_gpu_script_runs_its_whole_path_on_cpu(tmp_path, huanhuan_path, tiny_model_dir):
    out = tmp_path / "gpu.json"
    printed = _run([sys.executable, "bench/gpu_qwen3_8b.py", "--profile", "tiny", "--device", "cpu",
                    "--rows", "24", "--warmup", "1", "--steps", "1", "--recipes", "original", "packed_4x4",
                    "--peak-tflops", "1", "--budget-s", "400", "--out", str(out)], huanhuan_path)
    result = json.loads(out.read_text(encoding="utf-8"))
    assert "targets:" in printed
    original, packed = result["recipes"]["original"], result["recipes"]["packed_4x4"]
    assert original["status"] == "ok" and packed["status"] == "ok", result["recipes"]
    assert packed["speedup_samples_per_s"] == pytest.approx(packed["samples_per_s"] / original["samples_per_s"])
    for side in (original, packed):
        assert side["model_flops"] > 0 and side["mfu"] == pytest.approx(side["model_tflops_per_s"] / 1.0)
    assert result["targets"]["best"] == "packed_4x4"


def test_flop_formula_matches_the_real_architecture_on_meta():
    check = bench.verify_matmul_parameters_on_meta()
    assert check["linear_weights_counted"] == check["formula"] == 7_568_097_280
    lora = train.load_config("random8b")["lora"]
    assert bench.lora_parameters(check["config"], lora) == 21_823_488  # PEFT's count for the course's LoRA
    per_token, per_pair = bench.lora_flop_coefficients(check["config"], lora)
    assert per_token == 4 * 7_568_097_280 + 6 * 21_823_488
    assert bench.lora_training_flops(check["config"], [10], lora) == per_token * 10 + per_pair * 110


def test_batch_counter_counts_real_tokens_and_samples(tokenizer):
    features = [{"input_ids": [1] * n, "labels": [-100] * (n - 2) + [5, 6]} for n in (3, 7, 5)]
    for batching in ("padded", "packed"):
        counter = bench.BatchCounter()
        counter(None, (), dict(train.make_collator(batching, tokenizer)(features)))
        snap = counter.snapshot()
        assert snap["samples"] == 3 and snap["real"] == 15 and snap["pairs"] == 3 * 4 + 7 * 8 + 5 * 6
        assert snap["computed"] == (21 if batching == "padded" else 15)


def test_peak_table():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H200") == 989.4
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("NVIDIA GeForce RTX 4090") == 165.2
    assert bench.peak_tflops("Some Future GPU") is None


def test_tokens_per_epoch_table_for_notebook_04(tokenizer):
    records = data.load_records(data.SAMPLE_PATH).records
    rows = bench.tokens_per_epoch_table(tokenizer, records)
    assert [r.strategy for r in rows] == ["original", "ours_random", "ours_grouped", "ours_packed"]
    assert rows[-1].padding == 0 and rows[0].computed > rows[-1].computed
    text = bench.format_tokens_table(rows)
    assert "1.000x" in text and "course default" in text
