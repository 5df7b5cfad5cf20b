"""Notebook 05: chat with the fine-tuned model, compare it with the base, export it.

* :func:`load_finetuned` loads the base model plus a LoRA checkpoint with PEFT
  (the latest complete one of notebook 04's run unless a path is given), on the
  profile's device and in its dtype.
* Prompts use the SAME format as training: system prompt + user message(s),
  rendered by the tokenizer's chat template (``data.render_prompt``, as in training). The original
  tutorial sent the system sentence as a user message at inference; we do not.
* :func:`generate` / :func:`stream_generate` run ``model.generate`` with Qwen3's
  recommended sampling for the chosen mode (:func:`recommended_settings`), stop
  at ``<|im_end|>`` and stream through transformers' ``TextIteratorStreamer``.
  ``adapter=False`` switches the LoRA adapter off for one call (PEFT's
  ``disable_adapter``), so base and fine-tuned answers come from one model.

The ipywidgets chat built on top of this lives in :mod:`helpers.chat_app`; the merged-model export
(``python -m helpers.inference export``) in :mod:`helpers.export`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from .checkpoints import CheckpointError, read_recipe, resolve_checkpoint, spec_as_trained
from .data import Reply, prompt_ids_as_text, split_thinking
from .download import prepare_model
from .errors import ArgumentParser, CourseError, positive_int, run_cli
from .export import export_merged, export_recipe
from .models import adapter_switch, check_adapter_fits, load_base_model, load_tokenizer
from .spec import DEFAULT_SYSTEM_PROMPT, build_spec
from .workspace import display_path, typed_paths

#: Qwen3's advice for thinking mode's ``max_new_tokens`` on most tasks (model card, "Best Practices")
THINKING_BUDGET = 32768
#: Qwen3's recommended sampling (model card, "Best Practices"). ``min_p`` is 0 in both modes.
QWEN3_SAMPLING = {
    True: {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0},   # thinking on
    False: {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0},   # thinking off
}
#: KV caches ``--cache`` accepts (besides the default dynamic one)
CACHES = ("static",)
DEFAULT_MAX_NEW_TOKENS = 512


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GenerationSettings:
    """Everything one reply depends on besides the prompt."""

    enable_thinking: bool = False
    do_sample: bool = True
    temperature: float = QWEN3_SAMPLING[False]["temperature"]
    top_p: float = QWEN3_SAMPLING[False]["top_p"]
    top_k: int = QWEN3_SAMPLING[False]["top_k"]
    min_p: float = QWEN3_SAMPLING[False]["min_p"]
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    #: None: transformers' dynamic KV cache; "static": a preallocated cache, with which transformers
    #: compiles the decode step on a GPU (the first reply pays the compilation)
    cache: str | None = None

    def generation_config(self, base):
        """A copy of the model's ``GenerationConfig`` (eos = ``<|im_end|>``, ...) with these settings."""
        config = copy.deepcopy(base)
        if self.cache is not None:
            if self.cache not in CACHES:
                raise ValueError(f"cache 只能是 {', '.join(CACHES)} 或 None，不能是 {self.cache!r}")
            config.cache_implementation = self.cache
        if self.do_sample:
            config.update(do_sample=True, temperature=self.temperature, top_p=self.top_p,
                          top_k=self.top_k, min_p=self.min_p, max_new_tokens=self.max_new_tokens)
        else:  # greedy: the sampling knobs go back to transformers' neutral defaults (no "ignored flag" warning)
            neutral = {k: v for k, v in config._get_default_generation_params().items()
                       if k in ("temperature", "top_p", "top_k")}
            config.update(do_sample=False, min_p=None, max_new_tokens=self.max_new_tokens, **neutral)
        return config

    def describe(self) -> str:
        decoding = (f"temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}, min_p={self.min_p}"
                    if self.do_sample else "greedy")
        cache = f", cache={self.cache}" if self.cache else ""
        return (f"thinking={'on' if self.enable_thinking else 'off'}, {decoding}, "
                f"max_new_tokens={self.max_new_tokens}{cache}")


def recommended_settings(enable_thinking: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> GenerationSettings:
    """Qwen3's recommended sampling for thinking on / off."""
    return GenerationSettings(enable_thinking=enable_thinking, do_sample=True, max_new_tokens=max_new_tokens,
                              **QWEN3_SAMPLING[enable_thinking])


def greedy_settings(enable_thinking: bool = False, max_new_tokens: int = 64) -> GenerationSettings:
    """Deterministic decoding (always the most likely token), for comparisons and tests.

    Qwen advises against greedy decoding in thinking mode for real use (it can loop).
    """
    return replace(recommended_settings(enable_thinking, max_new_tokens), do_sample=False)


# --------------------------------------------------------------------------- loading


class Loaded(NamedTuple):
    model: object
    tokenizer: object
    checkpoint: Path
    recipe: dict          # what the adapter was trained with (system prompt, max_length, profile, ...)
    notes: list           # what loading had to say (a damaged checkpoint skipped, 4-bit or bf16 base, ...)

    @property
    def system_prompt(self) -> str | None:
        return self.recipe.get("system_prompt", DEFAULT_SYSTEM_PROMPT)


def adapter_system_prompt(checkpoint: Path, default: str | None) -> str | None:
    """The system prompt the adapter was trained with (saved beside it in ``course_recipe.json``), else ``default``."""
    return read_recipe(checkpoint).get("system_prompt", default)


def merged_in_memory(model):
    """The adapter folded into the weights, in memory (PEFT ``merge_and_unload``; nothing is written).

    Every decode step then runs one matrix product per layer instead of base + LoRA A + LoRA B, so
    chat is faster; the price is the adapter switch (the result is a plain model). ``model.course_merged``
    marks it for the chat widget.
    """
    recipe = getattr(model, "course_recipe", None)
    merged = model.merge_and_unload()
    merged.eval()
    merged.course_merged = True
    if recipe is not None:
        merged.course_recipe = recipe
    return merged


def load_finetuned(spec, checkpoint: str | Path | None = None, merged: bool = False) -> Loaded:
    """The spec's base model with a LoRA adapter on top (default: the latest good checkpoint of the run).

    A QLoRA adapter loads on the 4-bit base when the spec asks for it (``quantization: nf4``).
    ``merged=True``: the adapter is merged into the loaded weights in memory (:func:`merged_in_memory`;
    faster chat, no adapter switch). On a 4-bit base it is not merged (the merge would round the
    adapter into 4-bit weights) and a note says so.
    """
    from peft import PeftModel

    path, notes = resolve_checkpoint(spec, checkpoint)
    spec, notes = spec_as_trained(spec, path, notes)
    recipe = read_recipe(path)
    tokenizer = load_tokenizer(spec)
    base = load_base_model(spec)
    try:
        check_adapter_fits(base, path, recipe)
        model = PeftModel.from_pretrained(base, path, is_trainable=False)
    except FileNotFoundError:
        if all((Path(path) / name).is_file() for name in ("adapter_config.json", "adapter_model.safetensors")):
            raise     # the adapter is there: something else is missing
        # a training still running removed it (save_total_limit keeps only its newest checkpoints)
        raise CheckpointError(f"{display_path(path)} 在加载时被删除了（正在进行的训练按 save_total_limit 只保留"
                              "最近的几个检查点）：再运行一次会用最新的检查点；或者等训练结束。") from None
    model.eval()
    model.course_recipe = recipe  # the chat widget defaults to the system prompt the adapter was trained with
    if spec.quantization:
        notes.append("适配器加载在 4-bit NF4 基座上" + ("（和训练时一样）" if recipe else ""))
    if merged and spec.quantization:
        notes.append("没有合并：合并进 4-bit 基座会把适配器舍入成 4-bit 权重；适配器仍然叠加在基座上")
    elif merged:
        model = merged_in_memory(model)
        notes.append("适配器已在内存中合并进权重（更快；不能再开关适配器）")
    return Loaded(model, tokenizer, path, recipe, notes)


# --------------------------------------------------------------------------- prompts


def chat_messages(history: list[dict], user_message: str,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """system prompt + earlier turns + the new user message (what training used, extended to many turns)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": m["role"], "content": m["content"]} for m in history]
    messages.append({"role": "user", "content": user_message})
    return messages


# --------------------------------------------------------------------------- generation


class PromptTooLongError(CourseError, ValueError):
    """The prompt leaves no room for the reply in the model's context."""


def _inputs(model, tokenizer, messages, settings):
    """Prompt ids with user text kept as text; over-long chats drop their oldest exchanges (a question with its
    answer, so no answer is left without its question), with a warning."""
    import warnings

    import torch

    limit = getattr(model.config, "max_position_embeddings", None) or 40960
    budget = limit - settings.max_new_tokens
    ids = prompt_ids_as_text(tokenizer, messages, settings.enable_thinking)
    trimmed, dropped = list(messages), 0
    while len(ids) > budget:
        first = next((i for i, m in enumerate(trimmed) if m["role"] != "system"), len(trimmed))
        following = next((i for i in range(first + 1, len(trimmed)) if trimmed[i]["role"] == "user"), None)
        if following is None:    # only the last question is left
            raise PromptTooLongError(
                f"提示有 {len(ids)} 个 token，加上 max_new_tokens={settings.max_new_tokens} 超出了模型 "
                f"{limit} 个 token 的上下文。请缩短消息，或调小 max_new_tokens。")
        del trimmed[first:following]
        dropped += 1
        ids = prompt_ids_as_text(tokenizer, trimmed, settings.enable_thinking)
    if dropped:
        warnings.warn(f"对话超出了上下文（{limit} 个 token）：最早的 {dropped} 轮对话"
                      f"（{len(messages) - len(trimmed)} 条消息）没有放进提示", stacklevel=3)
    input_ids = torch.tensor([ids], device=model.device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def generate(model, tokenizer, messages: list[dict], settings: GenerationSettings | None = None,
             adapter: bool = True) -> Reply:
    """One complete reply (no streaming)."""
    import torch

    settings = settings or recommended_settings()
    inputs = _inputs(model, tokenizer, messages, settings)
    with adapter_switch(model, adapter), torch.inference_mode():
        out = model.generate(**inputs, generation_config=settings.generation_config(model.generation_config))
    new_tokens = out[0, inputs["input_ids"].shape[1]:]
    return split_thinking(tokenizer.decode(new_tokens, skip_special_tokens=True))


def stream_generate(model, tokenizer, messages: list[dict], settings: GenerationSettings | None = None,
                    adapter: bool = True, stop_event: threading.Event | None = None) -> Iterator[str]:
    """Yield the reply piece by piece while ``model.generate`` runs in a background thread.

    Any exception raised by ``generate`` is re-raised here, in the caller's thread,
    once the text produced before it has been yielded.
    """
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    settings = settings or recommended_settings()
    inputs = _inputs(model, tokenizer, messages, settings)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop_event = stop_event or threading.Event()

    def stop_requested(input_ids, scores, **kwargs):  # a StoppingCriteria: the Stop button ends at the next token
        return torch.full((input_ids.shape[0],), stop_event.is_set(), dtype=torch.bool, device=input_ids.device)

    failure: list[BaseException] = []

    def run():
        try:
            with adapter_switch(model, adapter), torch.inference_mode():
                model.generate(**inputs, generation_config=settings.generation_config(model.generation_config),
                               streamer=streamer, stopping_criteria=StoppingCriteriaList([stop_requested]))
        except BaseException as err:  # handed to the consumer below, never dropped
            failure.append(err)
            streamer.end()  # unblock the consumer

    worker = threading.Thread(target=run, name="qwen3-generate", daemon=True)
    worker.start()
    try:
        yield from streamer
    except BaseException:  # the consumer gave up (GeneratorExit) or Ctrl+C: stop instead of running to the end
        stop_event.set()
        raise
    finally:
        worker.join()
    if failure:
        raise failure[0]


def compare_adapter(model, tokenizer, questions: list[str], settings: GenerationSettings | None = None,
                    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """Base (adapter off) vs fine-tuned (adapter on) answers to the same questions, same settings."""
    settings = settings or greedy_settings()
    rows = []
    for question in questions:
        messages = chat_messages([], question, system_prompt)
        rows.append({
            "question": question,
            "base": generate(model, tokenizer, messages, settings, adapter=False).content,
            "lora": generate(model, tokenizer, messages, settings, adapter=True).content,
        })
    return rows


def trained_system_prompt(model) -> str | None:
    """The system prompt the loaded adapter was trained with (its recipe; for a model loaded from a course export,
    the recipe in its ``course_export.json``), else the course's default."""
    recipe = getattr(model, "course_recipe", None)
    if recipe is None:
        recipe = export_recipe(getattr(model, "name_or_path", "") or "")
    return recipe.get("system_prompt", DEFAULT_SYSTEM_PROMPT)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.inference ask "你是谁？"`` / ``python -m helpers.inference export`` (notebook 05)."""
    common = ArgumentParser(add_help=False)
    common.add_argument("--config", help="这次运行的训练配置（默认：档位自己的训练配置）")
    common.add_argument("--checkpoint", help="适配器文件夹（checkpoint-N 或运行目录；默认：这次运行"
                        "最新的完整检查点）")
    common.add_argument("--output-dir", help="train 写入的运行目录（即它的 --output-dir；默认 "
                        "workspace/checkpoints/<profile>）")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="显示完整的 traceback")
    parser = ArgumentParser(prog="python -m helpers.inference",
                                     description="向微调后的模型提一个问题，或者导出合并后的模型。")
    parser.add_argument("--debug", action="store_true", help="显示完整的 traceback")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", parents=[common], help="基座模型 + LoRA 适配器回答一个问题")
    ask.add_argument("message", help="用户消息（按纯文本分词，控制 token 也当作普通文字）")
    ask.add_argument("--system-prompt", help="默认：适配器训练时用的那个（course_recipe.json）")
    ask.add_argument("--max-new-tokens", type=positive_int, default=128, help="回答最多多少个 token（默认 128）")
    ask.add_argument("--thinking", action="store_true", help="思考模式（enable_thinking=True）")
    ask.add_argument("--sample", action="store_true", help="用 Qwen3 推荐的采样参数，而不是贪心解码")
    ask.add_argument("--merged", action="store_true",
                     help="先在内存中把适配器合并进权重（回答更快；不写任何文件）")
    ask.add_argument("--cache", choices=CACHES, help="static：预先分配的 KV 缓存（transformers 会在 GPU 上编译"
                     "解码步骤，第一次回答要花编译的时间）")
    export = commands.add_parser("export", parents=[common], help="把适配器合并进基座模型并保存")
    export.add_argument("--target", help="一个空文件夹，或本课程之前导出的文件夹；相对路径从当前目录算起（课程打印的、从仓库根目录算起的路径也可以）"
                        "（默认：workspace/export/<profile>-merged）")
    args = typed_paths(parser, argv, "output_dir", "target")
    if args.command == "ask" and not args.message.strip():
        parser.error('消息是空的：请写一个问题，例如 python -m helpers.inference ask "你是谁？"')

    def work() -> int:
        spec = build_spec(args.config, output_dir=args.output_dir)
        resolve_checkpoint(spec, args.checkpoint)   # a missing adapter stops before any model is built or downloaded
        prepare_model(spec)                         # as train and evaluate do: no notebook needed first
        if args.command == "export":
            target = export_merged(spec, args.checkpoint, args.target)
            print(f"合并后的模型已写入 {display_path(target)}")
            return 0
        loaded = load_finetuned(spec, args.checkpoint, merged=args.merged)
        for note in loaded.notes:
            print(note)
        system_prompt = loaded.system_prompt if args.system_prompt is None else (args.system_prompt or None)
        settings = (recommended_settings if args.sample else greedy_settings)(args.thinking, args.max_new_tokens)
        settings = replace(settings, cache=args.cache)
        print(f"适配器：{display_path(loaded.checkpoint)}；系统提示：{system_prompt!r}；{settings.describe()}")
        if args.thinking and not args.sample:
            print("注意：思考模式下贪心解码容易陷入重复（Qwen3 模型卡的建议），加 --sample 用推荐的采样参数")
        reply = generate(loaded.model, loaded.tokenizer, chat_messages([], args.message, system_prompt), settings)
        if reply.thinking or not reply.finished:
            print(f"<think>\n{reply.thinking}" + ("\n</think>" if reply.finished else ""))
        print(reply.content)
        if not reply.finished:
            print(f"（思考还没结束就用完了 --max-new-tokens {args.max_new_tokens}，所以没有回答：加大它再问一次，"
                  f"Qwen 建议思考模式给到 {THINKING_BUDGET}）", file=sys.stderr)
        return 0

    return run_cli(work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
