"""Solutions to notebook 04's exercises: LoRA's r with and without alpha, and a learning-rate sweep.

Both use transformers and PEFT directly, as the notebook's cells do: ``from_pretrained``,
``LoraConfig`` + ``get_peft_model``, ``TrainingArguments`` + ``Trainer``. Exercise 2 trains in the
solutions' own workspace (``<workspace>/solutions``), so notebook 04's run is left alone.

Run from the repository root:  python solutions/04_train.py [exercise number]
"""

import math

from _common import exercise, run, scratch_spec, tiny_spec, tiny_tokenizer


def lora_model(spec, r: int, alpha: int, rslora: bool = False):
    """The tiny base model with a LoRA of rank ``r`` and ``lora_alpha`` ``alpha`` on the course's 7 layers."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(spec.training["seed"])
    base = AutoModelForCausalLM.from_pretrained(spec.paths.model_dir)
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, use_rslora=rslora,
                        lora_dropout=spec.lora.lora_dropout, target_modules=list(spec.lora.target_modules))
    return get_peft_model(base, config)


def formula(config, r: int, targets) -> int:
    """r x (in + out) for every adapted linear layer, from the model's config (not from PEFT)."""
    hidden, inter = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    shapes = {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
              "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    return config.num_hidden_layers * sum(r * sum(shapes[name]) for name in targets)


@exercise(1, "改 r，固定或不固定 alpha")
def rank_and_alpha():
    spec = tiny_spec()
    tiny_tokenizer(spec)  # builds the tiny model folder when it is missing
    counts, scales = {}, {}
    for r, alpha, rslora in ((8, 32, False), (16, 32, False), (16, 64, False), (8, 32, True), (16, 32, True)):
        model = lora_model(spec, r, alpha, rslora)
        trainable, total = model.get_nb_trainable_parameters()
        scale = model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"]
        counts[r, alpha, rslora], scales[r, alpha, rslora] = trainable, scale
        print(f"r={r:<3} alpha={alpha:<3} rsLoRA={'是' if rslora else '否'}  可训练 {trainable:>7,} / {total:,}，"
              f"缩放 {scale:.3f}")
        assert trainable == formula(model.config, r, spec.lora.target_modules)
        assert math.isclose(scale, alpha / math.sqrt(r) if rslora else alpha / r)
    assert counts[16, 32, False] == 2 * counts[8, 32, False] == counts[16, 64, False]
    assert scales[16, 32, False] == scales[8, 32, False] / 2 and scales[16, 64, False] == scales[8, 32, False]
    assert math.isclose(scales[16, 32, True], scales[8, 32, True] / math.sqrt(2))
    print("r 决定参数量（翻倍），alpha 只决定缩放：固定 alpha、r 翻倍，适配器输出的缩放减半，"
          "所以学习率只是大致不用重调；alpha 跟着 r 翻倍才保持缩放不变；rsLoRA 的缩放是 alpha/√r，只降到 1/√2。")


@exercise(2, "学习率扫一遍，看留出集损失")
def learning_rate_sweep():
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from helpers import data, train

    spec = scratch_spec("lr-sweep")
    tokenizer = tiny_tokenizer(spec)
    train_samples, eval_samples = data.training_data(spec, tokenizer, verbose=False)
    train_dataset, eval_dataset = train.to_train_dataset(train_samples), train.to_train_dataset(eval_samples)
    results = {}
    for lr in (5e-4, 5e-3, 5e-2):
        set_seed(spec.training["seed"])
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(spec.paths.model_dir),
                               LoraConfig(task_type=TaskType.CAUSAL_LM, r=spec.lora.r, lora_alpha=spec.lora.lora_alpha,
                                          target_modules=list(spec.lora.target_modules)))
        args = TrainingArguments(output_dir=str(spec.paths.run_dir / f"lr-{lr:g}"), learning_rate=lr, max_steps=12,
                                 per_device_train_batch_size=4, lr_scheduler_type="cosine", logging_steps=4,
                                 eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
                                 remove_unused_columns=False, seed=spec.training["seed"], use_cpu=True)
        trainer = Trainer(model=model, args=args, train_dataset=train_dataset,
                          data_collator=DataCollatorWithFlattening(return_position_ids=True, separator_id=-100))
        trainer.train()
        train_loss = [e["loss"] for e in trainer.state.log_history if "loss" in e][-1]
        held_out = trainer.evaluate(eval_dataset)["eval_loss"]
        results[lr] = (train_loss, held_out)
        print(f"学习率 {lr:<7g} 最后的训练损失 {train_loss:7.3f}   留出集损失 {held_out:7.3f}")
    best_train = min(results, key=lambda lr: results[lr][0])
    best_held = min(results, key=lambda lr: results[lr][1])
    print(f"训练损失最低：学习率 {best_train:g}；留出集损失最低：学习率 {best_held:g}")
    assert results[5e-4][0] > results[5e-3][0], "too small a step hardly moves in 12 steps"
    assert best_held != best_train, "the lowest train loss (memorising the 8 rows) is not the lowest held-out loss"


if __name__ == "__main__":
    run()
