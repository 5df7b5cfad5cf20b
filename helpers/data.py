"""Notebook 03: turn instruction/input/output records into training samples.

The encoding is built on the tokenizer's own chat template, rendered exactly as
at inference (``enable_thinking=False``: the empty think block):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n   <- prompt, label -100
    {output}<|im_end|>                                    <- answer + end token, trained

The template puts a ``\\n`` after ``<|im_end|>``; we stop at ``<|im_end|>`` because
generation stops there (it is the eos token), so the ``\\n`` is never generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The system prompt used for training AND inference (the original used it for training only).
DEFAULT_SYSTEM_PROMPT = "现在你要扮演皇帝身边的女人--甄嬛"
DEFAULT_MAX_LENGTH = 1024
IGNORE_INDEX = -100


def build_messages(instruction: str, input: str = "", system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """The chat messages for one record (the same at training and inference time)."""
    user = f"{instruction}\n{input}" if input else instruction
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user})
    return messages


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The generation prompt for ``messages``, thinking off (empty think block)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )


_SENTINEL = "\x00USER_MESSAGE\x00"


def prompt_frame(tokenizer, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> tuple[str, str]:
    """Render the chat template ONCE with a placeholder user message.

    Returns the text before and after the user message, so that for every row
    ``head + instruction + tail == render_prompt(...)`` (the tests check this on
    every row of the real dataset) without running Jinja 3,729 times.
    """
    rendered = render_prompt(tokenizer, build_messages(_SENTINEL, "", system_prompt))
    head, tail = rendered.split(_SENTINEL)
    return head, tail


def tokenize_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts in one call to the Rust tokenizer (no special tokens added).

    ``backend_tokenizer.encode_batch_fast`` is the tokenizers library's batched
    encoder without character offsets, which we do not need; it returns the same
    ids as ``tokenizer(texts)`` (tested), about twice as fast.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _splits_cleanly(text: str) -> bool:
    """True when ``text`` can be tokenized apart from the template around it.

    Qwen's pre-tokenizer never merges a newline with a following non-space
    character, and special tokens always split, so a piece that does not start
    with whitespace tokenizes the same alone as inside the full conversation.
    """
    return bool(text) and not text[0].isspace()


@dataclass
class EncodeReport:
    """What encoding did: how many rows, and which were dropped as too long."""

    rows_in: int = 0
    rows_out: int = 0
    max_length: int = DEFAULT_MAX_LENGTH
    #: (row index, full length) of rows dropped because the answer would be cut off
    too_long: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"encoded {self.rows_out} of {self.rows_in} rows (max_length={self.max_length})"
        if self.too_long:
            rows = ", ".join(str(i) for i, _ in self.too_long[:10])
            more = "" if len(self.too_long) <= 10 else f" and {len(self.too_long) - 10} more"
            text += (
                f"; dropped {len(self.too_long)} rows longer than max_length "
                f"(their answers would lose <|im_end|>): rows {rows}{more}"
            )
        return text


def encode_records(
    records: list[dict],
    tokenizer,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> tuple[list[dict], EncodeReport]:
    """Encode records into ``input_ids`` / ``attention_mask`` / ``labels`` (batched).

    Prompt tokens get label -100; the answer and its closing ``<|im_end|>`` are
    trained. Rows whose full length exceeds ``max_length`` are dropped (never
    trained with a cut-off answer) and listed in the report.
    """
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    head, tail = prompt_frame(tokenizer, system_prompt)
    instructions = [f"{r['instruction']}\n{r['input']}" if r.get("input") else r["instruction"] for r in records]
    # One batched call for every variable piece; the fixed head/tail are tokenized once.
    pieces = tokenize_batch(tokenizer, instructions + [r["output"] for r in records])
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    prompt_ids, answer_ids = [], pieces[len(records):]
    for index, text in enumerate(instructions):
        if _splits_cleanly(text) and _splits_cleanly(records[index]["output"]):
            prompt_ids.append(head_ids + pieces[index] + tail_ids)
        else:  # leading whitespace could merge with the template's newline: tokenize whole
            prompt = render_prompt(tokenizer, build_messages(records[index]["instruction"],
                                                             records[index].get("input", ""), system_prompt))
            full = tokenizer(prompt + records[index]["output"], add_special_tokens=False)["input_ids"]
            prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            prompt_ids.append(full[:prompt_len])
            answer_ids[index] = full[prompt_len:]
    report = EncodeReport(rows_in=len(records), max_length=max_length)
    samples = []
    for index, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids)):
        answer = answer + [end_id]
        length = len(prompt) + len(answer)
        if length > max_length:
            report.too_long.append((index, length))
            continue
        samples.append({
            "input_ids": prompt + answer,
            "attention_mask": [1] * length,
            "labels": [IGNORE_INDEX] * len(prompt) + answer,
            "row": index,
        })
    report.rows_out = len(samples)
    return samples, report
