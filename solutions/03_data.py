"""Solutions to notebook 03's exercises: padding, a moved system prompt, and max_length.

They use the tiny profile's data (``data/huanhuan_sample.json``, all 48 rows, as notebook 03 does)
and the real Qwen3 tokenizer. Nothing is written to the workspace.

Run from the repository root:  python solutions/03_data.py [exercise number]
"""

import math
from functools import cache

from _common import exercise, run, tiny_spec, tiny_tokenizer

from helpers import data, data_files, original, padding, validation


@cache
def course_data():
    """(spec, tokenizer, records, encoded samples) as in notebook 03."""
    spec = tiny_spec()
    tokenizer = tiny_tokenizer(spec)
    records = validation.load_records(data_files.course_dataset_path(spec, progress=False)).records
    samples, _ = data.encode_records(records, tokenizer, spec.data.system_prompt, spec.data.max_length)
    return spec, tokenizer, records, samples


@exercise(1, "找出填充最多的批次")
def padding_heavy_batch():
    spec, tokenizer, records, samples = course_data()
    lengths = [len(s["input_ids"]) for s in samples]
    batch_size = spec.training["per_device_train_batch_size"]
    order = padding.random_order(len(lengths), seed=0)  # notebook 03's random batches
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def share(batch):
        longest = max(lengths[i] for i in batch)
        return (longest * len(batch) - sum(lengths[i] for i in batch)) / (longest * len(batch))

    worst = max(batches, key=share)
    print(f"{len(batches)} 个随机批次（每批 {batch_size} 条，seed 0），填充最多的是第 {batches.index(worst) + 1} 批:")
    for i in worst:
        print(f"  第 {i + 1:>2} 行 {lengths[i]:>3} 个 token  {records[i]['instruction'][:20]}")
    print(f"  补齐到 {max(lengths[i] for i in worst)}，填充占 {share(worst):.1%}")

    # Independent check: render each row's whole conversation with the chat template (no encoder of ours),
    # drop the template's trailing "\n", and count again.
    again = [len(tokenizer(data.render_conversation(tokenizer, records[i], spec.data.system_prompt),
                           add_special_tokens=False)["input_ids"]) - 1 for i in worst]
    recomputed = 1 - sum(again) / (max(again) * len(again))
    print(f"用对话模板重新分词核对: 长度 {again}，填充占比 {recomputed:.1%}")
    assert again == [lengths[i] for i in worst]
    assert math.isclose(recomputed, share(worst))
    total_padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    table = padding.padding_table(lengths, batch_size=batch_size, seed=0)
    assert total_padding == table[0].padding, "the batches add up to the table's random-batch row"
    assert share(worst) > table[0].padding_share, "the worst batch is worse than the average"


@exercise(2, "把系统提示挪到用户消息里")
def moved_system_prompt():
    spec, tokenizer, records, _ = course_data()
    question = records[0]["instruction"]
    trained = data.render_prompt(tokenizer, data.build_messages(question, system_prompt=spec.data.system_prompt))
    asked = data.render_prompt(tokenizer, original.original_inference_messages(question))
    a = tokenizer(trained, add_special_tokens=False)["input_ids"]
    b = tokenizer(asked, add_special_tokens=False)["input_ids"]
    same_start = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    same_end = next(i for i, (x, y) in enumerate(zip(reversed(a), reversed(b), strict=False)) if x != y)
    print(f"训练时的提示 {len(a)} 个 token，原教程推理时的提示 {len(b)} 个 token")
    print(f"开头只有 {same_start} 个 token 相同（{tokenizer.decode(a[:same_start])!r}），第 {same_start} 个 token: "
          f"{tokenizer.decode(a[same_start:same_start + 1])!r} vs {tokenizer.decode(b[same_start:same_start + 1])!r}")
    print(f"结尾有 {same_end} 个 token 相同: {tokenizer.decode(a[-same_end:])!r}")
    assert same_start == 1 and tokenizer.decode(a[1:2]) == "system" and tokenizer.decode(b[1:2]) == "user"
    assert tokenizer.decode(a[-same_end:]) == f"<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n" \
        "<think>\n\n</think>\n\n", "only the question and the generation prompt are where training had them"

    # Changing the system prompt in the config changes the encoded file's stamp: notebook 04 re-encodes.
    moved = tiny_spec(f"data.system_prompt={original.ORIGINAL_INFERENCE_ROLE_SENTENCE}")
    source = data_files.course_dataset_path(spec, progress=False)
    differences = data_files.stamp_differences(data_files.spec_stamp(spec, source), data_files.spec_stamp(moved, source))
    print("改了 data.system_prompt 以后，编码文件的印章哪里不同:", differences)
    assert len(differences) == 1 and differences[0].startswith("system_prompt:")


@exercise(3, "把 max_length 降到 p90")
def max_length_at_p90():
    spec, tokenizer, records, samples = course_data()
    lengths = [len(s["input_ids"]) for s in samples]
    p90 = padding.length_stats(lengths)["p90"]
    predicted = sum(length > p90 for length in lengths)
    kept, report = data.encode_records(records, tokenizer, spec.data.system_prompt, max_length=p90)
    print(f"p90 = {p90} 个 token；预测丢掉 {predicted} 行（比 p90 长的行）")
    print("编码报告:", report.summary())
    assert len(report.too_long) == predicted == len(records) - len(kept)
    assert all(length > p90 for _, length in report.too_long)
    assert max(len(s["input_ids"]) for s in kept) <= p90
    assert 0 < predicted <= math.ceil(len(records) * 0.1), "nearest-rank p90: at most 10% of rows are longer"


if __name__ == "__main__":
    run()
