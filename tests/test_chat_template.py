"""Notebook 02: what Qwen3's chat template (the tokenizer's own ``apply_chat_template``) renders."""

#: The three-message example of the original tutorial.
EXAMPLE_MESSAGES = [
    {"role": "system", "content": "===system_message_test==="},
    {"role": "user", "content": "===user_message_test==="},
    {"role": "assistant", "content": "===assistant_message_test==="},
]
# The original tutorial's renderings, character for character.
EXPECTED_NO_THINK = (
    "<|im_start|>system\n===system_message_test===<|im_end|>\n"
    "<|im_start|>user\n===user_message_test===<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n===assistant_message_test===<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
EXPECTED_THINK = (
    "<|im_start|>system\n===system_message_test===<|im_end|>\n"
    "<|im_start|>user\n===user_message_test===<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n===assistant_message_test===<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def render(tokenizer, enable_thinking: bool) -> str:
    return tokenizer.apply_chat_template(EXAMPLE_MESSAGES, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=enable_thinking)


def test_renderings_equal_the_original_tutorial(tokenizer):
    assert render(tokenizer, enable_thinking=False) == EXPECTED_NO_THINK
    assert render(tokenizer, enable_thinking=True) == EXPECTED_THINK


def test_thinking_off_only_adds_an_empty_think_block(tokenizer):
    with_thinking, without_thinking = render(tokenizer, True), render(tokenizer, False)
    assert without_thinking.startswith(with_thinking)
    assert without_thinking[len(with_thinking):] == "<think>\n\n</think>\n\n"


def test_special_token_ids(tokenizer):
    tokens = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]
    assert tokenizer.convert_tokens_to_ids(tokens) == [151644, 151645, 151643, 151667, 151668]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
