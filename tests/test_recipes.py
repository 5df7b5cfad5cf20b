"""Which recipe fits which GPU: the estimate, the fit table and ``python -m helpers.train --recipe auto``.

The GPU is faked in-process (``torch.cuda`` patched) and ``helpers.train.train`` is replaced by a
stub that records the run spec, so nothing loads a model.
"""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import pytest

from helpers import recipes
from helpers.errors import DEBUG_HINT
from helpers.models import qwen3_config, qwen3_counts

BY_KEY = {r.key: r for r in (*recipes.RECIPES, recipes.SMALL)}


def qwen3_8b_counts() -> dict[str, int]:
    """Qwen3-8B's parameters counted from its published config.json (not from helpers.models.qwen3_counts)."""
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
    assert qwen3_counts("Qwen3-8B")["lora_params"] == counts["lora"]
    assert qwen3_counts("Qwen3-8B")["embedding_params"] == counts["embeddings"]
    assert qwen3_counts("Qwen3-8B")["params"] == pytest.approx(counts["params"], rel=0.001)  # 8.19e9 rounds 8.1908e9


def test_qlora_estimate_against_an_independent_calculation():
    """QLoRA, checkpointing, micro-batch 4 of 254-token rows, computed by hand in bytes."""
    counts = qwen3_8b_counts()
    tokens = 4 * 254
    # NF4: 4 bits per weight; double quantisation: one 8-bit absmax per 64 weights and one fp32
    # constant per 256 blocks: 8/64 + 32/(64*256) = 0.127 bit per weight
    nf4_bits = 4 + 8 / 64 + 32 / (64 * 256)
    assert nf4_bits == pytest.approx(4.127, abs=0.001)
    linear = qwen3_counts("Qwen3-8B")["params"] - counts["embeddings"]   # everything but embeddings and lm_head
    weights = linear * 4.127 / 8 + counts["embeddings"] * 4      # fp32 after prepare_model_for_kbit_training
    lora = counts["lora"] * (4 + 4 + 4 + 4)                      # fp32 weight, grad, Adam m and v
    # fp32 layer inputs + one layer recomputed (83 bytes x hidden per token in bf16, x1.5 under QLoRA)
    activations = 36 * 4096 * tokens * 4 + 83 * 1.5 * 4096 * tokens
    logits = 151936 * tokens * 13                                # bf16 logits, fp32 copy and fp32 gradient
    got = recipes.estimate_lora_memory_gb(tokens_per_micro_batch=tokens, gradient_checkpointing=True,
                                          quantization="nf4")
    assert got[recipes.QLORA_WEIGHTS] == pytest.approx(weights / 1e9, rel=1e-6)
    assert got["total"] == pytest.approx((weights + lora + activations + logits) / 1e9, rel=1e-6)
    # 4-bit linear layers: the weights take less than 55% of bf16's 16.4 GB, even with fp32 embeddings
    bf16 = recipes.estimate_lora_memory_gb(tokens_per_micro_batch=tokens, gradient_checkpointing=True)
    assert got[recipes.QLORA_WEIGHTS] < 0.55 * bf16["weights (bf16)"]
    assert bf16["weights (bf16)"] == pytest.approx(qwen3_counts("Qwen3-8B")["params"] * 2 / 1e9)


def parse_fit_table(text: str) -> tuple[list[int], dict[str, dict]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    sizes = [int(re.match(r"(\d+) GB", c).group(1)) for c in head[6:]]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = {"tokens": cells[1], "estimate": cells[2], "measured": cells[3], "speed": cells[4],
                          "ratio": cells[5], "fits": dict(zip(sizes, cells[6:], strict=True))}
    return sizes, rows


def test_longest_rows_are_the_real_datas(huanhuan_path):
    """The worst micro-batch in the estimate comes from the real file: its longest rows, course encoding."""
    from bench.common import encoded_lengths
    from helpers.models import course_tokenizer
    from helpers.validation import load_records

    tokenizer, _ = course_tokenizer()
    _, ours = encoded_lengths(load_records(huanhuan_path).records, tokenizer)
    longest = sorted(ours, reverse=True)[:32]
    assert tuple(longest) == recipes.LONGEST_ROWS
    assert recipes.worst_tokens(16) == sum(longest[:16]) == 3255
    assert sum(ours) / len(ours) == pytest.approx(70.2, abs=0.05)  # the mean row the comment names
    # every recipe is judged on its worst micro-batch, not on an average one
    for recipe in recipes.RECIPES:
        assert recipe.worst_tokens == sum(longest[: recipe.micro_batch])
        assert recipe.estimate_gb() == round(recipe.estimate_tensors_gb(sum(longest[: recipe.micro_batch]))
                                             + recipes.CUDA_OVERHEAD_GB, 1)
        assert recipe.estimate_tensors_gb() > recipe.estimate_tensors_gb(round(recipe.micro_batch * 70.2))


def test_estimates_land_within_1_percent_of_every_measurement():
    """Each measured peak (tensors) against the formula at the measured micro-batch's tokens: the README, the
    teaching guide and bench/RESULTS.md say the fit lands within 1% of every measured point."""
    measured = recipes.load_measurements()
    assert {"bf16_ckpt_mb4", "bf16_ckpt_mb16", "bf16_mb16"} <= set(measured)
    for key, m in measured.items():
        estimate = BY_KEY[key].estimate_tensors_gb(m.tokens)
        assert abs(estimate / m.peak_gb - 1) < 0.01, (key, estimate, m.peak_gb)
        assert m.gpu == "NVIDIA H200"


def test_fit_table_for_every_card_size():
    measured = recipes.load_measurements()
    sizes, rows = parse_fit_table(recipes.fit_table())
    assert sizes == [12, 16, 24, 32, 40, 48, 80]
    auto = rows.pop("**auto 选择**")["fits"]
    assert set(rows) == {r.name for r in (*recipes.RECIPES, recipes.SMALL)}
    kinds = {(r.quantization, r.activation_checkpointing, r.micro_batch) for r in recipes.RECIPES}
    assert kinds >= {(None, False, 4), (None, True, 4), ("nf4", True, 4), (None, False, 16), (None, True, 16)}
    for recipe in recipes.RECIPES:
        row = rows[recipe.name]
        assert int(row["tokens"]) == recipes.worst_tokens(recipe.micro_batch)
        estimate = float(row["estimate"])
        assert estimate == recipe.estimate_gb()
        m = measured.get(recipe.key)
        if m is None:   # the others must say so
            assert row["measured"] == row["speed"] == row["ratio"] == "未测"
        else:           # measured peak and speed with the GPU named, random or worst batch said
            assert row["measured"].startswith(str(m.peak_gb)) and m.gpu in row["measured"]
            assert row["speed"].startswith(f"{m.samples_per_s:.1f}") and m.gpu in row["speed"]
            assert ("最坏批" in row["measured"]) is m.worst_case
        for size in sizes:
            fit = recipes.fit_peak_gb(recipe, measured)[0] <= 0.9 * size
            assert row["fits"][size] == ("✓" if fit else "✗"), (recipe.name, size)
        ticks = [row["fits"][s] == "✓" for s in sizes]
        assert ticks == sorted(ticks)   # a recipe that fits a card fits every larger card
    assert auto[12] == "—" and auto[16] == "qlora_ckpt_mb4" and auto[80] == "bf16_mb16"


def fake_measurements(**worst_peaks) -> dict:
    """The shipped measurements, with worst-case peaks (GB, tensors) added for some recipes."""
    out = dict(recipes.load_measurements())
    for key, peak in worst_peaks.items():
        old = out.get(key)
        out[key] = recipes.Measurement(key, "Fake GPU", peak, recipes.worst_tokens(BY_KEY[key].micro_batch),
                                       True, old.samples_per_s if old else None, None, "test")
    return out


@pytest.mark.parametrize("card, key, code, basis", [
    (16, "qlora_ckpt_mb4", "estimated_fit", "estimate"),          # bf16 does not fit: 4-bit, no speed measured
    (24, "bf16_ckpt_mb4", "measured_fastest_fit", "estimate"),   # mb16's worst case (est. 26.7 GB) does not fit
    (48, "bf16_ckpt_mb16", "measured_fastest_fit", "estimate"),  # 18.1 samples/s measured; no-ckpt worst > 43 GB
    (80, "bf16_mb16", "measured_fastest_fit", "estimate"),       # the fastest measured recipe fits
])
def test_auto_choice_on_faked_cards_with_the_shipped_measurements(card, key, code, basis):
    choice = recipes.choose(card)
    assert (choice.recipe.key, choice.code, choice.peak_basis) == (key, code, basis)
    assert choice.limit_gb == pytest.approx(0.9 * card, abs=0.05) and choice.peak_gb <= choice.limit_gb
    measured = recipes.load_measurements()
    # every recipe ranked before the chosen one was passed over, each for a stated reason
    ahead = recipes.ranked(measured)[: recipes.ranked(measured).index(choice.recipe)]
    assert [k for k, _ in choice.passed_over] == [r.key for r in ahead]
    for k, why in choice.passed_over:
        r = BY_KEY[k]
        assert why == ("opt_in" if not r.auto else "needs_liger" if r.kernels else "over_memory")
        if why == "over_memory":
            assert recipes.fit_peak_gb(r, measured)[0] > choice.limit_gb
    if choice.speed_basis == "measured":
        assert choice.samples_per_s == measured[key].samples_per_s and choice.measured_on == "NVIDIA H200"
        # measured speed first: no measured recipe that fits is faster
        faster = [m for m in measured.values() if m.samples_per_s > choice.samples_per_s]
        assert all(recipes.fit_peak_gb(BY_KEY[m.key], measured)[0] > choice.limit_gb for m in faster)
    assert str(choice.peak_gb) in choice.reason


def test_a_24_gb_card_gets_micro_batch_16_when_its_measured_worst_case_fits():
    # measured worst-case peak 19.5 GB + 1.5 GB overhead = 21.0 <= 21.6 (90% of 24): micro-batch 16 x 1, ckpt
    choice = recipes.choose(24, fake_measurements(bf16_ckpt_mb16=19.5))
    assert (choice.recipe.key, choice.code, choice.peak_basis, choice.peak_gb) == (
        "bf16_ckpt_mb16", "measured_fastest_fit", "measured_worst_case", 21.0)
    assert choice.samples_per_s == 18.1
    # 20.5 + 1.5 = 22.0 > 21.6: back to micro-batch 4, micro-batch 16 passed over for memory
    choice = recipes.choose(24, fake_measurements(bf16_ckpt_mb16=20.5))
    assert choice.recipe.key == "bf16_ckpt_mb4" and ("bf16_ckpt_mb16", "over_memory") in choice.passed_over
    # a measured worst case decides even where the estimate says no
    assert BY_KEY["bf16_ckpt_mb16"].estimate_gb() > 21.6


def test_liger_recipes_only_where_liger_runs_and_dropout_0_only_on_request():
    without = recipes.choose(16)   # every bf16 recipe passed over, each for its reason
    assert ("bf16_ckpt_mb16_liger", "needs_liger") in without.passed_over
    assert ("bf16_ckpt_mb16_nodrop", "opt_in") in without.passed_over
    # with liger-kernel: its estimate (no logits held) fits 24 GB, but measured recipes still rank first
    assert recipes.choose(24, liger=True).recipe.key == "bf16_ckpt_mb4"
    liger = BY_KEY["bf16_ckpt_mb16_liger"]
    assert liger.estimate_gb() <= 21.6 and "kernels=liger" in liger.settings
    # once measured faster than the course default, Liger's micro-batch 16 is the 24 GB choice
    measured = fake_measurements(bf16_ckpt_mb16_liger=18.9)
    measured["bf16_ckpt_mb16_liger"] = dataclasses.replace(measured["bf16_ckpt_mb16_liger"], samples_per_s=20.0)
    assert recipes.choose(24, measured, liger=True).recipe.key == "bf16_ckpt_mb16_liger"
    assert recipes.choose(24, measured, liger=False).recipe.key == "bf16_ckpt_mb4"
    nodrop = BY_KEY["bf16_ckpt_mb16_nodrop"]
    assert not nodrop.auto and "lora.lora_dropout=0" in nodrop.settings
    assert nodrop.estimate_gb() < BY_KEY["bf16_ckpt_mb16"].estimate_gb()


def test_no_gpu_and_nothing_fits_have_their_codes():
    assert recipes.choose(None).code == "no_gpu" and recipes.choose(None).recipe is None
    nothing = recipes.choose(8)
    assert nothing.code == "nothing_fits" and nothing.recipe is None
    assert {why for _, why in nothing.passed_over} <= {"over_memory", "needs_liger", "opt_in"}


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
    assert "Fake 16GB" in out and BY_KEY["qlora_ckpt_mb4"].name in out
    assert "--set quantization=nf4" in out


def test_recipe_auto_on_an_80_gb_card_picks_bf16_without_checkpointing(monkeypatch, captured, capsys):
    fake_gpu(monkeypatch, 80, name="Fake 80GB")
    assert run_main(["--recipe", "auto"]) == "trained"
    (spec,) = captured
    assert spec.quantization is None and spec.config_file.name == "qwen3-8b.yaml"
    assert spec.training["activation_checkpointing"] is False
    assert spec.training["per_device_train_batch_size"] == 16
    assert spec.training["gradient_accumulation_steps"] == 1   # the effective batch stays 16
    assert BY_KEY["bf16_mb16"].name in capsys.readouterr().out


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


# --------------------------------------------------------------------------- kernels: liger


def test_kernels_liger_is_refused_before_any_model_loads(monkeypatch, captured, capsys):
    import torch

    from helpers import models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_base_model", no_loading)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_main(["--config", "configs/train/tiny.yaml", "--set", "kernels=liger"]) == 2
    assert captured == []
    first, *rest = capsys.readouterr().err.strip().splitlines()
    assert "kernels: liger" in first and "CUDA" in first
    assert rest == [DEBUG_HINT]   # the course CLI's one error line and its hint


def test_kernels_key_is_validated_like_the_others(monkeypatch):
    from helpers import spec as spec_module
    from helpers.spec import SpecError, build_spec

    def build(*overrides, cuda=False):
        return build_spec("configs/train/tiny.yaml", list(overrides), env={}, settings_file=None, cuda=cuda)

    assert build().kernels is None and build("kernels=null").kernels is None
    with pytest.raises(SpecError, match=r"kernels .*null.*liger.*'triton'"):
        build("kernels=triton")
    with pytest.raises(SpecError, match="kernels: liger .*CUDA GPU"):
        build("kernels=liger")
    monkeypatch.setattr(spec_module, "liger_installed", lambda: False)
    with pytest.raises(SpecError, match="liger-kernel==0.8.5"):
        build("kernels=liger", cuda=True)
    monkeypatch.setattr(spec_module, "liger_installed", lambda: True)
    spec = build("kernels=liger", cuda=True)
    assert spec.kernels == "liger" and spec.to_dict()["kernels"] == "liger"


def test_kernels_liger_patches_qwen3_before_the_model_is_built(monkeypatch, tiny_spec):
    """helpers.train.apply_kernels calls Liger's own Qwen3 patch with the four kernels (a stand-in module
    here: liger-kernel needs Triton and a GPU)."""
    import sys
    import types

    from helpers import train

    calls = []
    fake = types.ModuleType("liger_kernel.transformers")
    fake.apply_liger_kernel_to_qwen3 = lambda **kw: calls.append(kw)
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    assert train.apply_kernels(tiny_spec) == [] and calls == []
    assert train.apply_kernels(tiny_spec.replace(kernels="liger")) == [
        "rope", "rms_norm", "swiglu", "fused_linear_cross_entropy"]
    assert calls == [{"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                      "fused_linear_cross_entropy": True}]


def test_recipe_auto_in_a_launch_asks_only_its_own_gpu(monkeypatch, captured, capsys):
    # rank 1 of a two-GPU launch: its own card is the 80 GB one; asking card 0 would open a CUDA context there
    import torch

    fake_gpu(monkeypatch, 80, name="Fake 80GB")
    asked = []
    free_of = torch.cuda.mem_get_info
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=0: asked.append(device) or free_of(device))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_main(["--recipe", "auto"]) == "trained"
    assert asked == [1]
    (spec,) = captured
    assert spec.training["per_device_train_batch_size"] == 16


def test_recipe_auto_without_a_gpu_keeps_the_config_and_says_so():
    assert recipes.auto_recipe(None, ["training.max_steps=2"], "tiny", None)[:2] == (None, ["training.max_steps=2"])
    assert "保留 tiny 的默认配置" in recipes.auto_recipe(None, [], "tiny", None)[2]
    assert "configs/train/qwen3-8b.yaml" in recipes.auto_recipe("configs/train/qwen3-8b.yaml", [], "full", None)[2]
