"""Solutions to appendix notebook 08's exercises: one TRL fix at a time, and TRL's max_length and packing.

Nothing is trained: each ``SFTTrainer`` is built only to read the training rows it prepares
(``trainer.train_dataset``) or a batch of its collator. Its output folder is in the solutions'
own workspace (``<workspace>/solutions``).

Run from the repository root:  python solutions/08_trl_sfttrainer.py [exercise number]
"""

from _common import exercise, run, scratch_spec, tiny_tokenizer

from helpers import data, data_files, models, validation

NEWLINE_ID = 198  # the template's "\n" after <|im_end|>


def to_trl_row(record, system_prompt, thinking_off=True):
    """Notebook 08's conversational prompt-completion row (``thinking_off=False``: without chat_template_kwargs)."""
    row = {
        "prompt": data.build_messages(record["instruction"], record["input"], system_prompt),
        "completion": [{"role": "assistant", "content": record["output"]}],
    }
    if thinking_off:
        row["chat_template_kwargs"] = {"enable_thinking": False}
    return row


def stop_at_im_end(chat_template):
    """Notebook 08's training template: the conversation's last assistant turn stops at <|im_end|>."""
    turn_end = "        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}"
    last_turn_stops = ("        {{- '<|im_end|>' }}\n        {%- if not loop.last %}{{- '\\n' }}{%- endif %}\n"
                       "    {%- elif message.role == \"tool\" %}")
    if chat_template.count(turn_end) != 1:
        raise ValueError("这份对话模板结束 assistant 轮次的写法和 Qwen3 的不同，无法只改最后一轮")
    return chat_template.replace(turn_end, last_turn_stops)


def setup():
    spec = scratch_spec("trl-exercises", "swanlab=null")
    tokenizer = tiny_tokenizer(spec)
    records = validation.load_records(data_files.course_dataset_path(spec)).records
    train_records = data_files.split_records(spec, records)[0]
    course, _ = data.encode_records(train_records, tokenizer, spec.data.system_prompt, spec.data.max_length)
    return spec, tokenizer, train_records, course


def sft_trainer(spec, rows, template=None, **options):
    """An SFTTrainer that only prepares ``rows`` (``template``: the chat_template_path file's text)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = None
    if template is not None:
        path = spec.paths.run_dir / "chat_template.jinja"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template, encoding="utf-8")
    config = SFTConfig(output_dir=str(spec.paths.run_dir), report_to="none", bf16=False,
                       activation_checkpointing=False, chat_template_path=str(path) if path else None, **options)
    return SFTTrainer(model=models.load_base_model(spec), args=config, train_dataset=Dataset.from_list(rows),
                      processing_class=AutoTokenizer.from_pretrained(spec.paths.model_dir))


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != data.IGNORE_INDEX])


@exercise(1, "只加一个修正")
def one_fix_at_a_time():
    spec, tokenizer, records, course = setup()
    system = spec.data.system_prompt
    kwargs_only = sft_trainer(spec, [to_trl_row(r, system) for r in records], max_length=None).train_dataset
    template_only = sft_trainer(spec, [to_trl_row(r, system, thinking_off=False) for r in records],
                                template=stop_at_im_end(tokenizer.chat_template), max_length=None).train_dataset
    first = course[0]
    print(f"课程: {len(first['input_ids'])} 个 token，训练 {trained_text(tokenizer, first)!r}")
    for name, rows in (("只加 chat_template_kwargs", kwargs_only), ("只换模板", template_only)):
        row = rows[0]
        print(f"{name}: {len(row['input_ids'])} 个 token，训练 {trained_text(tokenizer, row)!r}")
    for row, ours, record in zip(kwargs_only, course, records, strict=True):
        assert row["input_ids"] == ours["input_ids"] + [NEWLINE_ID]           # one token longer: the "\n"
        assert trained_text(tokenizer, row) == record["output"] + "<|im_end|>\n"  # and it is trained
    for row, ours, record in zip(template_only, course, records, strict=True):
        assert row["input_ids"] == ours["input_ids"]                           # the same tokens
        assert trained_text(tokenizer, row) == "<think>\n\n</think>\n\n" + record["output"] + "<|im_end|>"
    print("chat_template_kwargs 只改变 labels（空思考块不再训练）；换模板改变 input_ids 的长度（去掉最后的 \\n）。")


@exercise(2, "打开 TRL 的 max_length")
def max_length_and_packing():
    spec, tokenizer, records, course = setup()
    rows = [to_trl_row(r, spec.data.system_prompt) for r in records]
    template = stop_at_im_end(tokenizer.chat_template)
    try:
        sft_trainer(spec, rows, template=template, padding_free=True, max_length=spec.data.max_length)
        raise AssertionError("padding_free with max_length and no packing was accepted")
    except ValueError as err:
        print("padding_free + max_length（不打包）:", str(err)[:90], "…")
    longest = max(len(s["input_ids"]) for s in course)
    packed = sft_trainer(spec, rows, template=template, packing=True, max_length=2 * longest + 8)
    first = packed.train_dataset[0]
    batch = packed.data_collator([first])
    starts = int((batch["position_ids"][0] == 0).sum())
    print(f"packing=True, max_length={2 * longest + 8}: {len(course)} 条样本装成 {len(packed.train_dataset)} 行；"
          f"第一行 {len(first['input_ids'])} 个 token，里面有 {starts} 条样本（position_ids 从 0 重新数的次数）")
    assert packed.padding_free and starts >= 2 and len(packed.train_dataset) < len(course)
    print("打包后一步看到的是装箱决定的几行，而不再是随机抽取的 4 条样本。")


if __name__ == "__main__":
    run()
