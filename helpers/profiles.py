"""Course profiles: which model the very same notebook code drives.

``full`` and ``small`` download the real Qwen3-8B / Qwen3-0.6B; ``tiny`` pairs the real Qwen3
tokenizer with a tiny random Qwen3 (CPU, offline); ``random8b`` is the real Qwen3-8B architecture
with random weights, for GPU smoke tests and benchmarks where the weights cannot be downloaded
(throughput does not depend on values). ``auto`` (the default, :mod:`helpers.spec`) picks ``full``
with CUDA, else ``tiny``. Every profile ends up as a model directory with ``config.json`` and the
tokenizer, so later notebooks load it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .settings import PROFILE_ENV, SpecError
from .workspace import display_path


@dataclass(frozen=True)
class Profile:
    """What one profile uses: model source, precision, data and training sizes."""

    name: str
    description: str
    #: ``"modelscope"`` (download), ``"tiny"`` (build a tiny model) or ``"config-only"``
    #: (write the Qwen3-8B config; weights are drawn at random when loaded)
    source: str
    dtype: str
    device_map: str | None = None
    #: folder name of a built model directory under ``workspace/models`` (not a downloaded one)
    model_dirname: str = ""
    #: the training config (``configs/train/<name>.yaml``) whose numbers this profile uses
    train_config: str = "qwen3-8b"
    #: the profile whose training configs this one may run (``random8b`` runs the ``full`` recipe)
    recipe_of: str = ""
    #: the Qwen3 size (a key of ``models.QWEN3_SHAPES``) whose architecture the profile loads
    model: str = "Qwen3-8B"
    #: whether the profile is meant for a GPU only (its CPU path is not a course path)
    needs_gpu: bool = False
    #: the dtype on a machine without CUDA ("" keeps ``dtype``)
    cpu_dtype: str = ""

    @property
    def recipe(self) -> str:
        return self.recipe_of or self.name

    @property
    def model_id(self) -> str:
        """The ModelScope / Hugging Face id of the real model (``Qwen/Qwen3-8B``)."""
        return f"Qwen/{self.model}"

    @property
    def weights(self) -> str:
        """``"pretrained"`` (load the directory's weights) or ``"random"``."""
        return "random" if self.source == "config-only" else "pretrained"


PROFILES: dict[str, Profile] = {
    "full": Profile(
        name="full",
        description="从 ModelScope 下载的 Qwen/Qwen3-8B，bf16（需要约 24 GB 显存的 GPU；16 GB 用 QLoRA）",
        source="modelscope",
        dtype="bfloat16",
        device_map="auto",
        needs_gpu=True,
    ),
    "small": Profile(
        name="small",
        description="从 ModelScope 下载的真实 Qwen/Qwen3-0.6B（笔记本电脑 CPU 或 6–8 GB 显存的 GPU；回答是真正的中文）",
        source="modelscope",
        dtype="bfloat16",
        device_map="auto",
        train_config="qwen3-0.6b",
        model="Qwen3-0.6B",
        cpu_dtype="float32",
    ),
    "tiny": Profile(
        name="tiny",
        description="真实的 Qwen3 分词器 + 随机初始化的迷你 Qwen3（CPU、离线、几分钟）",
        source="tiny",
        dtype="float32",
        model_dirname="tiny-qwen3",
        train_config="tiny",
    ),
    "random8b": Profile(
        name="random8b",
        description="真实的 Qwen3-8B 结构 + 随机 bf16 权重（GPU 冒烟测试与性能基准）",
        source="config-only",
        dtype="bfloat16",
        model_dirname="Qwen3-8B-random",
        recipe_of="full",
        needs_gpu=True,
    ),
}


def choose_profile(requested: str | None, file_profile: str | None, *, cuda: bool,
                   requested_origin: str = PROFILE_ENV, config_file: Path | None = None) -> tuple[Profile, str]:
    """The precedence rule for the profile. Returns (profile, why)."""
    requested = (requested or "").strip().lower() or None
    if requested is not None and requested != "auto" and requested not in PROFILES:
        raise SpecError(f"{requested_origin}={requested!r} 不是已知的 profile。可选：{'、'.join([*PROFILES, 'auto'])}。")
    if file_profile is not None:
        if file_profile not in PROFILES:
            raise SpecError(f"{display_path(config_file)}：未知的 profile {file_profile!r}。可选：{'、'.join(PROFILES)}。")
        if requested in (None, "auto") or requested == file_profile:
            return PROFILES[file_profile], f"由训练配置 {display_path(config_file)} 指定"
        if PROFILES[requested].recipe == file_profile:
            return PROFILES[requested], (f"{requested_origin}={requested}（使用 {file_profile} 的训练配方 "
                                         f"{display_path(config_file)}）")
        raise SpecError(f"{requested_origin}={requested} 与 {display_path(config_file)} 矛盾：这个文件写的是 profile: "
                        f"{file_profile}。请改用为 {requested} 准备的配置 configs/train/"
                        f"{PROFILES[requested].train_config}.yaml，或者取消 {requested_origin}。")
    if requested in (None, "auto"):
        profile = PROFILES["full" if cuda else "tiny"]
        why = "auto: 找到 CUDA GPU" if cuda else "auto: 没有 CUDA GPU，tiny 档位在 CPU 上运行同样的代码"
        return profile, why
    return PROFILES[requested], f"由 {requested_origin}={requested} 指定"
