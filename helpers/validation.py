"""Loading and validating instruction/input/output records (notebook 03, ``helpers.data check``).

JSON array or JSONL; every problem is reported with its row, field and reason, and a bad
file is refused by default (``skip_invalid=True`` keeps the valid rows and lists the rest).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CourseError
from .workspace import display_path, shell_path

REQUIRED_FIELDS = ("instruction", "output")
#: ``input`` may be missing (read as ""), as in many Alpaca-style files.
FIELDS = ("instruction", "input", "output")
#: what other datasets call the required fields (a row with one of these names gets the rename as its fix)
FIELD_ALIASES = {"instruction": ("prompt", "query", "question"), "output": ("response", "answer", "completion")}
#: how many problems an error message (and ``helpers.data split``) lists one by one; ``DataValidationError.report``
#: has all
SHOWN_PROBLEMS = 10


class DataValidationError(CourseError, ValueError):
    """The data file has problems; ``.report`` lists every one of them."""

    def __init__(self, report: ValidationReport, hint: str = ""):
        self.report = report
        # a few problems one per line; a file in another format (the same errors in every row) each kind once
        text = (report.format() if len(report.problems) <= SHOWN_PROBLEMS else
                f"{report.summary(skipped=False)}：{report.grouped(report.errors)}") if report.problems else ""
        super().__init__("\n".join(part for part in (text, hint) if part))


@dataclass(frozen=True)
class Problem:
    """One problem in a data file. ``row`` is 1-based (the line number in JSONL); None = the whole file."""

    row: int | None
    field: str
    reason: str
    severity: str = "error"  # "error" (the row is invalid) or "warning" (kept, but look at it)


@dataclass
class ValidationReport:
    """Every problem found in one data file, and which rows were skipped."""

    source: str
    file_format: str = "json"
    rows_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: rows left out because ``skip_invalid=True`` (1-based, like ``Problem.row``)
    skipped: list[int] = field(default_factory=list)

    def add(self, row, field_name, reason, severity="error"):
        self.problems.append(Problem(row, field_name, reason, severity))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def invalid_rows(self) -> list[int]:
        return sorted({p.row for p in self.errors if p.row is not None})

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def unit(self) -> str:
        return "行" if self.file_format == "jsonl" else "条"

    def summary(self, skipped: bool = True) -> str:
        """How many rows were read, kept, and had problems; ``skipped``: which rows were left out."""
        kept = self.rows_read - len(self.invalid_rows)
        text = (
            f"{self.source}（{self.file_format}）：读到 {self.rows_read} 条，有效 {kept} 条；"
            f"错误 {len(self.errors)} 个，警告 {len(self.warnings)} 个"
        )
        if self.skipped and skipped:
            text += f"；跳过 {len(self.skipped)} 条无效数据（{list_numbers(self.skipped, self.unit)}）"
        return text

    def grouped(self, problems: list[Problem]) -> str:
        """``problems`` in one line: each kind once, with how many and their first rows (a file of 3,000 rows in
        another format is one kind, not 3,000 lines)."""
        kinds: dict[tuple[str, str], list[Problem]] = {}
        for p in problems:   # a kind: the field and the reason up to its details (row numbers, characters)
            kinds.setdefault((p.field, re.sub(r"U\+[0-9A-F]+|\d+", "#", p.reason.split("：")[0])), []).append(p)
        return "；".join(
            ("" if name.startswith("(") else f"{name} ") + found[0].reason
            + (f" 等 {len(found)} 个" if len(found) > 1 else "")
            + (f"（{list_numbers(rows, self.unit, limit=3)}）" if (rows := [p.row for p in found if p.row]) else "")
            for (name, _), found in kinds.items())

    def warnings_line(self, full_list: str) -> str:
        """One line for a command that goes on despite warnings; ``full_list``: the command that lists them all."""
        return (f"{self.source}：{len(self.warnings)} 个数据警告，照常继续：{self.grouped(self.warnings)}。"
                f"全部列出：{full_list}")

    def format(self, limit: int | None = None) -> str:
        """The summary, then one line per problem (all of them unless ``limit``)."""
        lines = [self.summary()]
        shown = self.problems if limit is None else self.problems[:limit]
        for p in shown:
            where = f"第 {p.row} {self.unit}" if p.row is not None else "整个文件"
            label = "错误" if p.severity == "error" else "警告"
            lines.append(f"  {label}  {where:<8} {p.field:<12} {p.reason}")
        if len(shown) < len(self.problems):
            lines.append(f"  ……还有 {len(self.problems) - len(shown)} 个")
        return "\n".join(lines)


@dataclass
class LoadResult:
    """The valid records of a file, its report, and (after ``data.check_lengths``) their encoded lengths."""

    records: list[dict]
    report: ValidationReport
    #: the 1-based row of each record in the file (``Problem.row`` numbering)
    rows: list[int] = field(default_factory=list)
    #: encoded length of each record (prompt + answer + <|im_end|>), once measured
    lengths: list[int] | None = None


#: Control tokens of Qwen3's chat template (and its tool/vision markers): never allowed inside data text.
SPECIAL_TOKEN_PATTERN = re.compile(r"<\|[a-z_]+\|>|</?think>|</?tool_call>|</?tool_response>")


def list_numbers(numbers: Sequence[int], unit: str, limit: int = 30) -> str:
    """``第 2、3、5 行``: at most ``limit`` numbers, then how many more."""
    text = f"第 {'、'.join(str(n) for n in numbers[:limit])} {unit}"
    return text + (f"，另有 {len(numbers) - limit} {unit}" if len(numbers) > limit else "")


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


#: what Python's JSON parser says, in the learner's words (its message starts with one of these)
JSON_PROBLEMS = {
    "Expecting value": "这里缺一个值（多了逗号，或者少了引号、括号）",
    "Expecting ',' delimiter": "缺逗号或右括号",
    "Expecting ':' delimiter": "键后面缺冒号",
    "Expecting property name enclosed in double quotes": "键名要用英文双引号（或者最后一项后面多了逗号）",
    "Illegal trailing comma": "最后一项后面多了逗号",
    "Unterminated string": "字符串没有结束（缺右边的英文双引号）",
    "Invalid control character": "字符串里有控制字符（换行要写成 \\n）",
    "Invalid \\escape": "无效的转义（反斜杠后面的字符不对）",
    "Extra data": "一个完整的 JSON 值后面还有多余的内容",
    "Unexpected UTF-8 BOM": "这里有一个 UTF-8 BOM（几个文件拼在一起时带进来的）：删掉它，或者把这些行另存为不带 BOM 的 UTF-8",
}


def json_problem(err: json.JSONDecodeError) -> str:
    """The parser's message in Chinese (its English words only for a message not in :data:`JSON_PROBLEMS`)."""
    return next((words for start, words in JSON_PROBLEMS.items() if err.msg.startswith(start)), err.msg)


def _parse_items(text: str, report: ValidationReport) -> list[tuple[int, object]]:
    """(row, value) pairs of a JSON array or a JSONL file; JSON errors go into ``report``."""
    if text.lstrip().startswith("["):
        report.file_format = "json"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            report.add(None, "(json)", f"JSON 格式错误（第 {err.lineno} 行第 {err.colno} 列：{json_problem(err)}）")
            return []
        except RecursionError:
            report.add(None, "(json)", "嵌套太深，不是数据文件（括号套括号）")
            return []
        if not isinstance(data, list):
            report.add(None, "(json)", f"应当是记录组成的 JSON 数组，实际是 {_json_type(data)}")
            return []
        return list(enumerate(data, start=1))
    if _whole_object(text, report) or _table(text, report):
        return []
    if text.strip():   # an empty file keeps the format its name says
        report.file_format = "jsonl"
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            report.add(number, "(json)", f"JSON 格式错误（第 {err.colno} 列：{json_problem(err)}）")
        except RecursionError:
            report.add(number, "(json)", "嵌套太深（括号套括号）")
    return items


def _table(text: str, report: ValidationReport) -> bool:
    """A CSV or TSV table whose first line names the columns (a spreadsheet's export): one error with the fix."""
    header = text.lstrip().split("\n", 1)[0]
    if header.startswith("{") or not {"instruction", "output"} <= {c.strip(' "') for c in re.split(r"[,\t]", header)}:
        return False
    report.file_format = "csv"
    report.add(None, "(csv)", "这是 CSV/TSV 表格（第一行是列名），课程读的是 JSON 数组或 JSONL。可以用 pandas 转换："
                              "pandas.read_csv(表格, keep_default_na=False).to_json(新文件.json, orient='records', "
                              "force_ascii=False)（TSV 加 sep='\\t'）")
    return True


def _json_values(body: str) -> list | None:
    """The JSON values written one after another in ``body`` (whitespace or a comma between two); None: not that."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(body):
        try:
            value, at = decoder.raw_decode(body, at)
        except (json.JSONDecodeError, RecursionError):
            return None
        values.append(value)
        rest = body[at:].lstrip()
        at = len(body) - len(rest[1:].lstrip() if rest.startswith(",") else rest)
    return values


def _whole_object(text: str, report: ValidationReport) -> bool:
    """Whether the file is JSON objects over several lines, not JSONL: one object (records wrapped as
    ``{"data": [...]}``) or several pretty-printed records with no ``[ ]`` around them. Then one error says so,
    instead of one per line."""
    body = text.strip()
    if not body.startswith("{"):
        return False
    values = _json_values(body)
    if values is None:
        return False   # not JSON as a whole: JSONL, its rows are checked one by one
    # records wrapped in an object ({"data": [...]}), also on one line: no record's fields, an array inside
    wrapped = len(values) == 1 and not set(values[0]) & {*FIELDS, "messages"} and \
        any(isinstance(value, list) for value in values[0].values())
    if len(values) == sum(1 for line in body.splitlines() if line.strip()) and not wrapped:
        return False   # one value per line: JSONL, its rows are checked one by one
    report.file_format = "json"
    if len(values) > 1:
        report.add(None, "(json)", f"应当是记录组成的 JSON 数组（[...]）或每行一条记录的 JSONL，实际是 {len(values)} 个"
                   "跨多行的 JSON 对象一个接一个，外面没有 [ ]：在最前面加 [、最后面加 ]，对象之间用逗号隔开")
        return True
    data = values[0]
    arrays = [key for key, value in data.items() if isinstance(value, list)]
    found = (f"一个把记录包在里面的 JSON 对象：其中 {arrays[0]!r} 是 {len(data[arrays[0]])} 项的数组，把这个数组单独存成文件"
             if wrapped else "一个跨多行的 JSON 对象：一条记录时写成 [ {...} ]，或者写在一行里（JSONL）")
    report.add(None, "(json)", f"应当是记录组成的 JSON 数组（[...]）或每行一条记录的 JSONL，实际是{found}")
    return True


def _check_row(value) -> tuple[dict | None, list[tuple[str, str, str]]]:
    """The normalised record (or None) and the (field, reason, severity) problems of one row."""
    if not isinstance(value, dict):
        return None, [("(row)", f"应当是含 instruction/input/output 的对象，实际是 {_json_type(value)}",
                       "error")]
    for chat in ("messages", "conversations"):   # the chat format, and ShareGPT's
        if chat in value and "instruction" not in value:
            return None, [(chat, f"不支持对话（{chat}）格式：本课程训练单轮的 instruction/input/output 数据，"
                           "系统提示由配置统一给出；请把每段对话转换成 {instruction, input, output}", "error")]
    problems = []
    for name in FIELDS:
        if name not in value:
            if name in REQUIRED_FIELDS:
                alias = next((a for a in FIELD_ALIASES[name] if a in value), None)
                problems.append((name, "缺少这个字段" + (f"（这一行有 {alias}：意思相同的话，把它改名为 {name}）"
                                                         if alias else ""), "error"))
            continue
        item = value[name]
        if not isinstance(item, str):
            problems.append((name, f"应当是字符串，实际是 {_json_type(item)}：{json.dumps(item)[:40]}", "error"))
        elif name in REQUIRED_FIELDS and not item.strip():
            problems.append((name, "是空的", "error"))
        elif found := list(dict.fromkeys(SPECIAL_TOKEN_PATTERN.findall(item))):
            problems.append((name, f"含有控制符 {', '.join(found)}：对话模板会把它们当成回合标记，"
                             "请从文本里删掉", "error"))
        elif any("\ud800" <= ch <= "\udfff" for ch in item):
            problems.append((name, "含有不成对的 UTF-16 代理字符（损坏的 \\ud8xx 转义）", "error"))
    for name in FIELDS:
        if isinstance(value.get(name), str) and (hidden := invisible_characters(value[name])):
            problems.append((name, f"含有看不见的控制字符 {', '.join(hidden)}：模型会看到它们，终端里却看不见，"
                             "请确认或删掉", "warning"))
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        problems.append(("(row)", f"忽略未知字段：{', '.join(unknown)}", "warning"))
    if any(s == "error" for _, _, s in problems):
        return None, problems
    return {name: value.get(name, "") for name in FIELDS}, problems


def invisible_characters(text: str) -> list[str]:
    """Control and format characters a reader cannot see (BEL, ESC, the RTL override, a BOM mid-text ...).

    Line breaks and tabs are text; everything else of Unicode category Cc or Cf is named once, as U+XXXX.
    """
    found = dict.fromkeys(ch for ch in text if ch not in "\n\t\r" and unicodedata.category(ch) in ("Cc", "Cf"))
    return [f"U+{ord(ch):04X}" + (f" {unicodedata.name(ch, '')}".rstrip()) for ch in found]


def require_data_file(path: str | os.PathLike) -> ValidationReport:
    """An empty report for ``path``, or :class:`DataValidationError` when it is a folder or does not exist."""
    path = Path(path)
    report = ValidationReport(source=display_path(path), file_format="jsonl" if path.suffix == ".jsonl" else "json")
    if path.is_dir():
        raise DataValidationError(report, f"{display_path(path)} 是文件夹，不是数据文件：请传入其中的 .json 或 "
                                  ".jsonl 文件。")
    if not path.is_file():
        raise DataValidationError(report, f"{display_path(path)} 不存在（请检查路径）。")
    return report


def load_records(
    path: str | os.PathLike,
    *,
    skip_invalid: bool = False,
    fix_hint: str | None = None,
) -> LoadResult:
    """Read and validate a JSON array or JSONL file of instruction/input/output records.

    Any error raises :class:`DataValidationError` listing every problem; ``skip_invalid=True``
    keeps the valid rows and the report names the skipped ones. Duplicates and unknown fields are
    warnings; rows too long for ``max_length`` are warned about by :func:`helpers.data.check_lengths`.
    ``fix_hint``: what the caller's user can do about invalid rows (default: the data command's flag).
    """
    path = Path(path)
    report = require_data_file(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        report.add(None, "(file)", f"不是 UTF-8 文本（第 {err.start} 个字节出错），请另存为 UTF-8")
        raise DataValidationError(report) from None
    items = _parse_items(text, report)
    report.rows_read = len(items) + sum(1 for p in report.errors if p.row is not None)
    if report.rows_read == 0 and report.ok:
        report.add(None, "(file)", "文件里没有任何记录")
    if any(p.row is None for p in report.errors):
        raise DataValidationError(report, "整个文件都读不出记录：请先修正前面列出的问题。")

    records, rows, first_seen = [], [], {}
    for row, value in items:
        record, problems = _check_row(value)
        for name, reason, severity in problems:
            report.add(row, name, reason, severity)
        if record is None:
            continue
        key = (record["instruction"], record["input"], record["output"])
        if key in first_seen:
            report.add(row, "(row)", f"与第 {first_seen[key]} {report.unit}完全相同（保留）", "warning")
        else:
            first_seen[key] = row
        records.append(record)
        rows.append(row)
    report.problems.sort(key=lambda p: (p.row or 0))

    if not report.ok:
        if not skip_invalid:
            raise DataValidationError(report, fix_hint or (
                f"请修正这些行；或者只用其中 {len(records)} 条有效数据，跳过的行会列在报告里（命令行："
                "python -m helpers.data encode 加 --skip-invalid；Python：skip_invalid=True）。"))
        report.skipped = report.invalid_rows
        if not records:
            raise DataValidationError(report, "没有一条有效数据：请先修正前面列出的问题（"
                                              f"python -m helpers.data check {shell_path(path)} 逐条列出）。")
    return LoadResult(records=records, report=report, rows=rows)
