"""The data pipeline on the real 3,729-row dataset: encoding, validation, the encoded file and its
stamp, the CLI, the download, padding and the original tutorial's encoding."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import threading

import pytest

from bench.common import expected_padded_tokens
from helpers import data, data_files, models, padding, validation
from helpers import original as tutorial
from helpers.spec import DEFAULT_MAX_LENGTH, DEFAULT_SYSTEM_PROMPT
from helpers.workspace import REPO_ROOT, record_made, shell_path
from tests.cli_runner import run_cli
from tests.conftest import tiny_spec_for

BROKEN = REPO_ROOT / "tests" / "fixtures" / "broken.jsonl"
#: What tests/fixtures/broken.jsonl holds, line by line: (field, severity) of each problem.
BROKEN_PROBLEMS = {
    2: ("(json)", "error"),        # invalid JSON
    3: ("output", "error"),        # missing field
    4: ("output", "error"),        # non-string value
    5: ("output", "error"),        # empty output
    6: ("(row)", "warning"),       # duplicate of line 1
    7: ("(tokens)", "warning"),    # longer than max_length 128
    9: ("instruction", "error"),   # empty instruction
    10: ("messages", "error"),     # conversation format
    11: ("(row)", "error"),        # not an object
    12: ("input", "error"),        # null input
}
BROKEN_VALID_LINES = [1, 6, 7, 13]
NEWLINE_ID = 198


@pytest.fixture(scope="module")
def real(real_records, real_encoded, tokenizer):
    """The real records, our encoding, and an independent reference tokenization of each conversation."""
    records = real_records
    samples, report = real_encoded
    texts = [data.render_conversation(tokenizer, r) for r in records]
    reference = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return records, samples, report, texts, reference


def test_ids_equal_the_rendered_conversation_minus_its_final_newline(real, tokenizer):
    """Our ids == the template's full conversation, tokenized, without the trailing "\\n".

    The template closes the assistant turn with ``<|im_end|>`` and then writes "\\n"
    (token 198) as the separator before a next turn. The model never generates that
    "\\n": generation stops at ``<|im_end|>``, the eos token. So a sample ends at
    ``<|im_end|>`` and the "\\n" is not trained.
    """
    records, samples, report, texts, reference = real
    end_id = tokenizer.convert_tokens_to_ids(data.END_TOKEN)
    assert len(records) == 3729 and report.rows_out == 3729 and not report.too_long
    assert all(t.endswith("<|im_end|>\n") for t in texts)
    for sample, ref in zip(samples, reference, strict=True):
        assert ref[-2:] == [end_id, NEWLINE_ID]
        assert sample["input_ids"] == ref[:-1]
        assert sample["attention_mask"] == [1] * len(ref[:-1])


def test_trained_labels_decode_to_the_answer_and_its_end_token(real, tokenizer):
    records, samples, *_ = real
    trained = [[t for t in s["labels"] if t != data.IGNORE_INDEX] for s in samples]
    decoded = tokenizer.batch_decode(trained)
    assert decoded == [r["output"] + "<|im_end|>" for r in records]


def test_label_is_minus_100_exactly_on_the_prompt(real, tokenizer):
    records, samples, *_ = real
    prompts = [data.render_prompt(tokenizer, data.build_messages(r["instruction"], r["input"])) for r in records]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    for sample, ids in zip(samples, prompt_ids, strict=True):
        n = len(ids)
        assert sample["input_ids"][:n] == ids
        assert sample["labels"][:n] == [data.IGNORE_INDEX] * n
        assert sample["labels"][n:] == sample["input_ids"][n:]
        assert data.IGNORE_INDEX not in sample["labels"][n:]


def test_prompt_frame_reproduces_render_prompt_on_every_row(real, tokenizer):
    records = real[0]
    head, tail = data.prompt_frame(tokenizer)
    for r in records:
        expected = data.render_prompt(tokenizer, data.build_messages(r["instruction"], r["input"]))
        assert head + data.user_text(r) + tail == expected


NOTEBOOK_03 = REPO_ROOT / "notebooks" / "03-data.ipynb"


def reference_encoder(tokenizer, notebook=NOTEBOOK_03):
    """``encode_one`` as notebook 03's code cell defines it (the cell's imports, its constants, that function)."""
    import ast

    nb = json.loads(notebook.read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
             and "def encode_one(" in "".join(c["source"])]
    assert len(cells) == 1, f"{notebook.name} must hold one code cell defining encode_one, found {len(cells)}"
    source = "\n".join(line for line in cells[0].splitlines() if not line.lstrip().startswith(("%", "!")))
    tree = ast.parse(source)
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "encode_one")
    local = {a.arg for a in function.args.args} | {node.id for node in ast.walk(function)
                                                   if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    used = {node.id for node in ast.walk(function) if isinstance(node, ast.Name)} - local  # its free names
    keep = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) or node is function
            or (isinstance(node, ast.Assign) and {getattr(t, "id", None) for t in node.targets} & used)]
    namespace: dict = {"tokenizer": tokenizer}
    exec(compile(ast.Module(body=keep, type_ignores=[]), f"{notebook.name}: encode_one", "exec"), namespace)
    return namespace["encode_one"]


def assert_agrees_with_encode_records(encode_one, records, tokenizer, max_length, ours=None):
    if ours is None:
        ours, report = data.encode_records(records, tokenizer, DEFAULT_SYSTEM_PROMPT, max_length)
        dropped = [i for i, _ in report.too_long]
    else:
        dropped = []
    theirs = [encode_one(r, tokenizer, DEFAULT_SYSTEM_PROMPT, max_length) for r in records]
    assert [i for i, sample in enumerate(theirs) if sample is None] == dropped
    kept = [sample for sample in theirs if sample is not None]
    assert len(kept) == len(ours)
    for one, batched in zip(kept, ours, strict=True):
        assert one == {k: batched[k] for k in data_files.ENCODED_KEYS}, f"record {batched['row'] + 1} differs"


def test_the_notebooks_reference_encoder_agrees_with_encode_records_on_every_row(real, tokenizer):
    """Notebook 03's readable ``encode_one`` (built on apply_chat_template) and the batched fast
    encoder produce the same samples for all 3,729 rows, and drop the same rows when too long."""
    encode_one = reference_encoder(tokenizer)
    records, samples, *_ = real
    assert_agrees_with_encode_records(encode_one, records, tokenizer, DEFAULT_MAX_LENGTH, ours=samples)
    assert_agrees_with_encode_records(encode_one, records, tokenizer, 100)


def test_tokenize_batch_equals_the_tokenizer(real, tokenizer):
    records = real[0]
    texts = [r["instruction"] for r in records] + [r["output"] for r in records]
    assert data.tokenize_batch(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_truncation_drops_and_counts_every_row_over_max_length(real, tokenizer):
    records, _, _, _, reference = real
    max_length = 100
    full_lengths = [len(ref) - 1 for ref in reference]
    expected = [i for i, n in enumerate(full_lengths) if n > max_length]
    assert 0 < len(expected) < len(records)  # the limit really cuts into the real data
    samples, report = data.encode_records(records, tokenizer, max_length=max_length)
    assert [i for i, _ in report.too_long] == expected
    assert [n for _, n in report.too_long] == [full_lengths[i] for i in expected]
    assert report.rows_out == len(samples) == len(records) - len(expected)
    end_id = tokenizer.convert_tokens_to_ids(data.END_TOKEN)
    assert all(len(s["input_ids"]) <= max_length and s["labels"][-1] == end_id for s in samples)
    assert f"丢弃了 {len(expected)} 条超过 max_length 的数据" in report.summary()


def test_real_dataset_loads_with_only_duplicate_warnings(real_dataset, real):
    report = real_dataset.report
    records = real[0]
    unique = len({(r["instruction"], r["input"], r["output"]) for r in records})
    assert report.ok and report.rows_read == 3729 and not report.skipped
    assert all(p.reason.endswith("完全相同（保留）") for p in report.warnings)
    assert len(report.warnings) == len(records) - unique > 0


# --------------------------------------------------------------------------- validation


def test_broken_file_is_refused_with_every_problem_named():
    with pytest.raises(validation.DataValidationError) as caught:
        validation.load_records(BROKEN)
    report = caught.value.report
    found = {p.row: (p.field, p.severity) for p in report.problems}
    assert found == {row: problem for row, problem in BROKEN_PROBLEMS.items() if problem[0] != "(tokens)"}
    message = str(caught.value)
    for line in found:
        assert f"第 {line} 行 " in message
    assert "--skip-invalid" in message


def test_skip_invalid_keeps_valid_rows_and_reports_the_skipped_ones(tokenizer):
    result = data.check_lengths(validation.load_records(BROKEN, skip_invalid=True), tokenizer, max_length=128)
    assert {p.row: (p.field, p.severity) for p in result.report.problems} == BROKEN_PROBLEMS
    errors = sorted(line for line, (_, severity) in BROKEN_PROBLEMS.items() if severity == "error")
    assert result.report.skipped == errors
    assert result.rows == BROKEN_VALID_LINES
    assert result.report.rows_read == len(errors) + len(BROKEN_VALID_LINES)
    assert f"跳过 {len(errors)} 条无效数据（第 {'、'.join(map(str, errors))} 行）" in result.report.summary()
    # the over-long row is loaded with a warning, and encode_records drops and counts it
    samples, report = data.encode_records(result.records, tokenizer, max_length=128)
    assert [result.rows[i] for i, _ in report.too_long] == [7] and len(samples) == 3


def test_a_json_array_with_a_syntax_error_is_refused_whole(tmp_path, huanhuan_path):
    text = huanhuan_path.read_text(encoding="utf-8")
    cut = text.index('"output"', len(text) // 2)
    bad = tmp_path / "bad.json"
    bad.write_text(text[:cut] + text[cut + 1:], encoding="utf-8")  # drop one quote
    line = text[:cut].count("\n") + 1
    for skip in (False, True):
        with pytest.raises(validation.DataValidationError, match=f"JSON 格式错误（第 {line} 行"):
            validation.load_records(bad, skip_invalid=skip)


@pytest.mark.parametrize("line, words", [
    ('{"instruction": "今日可好？", "input": "", "output": "尚好" ', "缺逗号或右括号"),
    ('{"instruction": "你是谁", "input": "", "output": "我是甄嬛。}', "缺右边的英文双引号"),
    ("{'instruction': '你是谁', 'output': '甄嬛'}", "英文双引号"),
    ('{"instruction": "你是谁", "output": "甄嬛",}', "多了逗号"),
])
def test_a_broken_json_line_is_explained_in_chinese(tmp_path, line, words):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"instruction": "你是谁？", "input": "", "output": "我是甄嬛。"}\n' + line + "\n", encoding="utf-8")
    problem = next(p for p in validation.load_records(path, skip_invalid=True).report.errors if p.row == 2)
    assert words in problem.reason and not re.search(r"[A-Za-z]{4,}", problem.reason.replace("JSON", "")), problem


def test_json_array_rows_are_numbered_from_one(tmp_path):
    rows = [{"instruction": "问", "input": "", "output": "答"}, {"instruction": "问", "output": ""}, "x"]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    report = validation.load_records(path, skip_invalid=True).report
    assert report.file_format == "json" and report.skipped == [2, 3]
    assert [(p.row, p.field) for p in report.errors] == [(2, "output"), (3, "(row)")]


@pytest.mark.parametrize("wrapped", [{"data": [{"instruction": "问", "input": "", "output": "答"}] * 3},
                                     {"instruction": "问", "input": "", "output": "答"}])
def test_a_pretty_printed_json_object_is_one_error_not_one_per_line(tmp_path, wrapped):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps(wrapped, ensure_ascii=False, indent=2), encoding="utf-8")
    with pytest.raises(validation.DataValidationError) as refused:
        validation.load_records(path, skip_invalid=True)
    report = refused.value.report
    assert report.file_format == "json" and [(p.row, p.field) for p in report.errors] == [(None, "(json)")]
    assert ("'data' 是 3 项的数组" in report.errors[0].reason) == ("data" in wrapped)
    one_line = tmp_path / "one.jsonl"            # one record on one line is still JSONL with one row
    one_line.write_text(json.dumps({"instruction": "问", "input": "", "output": "答"}, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    assert len(validation.load_records(one_line).records) == 1


@pytest.mark.parametrize("name, unit", [("empty.json", "条"), ("empty.jsonl", "行")])
def test_an_empty_file_says_it_holds_no_record(tmp_path, name, unit):
    path = tmp_path / name
    path.write_text(" \n", encoding="utf-8")
    with pytest.raises(validation.DataValidationError) as refused:
        validation.load_records(path)
    report = refused.value.report
    assert report.file_format == name.split(".")[1] and report.unit == unit
    assert [(p.row, p.field) for p in report.errors] == [(None, "(file)")]


def test_records_wrapped_in_an_object_on_one_line_are_named_as_such(tmp_path):
    """`{"data": [...]}` saved on one line: the same one error as the pretty-printed form (it was read as a JSONL row
    missing instruction and output); a one-line chat-format row keeps its own message."""
    rows = [{"instruction": "问", "input": "", "output": "答"}] * 2
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": rows}, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(validation.DataValidationError) as refused:
        validation.load_records(path, skip_invalid=True)
    [problem] = refused.value.report.errors
    assert problem.row is None and "'data' 是 2 项的数组" in problem.reason
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "问"}]}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    with pytest.raises(validation.DataValidationError) as refused:
        validation.load_records(chat, skip_invalid=True)
    assert [(p.row, p.field) for p in refused.value.report.errors] == [(1, "messages")]


def test_other_datasets_field_names_get_the_rename_as_their_fix(tmp_path):
    """prompt/response (and ShareGPT's conversations) are the commonest own-data shapes: each row's error says
    which field to rename, not only that instruction and output are missing."""
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in (
        {"prompt": "你是谁？", "response": "臣妾甄嬛。"},
        {"instruction": "你是谁？", "answer": "臣妾甄嬛。"},
        {"conversations": [{"from": "human", "value": "你是谁？"}]},
    )) + "\n", encoding="utf-8")
    with pytest.raises(validation.DataValidationError) as refused:
        validation.load_records(path)
    errors = [(p.row, p.field, p.reason) for p in refused.value.report.errors]
    assert [(row, name) for row, name, _ in errors] == [(1, "instruction"), (1, "output"), (2, "output"),
                                                        (3, "conversations")]
    assert "prompt" in errors[0][2] and "response" in errors[1][2] and "answer" in errors[2][2]


def test_training_says_what_the_data_check_warns_about(stamped_workspace, tokenizer, capsys, monkeypatch):
    """A multi-turn history field is ignored: training goes on, but never silently."""
    workspace, make = stamped_workspace
    rows = json.loads(data_files.SAMPLE_PATH.read_text(encoding="utf-8"))
    for row in rows[:3]:
        row["history"] = [["皇上", "臣妾在"]]
    mine = workspace / "with-history.json"
    mine.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    report = validation.load_records(mine).report
    assert [(p.row, p.field) for p in report.warnings] == [(1, "(row)"), (2, "(row)"), (3, "(row)")]
    data.training_data(make(f"data.source={mine}"), tokenizer)
    assert report.warnings_line(f"python -m helpers.data check {shell_path(mine)}") in capsys.readouterr().out
    # each kind once, however many rows: 3,000 duplicates are not filed under the ignored field
    mine.write_text(json.dumps(rows + [rows[5]] * 3000, ensure_ascii=False), encoding="utf-8")
    line = validation.load_records(mine).report.warnings_line("check")
    assert "\n" not in line and len(line) < 300
    assert re.search(r"history 等 3 个（第 1、2、3 条）", line) and re.search(r"等 3000 个（第 49、50、51 条，另有 2997 条）", line)
    said = []
    monkeypatch.setattr(validation.ValidationReport, "warnings_line", lambda report, _: said.append(report) or "")
    data.training_data(make(), tokenizer)    # the course's sample: nothing to warn about
    assert said == []


@pytest.mark.parametrize("between", ["\n", ",\n"])
def test_pretty_printed_records_without_brackets_are_one_error_that_names_the_brackets(tmp_path, huanhuan_path,
                                                                                     between):
    """Records written one after another with json.dumps(indent=2), no [ ] around them (the commonest hand-made
    file): one file-level error that says to add the brackets, not one per line; JSONL stays JSONL."""
    rows = json.loads(huanhuan_path.read_text(encoding="utf-8"))[:3]
    path = tmp_path / "pretty.json"
    path.write_text(between.join(json.dumps(r, ensure_ascii=False, indent=2) for r in rows), encoding="utf-8")
    with pytest.raises(validation.DataValidationError) as refused:
        validation.load_records(path, skip_invalid=True)
    [problem] = refused.value.report.errors
    assert problem.row is None and "3 个" in problem.reason and "[" in problem.reason and "]" in problem.reason
    path.write_text("[" + ",\n".join(json.dumps(r, ensure_ascii=False, indent=2) for r in rows) + "]",
                    encoding="utf-8")   # the fix the message gives
    assert [r["output"] for r in validation.load_records(path).records] == [r["output"] for r in rows]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert len(validation.load_records(jsonl).records) == 3


def test_a_byte_order_mark_inside_a_jsonl_file_is_explained_in_chinese(tmp_path):
    """Two Windows files put together: the second one's BOM lands at the start of a line."""
    row = '{"instruction": "你是谁？", "input": "", "output": "我是甄嬛。"}'
    path = tmp_path / "joined.jsonl"
    path.write_bytes(("\ufeff" + row + "\n\ufeff" + row.replace("谁", "何人") + "\n").encode("utf-8"))
    [problem] = validation.load_records(path, skip_invalid=True).report.errors
    assert problem.row == 2 and "BOM" in problem.reason and "utf-8-sig" not in problem.reason


def test_split_messages_name_only_what_the_split_command_accepts(tmp_path):
    """`data split` has no --skip-invalid and no --eval-fraction 0: its messages do not suggest them."""
    two = tmp_path / "two.json"
    two.write_text(json.dumps([{"instruction": f"问{i}", "input": "", "output": f"答{i}"} for i in range(2)],
                              ensure_ascii=False), encoding="utf-8")
    done = run_cli("data", ["split", str(two), str(tmp_path / "out")], env={"PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert done.code == 2 and "--eval-fraction" in done.stderr and "设为 0" not in done.stderr, done.stderr
    with pytest.raises(data_files.SplitSizeError, match="设为 0 不要留出集"):   # the config's setting may be 0
        data_files.grouped_split(validation.load_records(two).records, 0.05)
    done = run_cli("data", ["split", str(BROKEN), str(tmp_path / "out2")], env={"PATH": os.environ["PATH"]},
                   cwd=tmp_path)
    assert done.code == 2 and "helpers.data check" in done.stderr and "--skip-invalid" not in done.stderr, done.stderr


def test_sample_file_is_clean_and_short(tokenizer):
    result = data.check_lengths(validation.load_records(data_files.SAMPLE_PATH), tokenizer)
    assert len(result.records) == 48 and not result.report.problems
    memorise = result.records[:8]
    assert len({r["instruction"] for r in memorise}) == 8
    assert all(10 <= len(r["output"]) <= 30 for r in memorise)
    assert max(result.lengths) < DEFAULT_MAX_LENGTH


# --------------------------------------------------------------------------- encoded files and CLI


def test_encoded_file_round_trip_and_errors(tmp_path, tokenizer):
    records = validation.load_records(data_files.SAMPLE_PATH).records
    samples, _ = data.encode_records(records, tokenizer)
    stamp = {"max_length": DEFAULT_MAX_LENGTH, "system_prompt": DEFAULT_SYSTEM_PROMPT}
    path = data_files.save_encoded(samples, tmp_path / "train.jsonl", stamp)
    assert data_files.read_stamp(path) == stamp
    loaded = data_files.load_encoded(path)
    assert loaded == samples  # with each sample's row number
    dataset = data_files.to_dataset(loaded)
    assert dataset.column_names == list(data_files.ENCODED_KEYS) and dataset[5]["labels"] == samples[5]["labels"]
    assert data_files.stamp_differences(data_files.read_stamp(path), stamp) == []
    [difference] = data_files.stamp_differences(data_files.read_stamp(path), {**stamp, "max_length": 512})
    assert re.fullmatch(r"max_length\D+1024\D+512\D*", difference)
    with pytest.raises(data_files.EncodedFileError, match=r"missing\.jsonl"):
        data_files.load_encoded(tmp_path / "missing.jsonl")
    path.write_text('{"input_ids": [1, 2], "attention_mask": [1], "labels": [1, 2]}\n', encoding="utf-8")
    with pytest.raises(data_files.EncodedFileError, match=r"train\.jsonl 第 1 行"):
        data_files.load_encoded(path)
    assert "旧版本" in data_files.stamp_differences(data_files.read_stamp(path), stamp)[0]


def test_encoded_path_is_per_profile_and_in_the_workspace(tmp_path):
    assert tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(tmp_path)).paths.encoded == \
        tmp_path.resolve() / "data" / "train-tiny.jsonl"
    full = tiny_spec_for(config="configs/train/qwen3-8b.yaml", QWEN3_TUTORIAL_WORKSPACE=str(tmp_path))
    assert full.paths.encoded == tmp_path.resolve() / "data" / "train-full.jsonl"


# --------------------------------------------------------------------------- the stamp: reuse or re-encode


@pytest.fixture
def stamped_workspace(tmp_path, tiny_model_dir):
    """An empty workspace holding only a link to the tiny model, and a spec maker for it."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir, target_is_directory=True)

    def spec(*overrides, **env):
        return tiny_spec_for(config="configs/train/tiny.yaml", overrides=overrides,
                             QWEN3_TUTORIAL_WORKSPACE=str(tmp_path), **env)

    return tmp_path, spec


def _train_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[1:]]


def test_training_data_reuses_the_encoded_file_only_when_its_stamp_matches(stamped_workspace, tokenizer):

    workspace, make = stamped_workspace
    spec = make()
    encoded = spec.paths.encoded
    assert not encoded.exists()
    samples, held_out = data.training_data(spec, tokenizer)
    stamp = data_files.read_stamp(encoded)
    assert stamp["max_length"] == 1024 and stamp["system_prompt"] == DEFAULT_SYSTEM_PROMPT
    assert stamp["source_sha256"] == data_files.sha256_file(data_files.SAMPLE_PATH)
    assert stamp["tokenizer_sha256"] == data_files.tokenizer_sha256(spec.paths.model_dir)
    assert _train_rows(encoded) == samples and len(samples) == 8 and held_out

    # the same spec: the file is read back, not made again (a marked sample proves it)
    rows = _train_rows(encoded)
    rows[0]["labels"][-2] = 7
    encoded.write_text("\n".join(json.dumps(r) for r in [{"__stamp__": stamp}, *rows]) + "\n", encoding="utf-8")
    again, _ = data.training_data(spec, tokenizer)
    assert again[0]["labels"][-2] == 7 and again[1:] == samples[1:]

    # damaged after it was written (cut short by hand, a broken copy): encoded again, never a dead end
    encoded.write_text(encoded.read_text(encoding="utf-8")[:-40], encoding="utf-8")
    again, _ = data.training_data(spec, tokenizer)
    assert again == samples and _train_rows(encoded) == samples


@pytest.mark.parametrize(("change", "reason"), [
    ("max_length", r"max_length\D+1024\D+47\D"),
    ("system_prompt", r"system_prompt\W.*'现在你要扮演皇帝身边的女人--甄嬛'.*'你是甄嬛'"),
    ("source", r"source_sha256\W.*'[0-9a-f]{64}'.*'[0-9a-f]{64}'"),
])
def test_training_data_re_encodes_and_says_why(stamped_workspace, tokenizer, capsys, change, reason):

    workspace, make = stamped_workspace
    first, _ = data.training_data(make(), tokenizer)
    capsys.readouterr()
    if change == "max_length":
        # the 8 rows have 42-50 tokens: 3 are dropped (and every held-out row, so none is held out)
        spec = make("data.max_length=47", "data.eval_fraction=0")
    elif change == "system_prompt":
        spec = make("data.system_prompt=你是甄嬛")
    else:
        rows = json.loads(data_files.SAMPLE_PATH.read_text(encoding="utf-8"))
        rows[0]["output"] = "臣妾做不到啊。"
        changed = workspace / "my-data.json"
        changed.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        spec = make(QWEN3_TUTORIAL_DATASET=str(changed))
    samples, _ = data.training_data(spec, tokenizer)
    assert re.search(reason, capsys.readouterr().out)      # the stamp field that differs, and both values
    assert len(samples) == (5 if change == "max_length" else 8)
    stamp = data_files.read_stamp(spec.paths.encoded)
    records = validation.load_records(data_files.course_dataset_path(spec)).records[:8]
    expected, _ = data.encode_records(records, tokenizer, spec.data.system_prompt, spec.data.max_length)
    assert _train_rows(spec.paths.encoded) == samples == expected != first
    if change == "max_length":
        assert stamp["max_length"] == 47 and [s["row"] for s in samples] == [0, 1, 3, 6, 7]
    elif change == "system_prompt":
        assert stamp["system_prompt"] == "你是甄嬛"
        assert tokenizer.decode(samples[0]["input_ids"]).startswith("<|im_start|>system\n你是甄嬛<|im_end|>")
    else:
        assert stamp["source_sha256"] == data_files.sha256_file(changed)
        trained = [t for t in samples[0]["labels"] if t != data.IGNORE_INDEX]
        assert tokenizer.decode(trained) == "臣妾做不到啊。<|im_end|>"


def test_training_data_refuses_when_every_row_is_too_long(stamped_workspace, tokenizer):

    _, make = stamped_workspace
    with pytest.raises(data_files.EncodedFileError, match=r"\b8\b.*data\.max_length=10\b"):
        data.training_data(make("data.max_length=10"), tokenizer, verbose=False)


def _cli(*args, env=None):
    """``python -m helpers.data *args`` (in this process) from the repository root."""
    return run_cli("data", args, env={**os.environ, "QWEN3_TUTORIAL_PROFILE": "tiny", **(env or {})}, cwd=REPO_ROOT)


def test_a_file_of_chat_records_is_one_bounded_error_line_and_check_lists_every_row(tmp_path):
    rows = 300   # a messages-format file: every row is refused with the same problem
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(rows)]),
                    encoding="utf-8")
    with pytest.raises(validation.DataValidationError) as caught:
        validation.load_records(chat)
    assert len(caught.value.report.errors) == rows          # the exception keeps every problem
    message = str(caught.value)                              # its message names the one kind once, with the count
    assert message.count(caught.value.report.errors[0].reason) == 1 and f"等 {rows} 个" in message
    done = _cli("check", chat, env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "ws")})
    assert done.code == 2 and len(done.stderr.splitlines()) == 2       # the error and the --debug hint
    assert len(done.stderr.replace(str(chat), "F")) < 400             # not one piece per row
    assert caught.value.report.errors[0].reason not in done.stderr     # check's verdict does not repeat its report
    assert sum(line.startswith("  错误") for line in done.stdout.splitlines()) == rows  # check lists them all


def test_cli_check_names_every_bad_row_and_fails(tmp_path):
    # an empty workspace: no model directory yet, so the CLI falls back to the offline tokenizer
    done = _cli("check", BROKEN, "--max-length", "128", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path)})
    assert done.code == 1, done.stderr
    assert not any(tmp_path.iterdir()), "a check writes nothing into the workspace"
    printed = done.stdout.splitlines()
    for line, (field_name, severity) in BROKEN_PROBLEMS.items():   # each problem on a line: severity, row, field
        label = "错误" if severity == "error" else "警告"
        assert any(label in text and f"第 {line} 行" in text and field_name in text for text in printed), (line, field_name)
    assert "超过 max_length 128 的条数：1" in done.stdout


def test_cli_check_passes_a_clean_file_and_prints_statistics(capsys):
    assert data.main(["check", str(data_files.SAMPLE_PATH)]) == 0
    out = capsys.readouterr().out
    assert "读到 48 条，有效 48 条；错误 0 个，警告 0 个" in out
    for word in ("p50", "p90", "p99", "最长", "超过 max_length 1024 的条数：0", "推荐：无填充打包"):
        assert word in out


def test_cli_check_skip_invalid_exits_zero(capsys):
    assert data.main(["check", str(BROKEN), "--skip-invalid"]) == 0
    assert "跳过 8 条无效数据" in capsys.readouterr().out
    assert data.main(["check", str(BROKEN)]) == 1


def test_cli_encode_equals_encode_records(tmp_path, huanhuan_path, real):
    out = tmp_path / "encoded.jsonl"
    done = _cli("encode", huanhuan_path, out)
    assert done.code == 0, done.stderr
    assert data_files.read_stamp(out) == data_files.encoding_stamp(
        models.offline_tokenizer_dir(), DEFAULT_MAX_LENGTH, DEFAULT_SYSTEM_PROMPT, huanhuan_path)
    assert data_files.load_encoded(out) == real[1]


def test_cli_encode_never_overwrites_a_learners_file(tmp_path, capsys):
    mine = tmp_path / "重要.jsonl"
    mine.write_text("我的重要文件\n", encoding="utf-8")
    assert data.main(["encode", str(data_files.SAMPLE_PATH), str(mine)]) == 2
    assert mine.read_text(encoding="utf-8") == "我的重要文件\n" and "重要.jsonl" in capsys.readouterr().err
    out = tmp_path / "train.jsonl"            # the course's own encoded file is replaced by a new encoding
    assert data.main(["encode", str(data_files.SAMPLE_PATH), str(out)]) == 0
    assert data.main(["encode", str(data_files.SAMPLE_PATH), str(out), "--max-length", "512"]) == 0
    assert data_files.read_stamp(out)["max_length"] == 512
    made = record_made(tmp_path / "huanhuan.json")       # a file the course made that is no encoded file (a download)
    made.write_text("[]", encoding="utf-8")
    assert data.main(["encode", str(data_files.SAMPLE_PATH), str(made)]) == 2 and made.read_text(encoding="utf-8") == "[]"


def test_cli_encode_refuses_a_broken_file(tmp_path, capsys):
    assert data.main(["encode", str(BROKEN), str(tmp_path / "x.jsonl")]) == 2  # a known error: one message
    assert "第 12 行" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


# --------------------------------------------------------------------------- download


@pytest.fixture
def serve(tmp_path):
    """Serve a folder on 127.0.0.1 (a free port) for one test; stopped afterwards."""
    servers = []

    def start(folder):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_verifies_and_caches(serve, huanhuan_path, tmp_path):
    url = serve(huanhuan_path.parent) + "/" + huanhuan_path.name
    dest = tmp_path / "ws" / "huanhuan.json"
    assert data_files.download_huanhuan(dest, url, progress=False) == dest
    assert data_files.sha256_file(dest) == data_files.HUANHUAN_SHA256
    assert not dest.with_name("huanhuan.json.partial").exists()
    # cached and verified: reused without touching the network (this URL cannot answer)
    assert data_files.download_huanhuan(dest, "http://127.0.0.1:9/none", progress=False) == dest


def test_download_refuses_a_corrupted_file(serve, huanhuan_path, tmp_path):
    corrupt = tmp_path / "srv" / "huanhuan.json"
    corrupt.parent.mkdir()
    raw = bytearray(huanhuan_path.read_bytes())
    raw[1000] ^= 1
    corrupt.write_bytes(bytes(raw))
    dest = tmp_path / "ws" / "huanhuan.json"
    with pytest.raises(data_files.DatasetDownloadError, match=data_files.sha256_file(corrupt)) as caught:
        data_files.download_huanhuan(dest, serve(corrupt.parent) + "/huanhuan.json", progress=False)
    assert data_files.HUANHUAN_PINNED_URL in str(caught.value)
    assert not dest.exists() and not dest.with_name("huanhuan.json.partial").exists()


def test_download_fails_clearly_when_the_server_is_unreachable(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "huanhuan.json"
    with pytest.raises(data_files.DatasetDownloadError, match="联网") as caught:
        data_files.download_huanhuan(dest, f"http://127.0.0.1:{port}/huanhuan.json", timeout=5, progress=False)
    assert "huanhuan.json" in str(caught.value) and data_files.HUANHUAN_SHA256 in str(caught.value)
    assert not dest.exists()


def test_course_dataset_path_per_profile(tmp_path, huanhuan_path):
    assert data_files.course_dataset_path(tiny_spec_for()) == data_files.SAMPLE_PATH
    (tmp_path / "data").mkdir()
    shutil.copyfile(huanhuan_path, tmp_path / "data" / "huanhuan.json")  # a verified cache: no network
    full = tiny_spec_for(config="configs/train/qwen3-8b.yaml", QWEN3_TUTORIAL_WORKSPACE=str(tmp_path))
    assert data_files.course_dataset_path(full) == tmp_path.resolve() / "data" / "huanhuan.json"


def test_a_local_dataset_copy_is_used_and_a_missing_one_named(tmp_path, huanhuan_path):
    full = tiny_spec_for(config="configs/train/qwen3-8b.yaml", QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"),
                         QWEN3_TUTORIAL_DATASET=str(huanhuan_path))
    assert data_files.course_dataset_path(full) == huanhuan_path.resolve()
    missing = tiny_spec_for(config="configs/train/qwen3-8b.yaml", QWEN3_TUTORIAL_DATASET=str(tmp_path / "no.json"))
    with pytest.raises(data_files.DatasetDownloadError, match=r"no\.json.*环境变量 QWEN3_TUTORIAL_DATASET"):
        data_files.course_dataset_path(missing)
    assert not (tmp_path / "ws").exists(), "nothing was downloaded"


# --------------------------------------------------------------------------- padding and the original


@pytest.fixture(scope="module")
def original_samples(real, tokenizer):
    return [tutorial.original_process_func(r, tokenizer) for r in real[0]]


def test_original_padding_reproduces_the_published_numbers(original_samples):
    """The shared README: 269,343 real tokens; random batches of 4 compute 379,557 (29.0% padding).

    379,557 is the epoch order of Python's ``random.Random(0)``; the exact average over
    all orders is within 0.5% of it, so the seed is representative, not picked.
    """
    lengths = [len(s["input_ids"]) for s in original_samples]
    rows = {r.strategy: r for r in padding.padding_table(lengths, batch_size=4, seed=0)}
    assert rows["random"].real == sum(lengths) == 269_343
    assert rows["random"].computed == 379_557
    assert f"{rows['random'].padding_share:.1%}" == "29.0%"
    assert abs(expected_padded_tokens(lengths) / 379_557 - 1) < 0.005
    assert rows["packing"].computed == rows["packing"].real and rows["packing"].padding == 0
    assert rows["group_by_length"].computed < rows["random"].computed


def test_padding_strategies_match_transformers(real):
    import torch
    from transformers import DataCollatorWithFlattening

    samples = real[1]
    lengths = [len(s["input_ids"]) for s in samples]
    order = padding.length_grouped_order(lengths, group_size=16, seed=0)
    assert sorted(order) == list(range(len(lengths)))
    rows = {r.strategy: r for r in padding.padding_table(lengths, gradient_accumulation_steps=4)}
    assert rows["group_by_length"].padding < rows["random"].padding / 10
    assert rows["random"].padding_share > 0.25
    # packing: the collator flattens a batch into one row of exactly its real tokens
    collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    batch = collator([{k: samples[i][k] for k in ("input_ids", "labels")} for i in range(4)])
    total = sum(lengths[:4])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, total)
    assert torch.equal(batch["position_ids"][0, :lengths[0]], torch.arange(lengths[0]))


def test_original_differs_from_ours_only_by_its_pitfalls(real, original_samples, tokenizer):
    """Pitfalls 1-3: the f-string equals the template except a literal <s> and the wrong end token."""
    records, samples, *_ = real
    junk = tokenizer("<s>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(junk) == ["<s", ">"]  # Qwen has no <s> token
    pad_id, end_id = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids(data.END_TOKEN)
    assert tokenizer.pad_token == "<|endoftext|>" and pad_id != end_id
    for ours, theirs in zip(samples, original_samples, strict=True):
        assert theirs["input_ids"][:2] == junk
        assert theirs["input_ids"][2:-1] == ours["input_ids"][:-1]
        assert theirs["labels"][-1] == pad_id and ours["labels"][-1] == end_id
    differences = tutorial.token_differences(
        tokenizer, tutorial.original_prompt_text(records[0]) + records[0]["output"] + "<|endoftext|>",
        data.render_conversation(tokenizer, records[0]))
    assert [(a, b) for _, a, b in differences] == [("<s>", ""), ("<|endoftext|>", "<|im_end|>\n")]
    ends = tutorial.tokenize_batch(tokenizer, [tutorial.original_prompt_text(records[0]) + records[0]["output"]])[0]
    assert [position for position, _, _ in differences] == [1, len(ends) + 1]   # counted from 1: <s> is the first


def test_original_inference_sends_the_role_as_a_user_turn(tokenizer):
    theirs = data.render_prompt(tokenizer, tutorial.original_inference_messages("你是谁？"))
    ours = data.render_prompt(tokenizer, data.build_messages("你是谁？"))
    assert "<|im_start|>system" not in theirs and theirs.count("<|im_start|>user") == 2
    assert ours.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>")


def test_trained_tokens_view_marks_the_answer(tokenizer):
    record = validation.load_records(data_files.SAMPLE_PATH).records[0]
    sample = data.encode_records([record], tokenizer)[0][0]
    view = data.trained_tokens_view(sample, tokenizer)
    untrained, trained = view.split("\n参与训练")
    assert untrained.startswith("不参与训练（label = -100）")
    assert record["instruction"] in untrained.replace(data.TOKEN_SEPARATOR, "")
    assert trained.rstrip().endswith(data.TOKEN_SEPARATOR + "<|im_end|>")
    assert trained.split("：\n  ", 1)[1].replace(data.TOKEN_SEPARATOR, "") == record["output"] + "<|im_end|>"


def test_notebook_03_states_the_real_padding_numbers(real, original_samples):
    """Notebook 03 quotes the real-data padding table in its prose; it must match the computation."""
    nb = json.loads((REPO_ROOT / "notebooks" / "03-data.ipynb").read_text(encoding="utf-8"))
    prose = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    tables = [padding.padding_table([len(s["input_ids"]) for s in samples], batch_size=4, seed=0)
              for samples in (original_samples, real[1])]
    for theirs, ours in zip(*tables, strict=True):
        assert (f"| {theirs.computed:,} | {theirs.padding_share:.1%} | "
                f"{ours.computed:,} | {ours.padding_share:.1%} |") in prose
    full_recipe = padding.padding_table([len(s["input_ids"]) for s in real[1]], gradient_accumulation_steps=4)
    assert f"填充占比是 {full_recipe[1].padding_share:.1%}" in prose


def test_rows_dropped_for_length_are_named_by_their_row_in_the_file(tokenizer, tiny_model_dir, tmp_path, capsys):
    """Training on a learner's file: the too-long rows, on the training side and on the held-out side, are
    reported by their row in the file (what `python -m helpers.data check` shows), not by list position."""
    import re

    from tests.conftest import tiny_spec_for

    records = json.loads((REPO_ROOT / "data" / "huanhuan_sample.json").read_text(encoding="utf-8"))
    long_rows = {31, 37, 40, 41, 44, 47}                  # 1-based rows of the file, past the start
    for row in long_rows:
        records[row - 1] = {**records[row - 1], "output": "臣妾" * 200}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "ws" / "models").mkdir(parents=True)
    (tmp_path / "ws" / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir, target_is_directory=True)
    spec = tiny_spec_for(tmp_path / "run", overrides=[f"data.source={path}", "data.max_rows=null",
                                                     "data.max_length=300"],
                         QWEN3_TUTORIAL_WORKSPACE=str(tmp_path / "ws"))
    train_samples, eval_samples = data.training_data(spec, tokenizer)
    out = capsys.readouterr().out
    named = [int(n) for line in out.splitlines() if "丢弃了" in line
             for n in re.search(r"第 ([\d、]+) 条", line).group(1).split("、")]
    assert sorted(named) == sorted(long_rows)
    assert len(train_samples) + len(eval_samples) == len(records) - len(long_rows)


def test_a_dataset_setting_that_points_nowhere_says_how_to_drop_it(tmp_path):
    from helpers.settings import DATASET_ENV
    from helpers.spec import build_spec

    for where, words in ((tmp_path / "nothere.json", "不存在"), (tmp_path, "是文件夹")):
        spec = build_spec(profile="tiny", env={DATASET_ENV: str(where)}, settings_file=None, cuda=False)
        with pytest.raises(data_files.DatasetDownloadError, match=rf"{words}.*unset {DATASET_ENV}.*--dataset"):
            data_files.require_given_dataset(spec)


def test_check_ends_with_its_verdict_on_invalid_rows(capsys):
    assert data.main(["check", str(BROKEN)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "--skip-invalid" in err[-1] and "第 2" in err[-1]
    assert data.main(["check", str(BROKEN), "--skip-invalid"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("out", [".", ".."])
def test_a_split_into_the_working_folder_or_above_is_refused_and_writes_nothing(tmp_path, out):
    """`data split FILE .` used to crash (a folder with an empty name) after marking the folder; an output folder is
    replaced whole, so the working folder (or one above it) is refused with a sub-folder to use instead."""
    from pathlib import Path

    from helpers.export import check_export_target
    from helpers.workspace import UnsafeWriteError
    from tests.cli_runner import run_cli

    here = tmp_path / "learner" / "here"
    here.mkdir(parents=True)
    done = run_cli("data", ["split", REPO_ROOT / "data" / "huanhuan_sample.json", out], env={"PATH": os.environ["PATH"]},
                   cwd=here)
    assert done.code == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and "out" in done.stderr.splitlines()[0]
    assert not any(tmp_path.rglob("*.*")), "nothing written (no marker, no split files)"
    cwd = os.getcwd()
    os.chdir(here)
    try:
        with pytest.raises(UnsafeWriteError):   # inference export --target . : checked before the merge
            check_export_target(Path(out), [])
    finally:
        os.chdir(cwd)
    assert here.is_dir()


def test_a_split_saved_by_another_max_rows_is_made_again(tmp_path):
    """Every run shares <workspace>/data/split-<profile>: after an experiment on all rows (data.max_rows=null), the
    tiny run's evaluation must not read that split, which holds some of its 8 training rows out."""
    spec = tiny_spec_for(QWEN3_TUTORIAL_WORKSPACE=str(tmp_path))
    everything = tiny_spec_for(overrides=["data.max_rows=null"], QWEN3_TUTORIAL_WORKSPACE=str(tmp_path))
    assert everything.paths.split_dir == spec.paths.split_dir
    records = validation.load_records(data_files.course_dataset_path(spec, progress=False)).records
    train, _ = data_files.load_split(everything, say=lambda _: None)
    assert len(train) > spec.data.max_rows
    said = []
    train, held = data_files.load_split(spec, say=said.append)
    assert train == records[: spec.data.max_rows] and said           # made again, and said so
    assert not any(record in held for record in train)
    assert data_files.load_split(spec, say=said.append) == (train, held) and len(said) == 1   # then reused
    for name, damage in (("split.json", b"garbage{"), ("split.json", b"[1, 2]"), ("split.json", b"\xff\xfe{"),
                         ("train.json", b"x"), ("eval.json", b'{"a": 1}')):
        (spec.paths.split_dir / name).write_bytes(damage)     # edited by hand, or cut short: made again
        assert data_files.load_split(spec, say=said.append) == (train, held)
    assert len(said) == 6


@pytest.mark.parametrize("sep", [",", "\t"])
def test_a_csv_or_tsv_table_is_one_error_whose_conversion_works(tmp_path, huanhuan_path, sep):
    """A spreadsheet's export (first line: the column names) is no JSON: one file-level error, not one per line,
    and the pandas conversion it gives reads back as the same records."""
    import pandas

    rows = json.loads(huanhuan_path.read_text(encoding="utf-8"))[:5]
    table = tmp_path / "rows.csv"
    pandas.DataFrame(rows).to_csv(table, sep=sep, index=False)
    with pytest.raises(validation.DataValidationError) as refused:
        validation.load_records(table, skip_invalid=True)
    [problem] = refused.value.report.errors
    assert problem.row is None and "pandas.read_csv" in problem.reason
    converted = tmp_path / "rows.json"
    pandas.read_csv(table, keep_default_na=False, sep=sep).to_json(converted, orient="records", force_ascii=False)
    assert validation.load_records(converted).records == rows
