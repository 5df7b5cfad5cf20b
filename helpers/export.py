"""Notebook 05's last step: fold the LoRA adapter into the base model and save a plain model folder.

:func:`export_merged` merges with PEFT's ``merge_and_unload`` into a fresh bf16 copy of the base and saves
a model directory that any runtime (vLLM, llama.cpp, ...) loads; ``python -m helpers.inference export``
runs it from a shell.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path

from .checkpoints import read_recipe, resolve_checkpoint, spec_as_trained
from .errors import CourseError, run_cli
from .models import (
    check_adapter_fits,
    ensure_random_weights,
    load_base_model,
    load_tokenizer,
    require_model_dir,
)
from .workspace import (
    CREATED,
    WHOLE,
    atomic_folder,
    blocking_file,
    clear_course_files,
    display_path,
    is_course_made,
    made_names,
    refuse_foreign_partial,
    refuse_working_folder,
    repo_path,
    shell_path,
    write_marker,
)

EXPORT_MARKER = "course_export.json"
#: what an export written before the course marked its folders holds (all of it made again by export)
EXPORT_FILES = ("model*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                "added_tokens.json", "chat_template.jinja", EXPORT_MARKER)


class ExportTargetError(CourseError, ValueError):
    """The export folder holds something this course did not write."""


def check_export_target(target: Path, protected: list[Path]) -> None:
    """Refuse a target that is not empty and not a previous export of this course, or that holds our inputs."""
    target = refuse_working_folder(target).resolve()
    for path in protected:
        path = Path(path).resolve()
        if target == path or target in path.parents or path in target.parents:
            raise ExportTargetError(f"不能导出到 {display_path(target)}：它与 {display_path(path)} 重叠，"
                                    "而导出要读取那里（检查点或基座模型）。")
    blocking = blocking_file(target)
    if blocking is not None:
        below = "" if blocking == target else f"：无法在它下面导出 {display_path(target)}"
        raise ExportTargetError(f"{display_path(blocking)} 是文件，不是文件夹{below}。请另选一个导出文件夹。")
    entries = list(target.iterdir()) if target.exists() else []
    # a folder the course made that holds only the learner's files: an export that failed after the old one was
    # cleared, or one a reset emptied around a NOTES.md (a folder that holds other course folders, such as the
    # workspace's export/, is no export)
    names = made_names(target) or set()
    failed_export = CREATED in names and WHOLE not in names and not any(is_course_made(entry) for entry in entries)
    if entries and not (target / EXPORT_MARKER).is_file() and not failed_export:
        raise ExportTargetError(
            f"{display_path(target)} 不是空的，也不是本课程导出的（没有 {EXPORT_MARKER}）：没有做任何改动。"
            "请选一个空的或新的文件夹。")


def _base_for_merge(spec):
    """A fresh bf16 base model on the CPU for merging.

    Also for a QLoRA adapter: merging into 4-bit weights would round the LoRA update away and
    leave a 4-bit model, so PEFT's advice is to merge into a full-precision copy of the base.
    """
    import torch
    from transformers import AutoModelForCausalLM

    plain = spec.replace(quantization=None)
    if spec.profile.weights == "random":
        if spec.quantization:
            ensure_random_weights(spec)
        else:
            return load_base_model(plain, device="cpu")
    # the profile's own dtype (bf16 for Qwen3), not the GPU's: the merge runs on the CPU, and a T4 / V100 (fp16)
    # or a laptop (fp32) must not change what the exported model holds
    return AutoModelForCausalLM.from_pretrained(require_model_dir(spec), dtype=getattr(torch, plain.profile.dtype))


def export_merged(spec, checkpoint: str | Path | None = None, target: str | Path | None = None) -> Path:
    """Merge the LoRA checkpoint into a fresh copy of the base model and save a plain model directory.

    Writes safetensors weights, ``config.json``, ``generation_config.json``, the tokenizer and a marker
    into ``target`` (default ``spec.paths.export_dir``). An older course export in ``target`` is removed first (it can always be made again), so
    re-exporting never needs room for two 16 GB copies; a folder the course did not write is refused.
    """
    from peft import PeftModel

    path, notes = resolve_checkpoint(spec, checkpoint)
    spec, notes = spec_as_trained(spec, path, notes)
    for note in notes:
        print(note)
    target = repo_path(target) if target else spec.paths.export_dir
    check_export_target(target, [spec.paths.run_dir, path, spec.paths.model_dir])
    refuse_foreign_partial(target)
    # a previous course export goes first (it can always be made again: never two copies on disk);
    # a learner's own file in it (a NOTES.md) stays and is carried into the new export
    # merged in memory before anything is removed: a merge that fails (out of memory, Ctrl+C) keeps the old export
    base = _base_for_merge(spec)
    check_adapter_fits(base, path, read_recipe(path))
    merged = PeftModel.from_pretrained(base, path).merge_and_unload()
    clear_course_files(target, legacy=EXPORT_FILES)
    with atomic_folder(target) as partial:
        merged.save_pretrained(partial)   # safetensors, config.json and generation_config.json
        load_tokenizer(spec).save_pretrained(partial)
        write_export_marker(partial, path)
    return target


def write_export_marker(folder: Path, checkpoint: Path) -> None:
    """``course_export.json``: which adapter (and recipe) the merged model holds; marks the folder as the
    course's, naming what an export writes, so a later export may replace it and ``make reset`` removes it, and
    a learner's own file beside it (a NOTES.md) stays theirs."""
    folder = Path(folder)
    (folder / EXPORT_MARKER).write_text(json.dumps({"adapter": Path(checkpoint).name, **read_recipe(checkpoint)},
                                                   ensure_ascii=False, indent=1), encoding="utf-8")
    written = {p.name for p in folder.iterdir() if any(fnmatch.fnmatchcase(p.name, name) for name in EXPORT_FILES)}
    write_marker(folder, {CREATED, *written})


def export_recipe(folder: str | Path) -> dict:
    """The recipe a course export holds (its ``course_export.json``), ``{}`` for any other folder."""
    try:
        recipe = json.loads((Path(folder) / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recipe if isinstance(recipe, dict) else {}


def vllm_command(export_dir: Path) -> str:
    """The command that serves an exported model with vLLM (printed, not run here)."""
    return (f"vllm serve {shell_path(export_dir)} --served-model-name huanhuan "
            "--max-model-len 8192 --reasoning-parser qwen3 --host 127.0.0.1")


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.export`` is not the command (exporting is part of notebook 05's twin): say which one is."""

    def work() -> int:
        raise CourseError("合并导出的命令是 `python -m helpers.inference export`（加 --help 看它的参数）；"
                          "python -m helpers.export 本身不做任何事。")

    return run_cli(work, debug="--debug" in (sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
