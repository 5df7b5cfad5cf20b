"""Notebook 05 without a browser: loading, prompts, generation, streaming, export, the chat widgets."""

from __future__ import annotations

import html
import re
import shutil
import threading
import time
import warnings

import pytest
import torch

from helpers import checkpoints
from helpers import inference as inf
from helpers.chat_app import ChatApp
from helpers.data import build_messages, render_prompt
from helpers.export import export_merged
from helpers.spec import DEFAULT_SYSTEM_PROMPT
from helpers.workspace import MissingArtifactError
from tests.conftest import tiny_spec_for
from tests.memorised import MEMORISED_ANSWER, MEMORISED_QUESTION

GREEDY = inf.greedy_settings(max_new_tokens=24)
#: a long reply that still fits the tiny model's 2,048-token context
LONG = 1536


@pytest.fixture(scope="module")
def loaded(tiny_spec, tiny_checkpoint):
    return inf.load_finetuned(tiny_spec, checkpoint=tiny_checkpoint)


def greedy_ids(model, tokenizer, question, adapter=True, max_new_tokens=24):
    """Token ids of the greedy reply (adapter on/off), via the same prompt path as the app."""
    settings = inf.greedy_settings(max_new_tokens=max_new_tokens)
    inputs = inf._inputs(model, tokenizer, inf.chat_messages([], question), settings)
    with inf.adapter_switch(model, adapter), torch.inference_mode():
        out = model.generate(**inputs, generation_config=settings.generation_config(model.generation_config))
    return out[0, inputs["input_ids"].shape[1]:].tolist()


# ----------------------------------------------------------------------------- prompts and settings


def test_an_over_long_chat_drops_whole_exchanges_never_a_lone_answer(tokenizer):
    """Trimming keeps the prompt a conversation: the oldest question goes with its answer."""
    import types

    history = []
    for n in range(3):
        history += [{"role": "user", "content": f"问题{n}" + "好" * 40}, {"role": "assistant", "content": f"回答{n}"}]
    messages = inf.chat_messages(history, "你是谁？")
    settings = inf.greedy_settings(max_new_tokens=16)
    full = len(inf.prompt_ids_as_text(tokenizer, messages, False))
    for window in range(full - 60, full + 16):   # every size from "drop nearly all" to "drop nothing"
        model = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=window), device="cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids = inf._inputs(model, tokenizer, messages, settings)["input_ids"][0].tolist()
        assert len(ids) <= window - 16
        prompt = tokenizer.decode(ids)
        kept = [m for m in messages if m["content"] in prompt]
        roles = [m["role"] for m in kept]
        assert roles[:2] == ["system", "user"] and roles[-1] == "user", (window, roles)
        assert all(a != b for a, b in zip(roles[1:-1], roles[2:], strict=True)), roles   # questions and answers alternate
        assert bool(caught) == (len(kept) < len(messages))


def test_single_turn_prompt_is_exactly_the_training_format(tokenizer):
    question = "你住在哪里？"
    prompt = render_prompt(tokenizer, inf.chat_messages([], question), enable_thinking=False)
    assert prompt == render_prompt(tokenizer, build_messages(question))
    # the system sentence is a system turn, not a user message (the original tutorial's bug)
    assert prompt.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{question}")
    assert prompt.count(DEFAULT_SYSTEM_PROMPT) == 1


def test_multi_turn_prompt_carries_history_and_thinking_toggle(tokenizer):
    history = [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是甄嬛。"}]
    messages = inf.chat_messages(history, "你住在哪里？")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    off = render_prompt(tokenizer, messages, enable_thinking=False)
    on = render_prompt(tokenizer, messages, enable_thinking=True)
    assert "<|im_start|>assistant\n我是甄嬛。<|im_end|>" in on
    assert off == on + "<think>\n\n</think>\n\n"
    assert on.endswith("<|im_start|>user\n你住在哪里？<|im_end|>\n<|im_start|>assistant\n")


def test_recommended_sampling_is_qwen3s_and_stops_at_im_end(tiny_model_dir):
    from transformers import GenerationConfig

    base = GenerationConfig.from_pretrained(tiny_model_dir)
    think, plain = inf.recommended_settings(True), inf.recommended_settings(False)
    assert (think.temperature, think.top_p, think.top_k, think.min_p) == (0.6, 0.95, 20, 0.0)
    assert (plain.temperature, plain.top_p, plain.top_k, plain.min_p) == (0.7, 0.8, 20, 0.0)
    config = plain.generation_config(base)
    assert config.do_sample and config.temperature == 0.7 and config.top_p == 0.8 and config.min_p == 0.0
    assert config.eos_token_id == [151645, 151643]  # <|im_end|>, <|endoftext|>
    greedy = inf.greedy_settings().generation_config(base)
    assert greedy.do_sample is False and greedy.eos_token_id == [151645, 151643]
    assert base.temperature == 0.6, "the model's own config must not be modified"


@pytest.mark.parametrize("text, thinking, content, finished", [
    ("我是甄嬛。", "", "我是甄嬛。", True),
    ("<think>\n她问我是谁。\n</think>\n\n我是甄嬛。", "她问我是谁。", "我是甄嬛。", True),
    ("<think>\n还在想", "还在想", "", False),
    ("<think>\n\n</think>\n\n答", "", "答", True),
])
def test_split_thinking(text, thinking, content, finished):
    reply = inf.split_thinking(text)
    assert (reply.thinking, reply.content, reply.finished) == (thinking, content, finished)


# ----------------------------------------------------------------------------- finding and loading checkpoints


def test_a_checkpoint_removed_while_it_loads_is_one_clear_error(tmp_path, tiny_checkpoint, monkeypatch):
    from helpers.checkpoints import CheckpointError

    spec = tiny_spec_for(tmp_path / "run")
    chosen = shutil.copytree(tiny_checkpoint, spec.paths.run_dir / tiny_checkpoint.name)
    load_base = inf.load_base_model

    def load_while_a_training_rotates(spec):   # the Trainer's save_total_limit removes it meanwhile
        shutil.rmtree(chosen)
        return load_base(spec)

    monkeypatch.setattr(inf, "load_base_model", load_while_a_training_rotates)
    with pytest.raises(CheckpointError, match=f"{tiny_checkpoint.name} 在加载时被删除了"):
        inf.load_finetuned(spec)


def test_missing_checkpoint_names_notebook_04_and_the_command(tmp_path, tiny_model_dir):
    spec = tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(tmp_path))
    with pytest.raises(MissingArtifactError, match=r"checkpoints/tiny .*LoRA .*notebooks/04-train\.ipynb") as caught:
        inf.resolve_checkpoint(spec)
    assert "python -m helpers.train --config configs/train/tiny.yaml" in str(caught.value)
    with pytest.raises(MissingArtifactError, match="nowhere 不存在"):
        inf.load_finetuned(spec, checkpoint=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingArtifactError, match=r"empty .*adapter_config\.json.*checkpoint-N"):
        inf.resolve_checkpoint(spec, tmp_path / "empty")


def test_latest_good_checkpoint_is_found_and_a_damaged_one_skipped_with_a_note(tmp_path, tiny_checkpoint):
    import shutil

    spec = tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(tmp_path))
    run = spec.paths.run_dir
    for step in (4, 9, 12):
        shutil.copytree(tiny_checkpoint, run / f"checkpoint-{step}")
    (run / "checkpoint-12" / checkpoints.COMPLETE_MARKER).unlink()  # training died while saving step 12
    assert inf.resolve_checkpoint(spec) == (run / "checkpoint-9", [])
    weights = run / "checkpoint-9" / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 1
    weights.write_bytes(bytes(raw))
    for asked in (None, run / "checkpoint-9", run):
        path, notes = inf.resolve_checkpoint(spec, asked)
        assert path == run / "checkpoint-4"
        assert re.search(r"checkpoint-9\W+adapter_model\.safetensors .*sha256", notes[0]), notes
        assert notes[-1].endswith("checkpoint-4")
    (run / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint-4\W.*adapter_model\.safetensors\D+0\D"):
        inf.resolve_checkpoint(spec, run / "checkpoint-4")


def test_load_finetuned_puts_the_saved_adapter_on_the_profiles_device_and_dtype(loaded, tiny_checkpoint):
    from peft import PeftModel
    from safetensors.torch import load_file

    assert isinstance(loaded.model, PeftModel) and not loaded.model.training
    assert loaded.checkpoint == tiny_checkpoint and loaded.notes == []
    assert loaded.system_prompt == DEFAULT_SYSTEM_PROMPT and loaded.recipe["profile"] == "tiny"
    param = next(loaded.model.parameters())
    assert (param.device.type, param.dtype) == ("cpu", torch.float32)
    saved = load_file(tiny_checkpoint / "adapter_model.safetensors")
    state = loaded.model.state_dict()
    key = next(k for k in saved if "lora_B" in k)
    live = next(v for k, v in state.items() if k.replace(".default", "") == key)
    assert torch.equal(live, saved[key]) and saved[key].abs().sum() > 0


# ----------------------------------------------------------------------------- generation


def test_adapter_off_is_exactly_the_base_model_and_on_differs(loaded, tiny_spec):
    from helpers.models import load_base_model

    base = load_base_model(tiny_spec)
    plain = greedy_ids(base, loaded.tokenizer, MEMORISED_QUESTION, adapter=True)  # no adapter to switch
    off = greedy_ids(loaded.model, loaded.tokenizer, MEMORISED_QUESTION, adapter=False)
    on = greedy_ids(loaded.model, loaded.tokenizer, MEMORISED_QUESTION, adapter=True)
    assert off == plain
    assert on != off
    # the switch is temporary: the adapter is active again afterwards
    assert greedy_ids(loaded.model, loaded.tokenizer, MEMORISED_QUESTION) == on


def test_memorised_answer_with_adapter_and_not_without(loaded, tiny_checkpoint):
    messages = inf.chat_messages([], MEMORISED_QUESTION)
    on = inf.generate(loaded.model, loaded.tokenizer, messages, inf.greedy_settings(max_new_tokens=64))
    off = inf.generate(loaded.model, loaded.tokenizer, messages, inf.greedy_settings(max_new_tokens=64),
                       adapter=False)
    assert on.content == MEMORISED_ANSWER  # and it stopped at <|im_end|> instead of running to 64 tokens
    assert MEMORISED_ANSWER not in off.content
    rows = inf.compare_adapter(loaded.model, loaded.tokenizer, [MEMORISED_QUESTION])
    assert rows == [{"question": MEMORISED_QUESTION, "base": off.content, "lora": MEMORISED_ANSWER}]


def test_streaming_yields_pieces_that_add_up_to_the_reply(loaded):
    messages = inf.chat_messages([], MEMORISED_QUESTION)
    chunks = list(inf.stream_generate(loaded.model, loaded.tokenizer, messages, GREEDY))
    reply = inf.generate(loaded.model, loaded.tokenizer, messages, GREEDY)
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == reply.text


def test_stream_stops_when_the_event_is_set(loaded):
    stop = threading.Event()
    settings = inf.greedy_settings(max_new_tokens=400)
    pieces = []
    started = time.perf_counter()
    for chunk in inf.stream_generate(loaded.model, loaded.tokenizer, inf.chat_messages([], "讲个长故事"),
                                     settings, stop_event=stop):
        pieces.append(chunk)
        stop.set()
    full = inf.generate(loaded.model, loaded.tokenizer, inf.chat_messages([], "讲个长故事"), settings)
    assert len(loaded.tokenizer("".join(pieces))["input_ids"]) < 10
    assert len("".join(pieces)) < len(full.text)
    assert time.perf_counter() - started < 30


def test_ctrl_c_while_streaming_stops_the_generation(loaded):
    stop = threading.Event()
    stream = inf.stream_generate(loaded.model, loaded.tokenizer, inf.chat_messages([], "讲个长故事"),
                                 inf.greedy_settings(max_new_tokens=400), stop_event=stop)
    next(stream)
    with pytest.raises(KeyboardInterrupt):
        stream.throw(KeyboardInterrupt)   # what Ctrl+C does to a loop over the stream
    assert stop.is_set()


def test_replies_generated_at_once_on_one_model_are_the_ones_made_alone(loaded):
    """Two chats on one model, one with the adapter off: the switch must not change the other's reply mid-way."""
    settings = inf.greedy_settings(max_new_tokens=24)
    messages = inf.chat_messages([], MEMORISED_QUESTION)
    alone = {side: inf.generate(loaded.model, loaded.tokenizer, messages, settings, adapter=side).content
             for side in (True, False)}
    together = {}
    for _ in range(3):
        base = threading.Thread(target=lambda: together.__setitem__(False, "".join(inf.stream_generate(
            loaded.model, loaded.tokenizer, messages, settings, adapter=False))))
        base.start()
        together[True] = inf.generate(loaded.model, loaded.tokenizer, messages, settings, adapter=True).content
        base.join()
        assert inf.split_thinking(together[False]).content == alone[False] and together[True] == alone[True]


def test_the_chat_widget_talks_to_a_plain_model(loaded):
    """An exported (merged) model loaded with from_pretrained, or a base model: no adapter, nothing to switch."""
    base = loaded.model.get_base_model()
    app = ChatApp(base, loaded.tokenizer, settings=inf.greedy_settings(max_new_tokens=4))
    assert app.adapter.disabled
    app.send("皇上")
    app.wait(120)
    assert app.last_error is None, app.status.value
    assert app.turns[-1].content


@pytest.mark.parametrize("settings", [inf.greedy_settings(max_new_tokens=4), inf.recommended_settings(True, 8192),
                                      inf.GenerationSettings(temperature=0.0, top_k=200)])
def test_the_chat_widget_uses_the_settings_it_is_given_even_outside_its_sliders_range(loaded, settings):
    assert ChatApp(loaded.model, loaded.tokenizer, settings=settings).settings() == settings


def test_a_reply_longer_than_the_context_is_refused_with_the_numbers(loaded):
    too_long = inf.greedy_settings(max_new_tokens=4096)
    with pytest.raises(inf.PromptTooLongError, match=r"max_new_tokens=4096 .*\b2048 "):
        inf.generate(loaded.model, loaded.tokenizer, inf.chat_messages([], MEMORISED_QUESTION), too_long)


def test_errors_in_the_generate_thread_reach_the_caller(loaded, monkeypatch):
    def fails_midway(*args, streamer, **kwargs):
        streamer.put(kwargs["input_ids"])  # generate hands the prompt to the streamer first (skipped)
        streamer.put(torch.tensor([9707]))  # "Hello"
        streamer.put(torch.tensor([11]))  # ","
        raise RuntimeError("simulated CUDA out of memory")

    monkeypatch.setattr(loaded.model, "generate", fails_midway)
    seen = []
    with pytest.raises(RuntimeError, match="simulated CUDA out of memory"):
        for chunk in inf.stream_generate(loaded.model, loaded.tokenizer, inf.chat_messages([], "hi"), GREEDY):
            seen.append(chunk)
    assert "".join(seen) == "Hello,"


# ----------------------------------------------------------------------------- merge and export


def test_an_export_below_a_file_is_refused_before_the_merge(tmp_path):
    """Checked with the target, before minutes of loading and merging (atomic_folder would refuse it only then)."""
    from helpers.export import ExportTargetError, check_export_target

    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ExportTargetError, match=r"notes\.txt 是文件"):
        check_export_target(tmp_path / "notes.txt" / "sub", [])
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_merged_export_reloads_with_plain_transformers_and_decodes_identically(loaded, tiny_spec, tiny_checkpoint,
                                                                                 tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = export_merged(tiny_spec, checkpoint=tiny_checkpoint, target=tmp_path / "tiny-merged")
    names = {p.name for p in target.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert not {"adapter_config.json", "adapter_model.safetensors"} & names
    assert not (tmp_path / "tiny-merged.partial").exists()
    merged = AutoModelForCausalLM.from_pretrained(target)
    assert type(merged).__name__ == "Qwen3ForCausalLM" and merged.dtype == torch.float32
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.generation_config.eos_token_id == [151645, 151643]
    tokenizer = AutoTokenizer.from_pretrained(target)
    question = MEMORISED_QUESTION
    assert render_prompt(tokenizer, inf.chat_messages([], question)) == \
        render_prompt(loaded.tokenizer, inf.chat_messages([], question))
    for q in (question, "你住在哪里？"):
        assert greedy_ids(merged, tokenizer, q, max_new_tokens=32) == \
            greedy_ids(loaded.model, loaded.tokenizer, q, max_new_tokens=32)
    assert greedy_ids(merged, tokenizer, question) != greedy_ids(loaded.model, loaded.tokenizer, question,
                                                                 adapter=False)


# ----------------------------------------------------------------------------- the widget app, driven headless


@pytest.fixture
def app(loaded):
    app = ChatApp(loaded.model, loaded.tokenizer)
    app.do_sample.value = False
    app.max_new_tokens.value = 32
    yield app
    app.stop()
    app.wait(60)


def assistant_texts(transcript_html):
    """The assistant replies shown in the transcript, as plain text."""
    return [html.unescape(t) for t in re.findall(r'<span class="qwen3-chat-assistant">(.*?)</span>',
                                                 transcript_html, flags=re.S)]


def send(app, text):
    app.message.value = text
    app.send_button.click()
    app.wait(120)


def test_controls_start_on_qwens_settings_and_the_thinking_toggle_switches_them(loaded):
    app = ChatApp(loaded.model, loaded.tokenizer)
    assert app.settings() == inf.recommended_settings(False)
    assert app.adapter.value is True and not app.adapter.disabled
    assert app.max_new_tokens.max >= inf.THINKING_BUDGET   # the slider reaches Qwen's budget for thinking mode
    app.thinking.value = True
    assert app.settings() == inf.recommended_settings(True)
    app.thinking.value = False
    app.temperature.value, app.top_p.value, app.top_k.value, app.max_new_tokens.value = 1.2, 0.5, 7, 64
    assert app.settings() == inf.GenerationSettings(False, True, 1.2, 0.5, 7, 0.0, 64)
    app.do_sample.value = False
    assert app.temperature.disabled and not app.settings().do_sample


def test_send_streams_the_reply_into_the_transcript(app, loaded, tiny_checkpoint):
    updates = []
    app.transcript.observe(lambda change: updates.append(change["new"]), names="value")
    app.message.value = MEMORISED_QUESTION
    app.send_button.click()
    assert app.busy and app.send_button.disabled and not app.stop_button.disabled
    assert app.message.value == ""
    app.wait(120)
    expected = inf.generate(loaded.model, loaded.tokenizer, inf.chat_messages([], MEMORISED_QUESTION),
                            app.settings())
    assert app.last_error is None, app.status.value
    assert app.history == [{"role": "user", "content": MEMORISED_QUESTION},
                           {"role": "assistant", "content": expected.content}]
    partial = [texts[0] for texts in map(assistant_texts, updates) if texts]
    assert partial[-1] == expected.content
    growing = [t for t in partial if t and t != expected.content]
    assert len(growing) >= 2, "the reply should appear in the transcript piece by piece"
    assert all(expected.content.startswith(t.rstrip()) for t in growing)
    assert not app.send_button.disabled and app.stop_button.disabled
    assert "完成" in app.status.value
    assert expected.content == MEMORISED_ANSWER


def test_second_turn_is_generated_with_the_first_in_its_history(app, loaded):
    send(app, MEMORISED_QUESTION)
    send(app, "你住在哪里？")
    assert [m["role"] for m in app.history] == ["user", "assistant", "user", "assistant"]
    expected = inf.generate(loaded.model, loaded.tokenizer, inf.chat_messages(app.history[:2], "你住在哪里？"),
                            app.settings())
    assert app.history[-1]["content"] == expected.content
    assert assistant_texts(app.transcript.value) == [app.history[1]["content"], expected.content]


def test_adapter_switch_in_the_app_gives_the_base_models_reply(app, loaded):
    app.adapter.value = False
    send(app, MEMORISED_QUESTION)
    base = inf.generate(loaded.model, loaded.tokenizer, inf.chat_messages([], MEMORISED_QUESTION),
                        app.settings(), adapter=False)
    assert app.history[-1]["content"] == base.content
    assert "基座模型" in app.transcript.value


def test_thinking_is_shown_but_kept_out_of_the_history(app, monkeypatch):
    def fake_stream(model, tokenizer, messages, settings, adapter, stop_event):
        assert settings.enable_thinking
        yield from ["<think>\n", "她问我是谁，", "我该自报家门。", "\n</think>\n\n", "我是甄嬛。"]

    monkeypatch.setattr("helpers.chat_app.stream_generate", fake_stream)
    app.thinking.value = True
    send(app, MEMORISED_QUESTION)
    assert app.history[-1] == {"role": "assistant", "content": "我是甄嬛。"}
    assert "她问我是谁，我该自报家门。" in app.transcript.value and "思考过程" in app.transcript.value


@pytest.mark.parametrize("stop_midway", [False, True])
def test_a_turn_without_an_answer_stays_out_of_the_history_and_gives_the_message_back(app, monkeypatch, stop_midway):
    """Thinking cut off by max_new_tokens (or stopped): the next turn must not show the model an empty reply."""
    def fake_stream(model, tokenizer, messages, settings, adapter, stop_event):
        yield "<think>\n她问我是谁，"
        if stop_midway:
            stop_event.set()
        yield "我该"

    send(app, MEMORISED_QUESTION)
    answered = list(app.history)
    monkeypatch.setattr("helpers.chat_app.stream_generate", fake_stream)
    app.thinking.value = True
    send(app, "你住在哪里？")
    assert app.last_error is None, app.status.value
    assert app.history == answered and len(app.turns) == 2
    assert app.turns[-1].thinking == "她问我是谁，我该" and app.turns[-1].content == ""
    assert ("max_new_tokens" in app.turns[-1].note) is not stop_midway
    assert app.message.value == "你住在哪里？"


def test_an_error_is_shown_and_the_app_keeps_working(app, loaded, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("simulated CUDA out of memory")

    monkeypatch.setattr(loaded.model, "generate", out_of_memory)
    send(app, MEMORISED_QUESTION)
    assert isinstance(app.last_error, RuntimeError)
    assert "RuntimeError: simulated CUDA out of memory" in app.status.value
    assert "Traceback" in app.status.value
    assert app.history == [] and app.message.value == MEMORISED_QUESTION  # message given back
    assert not app.send_button.disabled and app.stop_button.disabled
    monkeypatch.undo()
    app.send_button.click()
    app.wait(120)
    assert app.last_error is None and len(app.history) == 2 and "出错" not in app.status.value


def test_stop_ends_a_long_reply_early_and_keeps_what_was_said(app):
    # the base model (adapter off) never says <|im_end|>: a reply as long as the tiny model's context allows
    app.adapter.value = False
    app.max_new_tokens.value = LONG
    speaking = threading.Event()

    def watch(change):
        if any(assistant_texts(change["new"])):
            speaking.set()

    app.transcript.observe(watch, names="value")
    app.message.value = "讲一个很长的故事"
    app.send_button.click()
    assert speaking.wait(60), "no text streamed in"
    app.stop_button.click()
    started = time.perf_counter()
    app.wait(30)
    assert time.perf_counter() - started < 30
    assert "已停止" in app.status.value
    reply = app.history[-1]["content"]
    assert 0 < len(app.tokenizer(reply)["input_ids"]) < LONG
    assert not app.send_button.disabled


def test_a_message_sent_from_code_leaves_the_draft_in_the_box(app, monkeypatch):
    monkeypatch.setattr("helpers.chat_app.stream_generate", lambda *args, **kwargs: iter(["臣妾在。"]))
    app.message.value = "还没写完的草稿"
    assert app.send("皇上") is True
    app.wait(60)
    assert app.message.value == "还没写完的草稿" and app.history[-1]["content"] == "臣妾在。"


def test_clear_forgets_the_conversation(app):
    send(app, MEMORISED_QUESTION)
    assert app.history
    app.clear_button.click()
    assert app.history == [] and app.turns == []
    assert "还没有对话" in app.transcript.value and "已清空" in app.status.value


def test_empty_message_and_double_send_are_refused_politely(app):
    assert app.send("   ") is False and "先在输入框" in app.status.value
    app.adapter.value = False
    app.max_new_tokens.value = LONG
    assert app.send("讲一个很长的故事") is True
    assert app.send("再来一个") is False and "还在生成" in app.status.value
    app.stop()
    app.wait(60)
    assert len(app.history) == 2
