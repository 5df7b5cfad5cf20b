"""Appendix notebook 08: TRL's SFTTrainer encodes the real 3,729 rows exactly as the course does.

The notebook's own ``to_trl_row`` and ``stop_at_im_end`` and the data options of its ``SFTConfig`` cell
are read from the notebook, so these tests check what the learner runs.
"""

from __future__ import annotations

import ast
import json

import pytest

from helpers import data, models
from helpers.spec import DEFAULT_SYSTEM_PROMPT
from helpers.workspace import REPO_ROOT

NOTEBOOK_08 = REPO_ROOT / "notebooks" / "08-trl-sfttrainer.ipynb"
#: the SFTConfig options that change how TRL tokenizes and masks the data
DATA_OPTIONS = ("completion_only_loss", "padding_free", "max_length")
NEWLINE_ID = 198


def notebook_code():
    nb = json.loads(NOTEBOOK_08.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def notebook_functions(*names):
    """The named functions as the notebook's cells define them (``data`` is the course module)."""
    namespace: dict = {"data": data}
    found = []
    for source in notebook_code():
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and node.name in names:
                exec(compile(ast.Module(body=[node], type_ignores=[]), NOTEBOOK_08.name, "exec"), namespace)
                found.append(node.name)
    assert sorted(found) == sorted(names), f"{NOTEBOOK_08.name} must define each of {names} once, found {found}"
    return [namespace[name] for name in names]


def notebook_sft_options():
    """The literal data options of the notebook's training ``SFTConfig(...)`` call (the one with ``padding_free``)."""
    calls = []
    for source in notebook_code():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "SFTConfig":
                keywords = {k.arg: k.value for k in node.keywords}
                if "padding_free" in keywords:
                    calls.append(keywords)
    assert len(calls) == 1, "the notebook holds one SFTConfig with padding_free"
    options = {name: ast.literal_eval(calls[0][name]) for name in DATA_OPTIONS}
    assert "chat_template_path" in calls[0]
    return options


def trl_rows(tiny_spec, tiny_model_dir, rows, tmp_path, chat_template=None, **options):
    """TRL's prepared training rows (``input_ids``, ``labels``) for ``rows``, without training."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    template_path = None
    if chat_template is not None:
        template_path = tmp_path / "chat_template.jinja"
        template_path.write_text(chat_template, encoding="utf-8")
    config = SFTConfig(output_dir=str(tmp_path / "out"), report_to="none", bf16=False, activation_checkpointing=False,
                       chat_template_path=str(template_path) if template_path else None, **options)
    trainer = SFTTrainer(model=models.load_base_model(tiny_spec), args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    return trainer.train_dataset


def test_trl_rows_equal_the_course_encoding_on_every_real_row(real_records, real_encoded, tokenizer, tiny_spec,
                                                              tiny_model_dir, tmp_path):
    """input_ids identical and the trained positions (labels != -100) identical, row by row, all 3,729 rows."""
    to_trl_row, stop_at_im_end = notebook_functions("to_trl_row", "stop_at_im_end")
    ours, report = real_encoded   # encode_records with the course defaults (its system prompt and max_length)
    assert report.rows_out == len(real_records) == 3729
    rows = [to_trl_row(r, DEFAULT_SYSTEM_PROMPT) for r in real_records]
    theirs = trl_rows(tiny_spec, tiny_model_dir, rows, tmp_path, stop_at_im_end(tokenizer.chat_template),
                      **notebook_sft_options())
    assert len(theirs) == 3729
    for index, (row, sample) in enumerate(zip(theirs, ours, strict=True)):
        assert row["input_ids"] == sample["input_ids"], f"row {index + 1}: input_ids differ"
        assert row["labels"] == sample["labels"], f"row {index + 1}: labels differ"


def test_without_the_fixes_trl_trains_the_think_block_and_the_newline(real_records, tokenizer, tiny_spec,
                                                                     tiny_model_dir, tmp_path):
    """What the notebook's two fixes remove: TRL's default encoding of the same rows."""
    (to_trl_row,) = notebook_functions("to_trl_row")
    head = real_records[:40]
    rows = [{k: v for k, v in to_trl_row(r, DEFAULT_SYSTEM_PROMPT).items() if k != "chat_template_kwargs"}
            for r in head]
    theirs = trl_rows(tiny_spec, tiny_model_dir, rows, tmp_path, max_length=None)
    ours, _ = data.encode_records(head, tokenizer)
    for row, sample, record in zip(theirs, ours, head, strict=True):
        assert row["input_ids"] == sample["input_ids"] + [NEWLINE_ID]
        trained = tokenizer.decode([t for t in row["labels"] if t != data.IGNORE_INDEX])
        assert trained == "<think>\n\n</think>\n\n" + record["output"] + "<|im_end|>\n"


def test_the_training_template_renders_every_prompt_unchanged(real_records, tokenizer):
    """Inference sees the same prompt with the training template; only a conversation's final turn loses its "\\n"."""
    to_trl_row, stop_at_im_end = notebook_functions("to_trl_row", "stop_at_im_end")
    template = stop_at_im_end(tokenizer.chat_template)
    for record in real_records:
        row = to_trl_row(record, DEFAULT_SYSTEM_PROMPT)
        assert tokenizer.apply_chat_template(row["prompt"], chat_template=template, tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False) == \
            data.render_prompt(tokenizer, row["prompt"])
        assert tokenizer.apply_chat_template(row["prompt"] + row["completion"], chat_template=template,
                                             tokenize=False) + "\n" == data.render_conversation(tokenizer, record)
    history = [*data.build_messages("你是谁？"), {"role": "assistant", "content": "我是甄嬛。"},
               {"role": "user", "content": "今日可好？"}]
    assert tokenizer.apply_chat_template(history, chat_template=template, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False) == data.render_prompt(tokenizer, history)


def test_stop_at_im_end_refuses_a_template_it_does_not_know(tokenizer):
    (stop_at_im_end,) = notebook_functions("stop_at_im_end")
    with pytest.raises(ValueError):
        stop_at_im_end("{% for m in messages %}{{ m.content }}{% endfor %}")


def test_trl_is_pinned_and_installed():
    from importlib.metadata import version

    from tests.test_pins import pins

    assert pins("requirements.txt")["trl"] == version("trl")
