"""Notebook 02: what Qwen3's chat template turns a conversation into.

The model never sees "messages"; it sees one string built by the Jinja chat
template stored with the tokenizer. These helpers render the course's
three-message example and list the special tokens that structure it.
"""

from __future__ import annotations

#: The three-message example of the original tutorial.
EXAMPLE_MESSAGES = [
    {"role": "system", "content": "===system_message_test==="},
    {"role": "user", "content": "===user_message_test==="},
    {"role": "assistant", "content": "===assistant_message_test==="},
]

#: The special tokens that structure a Qwen3 conversation, and what each does.
SPECIAL_TOKENS = {
    "<|im_start|>": "starts a turn; the role name follows",
    "<|im_end|>": "ends a turn (the model's end-of-answer / eos token)",
    "<|endoftext|>": "end of document; used as the pad token",
    "<think>": "opens the reasoning block",
    "</think>": "closes the reasoning block",
}

#: The empty reasoning block that ``enable_thinking=False`` pre-fills.
EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"


def render(tokenizer, messages=None, enable_thinking: bool = True, add_generation_prompt: bool = True) -> str:
    """Render ``messages`` as text with the tokenizer's own chat template."""
    return tokenizer.apply_chat_template(
        messages if messages is not None else EXAMPLE_MESSAGES,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
    )


def special_token_ids(tokenizer) -> dict[str, int]:
    """Token id of each special token, read from the tokenizer."""
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}


def difference(with_thinking: str, without_thinking: str) -> str:
    """What ``enable_thinking=False`` adds at the end of the generation prompt."""
    if not without_thinking.startswith(with_thinking):
        raise ValueError("the two renderings differ before the generation prompt")
    return without_thinking[len(with_thinking):]
