"""Which recipe fits which GPU: the estimate, the fit table and ``python -m helpers.train --recipe auto``.

The GPU is faked in-process (``torch.cuda`` patched) and ``helpers.train.train`` is replaced by a
stub that records the run spec, so nothing loads a model.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from helpers import recipes
from helpers.models import qwen3_config


def qwen3_8b_counts() -> dict[str, int]:
    """Qwen3-8B's parameters counted from its published config.json (not from helpers.recipes)."""
    c = qwen3_config("Qwen3-8B")
    h, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]  # q k v o gate up down
    linear = layers * sum(i * o for i, o in shapes)
    norms = layers * (2 * h + 2 * c["head_dim"]) + h
    embeddings = 2 * vocab * h  # embed_tokens + lm_head (not tied in Qwen3-8B)
    lora = layers * sum(8 * (i + o) for i, o in shapes)
    return {"linear": linear, "norms": norms, "embeddings": embeddings, "lora": lora,
            "params": linear + norms + embeddings}


def test_course_constants_match_the_published_architecture():
    counts = qwen3_8b_counts()
    assert recipes.QWEN3_8B["lora_params"] == counts["lora"]
    assert recipes.QWEN3_8B["embedding_params"] == counts["embeddings"]
    assert recipes.QWEN3_8B["params"] == pytest.approx(counts["params"], rel=0.001)  # 8.19e9 rounds 8.1908e9


def test_qlora_estimate_against_an_independent_calculation():
    """QLoRA, checkpointing, micro-batch 4 of 254-token rows, computed by hand in bytes."""
    counts = qwen3_8b_counts()
    tokens = 4 * 254
    # NF4: 4 bits per weight; double quantisation: one 8-bit absmax per 64 weights and one fp32
    # constant per 256 blocks: 8/64 + 32/(64*256) = 0.127 bit per weight
    nf4_bits = 4 + 8 / 64 + 32 / (64 * 256)
    assert nf4_bits == pytest.approx(4.127, abs=0.001)
    linear = recipes.QWEN3_8B["params"] - counts["embeddings"]   # everything but embeddings and lm_head
    weights = linear * 4.127 / 8 + counts["embeddings"] * 4      # fp32 after prepare_model_for_kbit_training
    lora = counts["lora"] * (4 + 4 + 4 + 4)                      # fp32 weight, grad, Adam m and v
    activations = 36 * 4096 * tokens * 4 + 34 * 4096 * tokens    # fp32 layer inputs + one layer recomputed
    logits = 151936 * tokens * (4 + 4)                           # fp32 logits and their gradient
    got = recipes.estimate_lora_memory_gb(tokens_per_micro_batch=tokens, gradient_checkpointing=True,
                                          quantization="nf4")
    assert got[recipes.QLORA_WEIGHTS] == pytest.approx(weights / 1e9, rel=1e-6)
    assert got["total"] == pytest.approx((weights + lora + activations + logits) / 1e9, rel=1e-6)
    # 4-bit linear layers: the weights take less than 55% of bf16's 16.4 GB, even with fp32 embeddings
    bf16 = recipes.estimate_lora_memory_gb(tokens_per_micro_batch=tokens, gradient_checkpointing=True)
    assert got[recipes.QLORA_WEIGHTS] < 0.55 * bf16["weights (bf16)"]
    assert bf16["weights (bf16)"] == pytest.approx(recipes.QWEN3_8B["params"] * 2 / 1e9)


def parse_fit_table(text: str) -> tuple[list[int], dict[str, dict]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    sizes = [int(re.match(r"(\d+) GB", c).group(1)) for c in head[4:]]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = {"estimate": cells[1], "measured": cells[2], "speed": cells[3],
                          "fits": dict(zip(sizes, cells[4:], strict=True))}
    return sizes, rows


def test_fit_table_for_every_card_size():
    sizes, rows = parse_fit_table(recipes.fit_table())
    assert sizes == [12, 16, 24, 32, 40, 48, 80]
    auto = rows.pop("**auto 选择**")["fits"]
    assert set(rows) == {r.name for r in recipes.RECIPES}
    kinds = {(r.quantization, r.activation_checkpointing, r.micro_batch) for r in recipes.RECIPES}
    assert kinds >= {(None, False, 4), (None, True, 4), ("nf4", True, 4), (None, False, 16), (None, True, 16)}
    for recipe in recipes.RECIPES:
        row = rows[recipe.name]
        estimate = float(row["estimate"])
        parts = recipes.estimate_lora_memory_gb(tokens_per_micro_batch=recipe.micro_batch * 254,
                                                gradient_checkpointing=recipe.activation_checkpointing,
                                                quantization=recipe.quantization)
        assert estimate == pytest.approx(parts["total"] + recipes.CUDA_OVERHEAD_GB, abs=0.05)
        # measured peaks only where bench/results holds a measurement; the others must say so
        assert row["measured"] == str(recipes.MEASURED_GB.get(recipe.name, "未测"))
        if recipe.name in recipes.MEASURED_GB:  # the estimate (with CUDA overhead) stays on the safe side
            assert recipes.MEASURED_GB[recipe.name] <= estimate
        for size in sizes:
            assert row["fits"][size] == ("✓" if estimate <= 0.9 * size else "✗"), (recipe.name, size)
        # a recipe that fits a card fits every larger card
        ticks = [row["fits"][s] == "✓" for s in sizes]
        assert ticks == sorted(ticks)
    # the facts: bf16 LoRA does not fit 16 GB (QLoRA does), fits 24 GB only with checkpointing
    # at micro-batch 4, and 80 GB needs no checkpointing
    bf16_default = "bf16 LoRA, checkpointing, micro-batch 4"
    qlora_small = "QLoRA 4-bit, checkpointing, micro-batch 4"
    assert rows[bf16_default]["fits"][16] == "✗" and rows[qlora_small]["fits"][16] == "✓"
    assert rows[bf16_default]["fits"][24] == "✓"
    assert rows["bf16 LoRA, no checkpointing, micro-batch 4"]["fits"][24] == "✗"
    assert auto[16].startswith("QLoRA") and auto[80] == "bf16 LoRA 无ckpt mb16"
    # the estimates say so too: the fastest recipe is slower than bf16, QLoRA's speed is below 1
    assert all(r.relative_speed < 1 for r in recipes.RECIPES if r.quantization)


def test_choose_recipe_takes_the_fastest_that_fits():
    for size in recipes.GPU_SIZES_GB:
        chosen, why = recipes.choose_recipe(size)
        fitting = [r for r in recipes.RECIPES if r.estimate_gb() <= 0.9 * size]
        if not fitting:
            assert chosen is None and "放不下" in why
            continue
        assert chosen == max(fitting, key=lambda r: r.relative_speed)
        assert str(chosen.estimate_gb()) in why
    recipe, why = recipes.choose_recipe(None)
    assert recipe is None and "GPU" in why


# --------------------------------------------------------------------------- --recipe auto


def fake_gpu(monkeypatch, total_gib: float, used_gib: float = 0.5, name: str = "Fake GPU"):
    """Make this process see one CUDA card of ``total_gib`` (``used_gib`` of it held).

    transformers and bitsandbytes are imported first, for real: imported while CUDA is faked,
    bitsandbytes would load its CUDA backend.
    """
    import bitsandbytes  # noqa: F401
    import torch
    from transformers import TrainingArguments  # noqa: F401

    total = int(total_gib * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=0: SimpleNamespace(name=name, total_memory=total, major=8, minor=0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=0: (total - int(used_gib * 2**30), total))


@pytest.fixture
def captured(monkeypatch):
    """``helpers.train.main`` with a clean course environment; ``train`` only records the spec."""
    import os

    from helpers import settings as settings_module
    from helpers import train

    for name in list(os.environ):
        if name.startswith("QWEN3_TUTORIAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(settings_module, "read_settings_file", lambda path=None: {})
    seen = []

    def fake_train(spec, resume=True):
        seen.append(spec)
        raise Stopped  # stop here: no model is loaded

    monkeypatch.setattr(train, "train", fake_train)
    return seen


class Stopped(Exception):
    """Raised by the stub in place of training."""


def run_main(argv):
    """``python -m helpers.train ARGV``: "trained" when it reached training, else its exit code."""
    from helpers import train

    try:
        return train.main(argv)
    except Stopped:
        return "trained"


def test_recipe_auto_on_a_16_gb_card_picks_qlora(monkeypatch, captured, capsys):
    fake_gpu(monkeypatch, 16, name="Fake 16GB")
    assert run_main(["--recipe", "auto"]) == "trained"
    (spec,) = captured
    assert spec.profile.name == "full" and spec.quantization == "nf4"
    assert spec.config_file.name == "qwen3-8b-qlora.yaml"
    assert spec.training["activation_checkpointing"] is True
    assert spec.training["per_device_train_batch_size"] == 4
    assert spec.training["learning_rate"] == pytest.approx(2e-4)
    out = capsys.readouterr().out
    assert "Fake 16GB" in out and "QLoRA 4-bit, checkpointing, micro-batch 4" in out
    assert "--set quantization=nf4" in out


def test_recipe_auto_on_an_80_gb_card_picks_bf16_without_checkpointing(monkeypatch, captured, capsys):
    fake_gpu(monkeypatch, 80, name="Fake 80GB")
    assert run_main(["--recipe", "auto"]) == "trained"
    (spec,) = captured
    assert spec.quantization is None and spec.config_file.name == "qwen3-8b.yaml"
    assert spec.training["activation_checkpointing"] is False
    assert spec.training["per_device_train_batch_size"] == 16
    assert spec.training["gradient_accumulation_steps"] == 1   # the effective batch stays 16
    assert "bf16 LoRA, no checkpointing, micro-batch 16" in capsys.readouterr().out


def test_recipe_auto_uses_free_memory_and_the_users_settings_win(monkeypatch, captured, capsys):
    # an 80 GB card of which 60 GB are held by another process: only 20 GB are free
    fake_gpu(monkeypatch, 80, used_gib=60)
    assert run_main(["--recipe", "auto", "--config", "configs/train/qwen3-8b.yaml",
                     "--set", "training.learning_rate=5e-5"]) == "trained"
    (spec,) = captured
    assert spec.config_file.name == "qwen3-8b.yaml"   # the given config is kept, the recipe applied to it
    assert spec.quantization == "nf4"
    assert spec.training["learning_rate"] == pytest.approx(5e-5)
    out = capsys.readouterr().out
    assert "别的进程占用" in out and "--set training.learning_rate=5e-5" in out


def test_recipe_auto_without_a_gpu_keeps_the_given_config(monkeypatch, captured, capsys):
    import torch

    from helpers.spec import build_spec

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_main(["--recipe", "auto", "--config", "configs/train/tiny.yaml"]) == "trained"
    (spec,) = captured
    plain = build_spec("configs/train/tiny.yaml", env={}, settings_file=None)
    assert spec.to_dict() == plain.to_dict()
    assert "没有检测到 CUDA GPU" in capsys.readouterr().out


def test_recipe_auto_when_nothing_fits_stops_with_the_reason(monkeypatch, captured, capsys):
    fake_gpu(monkeypatch, 8, name="Fake 8GB")
    assert run_main(["--recipe", "auto"]) == 2
    assert captured == []
    err = capsys.readouterr().err
    assert "放不下任何配方" in err
