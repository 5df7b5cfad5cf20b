"""Notebook 05: chat with the fine-tuned model, compare it with the base, export it.

* :func:`load_finetuned` loads the base model plus a LoRA checkpoint with PEFT
  (the latest complete one of notebook 04's run unless a path is given), on the
  profile's device and in its dtype.
* Prompts use the SAME format as training: system prompt + user message(s),
  rendered by the tokenizer's chat template (:func:`render_chat`). The original
  tutorial sent the system sentence as a user message at inference; we do not.
* :func:`generate` / :func:`stream_generate` run ``model.generate`` with Qwen3's
  recommended sampling for the chosen mode (:func:`recommended_settings`), stop
  at ``<|im_end|>`` and stream through transformers' ``TextIteratorStreamer``.
  ``adapter=False`` switches the LoRA adapter off for one call (PEFT's
  ``disable_adapter``), so base and fine-tuned answers come from one model.
* :func:`export_merged` folds the adapter into the weights (``merge_and_unload``)
  and saves a plain model directory that any runtime (vLLM, llama.cpp, ...) loads.

The ipywidgets chat built on top of this lives in :mod:`helpers.chat_app`.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

from .data import DEFAULT_SYSTEM_PROMPT, render_prompt
from .models import load_base_model, load_tokenizer, require_model_dir, torch_dtype
from .profiles import Profile, resolve_profile
from .train import find_latest_checkpoint, is_complete_checkpoint, run_dir
from .workspace import MissingArtifactError, display_path, require_artifact, workspace_path

#: Qwen3's recommended sampling (model card, "Best Practices"). ``min_p`` is 0 in both modes.
QWEN3_SAMPLING = {
    True: {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0},   # thinking on
    False: {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0},   # thinking off
}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
DEFAULT_MAX_NEW_TOKENS = 512


def _profile(profile: Profile | str | None) -> Profile:
    return profile if isinstance(profile, Profile) else resolve_profile(profile)


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

    def generation_config(self, base):
        """A copy of the model's ``GenerationConfig`` (eos = ``<|im_end|>``, ...) with these settings."""
        config = copy.deepcopy(base)
        if self.do_sample:
            config.update(do_sample=True, temperature=self.temperature, top_p=self.top_p,
                          top_k=self.top_k, min_p=self.min_p, max_new_tokens=self.max_new_tokens)
        else:  # greedy: the sampling knobs go back to transformers' neutral defaults (no "ignored flag" warning)
            neutral = {k: v for k, v in config._get_default_generation_params().items()
                       if k in ("temperature", "top_p", "top_k")}
            config.update(do_sample=False, min_p=None, max_new_tokens=self.max_new_tokens, **neutral)
        return config

    def describe(self) -> str:
        if not self.do_sample:
            return f"thinking={'on' if self.enable_thinking else 'off'}, greedy, max_new_tokens={self.max_new_tokens}"
        return (f"thinking={'on' if self.enable_thinking else 'off'}, temperature={self.temperature}, "
                f"top_p={self.top_p}, top_k={self.top_k}, min_p={self.min_p}, "
                f"max_new_tokens={self.max_new_tokens}")


def recommended_settings(enable_thinking: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> GenerationSettings:
    """Qwen3's recommended sampling for thinking on / off."""
    return GenerationSettings(enable_thinking=enable_thinking, do_sample=True, max_new_tokens=max_new_tokens,
                              **QWEN3_SAMPLING[enable_thinking])


def greedy_settings(enable_thinking: bool = False, max_new_tokens: int = 64) -> GenerationSettings:
    """Deterministic decoding (always the most likely token), for comparisons and tests.

    Qwen advises against greedy decoding in thinking mode for real use (it can loop).
    """
    return replace(recommended_settings(enable_thinking, max_new_tokens), do_sample=False)


def settings_table() -> list[dict]:
    """The recommended settings of both modes, as rows for display."""
    return [{"mode": "thinking" if on else "non-thinking", **asdict(recommended_settings(on))}
            for on in (False, True)]


# --------------------------------------------------------------------------- loading


class Loaded(NamedTuple):
    model: object
    tokenizer: object
    checkpoint: Path


def resolve_checkpoint(profile: Profile | str | None = None, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint to load: ``checkpoint`` if given, else the latest complete one of notebook 04's run."""
    if checkpoint is not None:
        path = require_artifact(Path(checkpoint), made_by="04-train.ipynb", what="The LoRA checkpoint")
        if not (path / "adapter_config.json").is_file():
            raise MissingArtifactError(
                f"{display_path(path)} holds no adapter_config.json, so it is not a LoRA checkpoint. "
                "Pass a checkpoint-N folder written by notebooks/04-train.ipynb."
            )
        if not is_complete_checkpoint(path):
            raise MissingArtifactError(
                f"{display_path(path)} was not completely saved (no completion marker): training stopped "
                "while writing it. Pass an earlier checkpoint, or re-run notebooks/04-train.ipynb."
            )
        return path
    folder = run_dir(profile)
    latest = find_latest_checkpoint(folder)
    if latest is None:
        # require_artifact words the error: what is missing and which notebook makes it.
        require_artifact(folder / "checkpoint-N", made_by="04-train.ipynb",
                         what="A complete LoRA checkpoint")
    return latest


def load_finetuned(profile: Profile | str | None = None, checkpoint: str | Path | None = None) -> Loaded:
    """The profile's base model with the LoRA adapter of ``checkpoint`` (default: the latest) on top."""
    from peft import PeftModel

    profile = _profile(profile)
    path = resolve_checkpoint(profile, checkpoint)
    tokenizer = load_tokenizer(profile)
    base = load_base_model(profile)
    model = PeftModel.from_pretrained(base, path, is_trainable=False)
    model.eval()
    return Loaded(model, tokenizer, path)


def describe_model(loaded: Loaded) -> dict[str, str]:
    """Where the weights are and what they hold, for a printout."""
    model = loaded.model
    param = next(model.parameters())
    adapters = getattr(model, "peft_config", {})
    return {
        "checkpoint": display_path(loaded.checkpoint),
        "device": str(param.device),
        "dtype": str(param.dtype).replace("torch.", ""),
        "adapter": ", ".join(f"{name}: r={cfg.r}, alpha={cfg.lora_alpha}" for name, cfg in adapters.items()),
    }


# --------------------------------------------------------------------------- prompts


def chat_messages(history: list[dict], user_message: str,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """system prompt + earlier turns + the new user message (what training used, extended to many turns)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": m["role"], "content": m["content"]} for m in history]
    messages.append({"role": "user", "content": user_message})
    return messages


def render_chat(tokenizer, messages: list[dict], enable_thinking: bool = False) -> str:
    """The generation prompt for ``messages``: the same renderer training uses (``data.render_prompt``)."""
    return render_prompt(tokenizer, messages, enable_thinking=enable_thinking)


@dataclass(frozen=True)
class Reply:
    """One generated answer, split into its reasoning and the answer proper."""

    text: str          # everything generated (special tokens removed; <think> tags are ordinary text)
    thinking: str      # inside <think>...</think> ("" without thinking)
    content: str       # the answer; only this goes into the chat history
    finished: bool     # False while streaming, or when <think> never closed


def split_thinking(text: str) -> Reply:
    """Split ``<think>...</think>`` off a (possibly partial) reply."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_OPEN) and THINK_CLOSE not in text:
        return Reply(text, "", text.strip(), True)
    body = stripped[len(THINK_OPEN):] if stripped.startswith(THINK_OPEN) else stripped
    if THINK_CLOSE not in body:  # still thinking (or the reasoning never finished)
        return Reply(text, body.strip(), "", False)
    thinking, content = body.split(THINK_CLOSE, 1)
    return Reply(text, thinking.strip(), content.strip(), True)


# --------------------------------------------------------------------------- generation


class StopOnEvent:
    """A ``StoppingCriteria``: generation ends at the next token once ``event`` is set (the Stop button)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def adapter_switch(model, adapter: bool):
    """Context in which the LoRA adapter is on (``adapter=True``) or off (PEFT's ``disable_adapter``)."""
    if adapter:
        return contextlib.nullcontext()
    if not hasattr(model, "disable_adapter"):
        raise ValueError("adapter=False needs a PEFT model (load it with load_finetuned).")
    return model.disable_adapter()


def _inputs(model, tokenizer, messages, settings):
    prompt = render_chat(tokenizer, messages, settings.enable_thinking)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    return {k: v.to(model.device) for k, v in encoded.items()}


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
    stopping = StoppingCriteriaList([StopOnEvent(stop_event)])
    failure: list[BaseException] = []

    def run():
        try:
            with adapter_switch(model, adapter), torch.inference_mode():
                model.generate(**inputs, generation_config=settings.generation_config(model.generation_config),
                               streamer=streamer, stopping_criteria=stopping)
        except BaseException as err:  # handed to the consumer below, never dropped
            failure.append(err)
            streamer.end()  # unblock the consumer

    worker = threading.Thread(target=run, name="qwen3-generate", daemon=True)
    worker.start()
    try:
        yield from streamer
    except GeneratorExit:  # the consumer gave up: stop generating instead of running to max_new_tokens
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


# --------------------------------------------------------------------------- merge and export


def export_dir(profile: Profile | str | None = None) -> Path:
    """``workspace/export/<profile>-merged``."""
    return workspace_path("export", f"{_profile(profile).name}-merged")


def _base_for_merge(profile: Profile):
    """A fresh base model for merging. Multi-GPU/auto-placed profiles merge on the CPU, so the
    chat model that is already on the GPU does not have to share it with a second copy."""
    if profile.device_map:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(require_model_dir(profile), dtype=torch_dtype(profile))
    return load_base_model(profile, device="cpu")


def export_merged(profile: Profile | str | None = None, checkpoint: str | Path | None = None,
                  target: str | Path | None = None) -> Path:
    """Merge the LoRA checkpoint into a fresh copy of the base model and save a plain model directory.

    Writes safetensors weights, ``config.json``, ``generation_config.json`` and the
    tokenizer into ``target`` (default :func:`export_dir`). The folder appears complete
    or not at all (written as ``<target>.partial`` first).
    """
    from peft import PeftModel

    profile = _profile(profile)
    path = resolve_checkpoint(profile, checkpoint)
    target = Path(target) if target else export_dir(profile)
    merged = PeftModel.from_pretrained(_base_for_merge(profile), path).merge_and_unload()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial)   # safetensors, config.json and generation_config.json
    load_tokenizer(profile).save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
