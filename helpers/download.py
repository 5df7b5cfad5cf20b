"""Notebook 01: get the model directory for the active profile.

* ``full``     downloads Qwen/Qwen3-8B from ModelScope (after a free-disk check).
* ``tiny``     builds a tiny random Qwen3 with the real, offline Qwen3 tokenizer.
* ``small``    downloads Qwen/Qwen3-0.6B the same way (bf16 weights: about 1.2 GB by its parameter count).
* ``random8b`` writes the real Qwen3-8B config (weights are drawn when loaded).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .data_files import course_dataset_path
from .errors import ArgumentParser, CourseError, run_cli
from .models import (
    QWEN3_GENERATION_CONFIG,
    TOKENIZER_FILES,
    check_model_files,
    offline_tokenizer_dir,
    qwen3_config,
    qwen3_counts,
    require_model_dir,
    verify_tokenizer_files,
    weights_present,
)
from .profiles import PROFILES
from .settings import and_unset
from .spec import build_spec
from .workspace import (
    UnsafeWriteError,
    atomic_folder,
    check_disk_space,
    course_folder,
    display_path,
)

#: the key of :func:`disk_budget_gb`'s sum
BUDGET_TOTAL = "合计"


def weights_gb(model: str = "Qwen3-8B") -> float:
    """A Qwen3 size's bf16 weights in GB (2 bytes per parameter, from its shape)."""
    return round(qwen3_counts(model)["params"] * 2 / 1e9, 1)


def disk_budget_gb(model_present: bool = False, model: str = "Qwen3-8B") -> dict[str, float]:
    """Disk the course needs on the workspace's disk for one Qwen3 size, part by part (GB, from its shape).

    The weights are bf16 (2 bytes per parameter); a checkpoint holds the fp32 LoRA weights and Adam's two
    moments (12 bytes per LoRA parameter: ~0.26 GB for Qwen3-8B), and ``save_total_limit`` (3) are kept for
    each of the last 3 runs (the current one + 2 moved aside); the merged export is written once more.
    """
    counts, weights = qwen3_counts(model), weights_gb(model)
    parts = {
        f"{model} 权重（bf16 safetensors）": 0.0 if model_present else weights,
        "检查点（保留 3 个 × 最多 3 次运行）": round(3 * 3 * counts["lora_params"] * 12 / 1e9, 2),
        "合并导出的模型": weights,
        "余量": 2.0,
    }
    parts[BUDGET_TOTAL] = round(sum(parts.values()), 1)
    return parts


#: The tiny model: Qwen3 with the real vocabulary but a very small body.
TINY_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
}


class DownloadError(CourseError, RuntimeError):
    """The download failed (usually: no network to ModelScope)."""


def copy_tokenizer_files(target: Path) -> None:
    """Copy the verified offline Qwen3 tokenizer files into ``target``."""
    source = offline_tokenizer_dir()
    verify_tokenizer_files(source)
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, target / name)


def build_tiny_model(target: Path, seed: int = 1234, overwrite: bool = False) -> Path:
    """Build the tiny random Qwen3 and save it, with the real tokenizer, as a model directory."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    target = Path(target)
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file() and not overwrite:
        return target
    if (target / "config.json").is_file() and not overwrite:   # a finished tiny build always has its weights
        raise UnsafeWriteError(f"{display_path(target)} 里已有别的模型（有 config.json，却没有 tiny 模型的权重），"
                               "tiny 模型不会建在它上面：请给 tiny 模型换一个单独的文件夹。")
    config = {k: v for k, v in qwen3_config().items() if k not in ("architectures", "model_type")}
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**{**config, **TINY_CONFIG, "pad_token_id": 151643}))
    with torch.no_grad():
        # With the usual std 0.02 a 128-wide model cannot produce confident logits, so its loss would stay
        # near ln(151936) = 11.9 even after it has memorised its answers; 0.2 lets LoRA drive the loss
        # towards zero, so the curve tells the truth.
        model.lm_head.weight.normal_(0.0, 0.2)
    model.generation_config = GenerationConfig(**QWEN3_GENERATION_CONFIG)
    with atomic_folder(target) as partial:
        model.save_pretrained(partial)
        copy_tokenizer_files(partial)
    return target


def write_config_dir(target: Path, model: str = "Qwen3-8B") -> Path:
    """Write a Qwen3 size's config, generation config and tokenizer (no weights: they are drawn when loaded)."""
    target = course_folder(target)
    config = dict(qwen3_config(model), torch_dtype="bfloat16")
    (target / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (target / "generation_config.json").write_text(json.dumps(QWEN3_GENERATION_CONFIG, indent=2), encoding="utf-8")
    copy_tokenizer_files(target)
    return target


def download_folder(target: Path, workspace: Path, model: str = "Qwen3-8B") -> Path:
    """The folder to download ``Qwen/<model>`` into, made and marked as the course's (so ``make reset-all``
    may remove it), after checking the disk has room for the model, its checkpoints and its export."""
    check_disk_space(disk_budget_gb(weights_present(target), model)[BUDGET_TOTAL], workspace, and_unset("workspace"))
    return course_folder(target)


def download_qwen3(target: Path, workspace: Path, model: str = "Qwen3-8B", revision: str = "master") -> Path:
    """Download a Qwen3 size (``Qwen/<model>``) from ModelScope into ``target``, after a free-disk check
    (with ModelScope's progress bars)."""
    from modelscope import snapshot_download

    download_folder(target, workspace, model)
    model_id = f"Qwen/{model}"
    try:
        path = snapshot_download(model_id, local_dir=str(target), revision=revision)
    except Exception as err:  # network errors come in many types
        raise DownloadError(
            f"无法从 ModelScope 下载 {model_id}（{type(err).__name__}: {err}）。"
            "请检查网络（AutoDL 上先 `source /etc/network_turbo` 可能有帮助），或者在别处下好模型，"
            "把 QWEN3_TUTORIAL_MODEL_DIR 设为那个文件夹。"
            "没有 GPU 或网络时，改用 tiny 档位：python -m helpers.download --profile tiny（笔记本里："
            "python -m helpers.environment setup --profile tiny）。"
        ) from err
    return Path(path)


def needs_download(spec) -> bool:
    """True when the spec's model comes from ModelScope and its folder (the course's own) has no weights yet."""
    return (spec.profile.source == "modelscope" and "model_dir" not in spec.given
            and not weights_present(spec.paths.model_dir))


def model_ready(spec) -> bool:
    """Whether the spec's model directory is as :func:`prepare_model` leaves it: the tiny model's weights (built
    whole in a ``.partial`` folder), a written config and all tokenizer files, or the downloaded weights and the
    tokenizer. The other processes of a launch wait for this while process 0 prepares the folder."""
    target = spec.paths.model_dir
    if not (target / "config.json").is_file():    # what from_pretrained reads first, whatever the source
        return False
    if spec.profile.source == "tiny":
        return (target / "model.safetensors").is_file()
    if spec.profile.source == "config-only":
        return all((target / name).is_file() for name in TOKENIZER_FILES)
    return weights_present(target) and all((target / name).is_file() for name in TOKENIZER_FILES[:2])


def prepare_model(spec) -> Path:
    """Make the spec's model directory exist (build, write or download it); return its path."""
    target = spec.paths.model_dir
    source = spec.profile.source
    if model_ready(spec):   # complete already: never rebuilt or rewritten (other processes of a launch may read it)
        return require_model_dir(spec) if source == "modelscope" else target   # and the profile's Qwen3 size
    if source == "modelscope":
        if "model_dir" in spec.given:
            path = require_model_dir(spec)  # the user's own folder (its weights checked): never download over it
            check_model_files(path, origin=spec.origin["model_dir"])
            return path
        return download_qwen3(target, spec.paths.workspace, spec.profile.model)
    if source == "tiny":
        return build_tiny_model(target)
    if source == "config-only":
        return write_config_dir(target, spec.profile.model)
    raise ValueError(f"profile {spec.profile.name!r} 的来源 {source!r} 未知")


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.download``: the profile's dataset and model directory (notebook 01's job)."""
    parser = ArgumentParser(prog="python -m helpers.download",
                                     description="准备 profile 的数据集，再下载（full、small）、构建（tiny）"
                                                 "或写出（random8b）它的模型目录。")
    parser.add_argument("--profile", help=f"{' | '.join([*PROFILES, 'auto'])}（默认：设置文件 / 环境变量）")
    parser.add_argument("--config", help="按这个训练配置的档位准备")
    parser.add_argument("--debug", action="store_true", help="显示完整的 traceback")
    args = parser.parse_args(argv)

    def work() -> int:
        spec = build_spec(args.config, profile=args.profile)
        print(spec.describe())
        budget = disk_budget_gb(weights_present(spec.paths.model_dir), spec.profile.model)
        if spec.profile.source == "modelscope":
            print("磁盘预算（GB）：" + "，".join(f"{k} {v}" for k, v in budget.items()))
        if "model_dir" in spec.given:  # the user's own model folder: check it before anything is fetched
            print(f"模型目录已就绪：{display_path(prepare_model(spec))}")
        print(f"数据集已就绪：{display_path(course_dataset_path(spec))}")   # 0.9 MB, before the 16.4 GB
        if "model_dir" not in spec.given:
            print(f"模型目录已就绪：{display_path(prepare_model(spec))}")
        return 0

    return run_cli(work, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
