"""Which training recipe fits my GPU: memory estimates and the recipe table.

Every recipe is judged on its WORST micro-batch (the longest rows together, :func:`worst_tokens`): by a
formula fitted to peaks measured on an H200, unless ``python -m bench.gpu_run`` has measured that worst
batch itself (``configs/recipe_measurements.json``). :func:`choose` drives notebook 04's "does it fit"
cell and ``python -m helpers.train --recipe auto``: measured speed first, then estimates, marked as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .models import qwen3_counts
from .settings import SpecError

#: The 32 longest rows of the course data (huanhuan.json, 3,729 rows) in tokens, the course's encoding (system
#: prompt, chat template, <|im_end|>), longest first; tests/test_recipes.py recomputes them from the real file.
#: A micro-batch counts ROWS, so its worst case is the longest rows together: 4 rows -> 965 tokens,
#: 16 rows -> 3,255 tokens (the mean row is 70.2 tokens: a mean micro-batch of 16 is ~1,120).
LONGEST_ROWS = (252, 252, 243, 218, 216, 210, 204, 197, 196, 190, 183, 183, 180, 179, 177, 175,
                174, 171, 169, 168, 168, 167, 167, 164, 164, 163, 162, 162, 162, 161, 161, 160)
#: headroom on top of the tensors: CUDA context, allocator fragmentation (~1.5 GB)
CUDA_OVERHEAD_GB = 1.5
#: the share of the card a recipe may plan to use (10% kept free for spikes)
MARGIN = 0.9
GPU_SIZES_GB = (12, 16, 24, 32, 40, 48, 80)
#: the weights entry of a QLoRA estimate
QLORA_WEIGHTS = "weights (4-bit NF4 linear + fp32 embeddings/lm_head)"
#: Bytes per token per layer, in units of ``hidden``, that one decoder layer keeps for its backward pass
#: (bf16 LoRA on all 7 projections, lora_dropout > 0). Fitted to the H200 peaks of micro-batch 16 with and
#: without checkpointing (bench/results/gpu_check_recipes.json: 18.4 and 31.0 GiB at ~1,165 tokens per
#: micro-batch): about 83 (the layer's own tensors, the fp32 RMSNorm copies, and the LoRA dropout copy and
#: mask of each projection's input).
LAYER_BYTES = 83
#: what ``lora_dropout: 0`` saves of them (an ESTIMATE: the dropout copies 3+1+2 x 2h + 2 x intermediate(=3h)
#: and their 1-byte masks, 27 x hidden in all)
DROPOUT_BYTES = 27
#: what Liger's RMSNorm and SwiGLU save of them (an ESTIMATE: no fp32 norm copies, SiLU recomputed)
LIGER_LAYER_SAVING = 16
#: Bytes per token per vocabulary entry for the logits: bf16 logits, their fp32 copy for the loss and the fp32
#: gradient, ~13 (fitted with LAYER_BYTES). Liger's fused linear cross-entropy never builds them: ~1 (chunks).
LOGIT_BYTES = 13
LIGER_LOGIT_BYTES = 1


def worst_tokens(micro_batch: int) -> int:
    """Tokens in the worst micro-batch the data can produce: the ``micro_batch`` longest rows together."""
    return sum(LONGEST_ROWS[:micro_batch])


def estimate_lora_memory_gb(
    model: str = "Qwen3-8B",
    tokens_per_micro_batch: int | None = None,
    gradient_checkpointing: bool = True,
    quantization: str | None = None,
    lora_dropout: bool = True,
    kernels: str | None = None,
) -> dict[str, float]:
    """GPU memory (GB, tensors only) for LoRA training of a Qwen3 size; an ESTIMATE, not a measurement.

    ``tokens_per_micro_batch`` defaults to the worst micro-batch of 4 rows (:func:`worst_tokens`).

    * weights: 2 bytes per frozen parameter (bf16). With ``quantization="nf4"`` (QLoRA) the linear
      layers take 0.5 byte plus ~0.127 bit of double-quantised constants per weight (NF4, blocks of 64:
      one 8-bit absmax per block and one fp32 constant per 256 blocks). bitsandbytes leaves the
      embeddings and ``lm_head`` as loaded (bf16), and ``peft.prepare_model_for_kbit_training`` then
      casts every parameter that is not 4-bit to fp32: 4 bytes each for those two;
    * LoRA: fp32 weights + gradients + two Adam moments = 16 bytes per trainable parameter;
    * activations: with checkpointing only each layer's input is kept (hidden values per token per
      layer: 2 bytes in bf16, 4 under QLoRA, whose fp32 embeddings make the residual stream fp32) plus
      one layer being recomputed; without it every layer keeps :data:`LAYER_BYTES` x hidden bytes per
      token (less :data:`DROPOUT_BYTES` without LoRA dropout, less :data:`LIGER_LAYER_SAVING` with Liger;
      x1.5 under QLoRA, an estimate);
    * logits: :data:`LOGIT_BYTES` x vocab per token (Liger's fused cross-entropy: :data:`LIGER_LOGIT_BYTES`).
    """
    counts = qwen3_counts(model)
    hidden, layers, embeddings = counts["hidden"], counts["layers"], counts["embedding_params"]
    tokens = worst_tokens(4) if tokens_per_micro_batch is None else tokens_per_micro_batch
    layer_bytes = LAYER_BYTES - (0 if lora_dropout else DROPOUT_BYTES) - (LIGER_LAYER_SAVING if kernels else 0)
    if quantization == "nf4":
        layer_bytes *= 1.5
    per_layer_full = layer_bytes * hidden * tokens
    kept = 4 if quantization == "nf4" else 2
    if gradient_checkpointing:
        activations = kept * hidden * tokens * layers + per_layer_full
    else:
        activations = per_layer_full * layers
    if quantization == "nf4":
        weights = (counts["params"] - embeddings) * (0.5 + 0.127 / 8) + embeddings * 4
    else:
        weights = counts["params"] * 2
    out = {
        QLORA_WEIGHTS if quantization == "nf4" else "weights (bf16)": weights,
        "LoRA weights + grads + Adam (fp32)": counts["lora_params"] * 16,
        "activations": activations,
        "logits + grad (fp32)": (LIGER_LOGIT_BYTES if kernels else LOGIT_BYTES) * counts["vocab"] * tokens,
    }
    out = {k: v / 1e9 for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


@dataclass(frozen=True)
class Recipe:
    """One way to train Qwen3-8B with LoRA on one GPU."""

    key: str                    # short, stable id (tests, JSON, bench/gpu_run.py)
    name: str
    config: str                 # configs/train/<config>.yaml
    quantization: str | None
    activation_checkpointing: bool
    micro_batch: int
    #: ESTIMATED speed relative to the course default (bf16, checkpointing, micro-batch 4); used only to rank
    #: recipes that have no measurement
    relative_speed: float
    kernels: str | None = None          # "liger": needs CUDA and liger-kernel
    lora_dropout: float | None = None   # None: the config's (0.1); 0: PEFT skips the dropout copies
    #: False: never picked by ``--recipe auto`` (a trade-off the learner opts into)
    auto: bool = True
    #: the Qwen3 size it trains (a key of ``models.QWEN3_SHAPES``)
    model: str = "Qwen3-8B"

    @property
    def settings(self) -> list[str]:
        """``--set`` overrides that turn the base config into this recipe."""
        out = [f"training.activation_checkpointing={str(self.activation_checkpointing).lower()}",
               f"training.per_device_train_batch_size={self.micro_batch}",
               f"training.gradient_accumulation_steps={max(1, 16 // self.micro_batch)}"]
        if self.kernels:
            out.append(f"kernels={self.kernels}")
        if self.lora_dropout is not None:
            out.append(f"lora.lora_dropout={self.lora_dropout:g}")
        return out

    @property
    def config_path(self) -> str:
        return f"configs/train/{self.config}.yaml"

    @property
    def worst_tokens(self) -> int:
        return worst_tokens(self.micro_batch)

    def estimate_tensors_gb(self, tokens: int | None = None) -> float:
        """Estimated peak of the tensors for a micro-batch of ``tokens`` (default: the worst one)."""
        return estimate_lora_memory_gb(self.model, self.worst_tokens if tokens is None else tokens,
                                       gradient_checkpointing=self.activation_checkpointing,
                                       quantization=self.quantization, kernels=self.kernels,
                                       lora_dropout=self.lora_dropout != 0)["total"]

    def estimate_gb(self) -> float:
        """Estimated worst-case peak on the card: the worst micro-batch, plus the CUDA overhead."""
        return round(self.estimate_tensors_gb() + CUDA_OVERHEAD_GB, 1)


#: from the most to the least memory-hungry
RECIPES = (
    Recipe("bf16_mb16", "bf16 LoRA，不重计算，微批次 16", "qwen3-8b", None, False, 16, 1.45),
    Recipe("bf16_mb16_liger", "bf16 LoRA，不重计算，微批次 16，Liger", "qwen3-8b", None, False, 16,
           1.6, kernels="liger"),
    Recipe("bf16_mb4", "bf16 LoRA，不重计算，微批次 4", "qwen3-8b", None, False, 4, 1.3),
    Recipe("bf16_ckpt_mb16", "bf16 LoRA，开重计算，微批次 16", "qwen3-8b", None, True, 16, 1.1),
    Recipe("bf16_ckpt_mb16_liger", "bf16 LoRA，开重计算，微批次 16，Liger", "qwen3-8b", None, True, 16,
           1.2, kernels="liger"),
    Recipe("bf16_ckpt_mb16_nodrop", "bf16 LoRA，开重计算，微批次 16，lora_dropout=0", "qwen3-8b", None,
           True, 16, 1.15, lora_dropout=0.0, auto=False),
    Recipe("bf16_ckpt_mb4", "bf16 LoRA，开重计算，微批次 4", "qwen3-8b", None, True, 4, 1.0),
    Recipe("qlora_ckpt_mb16", "QLoRA 4-bit，开重计算，微批次 16", "qwen3-8b-qlora", "nf4", True, 16, 0.8),
    Recipe("qlora_ckpt_mb4", "QLoRA 4-bit，开重计算，微批次 4", "qwen3-8b-qlora", "nf4", True, 4, 0.7),
)
#: the ``small`` profile's recipe (configs/train/qwen3-0.6b.yaml): real Qwen3-0.6B on a 6-8 GB card or a CPU
SMALL = Recipe("small_ckpt_mb4", "Qwen3-0.6B（small）bf16 LoRA，开重计算，微批次 4", "qwen3-0.6b", None,
               True, 4, 1.0, auto=False, model="Qwen3-0.6B")


# --------------------------------------------------------------------------- measurements

#: The measurements the advice rests on (written by ``python -m bench.gpu_run --adopt RESULT.json``).
MEASUREMENTS_FILE = Path(__file__).resolve().parent.parent / "configs" / "recipe_measurements.json"


@dataclass(frozen=True)
class Measurement:
    """One recipe measured on one GPU (GB = 1e9 bytes, tensors only: ``torch.cuda.max_memory_allocated``)."""

    key: str
    gpu: str
    peak_gb: float | None
    #: tokens of the micro-batch behind ``peak_gb`` (for a random-batch run: its mean micro-batch)
    tokens: int | None
    #: True: ``peak_gb`` comes from one forced step on the worst micro-batch (the longest rows together)
    worst_case: bool
    samples_per_s: float | None
    #: samples/s over the original recipe's, both from the same run (None: not measured together)
    x_original: float | None
    source: str


def load_measurements(path: Path | None = None) -> dict[str, Measurement]:
    path = MEASUREMENTS_FILE if path is None else path
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text(encoding="utf-8"))["measurements"]
    return {row["key"]: Measurement(**row) for row in rows}


def fit_peak_gb(recipe: Recipe, measured: dict[str, Measurement]) -> tuple[float, str]:
    """The worst-case peak the fit is judged on, and its basis: a measured worst case, else the estimate."""
    m = measured.get(recipe.key)
    if m is not None and m.worst_case and m.peak_gb is not None:
        return round(m.peak_gb + CUDA_OVERHEAD_GB, 1), "measured_worst_case"
    return recipe.estimate_gb(), "estimate"


@dataclass(frozen=True)
class Choice:
    """What ``--recipe auto`` picked and why, as fields (``reason`` is the learner's Chinese sentence)."""

    recipe: Recipe | None
    #: no_gpu | measured_fastest_fit | estimated_fit | nothing_fits
    code: str
    gpu_gb: float | None = None
    limit_gb: float | None = None
    peak_gb: float | None = None            # the chosen recipe's worst-case peak + overhead
    peak_basis: str | None = None           # measured_worst_case | estimate
    speed_basis: str | None = None          # measured | estimate
    samples_per_s: float | None = None      # measured, with the GPU in ``measured_on``
    measured_on: str | None = None
    #: faster recipes passed over: (key, why) with why in over_memory | needs_liger | opt_in
    passed_over: tuple = ()
    reason: str = ""


def ranked(measured: dict[str, Measurement]) -> list[Recipe]:
    """Measured speed first (fastest measured recipe first), then the unmeasured by their estimated speed."""
    def key(r: Recipe):
        m = measured.get(r.key)
        if m is not None and m.samples_per_s:
            return (0, -m.samples_per_s)
        return (1, -r.relative_speed)
    return sorted(RECIPES, key=key)


def choose(gpu_gb: float | None, measured: dict[str, Measurement] | None = None, liger: bool = False) -> Choice:
    """The first recipe in :func:`ranked` order whose worst-case peak fits ``MARGIN`` of ``gpu_gb``.

    ``liger``: whether Liger's recipes can run here (CUDA and liger-kernel installed).
    """
    measured = load_measurements() if measured is None else measured
    if gpu_gb is None:
        return Choice(None, "no_gpu", reason="没有检测到 CUDA GPU：Qwen3-8B 的配方都需要 GPU（CPU 上请用 tiny 档位）。")
    limit = round(gpu_gb * MARGIN, 1)
    passed = []
    for recipe in ranked(measured):
        if not recipe.auto:
            passed.append((recipe.key, "opt_in"))
            continue
        if recipe.kernels == "liger" and not liger:
            passed.append((recipe.key, "needs_liger"))
            continue
        peak, basis = fit_peak_gb(recipe, measured)
        if peak > limit:
            passed.append((recipe.key, "over_memory"))
            continue
        m = measured.get(recipe.key)
        speed = m.samples_per_s if m is not None and m.samples_per_s else None
        peak_text = ("实测最坏批峰值" if basis == "measured_worst_case" else "估计最坏批峰值（估算）") + \
            f" {peak} GB（含 {CUDA_OVERHEAD_GB} GB CUDA 开销，≤ 显存的 90% = {limit} GB）"
        speed_text = (f"实测 {speed:.1f} samples/s（{m.gpu}）" if speed else
                      f"速度未测，估计为课程默认配方的 {recipe.relative_speed:.2f}x（估算）")
        over = [k for k, why in passed if why == "over_memory"]
        reason = (f"{gpu_gb:.0f} GB 可用显存：选择 “{recipe.name}”，{peak_text}；{speed_text}。"
                  + (f"更快的 {len(over)} 个配方放不下。" if over else "")
                  + ("（装上 liger-kernel 还有 Liger 配方可选。）" if any(w == "needs_liger" for _, w in passed) else ""))
        return Choice(recipe, "measured_fastest_fit" if speed else "estimated_fit", gpu_gb, limit, peak, basis,
                      "measured" if speed else "estimate", speed, m.gpu if speed else None, tuple(passed), reason)
    smallest = min((r for r in RECIPES if r.auto), key=lambda r: fit_peak_gb(r, measured)[0])
    return Choice(None, "nothing_fits", gpu_gb, limit, passed_over=tuple(passed),
                  reason=f"{gpu_gb:.0f} GB 可用显存放不下任何配方：最小的 “{smallest.name}” 最坏批要 "
                         f"{fit_peak_gb(smallest, measured)[0]} GB。请换一张更大的显卡。")


def fit_table() -> str:
    """Markdown table: each recipe's worst micro-batch, estimated and measured peaks, measured speed, fits
    (its worst-case peak + CUDA overhead within ``MARGIN`` of the card) and what ``--recipe auto`` picks."""
    measured, sizes = load_measurements(), GPU_SIZES_GB
    head = ("| 配方 | 最坏批 token | 估计最坏峰值 GB（估算） | 实测峰值 GB | 实测 samples/s | 相对原始配方（同一次运行） | "
            + " | ".join(f"{g} GB" for g in sizes) + " |")
    lines = [head, "|" + "---|" * (6 + len(sizes))]
    for recipe in (*RECIPES, SMALL):
        m = measured.get(recipe.key)
        peak = "未测" if m is None or m.peak_gb is None else \
            f"{m.peak_gb}（{'最坏批' if m.worst_case else '随机批'}，{m.gpu}）"
        speed = "未测" if m is None or m.samples_per_s is None else f"{m.samples_per_s:.1f}（{m.gpu}）"
        ratio = "未测" if m is None or m.x_original is None else f"{m.x_original:.2f}x"
        cells = ["✓" if fit_peak_gb(recipe, measured)[0] <= g * MARGIN else "✗" for g in sizes]
        lines.append(f"| {recipe.name} | {recipe.worst_tokens} | {recipe.estimate_gb()} | {peak} | {speed} | "
                     f"{ratio} | " + " | ".join(cells) + " |")
    picks = [choose(g, measured).recipe for g in sizes]
    lines.append("| **auto 选择** | | | | | | " + " | ".join(r.key if r else "—" for r in picks) + " |")
    return "\n".join(lines)


def auto_recipe(config: str | None, overrides: list[str], profile: str,
                gpu: dict | None = None) -> tuple[str | None, list[str], str]:
    """``--recipe auto``: (config, ``--set`` overrides, what was picked and why) for this machine.

    On a GPU: :func:`choose` on the FREE memory (measured speed first; Liger's recipes only when
    liger-kernel is installed); its config unless ``--config`` was given, then its settings
    (quantization, checkpointing, micro-batch and accumulation, kernels), then the user's own ``--set``
    values, which win. Without a GPU, or for the tiny profile, the given config is kept unchanged.
    Nothing fits: a :class:`~helpers.spec.SpecError`.
    """
    from .hardware import liger_installed

    if gpu is None or profile == "tiny":
        why = "没有检测到 CUDA GPU" if gpu is None else "tiny profile 的模型很小"
        kept = f"保留给定的配置 {config}。" if config else f"保留 {profile} 的默认配置。"
        return config, list(overrides), f"--recipe auto: {why}。配方表只适用于 GPU 上的 Qwen3-8B，{kept}"
    if profile == "small":
        need = SMALL.estimate_gb()
        if need > gpu["free_gb"] * MARGIN:
            raise SpecError(f"--recipe auto: {gpu['name']} 空闲 {gpu['free_gb']:.1f} GB，small 档位（Qwen3-0.6B）估计最坏"
                            f"峰值 {need} GB（估算），超过空闲显存的 90%。关掉占显存的其他内核，或在 CPU 上训练"
                            "（CUDA_VISIBLE_DEVICES= python -m helpers.train --config configs/train/qwen3-0.6b.yaml）。")
        return config or SMALL.config_path, list(overrides), (
            f"--recipe auto: {gpu['name']}，空闲 {gpu['free_gb']:.1f} GB；small 档位（Qwen3-0.6B）用它自己的配方 "
            f"“{SMALL.name}”，估计最坏峰值 {need} GB（估算，≤ 空闲显存的 90%）。")
    choice = choose(gpu["free_gb"], liger=liger_installed())
    seen = f"--recipe auto: {gpu['name']}，总显存 {gpu['memory_gb']:.1f} GB，空闲 {gpu['free_gb']:.1f} GB（按空闲显存选择）"
    if gpu["memory_gb"] - gpu["free_gb"] >= 2:
        seen += (f"\n  另有 {gpu['memory_gb'] - gpu['free_gb']:.1f} GB 被别的进程占用（常见的是上一个笔记本的内核，"
                 "nvidia-smi 能看到）：释放后也许能用更快的配方。")
    if choice.recipe is None:
        raise SpecError(f"{seen}\n{choice.reason}")
    recipe = choice.recipe
    quantization = "nf4" if recipe.quantization else "null"
    chosen = [f"quantization={quantization}", *recipe.settings]
    lines = [seen, "  " + choice.reason, f"  训练配置: {config or recipe.config_path}"
             + ("（你给的 --config；这个配方自己的配置是 " + recipe.config_path + "）" if config else ""),
             "  配方的设置: " + " ".join(f"--set {item}" for item in chosen)]
    if overrides:
        lines.append("  你自己的 --set 优先: " + " ".join(f"--set {item}" for item in overrides))
    lines.append("  （估算与实测见 helpers/recipes.py 的 fit_table 和 configs/recipe_measurements.json）")
    return config or recipe.config_path, [*chosen, *overrides], "\n".join(lines)
