"""4-bit QLoRA on the tiny profile, on the CPU (bitsandbytes' CPU backend).

* the session's tiny QLoRA training (``configs/train/tiny-qlora.yaml``, tests/conftest.py): the loss
  falls clearly, memory is logged with it to SwanLab, and the adapter reloads on the 4-bit base and
  answers;
* the frozen linear layers really are bitsandbytes ``Linear4bit`` (4-bit NF4, lossy) under the LoRA
  wrappers, and only the LoRA weights train;
* the merged export goes into a full-precision copy of the base: no ``Linear4bit`` left, and the
  merged weight is the unquantised weight plus the LoRA update.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import QLORA_CONFIG as CONFIG
from tests.conftest import tiny_spec_for
from tests.memorised import MEMORISED_ANSWER, MEMORISED_QUESTION

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def losses(log_history):
    return [entry["loss"] for entry in log_history if "loss" in entry]


def test_tiny_qlora_trains(qlora_run):
    from helpers import tracking

    spec, summary = qlora_run
    assert spec.quantization == summary["spec"]["quantization"] == "nf4"
    assert summary["global_step"] == 60
    history = losses(summary["log_history"])
    first, last = history[0], history[-1]
    # a random model starts near ln(vocab) = 11.9 or above; the 8 memorised rows end far below 1
    assert first > 10, history
    assert last < 0.1 * first and last < 1.0, history
    assert sum(history[-5:]) < sum(history[:5]) / 5, history
    recipe = json.loads((summary["checkpoint"] / "course_recipe.json").read_text(encoding="utf-8"))
    assert recipe["quantization"] == "nf4"
    # peak memory (on the CPU: the process RSS) goes to SwanLab with every loss line, as train/memory_gib
    scalars = tracking.read_scalars(summary["swanlab_run"])
    memory = scalars["train/memory_gib"]
    steps = [entry["step"] for entry in summary["log_history"] if "loss" in entry]
    assert [step for step, _ in memory] == [step for step, _ in scalars["train/loss"]] == steps
    assert all(0.05 < value < 64 for _, value in memory), memory


def test_adapter_reloads_on_the_4bit_base_and_answers(qlora_run):
    from bitsandbytes.nn import Linear4bit

    from helpers import inference

    spec, _ = qlora_run
    loaded = inference.load_finetuned(spec)
    assert loaded.checkpoint.name == "checkpoint-60"
    assert any("4-bit" in note for note in loaded.notes), loaded.notes
    assert isinstance(loaded.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, Linear4bit)
    messages = inference.chat_messages([], MEMORISED_QUESTION, loaded.system_prompt)
    settings = inference.greedy_settings(max_new_tokens=40)
    tuned = inference.generate(loaded.model, loaded.tokenizer, messages, settings)
    base = inference.generate(loaded.model, loaded.tokenizer, messages, settings, adapter=False)
    assert tuned.content == MEMORISED_ANSWER
    assert base.content != MEMORISED_ANSWER


def test_linear_layers_are_4bit_and_only_lora_trains(tiny_model_dir):
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit, Params4bit
    from safetensors.torch import load_file

    from helpers import train

    spec = tiny_spec_for(config=CONFIG)
    assert spec.paths.model_dir == tiny_model_dir
    model = train.add_lora(spec, train.load_model_for_training(spec))
    inner = model.base_model.model
    assert inner.is_loaded_in_4bit
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    wrapped = 0
    for index, layer in enumerate(inner.model.layers):
        for name in TARGETS:
            owner = layer.self_attn if name in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            lora_layer = getattr(owner, name)
            base = lora_layer.base_layer
            assert isinstance(base, Linear4bit), f"layer {index} {name}: {type(base)}"
            weight = base.weight
            assert isinstance(weight, Params4bit) and not weight.requires_grad
            assert weight.quant_state.quant_type == "nf4" and weight.quant_state.nested  # double quantisation
            # 4 bits per weight: half a byte each, whatever dtype the packed storage uses
            assert weight.numel() * weight.element_size() * 2 == base.in_features * base.out_features
            # really quantised: the dequantised weight is close to the saved fp32 one, but not equal
            full = original[f"model.layers.{index}.{'self_attn' if owner is layer.self_attn else 'mlp'}.{name}.weight"]
            restored = dequantize_4bit(weight.data, weight.quant_state).float()
            error = (restored - full).abs().max().item()
            assert 0 < error < 0.25 * full.abs().max().item()
            wrapped += 1
    assert wrapped == len(inner.model.layers) * len(TARGETS)
    # embeddings and lm_head are not quantised
    assert not isinstance(inner.lm_head, Linear4bit) and inner.lm_head.weight.dtype == torch.float32
    assert type(inner.model.embed_tokens.weight) is torch.nn.Parameter
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    r = spec.lora.r
    expected = sum(r * (m.base_layer.in_features + m.base_layer.out_features)
                   for layer in inner.model.layers
                   for m in [getattr(layer.self_attn, n) for n in TARGETS[:4]] + [getattr(layer.mlp, n) for n in TARGETS[4:]])
    assert sum(p.numel() for p in trainable.values()) == expected


def test_merge_goes_into_a_full_precision_copy(qlora_run, tmp_path):
    import torch
    from bitsandbytes.nn import Linear4bit
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from helpers import export, inference

    spec, _ = qlora_run
    target = export.export_merged(spec, target=tmp_path / "merged")
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    assert not any(isinstance(module, Linear4bit) for module in merged.modules())
    # merged = the unquantised base weight + scale * B @ A (not the 4-bit weight's rounding)
    base = load_file(str(spec.paths.model_dir / "model.safetensors"))
    checkpoint = spec.paths.run_dir / "checkpoint-60"
    adapter = load_file(str(checkpoint / "adapter_model.safetensors"))
    key = "model.layers.0.self_attn.q_proj"
    lora_a = adapter[f"base_model.model.{key}.lora_A.weight"]
    lora_b = adapter[f"base_model.model.{key}.lora_B.weight"]
    update = (lora_b @ lora_a) * (spec.lora.lora_alpha / spec.lora.r)
    assert update.abs().max() > 1e-3   # the adapter learned something
    got = merged.model.layers[0].self_attn.q_proj.weight.detach()
    assert torch.allclose(got, base[f"{key}.weight"] + update, atol=1e-5)
    # the adapter trained on the 4-bit base still gives the memorised answer on the full-precision base
    tokenizer = inference.load_tokenizer(spec)
    messages = inference.chat_messages([], MEMORISED_QUESTION, inference.read_recipe(checkpoint)["system_prompt"])
    reply = inference.generate(merged, tokenizer, messages, inference.greedy_settings(max_new_tokens=40))
    assert reply.content == MEMORISED_ANSWER


def test_qlora_configs_share_the_lora_targets():
    from helpers.spec import build_spec

    qlora = build_spec("configs/train/qwen3-8b-qlora.yaml", env={}, settings_file=None, cuda=True)
    bf16 = build_spec("configs/train/qwen3-8b.yaml", env={}, settings_file=None, cuda=True)
    tiny = tiny_spec_for(config=CONFIG)
    assert qlora.quantization == tiny.quantization == "nf4" and bf16.quantization is None
    assert qlora.lora == bf16.lora == tiny.lora
    assert qlora.training["bf16"] and qlora.training["activation_checkpointing"]
    assert qlora.training["eval_strategy"] == bf16.training["eval_strategy"]
    assert qlora.data == bf16.data
    assert Path(tiny.config_file).name == "tiny-qlora.yaml" and tiny.data.max_rows == 8
