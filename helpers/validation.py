"""Loading and validating instruction/input/output records (notebook 03, ``helpers.data check``).

JSON array or JSONL; every problem is reported with its row, field and reason, and a bad
file is refused by default (``skip_invalid=True`` keeps the valid rows and lists the rest).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .spec import DEFAULT_MAX_LENGTH, DEFAULT_SYSTEM_PROMPT
from .workspace import display_path

REQUIRED_FIELDS = ("instruction", "output")
#: ``input`` may be missing (read as ""), as in many Alpaca-style files.
FIELDS = ("instruction", "input", "output")


class DataValidationError(ValueError):
    """The data file has problems; ``.report`` lists every one of them."""

    def __init__(self, report: ValidationReport, hint: str = ""):
        self.report = report
        text = report.format() if report.problems else ""
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
        return "line" if self.file_format == "jsonl" else "row"

    def summary(self) -> str:
        kept = self.rows_read - len(self.invalid_rows)
        text = (
            f"{self.source} ({self.file_format}): {self.rows_read} rows read, {kept} valid; "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )
        if self.skipped:
            text += f"; skipped {len(self.skipped)} invalid rows ({self.unit}s {_list_numbers(self.skipped)})"
        return text

    def format(self, limit: int | None = None) -> str:
        """The summary, then one line per problem (all of them unless ``limit``)."""
        lines = [self.summary()]
        shown = self.problems if limit is None else self.problems[:limit]
        for p in shown:
            where = f"{self.unit} {p.row}" if p.row is not None else "file"
            lines.append(f"  {p.severity:<7} {where:<10} {p.field:<12} {p.reason}")
        if len(shown) < len(self.problems):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        return "\n".join(lines)


@dataclass
class LoadResult:
    """The valid records of a file, its report, and (with a tokenizer) their encoded lengths."""

    records: list[dict]
    report: ValidationReport
    #: the 1-based row of each record in the file (``Problem.row`` numbering)
    rows: list[int] = field(default_factory=list)
    #: encoded length of each record (prompt + answer + <|im_end|>), when a tokenizer was given
    lengths: list[int] | None = None


#: Control tokens of Qwen3's chat template (and its tool/vision markers): never allowed inside data text.
SPECIAL_TOKEN_PATTERN = re.compile(r"<\|[a-z_]+\|>|</?think>|</?tool_call>|</?tool_response>")


def special_tokens_in(text: str) -> list[str]:
    """The control-token strings found in ``text`` (in order, without repeats)."""
    return list(dict.fromkeys(SPECIAL_TOKEN_PATTERN.findall(text)))


def _list_numbers(numbers: Sequence[int], limit: int = 30) -> str:
    text = ", ".join(str(n) for n in numbers[:limit])
    return text + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _parse_items(text: str, report: ValidationReport) -> list[tuple[int, object]]:
    """(row, value) pairs of a JSON array or a JSONL file; JSON errors go into ``report``."""
    if text.lstrip().startswith("["):
        report.file_format = "json"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            report.add(None, "(json)", f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}")
            return []
        except RecursionError:
            report.add(None, "(json)", "nested too deeply to be a data file (brackets inside brackets)")
            return []
        if not isinstance(data, list):
            report.add(None, "(json)", f"expected a JSON array of records, got {_json_type(data)}")
            return []
        return list(enumerate(data, start=1))
    report.file_format = "jsonl"
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            report.add(number, "(json)", f"invalid JSON at column {err.colno}: {err.msg}")
        except RecursionError:
            report.add(number, "(json)", "nested too deeply (brackets inside brackets)")
    return items


def _check_row(value) -> tuple[dict | None, list[tuple[str, str, str]]]:
    """The normalised record (or None) and the (field, reason, severity) problems of one row."""
    if not isinstance(value, dict):
        return None, [("(row)", f"expected an object with instruction/input/output, got {_json_type(value)}",
                       "error")]
    if "messages" in value and "instruction" not in value:
        return None, [("messages", "conversation ('messages') format is not supported: this course trains "
                       "single-turn instruction/input/output rows with one system prompt; convert each "
                       "conversation to {instruction, input, output}", "error")]
    problems = []
    for name in FIELDS:
        if name not in value:
            if name in REQUIRED_FIELDS:
                problems.append((name, "missing field", "error"))
            continue
        item = value[name]
        if not isinstance(item, str):
            problems.append((name, f"expected a string, got {_json_type(item)}: {json.dumps(item)[:40]}", "error"))
        elif name in REQUIRED_FIELDS and not item.strip():
            problems.append((name, "empty", "error"))
        elif found := special_tokens_in(item):
            problems.append((name, f"contains the control token(s) {', '.join(found)}: the chat template would "
                             "read them as turn markers; remove them from the text", "error"))
        elif _has_surrogate(item):
            problems.append((name, "contains an unpaired UTF-16 surrogate (broken \\ud8xx escape)", "error"))
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        problems.append(("(row)", f"unknown fields ignored: {', '.join(unknown)}", "warning"))
    if any(s == "error" for _, _, s in problems):
        return None, problems
    return {name: value.get(name, "") for name in FIELDS}, problems


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def require_data_file(path: str | os.PathLike) -> ValidationReport:
    """An empty report for ``path``, or :class:`DataValidationError` when it is a folder or does not exist."""
    path = Path(path)
    report = ValidationReport(source=display_path(path), file_format="jsonl" if path.suffix == ".jsonl" else "json")
    if path.is_dir():
        raise DataValidationError(report, f"{display_path(path)} is a folder, not a data file: pass the .json or "
                                  ".jsonl file inside it.")
    if not path.is_file():
        raise DataValidationError(report, f"{display_path(path)} does not exist (check the path).")
    return report


def load_records(
    path: str | os.PathLike,
    *,
    skip_invalid: bool = False,
    tokenizer=None,
    max_length: int = DEFAULT_MAX_LENGTH,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    fix_hint: str | None = None,
) -> LoadResult:
    """Read and validate a JSON array or JSONL file of instruction/input/output records.

    Errors (the row is invalid): invalid JSON, not an object, missing ``instruction``
    or ``output``, a non-string value, an empty instruction or output. Warnings (the
    row is kept): an exact duplicate of an earlier row, unknown fields, and, when a
    ``tokenizer`` is given, a row longer than ``max_length`` tokens, which
    ``encode_records`` will drop (a warning, not an error: the row is fine data, it
    only does not fit this ``max_length``).

    By default any error raises :class:`DataValidationError` listing every problem;
    ``skip_invalid=True`` keeps the valid rows and the report names the skipped ones.
    ``fix_hint``: what the caller's user can do about invalid rows (default: the data command's flag).
    """
    path = Path(path)
    report = require_data_file(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        report.add(None, "(file)", f"not UTF-8 text (bad byte at offset {err.start}); save it as UTF-8")
        raise DataValidationError(report) from None
    items = _parse_items(text, report)
    report.rows_read = len(items) + sum(1 for p in report.errors if p.row is not None)
    if report.rows_read == 0 and report.ok:
        report.add(None, "(file)", "no records in the file")
    if any(p.row is None for p in report.errors):
        raise DataValidationError(report, "The whole file is unreadable: fix it first.")

    records, rows, first_seen = [], [], {}
    for row, value in items:
        record, problems = _check_row(value)
        for name, reason, severity in problems:
            report.add(row, name, reason, severity)
        if record is None:
            continue
        key = (record["instruction"], record["input"], record["output"])
        if key in first_seen:
            report.add(row, "(row)", f"duplicate of {report.unit} {first_seen[key]} (kept)", "warning")
        else:
            first_seen[key] = row
        records.append(record)
        rows.append(row)
    lengths = None
    if tokenizer is not None and records:
        from .data import token_lengths

        lengths = token_lengths(records, tokenizer, system_prompt)
        for row, length in zip(rows, lengths, strict=True):
            if length > max_length:
                report.add(row, "(tokens)", f"{length} tokens > max_length {max_length}: encode_records "
                           "drops this row (raise max_length to keep it)", "warning")
    report.problems.sort(key=lambda p: (p.row or 0))

    if not report.ok:
        if not skip_invalid:
            raise DataValidationError(report, fix_hint or (
                f"Fix these rows, or pass skip_invalid=True (`python -m helpers.data check/encode --skip-invalid`) to use the "
                f"{len(records)} valid rows; the skipped rows are then listed in the report."))
        report.skipped = report.invalid_rows
        if not records:
            raise DataValidationError(report, "No valid row is left.")
    return LoadResult(records=records, report=report, rows=rows, lengths=lengths)


def statistics_text(result: LoadResult, max_length: int) -> str:
    """Token-length statistics and the padding table of the valid rows (``helpers.data check``)."""
    from .padding import RECOMMENDED_BATCHING, format_padding_table, length_stats, padding_table

    lengths = result.lengths
    if not lengths:
        return "no valid rows: no statistics"
    stats = length_stats(lengths)
    over = sum(1 for n in lengths if n > max_length)
    table = padding_table(lengths)
    by_name = {r.strategy: r for r in table}
    return "\n".join([
        f"statistics of the {stats['rows']} valid rows "
        "(tokens per sample: system prompt + question + answer + <|im_end|>):",
        f"  token length  mean {stats['mean']:.1f}  p50 {stats['p50']}  p90 {stats['p90']}  "
        f"p99 {stats['p99']}  max {stats['max']}",
        f"  rows over max_length {max_length}: {over} (encode drops them and reports them)",
        "padding per epoch (batches of 4):",
        *("  " + line for line in format_padding_table(table).splitlines()),
        f"recommended: {by_name[RECOMMENDED_BATCHING].description}: "
        f"{by_name[RECOMMENDED_BATCHING].padding_share:.1%} padding vs {by_name['random'].padding_share:.1%} "
        "for random batches",
    ])
