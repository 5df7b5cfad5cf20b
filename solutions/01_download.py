"""Solutions to notebook 01's exercises: Qwen3-8B's shapes on the ``meta`` device and the tokenizer's vocabulary.

The model is built on the ``meta`` device (shapes only, no memory), exactly as in notebook 01.

Run from the repository root:  python solutions/01_download.py [exercise number]
"""

import torch
from _common import exercise, run, tiny_spec, tiny_tokenizer
from transformers import AutoModelForCausalLM, Qwen3Config

from helpers.models import qwen3_config


def qwen3_8b_on_meta(**changes):
    """Qwen3-8B (its real config.json, with ``changes``) on the meta device."""
    settings = {k: v for k, v in qwen3_config().items() if k not in ("architectures", "model_type")}
    config = Qwen3Config(**{**settings, **changes})
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@exercise(1, "词表占了多少参数")
def vocabulary_share():
    model = qwen3_8b_on_meta()
    total = count(model)
    embeddings = model.model.embed_tokens.weight.numel()
    head = model.lm_head.weight.numel()
    print(f"全部参数 {total:,}；输入嵌入 {embeddings:,}；输出层 lm_head {head:,}")
    print(f"两者合计占 {(embeddings + head) / total:.1%}（Qwen3-8B 不共享这两层的权重）")
    assert embeddings == head == 151_936 * 4096
    assert model.lm_head.weight is not model.model.embed_tokens.weight, "two separate tensors (not tied)"
    assert 0.14 < (embeddings + head) / total < 0.16


@exercise(2, "如果没有分组查询注意力（GQA）")
def without_gqa():
    gqa, mha = qwen3_8b_on_meta(), qwen3_8b_on_meta(num_key_value_heads=32)
    for name, model in (("GQA（8 组 K/V）", gqa), ("每个头一组 K/V（32 组）", mha)):
        attention = model.model.layers[0].self_attn
        print(f"{name:<16} k_proj {tuple(attention.k_proj.weight.shape)}  v_proj {tuple(attention.v_proj.weight.shape)}"
              f"  总参数 {count(model):,}")
    extra = count(mha) - count(gqa)
    print(f"多出 {extra:,} 个参数；每个 token 要缓存的 K/V 变成原来的 {32 // 8} 倍")
    assert tuple(gqa.model.layers[0].self_attn.k_proj.weight.shape) == (1024, 4096)
    assert tuple(mha.model.layers[0].self_attn.k_proj.weight.shape) == (4096, 4096)
    assert extra == 36 * 2 * 4096 * (4096 - 1024), "only k_proj and v_proj grow"
    assert tuple(mha.model.layers[0].mlp.down_proj.weight.shape) == (4096, 12288), "the MLP does not change"


@exercise(3, "词表里多出来的 267 行")
def unused_rows():
    tokenizer = tiny_tokenizer(tiny_spec())
    added = tokenizer.get_added_vocab()
    ids = sorted(added.values())
    print("151668 →", tokenizer.convert_ids_to_tokens(151668), "；151700 →", tokenizer.convert_ids_to_tokens(151700),
          "；decode([151700]) →", repr(tokenizer.decode([151700])))
    print(f"特殊 token {len(added)} 个，id {ids[0]}–{ids[-1]}；普通 token {tokenizer.vocab_size:,} 个；"
          f"len(tokenizer) = {len(tokenizer):,}")
    assert tokenizer.convert_ids_to_tokens(151668) == "</think>"
    assert tokenizer.convert_ids_to_tokens(151700) is None and tokenizer.decode([151700]) == ""
    assert len(added) == 26 and ids == list(range(151_643, 151_669))
    assert tokenizer.vocab_size + len(added) == len(tokenizer) == 151_669
    print(f"模型的 151,936 行里有 {151_936 - len(tokenizer)} 行没有对应的 token")


if __name__ == "__main__":
    run()
