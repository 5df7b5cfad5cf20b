"""What the original tutorial did, kept to show its pitfalls (notebook 03) and to benchmark
against (``bench/``). Do NOT train with it.
"""

from __future__ import annotations

import difflib

from .data import tokenize_batch


def original_prompt_text(example: dict) -> str:
    """The original's hand-written prompt f-string, literal ``<s>`` included."""
    return (f"<s><|im_start|>system\n现在你要扮演皇帝身边的女人--甄嬛<|im_end|>\n<|im_start|>user\n"
            f"{example['instruction'] + example['input']}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def original_process_func(example: dict, tokenizer) -> dict:
    """The original tutorial's ``process_func``, unchanged in behaviour (per example, MAX_LENGTH 1024)."""
    MAX_LENGTH = 1024
    instruction = tokenizer(original_prompt_text(example), add_special_tokens=False)
    response = tokenizer(f"{example['output']}", add_special_tokens=False)
    input_ids = instruction["input_ids"] + response["input_ids"] + [tokenizer.pad_token_id]
    attention_mask = instruction["attention_mask"] + response["attention_mask"] + [1]
    labels = [-100] * len(instruction["input_ids"]) + response["input_ids"] + [tokenizer.pad_token_id]
    if len(input_ids) > MAX_LENGTH:  # the original cuts the answer and its end token off
        input_ids = input_ids[:MAX_LENGTH]
        attention_mask = attention_mask[:MAX_LENGTH]
        labels = labels[:MAX_LENGTH]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def original_inference_messages(question: str) -> list[dict]:
    """The messages the original's inference code built: the role sentence as a second user turn."""
    return [{"role": "user", "content": "假设你是皇帝身边的女人--甄嬛。"}, {"role": "user", "content": question}]


def token_differences(tokenizer, a: str, b: str) -> list[tuple[int, str, str]]:
    """Where two texts tokenize differently: (token position in ``a`` counted from 1, as the lesson prints it,
    tokens of ``a``, tokens of ``b``)."""
    ids_a, ids_b = tokenize_batch(tokenizer, [a, b])
    matcher = difflib.SequenceMatcher(None, ids_a, ids_b, autojunk=False)
    return [(i1 + 1, tokenizer.decode(ids_a[i1:i2]), tokenizer.decode(ids_b[j1:j2]))
            for op, i1, i2, j1, j2 in matcher.get_opcodes() if op != "equal"]
