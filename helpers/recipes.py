"""Which training recipe fits my GPU: memory estimates and the recipe table.

Every figure here is an ESTIMATE from a formula (weights + LoRA states + activations +
logits), not a measurement, until the GPU check under ``bench/`` has measured it on a real card;
``fit_table(measured=...)`` then puts the measured peak next to the estimate.

One function, :func:`choose_recipe`, drives notebook 04's "does it fit" cell and
``python -m helpers.train --recipe auto``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import qwen3_counts
from .settings import SpecError

#: Qwen3-8B's shape (params, lora_params, embedding_params, hidden, layers, vocab), from the course's shape table
QWEN3_8B = qwen3_counts("Qwen3-8B")
#: tokens in a micro-batch of the course data (4 rows of up to 254 tokens; the p99 row is ~150)
TOKENS_PER_ROW = 254
#: headroom on top of the estimate: CUDA context, allocator fragmentation (~1.5 GB)
CUDA_OVERHEAD_GB = 1.5
GPU_SIZES_GB = (12, 16, 24, 32, 40, 48, 80)
#: the weights entry of a QLoRA estimate
QLORA_WEIGHTS = "weights (4-bit NF4 linear + fp32 embeddings/lm_head)"


def estimate_lora_memory_gb(
    params: float = QWEN3_8B["params"],
    lora_params: float = QWEN3_8B["lora_params"],
    hidden: int = QWEN3_8B["hidden"],
    layers: int = QWEN3_8B["layers"],
    vocab: int = QWEN3_8B["vocab"],
    tokens_per_micro_batch: int = 4 * TOKENS_PER_ROW,
    gradient_checkpointing: bool = True,
    quantization: str | None = None,
    embedding_params: float = QWEN3_8B["embedding_params"],
) -> dict[str, float]:
    """Rough GPU memory (GB) for LoRA training; an estimate, not a measurement.

    * weights: 2 bytes per frozen parameter (bf16). With ``quantization="nf4"`` (QLoRA) the linear
      layers take 0.5 byte plus ~0.127 bit of double-quantised constants per weight (NF4, blocks of 64:
      one 8-bit absmax per block and one fp32 constant per 256 blocks). bitsandbytes leaves the
      embeddings and ``lm_head`` as loaded (bf16), and ``peft.prepare_model_for_kbit_training`` then
      casts every parameter that is not 4-bit to fp32: 4 bytes each for those two;
    * LoRA: fp32 weights + gradients + two Adam moments = 16 bytes per trainable parameter;
    * activations: with checkpointing only each layer's input is kept (hidden values per token per
      layer: 2 bytes in bf16, 4 under QLoRA, whose fp32 embeddings make the residual stream fp32) plus
      one layer being recomputed; without it about 34 x hidden bytes per token per layer;
    * logits: the fp32 logits and their gradient (8 bytes x vocab per token).
    """
    tokens = tokens_per_micro_batch
    per_layer_full = 34 * hidden * tokens
    kept = 4 if quantization == "nf4" else 2
    if gradient_checkpointing:
        activations = kept * hidden * tokens * layers + per_layer_full
    else:
        activations = per_layer_full * layers
    if quantization == "nf4":
        linear = params - embedding_params
        weights = linear * (0.5 + 0.127 / 8) + embedding_params * 4
    else:
        weights = params * 2
    out = {
        QLORA_WEIGHTS if quantization == "nf4" else "weights (bf16)": weights,
        "LoRA weights + grads + Adam (fp32)": lora_params * 16,
        "activations": activations,
        "logits + grad (fp32)": 8 * vocab * tokens,
    }
    out = {k: v / 1e9 for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


@dataclass(frozen=True)
class Recipe:
    """One way to train Qwen3-8B with LoRA on one GPU."""

    name: str
    config: str                 # configs/train/<config>.yaml
    quantization: str | None
    activation_checkpointing: bool
    micro_batch: int
    #: estimated speed relative to bf16 LoRA with checkpointing, micro-batch 4 (estimate: checkpointing
    #: recomputes the forward, ~1.33x the work; 4-bit dequantisation costs ~1.3-1.5x on Ampere/Hopper)
    relative_speed: float
    note: str = ""

    @property
    def settings(self) -> list[str]:
        """``--set`` overrides that turn the base config into this recipe."""
        return [f"training.activation_checkpointing={str(self.activation_checkpointing).lower()}",
                f"training.per_device_train_batch_size={self.micro_batch}",
                f"training.gradient_accumulation_steps={max(1, 16 // self.micro_batch)}"]

    @property
    def config_path(self) -> str:
        return f"configs/train/{self.config}.yaml"

    def estimate_gb(self) -> float:
        parts = estimate_lora_memory_gb(tokens_per_micro_batch=self.micro_batch * TOKENS_PER_ROW,
                                        gradient_checkpointing=self.activation_checkpointing,
                                        quantization=self.quantization)
        return round(parts["total"] + CUDA_OVERHEAD_GB, 1)


#: from the most to the least memory-hungry; ``choose_recipe`` takes the fastest that fits
RECIPES = (
    Recipe("bf16 LoRA, no checkpointing, micro-batch 16", "qwen3-8b", None, False, 16, 1.45,
           "fastest: no recomputation, 16 x 1 micro-batches"),
    Recipe("bf16 LoRA, no checkpointing, micro-batch 4", "qwen3-8b", None, False, 4, 1.3),
    Recipe("bf16 LoRA, checkpointing, micro-batch 16", "qwen3-8b", None, True, 16, 1.1),
    Recipe("bf16 LoRA, checkpointing, micro-batch 4", "qwen3-8b", None, True, 4, 1.0, "the course default"),
    Recipe("QLoRA 4-bit, checkpointing, micro-batch 16", "qwen3-8b-qlora", "nf4", True, 16, 0.8),
    Recipe("QLoRA 4-bit, checkpointing, micro-batch 4", "qwen3-8b-qlora", "nf4", True, 4, 0.7,
           "for 12-16 GB cards"),
)


def fits(recipe: Recipe, gpu_gb: float, margin: float = 0.9) -> bool:
    """Whether the estimate fits in ``margin`` of the card (10% kept free for spikes)."""
    return recipe.estimate_gb() <= gpu_gb * margin


def choose_recipe(gpu_gb: float | None) -> tuple[Recipe | None, str]:
    """The fastest recipe whose estimate fits ``gpu_gb``, and why (Chinese, for the learner)."""
    if gpu_gb is None:
        return None, "没有检测到 CUDA GPU：Qwen3-8B 的配方都需要 GPU（CPU 上请用 tiny 配置）。"
    for recipe in sorted(RECIPES, key=lambda r: -r.relative_speed):
        if fits(recipe, gpu_gb):
            return recipe, (f"{gpu_gb:.0f} GB 可用显存：选择 “{recipe.name}”，估计峰值 {recipe.estimate_gb()} GB"
                            f"（≤ 显存的 90%），估计相对速度 {recipe.relative_speed:.2f}x。更快的配方估计放不下。")
    smallest = min(RECIPES, key=Recipe.estimate_gb)
    return None, (f"{gpu_gb:.0f} GB 可用显存放不下任何配方：最小的 “{smallest.name}” 估计要 {smallest.estimate_gb()} GB。"
                  "请换一张更大的显卡。")


#: Peak ``torch.cuda.max_memory_allocated`` (GB = 1e9 bytes) measured on one NVIDIA H200 with the random8b
#: profile (the real Qwen3-8B architecture) on rows of the real dataset: bench/results/gpu_check.log
#: (the course recipe's MemoryLog lines: 16.43 GiB) and bench/results/gpu_check_recipes.json (18.4 and
#: 31.0 GiB). Tensors only: the CUDA context and the allocator's slack (~1-2 GB) come on top. QLoRA was
#: not measured (the check's time guard skipped it).
MEASURED_GB = {
    "bf16 LoRA, checkpointing, micro-batch 4": 17.6,
    "bf16 LoRA, checkpointing, micro-batch 16": 19.8,
    "bf16 LoRA, no checkpointing, micro-batch 16": 33.3,
}


def fit_table(sizes=GPU_SIZES_GB, measured: dict[str, float] | None = None) -> str:
    """Markdown table: which recipe fits which card (estimates; measured peaks where known)."""
    measured = MEASURED_GB if measured is None else measured
    head = "| 配方 | 估计峰值 GB | 实测峰值 GB | 相对速度（估计） | " + " | ".join(f"{g} GB" for g in sizes) + " |"
    lines = [head, "|" + "---|" * (4 + len(sizes))]
    for recipe in RECIPES:
        cells = ["✓" if fits(recipe, g) else "✗" for g in sizes]
        lines.append(f"| {recipe.name} | {recipe.estimate_gb()} | {measured.get(recipe.name, '未测')} | "
                     f"{recipe.relative_speed:.2f}x | " + " | ".join(cells) + " |")
    choice = ["| **auto 选择** | | | | " + " | ".join(
        (r.name.split(",")[0] + (" ckpt" if r.activation_checkpointing else " 无ckpt") + f" mb{r.micro_batch}")
        if (r := choose_recipe(g)[0]) else "—" for g in sizes) + " |"]
    return "\n".join(lines + choice)


# --------------------------------------------------------------------------- python -m helpers.train --recipe auto


def auto_recipe(config: str | None, overrides: list[str], profile: str,
                gpu: dict | None = None) -> tuple[str | None, list[str], str]:
    """``--recipe auto``: (config, ``--set`` overrides, what was picked and why) for this machine.

    On a GPU: the fastest recipe whose estimate fits the FREE memory (:func:`choose_recipe`); its
    config unless ``--config`` was given, then its settings (quantization, checkpointing, micro-batch
    and accumulation), then the user's own ``--set`` values, which win. Without a GPU, or for the
    tiny profile, the given config is kept unchanged. Nothing fits: a :class:`~helpers.spec.SpecError`.
    """
    kept = config or f"（{profile} 的默认配置）"
    if gpu is None:
        return config, list(overrides), (f"--recipe auto: 没有检测到 CUDA GPU。配方表只适用于 GPU 上的 Qwen3-8B，"
                                          f"保留给定的配置 {kept}。")
    if profile == "tiny":
        return config, list(overrides), (f"--recipe auto: tiny profile 的模型很小，配方表只适用于 Qwen3-8B，"
                                          f"保留给定的配置 {kept}。")
    recipe, why = choose_recipe(gpu["free_gb"])
    seen = f"--recipe auto: {gpu['name']}，总显存 {gpu['memory_gb']:.1f} GB，空闲 {gpu['free_gb']:.1f} GB（按空闲显存选择）"
    if gpu["memory_gb"] - gpu["free_gb"] >= 2:
        seen += (f"\n  另有 {gpu['memory_gb'] - gpu['free_gb']:.1f} GB 被别的进程占用（常见的是上一个笔记本的内核，"
                 "nvidia-smi 能看到）：释放后也许能用更快的配方。")
    if recipe is None:
        raise SpecError(f"{seen}\n{why}")
    quantization = "nf4" if recipe.quantization else "null"
    chosen = [f"quantization={quantization}", *recipe.settings]
    lines = [seen, "  " + why, f"  训练配置: {config or recipe.config_path}"
             + ("（你给的 --config；这个配方自己的配置是 " + recipe.config_path + "）" if config else ""),
             "  配方的设置: " + " ".join(f"--set {item}" for item in chosen)]
    if overrides:
        lines.append("  你自己的 --set 优先: " + " ".join(f"--set {item}" for item in overrides))
    lines.append("  （这些都是估算，见 helpers/recipes.py 的 fit_table）")
    return config or recipe.config_path, [*chosen, *overrides], "\n".join(lines)
