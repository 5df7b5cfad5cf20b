"""Solutions to notebook 02's exercises: what the chat template adds, keeps and drops.

Only the tokenizer is needed (the real Qwen3 tokenizer of the tiny profile's model folder).

Run from the repository root:  python solutions/02_chat_template.py [exercise number]
"""

from functools import cache

from _common import exercise, run, tiny_spec, tiny_tokenizer

SYSTEM_PROMPT = "现在你要扮演皇帝身边的女人--甄嬛"
QUESTION = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "你是谁？"}]


@cache
def tokenizer():
    return tiny_tokenizer(tiny_spec())


def ids(text: str) -> list[int]:
    return tokenizer()(text, add_special_tokens=False)["input_ids"]


def prompt(messages: list[dict], enable_thinking: bool) -> str:
    return tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                           enable_thinking=enable_thinking)


@exercise(1, "空思考块有几个 token")
def empty_think_block():
    tok = tokenizer()
    off, on = ids(prompt(QUESTION, False)), ids(prompt(QUESTION, True))
    print(f"enable_thinking=False 的提示 {len(off)} 个 token，True 的提示 {len(on)} 个 token，差 {len(off) - len(on)} 个")
    extra = off[len(on):]
    print("多出来的 token:", [(i, tok.decode([i])) for i in extra])
    assert off[:len(on)] == on, "the block is appended after 'assistant\\n'"
    newlines = ids("\n\n")
    assert len(newlines) == 1
    assert extra == [tok.convert_tokens_to_ids("<think>"), newlines[0], tok.convert_tokens_to_ids("</think>"), newlines[0]]

    # A whole training conversation: the last assistant turn carries the block, the answer follows it.
    conversation = tok.apply_chat_template(QUESTION + [{"role": "assistant", "content": "我是甄嬛。"}], tokenize=False)
    print("完整对话:\n" + conversation)
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\n我是甄嬛。<|im_end|>" in conversation
    assert conversation.startswith(prompt(QUESTION, False)), "a training sample = the inference prompt + the answer"


@exercise(2, "历史里的思考内容去哪了")
def thinking_in_history():
    tok = tokenizer()
    history = QUESTION + [{"role": "assistant", "content": "<think>\n先想想怎么自我介绍。\n</think>\n\n我是甄嬛。"}]
    last_turn = tok.apply_chat_template(history, tokenize=False)
    next_question = prompt(history + [{"role": "user", "content": "你住在哪里？"}], False)
    print("它是最后一轮时:\n" + last_turn)
    print("后面又有了新问题时:\n" + next_question)
    assert "先想想怎么自我介绍" in last_turn, "the last assistant turn keeps its reasoning"
    assert "先想想怎么自我介绍" not in next_question and "我是甄嬛。" in next_question, \
        "earlier turns keep only the answer: the template drops their reasoning"


@exercise(3, "不给系统提示，模板会不会自己补一句")
def no_system_prompt():
    without = prompt([{"role": "user", "content": "你是谁？"}], False)
    print(without)
    assert without.startswith("<|im_start|>user\n"), "Qwen3's template adds no default system prompt"
    assert "system" not in without
    with_prompt = prompt(QUESTION, False)
    extra = len(ids(with_prompt)) - len(ids(without))
    print(f"加上训练时的系统提示多出 {extra} 个 token")
    assert with_prompt == f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n" + without
    assert extra == len(ids(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"))


if __name__ == "__main__":
    run()
