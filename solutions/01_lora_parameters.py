"""Solutions to notebook 01's exercises: how many parameters LoRA trains on Qwen3-8B.

The model is built on the ``meta`` device (shapes only, no memory), exactly as in notebook 01,
and PEFT itself counts the trainable parameters; the script compares PEFT's count with the
formula r x (in + out) per adapted linear layer.

Run from the repository root:  python solutions/01_lora_parameters.py [exercise number]
"""

from functools import cache

from _common import exercise, run

from helpers.models import qwen3_on_meta

# Qwen3-8B's shapes (notebook 01's table): (in, out) of each linear layer of one decoder layer.
LAYERS = 36
SHAPES = {
    "q_proj": (4096, 32 * 128), "k_proj": (4096, 8 * 128), "v_proj": (4096, 8 * 128), "o_proj": (32 * 128, 4096),
    "gate_proj": (4096, 12288), "up_proj": (4096, 12288), "down_proj": (12288, 4096),
}
ALL_MODULES = tuple(SHAPES)


def formula(r: int, modules=ALL_MODULES) -> int:
    """LoRA adds A (r x in) and B (out x r) next to every adapted out x in weight, in every layer."""
    return LAYERS * sum(r * (SHAPES[m][0] + SHAPES[m][1]) for m in modules)


@cache
def peft_count(r: int, alpha: int, modules=ALL_MODULES) -> tuple[int, int]:
    """(trainable, total) parameters that PEFT reports for a fresh meta Qwen3-8B with this LoRA."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=0.1,
                        target_modules=list(modules))
    model = get_peft_model(qwen3_on_meta(), config)
    return model.get_nb_trainable_parameters()


@exercise(1, "把 r 从 8 改成 16、把 alpha 从 32 改成 64")
def rank_and_alpha():
    counts = {}
    for r, alpha in ((8, 32), (16, 32), (8, 64), (16, 64)):
        trainable, total = peft_count(r, alpha)
        counts[r, alpha] = trainable
        print(f"r={r:<3} alpha={alpha:<3} 可训练参数 {trainable:>12,}（占 {trainable / total:.3%}），缩放 alpha/r = {alpha / r:g}")
    assert counts[8, 32] == formula(8) == 21_823_488
    assert counts[16, 32] == formula(16) == 2 * counts[8, 32], "the count grows linearly with r"
    assert counts[8, 64] == counts[8, 32] and counts[16, 64] == counts[16, 32], "alpha only scales, adds nothing"
    print("结论: 参数量和 r 成正比（r 翻倍，参数翻倍）；alpha 只改变缩放 alpha/r，不增加参数。")


@exercise(2, "只给注意力层套 LoRA")
def attention_only():
    attention = ("q_proj", "k_proj", "v_proj", "o_proj")
    trainable, _ = peft_count(8, 32, attention)
    everything, _ = peft_count(8, 32)
    print(f"只套 q/k/v/o: {trainable:,} 个参数；七个线性层全套: {everything:,} 个")
    print(f"注意力层只占 LoRA 参数的 {trainable / everything:.1%}：MLP 的三个大矩阵（4096↔12288）才是大头")
    assert trainable == formula(8, attention) == 36 * 8 * (8192 + 5120 + 5120 + 8192)
    assert trainable < everything / 2


@exercise(3, "词表占了多少参数")
def vocabulary_share():
    model = qwen3_on_meta()
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.model.embed_tokens.weight.numel()
    head = model.lm_head.weight.numel()
    print(f"全部参数 {total:,}；输入嵌入 {embeddings:,}；输出层 lm_head {head:,}")
    print(f"两者合计占 {(embeddings + head) / total:.1%}（Qwen3-8B 不共享这两层的权重）")
    assert embeddings == head == 151_936 * 4096
    assert model.lm_head.weight is not model.model.embed_tokens.weight, "two separate tensors (not tied)"
    assert 0.14 < (embeddings + head) / total < 0.16


if __name__ == "__main__":
    run()
