"""Solutions to notebook 05's exercises: greedy decoding, and a system prompt that moved.

Both use the tiny memorisation adapter (trained on the first 8 rows of the sample data with
``configs/train/tiny.yaml``): the one named by the ``adapter_dir`` setting
(``QWEN3_TUTORIAL_ADAPTER_DIR``), else notebook 04's tiny run, else one trained here once.

Run from the repository root:  python solutions/05_inference.py [exercise number]
"""

from functools import cache

from _common import exercise, memorised_adapter, prompt_inputs, run, tiny_spec

from helpers import data, data_files, inference, original, validation
from helpers.metrics import distinct_n

#: a system prompt the adapter never saw
OTHER_SYSTEM_PROMPT = "你是一个乐于助人的助手"


@cache
def setup():
    """(loaded adapter, the 8 memorised training rows)."""
    spec = tiny_spec()
    loaded = inference.load_finetuned(spec, memorised_adapter(spec))
    print("适配器:", loaded.checkpoint.parent.name + "/" + loaded.checkpoint.name,
          "| 训练时的系统提示:", loaded.system_prompt)
    records = validation.load_records(data_files.course_dataset_path(spec, progress=False)).records
    memorised, _, _ = data_files.split_records(spec, records)
    return loaded, memorised


MAX_NEW_TOKENS = 48


def generated_ids(loaded, messages, adapter=True) -> list[int]:
    """The new token ids of one greedy reply (special tokens included, so <|im_end|> is visible)."""
    import contextlib

    import torch

    inputs = prompt_inputs(loaded.model, loaded.tokenizer, messages)
    switch = contextlib.nullcontext() if adapter else loaded.model.disable_adapter()
    with switch, torch.inference_mode():
        out = loaded.model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def distinct_2(loaded, ids: list[int]) -> float:
    """Character distinct-2 of the decoded reply (the course's one definition, helpers.metrics.distinct_n)."""
    return distinct_n([loaded.tokenizer.decode(ids, skip_special_tokens=True)], 2)


@exercise(1, "贪心解码：基座模型会不会停下、会不会重复")
def greedy_repetition():
    loaded, memorised = setup()
    tokenizer = loaded.tokenizer
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for record in memorised:
        messages = inference.chat_messages([], record["instruction"], loaded.system_prompt)
        base = generated_ids(loaded, messages, adapter=False)
        lora = generated_ids(loaded, messages, adapter=True)
        rows.append((record["instruction"], base, lora))
        print(f"{record['instruction']:<10} 基座 {len(base):>2} 个 token，distinct-2 {distinct_2(loaded, base):.2f}，"
              f"停在 <|im_end|>: {'是' if base[-1] == im_end else '否'} | LoRA {len(lora):>2} 个 token，"
              f"distinct-2 {distinct_2(loaded, lora):.2f}，停在 <|im_end|>: {'是' if lora[-1] == im_end else '否'}")
    worst = min(rows, key=lambda row: distinct_2(loaded, row[1]))
    print(f"重复最多的基座回答（{worst[0]}）: {tokenizer.decode(worst[1])!r}")
    base_mean = sum(distinct_2(loaded, base) for _, base, _ in rows) / len(rows)
    lora_mean = sum(distinct_2(loaded, lora) for _, _, lora in rows) / len(rows)
    print(f"平均 distinct-2（字符）: 基座 {base_mean:.3f}，LoRA {lora_mean:.3f}（1.0 = 没有任何重复的相邻两个字）")
    assert all(len(base) == MAX_NEW_TOKENS and im_end not in base for _, base, _ in rows), \
        "greedy on the random base never produces <|im_end|>: it runs to max_new_tokens"
    assert all(lora[-1] == im_end for _, _, lora in rows), "the memorised answers end at <|im_end|>"
    assert base_mean < lora_mean


def answer_loss(loaded, messages, answer: str) -> float:
    """Mean loss of the answer's tokens (and its <|im_end|>) after this prompt (teacher forcing)."""
    import torch

    tokenizer = loaded.tokenizer
    prompt = data.prompt_ids_as_text(tokenizer, messages)
    target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([prompt + target], device=loaded.model.device)
    labels = torch.tensor([[data.IGNORE_INDEX] * len(prompt) + target], device=loaded.model.device)
    with torch.inference_mode():
        return loaded.model(input_ids=ids, labels=labels).loss.item()


@exercise(2, "把系统提示挪走：训练和推理对不上")
def moved_system_prompt():
    loaded, memorised = setup()
    layouts = {
        "训练时的系统提示": lambda q: inference.chat_messages([], q, loaded.system_prompt),
        "换一句系统提示": lambda q: inference.chat_messages([], q, OTHER_SYSTEM_PROMPT),
        "没有系统提示": lambda q: inference.chat_messages([], q, None),
        "原教程：设定当作用户消息": original.original_inference_messages,
    }
    settings = inference.greedy_settings(max_new_tokens=24)  # the longest memorised answer is 18 tokens
    losses, exact = {}, {}
    for name, messages_for in layouts.items():
        losses[name] = [answer_loss(loaded, messages_for(r["instruction"]), r["output"]) for r in memorised]
        exact[name] = sum(
            inference.generate(loaded.model, loaded.tokenizer, messages_for(r["instruction"]), settings).content
            == r["output"] for r in memorised)
        print(f"{name:<14} 训练答案的平均损失 {sum(losses[name]) / len(memorised):.3f}，"
              f"一字不差 {exact[name]}/{len(memorised)}")
    trained = losses["训练时的系统提示"]
    assert exact["训练时的系统提示"] == len(memorised)
    assert exact["换一句系统提示"] < len(memorised), "another system prompt breaks some memorised answers"
    for name, values in losses.items():
        if name != "训练时的系统提示":
            assert all(moved > same for moved, same in zip(values, trained, strict=True)), \
                f"{name}: every answer is less likely than with the training prompt"
    print("结论: 只有和训练完全相同的提示格式，模型才最有把握地说出学过的回答。")


if __name__ == "__main__":
    run()
