"""Solutions to notebook 03's exercises: the label mask, the prompt format, truncation.

Run from the repository root:  python solutions/03_data.py [exercise number]
"""

from functools import cache

import torch
from _common import exercise, run, tiny_spec, tiny_tokenizer

from helpers import data, data_files, padding, validation

ROLE_SENTENCE = "假设你是皇帝身边的女人--甄嬛。"


@cache
def course_data():
    """(spec, tokenizer, records, encoded samples) as in notebook 03."""
    spec = tiny_spec()
    tokenizer = tiny_tokenizer(spec)
    records = validation.load_records(data_files.course_dataset_path(spec, progress=False)).records
    samples, _ = data.encode_records(records, tokenizer, spec.data.system_prompt, spec.data.max_length)
    return spec, tokenizer, records, samples


def messages(spec, record, answer=True):
    turns = [{"role": "system", "content": spec.data.system_prompt}, {"role": "user", "content": record["instruction"]}]
    return turns + ([{"role": "assistant", "content": record["output"]}] if answer else [])


@exercise(1, "关掉标签遮罩，损失在平均什么")
def label_mask_off():
    from transformers import AutoModelForCausalLM

    spec, tokenizer, records, samples = course_data()
    sample = samples[0]
    model = AutoModelForCausalLM.from_pretrained(spec.paths.model_dir)
    model.eval()
    input_ids = torch.tensor([sample["input_ids"]])
    masked = torch.tensor([sample["labels"]])
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=masked)
        unmasked_loss = model(input_ids=input_ids, labels=input_ids).loss
    # By hand: the logits at position t predict token t+1; only the answer positions (label != -100) count.
    logits, targets = out.logits[0, :-1], masked[0, 1:]
    keep = targets != -100
    by_hand = torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep])
    trained = int((masked != -100).sum())
    prompt_length = len(sample["input_ids"]) - trained
    # The prompt tokens every sample shares: the common start (system turn, "<|im_start|>user\n") and the common end
    # of the prompts ("<|im_end|>\n<|im_start|>assistant\n" and the empty think block).
    prompts = [s["input_ids"][:s["labels"].index(next(x for x in s["labels"] if x != -100))] for s in samples]
    start = common_length(prompts)
    end = common_length([list(reversed(p)) for p in prompts])
    print(f"遮罩时参与损失的 token: {trained} 个；不遮罩时: {len(sample['input_ids']) - 1} 个（第一个 token 没有前文，不预测）")
    print(f"遮罩时的 loss {out.loss.item():.4f}，手算 {by_hand.item():.4f}；不遮罩时的 loss {unmasked_loss.item():.4f}")
    print(f"这条样本的提示有 {prompt_length} 个 token，其中 {start + end} 个在全部 {len(samples)} 条样本里一模一样"
          f"（开头 {start} 个：系统提示那一轮和 user 的开头；结尾 {end} 个：assistant 开头和空思考块）")
    assert torch.allclose(out.loss, by_hand, atol=1e-4), "the model's loss is the mean over the unmasked positions"
    assert trained < prompt_length, "unmasked, most of the loss comes from the prompt"
    assert start + end > prompt_length / 2 and start + end > trained, "and most of the prompt is the same everywhere"


def common_length(sequences) -> int:
    """How many leading items all sequences share."""
    length = 0
    while all(len(s) > length and s[length] == sequences[0][length] for s in sequences):
        length += 1
    return length


@exercise(2, "把系统提示挪到用户消息里")
def role_as_user_message():
    spec, tokenizer, _, _ = course_data()
    question = "你是谁？"

    def prompt_ids(turns):
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True, enable_thinking=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    trained = prompt_ids([{"role": "system", "content": spec.data.system_prompt}, {"role": "user", "content": question}])
    asked = prompt_ids([{"role": "user", "content": ROLE_SENTENCE}, {"role": "user", "content": question}])
    first = next(i for i, (a, b) in enumerate(zip(trained, asked, strict=False)) if a != b)
    tail = next(i for i, (a, b) in enumerate(zip(reversed(trained), reversed(asked), strict=False)) if a != b)
    print(f"训练时的提示 {len(trained)} 个 token，原教程推理时 {len(asked)} 个；从第 {first + 1} 个 token 起不同："
          f"{tokenizer.decode(trained[first:first + 1])!r} vs {tokenizer.decode(asked[first:first + 1])!r}")
    print(f"末尾相同的 token 有 {tail} 个: {tokenizer.decode(trained[-tail:])!r}")
    assert first == 1 and tokenizer.decode(trained[1:2]) == "system" and tokenizer.decode(asked[1:2]) == "user"
    assert question in tokenizer.decode(trained[-tail:]), "only the question and the template's end are shared"


@exercise(3, "截断会切掉什么")
def truncation():
    spec, tokenizer, records, samples = course_data()
    p90 = padding.length_stats([len(s["input_ids"]) for s in samples])["p90"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cut = []
    for record in records:
        text = tokenizer.apply_chat_template(messages(spec, record), tokenize=False)
        full = tokenizer(text, add_special_tokens=False)["input_ids"][:-1]   # without the template's last "\n"
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=p90)["input_ids"]
        if len(full) > p90:
            cut.append((len(full), ids[-1]))
    print(f"p90 = {p90}：截断到 p90 的样本 {len(cut)} 条；它们的最后一个 token:",
          sorted({tokenizer.decode([last]) for _, last in cut}))
    assert 0 < len(cut) <= -(-len(records) // 10), "nearest-rank p90: at most 10% of rows are longer"
    assert all(last != im_end for _, last in cut), "a truncated sample never ends with <|im_end|>"
    print("截断后的样本没有结束符：模型学到的是“话说到一半就停”，所以课程整条丢弃并计数。")


if __name__ == "__main__":
    run()
