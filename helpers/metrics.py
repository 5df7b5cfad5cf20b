"""What "the fine-tune worked" means in numbers: the metrics of notebook 06, and running the model for them.

Each metric is a small pure function (ROUGE-L on characters, persona and boilerplate rates, identity,
degeneration, thinking-block survival, answer-only loss); :func:`generate_replies` and
:func:`answer_loss` run the model (base or LoRA, one PEFT model with the adapter switched) to feed them.
:mod:`helpers.evaluate` puts them together into the report.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from . import data_files
from .data import IGNORE_INDEX, THINK_OPEN, prompt_ids_as_text, split_thinking
from .models import adapter_switch, require_model

#: Words of address and self-reference at the Qing court: the candidates for persona markers.
ROLE_WORD_CANDIDATES = (
    "臣妾", "嫔妾", "本宫", "哀家", "奴婢", "奴才", "微臣", "朕",
    "皇上", "陛下", "圣上", "万岁", "娘娘", "小主", "主子", "公公",
    "皇后", "太后", "王爷", "姐姐", "妹妹", "四郎", "嬛嬛", "夫君",
)
#: Everyday modern words (a chat assistant's vocabulary). A candidate must be more frequent in
#: the training answers than every one of these to count as a persona marker.
NEUTRAL_WORDS = ("用户", "您好", "帮助", "助手", "问题", "朋友", "老师", "同学", "公司", "手机", "网络", "信息")
#: A candidate is kept when at least this share of the training answers holds it (and at least one does).
ROLE_WORD_MIN_SHARE = 0.0025

#: What a general assistant says about itself and a court lady never does.
BOILERPLATE = ("作为AI", "作为一个AI", "作为人工智能", "作为一个人工智能", "人工智能", "语言模型", "大模型",
               "我是通义千问", "通义千问", "AI助手", "智能助手", "虚拟助手", "阿里云", "Qwen", "OpenAI")
#: Paraphrases of "who are you" that the training data does not hold (checked against the
#: training prompts' normalised forms before use).
IDENTITY_PROBES = ("请问你是哪位？", "能介绍一下你自己吗？", "你到底是什么人？", "报上名来。", "你是何人？",
                   "自我介绍一下吧。", "你的名字是什么？", "请问姑娘芳名？")


# =========================================================================== metrics (pure functions)


class CharTokenizer:
    """A ``rouge-score`` tokenizer for Chinese: every character is a token, whitespace and punctuation are not.

    rouge-score's default tokenizer keeps only ``[a-z0-9]`` runs, so it would turn a Chinese reply into
    no tokens at all (every score 0). Punctuation is left out because it is shared by unrelated lines:
    with it, a reply of only 「。」 scores 0.08 against any answer that ends in 「。」.
    """

    def tokenize(self, text: str) -> list[str]:
        return [c for c in chars(text) if not unicodedata.category(c).startswith("P")]


def chars(text: str) -> list[str]:
    """The characters of ``text`` without whitespace: the unit of the degeneration metrics."""
    return [c for c in text if not c.isspace()]


_SCORER = None


def rouge_l(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1 of one reply against its reference (``rouge-score``'s implementation),
    punctuation and whitespace left out (:class:`CharTokenizer`)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CharTokenizer())
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def mean_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    return mean(rouge_l(p, r) for p, r in zip(predictions, references, strict=True))


def unrelated_baseline(references: Sequence[str]) -> float:
    """ROUGE-L of two unrelated answers: each reference against the next question's (Chinese answers share
    characters such as 我、的、是, so this is never 0). A reply scores above it only by its content."""
    return mean_rouge_l(references, [*references[1:], *references[:1]])


def contains_any(text: str, words: Iterable[str]) -> bool:
    lowered = text.lower()
    return any(word.lower() in lowered for word in words)


def marker_rate(texts: Sequence[str], words: Iterable[str]) -> float:
    """Share of ``texts`` that hold at least one of ``words``."""
    words = tuple(words)
    return mean(1.0 if contains_any(t, words) else 0.0 for t in texts)


def boilerplate_rate(texts: Sequence[str]) -> float:
    """Share of ``texts`` holding assistant boilerplate (case-insensitive for Latin letters)."""
    return marker_rate(texts, BOILERPLATE)


@dataclass(frozen=True)
class RoleWords:
    """The persona markers and how they were chosen."""

    words: tuple[str, ...]
    neutral_share: float    # the most frequent neutral word's share: a kept candidate is more frequent
    min_share: float        # ... and at least this frequent
    answers: int            # training answers counted
    table: list[dict] = field(default_factory=list)   # one row per candidate and neutral word

    def describe(self) -> str:
        lines = [f"{self.answers} 条训练回答。候选词要算作角色词，出现它的回答占比须高于最常见的中性词"
                 f"（{self.neutral_share:.2%}），并且至少为 {self.min_share:.2%}（至少 1 条）："]
        for row in self.table:
            if row["answers"]:
                mark = "✓" if row["kept"] else "·"
                kind = "候选" if row["kind"] == "candidate" else "中性"
                lines.append(f"  {mark} {row['word']}\t{kind}\t{row['answers']:>5} 条\t{row['share']:.2%}")
        for kind, name in (("candidate", "候选词"), ("neutral", "中性词")):
            absent = [row["word"] for row in self.table if row["kind"] == kind and not row["answers"]]
            if absent:
                lines.append(f"  一次也没出现的{name}：{'、'.join(absent)}")
        return "\n".join(lines)


def derive_role_words(answers: Sequence[str], candidates: Sequence[str] = ROLE_WORD_CANDIDATES,
                      neutral: Sequence[str] = NEUTRAL_WORDS,
                      min_share: float = ROLE_WORD_MIN_SHARE) -> RoleWords:
    """The persona markers of these training answers, and the table that shows why.

    For each candidate (a word of address at court) and each neutral word, count the answers that
    hold it. A candidate is kept when more answers hold it than hold any neutral word, and at least
    ``min_share`` of them (and at least one). Rows are sorted by frequency.
    """
    total = len(answers)

    def row(word: str, kind: str) -> dict:
        count = sum(1 for a in answers if word in a)
        return {"word": word, "kind": kind, "answers": count, "share": count / total if total else 0.0,
                "kept": False}

    neutral_rows = sorted((row(w, "neutral") for w in neutral), key=lambda r: (-r["answers"], r["word"]))
    neutral_share = max((r["share"] for r in neutral_rows), default=0.0)
    rows = sorted((row(w, "candidate") for w in candidates), key=lambda r: (-r["answers"], r["word"]))
    for r in rows:
        r["kept"] = r["answers"] >= 1 and r["share"] > neutral_share and r["share"] >= min_share
    words = tuple(r["word"] for r in rows if r["kept"])
    return RoleWords(words, neutral_share, min_share, total, rows + neutral_rows)


def unseen_probes(probes: Sequence[str], train_prompts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(probes whose normalised form is not a training prompt, probes that are)."""

    seen = {data_files.normalise(p) for p in train_prompts}
    kept = [p for p in probes if data_files.normalise(p) not in seen]
    return kept, [p for p in probes if data_files.normalise(p) in seen]


def identity_correct(reply: str) -> bool:
    """The reply names the persona and holds no assistant boilerplate."""
    return contains_any(reply, ("甄嬛", "嬛嬛")) and not contains_any(reply, BOILERPLATE)


def identity_accuracy(replies: Sequence[str]) -> float:
    return mean(1.0 if identity_correct(r) else 0.0 for r in replies)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of the reply's character n-grams that repeat an earlier one (0: no repeats; near 1: a loop)."""
    grams = ngrams(chars(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n over all replies: distinct character n-grams / all n-grams (Li et al., 2016)."""
    grams = [g for t in texts for g in ngrams(chars(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def truncation_rate(finished: Sequence[bool]) -> float:
    """Share of replies that stopped at ``max_new_tokens`` without their end token."""
    return mean(0.0 if f else 1.0 for f in finished)


def thinking_complete(text: str) -> bool:
    """The reply opens ``<think>``, writes something, and closes it (read by ``inference.split_thinking``)."""
    reply = split_thinking(text)
    return text.lstrip().startswith(THINK_OPEN) and reply.finished and bool(reply.thinking)


def thinking_cut_off(text: str, finished: bool) -> bool:
    """The thinking block was still open when ``max_new_tokens`` ran out: too small a budget, not a lost skill."""
    return not finished and text.lstrip().startswith(THINK_OPEN) and not split_thinking(text).finished


def thinking_rate(texts: Sequence[str], finished: Sequence[bool] | None = None) -> float:
    """Share of replies with a complete, non-empty thinking block; replies cut off while still thinking
    (given ``finished``) are left out of the count, since the budget, not the model, ended them."""
    finished = [True] * len(texts) if finished is None else list(finished)
    judged = [t for t, f in zip(texts, finished, strict=True) if not thinking_cut_off(t, f)]
    return mean(1.0 if thinking_complete(t) else 0.0 for t in judged)


def thinking_conclusion(base: float, lora: float) -> str:
    """The thinking-mode result in one plain sentence (Chinese): the LoRA model keeps thinking when its rate is
    at most 0.1 below the base model's."""
    if base == 0:
        return (f"无法判断：基座模型开启思考后也没有写出完整的 <think> 块（基座 {base:.0%}，LoRA {lora:.0%}）。"
                "tiny 随机模型本来就不会思考；在 Qwen3-8B 上这个比较才有意义。")
    if lora >= base - 0.1:
        return (f"思考模式保住了：开启 enable_thinking 后，LoRA 模型 {lora:.0%} 的回答有完整、非空的 "
                f"<think> 块，基座模型是 {base:.0%}。")
    return (f"思考模式受损：开启 enable_thinking 后，只有 {lora:.0%} 的 LoRA 回答有完整、非空的 <think> 块"
            f"（基座模型 {base:.0%}）。训练数据里的回答都不带思考过程；需要思考时，混入带思考的数据再训练，"
            "或者对这个适配器关闭思考模式。")


def degeneration(texts: Sequence[str], finished: Sequence[bool]) -> dict:
    """The degeneration metrics of a set of replies."""
    return {
        "truncated": truncation_rate(finished),
        "repeated_3gram": mean(repeated_ngram_ratio(t, 3) for t in texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }


def masked_nll(logits, labels) -> tuple[float, int]:
    """(summed negative log-likelihood, counted tokens) of the labelled tokens.

    ``logits[:, t]`` predicts ``labels[:, t + 1]`` (the shift the model's own loss uses); labels of
    ``IGNORE_INDEX`` (the prompt and padding) are not counted.
    """
    import torch.nn.functional as F

    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    total = F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return float(total), int((shifted_labels != IGNORE_INDEX).sum())


def perplexity(mean_nll: float) -> float:
    return math.exp(mean_nll)


def change(base: float, lora: float) -> dict:
    return {"base": base, "lora": lora, "change": lora - base}


# =========================================================================== running the model


@dataclass(frozen=True)
class Generated:
    """One generated reply and whether it ended with the end token."""

    text: str          # everything generated up to the end token (special tokens removed; <think> kept)
    content: str       # the answer without its <think> block
    finished: bool     # an end token (<|im_end|>) was generated before max_new_tokens
    new_tokens: int


def generate_replies(model, tokenizer, conversations: Sequence[list[dict]], settings, adapter: bool = True,
                     batch_size: int = 8, extra: dict | None = None, seed: int = 0) -> list[Generated]:
    """Replies to many conversations, batched with left padding; each says whether it finished.

    ``settings``: an ``inference.GenerationSettings``; ``extra``: more generation options (e.g.
    ``repetition_penalty``). Sampling is seeded per batch, so a run repeats.
    """
    import torch

    require_model(model)
    config = settings.generation_config(model.generation_config)
    if extra:
        config.update(**extra)
    eos = set(config.eos_token_id if isinstance(config.eos_token_id, (list, tuple)) else [config.eos_token_id])
    eos -= {None}
    out: list[Generated] = []
    for start in range(0, len(conversations), batch_size):
        batch = [prompt_ids_as_text(tokenizer, messages, settings.enable_thinking)
                 for messages in conversations[start:start + batch_size]]
        inputs = tokenizer.pad({"input_ids": batch}, padding_side="left", return_tensors="pt").to(model.device)
        width = inputs["input_ids"].shape[1]
        torch.manual_seed(seed + start)
        with adapter_switch(model, adapter), torch.inference_mode():
            generated = model.generate(**inputs, generation_config=config)
        for row in generated[:, width:].tolist():
            end = next((i for i, token in enumerate(row) if token in eos), None)
            tokens = row if end is None else row[:end]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            reply = split_thinking(text)
            out.append(Generated(text, reply.content, end is not None, len(tokens)))
    return out


def answer_loss(model, tokenizer, samples: Sequence[dict], adapter: bool = True, batch_size: int = 8) -> dict:
    """Mean loss and perplexity over the answer tokens (labels != -100) of encoded samples."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    require_model(model)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        batch = collate([{key: s[key] for key in ("input_ids", "attention_mask", "labels")}
                         for s in samples[start:start + batch_size]]).to(model.device)
        with adapter_switch(model, adapter), torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, tokens = masked_nll(logits, batch["labels"])
        total += nll
        count += tokens
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": perplexity(loss) if count else float("nan"), "tokens": count}
