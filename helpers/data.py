"""Notebook 03: turn instruction/input/output records into training samples.

The encoding is the tokenizer's own chat template, rendered as at inference (``enable_thinking=False``):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n   <- prompt, label -100
    {output}<|im_end|>                                    <- answer + end token, trained

The template puts a ``\\n`` after ``<|im_end|>``; we stop at ``<|im_end|>`` because
generation stops there (it is the eos token), so the ``\\n`` is never generated.
User text is always tokenized as text: a literal ``<|im_end|>`` never becomes a control token.
The command line: ``python -m helpers.data check|encode|split`` (see ``main``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import data_files, validation
from .errors import ArgumentParser, CourseError, fraction, positive_int, run_cli
from .hardware import is_main_process
from .models import course_tokenizer
from .padding import RECOMMENDED_BATCHING, format_padding_table, length_stats, padding_table
from .spec import DEFAULT_MAX_LENGTH, DEFAULT_SYSTEM_PROMPT
from .validation import list_numbers
from .workspace import UnsafeWriteError, display_path, record_made, refuse_same_file, shell_path, typed_paths

IGNORE_INDEX = -100
END_TOKEN = "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# --------------------------------------------------------------------------- encoding


def build_messages(instruction: str, input: str = "", system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """The chat messages for one record (the same at training and inference time)."""
    user = f"{instruction}\n{input}" if input else instruction
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user})
    return messages


def render_prompt(tokenizer, messages: list[dict], enable_thinking: bool = False) -> str:
    """The generation prompt for ``messages``; thinking off by default (the empty think block training uses)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )


def render_conversation(tokenizer, record: dict, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The whole conversation of one record (answer included) as the template renders it.

    It ends with ``<|im_end|>\\n``: the template's separator before a next turn.
    """
    messages = build_messages(record["instruction"], record.get("input", ""), system_prompt)
    messages.append({"role": "assistant", "content": record["output"]})
    return tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False)


#: stands in for a message's content where the template's own text around it is needed
_SENTINEL = "\x00MESSAGE\x00"


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

    ``encode_batch_fast`` skips the character offsets we do not need: the same ids as
    ``tokenizer(texts)`` (tested), about twice as fast.
    """
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def _splits_cleanly(text: str) -> bool:
    """True when ``text`` can be tokenized apart from the template around it.

    Qwen's pre-tokenizer never merges a newline with a following non-space
    character, and special tokens always split, so a piece that does not start
    with whitespace tokenizes the same alone as inside the full conversation.
    """
    return bool(text) and not text[0].isspace()


def user_text(record: dict) -> str:
    """The user turn of a record: its instruction, and its input (if any) on the next line."""
    return f"{record['instruction']}\n{record['input']}" if record.get("input") else record["instruction"]


def _encode_pieces(records: list[dict], tokenizer, system_prompt: str | None) -> tuple[list, list]:
    """Prompt ids and answer ids (``<|im_end|>`` appended) of every record, batched."""
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    head, tail = prompt_frame(tokenizer, system_prompt)
    instructions = [user_text(r) for r in records]
    # One batched call for every distinct variable piece (real data repeats some questions and
    # answers); the fixed head/tail are tokenized once.
    texts = instructions + [r["output"] for r in records]
    distinct = list(dict.fromkeys(texts))
    ids_of = dict(zip(distinct, tokenize_batch(tokenizer, distinct), strict=True))
    pieces = [ids_of[text] for text in texts]
    head_ids, tail_ids = tokenize_batch(tokenizer, [head, tail])
    prompt_ids, answer_ids = [], pieces[len(records):]
    for index, text in enumerate(instructions):
        if _splits_cleanly(text) and _splits_cleanly(records[index]["output"]):
            prompt_ids.append(head_ids + pieces[index] + tail_ids)
        else:  # leading whitespace could merge with the template's newline: tokenize whole
            prompt = head + text + tail
            full, prompt_only = tokenize_batch(tokenizer, [prompt + records[index]["output"], prompt])
            prompt_ids.append(prompt_only)  # exactly what the model is given at inference
            if full[:len(prompt_only)] == prompt_only:
                answer_ids[index] = full[len(prompt_only):]
            # else the answer would merge into the prompt's last token: keep it tokenized alone
        answer_ids[index] = answer_ids[index] + [end_id]
    return prompt_ids, answer_ids


def token_lengths(records: list[dict], tokenizer, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """Encoded length of every record (prompt + answer + ``<|im_end|>``), before any truncation."""
    prompts, answers = _encode_pieces(records, tokenizer, system_prompt)
    return [len(p) + len(a) for p, a in zip(prompts, answers, strict=True)]


@dataclass
class EncodeReport:
    """What encoding did: how many rows, and which were dropped as too long."""

    rows_in: int = 0
    rows_out: int = 0
    max_length: int = DEFAULT_MAX_LENGTH
    #: (row index, full length) of rows dropped because the answer would be cut off
    too_long: list[tuple[int, int]] = field(default_factory=list)

    def summary(self, rows: Sequence[int] | None = None, unit: str = "条") -> str:
        """One line; dropped rows are numbered from 1, or as ``rows`` (the file's row of each record) says."""
        text = f"编码了 {self.rows_in} 条中的 {self.rows_out} 条（max_length={self.max_length}）"
        if self.too_long:
            numbers = [rows[i] if rows is not None else i + 1 for i, _ in self.too_long]
            text += (
                f"；丢弃了 {len(self.too_long)} 条超过 max_length 的数据（截断会让回答丢掉 <|im_end|>）："
                f"{list_numbers(numbers, unit, 10)}（从 1 数起）"
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
    trained. Truncation policy: rows whose full length exceeds ``max_length``
    are DROPPED (never trained with a cut-off answer, never with a cut prompt
    the model would not see at inference) and listed in the report. ``row`` is
    the record's index in ``records``.
    """
    prompt_ids, answer_ids = _encode_pieces(records, tokenizer, system_prompt)
    report = EncodeReport(rows_in=len(records), max_length=max_length)
    samples = []
    for index, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids, strict=True)):
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


def _encode_or_refuse(records, tokenizer, system_prompt, max_length, setting: str, flag: str):
    """``encode_records``, refusing when no row is left: ``setting=max_length`` is named, ``flag`` is how to raise it."""
    samples, report = encode_records(records, tokenizer, system_prompt, max_length)
    if not samples:
        raise data_files.EncodedFileError(f"没有可用的数据：全部 {report.rows_in} 条都超过 "
                                          f"{setting}={max_length} 个 token。请调大 {flag}。")
    return samples, report


# --------------------------------------------------------------------------- showing samples


def _readable_pieces(ids: list[int], tokenizer) -> list[str]:
    """Decoded tokens; a character split over several byte tokens is shown once, joined."""
    pieces, pending = [], []
    for token_id in ids:
        pending.append(token_id)
        text = tokenizer.decode(pending)
        if "\ufffd" not in text or len(pending) >= 4:
            pieces.append(text.replace("\n", "\\n"))
            pending = []
    if pending:
        pieces.append(tokenizer.decode(pending).replace("\n", "\\n"))
    return pieces


#: Separates tokens in ``trained_tokens_view`` ("|" would be confused with the one in <|im_end|>).
TOKEN_SEPARATOR = "│"


def trained_tokens_view(sample: dict, tokenizer) -> str:
    """The sample in runs of untrained (label -100) and trained tokens, tokens split by ``│``."""
    lines, start = [], 0
    for trained, run in itertools.groupby(sample["labels"], key=lambda label: label != IGNORE_INDEX):
        end = start + len(list(run))
        kind = "参与训练（label = token id）" if trained else "不参与训练（label = -100）"
        pieces = _readable_pieces(sample["input_ids"][start:end], tokenizer)
        lines.append(f"{kind}，{end - start} 个 token：\n  " + TOKEN_SEPARATOR.join(pieces))
        start = end
    return "\n".join(lines)


# --------------------------------------------------------------------------- replies


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


# --------------------------------------------------------------------------- user text stays text


def prompt_ids_as_text(tokenizer, messages: list[dict], enable_thinking: bool = False) -> list[int]:
    """Token ids of the generation prompt, with every message's content tokenized as plain text.

    The chat template's own markers become control tokens; a literal ``<|im_end|>`` typed by a
    user stays the characters ``<``, ``|im``, ... (``split_special_tokens``), so user text can
    never close its turn or open a system turn.
    """
    # the template's text before each message's content, between them, and after the last one
    frames = render_prompt(tokenizer, [{**m, "content": _SENTINEL} for m in messages],
                           enable_thinking=enable_thinking).split(_SENTINEL)
    markers = [token.content for token in tokenizer.added_tokens_decoder.values()]
    ids: list[int] = []
    for frame, message in zip(frames, [*messages, {"content": ""}], strict=True):
        # the frame's text after its last marker ("user\n") goes with the content, as in the whole rendered prompt:
        # a newline there merges with newlines that start the content
        cut = max((frame.rfind(m) + len(m) for m in markers if m in frame), default=0) if message["content"] else None
        if frame[:cut]:
            ids += tokenizer(frame[:cut], add_special_tokens=False)["input_ids"]
        if message["content"]:
            ids += tokenizer(frame[cut:] + message["content"], add_special_tokens=False,
                             split_special_tokens=True)["input_ids"]
    return ids


# --------------------------------------------------------------------------- loading, checking, splitting, encoding


def check_lengths(result, tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT):
    """Measure every valid record's encoded length; warn (row kept) about rows ``encode_records`` will drop."""
    result.lengths = token_lengths(result.records, tokenizer, system_prompt) if result.records else []
    for row, length in zip(result.rows, result.lengths, strict=True):
        if length > max_length:
            result.report.add(row, "(tokens)", f"{length} 个 token > max_length {max_length}：编码时会丢弃这一条"
                              "（想保留就调大 max_length）", "warning")
    result.report.problems.sort(key=lambda p: (p.row or 0))
    return result


def statistics_text(result: validation.LoadResult, max_length: int) -> str:
    """Token-length statistics and the padding table of the valid rows (``helpers.data check``)."""
    lengths = result.lengths
    if not lengths:
        return "没有有效数据，无法统计"
    stats = length_stats(lengths)
    over = sum(1 for n in lengths if n > max_length)
    table = padding_table(lengths)
    by_name = {r.strategy: r for r in table}
    return "\n".join([
        f"{stats['rows']} 条有效数据的统计（每条样本的 token 数：系统提示 + 问题 + 回答 + <|im_end|>）：",
        f"  token 长度  平均 {stats['mean']:.1f}  p50 {stats['p50']}  p90 {stats['p90']}  "
        f"p99 {stats['p99']}  最长 {stats['max']}",
        f"  超过 max_length {max_length} 的条数：{over}（encode 会丢弃并报告它们）",
        "每个 epoch 的填充（每批 4 条）：",
        *("  " + line for line in format_padding_table(table).splitlines()),
        f"推荐：{by_name[RECOMMENDED_BATCHING].description}：填充 {by_name[RECOMMENDED_BATCHING].padding_share:.1%}，"
        f"随机批次是 {by_name['random'].padding_share:.1%}",
    ])


def training_data(spec, tokenizer, verbose: bool = True) -> tuple[list[dict], list[dict]]:
    """The encoded (train, held-out) samples of this spec, in one descent: load, check, split, encode, cache.

    The encoded training set is read from ``spec.paths.encoded`` only when its stamp
    (max_length, system prompt, tokenizer, source data, rows, split) equals this spec's;
    otherwise it is encoded again and saved, and the reason is printed.
    """
    source = data_files.course_dataset_path(spec, progress=verbose)
    stamp = data_files.spec_stamp(spec, source)
    loaded = validation.load_records(source, fix_hint=(
        f"请修正 {display_path(source)} 里的这些行，然后重新训练（`python -m helpers.data check "
        f"{shell_path(source)}` 会列出它们）。"))
    if verbose and is_main_process() and loaded.report.warnings:   # an ignored field (history) is never silent
        print(loaded.report.warnings_line(f"python -m helpers.data check {shell_path(source)}"))
    records = loaded.records
    train_records, eval_records, split = data_files.split_records(spec, records)
    if split is not None and is_main_process():  # one writer per launch
        data_files.save_split(split, spec.paths.split_dir, source=source)
    encoded = spec.paths.encoded
    samples = None
    if encoded.is_file():
        differences = data_files.stamp_differences(data_files.read_stamp(encoded), stamp)
        if not differences:
            try:
                samples = data_files.load_encoded(encoded)
            except data_files.EncodedFileError as err:    # damaged after it was written: made again from the data
                if verbose:
                    print(f"重新编码：{err}")
            else:
                if verbose:
                    print(f"使用已编码的训练集 {display_path(encoded)}（与本次配置一致）")
        elif verbose:
            print(f"重新编码：{display_path(encoded)} 与本次配置不同（{'；'.join(differences)}）")
    if samples is None:
        samples, report = _encode_or_refuse(train_records, tokenizer, spec.data.system_prompt, spec.data.max_length,
                                           "data.max_length", "data.max_length")
        if is_main_process():  # one writer per launch; the other ranks use what they encoded
            record_made(data_files.save_encoded(samples, encoded, stamp))
        if verbose and is_main_process():   # dropped rows named by their row in the data file
            print(report.summary(rows=[i + 1 for i in split.train_rows] if split is not None else None))
    eval_samples = []
    if eval_records:
        eval_samples, eval_report = encode_records(eval_records, tokenizer, spec.data.system_prompt,
                                                   spec.data.max_length)
        if verbose and is_main_process() and eval_report.too_long:
            print("留出集：" + eval_report.summary(rows=[i + 1 for i in split.eval_rows]))
        if not eval_samples:
            raise data_files.SplitSizeError(
                f"留出集的全部 {len(eval_records)} 条都超过 data.max_length={spec.data.max_length} 个 token，"
                "没有可以评估的数据：调大 data.max_length，或者设 data.eval_fraction=0。")
    if verbose and is_main_process() and split is not None:
        print(split.summary())
    return samples, eval_samples


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m helpers.data",
        description="检查、编码或切分 instruction/input/output 数据文件（JSON 数组或 JSONL）。")
    parser.add_argument("--debug", action="store_true", help="出错时显示完整的 traceback")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="打印校验报告和统计。退出码：0 全部有效（加 --skip-invalid：有有效的行）；"
                                "1 有无效行；2 整个文件读不出记录，或者一条有效数据也没有")
    check.add_argument("path", help="要检查的数据文件（JSON 数组或 JSONL）")
    encode = commands.add_parser("encode", help="每条数据写一个 JSON 对象：input_ids、attention_mask、labels")
    encode.add_argument("path", help="要编码的数据文件（JSON 数组或 JSONL）")
    encode.add_argument("out", help="输出的 .jsonl 文件（不能是输入文件）")
    encode.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT,
                        help="每条样本的系统提示（'' 表示不用）；默认：课程的系统提示")
    for command in (check, encode):
        command.add_argument("--max-length", type=positive_int, default=DEFAULT_MAX_LENGTH,
                             help=f"样本最长的 token 数；更长的数据 check 会指出、encode 会丢弃（默认 {DEFAULT_MAX_LENGTH}）")
        command.add_argument("--skip-invalid", action="store_true",
                             help="跳过无效行（会列出它们），而不是拒绝整个文件")
    split = commands.add_parser("split", help="切出不泄漏的留出集：OUT_DIR/train.json、eval.json")
    split.add_argument("path", help="要切分的数据文件（JSON 数组或 JSONL）")
    split.add_argument("out_dir", help="切分结果写到这个文件夹（空的或新的）")
    split.add_argument("--eval-fraction", type=fraction, default=0.05, help="留出的比例（默认 0.05）")
    split.add_argument("--seed", type=int, default=42, help="切分的随机种子（默认 42）")
    for command in (check, encode, split):   # --debug also after the command, where the error hint suggests it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="出错时显示完整的 traceback")
    args = typed_paths(parser, argv, "path", outputs=("out", "out_dir"))
    return run_cli(lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    if args.command == "split":
        result = validation.load_records(args.path, fix_hint=(
            f"请修正这些行，再切分（`python -m helpers.data check {shell_path(args.path)}` 会列出它们）。"))
        print(result.report.format(limit=validation.SHOWN_PROBLEMS))
        split = data_files.grouped_split(result.records, args.eval_fraction, args.seed, setting="--eval-fraction")
        written = data_files.save_split(split, args.out_dir, source=Path(args.path))
        print(split.summary())
        for path in written:
            print(f"已写入 {display_path(path)}")
        return 0

    validation.require_data_file(args.path)  # before the tokenizer loads: a wrong path fails at once
    if args.command == "encode":
        refuse_same_file(args.path, args.out)
        if Path(args.out).is_dir():
            raise UnsafeWriteError(f"OUT {display_path(args.out)} 是文件夹：请给出一个文件名，"
                                   f"例如 {shell_path(Path(args.out) / 'train.jsonl')}。")
        if Path(args.out).exists() and not data_files.is_encoded_file(args.out):
            raise UnsafeWriteError(f"OUT {display_path(args.out)} 已存在，而且不是课程编码的文件：写入会覆盖它。"
                                   "请换一个文件名，或者先把它移走。没有写入任何文件。")
    tokenizer, folder = course_tokenizer()
    system_prompt = getattr(args, "system_prompt", DEFAULT_SYSTEM_PROMPT) or None
    # check always reads past invalid rows to report statistics, but still fails on them
    try:
        result = validation.load_records(args.path, skip_invalid=args.skip_invalid or args.command == "check")
    except validation.DataValidationError as err:
        if args.command == "check":  # the whole report, then a verdict that does not repeat it
            print(err.report.format())
            raise CourseError(f"{err.report.summary(skipped=False)}：每个问题都列在上面，修正后再运行。") from None
        raise
    check_lengths(result, tokenizer, args.max_length, system_prompt)
    print(result.report.format())
    if args.command == "check":
        print(statistics_text(result, args.max_length))
        if result.report.skipped and not args.skip_invalid:   # the verdict last, where the learner looks
            invalid = result.report.skipped
            print(f"{display_path(args.path)} 有 {len(invalid)} 条无效数据（{list_numbers(invalid, result.report.unit)}）："
                  "修正后再运行；或者 encode 时加 --skip-invalid 跳过它们。", file=sys.stderr)
            return 1
        return 0
    samples, report = _encode_or_refuse(result.records, tokenizer, system_prompt, args.max_length,
                                       "max_length", "--max-length")
    stamp = data_files.encoding_stamp(folder, args.max_length, system_prompt, Path(args.path))
    record_made(data_files.save_encoded(samples, args.out, stamp))   # make reset removes it (it can be made again)
    print(report.summary(rows=result.rows, unit=result.report.unit))
    print(f"已把 {len(samples)} 条写入 {display_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
