"""Solutions to notebook 02's exercises: what the chat template adds, keeps and drops.

Only the tokenizer is needed (the real Qwen3 tokenizer of the tiny profile's model folder).

Run from the repository root:  python solutions/02_chat_template.py [exercise number]
"""

from functools import cache

from _common import exercise, run, tiny_spec, tiny_tokenizer

from helpers import chat_template as ct
from helpers import data, data_files, validation


@cache
def tokenizer():
    return tiny_tokenizer(tiny_spec())


def ids(text: str) -> list[int]:
    return tokenizer()(text, add_special_tokens=False)["input_ids"]


@exercise(1, "空思考块有几个 token")
def empty_think_block():
    tok = tokenizer()
    question = ct.EXAMPLE_MESSAGES[:2]
    off = ids(ct.render(tok, question, enable_thinking=False))
    on = ids(ct.render(tok, question, enable_thinking=True))
    block = ids(ct.EMPTY_THINK_BLOCK)
    print(f"enable_thinking=False 的提示 {len(off)} 个 token，True 的提示 {len(on)} 个 token，差 {len(off) - len(on)} 个")
    print("空思考块的 token:", [(i, tok.decode([i])) for i in block])
    assert len(off) - len(on) == len(block) == 4
    assert off[:len(on)] == on and off[len(on):] == block, "the block is appended after 'assistant\\n'"
    assert block == [tok.convert_tokens_to_ids("<think>"), ids("\n\n")[0], tok.convert_tokens_to_ids("</think>"),
                     ids("\n\n")[0]]

    # Every training sample carries the block: how many tokens is that on the course's data?
    spec = tiny_spec()
    records = validation.load_records(data_files.course_dataset_path(spec, progress=False)).records
    samples, _ = data.encode_records(records, tok, spec.data.system_prompt, spec.data.max_length)
    with_block = sum(1 for s in samples if _contains(s["input_ids"], block))
    total = sum(len(s["input_ids"]) for s in samples)
    print(f"{len(samples)} 条训练样本都带着它: {with_block * len(block)} 个 token，占全部 {total} 个 token 的 "
          f"{with_block * len(block) / total:.1%}")
    assert with_block == len(samples)


def _contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i:i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


@exercise(2, "历史里的思考内容去哪了")
def thinking_in_history():
    tok = tokenizer()
    history = [
        {"role": "system", "content": "现在你要扮演皇帝身边的女人--甄嬛"},
        {"role": "user", "content": "你是谁？"},
        {"role": "assistant", "content": "<think>\n先想想怎么自我介绍。\n</think>\n\n我是甄嬛。"},
    ]
    last_turn = tok.apply_chat_template(history, tokenize=False)
    next_question = ct.render(tok, history + [{"role": "user", "content": "你住在哪里？"}], enable_thinking=False)
    print("它是最后一轮时:\n" + last_turn)
    print("后面又有了新问题时:\n" + next_question)
    assert "先想想怎么自我介绍" in last_turn, "the last assistant turn keeps its reasoning"
    assert "先想想怎么自我介绍" not in next_question and "我是甄嬛。" in next_question, \
        "earlier turns keep only the answer: the template drops their reasoning"


@exercise(3, "不给系统提示，模板会不会自己补一句")
def no_system_prompt():
    tok = tokenizer()
    without = ct.render(tok, [{"role": "user", "content": "你是谁？"}], enable_thinking=False)
    print(without)
    assert without.startswith("<|im_start|>user\n"), "Qwen3's template adds no default system prompt"
    assert "system" not in without
    with_prompt = data.render_prompt(tok, data.build_messages("你是谁？", system_prompt="现在你要扮演皇帝身边的女人--甄嬛"))
    extra = len(ids(with_prompt)) - len(ids(without))
    print(f"加上训练时的系统提示多出 {extra} 个 token")
    assert extra == len(ids("<|im_start|>system\n现在你要扮演皇帝身边的女人--甄嬛<|im_end|>\n"))


if __name__ == "__main__":
    run()
