"""The ``small`` profile (real Qwen3-0.6B): the same code paths as the 8B, checked on CPU with random weights
of the real 0.6B architecture, as ``random8b`` does for the 8B."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import download, models
from helpers.profiles import PROFILES
from helpers.spec import build_spec

#: Qwen3-0.6B's model card: "Number of Parameters: 0.6B; Number of Parameters (Non-Embedding): 0.44B";
#: Qwen3-8B's: 8.2B and 6.95B.
PUBLISHED = {"Qwen3-0.6B": (0.6, 0.44), "Qwen3-8B": (8.2, 6.95)}


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_the_parameter_count_on_meta_matches_the_published_one(size):
    model = models.qwen3_on_meta(size)
    total = sum(p.numel() for p in model.parameters())  # tied embeddings are counted once
    non_embedding = total - model.model.embed_tokens.weight.numel() - (
        0 if models.qwen3_config(size)["tie_word_embeddings"] else model.lm_head.weight.numel())
    assert total == models.qwen3_counts(size)["params"]
    assert (round(total / 1e9, 1), round(non_embedding / 1e9, 2)) == PUBLISHED[size]


def test_the_small_profile_uses_the_shared_paths(tmp_path):
    env = {"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path)}
    spec = build_spec("configs/train/qwen3-0.6b.yaml", env=env, settings_file=None, cuda=False)
    assert spec.profile is PROFILES["small"] and spec.profile.model_id == "Qwen/Qwen3-0.6B"
    assert spec.paths.model_dir == tmp_path / "models" / "modelscope" / "Qwen" / "Qwen3-0.6B"
    import torch

    assert models.compute_dtype(spec, cuda=False) is torch.float32       # a laptop computes in fp32
    assert models.compute_dtype(spec, cuda=True, bf16=True) is torch.bfloat16
    budget = download.disk_budget_gb(model="Qwen3-0.6B")
    weights = round(models.qwen3_counts("Qwen3-0.6B")["params"] * 2 / 1e9, 1)
    assert weights in budget.values() and budget[download.BUDGET_TOTAL] < download.disk_budget_gb()[download.BUDGET_TOTAL] / 5
    full = build_spec("configs/train/qwen3-8b.yaml", env=env, settings_file=None, cuda=False)
    assert set(spec.training) == set(full.training)  # the same format


def test_the_small_profile_offline_is_one_line(tmp_path, monkeypatch, huanhuan_path):
    import modelscope

    monkeypatch.setattr(modelscope, "snapshot_download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    env = {"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path), "QWEN3_TUTORIAL_DATASET": str(huanhuan_path)}
    spec = build_spec("configs/train/qwen3-0.6b.yaml", env=env, settings_file=None, cuda=False)
    with pytest.raises(download.DownloadError, match=r"ModelScope.*Qwen/Qwen3-0\.6B.*OSError: offline"):
        download.prepare_model(spec)


def test_small_trains_saves_reloads_and_generates_on_random_weights(tmp_path, huanhuan_path):
    from helpers.inference import generate, greedy_settings, load_finetuned
    from helpers.train import train

    env = {"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path), "QWEN3_TUTORIAL_DATASET": str(huanhuan_path),
           "QWEN3_TUTORIAL_SWANLAB_MODE": "disabled"}
    overrides = ["data.max_rows=2", "data.max_length=96", "data.eval_fraction=0", "training.max_steps=2",
                 "training.per_device_train_batch_size=1", "training.gradient_accumulation_steps=1",
                 "training.save_steps=2", "training.logging_steps=1", "training.eval_strategy=no"]
    spec = build_spec("configs/train/qwen3-0.6b.yaml", overrides, env=env, settings_file=None, cuda=False)
    random_weights = dataclasses.replace(spec.profile, source="config-only",
                                         model_dirname="Qwen3-0.6B-random")
    spec = spec.replace(profile=random_weights,
                        paths=dataclasses.replace(spec.paths, model_dir=tmp_path / "models" / "Qwen3-0.6B-random"))
    summary = train(spec)
    assert summary["global_step"] == 2 and summary["checkpoint"].name == "checkpoint-2"
    trainable = sum(p.numel() for p in summary["trainer"].model.parameters() if p.requires_grad)
    assert trainable == models.qwen3_counts("Qwen3-0.6B")["lora_params"]
    del summary
    loaded = load_finetuned(spec)
    assert loaded.checkpoint.name == "checkpoint-2" and loaded.model.config.hidden_size == 1024
    reply = generate(loaded.model, loaded.tokenizer, [{"role": "user", "content": "你是谁？"}],
                     greedy_settings(False, 4))
    assert reply.text  # four tokens came out of the reloaded 0.6B + LoRA


def test_the_fit_table_and_recipe_auto_know_the_small_profile():
    from helpers import recipes
    from helpers.settings import SpecError

    assert recipes.SMALL.config_path == "configs/train/qwen3-0.6b.yaml" and recipes.SMALL.model == "Qwen3-0.6B"
    estimate = recipes.SMALL.estimate_gb()
    assert estimate < 8 * recipes.MARGIN  # a 6-8 GB card, by the estimate
    assert estimate < next(r for r in recipes.RECIPES if r.key == "qlora_ckpt_mb4").estimate_gb() / 2
    row = next(line for line in recipes.fit_table().splitlines() if "Qwen3-0.6B" in line)
    assert f"| {recipes.SMALL.worst_tokens} | {estimate} |" in row
    config, overrides, _ = recipes.auto_recipe(None, [], "small", {"name": "8 GB", "memory_gb": 8.0, "free_gb": 7.6})
    assert (config, overrides) == ("configs/train/qwen3-0.6b.yaml", [])
    with pytest.raises(SpecError, match="small"):
        recipes.auto_recipe(None, [], "small", {"name": "4 GB", "memory_gb": 4.0, "free_gb": 3.5})
    # the 8B advice never picks the 0.6B recipe
    assert all(recipes.choose(g).recipe is not recipes.SMALL for g in recipes.GPU_SIZES_GB)
