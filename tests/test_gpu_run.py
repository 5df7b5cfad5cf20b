"""The GPU run's CPU rehearsal (``python -m bench.gpu_run --tiny``): one subprocess per entry, as on the GPU.

It runs one entry of every stage kind (a: the original recipe against the course default, both on the same
rows for the same steps; b: the worst micro-batch; c: QLoRA; d: Liger, refused here without CUDA;
e: the four chat paths) and checks the JSON, the table and the stage times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import gpu_run
from helpers import recipes
from helpers.workspace import REPO_ROOT

ENTRIES = ("original", "bf16_ckpt_mb4", "e_chat", "bf16_ckpt_mb16_liger", "qlora_ckpt_mb4")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, tiny_model_dir, huanhuan_path):
    out = tmp_path_factory.mktemp("gpu-run") / "gpu_run.json"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_run", "--tiny", "--data", str(huanhuan_path),
                           "--budget-s", "3000", "--out", str(out), "--only", *ENTRIES],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout


def test_the_plan_covers_every_stage_and_fits_ten_minutes():
    entries = gpu_run.plan()
    assert {e.stage for e in entries} == {"a_ratio", "b_worst", "c_qlora", "d_kernels", "e_chat", "f_sweep"}
    assert [e.name for e in entries][:3] == ["original", "bf16_ckpt_mb4", "bf16_mb16"]
    assert {e.key for e in entries if e.key} == {r.key for r in recipes.RECIPES}   # every recipe's worst case
    sweep = {e.recipe.per_device_train_batch_size for e in entries if e.name in gpu_run.SWEEP.values()}
    assert sweep == {4, 8, 16, 32}
    assert "export" not in {e.stage for e in entries} and "export" in {e.stage for e in gpu_run.plan(export=True)}
    # same rows, same steps: only the recipe changes between the entries of stage a
    a = [e.recipe for e in entries if e.stage == "a_ratio"]
    assert all(r.effective_batch == 16 for r in a)


def test_rehearsal_runs_each_entry_in_its_own_process(rehearsal):
    result, stdout = rehearsal
    rows = result["entries"]
    assert list(rows) == list(ENTRIES)
    for name in ("original", "bf16_ckpt_mb4", "qlora_ckpt_mb4"):
        row = rows[name]
        assert row["status"] == "ok", row
        # the forced step saw exactly the worst micro-batch (the longest rows together)
        assert row["worst"]["computed_tokens_seen"] == row["worst"]["tokens"]
        assert row["timed"]["measured_steps"] == result["settings"]["steps"]
        assert row["timed"]["samples"] > 0 and row["timed"]["samples_per_s"] > 0
    tiny_mb = gpu_run.plan(tiny=True)[1].recipe.per_device_train_batch_size
    assert rows["bf16_ckpt_mb4"]["worst"]["tokens"] == recipes.worst_tokens(tiny_mb)
    assert rows["qlora_ckpt_mb4"]["quantization"] == "nf4"
    # the same rows for the same steps: the original and the course default saw the same samples
    assert rows["original"]["timed"]["samples"] == rows["bf16_ckpt_mb4"]["timed"]["samples"]
    assert rows["bf16_ckpt_mb4"]["x_original"] == pytest.approx(
        rows["bf16_ckpt_mb4"]["timed"]["samples_per_s"] / rows["original"]["timed"]["samples_per_s"], rel=1e-3)
    # Liger without CUDA: refused with the course's own reason, before a process started for it
    assert rows["bf16_ckpt_mb16_liger"]["status"] == "refused"
    assert "kernels: liger" in (error := rows["bf16_ckpt_mb16_liger"]["error"]) and "CUDA GPU" in error
    assert rows["bf16_ckpt_mb16_liger"]["stage_s"] < 2
    chat = rows["e_chat"]
    assert chat["status"] == "ok"
    for path in ("adapter_dynamic", "adapter_static", "merged_dynamic", "merged_static"):
        assert chat[path]["tokens_per_s"] > 0
    # stage times are printed and recorded; targets are not judged on a rehearsal
    assert all(row["stage_s"] > 0 for row in rows.values() if row["status"] != "refused")
    assert "stage times:" in stdout and result["gpu_plan_s"] <= 600
    assert result["judged"]["judged"] is False and "meets" not in result["judged"]
    table = gpu_run.markdown_table(result)
    assert all(f"| {name} |" in table for name in ENTRIES)


def test_adopt_takes_only_a_gpu_run_of_the_real_architecture(rehearsal, tmp_path):
    result, _ = rehearsal
    path = tmp_path / "rehearsal.json"
    path.write_text(json.dumps(result), encoding="utf-8")
    with pytest.raises(SystemExit):
        gpu_run.adopt(path, tmp_path / "measurements.json")
    # the same result as if measured on a GPU: worst-case measurements, ratios to the original of the same run
    gpu = dict(result, profile="random8b", device="cuda", environment={**result["environment"], "gpu": "Fake H100"})
    for row in gpu["entries"].values():
        if "worst" in row:
            row["worst"] = dict(row["worst"], peak_gb=20.0)
    path.write_text(json.dumps(gpu), encoding="utf-8")
    target = tmp_path / "measurements.json"
    gpu_run.adopt(path, target)
    adopted = recipes.load_measurements(target)
    assert set(adopted) == {"bf16_ckpt_mb4", "qlora_ckpt_mb4"}
    m = adopted["bf16_ckpt_mb4"]
    assert m.worst_case and m.gpu == "Fake H100" and m.peak_gb == 20.0
    assert m.x_original == pytest.approx(rows_ratio(result), abs=0.01)


def rows_ratio(result):
    rows = result["entries"]
    return rows["bf16_ckpt_mb4"]["timed"]["samples_per_s"] / rows["original"]["timed"]["samples_per_s"]
