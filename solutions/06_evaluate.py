"""Solutions to notebook 06's exercises: held-out loss, and a repetition penalty.

Both use the tiny memorisation adapter (see solutions/_common.py: the ``adapter_dir`` setting,
else notebook 04's tiny run, else one trained here once) and the tiny profile's held-out split.

Run from the repository root:  python solutions/06_evaluate.py [exercise number]
"""

import math
from functools import cache

from _common import exercise, memorised_adapter, prompt_inputs, run, tiny_spec

from helpers import data, data_files, inference, models, validation
from helpers.metrics import distinct_n


@cache
def setup():
    """(loaded adapter, training records, held-out records)."""
    spec = tiny_spec()
    loaded = inference.load_finetuned(spec, memorised_adapter(spec))
    records = validation.load_records(data_files.course_dataset_path(spec, progress=False)).records
    trained, held_out, _ = data_files.split_records(spec, records)
    return loaded, trained, held_out


def answer_nll(loaded, records, adapter: bool) -> float:
    """Mean loss per answer token (answers and their <|im_end|> only; prompts are masked with -100)."""
    import torch

    samples, _ = data.encode_records(records, loaded.tokenizer, loaded.system_prompt)
    total, tokens = 0.0, 0
    for sample in samples:
        ids = torch.tensor([sample["input_ids"]], device=loaded.model.device)
        labels = torch.tensor([sample["labels"]], device=loaded.model.device)
        counted = sum(label != data.IGNORE_INDEX for label in sample["labels"][1:])  # the loss shifts by one
        with models.adapter_switch(loaded.model, adapter), torch.inference_mode():
            total += loaded.model(input_ids=ids, labels=labels).loss.item() * counted
        tokens += counted
    return total / tokens


@exercise(1, "背下来不等于学会：训练集和留出集上的损失")
def held_out_loss():
    loaded, trained, held_out = setup()
    table = {}
    for name, records in (("训练集（8 条记忆样本）", trained), (f"留出集（{len(held_out)} 条）", held_out)):
        for adapter in (False, True):
            table[name, adapter] = answer_nll(loaded, records, adapter)
            print(f"{name:<14} {'LoRA' if adapter else '基座'}: 损失 {table[name, adapter]:7.3f}，"
                  f"困惑度 {math.exp(table[name, adapter]):12.1f}")
    train_name, held_name = list(dict.fromkeys(name for name, _ in table))
    assert table[train_name, True] < 0.1 and table[train_name, False] > 10, "the training answers are memorised"
    assert table[held_name, True] > 50 * table[train_name, True], "held-out answers stay unknown"
    assert table[held_name, True] > math.log(10), "held-out perplexity stays above 10: nothing generalised"
    print("结论: 训练集上的损失接近 0，留出集上仍然很高：tiny 模型只是背下了 8 条，没有学到能推广的东西。")


@exercise(2, "重复惩罚能不能治好基座模型的重复")
def repetition_penalty():
    import torch

    loaded, trained, _ = setup()
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = []
    for record in trained:
        messages = inference.chat_messages([], record["instruction"], loaded.system_prompt)
        inputs = prompt_inputs(model, tokenizer, messages)
        scores = []
        for penalty in (1.0, 1.3):
            with model.disable_adapter(), torch.inference_mode():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=48, repetition_penalty=penalty)
            text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            scores.append(distinct_n([text], 2))   # character distinct-2, the metric of notebook 06
        rows.append(scores)
        print(f"{record['instruction']:<10} 基座贪心 distinct-2 {scores[0]:.2f} → repetition_penalty=1.3: {scores[1]:.2f}")
    plain = sum(r[0] for r in rows) / len(rows)
    penalised = sum(r[1] for r in rows) / len(rows)
    print(f"平均 distinct-2: {plain:.3f} → {penalised:.3f}")
    assert penalised > plain, "the penalty pushes the greedy base away from its loops"


if __name__ == "__main__":
    run()
