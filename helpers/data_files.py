"""Dataset files: the real dataset's download, the encoded training set (with its stamp),
the held-out split, and the ``datasets.Dataset`` the Trainer reads.

Every file is written to a temporary name in the same folder and renamed on success,
so a failure (a full disk included) never leaves a half-written file or replaces a good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import validation
from .errors import CourseError
from .settings import DATASET_ENV
from .workspace import (
    REPO_ROOT,
    UnsafeWriteError,
    atomic_folder,
    atomic_path,
    claim_folder,
    display_path,
    expand_home,
    made_names,
    record_made,
    refuse_working_folder,
    sha256_file,
    shell_path,
)

#: The team-written 48-row sample (tiny profile). Its first 8 rows are the memorisation subset.
SAMPLE_PATH = REPO_ROOT / "data" / "huanhuan_sample.json"
HUANHUAN_SHA256 = "1bbe8b09857274adc58186919622554df7f71dcee8655537f6a8b80993d6e6f3"
#: Pinned to the upstream commit whose huanhuan.json has HUANHUAN_SHA256.
HUANHUAN_PINNED_URL = ("https://raw.githubusercontent.com/datawhalechina/self-llm/"
                       "42c1bff4334f4c21c33e5791f29e9cdca5d47c61/dataset/huanhuan.json")


class DatasetDownloadError(CourseError, RuntimeError):
    """The real dataset could not be downloaded, or it is not the file the course pins."""


class EncodedFileError(CourseError, ValueError):
    """An encoded file is unreadable, or it was made with other settings than this run's."""


# --------------------------------------------------------------------------- data sources


def download_huanhuan(
    dest: str | os.PathLike,
    url: str = HUANHUAN_PINNED_URL,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download huanhuan.json to ``dest`` (once), verified against ``HUANHUAN_SHA256``.

    The URL is pinned to the upstream commit whose file has that hash, so a later change
    upstream cannot break the download. A cached file with the right hash is reused without
    any network access; the download is renamed into place only after its hash matches.
    """
    from tqdm import tqdm

    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == HUANHUAN_SHA256:
        return dest
    with atomic_path(dest) as partial:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm.wrapattr(out, "write", total=total, desc=dest.name, disable=not progress) as writer:
                    shutil.copyfileobj(response, writer)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            raise DatasetDownloadError(
                f"无法下载 {url}：{reason}。是没有联网，还是这个网站被屏蔽了？"
                f"请在能访问这个网址的地方运行，或者自己把 huanhuan.json（sha256 {HUANHUAN_SHA256}）"
                f"复制到 {display_path(dest)}：哈希一致的文件会直接使用，不再下载。"
            ) from err
        if (found := sha256_file(partial)) != HUANHUAN_SHA256:
            raise DatasetDownloadError(
                f"从 {url} 下载的文件 sha256 是 {found}，但课程固定的是 {HUANHUAN_SHA256}。"
                "上游文件可能在课程写成之后改过（或者下载内容被篡改）。"
                f"请使用固定的版本（{HUANHUAN_PINNED_URL}），或者用 "
                "QWEN3_TUTORIAL_DATASET=/path/to/huanhuan.json 指定本地副本。"
            )
    return dest


def require_given_dataset(spec) -> None:
    """Stop when the data file the learner named (``data.source``, the ``dataset`` setting) is missing: train and
    evaluate ask first, before any model is built or downloaded. The course's own dataset is fetched when read."""
    if spec.paths.dataset.is_file() or "dataset" not in spec.given:
        return
    if spec.data.source != "course":    # a learner's own file: never downloaded over
        looked = "" if expand_home(spec.data.source).is_absolute() else \
            f"；相对路径先从当前文件夹找，再从仓库根目录找，这里找的是 {display_path(spec.paths.dataset)}"
        raise DatasetDownloadError(f"data.source={spec.data.source!r}（来自 {spec.origin['dataset']}）不存在{looked}："
                                   "请给出一个 JSON/JSONL 数据文件（最好写绝对路径），或者用 `course` 表示 profile 自带的数据集。")
    what = "是文件夹：请指向其中的 JSON/JSONL 数据文件" if spec.paths.dataset.is_dir() else "不存在：改正路径"
    raise DatasetDownloadError(f"数据集 {display_path(spec.paths.dataset)}（来自 {spec.origin['dataset']}）{what}，"
                               f"或者取消这个设置，用课程的数据集（unset {DATASET_ENV}；设置文件里的用 "
                               "python -m helpers.environment setup --dataset \"\" 删除）。")


def course_dataset_path(spec, progress: bool = True) -> Path:
    """The spec's training data: the shipped sample, a local file, or the real set (downloaded once)."""
    path = spec.paths.dataset
    if path.is_file():
        return path
    require_given_dataset(spec)
    if path.name == "huanhuan.json":
        return record_made(download_huanhuan(path, progress=progress))
    raise DatasetDownloadError(f"数据集 {display_path(path)} 不存在。")


# --------------------------------------------------------------------------- encoded files and their stamp

ENCODED_KEYS = ("input_ids", "attention_mask", "labels")
STAMP_KEY = "__stamp__"


def tokenizer_sha256(folder: str | os.PathLike) -> str:
    """One digest over the tokenizer files that decide the ids (tokenizer.json + tokenizer_config.json)."""
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        digest.update(sha256_file(Path(folder) / name).encode())
    return digest.hexdigest()


def encoding_stamp(tokenizer_dir, max_length: int, system_prompt: str | None, source: Path,
                   max_rows: int | None = None) -> dict:
    """What an encoded file was made from: settings, tokenizer and source data (by sha256)."""
    return {
        "max_length": max_length,
        "system_prompt": system_prompt,
        "tokenizer_sha256": tokenizer_sha256(tokenizer_dir),
        "source_sha256": sha256_file(source),
        "max_rows": max_rows,
    }


def spec_stamp(spec, source: Path) -> dict:
    """The stamp of this spec's encoded training set (the split's settings decide its rows too)."""
    return {**encoding_stamp(spec.paths.model_dir, spec.data.max_length, spec.data.system_prompt, source,
                             spec.data.max_rows),
            "eval_fraction": spec.data.eval_fraction, "split_seed": spec.data.split_seed}


def save_encoded(samples: list[dict], path: str | os.PathLike, stamp: dict | None = None) -> Path:
    """Write the stamp line, then one JSON object per sample (input_ids, attention_mask, labels, row); atomic."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as out:
        if stamp is not None:
            out.write(json.dumps({STAMP_KEY: stamp}, ensure_ascii=False) + "\n")
        for sample in samples:
            row = {k: sample[k] for k in ENCODED_KEYS}
            if "row" in sample:
                row["row"] = sample["row"]
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    return path


def read_stamp(path: str | os.PathLike) -> dict | None:
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    try:
        value = json.loads(first)
    except json.JSONDecodeError:
        return None
    return value.get(STAMP_KEY) if isinstance(value, dict) else None


def is_encoded_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file the course encoded (its first line is the stamp every encoded file starts with):
    one that ``data encode`` may replace. A learner's file, a downloaded dataset or a split is never overwritten."""
    try:
        return read_stamp(path) is not None
    except (OSError, UnicodeDecodeError):
        return False


def stamp_differences(found: dict | None, wanted: dict) -> list[str]:
    """Which settings differ between an encoded file's stamp and this run's (empty: the file fits)."""
    if found is None:
        return ["文件里没有记录编码设置，是旧版本生成的"]
    return [f"{key}：文件里是 {found.get(key)!r}，本次是 {value!r}" for key, value in wanted.items()
            if found.get(key) != value]


def load_encoded(path: str | os.PathLike) -> list[dict]:
    """Read a file written by ``save_encoded``, checking each line."""
    path = Path(path)
    if not path.is_file():
        raise EncodedFileError(f"编码后的文件 {display_path(path)} 不存在")
    samples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as err:
                raise EncodedFileError(f"{display_path(path)} 第 {number} 行不是 JSON（{validation.json_problem(err)}）") from None
            if isinstance(sample, dict) and STAMP_KEY in sample:
                continue
            keys = set(sample) - {"row"} if isinstance(sample, dict) else set()
            lengths = {len(sample.get(k) or []) for k in ENCODED_KEYS} if keys else {0}
            if keys != set(ENCODED_KEYS) or len(lengths) != 1 or 0 in lengths:
                raise EncodedFileError(
                    f"{display_path(path)} 第 {number} 行：应当有 {', '.join(ENCODED_KEYS)}，长度相同且不为 0")
            sample.setdefault("row", len(samples))
            samples.append(sample)
    if not samples:
        raise EncodedFileError(f"{display_path(path)} 里没有任何样本")
    return samples


# --------------------------------------------------------------------------- the held-out split

_PUNCTUATION = re.compile(r"[\s\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Whitespace-, punctuation- and width-insensitive form of a text (the key that groups duplicates)."""
    return _PUNCTUATION.sub("", unicodedata.normalize("NFKC", text)).lower()


def duplicate_groups(records: list[dict]) -> list[list[int]]:
    """Rows linked by a shared normalised prompt OR a shared normalised answer (union-find)."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for index, record in enumerate(records):
        prompt = normalise(record["instruction"] + record.get("input", ""))
        for key in (("prompt", prompt), ("answer", normalise(record["output"]))):
            if key[1] == "":
                continue
            if key in first:
                parent[find(index)] = find(first[key])
            else:
                first[key] = index
    groups: dict[int, list[int]] = {}
    for index in range(len(records)):
        groups.setdefault(find(index), []).append(index)
    return list(groups.values())


class SplitSizeError(CourseError, ValueError):
    """A split would leave one side with no rows."""


@dataclass(frozen=True)
class Split:
    train: list[dict]
    eval: list[dict]
    train_rows: list[int]       # 0-based indices into the source records
    eval_rows: list[int]
    groups: int                 # groups of linked rows in the source
    eval_groups: int
    seed: int
    eval_fraction: float
    keep_in_train: int = 0      # the first N rows that had to train (data.max_rows)

    def summary(self) -> str:
        return (f"切分（seed {self.seed}，eval_fraction {self.eval_fraction}）：训练 {len(self.train)} 条，"
                f"留出 {len(self.eval)} 条；问题或回答相同的行连成 {self.groups} 组，其中 {self.eval_groups} 组留出；"
                "没有任何一组同时出现在两边")


def grouped_split(records: list[dict], eval_fraction: float, seed: int = 42, keep_in_train: int = 0,
                  setting: str = "data.eval_fraction") -> Split:
    """Hold out about ``eval_fraction`` of the rows, whole groups at a time (leak-free), seeded.

    ``keep_in_train``: the first N rows must train (e.g. a memorisation subset); their groups never
    go to the held-out side, and the training side is then exactly those N rows. A side of 0 rows
    stops with the numbers and the fix (``setting``: how the user sets the fraction).
    """
    all_groups = duplicate_groups(records)
    groups = [g for g in all_groups if min(g) >= keep_in_train]
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    target = round(eval_fraction * len(records))
    held: list[int] = []
    held_groups = 0
    for g in order:
        if len(held) >= target:
            break
        if len(held) + len(groups[g]) > max(target * 1.5, target + 1):
            continue  # a very large group (e.g. 50 copies of one answer) would overshoot: keep it in train
        held += groups[g]
        held_groups += 1
    held_set = set(held)
    train_rows = [i for i in range(len(records)) if i not in held_set]
    if keep_in_train:
        train_rows = list(range(keep_in_train))
    eval_rows = sorted(held_set)
    total = len(records)
    if not eval_rows and keep_in_train and not groups:
        rest = "（其余的数据与它们有相同的问题或回答）" if total > keep_in_train else ""
        raise SplitSizeError(f"data.max_rows 把 {total} 条中的前 {keep_in_train} 条留作训练，没有别的数据可以留出{rest}："
                             "设 data.max_rows=null 从全部数据中留出一部分，或者设 data.eval_fraction=0 不要留出集。")
    if not eval_rows:
        no_split = "，或者设为 0 不要留出集" if setting == "data.eval_fraction" else ""   # the CLI's flag must be > 0
        raise SplitSizeError(f"{total} 条数据按 {setting}={eval_fraction} 切分，四舍五入后留出 0 条："
                             f"把 {setting} 设为至少 {1 / max(total, 1):.2g}（一条）{no_split}。")
    if not train_rows:
        raise SplitSizeError(f"{total} 条数据按 {setting}={eval_fraction} 切分，训练 0 条（留出 {len(eval_rows)} 条）："
                             f"调小 {setting}（例如 0.05），或者增加数据。")
    return Split([records[i] for i in train_rows], [records[i] for i in eval_rows], train_rows, eval_rows,
                 len(all_groups), held_groups, seed, eval_fraction, keep_in_train)


SPLIT_FILES = ("train.json", "eval.json", "split.json")


def _old_split_folder(out_dir: Path) -> bool:
    """A split folder written before the course marked its folders (only the split's files, its metadata)."""
    names = {p.name for p in out_dir.iterdir()}
    if not names <= set(SPLIT_FILES) or "split.json" not in names:
        return False
    try:
        meta = json.loads((out_dir / "split.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and {"seed", "source_sha256", "eval_rows"} <= set(meta)


def save_split(split: Split, out_dir: str | os.PathLike, source: Path | None = None) -> list[Path]:
    """``train.json`` and ``eval.json`` (the input's record format) plus ``split.json`` (seed, source sha256).

    Written as one unit: the three files go into ``<out>.partial`` and that folder is renamed over
    ``out``, so a full disk never leaves a new train file beside an old eval file.
    """
    out_dir = refuse_working_folder(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UnsafeWriteError(f"{display_path(out_dir)} 是文件，不是文件夹：请为切分结果指定一个文件夹。")
    if source is not None and out_dir.resolve() in Path(source).resolve().parents:
        raise UnsafeWriteError(f"{display_path(out_dir)} 里有输入文件 {display_path(source)}：切分结果会写在它旁边"
                               f"（或覆盖它）。请指定一个空的或新的文件夹，例如 {shell_path(out_dir / 'split')}。")
    if out_dir.is_dir():
        if made_names(out_dir) is None and (_old_split_folder(out_dir) or not any(out_dir.iterdir())):
            claim_folder(out_dir)      # empty, or an older split of the course's own
        # a folder of the learner's is refused; in the course's own split folder a learner's note is carried over
        foreign = sorted(p.name for p in out_dir.iterdir()) if made_names(out_dir) is None else []
        if foreign:
            raise UnsafeWriteError(f"{display_path(out_dir)} 里有不是切分生成的文件"
                                   f"（{', '.join(foreign[:3])}）：请指定一个空的或新的文件夹。没有写入任何文件。")
    meta = {"seed": split.seed, "eval_fraction": split.eval_fraction, "keep_in_train": split.keep_in_train,
            "train_rows": len(split.train),
            "eval_rows": len(split.eval), "groups": split.groups, "eval_groups": split.eval_groups,
            "source_sha256": sha256_file(source) if source else None,
            "eval_row_numbers": [i + 1 for i in split.eval_rows]}
    with atomic_folder(out_dir) as partial:
        for name, value in zip(SPLIT_FILES, (split.train, split.eval, meta), strict=True):
            (partial / name).write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    return [out_dir / name for name in SPLIT_FILES]


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


def split_records(spec, records: list[dict]) -> tuple[list[dict], list[dict], Split | None]:
    """(train records, held-out records, split) for this spec.

    With ``data.max_rows`` the first ``max_rows`` rows are the training set (the tiny profile's
    memorisation subset) and the held-out rows come from the rest; otherwise the whole file is
    split. Either way whole groups of rows sharing a normalised prompt or answer go to one side.
    """
    if spec.data.eval_fraction <= 0:
        return records[: spec.data.max_rows], [], None
    keep = len(records[: spec.data.max_rows]) if spec.data.max_rows else 0
    split = grouped_split(records, spec.data.eval_fraction, spec.data.split_seed, keep_in_train=keep)
    return split.train, split.eval, split


def load_split(spec, say=print) -> tuple[list[dict], list[dict]]:
    """The (training, held-out) records of the spec's split, as training saved them.

    The saved split is used only when its seed, fraction, rows kept in training (``data.max_rows``) and source
    file are this spec's; otherwise (stale, another run's experiment, or a learner who skipped ahead with
    someone else's adapter) it is made again the same way.
    """
    source = course_dataset_path(spec, progress=False)
    folder = spec.paths.split_dir
    try:   # a file missing, damaged or edited by hand: the split is made again, like a stale one
        train, held, meta = (json.loads((folder / name).read_text(encoding="utf-8")) for name in SPLIT_FILES)
    except (OSError, ValueError):
        meta = train = held = None
    if isinstance(meta, dict) and isinstance(train, list) and isinstance(held, list):
        made_with = (meta.get("seed"), meta.get("eval_fraction"), meta.get("keep_in_train"), meta.get("source_sha256"))
        if made_with == (spec.data.split_seed, spec.data.eval_fraction, spec.data.max_rows or 0, sha256_file(source)):
            return train, held
    train, held, split = split_records(spec, validation.load_records(source).records)
    if split is not None:
        save_split(split, folder, source=source)
        say(f"重新生成了留出集 {display_path(folder)}：{split.summary()}")
    return train, held
