"""Notebook 05: a small chat app in ipywidgets, on top of :mod:`helpers.inference`.

``ChatApp(model, tokenizer)`` shows a message box, Send / Stop / Clear buttons, the
thinking toggle, sampling controls and an adapter on/off switch. Each reply is
generated in a background thread and streamed into the transcript token by token,
so the notebook (and the Stop button) stay responsive. The conversation is kept as
chat messages (system prompt + user/assistant turns) and rendered with the chat
template on every turn; only the final answer, never the ``<think>`` part, goes
into that history, as Qwen3's model card advises.

Errors are shown in the app (type, message and traceback) and kept in
``app.last_error``; the buttons come back so the next message works.

Tests and notebooks can drive it without a browser: set ``app.message.value``,
call ``app.send_button.click()``, then ``app.wait()``.
"""

from __future__ import annotations

import html
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets

from .export import EXPORT_MARKER
from .inference import (
    QWEN3_SAMPLING,
    THINKING_BUDGET,
    GenerationSettings,
    chat_messages,
    split_thinking,
    stream_generate,
    trained_system_prompt,
)

#: ``ChatApp``'s default system prompt: the one the loaded adapter was trained with
TRAINED = object()

_STYLE = """<style>
.qwen3-chat-log {font-size: 14px; line-height: 1.5; max-height: 420px; overflow-y: auto;
  border: 1px solid #ddd; border-radius: 6px; padding: 8px; background: #fafafa;}
.qwen3-chat-log .turn {margin: 6px 0;}
.qwen3-chat-log .who {font-weight: bold; margin-right: 6px;}
.qwen3-chat-log .user .who {color: #1565c0;}
.qwen3-chat-log .assistant .who {color: #ad1457;}
.qwen3-chat-log .qwen3-chat-user, .qwen3-chat-log .qwen3-chat-assistant {white-space: pre-wrap; display: inline;}
.qwen3-chat-log details {color: #888; font-size: 12px; margin: 2px 0 2px 1.5em;}
.qwen3-chat-log .qwen3-chat-think {white-space: pre-wrap;}
.qwen3-chat-log .note {color: #999; font-size: 12px; margin-left: 6px;}
</style>"""


@dataclass
class Turn:
    """One exchange as shown in the transcript."""

    user: str
    content: str = ""
    thinking: str = ""
    adapter: bool = True
    note: str = ""
    who: str = "甄嬛（LoRA）"   # who answered, as the transcript names it (:func:`speaker`)


def speaker(model, adapter: bool, merged: bool) -> str:
    """Who answers: the LoRA model or the base model (a PEFT model with its switch), a model with the LoRA merged in
    (``merged``: :func:`merged_in`), else just "the model"."""
    if hasattr(model, "disable_adapter"):
        return "甄嬛（LoRA）" if adapter else "基座模型（LoRA 关）"
    return "甄嬛（LoRA 已合并）" if merged else "模型"


def merged_in(model) -> bool:
    """Whether ``model`` holds a merged LoRA: merged in memory (``inference.merged_in_memory``) or loaded from an
    export folder (its ``course_export.json``)."""
    folder = getattr(model, "name_or_path", "") or ""
    return getattr(model, "course_merged", False) or (bool(folder) and (Path(folder) / EXPORT_MARKER).is_file())


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def render_transcript(turns: list[Turn], empty_hint: str = "（还没有对话。输入一句话，点“发送”。）") -> str:
    """The transcript as HTML (text escaped; thinking folded into a grey ``<details>``)."""
    parts = [_STYLE, '<div class="qwen3-chat-log tex2jax_ignore">']
    if not turns:
        parts.append(f'<div class="note">{_escape(empty_hint)}</div>')
    for turn in turns:
        parts.append('<div class="turn user"><span class="who">你</span>'
                     f'<span class="qwen3-chat-user">{_escape(turn.user)}</span></div>')
        parts.append(f'<div class="turn assistant"><span class="who">{_escape(turn.who)}</span>')
        if turn.thinking:
            parts.append('<details class="qwen3-chat-thinking"><summary>思考过程</summary>'
                         f'<div class="qwen3-chat-think">{_escape(turn.thinking)}</div></details>')
        parts.append(f'<span class="qwen3-chat-assistant">{_escape(turn.content)}</span>')
        if turn.note:
            parts.append(f'<span class="note">{_escape(turn.note)}</span>')
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


class ChatApp:
    """Chat with a (PEFT) causal LM in the notebook; see the module docstring."""

    def __init__(self, model, tokenizer, system_prompt: str | None = TRAINED,
                 settings: GenerationSettings | None = None):
        self.model = model
        self.tokenizer = tokenizer
        #: default: the system prompt the adapter was trained with (course_recipe.json beside it)
        self.system_prompt = trained_system_prompt(model) if system_prompt is TRAINED else system_prompt
        settings = settings or GenerationSettings()
        #: the conversation in chat-template form (user / assistant final answers only)
        self.history: list[dict] = []
        #: what the transcript shows (including thinking and notes)
        self.turns: list[Turn] = []
        self.last_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

        self.transcript = widgets.HTML(render_transcript([]))
        self.message = widgets.Textarea(placeholder="输入消息……", rows=2,
                                        layout=widgets.Layout(width="100%"))
        self.send_button = widgets.Button(description="发送", button_style="primary", icon="paper-plane")
        self.stop_button = widgets.Button(description="停止", button_style="warning", icon="stop", disabled=True)
        self.clear_button = widgets.Button(description="清空", icon="trash")
        self.status = widgets.HTML("")
        self.thinking = widgets.Checkbox(value=settings.enable_thinking, description="思考模式 enable_thinking",
                                         indent=False)
        has_adapter = hasattr(model, "disable_adapter")
        self._merged = merged = merged_in(model)   # LoRA folded in, no switch (read once: the folder may be relative)
        self.adapter = widgets.Checkbox(value=has_adapter or merged, disabled=not has_adapter, indent=False,
                                        description="LoRA 适配器" if has_adapter else
                                        "LoRA 已合并（无开关）" if merged else "LoRA 适配器（未加载）")
        #: the KV cache of every reply (GenerationSettings.cache: None = dynamic, "static")
        self.cache = settings.cache
        self._decoding_controls(settings)

        # CSS classes qwen3-chat-<part>: the browser test finds the parts by these
        for name, widget in (("transcript", self.transcript), ("input", self.message),
                             ("send", self.send_button), ("stop", self.stop_button),
                             ("clear", self.clear_button), ("status", self.status),
                             ("sample", self.do_sample), ("thinking-toggle", self.thinking),
                             ("adapter", self.adapter)):
            widget.add_class(f"qwen3-chat-{name}")
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        self.thinking.observe(self._apply_recommended, names="value")
        self.do_sample.observe(self._sync_sampling_controls, names="value")
        self._sync_sampling_controls()

        controls = widgets.VBox([
            widgets.HBox([self.thinking, self.adapter, self.do_sample]),
            widgets.HBox([self.temperature, self.top_p]),
            widgets.HBox([self.top_k, self.max_new_tokens]),
        ])
        buttons = widgets.HBox([self.send_button, self.stop_button, self.clear_button])
        self.widget = widgets.VBox([self.transcript, self.message, buttons, self.status, controls],
                                   layout=widgets.Layout(width="100%", max_width="760px"))
        self.widget.add_class("qwen3-chat")

    def _decoding_controls(self, settings: GenerationSettings) -> None:
        self.do_sample = widgets.Checkbox(value=settings.do_sample, description="采样（关 = 贪心）", indent=False)
        slider = {"continuous_update": False, "style": {"description_width": "120px"},
                  "layout": widgets.Layout(width="360px")}
        def span(value, low, high) -> dict:   # a value given outside a slider's usual range widens it, never clamped
            return {"value": value, "min": min(low, value), "max": max(high, value)}

        self.temperature = widgets.FloatSlider(**span(settings.temperature, 0.05, 2.0), step=0.05,
                                               description="temperature", **slider)
        self.top_p = widgets.FloatSlider(**span(settings.top_p, 0.05, 1.0), step=0.05, description="top_p", **slider)
        self.top_k = widgets.IntSlider(**span(settings.top_k, 0, 100), description="top_k", **slider)
        self.max_new_tokens = widgets.IntSlider(**span(settings.max_new_tokens, 16, THINKING_BUDGET), step=16,
                                                description="max_new_tokens", **slider)
        self._min_p = settings.min_p

    # ------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ controls

    def settings(self) -> GenerationSettings:
        """The generation settings the controls show right now."""
        return GenerationSettings(
            enable_thinking=self.thinking.value, do_sample=self.do_sample.value,
            temperature=self.temperature.value, top_p=self.top_p.value, top_k=self.top_k.value,
            min_p=self._min_p, max_new_tokens=self.max_new_tokens.value, cache=self.cache,
        )

    def _apply_recommended(self, change=None) -> None:
        """Switching thinking on/off loads Qwen3's recommended sampling for that mode."""
        recommended = QWEN3_SAMPLING[self.thinking.value]
        self.temperature.value = recommended["temperature"]
        self.top_p.value = recommended["top_p"]
        self.top_k.value = recommended["top_k"]
        self._min_p = recommended["min_p"]

    def _sync_sampling_controls(self, change=None) -> None:
        for slider in (self.temperature, self.top_p, self.top_k):
            slider.disabled = not self.do_sample.value

    def _set_status(self, text: str, kind: str = "info", details: str = "") -> None:
        color = {"info": "#555", "error": "#c62828", "busy": "#1565c0"}[kind]
        body = f'<span style="color:{color}">{_escape(text)}</span>'
        if details:
            body += (f'<details><summary>详细信息 (traceback)</summary><pre style="font-size:11px">'
                     f"{_escape(details)}</pre></details>")
        self.status.value = f'<div class="qwen3-chat-status-{kind}">{body}</div>'

    def _set_busy(self, busy: bool) -> None:
        self.send_button.disabled = busy
        self.stop_button.disabled = not busy

    def _render(self, pending: Turn | None = None) -> None:
        self.transcript.value = render_transcript(self.turns + ([pending] if pending else []))

    # ------------------------------------------------------------------ actions

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def send(self, text: str | None = None) -> bool:
        """Start a reply to ``text`` (default: the message box). Returns False if nothing was started."""
        with self._lock:
            if self.busy:
                self._set_status("上一条回复还在生成：等它完成，或先点“停止”。")
                return False
            typed = text is None   # from the message box (cleared once sent); text given in code leaves a draft alone
            text = (self.message.value if typed else text).strip()
            if not text:
                self._set_status("先在输入框里写一句话。")
                return False
            settings = self.settings()
            adapter = self.adapter.value or not hasattr(self.model, "disable_adapter")   # a plain model: as it is
            messages = chat_messages(self.history, text, self.system_prompt)
            if typed:
                self.message.value = ""
            self.last_error = None
            self._stop = threading.Event()
            self._set_busy(True)
            self._set_status(f"生成中…（{settings.describe()}）", "busy")
            self._thread = threading.Thread(target=self._run_turn, name="qwen3-chat-turn", daemon=True,
                                            args=(text, messages, settings, adapter, self._stop))
            self._thread.start()
            return True

    def _run_turn(self, text, messages, settings, adapter, stop_event) -> None:
        pending = Turn(user=text, adapter=adapter, note="生成中…", who=speaker(self.model, adapter, self._merged))
        raw = ""
        started = time.perf_counter()
        try:
            self._render(pending)
            for chunk in stream_generate(self.model, self.tokenizer, messages, settings,
                                         adapter=adapter, stop_event=stop_event):
                raw += chunk
                reply = split_thinking(raw)
                pending.thinking, pending.content = reply.thinking, reply.content
                self._render(pending)
            reply = split_thinking(raw)
            stopped = stop_event.is_set()
            pending.thinking, pending.content = reply.thinking, reply.content
            self.turns.append(pending)
            if reply.content.strip():
                pending.note = "（已停止）" if stopped else ""
                self.history += [{"role": "user", "content": text},
                                 {"role": "assistant", "content": reply.content}]
            else:   # no answer to remember (the next turn would show the model an empty reply): the message comes back
                pending.note = ("（已停止，还没有回答" if stopped else "（思考还没结束就用完了 max_new_tokens：请调大它，"
                                "或关掉思考模式" if not reply.finished else "（回答是空的") + "；这一轮不计入对话历史）"
                if not self.message.value:
                    self.message.value = text
            seconds = time.perf_counter() - started
            self._render()
            self._set_status(f"{'已停止' if stopped else '完成'}：{len(raw)} 个字符，{seconds:.1f} 秒"
                             f"（{settings.describe()}）")
        except Exception as err:  # shown in the app and kept in last_error, never dropped
            self.last_error = err
            self._render()  # the failed turn is not added to the history
            if not self.message.value:
                self.message.value = text  # give the message back so it can be sent again
            self._set_status(f"出错了：{type(err).__name__}: {err}", "error",
                             "".join(traceback.format_exception(err)))
        finally:
            self._set_busy(False)

    def stop(self) -> None:
        """Ask the running generation to stop after its current token."""
        self._stop.set()

    def wait(self, timeout: float | None = 300) -> None:
        """Block until the current reply is finished (for tests and scripted demos)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"过了 {timeout} 秒，回复还在生成")

    def clear(self) -> None:
        """Stop any running reply and forget the conversation."""
        self.stop()
        self.wait(timeout=60)
        self.history.clear()
        self.turns.clear()
        self.last_error = None
        self._render()
        self._set_status("对话已清空。")
