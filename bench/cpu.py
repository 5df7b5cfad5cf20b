"""Benchmarks: the original tutorial's recipe against the course's, every figure a ratio.

``python -m helpers.bench`` runs, in ONE process on the CPU (a few minutes on 2 cores):

1. **encode**  - the original's preprocessing (``Dataset.map(process_func)``, one example
   at a time) against ours (``data.encode_records``: batched, template rendered once);
2. **padding** - tokens computed per epoch on the real dataset: the original's encoding
   in random batches of 4 padded to the longest, against ours packed (padding-free);
   (1 and 2 are ``bench/encode_and_padding.py``'s run, reused as is);
3. **train**   - training throughput (real tokens/s, samples/s) of the original recipe
   (its encoding, padded batches 4 x accumulation 4, activation checkpointing ON)
   against ours (our encoding, padding-free batches of 16 x 1, checkpointing OFF),
   both through the course's own ``helpers.train.build_trainer`` on the tiny model,
   after a warm-up, best of N interleaved repeats.

Every reported figure is a ratio of two sides measured in the same run, so the noise
of a shared machine cancels as far as it can. On the tiny model most of the work is
the 151,936-wide output layer, so the CPU training ratio mostly reflects the number
of tokens computed (padding); activation checkpointing costs little there. The GPU
benchmark for the real Qwen3-8B architecture is ``bench/gpu_qwen3_8b.py``; it shares
the recipes, the counting and the FLOP formula defined here.

Notebook 04 shows "tokens computed per epoch, before/after" with
:func:`tokens_per_epoch_table` and :func:`format_tokens_table`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import data
from .workspace import REPO_ROOT, display_path, workspace_path

#: The original tutorial's own report (Qwen3-8B, huanhuan, 3 epochs, 699 steps; GPU not stated).
ORIGINAL_REPORTED = {"train_runtime_s": 880.0, "train_samples_per_second": 12.713, "steps": 699, "epochs": 3}


# --------------------------------------------------------------------------- data


def original_samples(records: list[dict], tokenizer) -> list[dict]:
    """The original's encoding (literal ``<s>``, pad token as end, cut at 1024), with each row's index."""
    out = []
    for index, record in enumerate(records):
        sample = data.original_process_func(record, tokenizer)
        sample["row"] = index
        out.append(sample)
    return out


def course_samples(records: list[dict], tokenizer) -> list[dict]:
    """The course's encoding (``data.encode_records`` with its defaults)."""
    samples, _ = data.encode_records(records, tokenizer)
    return samples


def encode(kind: str, records: list[dict], tokenizer) -> list[dict]:
    if kind == "original":
        return original_samples(records, tokenizer)
    if kind == "ours":
        return course_samples(records, tokenizer)
    raise ValueError(f"encoding must be 'original' or 'ours', not {kind!r}")


def encoded_lengths(records: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """Token lengths of every record: (the original's encoding, ours)."""
    original = [len(s["input_ids"]) for s in original_samples(records, tokenizer)]
    ours = [len(s["input_ids"]) for s in course_samples(records, tokenizer)]
    return original, ours


def tokens_per_epoch_table(tokenizer, records: list[dict], batch_size: int = 4, seed: int = 0,
                           lengths: tuple[list[int], list[int]] | None = None) -> list[data.PaddingRow]:
    """Tokens one epoch computes: the original (its encoding, random padded batches) -> ours (packed).

    Rows: the original; our encoding in the same random padded batches (what the
    encoding alone saves); ours length-grouped; ours padding-free (the course's batching).
    Built on ``data.padding_table``, same seed, so the random orders are identical.
    """
    original, ours = lengths or encoded_lengths(records, tokenizer)
    o_rows = {r.strategy: r for r in data.padding_table(original, batch_size=batch_size, seed=seed)}
    c_rows = {r.strategy: r for r in data.padding_table(ours, batch_size=batch_size, seed=seed)}
    return [
        replace(o_rows["random"], strategy="original",
                description=f"original: its encoding, random batches of {batch_size}, padded"),
        replace(c_rows["random"], strategy="ours_random",
                description=f"our encoding, random batches of {batch_size}, padded"),
        replace(c_rows["group_by_length"], strategy="ours_grouped",
                description=f"our encoding, length-grouped batches of {batch_size}, padded"),
        replace(c_rows["packing"], strategy="ours_packed",
                description="our encoding, padding-free (packed)  <- course default"),
    ]


def format_tokens_table(rows: list[data.PaddingRow]) -> str:
    """The tokens-per-epoch table with each row's computed tokens relative to the first (the original)."""
    return data.format_padding_table(rows, relative_to_first=True)


# --------------------------------------------------------------------------- 1 + 2. encode speed, padding


def bench_encode_and_padding(path: Path, repeats: int = 3) -> tuple[dict, dict]:
    """Encode speed and padding waste on the real dataset: ``bench/encode_and_padding.py``'s own run.

    Encode: the original's per-example ``Dataset.map(process_func)`` vs ``encode_records``
    (+ ``to_dataset``), interleaved, best of ``repeats``. Padding: tokens per epoch of the
    original (its encoding, random batches of 4 padded, seed 0) vs ours packed.
    """
    if str(REPO_ROOT) not in sys.path:  # bench/ is a folder of scripts beside the package
        sys.path.insert(0, str(REPO_ROOT))
    from bench.encode_and_padding import run

    result = run(Path(path), repeats)
    encode = {
        "rows": result["rows"],
        "repeats": repeats,
        "original_s": result["original_map_s"],
        "ours_s": result["ours_s"],
        "original_rows_per_s": result["rows"] / result["original_map_s"],
        "ours_rows_per_s": result["rows"] / result["ours_s"],
        "speedup": result["original_map_s"] / result["ours_s"],
    }
    original = {r["strategy"]: r for r in result["padding"]["original"]}
    ours = {r["strategy"]: r for r in result["padding"]["ours"]}
    rows = [
        data.PaddingRow("original", "original: its encoding, random batches of 4, padded",
                        original["random"]["computed"], original["random"]["real"]),
        data.PaddingRow("ours_random", "our encoding, random batches of 4, padded",
                        ours["random"]["computed"], ours["random"]["real"]),
        data.PaddingRow("ours_grouped", "our encoding, length-grouped batches of 4, padded",
                        ours["group_by_length"]["computed"], ours["group_by_length"]["real"]),
        data.PaddingRow("ours_packed", "our encoding, padding-free (packed)  <- course default",
                        ours["packing"]["computed"], ours["packing"]["real"]),
    ]
    first, last = rows[0], rows[-1]
    padding = {
        "rows": result["rows"],
        "batch_size": 4,
        "seed": 0,
        "table": [dict(asdict(r), padding=r.padding, padding_share=r.padding_share) for r in rows],
        "original_padding_share": first.padding_share,
        "ours_padding_share": last.padding_share,
        "original_mean_tokens": result["lengths"]["original"]["mean"],
        "ours_mean_tokens": result["lengths"]["ours"]["mean"],
        "computed_tokens_ratio": first.computed / last.computed,
        # the mean over ALL random orders, so seed 0 is not cherry-picked
        "expected_random_padded_tokens": result["expected_random_padded"],
    }
    return encode, padding


# --------------------------------------------------------------------------- 3. training throughput


@dataclass(frozen=True)
class Recipe:
    """One way to train: encoding, batching, micro-batch, accumulation, checkpointing, kernels."""

    name: str
    description: str
    encoding: str = "ours"              # original | ours
    batching: str = "packed"            # padded | grouped | packed (helpers.train.make_collator)
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    activation_checkpointing: bool = False
    attn_implementation: str | None = None   # None: the model's default (sdpa)
    liger: bool = False

    @property
    def effective_batch(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


#: The original tutorial's recipe, as it trained.
ORIGINAL_RECIPE = Recipe(
    "original", "original encoding, padded random batches 4 x accumulation 4, activation checkpointing",
    encoding="original", batching="padded", per_device_train_batch_size=4, gradient_accumulation_steps=4,
    activation_checkpointing=True)
#: The course's faster recipe: same effective batch (16) and so the same optimisation, less work.
COURSE_RECIPE = Recipe(
    "ours", "our encoding, padding-free batches 16 x 1, no checkpointing",
    encoding="ours", batching="packed", per_device_train_batch_size=16, gradient_accumulation_steps=1,
    activation_checkpointing=False)
#: ``--quick`` (the smoke test): the same two recipes at a quarter of the batch.
QUICK_RECIPES = (
    replace(ORIGINAL_RECIPE, per_device_train_batch_size=2, gradient_accumulation_steps=2,
            description="original encoding, padded random batches 2 x accumulation 2, activation checkpointing"),
    replace(COURSE_RECIPE, per_device_train_batch_size=4, gradient_accumulation_steps=1,
            description="our encoding, padding-free batches 4 x 1, no checkpointing"),
)
#: The CPU benchmark's recipes: before, an intermediate (the packed recipe with the original's shape), after.
CPU_RECIPES = (
    ORIGINAL_RECIPE,
    Recipe("packed_4x4_ckpt", "our encoding, padding-free 4 x 4, activation checkpointing",
           per_device_train_batch_size=4, gradient_accumulation_steps=4, activation_checkpointing=True),
    COURSE_RECIPE,
)


class BatchCounter:
    """Counts what each forward pass of the model sees (a forward pre-hook on the top model).

    real tokens: ``attention_mask`` ones (padded) or every token (packed, no mask);
    computed tokens: every position of ``input_ids``; samples: rows (padded) or
    sequence starts (``position_ids == 0``, packed); trained: labels != -100.
    Activation checkpointing recomputes inside the layers, not here, so each
    micro-batch is counted once.
    """

    def __init__(self):
        self.samples = self.real = self.computed = self.trained = self.forwards = 0
        #: sum of L x (L + 1) over the sequences seen: what causal attention costs
        self.pairs = 0

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None:
            return None
        mask = kwargs.get("attention_mask")
        positions = kwargs.get("position_ids")
        labels = kwargs.get("labels")
        self.forwards += 1
        self.computed += ids.numel()
        if mask is None and positions is not None:  # packed: sequences start where position_ids is 0
            starts = (positions.reshape(-1) == 0).nonzero().reshape(-1).tolist() + [positions.numel()]
            lengths = [b - a for a, b in zip(starts, starts[1:], strict=False) if b > a]
        elif mask is not None:
            lengths = mask.sum(dim=-1).reshape(-1).tolist()
        else:
            lengths = [ids.shape[-1]] * (ids.numel() // ids.shape[-1])
        self.samples += len(lengths)
        self.real += sum(lengths)
        self.pairs += sum(n * (n + 1) for n in lengths)
        if labels is not None:
            self.trained += int((labels != data.IGNORE_INDEX).sum())
        return None

    def snapshot(self) -> dict:
        return {"samples": self.samples, "real": self.real, "computed": self.computed, "trained": self.trained,
                "forwards": self.forwards, "pairs": self.pairs}


def _timer_callback(counter: BatchCounter, marks: list, deadline: float | None, min_steps: int, sync):
    from transformers import TrainerCallback

    class _Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            marks.append((0, time.perf_counter(), counter.snapshot()))

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            marks.append((state.global_step, time.perf_counter(), counter.snapshot()))
            if deadline is not None and time.perf_counter() > deadline and state.global_step >= min_steps:
                control.should_training_stop = True
            return control

    return _Timer()


def bench_config(recipe: Recipe, profile: str, steps: int, output_dir: str, bf16: bool, seed: int = 42) -> dict:
    """The course's training config for ``profile`` with the recipe's batching and shape, ``steps`` steps."""
    from . import train

    config = train.load_config(profile)
    config["batching"] = recipe.batching
    config["swanlab"] = None
    config["output_dir"] = output_dir
    config["training"].update(
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        activation_checkpointing=recipe.activation_checkpointing,
        max_steps=steps, learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, bf16=bf16, seed=seed,
    )
    config["training"].pop("save_steps", None)
    config["training"].pop("num_train_epochs", None)
    return config


def apply_kernels(model, recipe: Recipe) -> list[str]:
    """Switch the attention implementation and apply Liger's Qwen3 kernels as the recipe asks."""
    notes = []
    if recipe.attn_implementation and recipe.attn_implementation != model.config._attn_implementation:
        model.set_attn_implementation(recipe.attn_implementation)
        notes.append(f"attention: {model.config._attn_implementation}")
    if recipe.liger:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen3

        apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=True, model=model)
        notes.append("liger: rope, rms_norm, swiglu, fused_linear_cross_entropy")
    return notes


def measure_training(
    recipe: Recipe,
    records: list[dict],
    tokenizer,
    *,
    profile: str = "tiny",
    device: str | None = None,
    warmup: int = 2,
    steps: int = 6,
    deadline: float | None = None,
    model=None,
) -> dict:
    """Train ``warmup + steps`` optimizer steps with the course's Trainer; time the last ``steps``.

    Returns samples/s, real and computed tokens/s over the measured steps, the mean loss
    over them, and the peak memory. ``deadline`` (a ``time.perf_counter()`` value) stops
    early, after at least ``warmup + 1`` steps.
    """
    import torch
    from peft import get_peft_model
    from transformers.trainer_callback import PrinterCallback

    from . import train
    from .models import load_base_model

    def sync():
        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()

    samples = encode(recipe.encoding, records, tokenizer)
    bf16 = device not in (None, "cpu") and torch.cuda.is_available() and profile != "tiny"
    with tempfile.TemporaryDirectory(prefix=f"bench-{recipe.name}-") as out:
        config = bench_config(recipe, profile, warmup + steps, out, bf16=bf16)
        if model is None:
            model = load_base_model(profile, device=device)
        notes = apply_kernels(model, recipe)
        model = get_peft_model(model, train.lora_config(config))
        counter = BatchCounter()
        handle = model.register_forward_pre_hook(counter, with_kwargs=True)
        marks: list = []
        trainer = train.build_trainer(config, model, tokenizer, train.to_train_dataset(samples))
        trainer.remove_callback(PrinterCallback)  # the table says it all
        trainer.add_callback(_timer_callback(counter, marks, deadline, warmup + 1, sync))
        trainer.train()
        handle.remove()
        history = trainer.state.log_history
    done = marks[-1][0]
    first = min(warmup, max(done - 1, 0))
    (_, t0, c0), (_, t1, c1) = marks[first], marks[-1]
    seconds = t1 - t0
    measured = {k: c1[k] - c0[k] for k in c1}
    losses = [e["loss"] for e in history if "loss" in e and e.get("step", 0) > first]
    return {
        "recipe": asdict(recipe),
        "warmup_steps": first,
        "measured_steps": done - first,
        "seconds": seconds,
        "seconds_per_step": seconds / max(done - first, 1),
        "samples": measured["samples"],
        "real_tokens": measured["real"],
        "computed_tokens": measured["computed"],
        "trained_tokens": measured["trained"],
        "attention_pairs": measured["pairs"],
        "samples_per_s": measured["samples"] / seconds,
        "real_tokens_per_s": measured["real"] / seconds,
        "computed_tokens_per_s": measured["computed"] / seconds,
        "padding_share": 1 - measured["real"] / measured["computed"],
        "mean_loss": sum(losses) / len(losses) if losses else None,
        "kernels": notes,
    }


def loss_equivalence(records: list[dict], tokenizer, rows: int = 16, profile: str = "tiny") -> dict:
    """The loss of the same rows padded vs packed (eval mode, no dropout): they must agree."""
    import torch

    from . import train
    from .models import load_base_model

    samples = course_samples(records[:rows], tokenizer)
    model = load_base_model(profile, device="cpu").eval()
    features = [{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples]
    with torch.no_grad():
        # use_cache=False as under the Trainer: only then are packed position_ids read as
        # separate sequences (with a cache the model would attend across them)
        padded = model(**train.make_collator("padded", tokenizer)(features), use_cache=False).loss.item()
        packed = model(**train.make_collator("packed", tokenizer)(features), use_cache=False).loss.item()
    return {"rows": len(samples), "loss_padded": padded, "loss_packed": packed, "abs_diff": abs(padded - packed)}


def bench_train(records: list[dict], tokenizer, recipes=CPU_RECIPES, warmup: int = 2, steps: int = 6,
                repeats: int = 2) -> dict:
    """Each recipe ``repeats`` times, interleaved; best (highest real tokens/s) run of each."""
    import torch

    runs: dict[str, list[dict]] = {r.name: [] for r in recipes}
    for _ in range(repeats):
        for recipe in recipes:
            runs[recipe.name].append(measure_training(recipe, records, tokenizer, profile="tiny", device="cpu",
                                                      warmup=warmup, steps=steps))
    best = {name: max(rs, key=lambda r: r["real_tokens_per_s"]) for name, rs in runs.items()}
    base = best[recipes[0].name]
    for result in best.values():
        result["speedup_real_tokens_per_s"] = result["real_tokens_per_s"] / base["real_tokens_per_s"]
        result["speedup_samples_per_s"] = result["samples_per_s"] / base["samples_per_s"]
        result["all_runs_real_tokens_per_s"] = [r["real_tokens_per_s"] for r in runs[result["recipe"]["name"]]]
    return {"rows": len(records), "warmup_steps": warmup, "measured_steps": steps, "repeats": repeats,
            "torch_threads": torch.get_num_threads(), "recipes": best}


# --------------------------------------------------------------------------- FLOPs and peaks (GPU benchmark)

#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' datasheets.
#: Matched against ``torch.cuda.get_device_name()`` in this order (first match wins).
BF16_PEAK_TFLOPS = (
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),          # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H800 PCIe", 756.0),
    ("H800", 989.4),
    ("H20", 148.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.05),
    ("RTX 4090", 165.2),      # with fp32 accumulation, as PyTorch's bf16 matmuls use
    ("L20", 119.5),
    ("A10", 125.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak for a device name, or None when it is not in the table."""
    for key, value in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def matmul_parameters(config) -> dict[str, int]:
    """Weights that take part in matrix products, per kind, from a Qwen3 config (embeddings excluded)."""
    h, layers, inter, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    return {"layers": per_layer * layers, "lm_head": vocab * h, "attention_width": q, "num_layers": layers}


def lora_parameters(config, lora: dict) -> int:
    """Trainable LoRA parameters: r x (in + out) for every target module in every layer."""
    h, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    return sum(lora["r"] * (a + b) for name, (a, b) in shapes.items() if name in lora["target_modules"]) \
        * config.num_hidden_layers


def lora_flop_coefficients(config, lora: dict) -> tuple[float, float]:
    """(FLOPs per real token, FLOPs per unit of sum L(L+1)) of LoRA training; see :func:`lora_training_flops`."""
    params = matmul_parameters(config)
    frozen = params["layers"] + params["lm_head"]
    return 4.0 * frozen + 6.0 * lora_parameters(config, lora), 6.0 * params["num_layers"] * params["attention_width"]


def lora_training_flops(config, lengths, lora: dict) -> float:
    """Model FLOPs of one LoRA training pass over sequences of ``lengths`` (padding NOT counted).

    Per token: frozen matmul weights N (layers + lm_head) cost 2N forward + 2N backward
    (input gradients only: frozen weights get no weight gradient) = 4N; LoRA weights
    cost 6 per parameter (forward, input and weight gradients). Per sequence of length L
    and layer, causal attention (QK^T and PV, half the square) costs 2 x d_attn x L(L+1)
    forward and twice that backward: 6 x d_attn x L(L+1) in all. Recomputation by
    activation checkpointing is not counted (that would be hardware FLOPs, not model FLOPs).
    """
    per_token, per_pair = lora_flop_coefficients(config, lora)
    return float(sum(per_token * n + per_pair * n * (n + 1) for n in lengths))


def verify_matmul_parameters_on_meta() -> dict:
    """Count Qwen3-8B's linear weights on the ``meta`` device and check them against the formula."""
    from torch import nn

    from .download import qwen3_8b_on_meta

    model = qwen3_8b_on_meta()
    counted = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    params = matmul_parameters(model.config)
    return {"linear_weights_counted": counted, "formula": params["layers"] + params["lm_head"],
            "all_parameters": total, "config": model.config}


# --------------------------------------------------------------------------- the whole CPU benchmark


def environment() -> dict:
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}


def run_cpu_benchmark(quick: bool = False, train_rows: int | None = None, repeats: int | None = None,
                      steps: int | None = None, warmup: int | None = None, all_recipes: bool = False) -> dict:
    """All three CPU benchmarks in one process; returns the JSON-able result."""
    from transformers.utils import logging as hf_logging

    from .download import build_tiny_model
    from .models import load_tokenizer

    hf_logging.disable_progress_bar()
    build_tiny_model()
    tokenizer = load_tokenizer("tiny")
    path = data.real_dataset_path()
    records = data.load_records(path).records
    started = time.perf_counter()
    result = {
        "benchmark": "helpers.bench (CPU)",
        "quick": quick,
        "dataset": {"path": display_path(path), "rows": len(records)},
        "environment": environment(),
    }
    result["encode"], result["padding"] = bench_encode_and_padding(path, repeats=1 if quick else 3)
    train_records = records[: train_rows or (32 if quick else 256)]
    result["loss_equivalence"] = loss_equivalence(train_records, tokenizer)
    result["train"] = bench_train(
        train_records, tokenizer,
        recipes=QUICK_RECIPES if quick else (CPU_RECIPES if all_recipes else (ORIGINAL_RECIPE, COURSE_RECIPE)),
        warmup=warmup if warmup is not None else 1,
        steps=steps if steps is not None else (2 if quick else 3),
        repeats=repeats if repeats is not None else (1 if quick else 2),
    )
    ours = result["train"]["recipes"][COURSE_RECIPE.name]
    result["ratios"] = {
        "encode_speedup": result["encode"]["speedup"],
        "computed_tokens_per_epoch_original_over_ours": result["padding"]["computed_tokens_ratio"],
        "train_real_tokens_per_s_speedup": ours["speedup_real_tokens_per_s"],
        "train_samples_per_s_speedup": ours["speedup_samples_per_s"],
    }
    result["wall_s"] = time.perf_counter() - started
    return result


def format_cpu_report(result: dict) -> str:
    enc, pad, tr = result["encode"], result["padding"], result["train"]
    lines = [
        f"== helpers.bench on CPU ({result['environment']['cpu_count']} cores, torch threads "
        f"{result['environment']['torch_threads']}); every ratio is from this one run",
        "",
        f"1. encode {enc['rows']} rows (best of {enc['repeats']}):",
        f"   original Dataset.map(process_func)  {enc['original_s']:8.3f} s  {enc['original_rows_per_s']:10,.0f} rows/s",
        f"   ours encode_records                 {enc['ours_s']:8.3f} s  {enc['ours_rows_per_s']:10,.0f} rows/s",
        f"   speed-up                            {enc['speedup']:8.1f}x",
        "",
        f"2. tokens computed per epoch, {pad['rows']} rows (seed {pad['seed']}):",
        *("   " + line for line in format_tokens_table([_row(r) for r in pad["table"]]).splitlines()),
        f"   original computes {pad['computed_tokens_ratio']:.3f}x the tokens ours does "
        f"(padding {pad['original_padding_share']:.1%} -> {pad['ours_padding_share']:.1%})",
        "",
        f"3. training throughput, tiny model, first {tr['rows']} rows, {tr['warmup_steps']} warm-up + "
        f"{tr['measured_steps']} measured optimizer steps, best of {tr['repeats']}:",
        f"   {'recipe':<16} {'samples/s':>10} {'real tok/s':>11} {'comp tok/s':>11} {'s/step':>8} {'pad':>6} "
        f"{'x real tok/s':>12} {'x samples/s':>11}",
    ]
    for name, r in tr["recipes"].items():
        lines.append(f"   {name:<16} {r['samples_per_s']:>10.2f} {r['real_tokens_per_s']:>11,.0f} "
                     f"{r['computed_tokens_per_s']:>11,.0f} {r['seconds_per_step']:>8.3f} {r['padding_share']:>6.1%} "
                     f"{r['speedup_real_tokens_per_s']:>11.2f}x {r['speedup_samples_per_s']:>10.2f}x")
    for name, r in tr["recipes"].items():
        lines.append(f"   {name:<16} {r['recipe']['description']}")
    eq = result["loss_equivalence"]
    lines += [
        f"   same loss: {eq['rows']} rows padded {eq['loss_padded']:.6f} vs packed {eq['loss_packed']:.6f} "
        f"(|diff| {eq['abs_diff']:.1e})",
        "   note: the tiny model's cost is dominated by its 151,936-wide output layer, so these ratios mostly",
        "   reflect tokens computed; checkpointing's recompute is cheap here. GPU: bench/gpu_qwen3_8b.py.",
        "",
        "ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()),
        f"wall time {result['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


def write_result(result: dict, path: str | os.PathLike | None, default_name: str) -> Path:
    """Write a benchmark's JSON (default ``workspace/bench/<default_name>``); return where it went."""
    out = Path(path) if path else workspace_path("bench", default_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return out


def _row(entry: dict) -> data.PaddingRow:
    return data.PaddingRow(entry["strategy"], entry["description"], entry["computed"], entry["real"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.bench",
        description="Original tutorial vs course recipe on the CPU: encode speed, padding waste, "
                    "training throughput (tiny model). Prints a table and writes JSON.")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (well under a minute)")
    parser.add_argument("--out", help="JSON result path (default workspace/bench/cpu.json)")
    parser.add_argument("--train-rows", type=int, help="rows of the real set to train on (default 256; quick 64)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per training recipe (default 2; quick 1)")
    parser.add_argument("--steps", type=int, help="measured optimizer steps (default 3; quick 2)")
    parser.add_argument("--warmup", type=int, help="warm-up optimizer steps (default 1)")
    parser.add_argument("--all-recipes", action="store_true",
                        help="also time the intermediate recipe (padding-free 4 x 4 with checkpointing)")
    args = parser.parse_args(argv)
    result = run_cpu_benchmark(quick=args.quick, train_rows=args.train_rows, repeats=args.repeats,
                               steps=args.steps, warmup=args.warmup, all_recipes=args.all_recipes)
    out = write_result(result, args.out, "cpu.json")
    print(format_cpu_report(result))
    print(f"JSON: {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
