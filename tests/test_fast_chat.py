"""Faster chat: the adapter merged in memory and a static KV cache give the same greedy reply as
the plain adapter model with transformers' dynamic cache (tiny model, CPU)."""

from __future__ import annotations

import copy

import pytest

from helpers import inference as inf


@pytest.fixture(scope="module")
def adapter_model(tiny_spec, tiny_model_dir):
    """The tiny base with a LoRA adapter of random (non-zero) weights, so merging changes the weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from helpers.models import load_base_model, load_tokenizer

    torch.manual_seed(0)
    base = load_base_model(tiny_spec, device="cpu")
    config = LoraConfig(r=8, lora_alpha=32, target_modules=list(tiny_spec.lora.target_modules),
                        init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, config).eval()
    return model, load_tokenizer(tiny_spec)


def test_greedy_reply_is_the_same_on_all_three_chat_paths(adapter_model):
    model, tokenizer = adapter_model
    messages = inf.chat_messages([], "皇上，你在哪里？", "现在你要扮演皇帝身边的女人--甄嬛")
    settings = inf.greedy_settings(max_new_tokens=24)
    eager = inf.generate(model, tokenizer, messages, settings)
    static = inf.generate(model, tokenizer, messages, inf.replace(settings, cache="static"))
    base_only = inf.generate(model, tokenizer, messages, settings, adapter=False)
    merged = inf.merged_in_memory(copy.deepcopy(model))
    assert not hasattr(merged, "disable_adapter") and merged.course_merged
    merged_reply = inf.generate(merged, tokenizer, messages, settings)
    merged_static = inf.generate(merged, tokenizer, messages, inf.replace(settings, cache="static"))
    streamed = "".join(inf.stream_generate(merged, tokenizer, messages, inf.replace(settings, cache="static")))
    assert eager.content and len(tokenizer(eager.content)["input_ids"]) >= 8
    assert static == eager == merged_reply == merged_static
    assert inf.split_thinking(streamed) == eager
    # the adapter does change the reply: the three paths agree on the adapter's output, not the base's
    assert base_only != eager


def test_static_cache_reaches_generate(adapter_model):
    model, _ = adapter_model
    settings = inf.replace(inf.greedy_settings(), cache="static")
    assert settings.generation_config(model.generation_config).cache_implementation == "static"
    assert inf.greedy_settings().generation_config(model.generation_config).cache_implementation is None
    with pytest.raises(ValueError):
        inf.replace(settings, cache="paged-ish").generation_config(model.generation_config)


def test_chat_widget_on_a_merged_model_has_no_adapter_switch(adapter_model):
    from helpers.chat_app import ChatApp

    model, tokenizer = adapter_model
    merged = inf.merged_in_memory(copy.deepcopy(model))
    app = ChatApp(merged, tokenizer, settings=inf.replace(inf.greedy_settings(max_new_tokens=8), cache="static"))
    assert app.adapter.value is True and app.adapter.disabled is True
    assert app.settings().cache == "static"
    app.send("皇上")
    app.wait(120)
    assert app.last_error is None and app.turns[-1].adapter is True and app.turns[-1].content
    assert app.turns[-1].who == "甄嬛（LoRA 已合并）"


def test_the_transcript_names_who_answered(adapter_model, tmp_path, monkeypatch):
    """The LoRA model, the base model (switch off), a merged model (in memory or a course export loaded with
    from_pretrained) and a plain base model each get their own name: a base model is never called the LoRA."""
    from helpers.chat_app import ChatApp, merged_in, speaker
    from helpers.export import EXPORT_MARKER

    model, tokenizer = adapter_model
    base = model.get_base_model()
    assert (speaker(model, True, False), speaker(model, False, False)) == ("甄嬛（LoRA）", "基座模型（LoRA 关）")
    assert speaker(base, True, merged_in(base)) == "模型"
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / EXPORT_MARKER).write_text("{}", encoding="utf-8")
    exported = copy.copy(base)
    exported.name_or_path = "export"                 # from_pretrained("export"), relative to where it was loaded
    monkeypatch.chdir(tmp_path)
    app = ChatApp(exported, tokenizer, settings=inf.greedy_settings(max_new_tokens=4))   # a short reply: only its label matters
    monkeypatch.chdir(tmp_path.parent)               # the label does not change when the kernel's folder does
    app.send("皇上")
    app.wait(120)
    assert merged_in(exported) is False and app.turns[-1].who == "甄嬛（LoRA 已合并）", app.status.value
