"""Crash-safe checkpoints (notebook 04 and ``python -m helpers.train``): after the Trainer saved
``checkpoint-N``, a marker records the size and sha256 of each of its files, so resume, inference and export
skip a damaged one (naming the damaged file); a run directory is locked while training; starting fresh moves
the previous run aside."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CourseError
from .settings import and_unset
from .spec import CONFIG_DIR
from .workspace import (
    MADE_MARKER,
    MissingArtifactError,
    UnsafeWriteError,
    atomic_path,
    blocking_file,
    course_folder,
    display_path,
    how_to_make,
    is_course_made,
    named_path,
    record_made,
    sha256_file,
    shell_path,
    unlisted,
)

COMPLETE_MARKER = "checkpoint_complete"
#: What the trained adapter was trained with (system prompt, max_length, profile, base model).
RECIPE_FILE = "course_recipe.json"
LOCK_FILE = ".run.lock"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: how many earlier runs ``move_aside`` keeps next to the current one
KEEP_PREVIOUS_RUNS = 2
#: what the course writes in a run folder (the Trainer's checkpoints, the run summary, the sample log, the
#: evaluation reports): ``make reset`` removes these and keeps a file the learner put beside them
RUN_FILES = ("checkpoint-*", "run_summary.json", "sample_log.jsonl", "eval_report*.json")


class TrainingStateError(CourseError, RuntimeError):
    """The model in memory is not what a fresh run starts from."""


def lora_trained(model) -> bool:
    """Whether any LoRA B matrix is non-zero: PEFT starts every one at zero, so a fresh adapter has none."""
    return any(bool(param.detach().abs().sum()) for name, param in model.named_parameters() if "lora_B" in name)


def refuse_trained_lora(model) -> None:
    """Stop a training from step 0 (or a fresh start) on LoRA weights this kernel has trained already."""
    if lora_trained(model):
        raise TrainingStateError(
            "这个模型的 LoRA 权重已经训练过了（这个内核里跑过一次训练，也许在第一个检查点之前被中断了），"
            "所以这次训练不会从第 0 步的权重开始：重新运行加载模型的单元格（from_pretrained）和 get_peft_model "
            "单元格，然后再训练。")


class CheckpointError(CourseError, RuntimeError):
    """No usable checkpoint (missing or damaged), with the reason."""


class RunLockedError(CourseError, RuntimeError):
    """Another training process is writing into this run directory."""


def is_checkpoint_name(path: Path) -> bool:
    """Whether a folder is named like the Trainer's ``checkpoint-N``."""
    return bool(_CHECKPOINT_RE.match(Path(path).name))


def checkpoint_step(path: Path) -> int:
    return int(_CHECKPOINT_RE.match(Path(path).name).group(1))


def write_marker(folder: Path, global_step: int) -> Path:
    """Record size and sha256 of every file in the finished checkpoint, then the marker (atomically)."""
    folder = Path(folder)
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != COMPLETE_MARKER}
    marker = folder / COMPLETE_MARKER
    with atomic_path(marker) as partial:
        partial.write_text(json.dumps({"global_step": global_step, "time": time.time(), "files": files}, indent=1),
                           encoding="utf-8")
    return marker


def damaged_file(folder: Path, full: bool = True) -> str | None:
    """The first problem with a checkpoint folder (None: it proves itself).

    ``full=False`` checks sizes only (fast); ``full=True`` also the sha256 of each file.
    """
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return f"没有完成标记 {COMPLETE_MARKER}（保存被中断了）"
    if not (folder / "adapter_model.safetensors").is_file():
        return "缺少 adapter_model.safetensors"
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{COMPLETE_MARKER} 无法读取"
    files = record.get("files")
    if files is None:
        return None  # a marker of the older format: nothing to verify against
    for name, facts in files.items():
        path = folder / name
        if not path.is_file():
            return f"缺少 {name}"
        if path.stat().st_size != facts["size"]:
            return f"{name} 有 {path.stat().st_size} 字节，保存时是 {facts['size']} 字节（被截断了？）"
        if full and sha256_file(path) != facts["sha256"]:
            return f"{name} 与保存时记下的 sha256 不一致"
    return None


def unmarked_adapter_problem(folder: Path) -> str | None:
    """The first problem with an adapter folder that has no completion marker (a shared or copied adapter), from
    the files themselves: the weights must be a whole safetensors file (safetensors refuses one cut short) and
    ``adapter_config.json`` a PEFT config (a JSON object with ``peft_type``). None: PEFT can load it."""
    from safetensors import SafetensorError, safe_open

    weights = Path(folder) / "adapter_model.safetensors"
    if not weights.is_file():
        return "缺少 adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (OSError, SafetensorError):
        return "adapter_model.safetensors 不完整（被截断了？）"
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "adapter_config.json 不是有效的 JSON"
    if not isinstance(config, dict) or "peft_type" not in config:
        return "adapter_config.json 不是 PEFT 适配器的配置（没有 peft_type；是不是复制成了模型的 config.json？）"
    return None


@dataclass
class Found:
    checkpoint: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def notes(self) -> list[str]:
        return [f"跳过 {display_path(path)}：{why}" for path, why in self.skipped]


def checkpoints_in(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(checkpoint_step(c), c) for c in folder.iterdir() if c.is_dir() and _CHECKPOINT_RE.match(c.name)]
    return [c for _, c in sorted(found)]


def latest_good_checkpoint(folder: Path, full: bool = True) -> Found:
    """The highest-step checkpoint that proves itself; the damaged ones above it are listed."""
    result = Found(None)
    for candidate in reversed(checkpoints_in(folder)):
        problem = damaged_file(candidate, full=full)
        if problem is None:
            result.checkpoint = candidate
            return result
        if (candidate / COMPLETE_MARKER).is_file():  # half-written ones are expected after a kill: not news
            result.skipped.append((candidate, problem))
    return result


def find_latest_checkpoint(folder: Path) -> Path | None:
    """The highest-step complete ``checkpoint-N`` in ``folder`` (damaged ones are skipped)."""
    return latest_good_checkpoint(folder, full=False).checkpoint


# --------------------------------------------------------------------------- the recipe an adapter was trained with


def base_model_name(spec) -> str:
    """What a shared adapter names as its base: the hub id, or the model folder relative to the workspace."""
    if spec.profile.source in ("modelscope", "config-only"):  # the real model, or its architecture
        return spec.profile.model_id
    try:
        return spec.paths.model_dir.relative_to(spec.paths.workspace).as_posix()
    except ValueError:
        return spec.paths.model_dir.name


#: the training settings a resumed run must share with its checkpoint (max_steps, epochs, saving and logging may
#: change: they say how much longer and how often; a decaying learning-rate schedule is then recomputed for the new
#: end, so the result differs from one run planned that long from the start)
RESUMED_TRAINING = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                    "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "seed")


def adapter_recipe(spec) -> dict:
    """What the adapter was trained with; inference and the chat widget default to it, a resumed run must match it."""
    return {
        "profile": spec.profile.name,
        "base_model": base_model_name(spec),
        "system_prompt": spec.data.system_prompt,
        "max_length": spec.data.max_length,
        "quantization": spec.quantization,
        "lora": {"r": spec.lora.r, "lora_alpha": spec.lora.lora_alpha, "target_modules": list(spec.lora.target_modules),
                 "lora_dropout": spec.lora.lora_dropout},
        "data": {**{key: value for key, value in spec.to_dict()["data"].items() if key not in ("system_prompt", "max_length")},
                 # the file's content, wherever it was given from (its name alone misses an edit or a same-named file)
                 **({"sha256": sha256_file(spec.paths.dataset)} if spec.paths.dataset and spec.paths.dataset.is_file() else {})},
        "training": {key: spec.training[key] for key in RESUMED_TRAINING if key in spec.training},
    }


def refuse_other_recipe(spec, checkpoint: Path) -> None:
    """Stop before resuming ``checkpoint`` with other settings than it was trained with: a LoRA of another shape
    would not load, and anything else would mix two recipes in one run. (An older checkpoint's recipe lacks some
    keys: those are not compared.)"""
    saved, ours = read_recipe(checkpoint), adapter_recipe(spec)
    changed = []
    for key, value in ours.items():
        if key == "profile" or key not in saved:
            continue
        if isinstance(value, dict):
            changed += [(f"{key}.{k}", saved[key][k], v) for k, v in value.items()
                        if isinstance(saved[key], dict) and k in saved[key] and saved[key][k] != v]
        elif saved[key] != value:
            changed.append((key, saved[key], value))
    if changed:
        shown = "；".join(f"{name}: {old!r} → {new!r}" if not name.endswith("sha256") else
                         f"数据文件的内容（sha256 {old[:12]}… → {new[:12]}…）" for name, old, new in changed[:4])
        raise CheckpointError(
            f"{display_path(checkpoint)} 是用另一套设置训练的（{shown}{'……' if len(changed) > 4 else ''}），"
            "接着它训练会把两套设置混在同一次运行里。要用新设置从头训练：命令行加 --no-resume（第 04 课设 START_FRESH = True）；"
            "要保留这次运行：训练到另一个文件夹（--output-dir）。")


def read_recipe(checkpoint: Path) -> dict:
    """The checkpoint's ``course_recipe.json`` ({} for an adapter from elsewhere)."""
    path = Path(checkpoint) / RECIPE_FILE
    try:
        recipe = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{display_path(path)} 已损坏（{err}）：请重新训练；或者删掉这个文件，"
                              "之后会按配置里的基座模型加载适配器。") from None
    return recipe if isinstance(recipe, dict) else {}


def spec_as_trained(spec, adapter: Path, notes: list[str] = ()) -> tuple:
    """(the spec on the base the adapter was trained on, notes): its recipe's quantization wins over the config's."""
    recipe, notes = read_recipe(adapter), list(notes)
    if "quantization" not in recipe or recipe["quantization"] == spec.quantization:
        return spec, notes
    notes.append(f"{Path(adapter).name} 训练时用的是 quantization={recipe['quantization']}（见 {RECIPE_FILE}）；"
                 f"配置里的 quantization={spec.quantization} 已改为与它一致")
    return spec.replace(quantization=recipe["quantization"]), notes


#: how an adapter_dir setting (settings file or variable) is undone, back to the learner's own adapter
ADAPTER_WAY_BACK = ("；或改回用你自己训练的结果：python -m helpers.environment setup --adapter-dir \"\"（并取消 "
                    "QWEN3_TUTORIAL_ADAPTER_DIR）")


def _missing_adapter(spec, chosen: Path, by_setting: bool) -> MissingArtifactError:
    """The error for an adapter folder that is not there: named by the adapter_dir setting, or by --checkpoint
    (then the run's own checkpoints are listed)."""
    if by_setting:
        return MissingArtifactError(
            f"适配器文件夹 {display_path(chosen)}（adapter_dir，来自 {spec.origin['adapter_dir']}）不存在。改正路径"
            f"{ADAPTER_WAY_BACK}。")
    found = "、".join(c.name for c in checkpoints_in(spec.paths.run_dir)) or "还没有"
    return MissingArtifactError(
        f"适配器文件夹 {display_path(chosen)} 不存在。" + (
            f"这次运行的检查点在 {display_path(spec.paths.run_dir)}（{found}）：不加 --checkpoint 就用其中最新的完整检查点。"
            if spec.paths.adapter_dir is None else ""))


def how_to_train(spec, run_dir: Path | None = None) -> str:
    """How to train the adapter a command looked for in ``run_dir`` (default: the spec's run folder): the command,
    and notebook 04 only where it trains that very run (the profile's own folder and config)."""
    folder = Path(run_dir if run_dir is not None else spec.paths.run_dir)
    blocking = blocking_file(folder)
    if blocking is not None:   # no training can write there either: the folder is what to change
        return (f"而且 {display_path(blocking)} 是文件，不是文件夹，训练也写不进去：请换一个文件夹作工作目录"
                f"（python -m helpers.environment setup --workspace <文件夹>{and_unset('workspace')}）"
                "或运行目录（--output-dir）。")
    own = "" if folder == spec.own_run_dir else \
        f" --output-dir {shell_path(folder)}"   # a run folder of the learner's: train into that one
    notebook_04 = not own and spec.config_file.resolve() == (CONFIG_DIR / f"{spec.profile.train_config}.yaml").resolve()
    return how_to_make("04-train.ipynb" if notebook_04 else None,
                       f"python -m helpers.train --config {shell_path(spec.config_file)}{own}")


def _named_by_setting(spec, checkpoint) -> tuple[str, str]:
    """("（adapter_dir，来自 …）", the way back) when the adapter_dir setting named the folder, else ("", ""):
    where a wrong folder came from, and how to return to the learner's own adapter."""
    if checkpoint is None and "adapter_dir" in spec.origin:
        return f"（adapter_dir，来自 {spec.origin['adapter_dir']}）", ADAPTER_WAY_BACK
    return "", ""


def named_adapter_folder(spec, checkpoint: str | Path | None = None) -> Path | None:
    """The adapter folder ``checkpoint`` or the adapter_dir setting names (None: neither), refused at once when it is
    missing or a file; nothing is read or hashed, so a command can check it before a model download."""
    chosen = named_path(checkpoint) if checkpoint is not None else spec.paths.adapter_dir
    if checkpoint is not None and not chosen.exists() and (spec.paths.run_dir / checkpoint).exists():
        chosen = spec.paths.run_dir / checkpoint    # a checkpoint-N of this run, named by itself
    setting, way_back = _named_by_setting(spec, checkpoint)
    if chosen is not None and not chosen.exists():
        raise _missing_adapter(spec, chosen, bool(setting))
    if chosen is not None and chosen.is_file():
        unpack = "（这是压缩包：先解压，例如用 `unzip`，再指定解压出来的文件夹）" \
            if chosen.suffix in (".zip", ".gz", ".tar", ".tgz") else ""
        raise MissingArtifactError(f"{display_path(chosen)}{setting} 是文件，不是适配器文件夹{unpack}：请指定存有 "
                                   f"adapter_config.json 和 adapter_model.safetensors 的文件夹{way_back}。")
    return chosen


def resolve_checkpoint(spec, checkpoint: str | Path | None = None) -> tuple[Path, list[str]]:
    """The adapter to load and any notes: ``checkpoint``, else the spec's adapter folder, else the run's latest.

    A given folder may be a ``checkpoint-N`` or a run folder holding several (its latest good one is
    used). A damaged checkpoint is named with its damaged file and the previous complete one is used.
    """
    chosen = named_adapter_folder(spec, checkpoint)
    folder = chosen if chosen is not None else spec.paths.run_dir
    setting, way_back = _named_by_setting(spec, checkpoint)
    if chosen is not None:
        if (chosen / "adapter_config.json").is_file():
            marked = (chosen / COMPLETE_MARKER).is_file()
            if not (marked or is_checkpoint_name(chosen)):   # a plain adapter folder (shared, copied): its files
                problem = unmarked_adapter_problem(chosen)
                if problem is not None:
                    raise CheckpointError(f"{display_path(chosen)} 不是完整的适配器：{problem}。请重新复制这个适配器"
                                          "文件夹（adapter_config.json 和 adapter_model.safetensors）。")
                return chosen, []
            problem = damaged_file(chosen)   # a checkpoint-N written by training must prove itself
            if problem is None:
                return chosen, []
            note = f"跳过 {display_path(chosen)}：{problem}"
            earlier = [c for c in checkpoints_in(chosen.parent)
                       if is_checkpoint_name(chosen) and
                       checkpoint_step(c) < checkpoint_step(chosen)]
            for candidate in reversed(earlier):
                if damaged_file(candidate) is None:
                    return candidate, [note, f"改用前一个完整的检查点 {display_path(candidate)}"]
            if not marked and unmarked_adapter_problem(chosen) is None:
                # an adapter handed over as its two files, in a folder still named checkpoint-N: nothing to fall
                # back to, and safetensors itself proves the weights whole
                return chosen, [f"{display_path(chosen)} 没有完成标记 {COMPLETE_MARKER}（大概只复制了适配器文件？）："
                                "它的 adapter_model.safetensors 是完整的，所以按原样加载"]
            raise CheckpointError(f"{display_path(chosen)} 已损坏：{problem}；旁边没有更早的完整检查点"
                                  "可以改用。")
    found = latest_good_checkpoint(folder)
    if found.checkpoint is None:
        if chosen is not None:
            whole = "这是一个完整的模型（例如合并导出的），用 from_pretrained 或 vLLM 直接加载它，不用当适配器" \
                if (chosen / "config.json").is_file() else "不是 LoRA 适配器文件夹"
            raise MissingArtifactError(
                f"{display_path(chosen)}{setting} 里既没有 adapter_config.json，也没有完整的 checkpoint-N：{whole}{way_back}。")
        raise MissingArtifactError(f"{display_path(folder)} 里没有完整的 LoRA 检查点。"
                                   + how_to_train(spec, folder))
    notes = found.notes()
    if notes:
        notes.append(f"改用 {display_path(found.checkpoint)}")
    return found.checkpoint, notes



# --------------------------------------------------------------------------- the run lock


def lock_run(run_dir: Path, elsewhere: str = "，或者训练到另一个文件夹（--output-dir）"):
    """An acquired lock on ``run_dir`` (use as a context manager), or :class:`RunLockedError` at once; ``elsewhere``:
    the message's way round the lock, for a command that has one.

    ``filelock`` uses the operating system's lock, so a killed process leaves no stale lock.
    """
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    course_folder(run_dir.parent, whole=False)
    lock_path = run_dir.with_name(run_dir.name + LOCK_FILE)   # beside the run: moving the run aside keeps it
    owner = lock_path.with_name(lock_path.name + ".pid")
    record_made(lock_path)
    record_made(owner)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        pid = owner.read_text(encoding="utf-8").strip() if owner.is_file() else ""
        who, stop = (f"进程 {pid} ", f"（kill {pid}）") if pid.isdigit() else ("另一个进程", "")
        raise RunLockedError(
            f"{display_path(run_dir)} 正被{who}用于训练（它持有这个运行目录的锁）。等它结束，或者停掉它{stop}"
            f"{elsewhere}。") from None
    owner.write_text(str(os.getpid()), encoding="utf-8")
    return lock


# --------------------------------------------------------------------------- starting fresh


def move_aside(run_dir: Path) -> tuple[Path | None, list[Path]]:
    """Move an earlier run to ``<name>-previous-<time>`` (nothing is deleted at first).

    Of those earlier runs the newest ``KEEP_PREVIOUS_RUNS`` stay; older ones are removed (each holds
    checkpoints of about 0.8 GB for Qwen3-8B). Returns (where the run went, removed runs).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not [p for p in run_dir.iterdir() if p.name != MADE_MARKER]:
        return None, []   # nothing in it (a refused start left only the marker): no "earlier run" to keep
    # a folder the course trained into: marked so, or (written before the marks) holding its checkpoints
    if not (is_course_made(run_dir) or any(is_checkpoint_name(p) for p in run_dir.iterdir())
            or (run_dir / "run_summary.json").is_file()):
        raise UnsafeWriteError(f"{display_path(run_dir)} 里有不是课程创建的文件，所以不会把它移到一旁："
                               f"请训练到另一个文件夹（例如 --output-dir {shell_path(run_dir.with_name(run_dir.name + '-run'))}）。")
    target = run_dir.with_name(f"{run_dir.name}-previous-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}-previous-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
        suffix += 1
    run_dir.rename(target)
    previous = sorted(run_dir.parent.glob(f"{run_dir.name}-previous-*"), key=lambda p: p.stat().st_mtime)
    previous = [p for p in previous if is_course_made(p) and not unlisted(p)]   # a learner's file inside: kept
    removed = previous[:-KEEP_PREVIOUS_RUNS]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return target, removed


# --------------------------------------------------------------------------- no machine paths in what is shared


def share_safe_adapter_config(folder: Path, base_model: str) -> None:
    """Replace the machine path PEFT wrote as ``base_model_name_or_path`` (in ``adapter_config.json`` and the
    model card ``README.md``) with the hub id or a workspace path.

    Done after saving, not by renaming the model before training: PEFT reads the base model's config
    from that name at every save, and a name that is no local folder would send it to the Hub.
    """
    path = Path(folder) / "adapter_config.json"
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        machine_path = config.get("base_model_name_or_path")
        config["base_model_name_or_path"] = base_model
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        card = Path(folder) / "README.md"
        if machine_path and machine_path != base_model and card.is_file():
            card.write_text(card.read_text(encoding="utf-8").replace(machine_path, base_model), encoding="utf-8")


class _BestByName(logging.Filter):
    """Drops transformers' resume warning that the best checkpoint "does not exist anymore" when the state names it
    by the bare folder name :func:`share_safe_trainer_state` wrote: transformers looks for that name in the working
    directory, and ``train.CheckpointComplete`` finds it in the run folder again."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not re.match(r"The best checkpoint checkpoint-\d+ recorded in the resumed state", record.getMessage())


logging.getLogger("transformers.trainer").addFilter(_BestByName())


def share_safe_trainer_state(folder: Path) -> None:
    """``trainer_state.json`` names the best checkpoint by its folder name, not by a machine path."""
    path = Path(folder) / "trainer_state.json"
    if path.is_file():
        state = json.loads(path.read_text(encoding="utf-8"))
        best = state.get("best_model_checkpoint")
        if best and Path(best).is_absolute():
            state["best_model_checkpoint"] = Path(best).name
            path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
