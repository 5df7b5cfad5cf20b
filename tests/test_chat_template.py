from helpers import chat_template as ct

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


def test_renderings_equal_the_original_tutorial(tokenizer):
    assert ct.render(tokenizer, enable_thinking=False) == EXPECTED_NO_THINK
    assert ct.render(tokenizer, enable_thinking=True) == EXPECTED_THINK


def test_thinking_off_only_adds_an_empty_think_block(tokenizer):
    diff = ct.difference(ct.render(tokenizer, enable_thinking=True), ct.render(tokenizer, enable_thinking=False))
    assert diff == ct.EMPTY_THINK_BLOCK


def test_special_token_ids(tokenizer):
    assert ct.special_token_ids(tokenizer) == {
        "<|im_start|>": 151644, "<|im_end|>": 151645, "<|endoftext|>": 151643,
        "<think>": 151667, "</think>": 151668,
    }
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
