"""Solutions to notebook 04's exercises: LoRA's r and alpha, and which checkpoints are kept.

Exercise 1 builds the tiny model with LoRA exactly as ``python -m helpers.train`` does, with the
settings changed by ``--set``-style overrides. Exercise 2 trains a few steps in the solutions'
own workspace (``<workspace>/solutions``), so notebook 04's run is left alone.

Run from the repository root:  python solutions/04_train.py [exercise number]
"""

from _common import exercise, run, scratch_spec, tiny_spec, train_fresh

from helpers import checkpoints, models, train


def lora_model(*overrides: str):
    """The tiny base model with the spec's LoRA on it (helpers.train's own two steps)."""
    spec = tiny_spec(*overrides)
    return spec, train.add_lora(spec, models.load_base_model(spec, for_training=True))


def formula(config, r: int, targets) -> int:
    """r x (in + out) for every adapted linear layer, from the model's config (not from PEFT)."""
    hidden, inter = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    shapes = {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
              "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    return config.num_hidden_layers * sum(r * sum(shapes[name]) for name in targets)


@exercise(1, "改 r 和 alpha，预测可训练参数量")
def rank_and_alpha():
    counts = {}
    for overrides in ((), ("lora.r=16",), ("lora.lora_alpha=64",), ("lora.r=16", "lora.lora_alpha=64")):
        spec, model = lora_model(*overrides)
        trainable, total = model.get_nb_trainable_parameters()
        scaling = model.get_base_model().model.layers[0].self_attn.q_proj.scaling["default"]
        counts[spec.lora.r, spec.lora.lora_alpha] = trainable
        print(f"--set {' '.join(overrides) or '（默认）':<32} r={spec.lora.r:<3} alpha={spec.lora.lora_alpha:<3} "
              f"可训练 {trainable:>7,} / {total:,}，缩放 alpha/r = {scaling:g}")
        assert trainable == formula(model.config, spec.lora.r, spec.lora.target_modules)
        assert scaling == spec.lora.lora_alpha / spec.lora.r
    assert counts[16, 32] == 2 * counts[8, 32] and counts[8, 64] == counts[8, 32] and counts[16, 64] == counts[16, 32]
    print("r 翻倍，可训练参数翻倍；alpha 不改变参数量，只改变适配器输出的缩放。")


@exercise(2, "save_steps 和 save_total_limit：最后留下哪些检查点")
def kept_checkpoints():
    max_steps, save_steps, limit = 6, 2, 2
    spec = scratch_spec("kept-checkpoints", f"training.max_steps={max_steps}", f"training.save_steps={save_steps}",
                        f"training.save_total_limit={limit}", "training.logging_steps=1",
                        "training.disable_tqdm=true", "swanlab=null")
    rows = spec.data.max_rows
    per_step = spec.training["per_device_train_batch_size"] * spec.training["gradient_accumulation_steps"]
    predicted = [f"checkpoint-{step}" for step in range(save_steps, max_steps + 1, save_steps)][-limit:]
    print(f"预测: 每 {save_steps} 步存一次、最多留 {limit} 个 → {predicted}；{rows} 行 ÷ 每步 {per_step} 行 = 每轮 "
          f"{rows // per_step} 步，{max_steps} 步 = {max_steps / (rows // per_step):g} 轮")
    summary = train_fresh(spec)
    kept = [p.name for p in checkpoints.checkpoints_in(spec.paths.run_dir)]
    epoch = summary["log_history"][-1]["epoch"]
    print(f"实际: global_step {summary['global_step']}，epoch {epoch:g}，留下 {kept}")
    assert kept == predicted
    assert summary["global_step"] == max_steps and epoch == max_steps / (rows // per_step)
    assert all(checkpoints.is_complete_checkpoint(spec.paths.run_dir / name) for name in kept)


if __name__ == "__main__":
    run()
